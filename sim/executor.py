"""The executor interface: how long does a step take?

The SimPy engine never computes time itself. It hands each step to an
executor: the simulator's executor prices the step with a cost model; the GPU
executor (``gpu/executor.py``) runs it on real KV tensors and returns the
measured time. Allocation is never done here: it already happened in the
scheduler, and the plan carries its results (block tables, copy-on-write
pairs, swaps).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pagesim.sim.plan import StepPlan, StepShapes


@runtime_checkable
class Executor(Protocol):
    #: True when every step must be executed one by one (a GPU executor).
    #: False lets the engine price whole decode stretches at once with
    #: ``price`` and skip over steps whose outcome is already determined.
    needs_plans: bool

    def execute(self, plan: StepPlan) -> float:
        """Run (or price) one step; return its duration in seconds."""
        ...

    def price(self, shapes: StepShapes) -> np.ndarray:
        """Durations in seconds of K steps described by ``shapes``.

        Must be elementwise: ``price(s)[i]`` equals the price of step ``i``
        alone, bit for bit, so that the fast mode equals step-by-step mode.
        """
        ...


@runtime_checkable
class PricesOneStep(Protocol):
    """A cost model that also prices a single step from plain numbers,
    bit-identical to ``price`` (no numpy per call)."""

    def price_one(self, num_seqs, num_tokens, kv_tokens_read, attn_pairs, copy_blocks=0,
                  swap_blocks=0) -> float: ...


@runtime_checkable
class PricesDecodeRuns(Protocol):
    """A cost model that prices a run of plain decode steps at once (see
    ``RooflineCostModel.decode_run``)."""

    def decode_run(self, n: int, ctx0: int, k: int, clock: float, stop_at) -> tuple: ...


@runtime_checkable
class PricesStretches(Protocol):
    """What fast mode needs from an executor (``needs_plans`` False): the
    price of one step from its numbers, and of a run of plain decode steps
    cut at the next arrival. Both must give the floats that ``execute``
    gives step by step, so that fast mode equals step-by-step mode."""

    def price_step(self, numbers: tuple) -> float: ...

    def price_stretch(self, n: int, sum_ctx0: int, k: int, clock: float,
                      next_arrival: float | None) -> tuple: ...


#: Stretches up to this long are priced step by step with the model's
#: ``decode_run`` or scalar ``price_one``; longer ones go through ``price``.
SCALAR_PRICING_MAX = 64


class CostModelExecutor:
    """Prices steps with a cost model: any object with ``price(shapes)``,
    optionally ``price_one`` and ``decode_run`` (the protocols above, checked
    once here: the hot paths call what the model offers, without probes)."""

    needs_plans = False

    def __init__(self, model) -> None:
        self.model = model
        #: The model's scalar pricing, or None.
        self.price_one = model.price_one if isinstance(model, PricesOneStep) else None
        #: The model's pricing of decode runs, or None.
        self.decode_run = model.decode_run if isinstance(model, PricesDecodeRuns) else None

    def execute(self, plan: StepPlan) -> float:
        return self.price_step(plan.shape_numbers())

    def price(self, shapes: StepShapes) -> np.ndarray:
        return self.model.price(shapes)

    def price_step(self, numbers: tuple) -> float:
        """Duration of one step given as ``StepPlan.shape_numbers``-ordered
        numbers (a mixed step of fast mode, or a plan)."""
        if self.price_one is None:
            return float(self.model.price(StepShapes.one(numbers))[0])
        n_seq, n_tok, kv, pairs, _, copies, swaps = numbers
        return self.price_one(n_seq, n_tok, kv, pairs, copies, swaps)

    def price_stretch(self, n: int, sum_ctx0: int, k: int, clock: float, next_arrival):
        """Start times and durations of up to ``k`` decode steps of ``n``
        sequences, cut at the first step that would start at or after
        ``next_arrival`` (the step-by-step engine admits it there):
        ``(times, dts, k)``, ``times[j]`` being step j's start. Times come
        from sequential float additions on every path, so they equal the
        step-by-step clock exactly. Most stretches end at the next arrival
        long before their determined length: their first steps are priced
        one by one (no numpy call overhead), the rest in one ``price``."""
        head = min(k, SCALAR_PRICING_MAX)
        if self.decode_run is not None:
            times, dts, done = self.decode_run(n, sum_ctx0, head, clock, next_arrival)
        elif self.price_one is not None:
            times, dts, done = self._price_scalar(n, sum_ctx0, head, clock, next_arrival)
        else:
            times, dts, done = [clock], [], 0
        if done == k or (done and next_arrival is not None and times[-1] >= next_arrival):
            return times, dts, done  # ended at the stretch's end or at the next arrival
        rest = self.model.price(StepShapes.decode_stretch(n, sum_ctx0 + done * n, k - done))
        times = times + np.cumsum(np.concatenate(([times[-1]], rest)))[1:].tolist()
        dts = dts + rest.tolist()
        if next_arrival is not None:
            p = int(np.searchsorted(np.asarray(times[done + 1:k]), next_arrival, side="left"))
            k = min(k, done + p + 1)
        return times, dts, k

    def _price_scalar(self, n, sum_ctx0, k, clock, next_arrival):
        """``decode_run`` through the model's generic ``price_one``."""
        price_one = self.price_one
        times, dts = [clock], []
        t = clock
        for j in range(k):
            ctx = sum_ctx0 + j * n
            dt = price_one(n, n, ctx, float(ctx), 0, 0)
            t = t + dt
            dts.append(dt)
            times.append(t)
            if next_arrival is not None and t >= next_arrival:
                return times, dts, j + 1
        return times, dts, k


def cost_model_of(executor):
    """The cost model that prices ``executor``'s steps, or None for an
    executor that runs or replays them (a GPU executor's ``model`` is the
    network it runs, not a price list: no attribute probe can tell)."""
    return executor.model if isinstance(executor, CostModelExecutor) else None


class ReplayedExecutor:
    """Returns recorded step durations, step by step.

    Feeding a simulated replay the durations a GPU replay measured gives the
    engine the same clock, so the scheduler sees the same arrivals at the
    same steps and must make exactly the same plans and allocator calls:
    ``pagesim validate`` checks memory that way, independently of any cost
    model. It executes every step (``needs_plans``) because its durations
    are per step, not per shape.
    """

    needs_plans = True

    def __init__(self, durations) -> None:
        self.durations = [float(d) for d in durations]
        self.steps = 0

    def execute(self, plan: StepPlan) -> float:
        assert plan.step == self.steps, (
            f"replayed durations out of step: plan {plan.step}, expected {self.steps}")
        if plan.step >= len(self.durations):
            raise IndexError(f"the recorded run had {len(self.durations)} steps; the replay asks "
                             f"for step {plan.step}: the schedules diverged")
        self.steps += 1
        return self.durations[plan.step]

    def price(self, shapes: StepShapes) -> np.ndarray:
        raise NotImplementedError("ReplayedExecutor knows durations by step, not by shape")
