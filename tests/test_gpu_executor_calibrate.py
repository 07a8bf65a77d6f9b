"""Calibration from the GPU executor's records (on the CPU interpreter here:
the numbers are meaningless, the plumbing is what is tested)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from pagesim.gpu.kernels import _env  # noqa: E402,F401  sets TRITON_INTERPRET before triton loads

pytest.importorskip("triton")

from pagesim.gpu.calibrate import calibrate, compare_with_simulation, gpu_preset_name, measure, step_errors  # noqa: E402
from pagesim.gpu.executor import executor_for_replay  # noqa: E402
from pagesim.sim.costmodel import make_cost_model  # noqa: E402
from pagesim.replay import replace  # noqa: E402
from tests.simhelpers import LinearCost, config, trace_of  # noqa: E402

FEATURES = {"decode": ("const", "num_tokens"), "mixed": ("const", "num_tokens")}


def test_calibrate_fits_saves_and_compares(tmp_path):
    trace = trace_of((0.0, 5, 3), (0.0, 12, 4), (0.1, 20, 2), (0.2, 3, 6), (1.0, 9, 5))
    cfg = replace(config(num_blocks=40, block_size=4), model="tiny")
    ex = executor_for_replay(cfg)
    table, rows = calibrate(trace, cfg, ex, meta={"copy_block_s": 1e-5, "swap_block_s": 1e-4},
                            features=FEATURES)
    assert len(rows) == len(ex.records) and rows["measured_s"].gt(0).all()
    assert table.meta["model"] == "tiny" and table.meta["block_size"] == 4 and table.meta["tp"] == 1
    assert {"gpu", "device_name", "date", "dtype"} <= set(table.meta)
    path = tmp_path / "tiny_cpu.json"
    table.save(path)
    loaded = make_cost_model(path, model="tiny", block_size=4)
    errs = step_errors(loaded, rows)
    assert errs["steps"] == len(rows) and errs["median_abs_rel_err"] >= 0
    # a second replay on the same executor starts from a clean slate
    result, again = measure(trace, cfg, ex)
    assert len(again) == len(rows) and len(ex.records) == 2 * len(rows)
    cmp = compare_with_simulation(trace, cfg, loaded, result)
    assert cmp["steps"]["measured"] == len(again) and cmp["total_s"]["simulated"] > 0


def test_calibrate_refuses_checked_or_priced_timings():
    cfg = replace(config(num_blocks=8, block_size=4), model="tiny")
    with pytest.raises(ValueError, match="check_every=0"):
        calibrate(trace_of((0.0, 3, 2)), cfg, executor_for_replay(cfg, check_every=1))
    with pytest.raises(ValueError, match="measured"):
        calibrate(trace_of((0.0, 3, 2)), cfg, executor_for_replay(cfg, time_from=LinearCost()))


def test_gpu_preset_names():
    assert gpu_preset_name("NVIDIA H100 80GB HBM3") == "h100-80gb"
    assert gpu_preset_name("NVIDIA H200") == "h200"
    assert gpu_preset_name("NVIDIA A100-SXM4-40GB", 40 * 2**30) == "a100-40gb"
    assert gpu_preset_name("NVIDIA L4") == "nvidia-l4"
