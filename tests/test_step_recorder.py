"""StepRecorder: chunking changes nothing in the table, and memory stays at
the table's own size (typed columns), not Python objects per step."""
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pagesim.analysis import plots
from pagesim.replay import ReplayConfig, build, replace
from pagesim.sim.accounting import CATEGORIES
from pagesim.sim.metrics import requests_dataframe
from pagesim.sim.step_recorder import COLUMN_DTYPES, STEP_COLUMNS, StepRecorder
from pagesim.traces import synthetic

#: Bytes of one row of the table: every column is 8 bytes wide.
ROW_BYTES = sum(np.dtype(COLUMN_DTYPES[c]).itemsize for c in STEP_COLUMNS)


def replay_tables(trace, cfg, chunk_steps):
    """(steps, requests) of a replay whose recorder flushes every
    ``chunk_steps`` steps (a huge value: one flush at the end, which is the
    recorder's whole-run conversion)."""
    engine, sched, kv, _ = build(trace, cfg)
    engine.recorder = recorder = StepRecorder(kv.usage_from, chunk_steps=chunk_steps)
    engine.run()
    return recorder.to_dataframe(), requests_dataframe(sched.records)


# A tight pool (preemptions, short stretches between admissions) and a pool
# with prefix caching and parallel samples (fills of known content).
CASES = {
    "tight": (dict(num_requests=150, rate=20, seed=0), ReplayConfig(num_gpu_blocks=120)),
    "caching": (dict(num_requests=120, rate=20, n=2, system_prompt_tokens=100, seed=1),
                ReplayConfig(num_gpu_blocks=400)),
    "orca": (dict(num_requests=80, rate=10, seed=3), ReplayConfig(allocator="orca-pow2")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_tables_equal_whole_run_tables_in_both_modes(case):
    kw, cfg = CASES[case]
    trace = synthetic("sharegpt", **kw)
    whole, whole_req = replay_tables(trace, cfg, chunk_steps=10**9)
    assert len(whole) > 500, "the case must run enough steps to cross many chunk boundaries"
    assert list(whole.columns) == list(STEP_COLUMNS)
    assert (np.diff(whole["step"].to_numpy()) == 1).all(), "one row per step, in order"
    for fast in (True, False):
        for chunk in (1, 7):  # 7 splits decode stretches between chunks
            steps, req = replay_tables(trace, replace(cfg, fast=fast), chunk_steps=chunk)
            pd.testing.assert_frame_equal(steps, whole, check_exact=True)
            pd.testing.assert_frame_equal(req, whole_req, check_exact=True)


def test_dtypes_and_empty_table():
    empty = StepRecorder(lambda live, *c: None).to_dataframe()
    assert list(empty.columns) == list(STEP_COLUMNS) and len(empty) == 0
    for c in STEP_COLUMNS:
        assert empty[c].dtype == COLUMN_DTYPES[c], c


def test_to_dataframe_twice_gives_the_same_table():
    trace = synthetic("sharegpt", num_requests=30, rate=20, seed=4)
    engine, _, kv, _ = build(trace, ReplayConfig(num_gpu_blocks=200))
    engine.recorder = recorder = StepRecorder(kv.usage_from, chunk_steps=50)
    engine.run()
    pd.testing.assert_frame_equal(recorder.to_dataframe(), recorder.to_dataframe())


def usage_from(live, num_free, num_cached_free):
    """A paged-like accounting formula over two counters."""
    return SimpleNamespace(token_states=live, reserved=live * 0, internal_frag=1000 - live,
                           external_frag=live * 0, cached_free=num_cached_free,
                           free=num_free - num_cached_free)


def record(rec, steps):
    """``steps`` steps alternating single rows and 60-step stretches, with
    values large enough that Python would box them (no small-int cache)."""
    step, t = 0, 0.0
    while step < steps:
        rec.add(step, t, 0.01, (3, 300, 1, 10**6 + step), 0, 10**6 + step, (5000 + step, 700 + step))
        step, t = step + 1, t + 0.01
        k = 60
        times = [t + 0.01 * j for j in range(k + 1)]
        rec.add_stretch(step, k, 3, 10**6, 10**6 + step, times, [0.01] * k,
                        [-1, 17], [5000 + step, 10**4, 4999 + step, 10**4])
        step, t = step + k, times[k]
    return step


def test_memory_per_step_is_the_tables_own_size():
    """Recording holds typed columns (one table row per step; tracemalloc
    also counts the doubled capacity, which is never touched), and the
    finished table is exactly its rows. Python tuples per step cost ~4x a
    row, and the old whole-run conversion peaked at ~540 bytes per step."""
    rec = StepRecorder(usage_from, chunk_steps=2000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        steps = record(rec, 100_000)
        df = rec.to_dataframe()
        held, peak = (m - before for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    assert len(df) == steps and (df["step"].to_numpy() == np.arange(steps)).all()
    assert held / steps < ROW_BYTES * 1.05, f"the finished table holds {held / steps:.0f} B/step"
    assert peak / steps < ROW_BYTES * 2.2, f"recording peaked at {peak / steps:.0f} B/step"


def test_binned_memory_in_blocks_equals_one_bincount(monkeypatch):
    """The plot's bins, computed block by block, equal the whole-table
    formula (time-weighted fraction of capacity per bin) bit for bit."""
    kw, cfg = CASES["caching"]
    steps, _ = replay_tables(synthetic("sharegpt", **kw), cfg, chunk_steps=10**9)
    bins = 50
    t, dur = steps["start_s"].to_numpy(), steps["duration_s"].to_numpy()
    edges = np.linspace(t[0], t[-1] + dur[-1], bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    w = np.bincount(idx, weights=dur, minlength=bins)
    cap = steps[list(CATEGORIES)].sum(axis=1).to_numpy(dtype=float)
    monkeypatch.setattr(plots, "BIN_BLOCK_ROWS", 37)
    centers, got = plots.binned_memory(steps, bins)
    keep = w > 0
    assert np.array_equal(centers, (0.5 * (edges[:-1] + edges[1:]))[keep])
    for c in CATEGORIES:
        want = np.bincount(idx, weights=steps[c].to_numpy(dtype=float) / cap * dur, minlength=bins)
        assert np.array_equal(got[c], want[keep] / w[keep]), c
