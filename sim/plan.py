"""Step plans: what the scheduler decided for one engine step.

The plan is the narrow, typed interface between the scheduler (pure Python)
and an executor (a cost model in the simulator, real kernels in ``gpu/``).

Two views of a step exist on purpose:

* ``StepPlan`` carries everything needed to *execute* the step on real
  tensors: which sequences run, how many query tokens each adds, their block
  tables, and the copy-on-write / swap block moves the allocator reported.
* ``StepShapes`` is the few numbers a cost model needs to *price* a step, as
  numpy arrays so that a stretch of many decode steps is priced in one
  vectorised call. The fast simulator mode never materialises ``StepPlan``
  objects for the steps it skips over.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class StepPlan:
    """One engine step, in the order the executor must apply it.

    Order of application: swap_in, swap_out, copy-on-write copies, then for
    every scheduled sequence: write the K/V of its ``query_lens[i]`` new tokens
    into the slots ``context_lens[i] - query_lens[i] .. context_lens[i] - 1``
    of its block table, and attend over ``context_lens[i]`` tokens.
    """

    step: int
    seq_ids: list[int] = field(default_factory=list)
    query_lens: list[int] = field(default_factory=list)   # new tokens this step (1 for decode)
    context_lens: list[int] = field(default_factory=list)  # tokens in KV after this step
    block_tables: list[list[int]] = field(default_factory=list)  # physical GPU block ids
    cow: list[tuple[int, int]] = field(default_factory=list)       # (src, dst) GPU blocks
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu, cpu)
    swap_in: list[tuple[int, int]] = field(default_factory=list)   # (cpu, gpu)
    forks: list[tuple[int, int]] = field(default_factory=list)     # (parent seq, child seq)
    freed: list[int] = field(default_factory=list)  # seqs whose KV was released after the last step
    finished: list[int] = field(default_factory=list)  # of those, seqs that are done for good
    #: Fast mode only: decoding sequences advanced in bulk and not listed
    #: above (one query token each, ``bulk_decode_ctx`` context tokens in
    #: all). Executors that need plans (GPU) never see them.
    bulk_decode_seqs: int = 0
    bulk_decode_ctx: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens) + self.bulk_decode_seqs

    def shape_numbers(self) -> tuple:
        """(num_seqs, num_tokens, kv_tokens_read, attn_pairs,
        num_prefill_seqs, copy_blocks, swap_blocks) as plain numbers."""
        q, c = self.query_lens, self.context_lens
        bn, bc = self.bulk_decode_seqs, self.bulk_decode_ctx
        # a decode's query-key pairs equal its context length
        return (len(q) + bn, sum(q) + bn, sum(c) + bc, _attn_pairs(q, c) + bc,
                sum(1 for x in q if x > 1), len(self.cow), len(self.swap_out) + len(self.swap_in))

    def shapes(self) -> "StepShapes":
        """Price view of this single step (arrays of length 1)."""
        n_seq, n_tok, kv, pairs, n_pre, copies, swaps = self.shape_numbers()
        return StepShapes(
            num_seqs=np.array([n_seq], dtype=np.int64),
            num_tokens=np.array([n_tok], dtype=np.int64),
            kv_tokens_read=np.array([kv], dtype=np.int64),
            attn_pairs=np.array([pairs], dtype=np.float64),
            num_prefill_seqs=np.array([n_pre], dtype=np.int64),
            copy_blocks=np.array([copies], dtype=np.int64),
            swap_blocks=np.array([swaps], dtype=np.int64),
        )


def _attn_pairs(query_lens: list[int], context_lens: list[int]) -> float:
    """Number of (query, key) pairs attended, causal within the new tokens.

    A sequence adding q tokens on top of p = c - q cached ones computes
    q * p + q * (q + 1) / 2 query-key products.
    """
    total = 0.0
    for q, c in zip(query_lens, context_lens):
        p = c - q
        total += q * p + q * (q + 1) / 2
    return total


@dataclass(slots=True)
class StepShapes:
    """Per-step totals for K steps (each field a numpy array of length K).

    Fields are totals over the sequences of the step:
    ``num_seqs``, ``num_tokens`` (query tokens: prefill chunk lengths plus one
    per decoding sequence), ``kv_tokens_read`` (sum of context lengths: what
    attention reads), ``attn_pairs`` (query-key products, see
    ``_attn_pairs``), ``num_prefill_seqs``, ``copy_blocks`` (copy-on-write
    block copies), ``swap_blocks`` (blocks moved between GPU and CPU).
    """

    num_seqs: np.ndarray
    num_tokens: np.ndarray
    kv_tokens_read: np.ndarray
    attn_pairs: np.ndarray
    num_prefill_seqs: np.ndarray
    copy_blocks: np.ndarray
    swap_blocks: np.ndarray

    def __len__(self) -> int:
        return len(self.num_seqs)

    @staticmethod
    def decode_stretch(num_seqs: int, sum_context0: int, steps: int) -> "StepShapes":
        """``steps`` pure-decode steps of ``num_seqs`` sequences whose summed
        context after the first step is ``sum_context0`` (it grows by
        ``num_seqs`` each step)."""
        k = np.arange(steps, dtype=np.int64)
        ctx = sum_context0 + k * num_seqs
        ones = np.ones(steps, dtype=np.int64)
        zeros = np.zeros(steps, dtype=np.int64)
        # pairs per decode seq = context length (q=1: p + 1 = c)
        return StepShapes(
            num_seqs=ones * num_seqs,
            num_tokens=ones * num_seqs,
            kv_tokens_read=ctx,
            attn_pairs=ctx.astype(np.float64),
            num_prefill_seqs=zeros,
            copy_blocks=zeros,
            swap_blocks=zeros.copy(),
        )
