"""Per-step gauges under vLLM's Prometheus metric names.

A serving engineer reads ``vllm:kv_cache_usage_perc``,
``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and
``vllm:num_preemptions``; the step table carries the same names beside
pagesim's own memory split, so dashboards and habits carry over:

============================ =================================================
``kv_cache_usage_perc``      fraction (0..1) of KV capacity not free, as vLLM's
                             ``1 - free blocks / total blocks``: blocks that are
                             free but still hold prefix-cache content count as
                             free (they are evictable). From the split:
                             ``1 - (free + cached_free) / capacity``.
``num_requests_running``     sequences in the step's batch (``num_seqs``; a
                             V1 ``n > 1`` request is ``n`` child requests, as in
                             vLLM V1).
``num_requests_waiting``     sequences that arrived and have not finished or
                             been rejected, minus the running ones: queued,
                             preempted or swapped.
``num_preemptions``          preemptions so far (a counter, cumulative).
``prefix_cache_queries``     tokens looked up in the prefix cache so far
                             (counter): each first admission queries all the
                             tokens its sequence knows (its prompt), as vLLM
                             counts them; re-admissions after a preemption
                             (kind ``readmit``) are vLLM's ``preempted_*``
                             counters, not these.
``prefix_cache_hits``        of those, tokens found cached (counter).
============================ =================================================

These are derived after the run from the step and request tables and the
scheduler's per-request record (``Scheduler.request_events``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

GAUGES = ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting", "num_preemptions",
          "prefix_cache_queries", "prefix_cache_hits")


def _seqs_per_request(requests: pd.DataFrame) -> np.ndarray:
    return np.maximum(requests["n"].to_numpy(dtype=np.int64),
                      requests["beam_width"].to_numpy(dtype=np.int64))


def _counts_up_to(events: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each ``t[i]``, how many of the sorted ``events`` are <= it:
    ``np.searchsorted(events, t, side="right")``. The step times of a
    replica are sorted, and there are far fewer events (requests) than
    steps: then each event's first step at or after it, counted per step
    and summed, gives the same integers for one search per event instead of
    one per step (0.2 G instructions of the Azure trace's 19 k requests
    and 453 k steps)."""
    if len(t) < 2 * len(events) or not (t[1:] >= t[:-1]).all():
        return np.searchsorted(events, t, side="right")   # (a cluster's steps interleave)
    # event j counts from the first step i with t[i] >= events[j]
    first = np.searchsorted(t, events, side="left")
    return np.cumsum(np.bincount(first, minlength=len(t) + 1)[: len(t)])


def add_gauges(steps: pd.DataFrame, requests: pd.DataFrame, capacity_tokens: int,
               marks: pd.DataFrame | None = None) -> pd.DataFrame:
    """``steps`` with the gauge columns added, in place (a copy would hold
    the whole steps table twice: 0.7 GB at 6 M steps); the prefix-cache
    counters need ``marks``, the scheduler's request events."""
    out = steps
    # in place where the operations allow it, so that a 6 M-step table
    # needs one float temporary at a time (x / -c + 1.0 is 1.0 - x / c exactly)
    usage = steps["free"].to_numpy(dtype=np.float64) + steps["cached_free"].to_numpy(dtype=np.float64)
    if capacity_tokens:
        usage /= -capacity_tokens
        usage += 1.0
    else:
        usage[:] = 0.0
    out["kv_cache_usage_perc"] = usage
    del usage
    running = steps["num_seqs"].to_numpy()
    out["num_requests_running"] = running
    t = steps["start_s"].to_numpy(dtype=np.float64)
    seqs = _seqs_per_request(requests)
    accepted = requests["rejected"].isna().to_numpy()
    arrivals = np.sort(requests["arrival_s"].to_numpy(dtype=np.float64)[accepted])
    arr_seqs = seqs[accepted][np.argsort(requests["arrival_s"].to_numpy()[accepted], kind="stable")]
    fin = requests["finish_s"].to_numpy(dtype=np.float64)
    done = np.isfinite(fin)
    order = np.argsort(fin[done], kind="stable")
    fin_t, fin_seqs = fin[done][order], seqs[done][order]
    waiting = np.concatenate(([0], np.cumsum(arr_seqs)))[_counts_up_to(arrivals, t)]
    waiting -= np.concatenate(([0], np.cumsum(fin_seqs)))[_counts_up_to(fin_t, t)]
    waiting -= running
    np.maximum(waiting, 0, out=waiting)
    out["num_requests_waiting"] = waiting.astype(np.int32)  # sequences: far below 2**31
    del waiting
    out["num_preemptions"] = np.cumsum(steps["preemptions"].to_numpy(dtype=np.int64))
    if marks is not None:
        admits = marks[marks["kind"] == "admit"]
        at = np.searchsorted(steps["step"].to_numpy(), admits["step"].to_numpy())
        for col, name in (("queried", "prefix_cache_queries"), ("cached", "prefix_cache_hits")):
            per_step = np.bincount(at, weights=admits[col].to_numpy(dtype=np.float64), minlength=len(steps))
            out[name] = np.cumsum(per_step[: len(steps)]).astype(np.int64)
    return out


__all__ = ["add_gauges", "GAUGES"]
