"""The SimPy engine: arrivals come in, steps go out, time advances.

Two processes tell the story:

* ``arrivals`` walks the trace and, at each arrival time, wakes the engine
  if it is idle;
* ``engine`` repeatedly asks the scheduler for a step, asks the executor how
  long it takes (``yield env.timeout(...)``) and commits the step.

The scheduler offers either a ``StepPlan`` (one step, executed by the
executor) or, in fast mode, a ``DecodeStretch`` (determined decode steps,
priced from their totals and cut at the next arrival); the engine commits
what ran either way.

Hook contract: ``on_step(record, start_s, duration_s)`` is called for every
engine step before it is committed. ``record`` is a ``StepPlan`` with
``start_s`` and ``duration_s`` floats, or a ``DecodeStretch`` of ``k >= 1``
steps with ``start_s`` and ``duration_s`` sequences of length ``k``; its
``plans()`` expands it into the ``StepPlan``s step-by-step mode makes (the
engine asks the scheduler for that detail only when a hook is set). Both
modes thus report the same steps.

``check_invariants = N`` runs ``sim/invariants.py``'s checks of the
allocator and scheduler at the first step boundary at or after every
multiple of ``N`` steps (stretches are not cut for it).

Block moves beyond the plans' swaps (a CPU offload tier's loads and
offloads; swaps and loads on a PCIe link with ``--link-model pcie``) are
handed to ``transfers`` (``links.Transfers``) after each ``schedule`` and
each pure stretch's commit. With links, a step in which only groups waiting
on the link are left runs nothing and costs nothing: the clock moves to the
first transfer's end or the next arrival.

The engine keeps its own clock (a float advanced by exactly the executor's
durations) and admits every request with ``arrival_s <= clock`` before each
step, so that tie-breaking between an arrival and a step ending at the same
instant does not depend on SimPy's event order, and the fast mode (which
prices a whole decode stretch at once) gives exactly the step-by-step
result. SimPy's own time follows that clock.
"""
from __future__ import annotations

import contextlib
import gc
import time

import simpy

from pagesim.sim.executor import PricesStretches
from pagesim.sim.invariants import check_scheduler
from pagesim.sim.plan import StepPlan


class TraceSource:
    """A trace's requests, handed to the engine in arrival order."""

    def __init__(self, trace) -> None:
        self.requests = list(trace)
        self._next = 0           # next request not yet handed out

    def take_until(self, t: float) -> list:
        """Requests arriving at or before ``t`` not handed out yet."""
        reqs, i = self.requests, self._next
        while i < len(reqs) and reqs[i].arrival_s <= t:
            i += 1
        out, self._next = reqs[self._next:i], i
        return out

    def next_arrival(self) -> float | None:
        return self.requests[self._next].arrival_s if self._next < len(self.requests) else None

    def exhausted(self) -> bool:
        return self._next >= len(self.requests)


class Engine:
    def __init__(self, trace, scheduler, executor, *, fast: bool = True, recorder=None,
                 progress: bool = False, on_step=None, check_invariants: int = 0,
                 env: simpy.Environment | None = None, source=None, transfers=None) -> None:
        #: Where requests come from: the trace itself, or a replica's inbox
        #: (``sim/engine/cluster.py``), which a router fills.
        own = source is None
        self.source = TraceSource(trace) if own else source
        #: Requests whose arrivals this engine times itself (a replica's
        #: come from the dispatcher, which wakes it).
        self.requests = self.source.requests if own else []
        self.sched = scheduler
        self.executor = executor
        self.fast = fast and not executor.needs_plans
        assert not self.fast or isinstance(executor, PricesStretches), (
            "fast mode prices decode stretches: an executor without needs_plans "
            "must offer price_step and price_stretch (sim.executor.PricesStretches)")
        scheduler.fast = self.fast
        self.check_invariants = check_invariants
        self._next_check = check_invariants
        self.recorder = recorder
        self.progress = progress
        self.on_step = on_step
        #: Pause the cyclic garbage collector while running (see
        #: ``cyclic_gc_paused``): faster, but it changes process-wide state
        #: for the duration, so only the CLI opts in.
        self.pause_gc = False
        self.env = env if env is not None else simpy.Environment()
        #: The replica's block moves (``links.Transfers``), or None when
        #: the manager makes none beyond the swaps its plans pay for.
        self.transfers = transfers
        self.clock = 0.0
        self._idle: simpy.Event | None = None
        self.wall_s = 0.0

    # -------------------------------------------------------------- processes
    def arrivals(self):
        env = self.env
        for req in self.requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            self.wake()

    def wake(self) -> None:
        """End an idle wait (an arrival for this engine)."""
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed()

    def _admit_arrivals(self) -> None:
        for req in self.source.take_until(self.clock):
            self.sched.add_request(req)

    def engine(self):
        env, sched = self.env, self.sched
        bar = self._progress_bar()
        while True:
            self._admit_arrivals()
            if not sched.has_work():
                if self.source.exhausted():
                    break
                self._idle = env.event()
                yield self._idle
                self._idle = None
                woken_at = self.source.next_arrival()
                self.clock = max(self.clock, env.now if woken_at is None else woken_at)
                continue
            done_before, preempted = sched.step, sched.preemptions
            sched.now = self.clock
            outcome = sched.schedule()
            if self.transfers is not None:
                self.transfers.scheduled(outcome, self.clock)
            if type(outcome) is StepPlan:
                new_clock = self._run_plan(outcome, sched.preemptions - preempted)
            else:
                new_clock = self._run_stretch(outcome)
            self.clock = new_clock
            if self.check_invariants and sched.step >= self._next_check:
                check_scheduler(sched)
                self._next_check = (sched.step // self.check_invariants + 1) * self.check_invariants
            if new_clock > env.now:
                yield env.timeout(new_clock - env.now)
            if bar is not None:
                bar.update(sched.step - done_before)
        if bar is not None:
            bar.close()

    def _run_plan(self, plan: StepPlan, preemptions: int) -> float:
        sched, kv = self.sched, self.sched.kv
        counters = kv.counters(sched.pending_tokens())
        live = sched.live_tokens()
        waiting = self.transfers is not None and not plan.seq_ids and sched.held
        # nothing runs while every running group waits on the link: no step is paid
        dt = 0.0 if waiting else self.executor.execute(plan)
        start = self.clock
        end = start + dt
        if self.recorder is not None:
            n_seq, n_tok, kv_read, _, n_pre, _, _ = plan.shape_numbers()
            self.recorder.add(plan.step, start, dt, (n_seq, n_tok, n_pre, kv_read),
                              preemptions, live, counters)
        if self.on_step is not None:
            self.on_step(plan, start, dt)
        sched.commit(plan, end)
        if waiting:
            return self.transfers.idle_until(end, self.source.next_arrival())
        return end

    def _run_stretch(self, st) -> float:
        """A mixed step (priced as one step) or a pure stretch (priced in
        bulk, cut at the next arrival)."""
        sched, start = self.sched, self.clock
        if st.admitted is not None:
            counters = sched.kv.counters(sched.pending_tokens())
            numbers = st.step_numbers()
            dt = self.executor.price_step(numbers)
            end = start + dt
            if self.recorder is not None:
                n_seq, n_tok, kv_read, _, n_pre, _, _ = numbers
                self.recorder.add(st.step, start, dt, (n_seq, n_tok, n_pre, kv_read), 0,
                                  sched.live_tokens(), counters)
            if self.on_step is not None:
                self.on_step(st, [start], [dt])
            sched.commit(st, end)
            return end
        times, dts, k = self.executor.price_stretch(st.num_seqs, st.sum_context0, st.num_steps,
                                                    start, self.source.next_arrival())
        st.cut(k)
        if self.on_step is not None:
            self.on_step(st, times[:k], dts[:k])
        end = float(times[k])
        sched.commit(st, end)
        if self.transfers is not None:
            self.transfers.committed(st, start)
        if self.recorder is not None:
            self.recorder.add_stretch(st.step, k, st.num_seqs, st.sum_context0, st.live_tokens0,
                                      times, dts, st.event_steps, st.event_counters)
        return end

    def _progress_bar(self):
        if not self.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a core dependency
            return None
        return tqdm(unit=" steps", mininterval=0.5, desc="replay")

    # -------------------------------------------------------------------- run
    def run(self) -> None:
        t0 = time.perf_counter()
        self.sched.stretch_detail = self.on_step is not None
        self.env.process(self.arrivals())
        proc = self.env.process(self.engine())
        with cyclic_gc_paused() if self.pause_gc else contextlib.nullcontext():
            self.env.run(until=proc)
        self.wall_s = time.perf_counter() - t0


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause CPython's cyclic garbage collector for the duration.

    A replay keeps millions of long-lived containers (requests, sequences,
    step rows), so every full collection rescans the whole heap: on the
    Azure conversation trace that was 0.9 s of a 6 s run, for nothing. The
    engine creates no reference cycles per step, so memory stays bounded by
    reference counting alone. The collector's previous state is restored
    on the way out, errors included.

    On the way out the run's objects go straight to the oldest generation
    (``freeze`` then ``unfreeze``): they are the replay's long-lived state
    and results, and scanning them all as young objects at the next
    allocation cost another 0.15 s of the Azure run. They are still scanned
    by the next full collection, so nothing escapes the collector.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()
