"""Fast mode: the determined decode steps ahead, offered as one outcome.

The scheduler owns a ``LazyDecodeSet`` (``sim/lazy_decode.py``) of the
running groups that are one sequence in plain decode. When it holds every
running group and nothing is swapped, ``_stretch_ahead`` gives the steps
until the first finish or the first block crossing the free blocks cannot
cover; ``schedule`` returns them as a ``DecodeStretch`` and ``commit``
applies them (``_commit_stretch``) with the allocator calls step-by-step
mode would make, in the same order.

Mixed into ``Scheduler``; kept apart so the step-by-step path reads alone.
"""
from __future__ import annotations

from pagesim.sim.offload import steps_before_offload
from pagesim.sim.plan import DecodeStretch
from pagesim.sim.sequence import FINISHING


class DecodeStretches:
    def _stretch_ahead(self) -> DecodeStretch | None:
        """The determined decode steps ahead, when every running group is a
        plain decoder in the lazy set (None otherwise): until the first
        finish or the first crossing the free blocks cannot cover."""
        lazy = self.lazy
        n = len(lazy.members)  # (len(lazy), without its Python-level call)
        if (not n or n + len(self.finishing) != len(self.running) or self.swapped
                or n > self.token_budget):
            return None
        k = lazy.steps_to_first_finish()
        if k and lazy.paged:
            k = lazy.memory_limit(k, self.kv.pool.num_free)
            if k and self.async_transfers and self.tier is not None:
                k = steps_before_offload(lazy, self.kv.pool, k)
        if k == 0:
            return None
        st = DecodeStretch(self.step, k, n, lazy.sum_computed + n)
        if self.stretch_detail:
            st.seq_ids = [g.seqs[0].seq_id for g in self.running if g.status != FINISHING]
            st.context_lens0 = lazy.computed_of(st.seq_ids, plus=1)
        return st

    def _reserve_decoders(self) -> int:
        """The running phase of a mixed step: the lazy members' decode of
        this step in bulk (their allocator events, then ``D`` advances).
        Returns the tokens it takes from the budget."""
        lazy = self.lazy
        lazy.apply_events(0)
        lazy.D += 1
        return len(lazy)

    def _commit_stretch(self, st: DecodeStretch, now: float) -> None:
        """Apply a pure stretch's allocator events step by step (recording
        the counters after each in ``st``), advance the members, and finish
        those whose last token came in its last step."""
        self.lazy.run(st, self.pending_tokens(), self.log)
        self._finish_members(now)
        self.step += st.num_steps

    def _finish_members(self, now: float) -> None:
        lazy = self.lazy
        done = []
        for m in lazy.finished_by(lazy.D):
            lazy.remove(m.sid)
            done.append(m.group)
        if done:  # (most stretches end at an arrival, with no member done)
            self.end_groups(done, now)
