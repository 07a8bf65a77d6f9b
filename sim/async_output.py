"""Async scheduling: step k's output is applied after step k+1 is scheduled.

vLLM 0.33 schedules step k+1 while step k runs (``async_scheduling``, on by
default). The scheduler already knows which requests step k finishes (their
output lengths are fixed), so it does not schedule them again; but they stay
in the running list and keep their blocks until step k's output is
processed, right after step k+1 was scheduled. So a finish, and the blocks
it frees, take effect one step later: while step k+1 is scheduled the
finishing requests count against ``max_num_seqs``, hold memory, and can be
the preemption victim (vLLM pops ``running[-1]`` whatever it is).

Mixed into ``Scheduler``; the scheduler calls ``end_groups`` where it used
to finish groups, ``apply_finishes`` once the next step is scheduled, and
``_preempt_finishing`` when the victim is one of them.
"""
from __future__ import annotations

from pagesim.sim.plan import StepPlan
from pagesim.sim.sequence import FINISHING, Group


class AsyncOutput:
    def end_groups(self, groups, now: float) -> None:
        """Finish ``groups`` (done at the step ending at ``now``). Under
        async scheduling their blocks are released only after the next step
        has been scheduled; at once if nothing else is left to schedule (vLLM
        then waits for the output and processes it before going idle)."""
        if not self.behaviour.async_scheduling:
            for g in groups:
                self._finish(g, now)
            return
        for g in groups:
            g.status = FINISHING
            self.finishing.append((g, now))
        if not (self.waiting or self.swapped or len(self.running) > len(self.finishing)):
            self.apply_finishes()

    def apply_finishes(self) -> None:
        """Release the groups finished at the last commit (async scheduling)."""
        finishing, self.finishing = self.finishing, []
        for g, now in finishing:
            self._finish(g, now)

    def _preempt_finishing(self, g: Group, plan: StepPlan) -> None:
        """The victim is done but its output is not applied yet (async):
        vLLM preempts it all the same (its blocks come free now, the
        preemption counts) and finishes it when the output arrives."""
        self.preemptions += 1
        g.record.preemptions += 1
        i = next(i for i, (h, _) in enumerate(self.finishing) if h is g)
        _, now = self.finishing.pop(i)
        self._finish(g, now)
        plan.freed += self._pending_freed
        plan.finished += self._pending_finished
        self._pending_freed, self._pending_finished = [], []
