"""Calibrate the simulator's table cost model on a GPU, and check it.

``calibrate`` replays a trace through the GPU executor (measured step
times, no checks) and fits ``sim.costmodel.fit_table`` to the executor's
per-step records, leaving out the steps that compiled a Triton kernel. Two checks of the fitted model follow the same path a
user would take:

* ``step_errors``: price every measured step's shape with the table and
  compare with its measured time (the model's own error, step by step);
* ``compare_with_simulation``: replay the trace in the simulator with the
  table and compare the end-to-end numbers (total time, TTFT, TPOT) with
  the measured replay. The two schedules may differ slightly, because the
  engine admits arrivals by the clock each executor produces.
"""
from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pandas as pd

from pagesim.sim.costmodel import TableCostModel, fit_table
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.plan import StepShapes
from pagesim.replay import run_replay

SHAPE_FIELDS = ("num_seqs", "num_tokens", "kv_tokens_read", "attn_pairs", "num_prefill_seqs",
                "copy_blocks", "swap_blocks")


def gpu_preset_name(device_name: str, memory_bytes: int | None = None) -> str:
    """The ``sim.costmodel`` GPU preset of a CUDA device name, so that a
    calibration file passes ``make_cost_model``'s metadata check; a slug of
    the name when no preset matches."""
    name = device_name.lower()
    if "h200" in name:
        return "h200"
    if "h100" in name:
        return "h100-80gb"
    if "a100" in name:
        big = memory_bytes is None or memory_bytes > 50 * 2**30
        return "a100-80gb" if big else "a100-40gb"
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return slug


def measure(trace, cfg, executor):
    """Replay ``trace`` through ``executor``; (ReplayResult, the new records)."""
    executor.reset()
    first = len(executor.records)
    result = run_replay(trace, cfg, executor=executor)
    return result, executor.records_frame().iloc[first:].reset_index(drop=True)


def calibration_meta(executor, cfg) -> dict:
    """Provenance stored in the calibration file (``fit_table``'s meta)."""
    import torch

    dev = executor.device
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        preset = gpu_preset_name(name, torch.cuda.get_device_properties(dev).total_memory)
    else:
        name, preset = "cpu (Triton interpreter)", "cpu"
    return {"model": executor.spec.name, "gpu": preset, "device_name": name, "tp": 1,
            "block_size": cfg.block_size, "date": _dt.date.today().isoformat(),
            "dtype": str(executor.dtype).removeprefix("torch."), "mode": executor.mode,
            "num_gpu_blocks": cfg.gpu_blocks(), "torch": torch.__version__}


def calibrate(trace, cfg, executor, *, meta: dict | None = None, features: dict | None = None):
    """(TableCostModel, rows): fit on a measured replay of ``trace``.

    The executor must measure (``time_from="measured"``) without checks:
    a checked step also times the shadow's work. ``meta`` adds to or
    overrides ``calibration_meta`` (e.g. measured ``copy_block_s``).
    """
    if executor.time_from != "measured":
        raise ValueError("calibrate needs an executor with time_from='measured'")
    if executor.shadow is not None:
        raise ValueError("calibrate needs check_every=0: checked steps time the checks too")
    _, rows = measure(trace, cfg, executor)
    return fit(rows, executor, cfg, trace, meta=meta, features=features), rows


def fit(rows: pd.DataFrame, executor, cfg, trace=None, *, meta: dict | None = None,
        features: dict | None = None) -> TableCostModel:
    """``fit_table`` on the measured rows that compiled nothing (see
    ``gpu_rows``), with the run's provenance as meta."""
    used = gpu_rows(rows)
    full = {**calibration_meta(executor, cfg), "steps": int(len(used)),
            "compile_steps_left_out": int(len(rows) - len(used)),
            "trace": getattr(trace, "source", ""), **(meta or {})}
    return fit_table(used, full, features)


def gpu_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Steps that measured the GPU: a step during which Triton compiled a
    kernel variant measures the compiler (hundreds of ms), once per process;
    a step that captured a CUDA graph ran eagerly, unlike its bucket's others.
    Such a step counts only if the executor ran and timed it again
    (``retimed``, see ``GPUExecutor._retime``)."""
    keep = pd.Series(True, index=rows.index)
    for col in ("compiles", "captures"):
        if col in rows.columns:
            keep &= rows[col] == 0
    if "retimed" in rows.columns:
        keep |= rows["retimed"] == 1
    return rows[keep]


def shapes_of(rows: pd.DataFrame) -> StepShapes:
    return StepShapes(**{f: rows[f].to_numpy() for f in SHAPE_FIELDS})


def step_errors(table: TableCostModel, rows: pd.DataFrame) -> dict:
    """Relative error of the table's price for each measured step that
    compiled nothing; the compiling steps are counted apart."""
    used = gpu_rows(rows)
    pred = table.price(shapes_of(used))
    meas = used["measured_s"].to_numpy(np.float64)
    rel = (pred - meas) / meas
    out = {"steps": int(len(used)), "median_abs_rel_err": float(np.median(np.abs(rel))),
           "p90_abs_rel_err": float(np.quantile(np.abs(rel), 0.9)),
           "max_abs_rel_err": float(np.abs(rel).max()), "mean_signed_rel_err": float(rel.mean()),
           "sum_pred_over_sum_measured": float(pred.sum() / meas.sum()),
           "compile_steps": int(len(rows) - len(used)),
           "compile_steps_measured_s": float(rows["measured_s"].sum() - meas.sum())}
    for regime, sel in (("decode", used["num_prefill_seqs"] == 0), ("mixed", used["num_prefill_seqs"] > 0)):
        if sel.any():
            out[f"{regime}_median_abs_rel_err"] = float(np.median(np.abs(rel[sel.to_numpy()])))
    return out


def compare_with_simulation(trace, cfg, table: TableCostModel, measured) -> dict:
    """Simulated replay with ``table`` against the measured replay ``measured``."""
    sim = run_replay(trace, cfg, executor=CostModelExecutor(table))

    def numbers(r) -> dict:
        s = r.summary
        return {"total_s": s["sim"]["sim_time_s"], "busy_s": float(r.steps["duration_s"].sum()),
                "steps": s["sim"]["steps"], "ttft_mean_s": s["latency"]["ttft_mean_s"],
                "tpot_mean_s": s["latency"]["tpot_mean_s"], "e2e_mean_s": s["latency"]["e2e_mean_s"],
                "preemptions": s["preemptions"]}

    m, p = numbers(measured), numbers(sim)
    return {k: {"measured": m[k], "simulated": p[k],
                "rel_err": (p[k] - m[k]) / m[k] if m[k] else None} for k in m}
