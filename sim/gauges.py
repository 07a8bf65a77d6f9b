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
    ``np.searchsorted(events, t, side="right")``. A replica's step times are
    sorted, and there are far fewer events (requests) than steps: then the
    events up to ``t[0]`` count everywhere, and each later one from its first
    step at or after it: the same integers for one search per event instead
    of one per step (0.14 G instructions of the Azure trace's 19 k requests
    and 453 k steps)."""
    if len(t) < 2 or not (t[1:] >= t[:-1]).all():
        return np.searchsorted(events, t, side="right")   # (a cluster's steps interleave)
    lo, hi = np.searchsorted(events, (t[0], t[-1]), side="right")
    first = np.searchsorted(t, events[lo:hi], side="left")  # (none is 0: they are > t[0])
    counts = np.cumsum(np.bincount(first, minlength=len(t))[: len(t)])
    counts += lo
    return counts


class Gauges:
    """Adds the gauge columns to a steps table given in consecutive chunks
    (the whole table is one chunk): the counters carry over from chunk to
    chunk, so a table streamed to disk in row groups gets the same values,
    bit for bit, as the table held whole. The requests table and ``marks``
    (the scheduler's request events) must be complete: they are known once
    the run has ended, the steps need not be in memory."""

    def __init__(self, requests: pd.DataFrame, capacity_tokens: int,
                 marks: pd.DataFrame | None = None) -> None:
        self.capacity_tokens = capacity_tokens
        seqs = _seqs_per_request(requests)
        accepted = requests["rejected"].isna().to_numpy()
        self.arrivals = np.sort(requests["arrival_s"].to_numpy(dtype=np.float64)[accepted])
        arr_seqs = seqs[accepted][np.argsort(requests["arrival_s"].to_numpy()[accepted], kind="stable")]
        self.arrived = np.concatenate(([0], np.cumsum(arr_seqs)))
        fin = requests["finish_s"].to_numpy(dtype=np.float64)
        done = np.isfinite(fin)
        order = np.argsort(fin[done], kind="stable")
        self.finishes = fin[done][order]
        self.finished = np.concatenate(([0], np.cumsum(seqs[done][order])))
        self.admits = None if marks is None else marks[marks["kind"] == "admit"]
        self._last_step = None     # the previous chunk's last step number
        self._carry = {"num_preemptions": 0, "prefix_cache_queries": 0.0, "prefix_cache_hits": 0.0}

    def add(self, steps: pd.DataFrame) -> pd.DataFrame:
        """``steps`` (the next chunk) with the gauge columns added, in place
        (a copy would hold the table twice: 0.7 GB at 6 M steps)."""
        # in place where the operations allow it, so that a 6 M-step table
        # needs one float temporary at a time (x / -c + 1.0 is 1.0 - x / c exactly)
        usage = steps["free"].to_numpy(dtype=np.float64) + steps["cached_free"].to_numpy(dtype=np.float64)
        if self.capacity_tokens:
            usage /= -self.capacity_tokens
            usage += 1.0
        else:
            usage[:] = 0.0
        steps["kv_cache_usage_perc"] = usage
        del usage
        running = steps["num_seqs"].to_numpy()
        steps["num_requests_running"] = running
        t = steps["start_s"].to_numpy(dtype=np.float64)
        waiting = self.arrived[_counts_up_to(self.arrivals, t)]
        waiting -= self.finished[_counts_up_to(self.finishes, t)]
        waiting -= running
        np.maximum(waiting, 0, out=waiting)
        steps["num_requests_waiting"] = waiting.astype(np.int32)  # sequences: far below 2**31
        del waiting
        pre = np.cumsum(steps["preemptions"].to_numpy(dtype=np.int64))
        pre += self._carry["num_preemptions"]
        steps["num_preemptions"] = pre
        if len(pre):
            self._carry["num_preemptions"] = int(pre[-1])
        if self.admits is not None:
            self._add_prefix_counters(steps)
        return steps

    def _add_prefix_counters(self, steps: pd.DataFrame) -> None:
        """Each first admission's queried and cached tokens, counted at the
        first step at or after its own (``searchsorted``), summed up."""
        numbers = steps["step"].to_numpy()
        admit_steps = self.admits["step"].to_numpy()
        lo = 0 if self._last_step is None else np.searchsorted(admit_steps, self._last_step, side="right")
        hi = np.searchsorted(admit_steps, numbers[-1], side="right") if len(numbers) else lo
        at = np.searchsorted(numbers, admit_steps[lo:hi])
        for col, name in (("queried", "prefix_cache_queries"), ("cached", "prefix_cache_hits")):
            weights = self.admits[col].to_numpy(dtype=np.float64)[lo:hi]
            total = np.cumsum(np.bincount(at, weights=weights, minlength=len(steps))[: len(steps)],
                              dtype=np.float64)
            total += self._carry[name]   # integers in float64: exact below 2**53
            steps[name] = total.astype(np.int64)
            if len(total):
                self._carry[name] = float(total[-1])
        if len(numbers):
            self._last_step = numbers[-1]


def add_gauges(steps: pd.DataFrame, requests: pd.DataFrame, capacity_tokens: int,
               marks: pd.DataFrame | None = None) -> pd.DataFrame:
    """``steps`` (the whole table) with the gauge columns added, in place;
    the prefix-cache counters need ``marks``, the scheduler's request events."""
    return Gauges(requests, capacity_tokens, marks).add(steps)


__all__ = ["add_gauges", "Gauges", "GAUGES"]
