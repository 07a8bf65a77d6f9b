"""A cost model fitted to measured step times, and its calibration file.

Measured steps fall into two regimes that behave differently on a GPU, so
each gets its own linear model over the step's shape::

    decode  (num_prefill_seqs == 0):  t = a + b*num_tokens + c*kv_tokens_read
    mixed   (num_prefill_seqs  > 0):  t = a + b*num_tokens + c*kv_tokens_read
                                            + d*attn_pairs

In a pure decode step ``attn_pairs == kv_tokens_read`` and ``num_tokens ==
num_seqs``, so those columns would be collinear there; the feature list of
each regime is stored in the file and can be chosen at fit time. Block
copies and swaps add ``copy_blocks * copy_block_s + swap_blocks *
swap_block_s``, and the result is clamped below at ``floor_s`` so that an
extrapolated line never prices a step at zero or less.

Coefficients are fitted in ``fit.py`` (relative least squares with the
summed time held unbiased; the reasons are there). The file keeps the raw
measured steps (``samples``), so that runs can be pooled and refitted.

Calibration file (JSON)::

    {"format": "pagesim.table_cost_model", "version": 1,
     "meta": {"model": "llama-3-8b", "gpu": "h100-80gb", "tp": 1,
              "block_size": 16, ...free-form provenance...},
     "floor_s": 0.002, "copy_block_s": 1.6e-6, "swap_block_s": 6.6e-5,
     "regimes": {
       "decode": {"features": ["const", "num_tokens", "kv_tokens_read"],
                  "coef": [0.005, 1.2e-5, 4.9e-8],
                  "fit": {"rows": 120, "median_rel_err": 0.01, "max_rel_err": 0.04}},
       "mixed":  {...}},
     "samples": {"num_seqs": [...], ..., "measured_s": [...]}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pagesim.sim.costmodel.roofline import RooflineCostModel
from pagesim.sim.plan import StepShapes

FORMAT = "pagesim.table_cost_model"
VERSION = 2
#: Versions this reader accepts: 1 had no samples, no provenance block.
READABLE_VERSIONS = (1, 2)
#: Features a regime may use: ``const`` (1) or a ``StepShapes`` field.
FEATURES = ("const", "num_seqs", "num_tokens", "kv_tokens_read", "attn_pairs", "num_prefill_seqs")
REGIMES = ("decode", "mixed")
DEFAULT_FEATURES = {
    "decode": ("const", "num_tokens", "kv_tokens_read"),
    "mixed": ("const", "num_tokens", "kv_tokens_read", "attn_pairs"),
}
ROW_COLUMNS = ("num_seqs", "num_tokens", "kv_tokens_read", "attn_pairs", "num_prefill_seqs",
               "measured_s")
META_REQUIRED = ("model", "gpu", "block_size")


class CalibrationError(ValueError):
    """A calibration file or a set of rows that cannot give a cost model."""


@dataclass(frozen=True, slots=True)
class Regime:
    """One linear model: ``t = sum(coef[i] * feature[i])``."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    fit: dict = field(default_factory=dict)  # provenance: rows, errors

    def predict(self, shapes: StepShapes) -> np.ndarray:
        """Elementwise; terms are added in the stored order."""
        t = np.zeros(len(shapes), dtype=np.float64)
        for name, c in zip(self.features, self.coef):
            if name == "const":
                t = t + c
            else:
                t = t + c * np.asarray(getattr(shapes, name), dtype=np.float64)
        return t


class TableCostModel:
    """Prices steps with per-regime linear models fitted to measurements."""

    def __init__(self, regimes: dict[str, Regime], copy_block_s: float, swap_block_s: float,
                 floor_s: float, meta: dict, samples: pd.DataFrame | None = None) -> None:
        self.regimes, self.meta = regimes, dict(meta)
        #: The measured steps the model was fitted to (None for version-1 files).
        self.samples = samples
        #: The file it was read from, if any.
        self.source: str | None = None
        self.copy_block_s, self.swap_block_s, self.floor_s = copy_block_s, swap_block_s, floor_s

    def price(self, shapes: StepShapes) -> np.ndarray:
        """Seconds per step, elementwise."""
        mixed = np.asarray(shapes.num_prefill_seqs) > 0
        t = np.where(mixed, self.regimes["mixed"].predict(shapes),
                     self.regimes["decode"].predict(shapes))
        t = np.maximum(t, self.floor_s)
        t = t + np.asarray(shapes.copy_blocks, dtype=np.float64) * self.copy_block_s
        return t + np.asarray(shapes.swap_blocks, dtype=np.float64) * self.swap_block_s

    def decode_run(self, n: int, ctx0: int, k: int, clock: float, stop_at) -> tuple:
        """Start times and durations of up to ``k`` plain decode steps of
        ``n`` sequences, contexts ``ctx0, ctx0 + n, ...``, stopping after the
        first step that ends at or after ``stop_at``: ``(times, dts, k)``.

        The fast engine prices decode stretches this way. The float
        operations are those of ``price`` on one step, in the same order
        (adding zero copy and swap terms is exact), so the times are
        bit-identical to pricing the steps one by one."""
        reg = self.regimes["decode"]
        nf = float(n)
        fixed = {"const": 1.0, "num_seqs": nf, "num_tokens": nf, "num_prefill_seqs": 0.0}
        terms = [(c, fixed.get(f)) for f, c in zip(reg.features, reg.coef)]
        floor, stop = self.floor_s, (float("inf") if stop_at is None else stop_at)
        times, dts, t, ctx = [clock], [], clock, ctx0
        for j in range(k):
            c_ctx = float(ctx)
            dt = 0.0
            for c, x in terms:
                dt = dt + c * (c_ctx if x is None else x)
            dt = dt if dt >= floor else floor
            t = t + dt
            dts.append(dt)
            times.append(t)
            if t >= stop:
                return times, dts, j + 1
            ctx += n
        return times, dts, k

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "meta": self.meta,
            "floor_s": self.floor_s, "copy_block_s": self.copy_block_s,
            "swap_block_s": self.swap_block_s,
            "regimes": {name: {"features": list(r.features), "coef": list(r.coef), "fit": r.fit}
                        for name, r in self.regimes.items()},
            **({} if self.samples is None else {"samples": _columns(self.samples)}),
        }

    def save(self, path: str | Path) -> None:
        """Write the calibration file (JSON; floats round-trip exactly)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> "TableCostModel":
        """Load a calibration file; CalibrationError names the file and the problem."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise CalibrationError(f"{path}: cannot read calibration file: {e.strerror}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): "
                                   f"{e.msg}") from e
        table = cls.from_dict(data, source=str(path))
        table.source = str(path)
        return table

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> "TableCostModel":
        """Validate a parsed calibration file and build the model."""
        def bad(problem: str) -> CalibrationError:
            return CalibrationError(f"{source}: {problem}")

        if not isinstance(data, dict):
            raise bad("top level must be a JSON object")
        if data.get("format") != FORMAT:
            raise bad(f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") not in READABLE_VERSIONS:
            raise bad(f"unsupported version {data.get('version')!r} (this reader knows "
                      f"{', '.join(map(str, READABLE_VERSIONS))})")
        meta = data.get("meta")
        if not isinstance(meta, dict) or any(k not in meta for k in META_REQUIRED):
            raise bad(f"'meta' must be an object with keys {', '.join(META_REQUIRED)}")
        if isinstance(meta["block_size"], bool) or not isinstance(meta["block_size"], int) \
                or meta["block_size"] < 1:
            raise bad(f"meta.block_size must be a positive integer, got {meta['block_size']!r}")
        scalars = {k: _number(data, k, bad) for k in ("floor_s", "copy_block_s", "swap_block_s")}
        regimes = data.get("regimes")
        if not isinstance(regimes, dict) or sorted(regimes) != sorted(REGIMES):
            raise bad(f"'regimes' must be an object with exactly the keys {', '.join(REGIMES)}")
        parsed = {name: _parse_regime(name, regimes[name], bad) for name in REGIMES}
        samples = _parse_samples(data.get("samples"), bad)
        return cls(parsed, scalars["copy_block_s"], scalars["swap_block_s"], scalars["floor_s"],
                   meta, samples)

    def __repr__(self) -> str:
        m = self.meta
        return f"TableCostModel({m.get('model')!r}, {m.get('gpu')!r}, block_size={m.get('block_size')})"


def _number(obj: dict, key: str, bad) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
        raise bad(f"{key!r} must be a finite number >= 0, got {v!r}")
    return float(v)


def _columns(df: pd.DataFrame) -> dict:
    """A DataFrame as JSON columns (numpy scalars to Python numbers)."""
    return {c: df[c].tolist() for c in df.columns}


def _parse_samples(samples, bad) -> pd.DataFrame | None:
    if samples is None:
        return None
    if not isinstance(samples, dict) or any(c not in samples for c in ROW_COLUMNS):
        raise bad(f"'samples' must be an object of columns including {', '.join(ROW_COLUMNS)}")
    lengths = {len(v) if isinstance(v, list) else -1 for v in samples.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise bad("'samples' columns must be lists of one length")
    return pd.DataFrame(samples)


def _parse_regime(name: str, r, bad) -> Regime:
    where = f"regimes.{name}"
    if not isinstance(r, dict):
        raise bad(f"{where} must be an object")
    feats, coef = r.get("features"), r.get("coef")
    if not isinstance(feats, list) or not feats or any(f not in FEATURES for f in feats):
        raise bad(f"{where}.features must be a non-empty list drawn from {', '.join(FEATURES)}; "
                  f"got {feats!r}")
    if len(set(feats)) != len(feats):
        raise bad(f"{where}.features repeats a feature: {feats!r}")
    if not isinstance(coef, list) or len(coef) != len(feats):
        raise bad(f"{where}.coef must be a list of {len(feats)} numbers (one per feature)")
    if any(isinstance(c, bool) or not isinstance(c, (int, float)) or not np.isfinite(c)
           for c in coef):
        raise bad(f"{where}.coef must hold finite numbers, got {coef!r}")
    fit = r.get("fit", {})
    if not isinstance(fit, dict):
        raise bad(f"{where}.fit must be an object")
    return Regime(tuple(feats), tuple(float(c) for c in coef), fit)


def per_block_costs(meta: dict) -> tuple[float, float]:
    """copy/swap seconds per block: from ``meta`` or, failing that, from the
    roofline model of the meta's model, GPU, tp and block size."""
    if "copy_block_s" in meta and "swap_block_s" in meta:
        return float(meta["copy_block_s"]), float(meta["swap_block_s"])
    try:
        rl = RooflineCostModel(meta["model"], meta["gpu"], meta.get("tp", 1),
                               block_size=int(meta["block_size"]))
    except ValueError as e:
        raise CalibrationError(f"meta: give copy_block_s and swap_block_s, or a known "
                               f"model and gpu to derive them ({e})") from e
    return (float(meta.get("copy_block_s", rl.copy_block_s)),
            float(meta.get("swap_block_s", rl.swap_block_s)))
