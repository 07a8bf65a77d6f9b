"""Fitting the table cost model to measured steps.

Each regime (``decode``, ``mixed``; see ``table.py``) is a linear model over
step-shape features. The loss is chosen for what the simulator does with it:

* step times span three orders of magnitude, so residuals are weighted
  *relatively* (a 10 % miss on a 5 ms decode step matters as much as on a
  500 ms prefill);
* but a pure relative least-squares fit is biased low by construction (it
  prefers under-predicting a slow step to over-predicting a fast one, since
  ``|p - y| / y`` is cheaper for large ``y``), and a simulator sums step
  times: a 10 % low bias becomes a 10 % early finish. So the fit minimises
  the relative loss *subject to* the predicted total of the regime equalling
  the measured total (an equality-constrained least squares, solved through
  its KKT system). On rows that a linear model explains exactly the
  constraint is inactive and the true coefficients come back.

Why these features (defaults; ``features=`` overrides per regime):

* ``const``: what every step pays whatever its batch: the weights read once
  (memory-bound decode) and the launch/graph-replay overhead;
* ``num_tokens``: per-token work of the dense layers (grows with the batch
  once it leaves the memory-bound floor, and with prefill chunk length);
* ``kv_tokens_read``: attention reads every context token's K/V;
* ``attn_pairs`` (mixed only): causal query-key products of prefill chunks,
  the quadratic part of attention. In a decode step it equals
  ``kv_tokens_read`` and ``num_tokens == num_seqs``, so the decode regime
  leaves them out (they would be collinear).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pagesim.sim.costmodel.table import (
    DEFAULT_FEATURES, FEATURES, META_REQUIRED, REGIMES, ROW_COLUMNS, CalibrationError, Regime,
    TableCostModel, per_block_costs,
)

#: Columns of the measured rows kept in the file: the shape, the measured
#: device time, host time, and where in the grid the step came from.
SAMPLE_COLUMNS = ROW_COLUMNS + ("copy_blocks", "swap_blocks", "step", "wall_s", "prep_s",
                                "compiles", "captures", "retimed", "launch_gap", "graph_bucket", "graph_width",
                                "part", "label")

FEATURE_WHY = {
    "const": "per-step cost independent of the batch: weights read once, launch/graph overhead",
    "num_seqs": "per-sequence work (metadata, sampling)",
    "num_tokens": "per-token work of the dense layers (batch size, prefill chunk length)",
    "kv_tokens_read": "attention reads each context token's K/V once",
    "attn_pairs": "causal query-key products of prefill chunks (quadratic in chunk length)",
    "num_prefill_seqs": "per-prefill-sequence overhead",
}


def constrained_lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Coefficients minimising ``sum(((x @ c - y) / y) ** 2)`` subject to
    ``sum(x @ c) == sum(y)``; returns (coef, rank of the weighted design).

    Columns are scaled to unit norm first: features differ by ten orders of
    magnitude (``const`` against ``attn_pairs``) and the KKT matrix would be
    hopelessly conditioned otherwise."""
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    a = xs / y[:, None]
    rank = int(np.linalg.matrix_rank(a))
    s = xs.sum(axis=0)
    k = xs.shape[1]
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = 2 * a.T @ a
    kkt[:k, k] = s
    kkt[k, :k] = s
    rhs = np.concatenate((2 * a.T @ np.ones(len(y)), [y.sum()]))
    sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return sol[:k] / scale, rank


def fit_quality(pred: np.ndarray, y: np.ndarray) -> dict:
    """The errors a user should look at, for one set of steps."""
    rel = (pred - y) / y
    a = np.abs(rel)
    return {"rows": int(len(y)), "median_rel_err": float(np.median(a)),
            "p90_rel_err": float(np.quantile(a, 0.9)), "p95_rel_err": float(np.quantile(a, 0.95)),
            "max_rel_err": float(a.max()), "sum_pred_over_sum_measured": float(pred.sum() / y.sum())}


def _design(rows: pd.DataFrame, feats) -> np.ndarray:
    return np.column_stack([np.ones(len(rows)) if f == "const" else rows[f].to_numpy(np.float64)
                            for f in feats])


def _fit_regime(name: str, rows: pd.DataFrame, y: np.ndarray, features) -> Regime:
    """Constrained relative least squares; refuses too few or collinear rows."""
    feats = tuple(features)
    if len(rows) < len(feats):
        raise CalibrationError(f"{name}: {len(rows)} rows cannot fit {len(feats)} coefficients "
                               f"({', '.join(feats)})")
    x = _design(rows, feats)
    coef, rank = constrained_lstsq(x, y)
    if rank < len(feats):
        raise CalibrationError(f"{name}: features {', '.join(feats)} are collinear in the rows "
                               f"(rank {rank}); vary the shapes more or drop a feature")
    fit = {**fit_quality(x @ coef, y), "loss": "relative least squares, summed time unbiased",
           "why": {f: FEATURE_WHY[f] for f in feats}}
    return Regime(feats, tuple(float(c) for c in coef), fit)


def _check_rows(rows: pd.DataFrame, meta: dict, features: dict) -> None:
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise CalibrationError(f"rows lack columns {', '.join(missing)}")
    if any(k not in meta for k in META_REQUIRED):
        raise CalibrationError(f"meta needs keys {', '.join(META_REQUIRED)}")
    for name, feats in features.items():
        unknown = [f for f in feats if f not in FEATURES or (f != "const" and f not in rows.columns)]
        if name not in REGIMES or unknown:
            raise CalibrationError(f"features[{name!r}]: regime must be one of {REGIMES} and "
                                   f"features columns of the rows; bad: {unknown}")


def fit_table(rows: pd.DataFrame, meta: dict, features: dict | None = None, *,
              keep_samples: bool = True) -> TableCostModel:
    """Fit a TableCostModel to measured steps.

    ``rows`` has one row per measured step with columns ``ROW_COLUMNS``
    (``measured_s`` in seconds); optional ``copy_blocks``/``swap_blocks``
    columns have their per-block cost subtracted before fitting. ``meta``
    needs ``model``, ``gpu`` and ``block_size`` (and ``tp``, default 1) and
    is stored in the file; ``copy_block_s``/``swap_block_s`` in it override
    the roofline's per-block costs. ``features`` maps a regime to its feature
    list (default ``DEFAULT_FEATURES``). The rows themselves are stored in
    the file (``keep_samples``), so that ``refit`` can pool several runs.
    """
    features = {**DEFAULT_FEATURES, **(features or {})}
    _check_rows(rows, meta, features)
    copy_s, swap_s = per_block_costs(meta)
    y = rows["measured_s"].to_numpy(np.float64)
    for col, per_block in (("copy_blocks", copy_s), ("swap_blocks", swap_s)):
        if col in rows.columns:
            y = y - rows[col].to_numpy(np.float64) * per_block
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise CalibrationError("measured_s must be finite and exceed the copy/swap time of each row")
    mixed = rows["num_prefill_seqs"].to_numpy() > 0
    regimes = {name: _fit_regime(name, rows[sel], y[sel], features[name])
               for name, sel in (("decode", ~mixed), ("mixed", mixed))}
    samples = None
    if keep_samples:
        keep = [c for c in SAMPLE_COLUMNS if c in rows.columns]
        samples = rows[keep].reset_index(drop=True)
    return TableCostModel(regimes, copy_s, swap_s, floor_s=0.5 * float(y.min()), meta=meta,
                          samples=samples)


def refit(tables: list[TableCostModel], features: dict | None = None) -> TableCostModel:
    """One model from the samples of several calibration runs of the same
    setting (model, GPU, tp, block size): more shapes, less noise."""
    if not tables:
        raise CalibrationError("refit needs at least one calibration")
    key = ("model", "gpu", "tp", "block_size")
    first = tables[0].meta
    for t in tables:
        if t.samples is None:
            raise CalibrationError(f"{t!r} holds no samples (a version-1 file): it cannot be refitted")
        if any(str(t.meta.get(k, 1 if k == "tp" else None)).lower()
               != str(first.get(k, 1 if k == "tp" else None)).lower() for k in key):
            raise CalibrationError(f"cannot pool calibrations of different settings: "
                                   f"{[t.meta.get(k) for k in key]} vs {[first.get(k) for k in key]}")
    rows = pd.concat([t.samples for t in tables], ignore_index=True)
    meta = {**first, "pooled_runs": len(tables), "steps": int(len(rows)),
            "dates": sorted({str(t.meta.get("date")) for t in tables})}
    return fit_table(rows, meta, features)
