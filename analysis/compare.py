"""Side-by-side tables of replays (``pagesim compare``): one column per
run, one row per headline number. The runs themselves are made by
``pagesim.compare`` (application layer)."""
from __future__ import annotations

import pandas as pd

from pagesim.sim.accounting import CATEGORIES

ROWS = [
    ("token states %", lambda s: 100 * s["memory_split"]["token_states"]),
    ("reserved %", lambda s: 100 * s["memory_split"]["reserved"]),
    ("internal frag %", lambda s: 100 * s["memory_split"]["internal_frag"]),
    ("external frag %", lambda s: 100 * s["memory_split"]["external_frag"]),
    ("cached free %", lambda s: 100 * s["memory_split"]["cached_free"]),
    ("free %", lambda s: 100 * s["memory_split"]["free"]),
    ("finished", lambda s: s["requests"]["finished"]),
    ("rejected", lambda s: s["requests"]["rejected"]),
    ("preemptions", lambda s: s["preemptions"]),
    ("throughput req/s", lambda s: s["throughput"]["requests_per_s"]),
    ("output tok/s", lambda s: s["throughput"]["output_tokens_per_s"]),
    ("TTFT mean s", lambda s: s["latency"]["ttft_mean_s"]),
    ("TPOT mean ms", lambda s: None if s["latency"]["tpot_mean_s"] is None else 1e3 * s["latency"]["tpot_mean_s"]),
    ("norm. latency ms/tok", lambda s: None if s["latency"]["normalized_latency_mean_s_per_token"] is None
     else 1e3 * s["latency"]["normalized_latency_mean_s_per_token"]),
    ("p99 TTFT ms", lambda s: s.get("serving", {}).get("p99_ttft_ms")),
    ("p99 ITL ms", lambda s: s.get("serving", {}).get("p99_itl_ms")),
    ("mean batch (seqs)", lambda s: s.get("mean_batch_seqs")),
    ("wall s", lambda s: s["sim"]["wall_s"]),
]


def table(results: dict) -> pd.DataFrame:
    """One column per run, one row per headline number (``ROWS``)."""
    cols = {}
    for label, res in results.items():
        s = dict(res.summary)
        steps = res.steps
        w = steps["duration_s"]
        s["mean_batch_seqs"] = float((steps["num_seqs"] * w).sum() / w.sum()) if len(steps) else 0.0
        cols[label] = [fn(s) for _, fn in ROWS]
    return pd.DataFrame(cols, index=[name for name, _ in ROWS], dtype=object)


def format_table(df: pd.DataFrame) -> str:
    def fmt(x):
        if x is None or (isinstance(x, float) and x != x):
            return "-"
        if isinstance(x, float):
            return f"{x:,.2f}" if abs(x) < 1000 else f"{x:,.0f}"
        return f"{x:,}"
    body = df.map(fmt)
    w0 = max(len(i) for i in body.index)
    widths = [max(len(str(c)), *(len(v) for v in body[c])) for c in body.columns]
    lines = [" " * w0 + "  " + "  ".join(f"{c:>{w}}" for c, w in zip(body.columns, widths))]
    for idx, row in body.iterrows():
        lines.append(f"{idx:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(row, widths)))
    return "\n".join(lines)


__all__ = ["table", "format_table", "ROWS", "CATEGORIES"]
