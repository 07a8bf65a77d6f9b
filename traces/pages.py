"""Content identities: from a trace's hash blocks to the simulator's pages.

Traces identify content in *hash blocks* of ``S`` tokens (Mooncake: 512;
token-id traces and synthetic workloads: 16). The simulator pages the KV
cache in pages of ``B`` tokens, any ``B`` from 1 to 256, dividing ``S`` or
not. A page may be shared between requests only if its content *and
everything before it* are equal, which a chained block hash guarantees at
block ends. So a page takes its identity from the hash block that holds its
last token, plus where inside that block it ends::

    tokens   0 ........ 511 | 512 ........ 1023 | 1024 ... 1099
    hashes   h0             | h1                 | h2 (partial block)
    pages    [0,16) ... [496,512)[512,528) ...     [1072,1088)  [1088,1100) not full
    key      mix(h0,16) ... mix(h0,512) mix(h1,16) mix(h2,64)   -- (no key)

Equal ``h`` means equal content up to the end of its block, hence up to the
page's end. The rule is conservative: two requests that agree on a page but
not on the rest of its hash block get different keys (at most ``S - 1``
tokens of sharing lost per divergence point; none when ``B`` is a multiple
of ``S``).

All identities are non-negative 63-bit integers, so they fit Parquet int64.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MASK63 = np.uint64((1 << 63) - 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_POLY = 0x100000001B3  # odd, so invertible modulo 2**64 (the FNV prime)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that scrambles all bits.

    Works elementwise on uint64 arrays; unsigned overflow wraps, as meant.
    """
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A 63-bit identity for the pair ``(a, b)`` (elementwise, broadcasting)."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(mix64(a) ^ (b + _GOLDEN) * _M1) & MASK63


def page_keys(block_hashes: Sequence[int], hash_block_size: int,
              num_tokens: int, page_size: int) -> list[int]:
    """Identities of the full ``page_size``-token pages among the first tokens.

    Args:
        block_hashes: chained hash ids of consecutive ``hash_block_size``-token
            blocks (the last may be partial); see ``Request.block_hashes``.
        hash_block_size: tokens per hash block (``S``).
        num_tokens: how many leading tokens to page; must not exceed what the
            hashes cover (``Request.hashed_tokens`` knows that).
        page_size: tokens per page (``B``), any positive integer.

    Returns:
        ``num_tokens // page_size`` keys; key ``p`` identifies the content of
        tokens ``[0, (p + 1) * page_size)``. A trailing partial page gets no
        key: its content is still growing, so it must never be shared.

    Raises:
        ValueError: ``num_tokens`` runs past the last hash block.
    """
    if page_size < 1 or hash_block_size < 1:
        raise ValueError("page_size and hash_block_size must be positive")
    if num_tokens > len(block_hashes) * hash_block_size:
        raise ValueError(
            f"num_tokens {num_tokens} exceeds the {len(block_hashes)} hash "
            f"blocks of {hash_block_size} tokens")
    num_pages = num_tokens // page_size
    if num_pages <= 0:
        return []
    ends = np.arange(page_size, num_pages * page_size + 1, page_size,
                     dtype=np.int64)
    block = (ends - 1) // hash_block_size
    offset = ends - block * hash_block_size          # 1..S: page end in block
    hashes = np.asarray(block_hashes, dtype=np.uint64)
    return combine(hashes[block], offset).tolist()


def token_block_hashes(token_ids: Sequence[Sequence[int]],
                       block_size: int) -> np.ndarray:
    """Chained hashes of ``block_size``-token blocks of each token sequence,
    as an object array holding one tuple per sequence.

    Block ``j`` of a sequence gets the hash of *all* tokens up to its end
    (``min((j + 1) * block_size, len)``), so equal ids at equal positions mean
    equal prefixes, exactly like a chained block hash, and the last block may
    be partial. The prefix hash is a polynomial hash modulo 2**64,
    ``h_i = h_{i-1} * P + tok_i + 1``, computed for all sequences at once as
    ``P**i * cumsum((tok_j + 1) * P**-j)`` (``P`` is odd, hence invertible),
    then scrambled with the block's end position.
    """
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64,
                          count=len(token_ids))
    if lengths.sum() == 0:
        return split([], np.zeros(len(token_ids), dtype=np.int64))
    flat = np.concatenate([np.asarray(t, dtype=np.uint64) for t in token_ids])
    n = flat.size
    with np.errstate(over="ignore"):
        pow_ = np.full(n, _POLY, dtype=np.uint64)
        pow_[0] = 1
        pow_ = np.cumprod(pow_, dtype=np.uint64)          # P**i
        inv = np.full(n, pow(_POLY, -1, 1 << 64), dtype=np.uint64)
        inv[0] = 1
        inv = np.cumprod(inv, dtype=np.uint64)            # P**-i
        csum = np.cumsum((flat + np.uint64(1)) * inv, dtype=np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    nblocks = -(-lengths // block_size)
    seq = np.repeat(np.arange(len(lengths)), nblocks)
    first_block = np.concatenate(([0], np.cumsum(nblocks)[:-1]))
    j = np.arange(nblocks.sum()) - np.repeat(first_block, nblocks)
    end = np.minimum((j + 1) * block_size, lengths[seq])   # tokens covered
    last = starts[seq] + end - 1                           # flat index
    before = starts[seq] - 1
    with np.errstate(over="ignore"):
        base = np.where(before >= 0, csum[np.maximum(before, 0)], np.uint64(0))
        prefix = (csum[last] - base) * pow_[last]
    return split(combine(prefix, end.astype(np.uint64)).tolist(), nblocks)


def split(flat: list, counts: np.ndarray) -> np.ndarray:
    """Cut a flat list into an object array of tuples of the given sizes."""
    out = np.empty(len(counts), dtype=object)
    lo = 0
    for i, hi in enumerate(np.cumsum(counts).tolist()):
        out[i] = tuple(flat[lo:hi])
        lo = hi
    return out
