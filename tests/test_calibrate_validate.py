"""``pagesim calibrate`` / ``pagesim validate`` on a CPU (Triton interpreter) or a GPU.

Timings under the interpreter mean nothing, so these tests assert what the
commands guarantee whatever the timings: the calibration file's contents
and round trip, pooled refits, and that validation finds the simulator's
memory identical to the GPU run's when fed the measured durations."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from pagesim.gpu.kernels import _env  # noqa: E402  interpreter only without CUDA, before triton loads

pytest.importorskip("triton")

from pagesim.calibrate import GridPoint, _decode_trace, _prefill_trace, calibrate, default_base, grid  # noqa: E402
from pagesim.cli import main  # noqa: E402
from pagesim.gpu.executor import GPUExecutor  # noqa: E402
from pagesim.sim.costmodel import TableCostModel, get_model, make_cost_model  # noqa: E402
from pagesim.validate import latencies, passes, public, validate  # noqa: E402
from pagesim.traces import Request, Trace  # noqa: E402

BLOCKS = 64


def _preset() -> str:
    """The preset ``pagesim calibrate`` records for this machine: "cpu"
    under the interpreter, the card's preset on a GPU (``validate`` on a GPU
    prices with the calibration's preset, so a "cpu" file cannot serve)."""
    if _env.interpreting():
        return "cpu"
    from pagesim.gpu.calibrate import gpu_preset_name
    return gpu_preset_name(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory)


PRESET = _preset()


@pytest.fixture(scope="module")
def executor():
    return GPUExecutor(get_model("tiny"), BLOCKS, 16, 4, mode="model", seed=0)


@pytest.fixture(scope="module")
def base():
    return default_base("tiny", PRESET, 4, 0.9, BLOCKS, 4, 0)


@pytest.fixture(scope="module")
def table(executor, base):
    points = [GridPoint("decode", "1x6", _decode_trace(1, 6, 3), base),
              GridPoint("decode", "3x9", _decode_trace(3, 9, 3), base),
              GridPoint("decode", "2x17", _decode_trace(2, 17, 4), base),
              GridPoint("prefill", "10+8", _prefill_trace(10, 8, 0), base),
              GridPoint("prefill", "7+0", _prefill_trace(7, 0, 0), base),
              GridPoint("prefill", "19+4", _prefill_trace(19, 4, 1), base),
              GridPoint("prefill", "3+12", _prefill_trace(3, 12, 2), base)]
    return calibrate(base, executor, gpu_preset=PRESET, points=points, progress=False)


def test_grid_covers_every_part_and_fits_the_pool(base):
    pts = grid(base, max_num_seqs=4, scale=0.01)
    assert {p.part for p in pts} == {"decode", "prefill", "mixed", "cow", "swap"}
    assert len([p for p in pts if p.part == "mixed"]) == 2
    for p in pts:
        if p.part == "decode":  # a decode point must never preempt
            r = p.trace.requests
            need = len(r) * -(-(r[0].prompt_tokens + r[0].output_tokens) // base.block_size)
            assert need <= 0.9 * BLOCKS
    assert next(p for p in pts if p.part == "cow").cfg.scheduler.generation == "v0"
    assert next(p for p in pts if p.part == "swap").cfg.scheduler.preemption == "swap"


def test_calibration_file_has_samples_provenance_and_round_trips(table, tmp_path):
    meta = table.meta
    for key in ("device_name", "torch", "triton", "date", "copy_block_s", "swap_block_s", "steps"):
        assert key in meta, key
    assert meta["steps"] == len(table.samples) > 0
    # compiling steps reach the fit only when run and timed again
    assert ((table.samples["compiles"] == 0) | (table.samples["retimed"] == 1)).all()
    path = tmp_path / "cal.json"
    table.save(path)
    loaded = TableCostModel.from_file(path)
    assert loaded.to_dict() == table.to_dict()
    assert set(json.loads(path.read_text())["samples"]) >= {"num_seqs", "measured_s"}


def test_refit_from_files_pools_samples(table, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    table.save(a)
    table.save(b)
    out = tmp_path / "pooled.json"
    assert main(["calibrate", "--from", str(a), str(b), "--out", str(out)]) == 0
    pooled = TableCostModel.from_file(out)
    assert len(pooled.samples) == 2 * len(table.samples) and pooled.meta["pooled_runs"] == 2
    assert main(["calibrate", "--from", str(a), "--out", str(out)]) == 2  # exists, no --overwrite


def test_validate_memory_identical_and_errors_reported(table, executor, base):
    trace = Trace([Request(i, 0.01 * i, 5 + 3 * i, 4 + i % 3) for i in range(6)], source="t")
    record = validate(trace, base, table, executor)
    assert record["memory"]["identical"], record["memory"]
    assert record["memory"]["event_log"]["rows"] > 0
    st = record["step_time"]["calibrated"]
    assert st["steps"] == len(st["measured_s"]) == record["steps"]
    assert set(passes(record)) >= {"memory_identical", "step_median", "ttft_mean_s"}
    json.dumps(public(record), allow_nan=False)  # strict JSON, no frames left


def test_latencies_itl_is_token_weighted():
    import pandas as pd
    df = pd.DataFrame({"finish_s": [3.0, 11.0], "first_token_s": [1.0, 1.0],
                       "output_tokens": [3, 11], "n": [1, 1], "ttft_s": [1.0, 1.0],
                       "tpot_s": [1.0, 1.0], "e2e_s": [3.0, 11.0]})
    got = latencies(df)
    assert got["itl_mean_s"] == pytest.approx(12 / 12) and got["e2el_mean_s"] == 7.0
    df.loc[1, "finish_s"] = 21.0  # 2 s per token for the long one
    assert latencies(df)["itl_mean_s"] == pytest.approx((2 + 20) / 12)


# ------------------------------------------------------------------ validate's workload options
SWAP_COW = ["--n", "2", "--scheduler", "v0", "--preemption", "swap", "--num-gpu-blocks", "16",
            "--num-cpu-blocks", "16", "--max-num-seqs", "8", "--warmup", "0"]


@pytest.fixture(scope="module")
def cal_file(table, tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    table.save(d / "cal.json")
    Trace([Request(i, 0.0, 5 + 2 * i, 12 + i % 3) for i in range(4)], source="t") \
        .to_dataframe().to_csv(d / "trace.csv", index=False)
    return d


@pytest.mark.parametrize("argv, option", [
    (["--preemption", "swap"], "--preemption"),                      # swap needs v0
    (["--scheduler", "v0", "--preemption", "swap", "--num-cpu-blocks", "0"], "--num-cpu-blocks"),
    (["--num-cpu-blocks", "8"], "--num-cpu-blocks"),                # CPU blocks without swap
    (["--n", "0"], "--n"), (["--beam-width", "-1"], "--beam-width"),
    (["--num-gpu-blocks", "0"], "--num-gpu-blocks"), (["--duration-s", "nan"], "--duration-s"),
    (["--measured", "x", "--warmup", "3"], "--warmup"),
])
def test_validate_refuses_bad_workload_options(cal_file, argv, option, tmp_path, capsys):
    code = main(["validate", str(cal_file / "trace.csv"), "--calibration", str(cal_file / "cal.json"),
                 "--out", str(tmp_path / "v"), *argv])
    assert code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_validate_cow_and_swap_workload_then_recheck_without_gpu(cal_file, tmp_path):
    """--n 2 under V0 with a 16-block pool and swap: forks copy blocks and
    preemptions swap, on the GPU executor; memory is identical, and
    --measured re-checks the stored GPU run with no GPU work."""
    out = tmp_path / "v"
    common = [str(cal_file / "trace.csv"), "--calibration", str(cal_file / "cal.json"), *SWAP_COW]
    assert main(["validate", *common, "--out", str(out)]) == 0
    rec = json.loads((out / "validation.json").read_text())
    assert rec["memory"]["identical"] and rec["workload"]["n"] == 2
    import pandas as pd
    steps = pd.read_csv(out / "gpu_steps.csv.gz")
    assert steps["copy_blocks"].sum() > 0 and steps["swap_blocks"].sum() > 0
    assert rec["gpu_clock"]["steps"] == len(steps) == rec["steps"]
    again = tmp_path / "again"
    assert main(["validate", *common, "--measured", str(out), "--out", str(again)]) == 0
    rec2 = json.loads((again / "validation.json").read_text())
    assert rec2["step_time"] == rec["step_time"] and rec2["end_to_end"] == rec["end_to_end"]
    other = [a if a != "2" else "3" for a in common]  # --n 3: another workload
    assert main(["validate", *other, "--measured", str(out), "--out", str(tmp_path / "x")]) == 2
