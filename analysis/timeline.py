"""A per-request timeline as a Chrome / Perfetto trace (``--timeline``).

Open ``timeline.json`` in ui.perfetto.dev or chrome://tracing. Two processes:

* **engine**: one track of engine steps (a slice per step: batch size, tokens,
  prefill sequences, preemptions) and counters under vLLM's names
  (``kv_cache_usage_perc``, ``num_requests_running``, ``num_requests_waiting``);
* **requests**: one track per request with its states: ``queued`` (arrival
  to admission), ``prefill`` (to the first token), ``decode``, ``preempted``
  (waiting to recompute), ``swapped`` (KV in the CPU pool), ``recompute +
  decode`` (re-admitted after a preemption), a ``finished`` or ``rejected``
  instant, and the request's token counts and preemptions as arguments.

Admissions, preemptions and swaps come from the scheduler's optional
``request_events`` record (``run_replay(record_requests=True)``, which
``--timeline`` turns on), at the start of the step where they happen; the
rest from the requests and steps tables. Without that record the wait and
the prefill share one ``queued + prefill`` slice.

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


def _slice(name, tid, t0, t1, args=None) -> dict:
    e = {"ph": "X", "name": name, "pid": REQUESTS, "tid": tid, "ts": t0 * US, "dur": (t1 - t0) * US}
    if args:
        e["args"] = args
    return e


def _phases(r, marks) -> list[tuple[str, float, float]]:
    """(state, start, end) of one request from its scheduling marks
    ``[(time, kind)]`` (admit, readmit, preempt, swap_out, swap_in), first token and finish."""
    points = sorted(list(marks) + [(r.first_token_s, "first_token"), (r.finish_s, "finish")],
                    key=lambda p: p[0])
    out, state, t = [], "queued", r.arrival_s
    started = False
    for when, kind in points:
        if not np.isfinite(when):
            continue
        if when > t:
            out.append((state, t, when))
        t = max(t, when)
        if kind in ("admit", "readmit"):
            state = "recompute + decode" if started else "prefill"
        elif kind == "first_token":
            started, state = True, "decode"
        elif kind == "preempt":
            state = "preempted"
        elif kind == "swap_out":
            state = "swapped"
        elif kind == "swap_in":
            state = "decode" if started else "prefill"
        elif kind == "finish":
            break
    return out


def request_events(requests, steps=None, marks=None) -> list[dict]:
    """Per request track: with ``marks`` (``run_replay(record_requests=True)``
    events) its states queued / prefill / decode / preempted / swapped /
    recompute + decode; without, ``queued + prefill`` and ``decode``."""
    by_request = {}
    if marks is not None and len(marks):
        start = dict(zip(steps["step"].tolist(), steps["start_s"].tolist()))
        for step, rid, kind in zip(marks["step"].tolist(), marks["request"].tolist(), marks["kind"].tolist()):
            by_request.setdefault(int(rid), []).append((start[int(step)], kind))
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
        if marks is not None:
            out.extend(_slice(name, tid, a, b, args) for name, a, b in _phases(r, by_request.get(tid, ())))
        else:
            if np.isfinite(r.first_token_s):
                out.append(_slice("queued + prefill", tid, r.arrival_s, r.first_token_s, args))
            if np.isfinite(r.finish_s):
                out.append(_slice("decode", tid, r.first_token_s, r.finish_s, args))
        if np.isfinite(r.finish_s):
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


def timeline(requests, steps, marks=None, *, max_requests: int = 1000, max_steps: int = 50_000) -> dict:
    """The trace as a dict (``json.dump`` it, or use ``write_timeline``);
    ``marks``: the replay's ``request_events`` table, if recorded."""
    meta = [{"ph": "M", "name": "process_name", "pid": ENGINE, "args": {"name": "engine"}},
            {"ph": "M", "name": "process_name", "pid": REQUESTS, "args": {"name": "requests"}}]
    picked = sample_requests(requests, max_requests)
    events = meta + step_events(steps, max_steps) + request_events(picked, steps, marks)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"requests_shown": int(len(picked)), "requests_total": int(len(requests)),
                          "steps_total": int(len(steps))}}


def write_timeline(requests, steps, path, marks=None, **kw) -> Path:
    path = Path(path)
    path.write_text(json.dumps(timeline(requests, steps, marks, **kw), separators=(",", ":")))
    return path


__all__ = ["timeline", "write_timeline", "sample_requests"]
