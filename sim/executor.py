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


class CostModelExecutor:
    """Prices steps with a cost model (any object with ``price(shapes)``)."""

    needs_plans = False

    def __init__(self, model) -> None:
        self.model = model

    def execute(self, plan: StepPlan) -> float:
        price_one = getattr(self.model, "price_one", None)
        if price_one is None:
            return float(self.model.price(plan.shapes())[0])
        n_seq, n_tok, kv, pairs, _, copies, swaps = plan.shape_numbers()
        return price_one(n_seq, n_tok, kv, pairs, copies, swaps)

    def price(self, shapes: StepShapes) -> np.ndarray:
        return self.model.price(shapes)

    @property
    def price_one(self):
        """The model's scalar pricing (bit-identical to ``price``), if any."""
        return getattr(self.model, "price_one", None)

    @property
    def decode_run(self):
        """The model's pricing of a run of plain decode steps, if any (see
        ``RooflineCostModel.decode_run``)."""
        return getattr(self.model, "decode_run", None)


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
