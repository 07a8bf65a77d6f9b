"""Groups that wait on a block transfer (PCIe links on).

With ``--link-model pcie`` swaps and CPU offload-tier loads overlap compute
(``sim/engine/links.py``): a group swapped in, or admitted with prefix
blocks to load, enters the running list at once (its blocks are allocated)
but runs only in a step that starts once they are resident. The scheduler
stays pure Python: it records such groups (``take_holds``), the engine puts
their blocks on the link and answers with the time they arrive
(``resident_at``), and the scheduler compares it with the engine's clock
(``now``) when it next schedules. A held group is never a member of the
fast mode's lazy decode set, so no decode stretch runs while one waits:
both engine modes take the same steps.

Mixed into ``Scheduler``; kept apart because nothing else of the scheduler
needs to know about transfers.
"""
from __future__ import annotations

import math

from pagesim.sim.plan import StepPlan
from pagesim.sim.sequence import Group


class HeldGroups:
    def init_held(self) -> None:
        #: gid -> [time its blocks are resident (None: the engine has not
        #: said yet), query tokens whose slots its admission took, ids of
        #: the GPU blocks it waits for, the earliest time it may run]
        self.held: dict[int, list] = {}
        self._new_holds: list = []
        #: GPU block id -> when its copy ends, for blocks a transfer fills
        #: (infinity until the engine has timed it): a later admission
        #: whose prefix hits one waits for it too.
        self.block_ready: dict[int, float] = {}
        self.now = 0.0   # the engine's clock when it asks for a step

    def _group_blocks(self, g: Group) -> list[int]:
        seen = {}
        for s in g.seqs:
            seen.update(dict.fromkeys(self.kv.block_table(s.seq_id)))
        return list(seen)

    def _wait_for_blocks(self, g: Group, cached: int, q: int) -> bool:
        """Hold ``g``, just admitted with ``cached`` tokens found, if part
        of its prefix is not resident yet: blocks it loads from the CPU
        tier (a new transfer), or cached blocks another group's transfer is
        still filling (their known arrival)."""
        sid = g.seqs[0].seq_id
        loading = self.tier.blocks_loading(sid) if self.tier is not None else 0
        if not loading and not self.block_ready:
            return False
        table = self.kv.block_table(sid)
        hit_end = cached // self.kv.block_size
        ready = self.block_ready
        after = max((ready.get(b, 0.0) for b in table[:hit_end - loading]), default=0.0)
        if loading or after == math.inf:
            # a copy of its own, or one made in this very step and not timed
            # yet: the link serves in order, so its own entry (of no blocks
            # if it loads nothing) ends after the copy it hits
            self._hold(g, "load", loading, q, table[hit_end - loading:hit_end],
                       0.0 if after == math.inf else after)
            return True
        if after > self.now:
            self.held[g.gid] = [after, q, [], after]
            return True
        return False

    def _hold(self, g: Group, kind: str, blocks: int, reserved: int, block_ids: list[int],
              after: float = 0.0) -> None:
        self.held[g.gid] = [None, reserved, block_ids, after]
        self._new_holds.append((g, kind, blocks))
        for b in block_ids:
            self.block_ready[b] = math.inf

    def _drop_hold(self, g: Group) -> int:
        """Forget ``g``'s hold (it was preempted); returns the query tokens
        whose slots its admission had taken (0: none, or not held)."""
        h = self.held.pop(g.gid, None)
        return h[1] if h is not None else 0

    def take_holds(self) -> list[tuple[Group, str, int]]:
        """Groups held since the last call, why (``swap_in`` or ``load``
        from the CPU tier) and the blocks they wait for, for the engine's link."""
        out, self._new_holds = self._new_holds, []
        return out

    def resident_at(self, g: Group, t: float) -> None:
        """The engine's answer: ``g``'s blocks are on the GPU from ``t`` on
        (a group preempted since it was held waits for nothing any more)."""
        h = self.held.get(g.gid)
        if h is None:
            return
        h[0] = t if t > h[3] else h[3]
        ready, now = self.block_ready, self.now
        if len(ready) > 4096:  # forget copies long done
            for b in [b for b, end in ready.items() if end <= now]:
                del ready[b]
        for b in h[2]:
            ready[b] = t

    def next_resident(self) -> float | None:
        """Earliest time a held group's blocks arrive (None: none held)."""
        return min((h[0] for h in self.held.values()), default=None)

    def _resume_held(self, plan: StepPlan, g: Group, index: int, budget: int) -> int | None:
        """A held group runs once its blocks are resident (at the engine's
        ``now``): a swapped-in one as any running group (``reserved`` 0),
        one admitted with loads by computing the ``reserved`` query tokens
        whose slots its admission took. Returns the budget left, or None
        when ``g`` was preempted making room for itself."""
        ready, reserved, _, _ = self.held[g.gid]
        if ready is None or ready > self.now:
            return budget
        if not reserved:
            q = self._tokens_for(g, budget)
            if q == 0:
                return budget
            if not self._reserve(g, q, index, plan):
                return None
        elif reserved > budget:
            return budget
        else:
            q = reserved
        del self.held[g.gid]
        self._add_to_plan(plan, g, q)
        return budget - q * len(g.seqs)
