"""Length samplers: how many prompt and output tokens each request has.

A sampler is any callable ``sampler(n, rng) -> (prompt, output)`` returning
two int64 arrays of ``n`` lengths >= 1, drawn only from ``rng``.

The built-in workloads match the means the vLLM paper reports for its
datasets (Kwon et al., SOSP'23, section 6.1): ShareGPT 161.31 input / 337.99
output tokens, Alpaca 19.31 / 58.45. The paper gives means and histograms,
not a distribution, so we take a lognormal (lengths of human text and of
model answers are right-skewed with a long tail), round it to integers and
clip it to [1, 2048] (the paper's models have a 2048-token context), and
solve for the location ``mu`` that makes the mean of the *clipped, rounded*
variable hit the target exactly (see ``clipped_mean``). The spreads are our
choice: sigma 1.0 for ShareGPT (CV about 1.1-1.3; the ShareGPT length sample in
``shared/traces/raw`` has a log-std of output lengths of 1.00), and sigma
0.6 / 0.8 for Alpaca's short instructions and answers, so that ShareGPT has
the "higher variance" the paper notes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pagesim.traces.load import read_table


def clipped_mean(mu: float, sigma: float, lo: int, hi: int) -> float:
    """Exact mean of ``clip(rint(X), lo, hi)`` for ``X ~ LogNormal(mu, sigma)``.

    For an integer variable ``Y`` in ``[lo, hi]``,
    ``E[Y] = lo + sum_{k=lo+1..hi} P(Y >= k)``, and ``Y >= k`` exactly when
    ``X >= k - 1/2``.
    """
    ks = np.arange(lo + 1, hi + 1, dtype=np.float64)
    z = (np.log(ks - 0.5) - mu) / (sigma * math.sqrt(2.0))
    tail = 0.5 * np.array([math.erfc(x) for x in z.tolist()])
    return float(lo + tail.sum())


@lru_cache(maxsize=None)
def solve_mu(mean: float, sigma: float, lo: int = 1, hi: int = 2048) -> float:
    """The lognormal location whose clipped, rounded mean equals ``mean``."""
    if not lo < mean < hi:
        raise ValueError(f"mean {mean} must lie strictly between {lo} and {hi}")
    a, b = -10.0, math.log(hi) + 10.0 * sigma
    for _ in range(80):                 # the clipped mean increases with mu
        mid = 0.5 * (a + b)
        if clipped_mean(mid, sigma, lo, hi) < mean:
            a = mid
        else:
            b = mid
    return 0.5 * (a + b)


@dataclass(frozen=True, slots=True)
class LognormalLengths:
    """Independent lognormal prompt and output lengths with given means after
    rounding and clipping to ``[1, max_len]`` (each length separately)."""

    prompt_mean: float
    output_mean: float
    prompt_sigma: float = 1.0
    output_sigma: float = 1.0
    max_len: int = 2048

    def _draw(self, mean, sigma, n, rng):
        mu = solve_mu(float(mean), float(sigma), 1, int(self.max_len))
        x = np.rint(rng.lognormal(mu, sigma, size=n))
        return np.clip(x, 1, self.max_len).astype(np.int64)

    def __call__(self, n: int, rng: np.random.Generator):
        prompt = self._draw(self.prompt_mean, self.prompt_sigma, n, rng)
        output = self._draw(self.output_mean, self.output_sigma, n, rng)
        return prompt, output


@dataclass(frozen=True, slots=True)
class FixedLengths:
    """Every request has the same lengths (for controlled experiments)."""

    prompt: int
    output: int

    def __post_init__(self) -> None:
        if self.prompt < 1 or self.output < 1:
            raise ValueError("fixed lengths must be at least 1 token")

    def __call__(self, n: int, rng: np.random.Generator):
        return (np.full(n, self.prompt, dtype=np.int64),
                np.full(n, self.output, dtype=np.int64))


@dataclass(frozen=True, slots=True)
class EmpiricalLengths:
    """Draws (prompt, output) pairs, with replacement, from a sample, keeping
    each pair together so that their correlation survives."""

    prompt: tuple[int, ...]
    output: tuple[int, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.prompt or len(self.prompt) != len(self.output):
            raise ValueError("need equally many (at least one) prompt and output lengths")

    def __repr__(self) -> str:
        return f"EmpiricalLengths({self.label or f'{len(self.prompt)} pairs'})"

    @classmethod
    def from_file(cls, path: str | Path, fmt: str | None = None) -> EmpiricalLengths:
        """Any readable trace file (length-only CSVs need no arrival here)."""
        frame = read_table(path, fmt).frame
        return cls(tuple(frame["prompt_tokens"].tolist()),
                   tuple(np.maximum(frame["output_tokens"], 1).tolist()),
                   label=str(path))

    def __call__(self, n: int, rng: np.random.Generator):
        pick = rng.integers(0, len(self.prompt), size=n)
        return (np.asarray(self.prompt, dtype=np.int64)[pick],
                np.asarray(self.output, dtype=np.int64)[pick])


WORKLOADS = {
    "sharegpt": LognormalLengths(161.31, 337.99, 1.0, 1.0),
    "alpaca": LognormalLengths(19.31, 58.45, 0.6, 0.8),
}


def length_sampler(spec):
    """A sampler from a workload name, ``"fixed:PROMPT:OUTPUT"``, a path to a
    trace or length file, or a sampler (returned as is)."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in WORKLOADS:
        return WORKLOADS[spec]
    if isinstance(spec, str) and spec.startswith("fixed:"):
        prompt, _, output = spec[6:].partition(":")
        return FixedLengths(int(prompt), int(output))
    if isinstance(spec, (str, Path)) and Path(spec).is_file():
        return EmpiricalLengths.from_file(spec)
    raise ValueError(f"unknown workload {spec!r}: expected one of {sorted(WORKLOADS)}, "
                     "'fixed:P:O', a length file, or a sampler")
