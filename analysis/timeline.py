"""A per-request timeline as a Chrome / Perfetto trace (``--timeline``).

Open ``timeline.json`` in ui.perfetto.dev or chrome://tracing. Two processes:

* **engine**: one track of engine steps (a slice per step: batch size, tokens,
  prefill sequences, preemptions) and counters under vLLM's names
  (``kv_cache_usage_perc``, ``num_requests_running``, ``num_requests_waiting``);
* **requests**: one track per request: ``queued + prefill`` from arrival to
  its first token, ``decode`` from the first token to the finish, a
  ``finished`` or ``rejected`` instant, and the request's preemption count
  in the slice arguments.

It is derived from the replay's tables (requests, steps). They do not say
when a request was admitted or preempted, so the wait and the prefill share
one slice, and a preempted request's stalls lie inside its slices (its
``preemptions`` argument says how many); per-request scheduling events need
an engine hook that does not exist yet.

Size is bounded: at most ``max_requests`` request tracks (evenly spaced by
arrival, always including the slowest ones by E2E latency), and at most
``max_steps`` step slices (consecutive steps merged beyond that, with their
summed counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

US = 1e6  # trace timestamps are microseconds
ENGINE, REQUESTS = 1, 2


def sample_requests(requests, max_requests: int):
    """Up to ``max_requests`` rows: evenly spaced, plus the slowest tenth."""
    if len(requests) <= max_requests:
        return requests
    slow_n = max_requests // 10
    slow = requests["e2e_s"].fillna(np.inf).to_numpy().argsort()[::-1][:slow_n]
    even = np.linspace(0, len(requests) - 1, max_requests - slow_n).astype(int)
    idx = np.unique(np.concatenate((even, slow)))
    return requests.iloc[idx]


def request_events(requests) -> list[dict]:
    out = []
    for r in requests.itertuples(index=False):
        tid = int(r.id)
        out.append({"ph": "M", "name": "thread_name", "pid": REQUESTS, "tid": tid,
                    "args": {"name": f"request {tid}"}})
        args = {"prompt_tokens": int(r.prompt_tokens), "output_tokens": int(r.output_tokens),
                "preemptions": int(r.preemptions), "cached_tokens": int(r.cached_tokens)}
        if isinstance(r.rejected, str):
            out.append({"ph": "i", "s": "t", "name": "rejected", "pid": REQUESTS, "tid": tid,
                        "ts": r.arrival_s * US, "args": {"reason": r.rejected}})
            continue
        if np.isfinite(r.first_token_s):
            out.append({"ph": "X", "name": "queued + prefill", "pid": REQUESTS, "tid": tid,
                        "ts": r.arrival_s * US, "dur": (r.first_token_s - r.arrival_s) * US, "args": args})
        if np.isfinite(r.finish_s):
            out.append({"ph": "X", "name": "decode", "pid": REQUESTS, "tid": tid,
                        "ts": r.first_token_s * US, "dur": (r.finish_s - r.first_token_s) * US, "args": args})
            out.append({"ph": "i", "s": "t", "name": "finished", "pid": REQUESTS, "tid": tid,
                        "ts": r.finish_s * US})
    return out


def step_events(steps, max_steps: int) -> list[dict]:
    """Step slices (merged in runs of ``k`` beyond ``max_steps``) and counters."""
    n = len(steps)
    if n == 0:
        return []
    k = max(1, -(-n // max_steps))
    group = np.arange(n) // k
    start = steps["start_s"].to_numpy()
    end = start + steps["duration_s"].to_numpy()
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    last = np.r_[first[1:] - 1, n - 1]
    sums = {c: np.add.reduceat(steps[c].to_numpy(), first)
            for c in ("num_tokens", "preemptions") if c in steps}
    peak = np.maximum.reduceat(steps["num_seqs"].to_numpy(), first)
    out = [{"ph": "M", "name": "thread_name", "pid": ENGINE, "tid": 0, "args": {"name": "engine steps"}}]
    for i, (a, b) in enumerate(zip(first.tolist(), last.tolist())):
        args = {"steps": b - a + 1, "max_num_seqs": int(peak[i]), **{c: int(v[i]) for c, v in sums.items()}}
        name = f"step {int(steps['step'].iloc[a])}" + (f"..{int(steps['step'].iloc[b])}" if b > a else "")
        out.append({"ph": "X", "name": name, "pid": ENGINE, "tid": 0, "ts": start[a] * US,
                    "dur": (end[b] - start[a]) * US, "args": args})
    for col in ("kv_cache_usage_perc", "num_requests_running", "num_requests_waiting"):
        if col in steps:
            v = steps[col].to_numpy()[first]
            out.extend({"ph": "C", "name": col, "pid": ENGINE, "ts": start[a] * US,
                        "args": {"value": float(x)}} for a, x in zip(first.tolist(), v.tolist()))
    return out


def timeline(requests, steps, *, max_requests: int = 1000, max_steps: int = 50_000) -> dict:
    """The trace as a dict (``json.dump`` it, or use ``write_timeline``)."""
    meta = [{"ph": "M", "name": "process_name", "pid": ENGINE, "args": {"name": "engine"}},
            {"ph": "M", "name": "process_name", "pid": REQUESTS, "args": {"name": "requests"}}]
    picked = sample_requests(requests, max_requests)
    events = meta + step_events(steps, max_steps) + request_events(picked)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"requests_shown": int(len(picked)), "requests_total": int(len(requests)),
                          "steps_total": int(len(steps))}}


def write_timeline(requests, steps, path, **kw) -> Path:
    path = Path(path)
    path.write_text(json.dumps(timeline(requests, steps, **kw), separators=(",", ":")))
    return path


__all__ = ["timeline", "write_timeline", "sample_requests"]
