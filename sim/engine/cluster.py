"""Many replicas behind a router, in one SimPy environment.

The story, as SimPy processes:

* ``dispatcher.arrivals`` walks the trace; at each arrival it asks the
  router which replica serves the request (the router sees every replica's
  state at that instant), puts it in that replica's inbox and wakes the
  replica if it is idle;
* each replica's ``engine`` process is the single-replica engine
  (``engine.py``) over its own scheduler, KV-cache manager and executor,
  reading requests from its inbox instead of the trace.

Routing happens at arrival times only, and before any replica schedules a
step at that instant (a replica about to schedule at ``t`` first has the
dispatcher route every arrival up to ``t``), so the router's view does not
depend on SimPy's order among simultaneous events. Every replica's state at
an arrival is committed through its step in flight, in step-by-step and in
fast mode alike (a fast-mode stretch is cut at the next arrival of the whole
cluster), so the fast mode stays exactly equal to step-by-step mode.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque

import simpy

from pagesim.sim.engine.engine import Engine, cyclic_gc_paused
from pagesim.sim.workload import request_keys


class Dispatcher:
    """Hands each arriving request to the replica the router picks."""

    def __init__(self, trace, router) -> None:
        self.requests = list(trace)
        self.router = router
        self.replicas: list[Replica] = []
        self.order: list[int] = []   # replica of each request, in trace order
        self._next = 0

    def next_arrival(self) -> float | None:
        return self.requests[self._next].arrival_s if self._next < len(self.requests) else None

    def exhausted(self) -> bool:
        return self._next >= len(self.requests)

    def dispatch_until(self, t: float) -> None:
        reqs, replicas = self.requests, self.replicas
        while self._next < len(reqs) and reqs[self._next].arrival_s <= t:
            req = reqs[self._next]
            i = self.router.route(req, replicas)
            assert 0 <= i < len(replicas), f"router {self.router!r} picked replica {i} of {len(replicas)}"
            self.order.append(i)
            replicas[i].receive(req)
            self._next += 1

    def arrivals(self, env: simpy.Environment):
        for req in self.requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            self.dispatch_until(req.arrival_s)
        for r in self.replicas:  # no more work will come: let idle replicas end
            r.engine.wake()


class Replica:
    """One serving replica: a scheduler, KV-cache manager, executor and
    engine of its own, fed through an inbox. It is also the router's view of
    the replica (``sim/router.py``'s ``ReplicaView``)."""

    def __init__(self, index: int, dispatcher: Dispatcher) -> None:
        self.index = index
        self.dispatcher = dispatcher
        self.inbox: deque = deque()
        self.engine: Engine | None = None

    # ------------------------------------------------ the engine's source
    def take_until(self, t: float) -> list:
        self.dispatcher.dispatch_until(t)
        out = list(self.inbox)
        self.inbox.clear()
        return out

    def next_arrival(self) -> float | None:
        return self.inbox[0].arrival_s if self.inbox else self.dispatcher.next_arrival()

    def exhausted(self) -> bool:
        return not self.inbox and self.dispatcher.exhausted()

    def receive(self, req) -> None:
        self.inbox.append(req)
        self.engine.wake()

    # ------------------------------------------------- the router's view
    def outstanding_tokens(self) -> int:
        return self.engine.sched.open_tokens + sum(r.prompt_tokens + r.output_tokens for r in self.inbox)

    def cached_prefix_tokens(self, req) -> int:
        kv = self.engine.sched.kv
        if not kv.caps.prefix_caching:
            return 0
        keys = request_keys(req, kv.block_size, shared_prompt=False)
        return kv.num_cached_tokens(req.prompt_tokens, keys) if keys is not None else 0


class Cluster:
    """Replicas behind a router; ``engines[i]`` is replica ``i``'s engine,
    built over ``env`` with ``replicas[i]`` as its source."""

    def __init__(self, trace, router, make_engine, num_replicas: int) -> None:
        self.env = simpy.Environment()
        self.dispatcher = Dispatcher(trace, router)
        self.replicas = [Replica(i, self.dispatcher) for i in range(num_replicas)]
        self.dispatcher.replicas = self.replicas
        for r in self.replicas:
            r.engine = make_engine(self.env, r)
        self.wall_s = 0.0

    @property
    def engines(self) -> list[Engine]:
        return [r.engine for r in self.replicas]

    @property
    def clock(self) -> float:
        return max(e.clock for e in self.engines)

    def run(self, pause_gc: bool = False) -> None:
        t0 = time.perf_counter()
        env = self.env
        env.process(self.dispatcher.arrivals(env))
        procs = [env.process(e.engine()) for e in self.engines]
        for e in self.engines:
            e.sched.stretch_detail = e.on_step is not None
        with cyclic_gc_paused() if pause_gc else contextlib.nullcontext():
            env.run(until=simpy.AllOf(env, procs))
        self.wall_s = time.perf_counter() - t0
