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
