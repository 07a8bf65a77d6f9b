"""Finding the committed calibration file that matches a replay's presets.

``--cost-model auto`` (the default) prices steps with a calibration measured
on the preset's card for the preset's model, tp and block size when pagesim
ships one, and with the roofline model otherwise; the summary says which.
A calibration measured for another setting is never used silently.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pagesim.sim.costmodel.presets import get_gpu, get_model
from pagesim.sim.costmodel.roofline import RooflineCostModel
from pagesim.sim.costmodel.table import TableCostModel


def calibration_dir() -> Path:
    """Where the shipped calibration files live (``calibration/`` in a
    checkout, ``pagesim/calibration`` when installed)."""
    return Path(str(resources.files("pagesim.calibration")))


def find_calibration(model, gpu, tp: int = 1, block_size: int = 16,
                     folder: Path | None = None) -> Path | None:
    """The newest shipped file calibrated for exactly this setting by
    ``pagesim calibrate`` (version 2 and later), or None. Version-1 files
    (fitted on the eager executor, whose steps measured launch overhead)
    stay usable by name, never picked automatically."""
    spec = get_model(model)
    want = (spec.name.lower(), get_gpu(gpu).name.lower(), int(tp), int(block_size), spec.kv_cache_dtype)
    best = None
    for path in sorted((folder or calibration_dir()).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not ours to judge here: an explicit --cost-model FILE reports it
        if data.get("version", 1) < 2:
            continue  # version 1: an eager-executor fit without samples; explicit use only
        meta = data.get("meta", {})
        have = (str(meta.get("model", "")).lower(), str(meta.get("gpu", "")).lower(),
                int(meta.get("tp", 1)), int(meta.get("block_size", 0)),
                str(meta.get("kv_cache_dtype", "auto")))
        if have == want and (best is None or str(meta.get("date", "")) >= best[0]):
            best = (str(meta.get("date", "")), path)
    return None if best is None else best[1]


def describe(model) -> dict:
    """What priced the steps, for ``summary.json``: a calibration file
    (which, measured where and when), the roofline, or a user's own model
    (by class name: never passed off as one of ours)."""
    if isinstance(model, TableCostModel):
        meta = model.meta
        return {"kind": "table", "file": model.source,
                "device_name": meta.get("device_name"), "date": meta.get("date")}
    if isinstance(model, RooflineCostModel):
        return {"kind": "roofline"}
    return {"kind": "custom", "name": type(model).__name__}
