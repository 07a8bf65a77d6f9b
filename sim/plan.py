"""Step plans: what the scheduler decided for one engine step.

The plan is the narrow, typed interface between the scheduler (pure Python)
and an executor (a cost model in the simulator, real kernels in ``gpu/``).

Two views of a step exist on purpose:

* ``StepPlan`` carries everything needed to *execute* the step on real
  tensors: which sequences run, how many query tokens each adds, their block
  tables, and the copy-on-write / swap block moves the allocator reported.
* ``StepShapes`` is the few numbers a cost model needs to *price* a step, as
  numpy arrays so that a stretch of many decode steps is priced in one
  vectorised call.

The fast simulator mode adds a third, compact record, ``DecodeStretch``:
steps in which only the scheduler's plainly decoding sequences run (a mixed
step: one such step that new admissions join). It is priced from its totals,
and ``plans()`` expands it into the ``StepPlan``s step-by-step mode makes.
"""
from __future__ import annotations

from collections.abc import Sequence
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
    load: list[tuple[int, int]] = field(default_factory=list)  # (cpu, gpu): CPU offload tier loads
    #: The block moves (swap_in, swap_out, load) travel on a PCIe link that
    #: overlaps compute (``sim/engine/links.py``), so the step's price
    #: leaves them out; False: the step waits for them and pays for them.
    on_link: bool = False

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def shape_numbers(self) -> tuple:
        """(num_seqs, num_tokens, kv_tokens_read, attn_pairs,
        num_prefill_seqs, copy_blocks, swap_blocks) as plain numbers."""
        q, c = self.query_lens, self.context_lens
        moves = 0 if self.on_link else len(self.swap_out) + len(self.swap_in) + len(self.load)
        return (len(q), sum(q), sum(c), _attn_pairs(q, c),
                sum(1 for x in q if x > 1), len(self.cow), moves)

    def shapes(self) -> "StepShapes":
        """Price view of this single step (arrays of length 1)."""
        return StepShapes.one(self.shape_numbers())


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
    def one(numbers: tuple) -> "StepShapes":
        """One step from ``StepPlan.shape_numbers``-ordered plain numbers."""
        n_seq, n_tok, kv, pairs, n_pre, copies, swaps = numbers
        return StepShapes(
            num_seqs=np.array([n_seq], dtype=np.int64),
            num_tokens=np.array([n_tok], dtype=np.int64),
            kv_tokens_read=np.array([kv], dtype=np.int64),
            attn_pairs=np.array([pairs], dtype=np.float64),
            num_prefill_seqs=np.array([n_pre], dtype=np.int64),
            copy_blocks=np.array([copies], dtype=np.int64),
            swap_blocks=np.array([swaps], dtype=np.int64),
        )

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


class DecodeStretch:
    """``num_steps`` consecutive engine steps in which the same ``num_seqs``
    sequences each decode one token and nothing else runs; or, with
    ``admitted`` set, one step (a *mixed step*) in which those decodes come
    first and the groups in ``admitted`` join them.

    The scheduler offers it from ``schedule`` in fast mode and finishes it in
    ``commit``, like a ``StepPlan``. A pure stretch is offered at its longest
    determined length (until the first finish or the first block-boundary
    crossing the free blocks cannot cover); the engine prices it, cuts it at
    the next arrival (``cut``) and commits what it ran.

    Only totals are kept (O(1) whatever the batch): ``sum_context0`` is the
    summed context length of the decoding sequences in the first step; it
    grows by ``num_seqs`` per step. ``seq_ids`` / ``context_lens0`` (running
    order) are filled only when the scheduler is asked for detail (engine
    hooks), so that ``plans`` can expand the record. ``forks`` / ``freed`` /
    ``finished`` are the previous step's, as in ``StepPlan``.

    A plain class with class-level defaults: one is made per engine step of
    the fast mode, and only its first four fields are always set.
    """

    live_tokens0: int = 0                       # live token slots before the first step
    admitted: StepPlan | None = None
    forks: Sequence[tuple[int, int]] = ()
    freed: Sequence[int] = ()
    finished: Sequence[int] = ()
    seq_ids: list[int] | None = None
    context_lens0: list[int] | None = None
    #: Filled by ``Scheduler.commit``: relative steps of the allocator events
    #: (-1: before the first step) and the manager's ``counters()`` after
    #: each, concatenated (flat: the recorder reads them in one pass).
    event_steps: Sequence[int] = ()
    event_counters: Sequence[int] = ()

    def __init__(self, step: int, num_steps: int, num_seqs: int, sum_context0: int) -> None:
        self.step = step
        self.num_steps = num_steps
        self.num_seqs = num_seqs
        self.sum_context0 = sum_context0

    def __repr__(self) -> str:
        kind = "mixed step" if self.admitted is not None else "stretch"
        return (f"DecodeStretch({kind}, step={self.step}, num_steps={self.num_steps}, "
                f"num_seqs={self.num_seqs}, sum_context0={self.sum_context0})")

    def cut(self, k: int) -> None:
        """Keep the first ``k`` steps (of a pure stretch)."""
        assert 0 < k <= self.num_steps, f"cannot cut a stretch of {self.num_steps} steps to {k}"
        self.num_steps = k

    def shapes(self) -> StepShapes:
        """Price view of a pure stretch (one vectorised call)."""
        return StepShapes.decode_stretch(self.num_seqs, self.sum_context0, self.num_steps)

    def step_numbers(self) -> tuple:
        """``StepPlan.shape_numbers`` of a one-step record (a mixed step):
        the decodes' totals plus the admitted plan's."""
        n, ctx = self.num_seqs, self.sum_context0
        if self.admitted is None:
            return (n, n, ctx, float(ctx), 0, 0, 0)
        n_seq, n_tok, kv, pairs, n_pre, copies, swaps = self.admitted.shape_numbers()
        # a decode's query-key pairs equal its context length
        return (n_seq + n, n_tok + n, kv + ctx, pairs + ctx, n_pre, copies, swaps)

    def plans(self):
        """The ``StepPlan`` of every step, as step-by-step mode makes them
        (without block tables). Needs the record's detail."""
        assert self.seq_ids is not None, "stretch recorded without detail (no engine hook)"
        for j in range(self.num_steps):
            p = StepPlan(step=self.step + j, seq_ids=list(self.seq_ids),
                         query_lens=[1] * self.num_seqs,
                         context_lens=[c + j for c in self.context_lens0])
            if j == 0:
                p.forks, p.freed, p.finished = list(self.forks), list(self.freed), list(self.finished)
                a = self.admitted
                if a is not None:
                    p.seq_ids += a.seq_ids
                    p.query_lens += a.query_lens
                    p.context_lens += a.context_lens
                    p.cow, p.swap_out, p.swap_in = list(a.cow), list(a.swap_out), list(a.swap_in)
                    p.load, p.on_link = list(a.load), a.on_link
                    p.forks += a.forks
                    p.freed += a.freed
                    p.finished += a.finished
            yield p
