"""Synthetic token ids: which token each sequence computes at each position.

The GPU executor runs a model with random weights, so the tokens are made
up, but deterministically, so that a replay computes the same K/V every time
and so that sequences which must differ do differ:

* the token at position ``p`` of sequence ``s`` is ``synth_tokens(s, p)``,
  a seeded hash, unless ``s`` already has a token there;
* a forked child inherits its parent's tokens up to the fork point and
  draws its own ids after it, so samples and beams write different tokens
  into their (copied) blocks and each must read its own history;
* a sequence preempted by recompute keeps its tokens and recomputes the
  same ones;
* a prefix-cache hit means the allocator judged the cached blocks to hold
  this sequence's prefix: the sequence adopts the tokens stored in those
  slots. So the book records the token of every GPU and CPU slot
  (``slot = block_id * block_size + offset``, -1 when never written) and
  moves them with copy-on-write copies and swaps, like the K/V they stand for.

The book also holds the one invariant every step must meet: a sequence's
new tokens start exactly where its K/V ends (``held``).
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def synth_tokens(seq_id: int, start: int, end: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """Token ids of positions ``start .. end - 1`` of sequence ``seq_id``
    (splitmix64 of ``(seed, seq_id, position)``, reduced to the vocabulary)."""
    p = np.arange(start, end, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = p + (np.uint64(seq_id) << np.uint64(32)) + np.uint64(seed) * _GOLDEN
        x = x * _GOLDEN
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(vocab_size)).astype(np.int64)


def slots_of(table: list[int], start: int, end: int, block_size: int) -> np.ndarray:
    """Cache slots of positions ``start .. end - 1`` of a sequence with block table ``table``."""
    p = np.arange(start, end, dtype=np.int64)
    blocks = np.asarray(table, dtype=np.int64)[p // block_size]
    return blocks * block_size + p % block_size


def _block_ranges(ids, block_size: int) -> np.ndarray:
    """Slot indices of whole blocks ``ids``, block after block."""
    ids = np.asarray(ids, dtype=np.int64)
    return (ids[:, None] * block_size + np.arange(block_size)).reshape(-1)


class TokenBook:
    """Token histories of sequences and token ids of cache slots."""

    def __init__(self, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 vocab_size: int, seed: int = 0) -> None:
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.seed = seed
        self.tokens: dict[int, list[int]] = {}  # every token a sequence has had
        self.held: dict[int, int] = {}          # leading tokens whose K/V is in a cache
        self.gpu = np.full(num_gpu_blocks * block_size, -1, dtype=np.int64)
        self.cpu = np.full(num_cpu_blocks * block_size, -1, dtype=np.int64)

    # ------------------------------------------------------ between steps
    def fork(self, parent: int, child: int) -> None:
        """The child shares the parent's computed tokens and nothing after them."""
        n = self.held[parent]
        self.tokens[child] = self.tokens[parent][:n]
        self.held[child] = n

    def free(self, seq_id: int, finished: bool) -> None:
        """K/V released; the history survives a recompute preemption."""
        if finished:
            self.tokens.pop(seq_id, None)
            self.held.pop(seq_id, None)
        else:
            self.held[seq_id] = 0

    def copy(self, pairs) -> None:
        """Copy-on-write: the destination block gets the source's tokens."""
        if pairs:
            src, dst = zip(*pairs)
            self.gpu[_block_ranges(dst, self.block_size)] = self.gpu[_block_ranges(src, self.block_size)]

    def swap_out(self, pairs) -> None:
        if pairs:
            gpu, cpu = zip(*pairs)
            self.cpu[_block_ranges(cpu, self.block_size)] = self.gpu[_block_ranges(gpu, self.block_size)]

    def swap_in(self, pairs) -> None:
        if pairs:
            cpu, gpu = zip(*pairs)
            self.gpu[_block_ranges(gpu, self.block_size)] = self.cpu[_block_ranges(cpu, self.block_size)]

    # ----------------------------------------------------------- a step
    def take(self, step: int, seq_id: int, table: list[int], start: int, end: int) -> np.ndarray:
        """Token ids of the positions ``start .. end - 1`` the step computes.

        A sequence holding K/V must resume where it ends. One holding none
        (new, or preempted by recompute) may start at a cached prefix: it
        adopts the tokens stored in those slots.
        """
        held = self.held.get(seq_id, 0)
        hist = self.tokens.setdefault(seq_id, [])
        if held:
            assert start == held, (f"seq {seq_id} step {step}: the plan resumes at token {start}, "
                                   f"but the executor holds K/V of {held} tokens")
        elif start:
            adopted = self.gpu[slots_of(table, 0, start, self.block_size)]
            assert (adopted >= 0).all(), (f"seq {seq_id} step {step}: prefix-cache hit on slots "
                                          f"that were never written")
            hist[:start] = adopted.tolist()
        if end > len(hist):
            hist.extend(synth_tokens(seq_id, len(hist), end, self.vocab_size, self.seed).tolist())
        self.held[seq_id] = end
        return np.asarray(hist[start:end], dtype=np.int64)

    def write(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        self.gpu[slots] = tokens
