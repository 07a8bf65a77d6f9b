"""A replica's PCIe link: block transfers that overlap compute.

vLLM moves swapped and offloaded KV blocks on a CUDA stream of their own,
so a copy does not stretch the step that starts it; only a sequence that
needs the copied blocks waits. With ``--link-model pcie`` each replica has
one PCIe link, two directions that do not share bandwidth (PCIe is full
duplex): host-to-device carries swap-ins and CPU offload-tier loads, which
the groups admitted or swapped in wait for; device-to-host carries
swap-outs and offloads, which nobody waits for (the simulator frees the
source blocks at once, as the scheduler does today).

Each direction is a SimPy resource of capacity one, served first come,
first served: a transfer of ``n`` blocks enqueued at ``t`` holds it from
``max(t, end of the previous transfer)`` for ``n * block_s`` seconds, where
``block_s`` is the cost model's per-block swap time (the GPU preset's PCIe
bandwidth, or a calibration file's ``swap_block_s``). The end time is
computed when the transfer is enqueued (a float sum, the same in both engine
modes) and handed to the scheduler (``Scheduler.resident_at``), which keeps
the waiting group out of the steps that start before it; the SimPy process
that holds the resource for that span is the link's own timeline.

Transfers enter a link at the start of the step whose scheduling made them
(offloads of a fast-mode stretch happen only in its first step: see
``sim/offload.py``'s ``steps_before_offload``), so the link's log is the
same in fast and step-by-step mode.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import simpy

from pagesim.sim.plan import StepPlan

H2D, D2H = "h2d", "d2h"
LINK_MODELS = ("none", "pcie")


@runtime_checkable
class PricesSwaps(Protocol):
    """A cost model that knows one block's PCIe copy time."""

    swap_block_s: float


class Link:
    """One direction of a PCIe link: FIFO, one transfer at a time."""

    def __init__(self, env: simpy.Environment, direction: str, block_s: float) -> None:
        self.env = env
        self.direction = direction
        self.block_s = block_s
        self.resource = simpy.Resource(env, capacity=1)
        self.free_at = 0.0
        #: (direction, kind, step, enqueued_s, start_s, end_s, blocks)
        self.rows: list[tuple] = []

    def transfer(self, kind: str, blocks: int, at: float, step: int) -> float:
        """Enqueue ``blocks`` at ``at``; returns when the last one has
        arrived. No blocks: when the transfers queued before have ended (a
        group waiting on blocks another transfer of this step fills)."""
        start = at if at > self.free_at else self.free_at
        if not blocks:
            return start
        end = start + blocks * self.block_s
        self.free_at = end
        self.rows.append((self.direction, kind, step, at, start, end, blocks))
        self.env.process(self._hold(start, end))
        return end

    def _hold(self, start: float, end: float):
        with self.resource.request() as req:
            yield req
            if start > self.env.now:
                yield self.env.timeout(start - self.env.now)
            if end > self.env.now:
                yield self.env.timeout(end - self.env.now)


class Transfers:
    """The engine's side of a replica's block moves (``plan.swap_in`` /
    ``swap_out``, the CPU offload tier's loads and offloads).

    Without links (``links=False``) loads join the step's plan, which pays
    for them as it pays for swaps, and offloads cost nothing (an
    asynchronous store). With links the plan pays for none of them
    (``StepPlan.on_link``) and they go on ``h2d`` / ``d2h``."""

    def __init__(self, env: simpy.Environment, sched, *, links: bool, block_s: float = 0.0) -> None:
        self.sched = sched
        self.tier = sched.tier   # the manager, if it has a CPU offload tier
        self.links = links
        self.h2d = Link(env, H2D, block_s) if links else None
        self.d2h = Link(env, D2H, block_s) if links else None
        sched.async_transfers = links

    def scheduled(self, outcome, start: float) -> None:
        """After ``schedule``: put this step's moves where they belong."""
        plan = outcome if type(outcome) is StepPlan else outcome.admitted
        offloads, loads = self.tier.take_transfers() if self.tier is not None else ((), ())
        if plan is None:  # a pure stretch: its moves come at commit
            assert not loads, "a pure decode stretch admitted nobody, so loaded nothing"
            self._offloads(offloads, start, outcome.step)
            return
        plan.load = [(cpu, gpu) for cpu, gpu, _ in loads]
        if not self.links:
            return
        plan.on_link = True
        if plan.swap_out:
            self.d2h.transfer("swap_out", len(plan.swap_out), start, plan.step)
        self._offloads(offloads, start, plan.step)
        for g, kind, blocks in self.sched.take_holds():
            self.sched.resident_at(g, self.h2d.transfer(kind, blocks, start, plan.step))

    def committed(self, st, start: float) -> None:
        """After a pure stretch's commit: the offloads of its first step."""
        if self.tier is not None:
            offloads, loads = self.tier.take_transfers()
            assert not loads, "a pure decode stretch admitted nobody, so loaded nothing"
            self._offloads(offloads, start, st.step)

    def _offloads(self, offloads, start: float, step: int) -> None:
        if offloads and self.links:
            self.d2h.transfer("offload", len(offloads), start, step)

    def idle_until(self, clock: float, next_arrival: float | None) -> float:
        """When a step that ran nothing because every running group waits
        on the link ends: the first group's blocks arriving or the next
        arrival, whichever is first."""
        t = self.sched.next_resident()
        assert t is not None and t > clock, (
            f"a step ran nothing at {clock} while no transfer was in flight (livelock)")
        return t if next_arrival is None or next_arrival > t else next_arrival

    def rows(self) -> list[tuple]:
        return (self.h2d.rows + self.d2h.rows) if self.links else []


LINK_COLUMNS = ("direction", "kind", "step", "enqueued_s", "start_s", "end_s", "blocks")


def link_summary(rows, sim_time_s: float) -> dict:
    """Blocks moved, busy time and utilisation (busy / simulated time) per
    direction, from ``Transfers.rows()``-shaped rows."""
    out = {}
    for d in (H2D, D2H):
        mine = [r for r in rows if r[0] == d]
        busy = sum(r[5] - r[4] for r in mine)
        wait = sum(r[4] - r[3] for r in mine)
        out[d] = {"transfers": len(mine), "blocks": sum(r[6] for r in mine), "busy_s": busy,
                  "queued_s": wait, "utilisation": busy / sim_time_s if sim_time_s > 0 else None}
    return out
