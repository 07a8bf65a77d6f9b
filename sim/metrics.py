"""Metrics hooks: plain per-step records, turned into tables at the end.

Per-step rows are kept as columns of numpy chunks: the fast engine appends a
whole decode stretch at once, the step-by-step engine one row at a time;
both produce the same table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pagesim.sim.accounting import CATEGORIES
from pagesim.sim.serving_metrics import DEFAULT_PERCENTILES, serving_metrics

STEP_COLUMNS = ("step", "start_s", "duration_s", "num_seqs", "num_tokens", "num_prefill_seqs",
                "kv_tokens_read", "preemptions") + CATEGORIES


class StepRecorder:
    """Per-step rows, stored compactly until ``to_dataframe``.

    A step-by-step row stores its scalars plus the allocator's live-token
    count and ``counters()`` snapshot. A fast-mode decode stretch of ``k``
    steps stores a handful of numbers and the counter snapshots taken at its
    allocator events; rows are expanded in one vectorised pass at the end.
    Memory categories are computed by the manager's own ``usage_from``
    formula in both cases, so the two modes give identical tables.
    """

    def __init__(self, usage_from) -> None:
        self.usage_from = usage_from
        self._rows: list[tuple] = []
        self._stretches: list[tuple] = []

    def add(self, step, start, dur, shape, preemptions, live, counters) -> None:
        self._rows.append((step, start, dur, *shape, preemptions, live, *counters))

    def add_stretch(self, step0, k, n, sum_ctx0, live0, times, dts, snap_steps, snap_counters) -> None:
        """``snap_steps[i]`` (relative step, -1 for the state before the
        first step) from which ``snap_counters[i]`` holds."""
        self._stretches.append((step0, k, n, sum_ctx0, live0, times[:k], dts[:k], snap_steps, snap_counters))

    def _step_rows(self) -> dict[str, np.ndarray] | None:
        if not self._rows:
            return None
        cols = list(zip(*self._rows))
        names = STEP_COLUMNS[:8] + ("live",)
        out = {c: np.asarray(v) for c, v in zip(names, cols)}
        out["counters"] = [np.asarray(v, dtype=np.int64) for v in cols[len(names):]]
        return out

    def _stretch_rows(self) -> dict[str, np.ndarray] | None:
        if not self._stretches:
            return None
        step0, ks, ns, ctx0, live0 = (np.asarray(x, dtype=np.int64) for x in list(zip(*self._stretches))[:5])
        offsets = np.concatenate(([0], np.cumsum(ks)[:-1]))
        total = int(ks.sum())
        sid = np.repeat(np.arange(len(ks)), ks)
        j = np.arange(total) - offsets[sid]
        n = ns[sid]
        start_rows, counters = [], []
        for off, st in zip(offsets.tolist(), self._stretches):
            for rel, cnt in zip(st[7], st[8]):
                start_rows.append(off + max(rel, 0))
                counters.append(cnt)
        which = np.searchsorted(np.asarray(start_rows), np.arange(total), side="right") - 1
        snap = np.asarray(counters, dtype=np.int64).reshape(len(counters), -1)[which]
        return {
            "step": step0[sid] + j,
            "start_s": np.concatenate([st[5] for st in self._stretches]),
            "duration_s": np.concatenate([st[6] for st in self._stretches]),
            "num_seqs": n, "num_tokens": n,
            "num_prefill_seqs": np.zeros(total, dtype=np.int64),
            "kv_tokens_read": ctx0[sid] + j * n,
            "preemptions": np.zeros(total, dtype=np.int64),
            "live": live0[sid] + (j + 1) * n,
            "counters": [snap[:, i] for i in range(snap.shape[1])],
        }

    def to_dataframe(self) -> pd.DataFrame:
        parts = [p for p in (self._step_rows(), self._stretch_rows()) if p is not None]
        if not parts:
            return pd.DataFrame({c: np.array([], dtype=np.int64) for c in STEP_COLUMNS})
        cols = {}
        for c in STEP_COLUMNS[:8] + ("live",):
            dtype = np.float64 if c in ("start_s", "duration_s") else np.int64
            cols[c] = np.concatenate([p[c] for p in parts]).astype(dtype, copy=False)
        counters = [np.concatenate([p["counters"][i] for p in parts])
                    for i in range(len(parts[0]["counters"]))]
        split = self.usage_from(cols.pop("live"), *counters)
        for c in CATEGORIES:
            cols[c] = np.asarray(getattr(split, c), dtype=np.int64)
        order = np.argsort(cols["step"], kind="stable")
        return pd.DataFrame({c: v[order] for c, v in cols.items()})


def requests_dataframe(records) -> pd.DataFrame:
    df = pd.DataFrame({
        "id": [r.id for r in records],
        "arrival_s": [r.arrival_s for r in records],
        "prompt_tokens": [r.prompt_tokens for r in records],
        "output_tokens": [r.output_tokens for r in records],
        "n": [r.n for r in records],
        "beam_width": [r.beam_width for r in records],
        "priority": [r.priority for r in records],
        "first_token_s": [np.nan if r.first_token_s is None else r.first_token_s for r in records],
        "finish_s": [np.nan if r.finish_s is None else r.finish_s for r in records],
        "preemptions": [r.preemptions for r in records],
        "cached_tokens": [r.cached_tokens for r in records],
        "rejected": [r.rejected for r in records],
    })
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    gen = df["output_tokens"].where(df["output_tokens"] > 1)
    df["tpot_s"] = (df["finish_s"] - df["first_token_s"]) / (gen - 1)
    df["normalized_latency_s_per_token"] = df["e2e_s"] / df["output_tokens"]
    return df


def summarize(req_df: pd.DataFrame, step_df: pd.DataFrame, *, capacity_tokens: int,
              preemptions: int, hit_tokens: int, queried_tokens: int, wall_s: float,
              sim_time_s: float, percentiles=DEFAULT_PERCENTILES, goodput=()) -> dict:
    """The ``summary.json`` dictionary (see README for each field).

    ``memory_split`` averages over engine steps weighted by their duration
    (time when the engine is idle is excluded): the share of KV capacity in
    each category while the engine works.
    """
    done = req_df[req_df["finish_s"].notna()]
    rejected = int(req_df["rejected"].notna().sum())
    dur = step_df["duration_s"].to_numpy()
    total_dur = float(dur.sum())
    split = {}
    for c in CATEGORIES:
        v = step_df[c].to_numpy(dtype=np.float64)
        split[c] = float((v * dur).sum() / total_dur / capacity_tokens) if total_dur > 0 else 0.0
    span = sim_time_s if sim_time_s > 0 else 1.0  # nothing ran: rates are 0, not NaN

    def mean(col):
        x = done[col].dropna()
        return float(x.mean()) if len(x) else None

    return {
        "requests": {"total": int(len(req_df)), "finished": int(len(done)), "rejected": rejected},
        "latency": {
            "ttft_mean_s": mean("ttft_s"),
            "ttft_p99_s": float(done["ttft_s"].quantile(0.99)) if len(done) else None,
            "tpot_mean_s": mean("tpot_s"),
            "e2e_mean_s": mean("e2e_s"),
            "normalized_latency_mean_s_per_token": mean("normalized_latency_s_per_token"),
        },
        "throughput": {
            "requests_per_s": len(done) / span,
            "output_tokens_per_s": float((done["output_tokens"] * done["n"]).sum()) / span,
        },
        "preemptions": int(preemptions),
        "prefix_cache": {"hit_rate_tokens": hit_tokens / queried_tokens if queried_tokens else 0.0},
        "memory_split": split,
        "sim": {"wall_s": wall_s, "sim_time_s": sim_time_s, "steps": int(len(step_df))},
        "serving": serving_metrics(req_df, step_df, end_s=sim_time_s, percentiles=percentiles,
                                   goodput=goodput),
    }
