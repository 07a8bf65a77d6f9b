"""Calibration from the GPU executor's records. On the CPU interpreter the
measured times mean nothing and vary with the machine's load, so the
calibration tests script them (``ScriptedTimes``): a known linear cost the
fit must recover, and a schedule that does not depend on the machine."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from pagesim.gpu.kernels import _env  # noqa: E402,F401  sets TRITON_INTERPRET before triton loads

pytest.importorskip("triton")
import pandas as pd  # noqa: E402

from pagesim.gpu.calibrate import SHAPE_FIELDS as SHAPES  # noqa: E402
from pagesim.gpu.calibrate import calibrate, compare_with_simulation, gpu_preset_name, measure, step_errors  # noqa: E402
from pagesim.gpu.executor import RECORD_COLUMNS, executor_for_replay  # noqa: E402
from pagesim.sim.costmodel import make_cost_model  # noqa: E402
from pagesim.replay import replace  # noqa: E402
from tests.simhelpers import LinearCost, config, trace_of  # noqa: E402

pytestmark = pytest.mark.triton
FEATURES = {"decode": ("const", "num_tokens"), "mixed": ("const", "num_tokens")}
#: The per-block costs given to ``calibrate`` as meta, in seconds.
COPY_S, SWAP_S = 1e-5, 1e-4
#: The "true" step times the scripted executor reports: t = a + b * num_tokens
#: per regime (binary fractions), plus the per-block costs above.
TRUE = {"decode": (2.0 ** -10, 2.0 ** -14), "mixed": (2.0 ** -8, 2.0 ** -12)}


def scripted_duration(shapes) -> float:
    """The step time a deterministic 'GPU' takes for a step of these shapes."""
    a, b = TRUE["mixed" if shapes.num_prefill_seqs[0] > 0 else "decode"]
    return (a + b * float(shapes.num_tokens[0]) + COPY_S * float(shapes.copy_blocks[0])
            + SWAP_S * float(shapes.swap_blocks[0]))


class ScriptedTimes:
    """A GPU executor whose measured durations come from ``scripted_duration``.

    The kernels still run (the records, shapes and plumbing are the real
    executor's), but the time it reports, to the engine and in its records,
    is a function of the step's shapes, so the schedule (which arrivals join
    which step) no longer depends on how busy the machine is.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, plan) -> float:
        self.inner.execute(plan)
        t = scripted_duration(plan.shapes())
        row = list(self.inner.records[-1])
        row[RECORD_COLUMNS.index("measured_s")] = t
        self.inner.records[-1] = tuple(row)
        return t


def test_calibrate_recovers_the_step_times_and_simulation_reproduces_the_replay(tmp_path):
    trace = trace_of((0.0, 5, 3), (0.0, 12, 4), (0.1, 20, 2), (0.2, 3, 6), (1.0, 9, 5))
    cfg = replace(config(num_blocks=40, block_size=4), model="tiny")
    ex = ScriptedTimes(executor_for_replay(cfg))
    table, rows = calibrate(trace, cfg, ex, meta={"copy_block_s": COPY_S, "swap_block_s": SWAP_S},
                            features=FEATURES)
    assert len(rows) == len(ex.records) and rows["measured_s"].gt(0).all()
    assert table.meta["model"] == "tiny" and table.meta["block_size"] == 4 and table.meta["tp"] == 1
    assert {"gpu", "device_name", "date", "dtype"} <= set(table.meta)
    assert (rows["num_prefill_seqs"] > 0).any() and (rows["num_prefill_seqs"] == 0).any(), \
        "the trace must exercise both regimes"
    # exact linear times: the fit finds the coefficients that made them
    for regime, coef in TRUE.items():
        assert table.regimes[regime].coef == pytest.approx(coef, rel=1e-9), regime
    path = tmp_path / "tiny_cpu.json"
    table.save(path)
    loaded = make_cost_model(path, model="tiny", block_size=4)
    errs = step_errors(loaded, rows)
    assert errs["steps"] == len(rows) and errs["compile_steps"] == 0
    assert errs["median_abs_rel_err"] < 1e-9 and errs["max_abs_rel_err"] < 1e-9
    assert errs["sum_pred_over_sum_measured"] == pytest.approx(1.0, rel=1e-9)
    # a second replay on the same executor starts from a clean slate, and
    # with the same step times it schedules exactly the same steps
    result, again = measure(trace, cfg, ex)
    assert len(ex.records) == 2 * len(rows)
    pd.testing.assert_frame_equal(again[list(SHAPES)], rows[list(SHAPES)])
    assert again["measured_s"].tolist() == rows["measured_s"].tolist()
    # the simulator with the fitted table replays what was "measured"
    cmp = compare_with_simulation(trace, cfg, loaded, result)
    assert cmp["steps"]["measured"] == cmp["steps"]["simulated"] == len(again)
    assert cmp["preemptions"]["measured"] == cmp["preemptions"]["simulated"]
    for key in ("total_s", "busy_s", "ttft_mean_s", "e2e_mean_s"):
        assert abs(cmp[key]["rel_err"]) < 1e-9, (key, cmp[key])


def test_measured_mode_returns_what_the_executor_timed():
    # All arrivals at 0: the schedule does not depend on the step times, so
    # the timer's readings (whatever they are) must be the steps' durations.
    trace = trace_of((0.0, 5, 3), (0.0, 12, 4), (0.0, 3, 2))
    cfg = replace(config(num_blocks=40, block_size=4), model="tiny")
    ex = executor_for_replay(cfg)
    result, rows = measure(trace, cfg, ex)
    assert len(rows) == result.summary["sim"]["steps"] and rows["measured_s"].gt(0).all()
    assert result.steps["duration_s"].tolist() == rows["measured_s"].tolist()


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


def test_a_compiling_step_is_run_and_timed_again_and_leaves_the_same_cache(monkeypatch):
    """A step that compiled a kernel measured the compiler: the executor runs
    its forward again and charges that timing (``retimed``). Running the
    forward twice must store exactly what running it once stores."""
    import pagesim.gpu.executor as gx
    from pagesim.gpu.calibrate import gpu_rows
    from pagesim.replay import run_replay

    trace = trace_of((0.0, 7, 3), (0.0, 4, 4), (0.05, 10, 2))
    cfg = replace(config(num_blocks=40, block_size=4), model="tiny")
    plain = executor_for_replay(cfg, cuda_graphs=False)
    run_replay(trace, cfg, executor=ScriptedTimes(plain))
    faked = executor_for_replay(cfg, cuda_graphs=False)
    calls = []
    forward = faked.model.forward

    def compiling_forward(cache, batch, hook=None):
        calls.append(batch.step)
        if len(calls) in (1, 4):  # "compile" in the first and the fourth forward
            gx._compiles[0] += 1
        return forward(cache, batch, hook)

    monkeypatch.setattr(faked.model, "forward", compiling_forward)
    run_replay(trace, cfg, executor=ScriptedTimes(faked))
    df = faked.records_frame()
    assert df["compiles"].sum() == 2 and (df["retimed"] == (df["compiles"] > 0)).all()
    assert len(calls) == len(df) + 2 and calls[0] == calls[1]  # the first step ran twice
    assert len(gpu_rows(df)) == len(df)  # retimed steps count
    assert torch.equal(torch.isnan(faked.cache.kv), torch.isnan(plain.cache.kv))
    assert torch.equal(torch.nan_to_num(faked.cache.kv), torch.nan_to_num(plain.cache.kv))


def test_spin_follows_the_host_and_grows_after_a_gap():
    from pagesim.gpu.executor import SPIN_HZ, spin_cycles
    assert spin_cycles(0.010, False, 10**9) == int((0.015 + 1e-4) * SPIN_HZ)
    assert spin_cycles(0.001, True, 10**8) == 2 * 10**8  # a gap: at least twice the last
    assert spin_cycles(5.0, True, 10**9) == int(0.5 * SPIN_HZ)  # capped (a compile)
