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


class CostModelExecutor:
    """Prices steps with a cost model: any object with ``price(shapes)``,
    optionally ``price_one`` and ``decode_run`` (the protocols above)."""

    needs_plans = False

    def __init__(self, model) -> None:
        self.model = model
        #: The model's scalar pricing, or None.
        self.price_one = model.price_one if isinstance(model, PricesOneStep) else None
        #: The model's pricing of decode runs, or None.
        self.decode_run = model.decode_run if isinstance(model, PricesDecodeRuns) else None

    def execute(self, plan: StepPlan) -> float:
        if self.price_one is None:
            return float(self.model.price(plan.shapes())[0])
        n_seq, n_tok, kv, pairs, _, copies, swaps = plan.shape_numbers()
        return self.price_one(n_seq, n_tok, kv, pairs, copies, swaps)

    def price(self, shapes: StepShapes) -> np.ndarray:
        return self.model.price(shapes)


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
