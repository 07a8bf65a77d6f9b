"""Metrics: the requests table and the run summary.

Per-step rows are recorded by ``StepRecorder`` (``sim/step_recorder.py``,
re-exported here): typed column chunks, bounded memory at any run length.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pagesim.sim.accounting import CATEGORIES
from pagesim.sim.serving_metrics import DEFAULT_PERCENTILES, serving_metrics
from pagesim.sim.step_recorder import STEP_COLUMNS, StepRecorder

__all__ = ["STEP_COLUMNS", "StepRecorder", "requests_dataframe", "summarize"]


def requests_dataframe(records, truncated_ids=()) -> pd.DataFrame:
    """One row per trace request, rejected ones included (``rejected`` holds
    the reason). ``truncated`` marks requests cut to ``max_model_len`` when the
    trace was loaded (their ids in ``truncated_ids``). Ratios with no
    meaning (TPOT of a single output token, latency per token of none) are
    NaN, not infinite."""
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
    df["truncated"] = df["id"].isin(np.asarray(list(truncated_ids), dtype=np.int64))
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    gen = df["output_tokens"].where(df["output_tokens"] > 1)
    df["tpot_s"] = (df["finish_s"] - df["first_token_s"]) / (gen - 1)
    df["normalized_latency_s_per_token"] = df["e2e_s"] / df["output_tokens"].where(df["output_tokens"] > 0)
    return df


def summarize(req_df: pd.DataFrame, step_df: pd.DataFrame, *, capacity_tokens: int,
              preemptions: int, hit_tokens: int, queried_tokens: int, wall_s: float,
              sim_time_s: float, prefix_caching_applies: bool = True,
              percentiles=DEFAULT_PERCENTILES, goodput=()) -> dict:
    """The ``summary.json`` dictionary (see README for each field).

    The prefix-cache hit rate is None (not 0) when it has no meaning: prefix
    caching off, or a trace without content identity (no token ids, no hash
    ids, no prompt shared by a request's samples), where a hit is impossible
    by construction.

    ``memory_split`` averages over engine steps weighted by their duration
    (time when the engine is idle is excluded): the share of KV capacity in
    each category while the engine works.
    """
    done = req_df[req_df["finish_s"].notna()]
    rejected = int(req_df["rejected"].notna().sum())
    dur = step_df["duration_s"].to_numpy()
    total_dur = float(dur.sum())
    split = {}
    for c in CATEGORIES:  # the ufunc casts to float64 in small buffers: one temporary column, not two
        weighted = np.multiply(step_df[c].to_numpy(), dur, dtype=np.float64)
        split[c] = float(weighted.sum() / total_dur / capacity_tokens) if total_dur > 0 else 0.0
    span = sim_time_s if sim_time_s > 0 else 1.0  # nothing ran: rates are 0, not NaN

    def mean(col):
        x = done[col].dropna()
        return float(x.mean()) if len(x) else None

    return {
        "requests": {"total": int(len(req_df)), "finished": int(len(done)), "rejected": rejected,
                     "truncated": int(req_df["truncated"].sum()) if "truncated" in req_df else 0},
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
        "prefix_cache": {"hit_rate_tokens": hit_tokens / queried_tokens
                         if prefix_caching_applies and queried_tokens else None},
        "memory_split": split,
        "sim": {"wall_s": wall_s, "sim_time_s": sim_time_s, "steps": int(len(step_df))},
        "serving": serving_metrics(req_df, step_df, end_s=sim_time_s, percentiles=percentiles,
                                   goodput=goodput),
    }
