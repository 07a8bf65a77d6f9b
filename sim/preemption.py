"""Preemption: making room for a running group, and bringing swapped groups back.

When a running group cannot get slots for this step's tokens, the
scheduler gives up victims (the ``victim`` policy, ``sim/policies.py``)
until it can, or gives up the group itself: each victim either swaps out
to the CPU pool (V0 ``--preemption swap``) or frees its KV and queues to
recompute. Swapped groups come back at the head of a later step while the
GPU has room for their blocks and this step's tokens.

Mixed into ``Scheduler``; kept apart because it is the one part of a step
that undoes other groups' progress.
"""
from __future__ import annotations

import heapq

from pagesim.sim.errors import OutOfBlocks
from pagesim.sim.plan import StepPlan
from pagesim.sim.sequence import FINISHING, RUNNING, SWAPPED, WAITING, Group


class Preemption:
    def _reserve(self, g: Group, q: int, index: int, plan: StepPlan) -> bool:
        """Slots for ``q`` more tokens of every sequence of ``g``, preempting
        victims until they fit. False when ``g`` itself was preempted.

        A group's copy-on-write pairs enter the plan only once all its
        sequences got their slots: a group that copies for one sequence and
        is then preempted for the next has freed the copy's destination, so
        an executor must not copy into it."""
        append = self.kv.append_slots
        cow = []
        for s in g.seqs:
            while True:
                # append_slots checks before it acts: OutOfBlocks means
                # nothing changed (cheaper than can_append on every step).
                try:
                    pairs = append(s.seq_id, q)
                    break
                except OutOfBlocks:
                    victim = self._pick_victim(index)
                    self._preempt(victim, plan)
                    if victim is g:
                        return False
            if pairs:
                cow.extend(pairs)
        if cow:
            plan.cow.extend(cow)
        return True

    def _pick_victim(self, index: int) -> Group:
        """Among the running groups not yet scheduled this step (``index``
        onwards, the one asking included), the one the policy gives up.

        The head of the running list (kept longest) is never a victim while
        another group runs: it always progresses, so every run ends even
        when preemption loses work (restarted V0 sample groups)."""
        candidates = self.running[max(index, 1):] or self.running[index:]
        return self.victim.pick(candidates, self.kv)

    def _preempt(self, g: Group, plan: StepPlan) -> None:
        if g.status == FINISHING:
            self._preempt_finishing(g, plan)
            return
        self.running.remove_group(g, self.key(g))
        # a group admitted with loads holds slots it has not computed: it
        # cannot be swapped as it stands, so it is recomputed
        reserved = self._drop_hold(g) if self.held else 0
        self.preemptions += 1
        g.record.preemptions += 1
        ids = [s.seq_id for s in g.seqs]
        kv = self.kv
        if self.cfg.preemption == "swap" and not reserved and kv.caps.swap and kv.can_swap_out(ids):
            plan.swap_out.extend(kv.swap_out(ids))
            self._note(g, "swap_out")
            g.status = SWAPPED
            heapq.heappush(self.swapped, (self.key(g), g))
            return
        self._requeue_for_recompute(g, plan)

    def _requeue_for_recompute(self, g: Group, plan: StepPlan) -> None:
        """Free the group's KV (GPU or CPU copy) and queue it to recompute."""
        for s in g.seqs:
            self.kv.free(s.seq_id)
            plan.freed.append(s.seq_id)
        if len(g.seqs) > 1:
            # Forked samples/beams cannot be recomputed from the prompt alone
            # (vLLM V0 requires swap for them): the group restarts, losing its
            # generated tokens; the dropped children never come back.
            plan.finished.extend(s.seq_id for s in g.seqs[1:])
            g.seqs = [g.seqs[0]]
            g.seqs[0].generated = 0
            g.forked = False
        for s in g.seqs:
            s.computed = 0
        g.preempted = True
        self._note(g, "preempt")
        g.status = WAITING
        self.waiting.push(self.key(g), g)

    def _schedule_swapped(self, plan: StepPlan, budget: int) -> int:
        kv = self.kv
        bs = kv.block_size
        while self.swapped:
            g = self.swapped[0][1]
            ids = [s.seq_id for s in g.seqs]
            q = self._tokens_for(g, budget)
            if q == 0 or self.running.num_seqs + len(ids) > self.cfg.max_num_seqs:
                break
            # Room for the blocks themselves and for this step's q tokens of
            # every sequence (a group swapped mid-prefill continues with a
            # chunk): otherwise it would preempt itself right back out.
            grow = len(ids) * -(-q // bs)
            if not kv.can_swap_in(ids, watermark_blocks=self.watermark_blocks + grow):
                break
            heapq.heappop(self.swapped)
            moved = kv.swap_in(ids)
            plan.swap_in.extend(moved)
            self._note(g, "swap_in")
            index = self.running.insert_group(g, self.key(g))
            g.status = RUNNING
            if self.async_transfers:
                self._hold(g, "swap_in", len(moved), 0, self._group_blocks(g))  # runs once they are back
                continue
            if not self._reserve(g, q, index, plan):
                break  # it was preempted after all: no retry within this step
            self._add_to_plan(plan, g, q)
            budget -= q * len(ids)
        return budget
