"""``--kv-cache-dtype fp8``: one byte per K/V element, as vLLM's, in the
cache's capacity and in the roofline's K/V read bytes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pagesim.replay import ReplayConfig
from pagesim.sim.costmodel import (
    KV_CACHE_DTYPES, MODELS, RooflineCostModel, find_calibration, get_model, kv_bytes_per_token,
    kv_cache_blocks, make_cost_model,
)
from pagesim.sim.costmodel.calibrations import calibration_dir
from pagesim.sim.plan import StepShapes
from tests.clihelpers import FAST, run, strict_load

FP8 = [d for d in KV_CACHE_DTYPES if d != "auto"]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", FP8)
def test_fp8_halves_kv_bytes_per_token(name, dtype):
    m = MODELS[name]
    assert kv_bytes_per_token(replace(m, kv_cache_dtype=dtype)) * 2 == kv_bytes_per_token(m)


def test_fp8_doubles_the_blocks_in_the_same_memory():
    auto, fp8 = ReplayConfig(), ReplayConfig(kv_cache_dtype="fp8")
    # the same KV bytes hold twice the blocks, up to the floor of the division
    assert fp8.gpu_blocks() in (2 * auto.gpu_blocks(), 2 * auto.gpu_blocks() + 1)
    assert fp8.model_spec().kv_cache_dtype == "fp8" and auto.model_spec() == get_model("llama-3-8b")


def _decode(kv_read: int) -> StepShapes:
    one = np.ones(1, dtype=np.int64)
    return StepShapes(num_seqs=64 * one, num_tokens=64 * one, kv_tokens_read=kv_read * one,
                      attn_pairs=kv_read * one, num_prefill_seqs=0 * one, copy_blocks=0 * one,
                      swap_blocks=0 * one)


def test_roofline_reads_half_the_kv_bytes():
    """Decode attention is memory bound: the time per context token read halves."""
    m = get_model("llama-3-8b")
    per_token = {}
    for dtype in ("auto", "fp8"):
        cm = RooflineCostModel(replace(m, kv_cache_dtype=dtype), "h100-80gb")
        per_token[dtype] = float(cm.price(_decode(2_000_000))[0] - cm.price(_decode(1_000_000))[0])
    assert per_token["fp8"] == pytest.approx(per_token["auto"] / 2, rel=1e-9)


def test_calibrations_measured_with_16_bit_kv_are_not_used_for_fp8():
    fp8 = replace(get_model("llama-3-8b"), kv_cache_dtype="fp8")
    shipped = find_calibration("llama-3-8b", "h200", 1, 16)
    assert shipped is not None                              # the auto cost model would use it
    assert find_calibration(fp8, "h200", 1, 16) is None     # but not for an fp8 cache
    assert isinstance(make_cost_model("auto", fp8, "h200", 1, 16), RooflineCostModel)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        make_cost_model(calibration_dir() / shipped.name, fp8, "h200", 1, 16)


def test_cli_records_the_dtype_and_refuses_the_gpu_executor(tmp_path, capsys):
    code, _, err = run(capsys, "replay", "--kv-cache-dtype", "fp8_e5m2", "--num-requests", 20,
                       "--out", tmp_path / "o", *FAST)
    assert code == 0, err
    config = strict_load(tmp_path / "o" / "summary.json")["config"]
    assert config["kv_cache_dtype"] == "fp8_e5m2"
    assert config["num_gpu_blocks"] == ReplayConfig(kv_cache_dtype="fp8").gpu_blocks()
    code, _, err = run(capsys, "replay", "--kv-cache-dtype", "fp8", "--executor", "gpu", *FAST)
    assert code == 2 and "argument --executor: gpu keeps K/V in the model's dtype" in err
    code, _, err = run(capsys, "replay", "--kv-cache-dtype", "int8", *FAST)
    assert code == 2 and "argument --kv-cache-dtype: invalid choice" in err


def test_bad_dtype_in_the_library_is_named():
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        ReplayConfig(kv_cache_dtype="fp4")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        replace(get_model("tiny"), kv_cache_dtype="int8")
    assert kv_cache_blocks(replace(get_model("tiny"), kv_cache_dtype="fp8"), "h100-80gb", 16, 0.5) > 0
