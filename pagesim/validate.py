"""``pagesim validate``: a trace on the GPU against the same trace simulated.

Three questions, three checks:

* **memory** — the allocator's block usage and event log are identical
  step by step when the simulator is fed the same step plans. The GPU run's
  measured durations are replayed into a simulated run
  (``ReplayedExecutor``): same clock, so same arrivals at the same steps, so
  the same scheduler and allocator must make the same calls. Any difference
  is a bug, not an approximation.
* **step time** — the calibrated model's price of every step the GPU ran
  (none of which the fit saw: the calibration grid is a different run)
  against its measured time: median and p95 of |relative error|.
* **end to end** — a simulated replay with the calibrated model against the
  GPU replay: mean TTFT, TPOT, ITL and end-to-end latency.

The same errors for the uncalibrated roofline model show what calibration
buys.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from pagesim.gpu.calibrate import gpu_rows
from pagesim.replay import ReplayConfig, run_replay
from pagesim.sim.costmodel import RooflineCostModel, TableCostModel
from pagesim.sim.executor import CostModelExecutor, ReplayedExecutor
from pagesim.sim.plan import StepShapes

SHAPE_FIELDS = ("num_seqs", "num_tokens", "kv_tokens_read", "attn_pairs", "num_prefill_seqs",
                "copy_blocks", "swap_blocks")
LATENCIES = ("ttft_mean_s", "tpot_mean_s", "itl_mean_s", "e2el_mean_s")
#: The targets of the validation record (issue: median 3 %, p95 8 %, means 3 %).
TARGETS = {"step_median": 0.03, "step_p95": 0.08, "latency": 0.03}


def latencies(requests: pd.DataFrame) -> dict:
    """Mean TTFT, TPOT (per request), ITL (per token gap, over all requests)
    and end-to-end latency of the finished requests, in seconds."""
    done = requests[requests["finish_s"].notna()]
    out = done["output_tokens"] * done["n"]
    gaps = (out - done["n"]).clip(lower=0)
    decode_s = (done["finish_s"] - done["first_token_s"]) * done["n"]
    return {"ttft_mean_s": float(done["ttft_s"].mean()),
            "tpot_mean_s": float(done["tpot_s"].dropna().mean()),
            "itl_mean_s": float(decode_s.sum() / gaps.sum()) if gaps.sum() else float("nan"),
            "e2el_mean_s": float(done["e2e_s"].mean())}


def step_errors(model, rows: pd.DataFrame) -> dict:
    """|relative error| of ``model``'s price of each measured step that
    measured the GPU (``gpu_rows``), overall and per regime (decode-only
    and mixed steps), plus the signed bias of the summed time."""
    used = gpu_rows(rows)
    shapes = StepShapes(**{f: used[f].to_numpy() for f in SHAPE_FIELDS})
    pred = np.asarray(model.price(shapes), dtype=np.float64)
    meas = used["measured_s"].to_numpy(np.float64)
    rel = (pred - meas) / meas
    out = {"steps": int(len(used)), "median_abs_rel_err": float(np.median(np.abs(rel))),
           "p95_abs_rel_err": float(np.quantile(np.abs(rel), 0.95)),
           "sum_pred_over_sum_measured": float(pred.sum() / meas.sum())}
    mixed = used["num_prefill_seqs"].to_numpy() > 0
    for name, sel in (("decode", ~mixed), ("mixed", mixed)):
        if sel.any():
            a = np.abs(rel[sel])
            out[name] = {"steps": int(sel.sum()), "median_abs_rel_err": float(np.median(a)),
                         "p95_abs_rel_err": float(np.quantile(a, 0.95)),
                         "sum_pred_over_sum_measured": float(pred[sel].sum() / meas[sel].sum())}
    return out | {"predicted_s": pred.tolist(), "measured_s": meas.tolist()}


def gpu_clock(rows: pd.DataFrame) -> dict:
    """What the GPU run's clock holds, and what it leaves out.

    The GPU run advances its clock by each step's measured device time, and
    the simulator by each step's price: both leave out the host's time
    between steps (scheduling, preparing the batch), so the end-to-end
    comparison is device clock against device clock. Reported here: the
    device time, the host time the clock leaves out, and the steps whose
    first timing measured a compiler, a graph capture or a launch gap
    (retimed: run and timed again; left out: not retimed)."""
    used = gpu_rows(rows)
    host = rows["wall_s"] - rows["measured_s"] if "wall_s" in rows else pd.Series(dtype=float)
    col = lambda c: rows[c] if c in rows else pd.Series(0, index=rows.index)  # noqa: E731
    return {"steps": int(len(rows)), "device_s": float(rows["measured_s"].sum()),
            "host_outside_clock_s": float(host.clip(lower=0).sum()),
            "prep_s": float(col("prep_s").sum()),
            "retimed_steps": int(col("retimed").sum()),
            "launch_gap_steps": int(col("launch_gap").sum()),
            "left_out_steps": int(len(rows) - len(used)),
            "left_out_s": float(rows["measured_s"].sum() - used["measured_s"].sum())}


def memory_identity(gpu_result, trace, cfg: ReplayConfig, durations) -> dict:
    """The GPU run's durations replayed into the simulator: every table and
    the event log must come out identical."""
    sim = run_replay(trace, cfg, executor=ReplayedExecutor(durations))
    checks = {"steps_table": _same(gpu_result.steps, sim.steps),
              "requests_table": _same(gpu_result.requests, sim.requests)}
    if gpu_result.events is not None:
        checks["event_log"] = _same(gpu_result.events.to_dataframe(), sim.events.to_dataframe())
    checks["identical"] = all(c["identical"] for c in checks.values())
    return checks


def _same(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        return {"identical": False, "first_difference": f"shape {a.shape} vs {b.shape}"}
    for col in a.columns:
        x, y = a[col], b[col]
        diff = ~((x == y) | (x.isna() & y.isna())).to_numpy(dtype=bool)
        if diff.any():
            i = int(np.argmax(diff))
            return {"identical": False, "first_difference": f"row {i}, column {col}: "
                    f"{x.iloc[i]!r} vs {y.iloc[i]!r}"}
    return {"identical": True, "rows": int(len(a))}


def end_to_end(measured: dict, trace, cfg: ReplayConfig, model) -> dict:
    """Simulated replay with ``model``: each latency mean against the GPU's."""
    sim = run_replay(trace, cfg, executor=CostModelExecutor(model))
    got = latencies(sim.requests)
    return {k: {"measured": measured[k], "simulated": got[k],
                "rel_err": (got[k] - measured[k]) / measured[k] if measured[k] else None}
            for k in LATENCIES} | {"_requests": sim.requests}


def validate(trace, cfg: ReplayConfig, table: TableCostModel, executor) -> dict:
    """Run the trace on ``executor`` and check it (``evaluate``)."""
    cfg = replace(cfg, events=True, fast=True)
    executor.reset()
    first = len(executor.records)
    gpu = run_replay(trace, cfg, executor=executor)
    rows = executor.records_frame().iloc[first:].reset_index(drop=True)
    memory = memory_identity(gpu, trace, cfg, rows["measured_s"].tolist())
    return evaluate(trace, cfg, table, rows, gpu.requests, memory)


def evaluate(trace, cfg: ReplayConfig, table: TableCostModel, rows: pd.DataFrame,
             gpu_requests: pd.DataFrame, memory: dict) -> dict:
    """The validation record of a GPU run (its step records ``rows`` and
    requests table): step errors and end-to-end means, calibrated and
    roofline. JSON-ready but for the ``_``-prefixed frames (plots, and the
    raw GPU data ``validate --measured`` re-reads to check another
    calibration without a GPU)."""
    cfg = replace(cfg, events=True, fast=True)
    measured = latencies(gpu_requests)
    roof = RooflineCostModel(cfg.model, cfg.gpu, cfg.tp, block_size=cfg.block_size)
    record = {
        "trace": getattr(trace, "source", ""), "requests": len(trace), "steps": int(len(rows)),
        "memory": memory, "gpu_clock": gpu_clock(rows),
        "step_time": {"calibrated": step_errors(table, rows), "roofline": step_errors(roof, rows)},
        "end_to_end": {"calibrated": end_to_end(measured, trace, cfg, table),
                       "roofline": end_to_end(measured, trace, cfg, roof)},
        "_gpu_requests": gpu_requests, "_gpu_rows": rows,
    }
    record["pass"] = passes(record)
    return record


def passes(record: dict) -> dict:
    """Each target of the validation record, met or not."""
    st, e2e = record["step_time"]["calibrated"], record["end_to_end"]["calibrated"]
    out = {"memory_identical": bool(record["memory"]["identical"]),
           "step_median": st["median_abs_rel_err"] <= TARGETS["step_median"],
           "step_p95": st["p95_abs_rel_err"] <= TARGETS["step_p95"]}
    for k in LATENCIES:
        err = e2e[k]["rel_err"]
        out[k] = err is not None and abs(err) <= TARGETS["latency"]
    return out


def public(record: dict) -> dict:
    """The record without per-step lists and frames (for validation.json)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if not k.startswith("_") and k not in ("predicted_s", "measured_s")}
        return x
    return strip(record)


def format_table(record: dict) -> str:
    """One markdown table: the numbers a reader checks first."""
    st, e2e = record["step_time"], record["end_to_end"]
    lines = [f"trace {record['trace']}: {record['requests']} requests, {record['steps']} steps; "
             f"memory identical: {'yes' if record['memory']['identical'] else 'NO'}", "",
             "| metric | measured | calibrated | err | roofline | err |", "|---|---|---|---|---|---|"]
    for k in ("median_abs_rel_err", "p95_abs_rel_err", "sum_pred_over_sum_measured"):
        lines.append(f"| step {k} | | {st['calibrated'][k]:.3f} | | {st['roofline'][k]:.3f} | |")
    for k in LATENCIES:
        c, r = e2e["calibrated"][k], e2e["roofline"][k]
        lines.append(f"| {k} | {c['measured'] * 1e3:.2f} ms | {c['simulated'] * 1e3:.2f} ms | "
                     f"{_pct(c['rel_err'])} | {r['simulated'] * 1e3:.2f} ms | {_pct(r['rel_err'])} |")
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:+.1%}"
