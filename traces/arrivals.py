"""Arrival processes: when requests arrive.

An arrival process is any callable ``process(n, rng) -> times`` returning
``n`` non-decreasing arrival times in seconds; it draws only from the
``numpy.random.Generator`` it is given, so one seed fixes a whole workload.
The ones here are frozen dataclasses, so ``repr(process)`` records exactly
what was used in ``trace.meta``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pagesim.traces.trace import Trace


class ArrivalProcess(Protocol):
    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"arrival rate must be a positive number of requests/s, got {rate}")
    return rate


@dataclass(frozen=True, slots=True)
class Poisson:
    """Independent exponential gaps at ``rate`` requests/s (CV of gaps = 1).

    The first request arrives one gap after time 0, as in a process that was
    already running."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate)

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.cumsum(rng.exponential(1.0 / self.rate, size=n))


@dataclass(frozen=True, slots=True)
class Gamma:
    """Gamma-distributed gaps: mean ``1/rate``, coefficient of variation ``cv``.

    ``cv > 1`` gives bursts (many short gaps, a few long ones) at the same
    mean rate; ``cv = 1`` is Poisson; ``cv < 1`` is more regular. Shape
    ``k = 1/cv**2`` and scale ``1/(rate*k)`` fix both moments.
    """

    rate: float
    cv: float

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        if not (self.cv > 0 and math.isfinite(self.cv)):
            raise ValueError(f"cv must be positive, got {self.cv}")

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / self.cv ** 2
        return np.cumsum(rng.gamma(shape, 1.0 / (self.rate * shape), size=n))


@dataclass(frozen=True, slots=True)
class Replay:
    """The arrival times of another trace, shifted to start at 0.

    Asking for more requests than it has repeats the pattern, each copy
    starting one mean gap after the previous one ended. ``times`` is a tuple
    so that the process stays hashable and comparable.
    """

    times: tuple[float, ...]
    label: str = ""

    def __post_init__(self) -> None:
        t = np.asarray(self.times, dtype=np.float64)
        if t.size == 0 or not np.isfinite(t).all() or (np.diff(t) < 0).any():
            raise ValueError("replay needs at least one finite, non-decreasing time")

    def __repr__(self) -> str:
        return f"Replay({self.label or f'{len(self.times)} times'})"

    @classmethod
    def from_trace(cls, trace: Trace) -> Replay:
        return cls(tuple(trace.arrival_s.tolist()), label=trace.source)

    def __call__(self, n: int, rng: np.random.Generator) -> np.ndarray:
        t = np.asarray(self.times, dtype=np.float64)
        t = t - t[0]
        if n <= t.size:
            return t[:n].copy()
        gap = t[-1] / (t.size - 1) if t.size > 1 and t[-1] > 0 else 1.0
        period = t[-1] + gap
        copies = -(-n // t.size)
        tiled = (t[None, :] + period * np.arange(copies)[:, None]).ravel()
        return tiled[:n]


def draw(process: ArrivalProcess, n: int, rng: np.random.Generator) -> np.ndarray:
    """``process(n, rng)``, checked: ``n`` finite times >= 0 (a user's callable
    may return anything; a bad time must not reach the simulator)."""
    times = np.asarray(process(n, rng), dtype=np.float64)
    if times.shape != (n,) or not np.isfinite(times).all() or (times < 0).any():
        raise ValueError(f"arrival process {process!r} must return {n} finite times >= 0")
    return times


def rescale(trace: Trace, *, rate: float | None = None,
            duration: float | None = None) -> Trace:
    """The same trace with its gaps stretched to a target rate or duration.

    Rate means ``(len - 1) / duration``, i.e. one over the mean gap, so the
    burstiness (CV of gaps) is unchanged. Give exactly one target.
    """
    if (rate is None) == (duration is None):
        raise ValueError("give exactly one of rate= or duration=")
    if trace.duration_s <= 0:
        raise ValueError("cannot rescale a trace whose requests all arrive at once")
    if rate is not None:
        factor = (len(trace) - 1) / trace.duration_s / _check_rate(rate)
    else:
        if not (duration > 0 and math.isfinite(duration)):
            raise ValueError(f"duration must be positive, got {duration}")
        factor = duration / trace.duration_s
    t = trace.arrival_s
    meta = {**trace.meta, "rescaled_by": factor}
    return trace.with_arrivals(t[0] + (t - t[0]) * factor, meta=meta)
