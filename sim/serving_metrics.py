"""Serving metrics in the words of ``vllm bench serve --save-result``.

A serving engineer compares runs by the keys vLLM's benchmark writes:
``completed``, ``request_throughput``, ``output_throughput``,
``total_token_throughput``, ``request_goodput`` and ``mean_/median_/std_/pNN_``
of ``ttft_ms``, ``tpot_ms``, ``itl_ms`` and ``e2el_ms``. This module computes
them from the replay's tables with the benchmark's definitions:

* TTFT = first token - arrival; E2EL = finish - arrival (all completed requests);
* TPOT = (E2EL - TTFT) / (output tokens - 1), only for requests with more than
  one output token; for goodput a one-token request counts as TPOT 0;
* ITL = the gaps between consecutive output tokens of a request, pooled over
  all requests (so long requests weigh more than in TPOT);
* goodput = completed requests meeting every SLO (``ttft``, ``tpot``, ``e2el``
  in ms, inclusive), per second;
* throughputs divide by the benchmark duration: first arrival to last finish;
* std is the population standard deviation, percentiles interpolate linearly
  (numpy's defaults, which the benchmark uses).

Inter-token latencies are derived from the step table, not recorded: every
engine step emits one token for each running decode, so a request's tokens
after the first fall on the step ends in ``(first_token_s, finish_s]``. When a
request decoded in every one of those steps (never preempted: the tests check
the count matches exactly) its ITLs are exact. A preempted request misses
steps while it waits; its stall is counted as one gap (the first), followed by
its last ``k - 1`` step gaps, so the gaps still add up to E2EL - TTFT.

The pooled ITLs of a long run are hundreds of millions of numbers; they are
kept as (value, count) pairs instead: each step gap weighted by the number of
requests that saw it, plus one stall gap per request.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
DEFAULT_PERCENTILES = (99.0,)   # vLLM's default --metric-percentiles


def parse_percentiles(spec: str) -> tuple[float, ...]:
    """``"50,90,99"`` -> ``(50.0, 90.0, 99.0)`` (``--metric-percentiles``)."""
    out = []
    for part in str(spec).split(","):
        try:
            p = float(part)
        except ValueError:
            raise ValueError(f"--metric-percentiles: {part!r} is not a number") from None
        if not 0 < p < 100:
            raise ValueError(f"--metric-percentiles: {part!r} is not in (0, 100)")
        out.append(p)
    return tuple(out)


def parse_goodput(items) -> tuple[tuple[str, float], ...]:
    """``["ttft:500", "tpot:50"]`` -> ``(("ttft", 500.0), ("tpot", 50.0))`` in ms."""
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"--goodput: {item!r} is not NAME:MS with NAME in {', '.join(GOODPUT_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput: {item!r} has no number of milliseconds") from None
        if ms < 0:
            raise ValueError(f"--goodput: {item!r} is negative")
        out[name] = ms
    return tuple(out.items())


def percentile_key(p: float) -> str:
    """vLLM writes ``p99`` for 99 and ``p99.9`` for 99.9."""
    return f"p{int(p)}" if int(p) == p else f"p{p}"


# ---------------------------------------------------------------- statistics
def weighted_stats(values, counts, percentiles) -> dict[str, float]:
    """mean/median/std/percentiles of ``values`` repeated ``counts`` times,
    equal to numpy's on the expanded array (no expansion). ``counts`` keep
    their integer type (32-bit ITL weights stay 32-bit): with one value per
    engine step, each temporary here is 25-50 MB in a 6 M-step run, so they
    are few and freed early."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(counts)
    keep = w > 0
    if not keep.all():
        v, w = v[keep], w[keep]
    del keep
    n = int(w.sum(dtype=np.int64))
    if n == 0:  # vLLM reports 0 for a metric with no samples (np.mean(x or 0))
        return {"mean": 0.0, "median": 0.0, "std": 0.0, **{percentile_key(p): 0.0 for p in percentiles}}
    order = np.argsort(v, kind="stable")
    v = v[order]
    w = w[order]
    del order
    cum = np.cumsum(w, dtype=np.int64)
    mean = float((v * w).sum() / n)
    dev = v - mean          # (v - mean) ** 2 * w, one temporary: square is ** 2's own kernel
    np.square(dev, out=dev)
    dev *= w
    std = float(np.sqrt(max(dev.sum() / n, 0.0)))
    del dev

    def pct(p):
        h = (n - 1) * p / 100.0
        lo = int(np.floor(h))
        hi = min(lo + 1, n - 1)
        a = v[np.searchsorted(cum, lo, side="right")]
        b = v[np.searchsorted(cum, hi, side="right")]
        return float(a + (h - lo) * (b - a))

    return {"mean": mean, "median": pct(50.0), "std": std,
            **{percentile_key(p): pct(p) for p in percentiles}}


def itl_samples(requests: pd.DataFrame, steps: pd.DataFrame):
    """Pooled inter-token latencies (seconds) as ``(values, counts)``, one
    value per step gap plus one per request (``counts`` 32-bit: how many
    requests decoded through that gap, at most the batch size).

    See the module docstring: step gaps weighted by how many completed
    requests decoded through them, plus each request's first gap (which
    holds any preemption stall).
    """
    done = requests[requests["finish_s"].notna()]
    ends = np.add(steps["start_s"].to_numpy(dtype=np.float64), steps["duration_s"].to_numpy(dtype=np.float64))
    first = done["first_token_s"].to_numpy(dtype=np.float64)
    finish = done["finish_s"].to_numpy(dtype=np.float64)
    k = done["output_tokens"].to_numpy(dtype=np.int64) - 1  # tokens after the first
    hi = np.searchsorted(ends, finish, side="right")        # one past the finishing step
    lo = np.searchsorted(ends, first, side="right")         # first step after the first token
    k = np.minimum(k, hi - lo)                              # steps the request could decode in
    has = k > 0
    k, hi, first = k[has], hi[has], first[has]
    start = hi - k                                          # index of the request's 2nd token
    # (a 6 M-step run: each temporary here is 25-50 MB; written in place, freed early)
    gaps = max(len(ends) - 1, 0)
    values = np.empty(gaps + len(start), dtype=np.float64)
    np.subtract(ends[1:], ends[:-1], out=values[:gaps])     # step gaps ends[j+1] - ends[j] (np.diff)
    np.subtract(ends[start], first, out=values[gaps:])      # each request's first gap (its stall)
    del ends
    # count the requests decoding through each gap j in [start, hi - 1)
    cover = np.zeros(gaps + 2, dtype=np.int64)
    np.add.at(cover, start, 1)
    np.add.at(cover, hi - 1, -1)
    np.cumsum(cover, out=cover)
    weights = np.ones(len(values), dtype=np.int32)
    weights[:gaps] = cover[:gaps]
    return values, weights


# ---------------------------------------------------------------- the block
def serving_metrics(requests: pd.DataFrame, steps: pd.DataFrame, *, end_s: float,
                    percentiles=DEFAULT_PERCENTILES, goodput=()) -> dict:
    """The ``serving`` block of ``summary.json`` (keys as vLLM's result JSON)."""
    done = requests[requests["finish_s"].notna()]
    start_s = float(requests["arrival_s"].min()) if len(requests) else 0.0
    duration = end_s - start_s if end_s > start_s else 0.0
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    out_tokens = int(done["output_tokens"].sum())
    in_tokens = int(done["prompt_tokens"].sum())
    ttft = done["ttft_s"].to_numpy(dtype=np.float64)
    e2el = done["e2e_s"].to_numpy(dtype=np.float64)
    tpot_all = done["tpot_s"].fillna(0.0).to_numpy(dtype=np.float64)
    tpot = done["tpot_s"].dropna().to_numpy(dtype=np.float64)
    out = {
        "duration": duration,
        "completed": int(len(done)),
        "failed": int(len(requests) - len(done)),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": per_s(len(done)),
        "request_goodput": None,
        "output_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(in_tokens + out_tokens),
    }
    if goodput:
        per_metric = {"ttft": ttft, "tpot": tpot_all, "e2el": e2el}
        good = np.ones(len(done), dtype=bool)
        for name, ms in goodput:
            good &= per_metric[name] <= ms / 1000.0
        out["request_goodput"] = per_s(int(good.sum()))
        out["goodput_slo_ms"] = dict(goodput)
    samples = {"ttft": ttft, "tpot": tpot, "e2el": e2el}
    for name in METRICS:
        if name == "itl":  # one value per step: made here and dropped after (large runs)
            values, counts = itl_samples(requests, steps)
        else:
            values = samples[name]
            counts = np.ones(len(values), dtype=np.int64)
        values = np.asarray(values) * 1000.0
        stats = weighted_stats(values, counts, percentiles)
        del values, counts
        for stat, value in stats.items():
            out[f"{stat}_{name}_ms"] = value
    return out


__all__ = ["serving_metrics", "itl_samples", "weighted_stats", "parse_percentiles",
           "parse_goodput", "percentile_key", "DEFAULT_PERCENTILES"]
