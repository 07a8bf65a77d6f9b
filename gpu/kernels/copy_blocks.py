"""copy_blocks: copy-on-write copies of (src, dst) block pairs, all layers, one launch.

``caches`` is either a list of same-shaped per-layer tensors (K and V of each
layer) or one stacked tensor whose last four axes are
[num_blocks, block_size, num_kv_heads, head_dim]. Every cache is addressed as
``base + offset[c]`` with ``offset[c]`` in elements from the first cache, so
one grid (pair, cache, chunk) covers them all::

    program (p, c, j): cache c, elements [j*CHUNK, (j+1)*CHUNK) of block
                       pairs[p].src  ->  same elements of block pairs[p].dst

A destination must not also be a source (checked when pairs is a list).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import triton
import triton.language as tl

from pagesim.gpu.kernels._common import check_device, next_pow2


@triton.jit
def _copy_blocks_kernel(base_ptr, offsets_ptr, pairs_ptr, block_numel, stride_block,
                        CHUNK: tl.constexpr, VEC: tl.constexpr):
    p = tl.program_id(0)
    c = tl.program_id(1)
    j = tl.program_id(2)
    src = tl.load(pairs_ptr + 2 * p).to(tl.int64)
    dst = tl.load(pairs_ptr + 2 * p + 1).to(tl.int64)
    off = tl.multiple_of(tl.load(offsets_ptr + c), VEC)  # launcher checked: 16-byte aligned
    i = j * CHUNK + tl.arange(0, CHUNK)
    mask = i < block_numel
    x = tl.load(base_ptr + off + src * stride_block + i, mask=mask)
    tl.store(base_ptr + off + dst * stride_block + i, x, mask=mask)


def _as_caches(caches: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """(base tensor [num_blocks, ...], element offsets of every cache from it)."""
    if isinstance(caches, torch.Tensor):
        assert caches.dim() >= 4, "a stacked cache needs [..., num_blocks, block_size, kv_heads, head_dim]"
        lead = caches.shape[:-4]
        strides = caches.stride()[:-4]
        offsets = [sum(i * s for i, s in zip(idx, strides)) for idx in itertools.product(*map(range, lead))]
        return caches[(0,) * len(lead)], offsets
    caches = list(caches)
    assert caches, "caches is empty"
    base = caches[0]
    for t in caches:
        assert t.shape == base.shape and t.dtype == base.dtype and t.stride() == base.stride(), \
            "all caches in the list need one shape, dtype and strides"
        assert t.device == base.device, "all caches must be on one device"
    size = base.element_size()
    diffs = [t.data_ptr() - base.data_ptr() for t in caches]
    assert all(x % size == 0 for x in diffs), "cache addresses must be element-aligned"
    return base, [x // size for x in diffs]


def _pairs_tensor(pairs, num_blocks: int, device: torch.device) -> torch.Tensor:
    """[n, 2] int64 on ``device``; a Python list is validated on the host first."""
    if isinstance(pairs, torch.Tensor):
        assert pairs.dim() == 2 and pairs.shape[1] == 2, "pairs tensor must be [n, 2] (src, dst)"
        return pairs.to(device=device, dtype=torch.int64).contiguous()
    pairs = [(int(s), int(d)) for s, d in pairs]
    srcs, dsts = {s for s, _ in pairs}, [d for _, d in pairs]
    assert len(set(dsts)) == len(dsts), "a destination block appears twice"
    assert not srcs & set(dsts), "a destination block is also a source"
    assert all(0 <= x < num_blocks for x in srcs | set(dsts)), f"block ids must lie in [0, {num_blocks})"
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).to(device)


def copy_blocks(caches: torch.Tensor | Sequence[torch.Tensor], pairs) -> None:
    """In place: for every cache, block[dst] = block[src] for each (src, dst).

    Copies the cache offsets host -> device on every call, so it is not
    CUDA-graph capturable (copy-on-write pairs change every step anyway).
    """
    base, offsets = _as_caches(caches)
    device = check_device(base)
    pairs_t = _pairs_tensor(pairs, base.shape[0], device)
    block_numel = base[0].numel()
    assert base[0].is_contiguous(), "each block must be contiguous (block_size, kv_heads, head_dim)"
    if pairs_t.shape[0] == 0:
        return
    vec = max(1, 16 // base.element_size())
    aligned = all(o % vec == 0 for o in offsets) and base.stride(0) % vec == 0 and base.data_ptr() % 16 == 0
    chunk = min(next_pow2(block_numel), 4096)
    offsets_t = torch.tensor(offsets, dtype=torch.int64).to(device)
    grid = (pairs_t.shape[0], len(offsets), triton.cdiv(block_numel, chunk))
    _copy_blocks_kernel[grid](base, offsets_t, pairs_t, block_numel, base.stride(0),
                              CHUNK=chunk, VEC=vec if aligned else 1,
                              num_warps=4 if device.type == "cuda" else 1)


def copy_blocks_ref(caches: torch.Tensor | Sequence[torch.Tensor], pairs) -> list[torch.Tensor]:
    """Copies of the caches (a list, stacked input flattened to [n, num_blocks, ...]) after the copies."""
    if isinstance(caches, torch.Tensor):
        caches = list(caches.reshape(-1, *caches.shape[-4:]))
    out = [t.clone() for t in caches]
    for s, d in (pairs.tolist() if isinstance(pairs, torch.Tensor) else pairs):
        for t in out:
            t[d] = t[s]
    return out
