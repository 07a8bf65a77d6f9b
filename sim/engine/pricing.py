"""Pricing what the scheduler offers: one step, or a stretch of decode steps.

The engine asks the executor how long steps take. An explicit ``StepPlan``
goes to ``executor.execute``; a fast-mode ``DecodeStretch`` is priced from
its totals, with the executor's optional scalar ``price_one`` or
``decode_run`` where it has them (no numpy call overhead; most stretches end
at the next arrival long before their determined length) and its vectorised
``price`` otherwise. Every path gives the same floats as pricing each step
alone, so fast mode equals step-by-step mode.
"""
from __future__ import annotations

import numpy as np

from pagesim.sim.plan import StepShapes

#: Stretches up to this long are priced step by step with the executor's
#: ``decode_run`` or scalar ``price_one``.
SCALAR_PRICING_MAX = 64


def price_step(executor, numbers: tuple) -> float:
    """Duration of one step given as ``StepPlan.shape_numbers``-ordered
    numbers (a mixed step), exactly as ``CostModelExecutor.execute`` prices
    the same step as a plan."""
    price_one = getattr(executor, "price_one", None)
    if price_one is not None:
        n_seq, n_tok, kv, pairs, _, copies, swaps = numbers
        return price_one(n_seq, n_tok, kv, pairs, copies, swaps)
    return float(executor.price(StepShapes.one(numbers))[0])


def price_stretch(executor, n: int, sum_ctx0: int, k: int, clock: float, next_arrival):
    """Step durations and start times of up to ``k`` decode steps, cut at the
    first step that would start at or after ``next_arrival`` (the
    step-by-step engine admits it there). ``times[j]`` is step j's start;
    times come from sequential float additions either way, so they equal
    the step-by-step clock exactly."""
    decode_run = getattr(executor, "decode_run", None)  # optional capabilities
    price_one = getattr(executor, "price_one", None)
    head = min(k, SCALAR_PRICING_MAX)
    if decode_run is not None:
        times, dts, done = decode_run(n, sum_ctx0, head, clock, next_arrival)
    elif price_one is not None:
        times, dts, done = _price_scalar(price_one, n, sum_ctx0, head, clock, next_arrival)
    else:
        times, dts, done = [clock], [], 0
    if done == k or (done and next_arrival is not None and times[-1] >= next_arrival):
        return times, dts, done  # ended at the stretch's end or at the next arrival
    head_t, head_d, clock = times, dts, times[-1]
    rest = executor.price(StepShapes.decode_stretch(n, sum_ctx0 + done * n, k - done))
    times = head_t + np.cumsum(np.concatenate(([clock], rest)))[1:].tolist()
    dts = head_d + rest.tolist()
    if next_arrival is not None:
        p = int(np.searchsorted(np.asarray(times[done + 1:k]), next_arrival, side="left"))
        k = min(k, done + p + 1)
    return times, dts, k


def _price_scalar(price_one, n, sum_ctx0, k, clock, next_arrival):
    """``decode_run`` through a model's generic ``price_one``."""
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
