"""--timeline: a Chrome/Perfetto trace of engine steps and requests, bounded in size."""
import json

import numpy as np
import pytest

from pagesim import traces
from pagesim.analysis.timeline import timeline, write_timeline
from pagesim.cli import main
from pagesim.replay import ReplayConfig, run_replay


@pytest.fixture(scope="module")
def run():
    trace = traces.synthetic("sharegpt", num_requests=120, rate=40, seed=2)
    return run_replay(trace, ReplayConfig(num_gpu_blocks=400))


def test_request_tracks_span_arrival_to_finish(run):
    tl = timeline(run.requests, run.steps)
    ev = tl["traceEvents"]
    req = run.requests.set_index("id")
    for e in ev:
        if e["ph"] == "X":
            assert e["dur"] >= 0 and np.isfinite(e["ts"])
    slices = [e for e in ev if e["ph"] == "X" and e["pid"] == 2]
    by_req = {}
    for e in slices:
        by_req.setdefault(e["tid"], []).append(e)
    assert len(by_req) == len(req)
    for rid, es in by_req.items():
        es.sort(key=lambda e: e["ts"])
        assert [e["name"] for e in es] == ["queued + prefill", "decode"]
        assert es[0]["ts"] == pytest.approx(req.loc[rid, "arrival_s"] * 1e6)
        assert es[-1]["ts"] + es[-1]["dur"] == pytest.approx(req.loc[rid, "finish_s"] * 1e6)
        assert es[0]["args"]["preemptions"] == req.loc[rid, "preemptions"]
    finished = [e for e in ev if e["ph"] == "i" and e["name"] == "finished"]
    assert len(finished) == req["finish_s"].notna().sum()


def test_bounded_and_nothing_lost_when_merged(run):
    tl = timeline(run.requests, run.steps, max_requests=20, max_steps=100)
    ev = tl["traceEvents"]
    steps = [e for e in ev if e["ph"] == "X" and e["pid"] == 1]
    assert len(steps) <= 100
    assert sum(e["args"]["steps"] for e in steps) == len(run.steps)
    assert sum(e["args"]["num_tokens"] for e in steps) == run.steps["num_tokens"].sum()
    assert sum(e["args"]["preemptions"] for e in steps) == run.steps["preemptions"].sum()
    tracks = {e["tid"] for e in ev if e["pid"] == 2 and e["ph"] == "X"}
    assert len(tracks) <= 20
    slowest = int(run.requests.loc[run.requests["e2e_s"].idxmax(), "id"])
    assert slowest in tracks, "the slowest request is always shown"


def test_cli_writes_valid_json(tmp_path):
    out = tmp_path / "out"
    rc = main(["replay", "--workload", "sharegpt", "--num-requests", "40", "--rate", "20",
               "--num-gpu-blocks", "400", "--quiet", "--no-plots", "--no-report", "--timeline", "10",
               "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "timeline.json").read_text())
    assert data["otherData"]["requests_shown"] <= 10
    assert {e["ph"] for e in data["traceEvents"]} >= {"M", "X", "C", "i"}


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_states_from_the_scheduler_record(preemption):
    from pagesim.sim.config import SchedulerConfig
    trace = traces.synthetic("sharegpt", num_requests=100, rate=40, seed=2)
    cfg = ReplayConfig(num_gpu_blocks=400, scheduler=SchedulerConfig(generation="v0", preemption=preemption))
    run = run_replay(trace, cfg, record_requests=True)
    slow = run_replay(trace, replace_fast(cfg), record_requests=True)
    assert run.request_events.equals(slow.request_events), "fast and step-by-step record the same events"
    marks = run.request_events
    assert run.summary["preemptions"] > 0
    kinds = marks["kind"].value_counts()
    assert kinds.get("preempt", 0) + kinds.get("swap_out", 0) == run.summary["preemptions"]
    if preemption == "swap":
        assert kinds["swap_out"] > 0 and kinds["swap_in"] > 0
    ev = timeline(run.requests, run.steps, marks)["traceEvents"]
    req = run.requests.set_index("id")
    tracks = {}
    for e in ev:
        if e["ph"] == "X" and e["pid"] == 2:
            tracks.setdefault(e["tid"], []).append(e)
    for rid, es in tracks.items():
        es.sort(key=lambda e: e["ts"])
        r = req.loc[rid]
        assert es[0]["ts"] == pytest.approx(r["arrival_s"] * 1e6)
        assert es[-1]["ts"] + es[-1]["dur"] == pytest.approx(r["finish_s"] * 1e6)
        for a, b in zip(es, es[1:]):
            assert a["ts"] + a["dur"] == pytest.approx(b["ts"]), f"request {rid}: gap in its track"
        names = [e["name"] for e in es]
        stalls = sum(n in ("preempted", "swapped") for n in names)
        assert stalls <= r["preemptions"]
        if r["preemptions"] == 0:
            assert names in (["queued", "prefill", "decode"], ["prefill", "decode"]), names
        decode = next(e for e in es if e["name"] == "decode")
        assert decode["ts"] == pytest.approx(r["first_token_s"] * 1e6) or r["preemptions"] > 0


def replace_fast(cfg):
    from dataclasses import replace
    return replace(cfg, fast=False)
