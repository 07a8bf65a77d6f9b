"""A steps table streamed to Parquet during the run (``steps_path``) holds
exactly what the table kept in memory holds, and everything computed from it
(gauges, summary, plot bins, serving metrics) is the same, bit for bit.

Row groups are made tiny here (``SPILL_ROWS``) so that these short runs
cross many of them: the gauges' counters must carry over from one row group
to the next, and decode stretches are split between groups."""
import json

import numpy as np
import pandas as pd
import pytest

import pagesim.sim.step_recorder as step_recorder
from pagesim.analysis import plots
from pagesim.cli import main
from pagesim.replay import ReplayConfig, StepsFile, replace, run_replay
from pagesim.sim.serving_metrics import itl_samples
from pagesim.sim.step_recorder import STEP_COLUMNS, StepRecorder
from pagesim.steps_file import ParquetSink
from pagesim.traces import synthetic

CASES = {  # preemptions; prefix caching with samples (the hit counters); a baseline allocator
    "tight": (dict(num_requests=150, rate=20, seed=0), ReplayConfig(num_gpu_blocks=120)),
    "caching": (dict(num_requests=120, rate=20, n=2, system_prompt_tokens=100, seed=1),
                ReplayConfig(num_gpu_blocks=400)),
    "orca": (dict(num_requests=80, rate=10, seed=3), ReplayConfig(allocator="orca-pow2")),
}


@pytest.fixture
def small_groups(monkeypatch):
    """Row groups of 97 steps, streaming from the 301st step on."""
    monkeypatch.setattr(step_recorder, "SPILL_ROWS", 97)
    monkeypatch.setattr(step_recorder, "HOLD_ROWS", 300)


def without_wall(summary: dict) -> dict:
    s = json.loads(json.dumps(summary, default=str))
    s["sim"].pop("wall_s")
    return s


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fast", [True, False])
def test_streamed_run_equals_run_in_memory(case, fast, tmp_path, small_groups):
    kw, cfg = CASES[case]
    cfg = replace(cfg, fast=fast)
    trace = synthetic("sharegpt", **kw)
    mem = run_replay(trace, cfg)
    streamed = run_replay(trace, cfg, steps_path=tmp_path / "steps.parquet")
    assert isinstance(streamed.steps, StepsFile) and isinstance(mem.steps, pd.DataFrame)
    assert len(mem.steps) > 5 * 97, "the case must cross many row groups"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steps.parquet"], "the raw file is removed"
    pd.testing.assert_frame_equal(streamed.steps.to_pandas(), mem.steps, check_exact=True)
    if case == "tight":
        assert mem.steps["num_preemptions"].iloc[-1] > 0, "the counters must have something to carry"
    if case == "caching":
        assert mem.steps["prefix_cache_hits"].iloc[-1] > 0, "the counters must have something to carry"
    assert without_wall(streamed.summary) == without_wall(mem.summary)
    pd.testing.assert_frame_equal(streamed.requests, mem.requests, check_exact=True)
    # what the plots and the report read, by column and by row mask
    (xa, fa), (xb, fb) = plots.binned_memory(streamed.steps), plots.binned_memory(mem.steps)
    np.testing.assert_array_equal(xa, xb)
    assert fa.keys() == fb.keys() and all((fa[k] == fb[k]).all() for k in fa)
    for a, b in zip(itl_samples(streamed.requests, streamed.steps), itl_samples(mem.requests, mem.steps)):
        np.testing.assert_array_equal(a, b)
    mask = mem.steps["num_seqs"] > 1
    pd.testing.assert_frame_equal(streamed.steps[mask], mem.steps[mask], check_exact=True)
    assert len(streamed.steps) == len(mem.steps) and "kv_cache_usage_perc" in streamed.steps


def test_sink_gets_every_row_once_in_order(small_groups):
    rows = []

    class Collect:
        def write(self, columns):
            assert set(columns) == set(STEP_COLUMNS)
            rows.append({c: v.copy() for c, v in columns.items()})

    def usage_from(live, num_free, num_cached_free):
        from pagesim.sim.accounting import MemorySplit
        z = np.zeros_like(live)
        return MemorySplit(live, z, z, z, num_cached_free * 16, num_free * 16)

    rec = StepRecorder(usage_from, chunk_steps=10, sink=Collect())
    for i in range(500):
        rec.add(i, float(i), 1.0, (1, 1, 0, i), 0, i, (7, 3))
    rec.close()
    assert rec.spilled
    assert [len(r["step"]) for r in rows] == [97] * 5 + [15], "full groups of SPILL_ROWS, then the rest"
    assert (np.concatenate([r["step"] for r in rows]) == np.arange(500)).all()


def test_failed_run_leaves_no_file(tmp_path, monkeypatch, small_groups):
    from pagesim.sim.engine import Engine
    run = Engine.run

    def run_then_fail(self):
        run(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "run", run_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run_replay(synthetic("sharegpt", num_requests=50, seed=0), ReplayConfig(num_gpu_blocks=120),
                   steps_path=tmp_path / "steps.parquet")
    assert list(tmp_path.iterdir()) == [], "an interrupted run leaves no raw or partial steps file"


def test_short_runs_stay_in_memory_and_write_nothing(tmp_path):
    """Below HOLD_ROWS steps the table is held (writing and reading it back
    would cost more than it saves) and is the same table."""
    trace = synthetic("sharegpt", num_requests=30, seed=0)
    held = run_replay(trace, ReplayConfig(), steps_path=tmp_path / "steps.parquet")
    assert isinstance(held.steps, pd.DataFrame) and list(tmp_path.iterdir()) == []
    pd.testing.assert_frame_equal(held.steps, run_replay(trace, ReplayConfig()).steps, check_exact=True)
    sink = ParquetSink(tmp_path / "raw.parquet")
    sink.close()
    assert list(tmp_path.iterdir()) == [], "a sink that got no rows writes no file"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_cli_streams_and_writes_the_same_tables(tmp_path, fmt, small_groups, monkeypatch, capsys):
    """The CLI streams the steps into its output folder; the table it
    writes equals the same replay's table held in memory."""
    import pagesim.cli
    real, seen = pagesim.cli.run_replay, {}

    def both(trace, cfg, **kw):
        assert kw.get("steps_path") is not None, "a CLI run with --out streams its steps"
        seen["memory"] = real(trace, cfg, **{**kw, "steps_path": None})
        return real(trace, cfg, **kw)

    monkeypatch.setattr(pagesim.cli, "run_replay", both)
    args = ["replay", "--num-requests", "60", "--num-gpu-blocks", "150", "--quiet",
            "--table-format", fmt, "--out", str(tmp_path / "o")]
    assert main(args) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert f"steps.{fmt}" in names and (fmt == "parquet" or "steps.parquet" not in names), names
    expected = seen["memory"].steps
    assert len(expected) > 5 * 97
    if fmt == "parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o" / "steps.parquet"), expected,
                                      check_exact=True)
    else:
        expected.to_csv(tmp_path / "expected.csv", index=False)
        assert (tmp_path / "o" / "steps.csv").read_text() == (tmp_path / "expected.csv").read_text()


def test_cli_bounds_its_process_memory(tmp_path, capsys):
    """A CLI run puts Arrow on the system allocator (whose freed blocks go
    back to the OS with glibc's fixed mmap threshold): see pagesim/process.py."""
    import pyarrow as pa
    from pagesim.process import bound_memory
    assert main(["replay", "--num-requests", "5", "--quiet", "--out", str(tmp_path / "o")]) == 0
    assert pa.default_memory_pool().backend_name == "system"
    assert isinstance(bound_memory(), bool)
