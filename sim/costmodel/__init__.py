"""Cost models: how long one engine step takes, and how much KV fits.

A cost model is any object with ``price(shapes: StepShapes) -> np.ndarray``
(seconds per step, elementwise). Two are provided:

* ``RooflineCostModel``: analytic, from model and GPU presets;
* ``TableCostModel``: linear models fitted to measured GPU steps and stored
  in a JSON calibration file (``fit_table`` builds one from rows).

``kv_cache_blocks`` sizes the block pool the way vLLM does.
"""
from __future__ import annotations

from pathlib import Path

from pagesim.sim.costmodel.capacity import (
    default_activation_reserve, kv_cache_blocks, kv_cache_bytes, kv_cache_tokens,
)
from pagesim.sim.costmodel.presets import (
    GPUS, KV_CACHE_DTYPES, MODELS, GPUSpec, ModelSpec, get_gpu, get_model, kv_bytes_per_token, kv_heads_per_gpu,
    weight_bytes,
)
from pagesim.sim.costmodel.roofline import RooflineCostModel
from pagesim.sim.costmodel.calibrations import describe, find_calibration
from pagesim.sim.costmodel.fit import fit_table, refit
from pagesim.sim.costmodel.table import CalibrationError, TableCostModel

__all__ = [
    "ModelSpec", "GPUSpec", "MODELS", "GPUS", "KV_CACHE_DTYPES", "get_model", "get_gpu", "kv_bytes_per_token",
    "kv_heads_per_gpu", "weight_bytes", "kv_cache_blocks", "kv_cache_bytes", "kv_cache_tokens",
    "default_activation_reserve", "RooflineCostModel", "TableCostModel", "CalibrationError",
    "fit_table", "refit", "make_cost_model", "find_calibration", "describe",
]


def make_cost_model(
    kind: str | Path = "roofline",
    model: ModelSpec | str | None = None,
    gpu: GPUSpec | str | None = None,
    tp: int | None = None,
    block_size: int | None = None,
    **roofline_kwargs,
):
    """Build a cost model from a config value.

    ``kind="auto"``: the shipped calibration file matching ``model``, ``gpu``,
    ``tp`` and ``block_size`` if there is one (``calibrations.py``), the
    roofline model otherwise. ``kind="roofline"`` needs ``model`` and
    ``gpu`` (names or specs; ``tp``
    defaults to 1, ``block_size`` to 16, extra keyword arguments go to
    ``RooflineCostModel``). Anything else is the path of a calibration file;
    ``model``/``gpu``/``tp``/``block_size``, when given, must match its
    metadata, because a calibration measured for one setting silently
    misprices another.
    """
    if str(kind) == "auto":
        if model is None or gpu is None:
            raise ValueError("the auto cost model needs a model and a gpu")
        found = find_calibration(model, gpu, tp or 1, block_size or 16)
        kind = found if found is not None and not roofline_kwargs else "roofline"
    if str(kind) == "roofline":
        if model is None or gpu is None:
            raise ValueError("the roofline cost model needs a model and a gpu")
        return RooflineCostModel(model, gpu, tp or 1, block_size=block_size or 16,
                                 **roofline_kwargs)
    if roofline_kwargs:
        raise ValueError(f"options {sorted(roofline_kwargs)} apply to the roofline model only")
    table = TableCostModel.from_file(kind)
    meta = table.meta
    wanted = {
        "model": None if model is None else get_model(model).name,
        "gpu": None if gpu is None else get_gpu(gpu).name,
        "tp": tp,
        "block_size": block_size,
        # measured with the model's own K/V dtype unless the file says otherwise
        "kv_cache_dtype": None if model is None else get_model(model).kv_cache_dtype,
    }
    for key, want in wanted.items():
        have = {"tp": 1, "kv_cache_dtype": "auto"}.get(key) if key not in meta else meta[key]
        if want is not None and str(have).lower() != str(want).lower():
            raise ValueError(f"{kind}: calibrated for {key}={have!r}, but {key}={want!r} was asked")
    return table
