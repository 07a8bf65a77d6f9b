"""The serving block (vLLM benchmark names and definitions) and the per-step gauges."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagesim import traces
from pagesim.replay import ReplayConfig, run_replay
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.gauges import _counts_up_to
from pagesim.sim.serving_metrics import (itl_samples, parse_goodput, parse_percentiles,
                                         serving_metrics, weighted_stats)


def _requests(rows):
    """rows: (arrival, first_token, finish, prompt, output)."""
    df = pd.DataFrame(rows, columns=["arrival_s", "first_token_s", "finish_s", "prompt_tokens",
                                     "output_tokens"])
    df["n"] = 1
    df["beam_width"] = 1
    df["rejected"] = None
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    gen = df["output_tokens"].where(df["output_tokens"] > 1)
    df["tpot_s"] = (df["finish_s"] - df["first_token_s"]) / (gen - 1)
    return df


def _steps(ends):
    ends = np.asarray(ends, dtype=float)
    starts = np.concatenate(([0.0], ends[:-1]))
    return pd.DataFrame({"start_s": starts, "duration_s": ends - starts})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.integers(0, 5)), min_size=1, max_size=30),
       st.lists(st.floats(0.5, 99.5), min_size=1, max_size=3))
def test_weighted_stats_equal_numpy_on_the_expanded_samples(pairs, ps):
    values = [v for v, _ in pairs]
    counts = [c for _, c in pairs]
    expanded = np.repeat(values, counts)
    got = weighted_stats(values, counts, ps)
    if len(expanded) == 0:
        assert got["mean"] == 0.0
        return
    assert got["mean"] == pytest.approx(np.mean(expanded), abs=1e-9)
    assert got["std"] == pytest.approx(np.std(expanded), abs=1e-6)
    assert got["median"] == pytest.approx(np.median(expanded), abs=1e-9)
    for p in ps:
        key = f"p{int(p)}" if int(p) == p else f"p{p}"
        assert got[key] == pytest.approx(np.percentile(expanded, p), abs=1e-9)


def test_itl_by_hand():
    # steps end at 1, 2, 4, 5, 9, 10
    steps = _steps([1, 2, 4, 5, 9, 10])
    reqs = _requests([
        (0.0, 1.0, 5.0, 10, 4),   # tokens at 1 | 2, 4, 5: gaps 1, 2, 1
        (0.5, 2.0, 10.0, 10, 3),  # preempted: 2 tokens after the first in 4 steps:
                                  # stall to the 2nd-to-last step (9 - 2 = 7), then 1
        (3.0, 4.0, 4.0, 10, 1),   # one token: no ITL
    ])
    values, counts = itl_samples(reqs, steps)
    got = sorted(np.repeat(values, counts).tolist())
    assert got == [1.0, 1.0, 1.0, 2.0, 7.0]


def test_serving_block_by_hand():
    steps = _steps([1, 2, 4, 5, 9, 10])
    reqs = _requests([(0.0, 1.0, 5.0, 10, 4), (0.5, 2.0, 10.0, 20, 3), (3.0, 4.0, 4.0, 30, 1)])
    s = serving_metrics(reqs, steps, end_s=10.0, percentiles=(50, 99.9),
                        goodput=parse_goodput(["ttft:1000", "tpot:2000"]))
    assert s["duration"] == 10.0 and s["completed"] == 3
    assert s["total_input_tokens"] == 60 and s["total_output_tokens"] == 8
    assert s["request_throughput"] == pytest.approx(0.3)
    assert s["output_throughput"] == pytest.approx(0.8)
    assert s["total_token_throughput"] == pytest.approx(6.8)
    # TTFTs 1, 1.5, 1; TPOTs (4/3 and 4; the one-token request has none)
    assert s["mean_ttft_ms"] == pytest.approx(1000 * 3.5 / 3)
    assert s["median_tpot_ms"] == pytest.approx(1000 * (4 / 3 + 4) / 2)
    # goodput: ttft <= 1 s and tpot <= 2 s -> requests 0 and 2 (tpot 0 for one token)
    assert s["request_goodput"] == pytest.approx(0.2)
    assert s["mean_itl_ms"] == pytest.approx(1000 * 12 / 5)
    assert "p50_e2el_ms" in s and "p99.9_itl_ms" in s


def test_replay_itls_add_up_and_are_exact_without_preemption():
    trace = traces.synthetic("sharegpt", num_requests=150, rate=40, seed=3)
    res = run_replay(trace, ReplayConfig(num_gpu_blocks=500, metric_percentiles=(50, 90, 99)))
    req, steps = res.requests, res.steps
    done = req[req["finish_s"].notna() & (req["output_tokens"] > 1)]
    assert res.summary["preemptions"] > 0, "the case must include preempted requests"
    values, counts = itl_samples(req, steps)
    # one ITL per token after the first; together they span first token -> finish
    assert counts.sum() == (done["output_tokens"] - 1).sum()
    assert (values * counts).sum() == pytest.approx((done["finish_s"] - done["first_token_s"]).sum())
    # a request never preempted decoded in every step between its first token and finish
    calm = done[done["preemptions"] == 0]
    ends = (steps["start_s"] + steps["duration_s"]).to_numpy()
    m = np.searchsorted(ends, calm["finish_s"], "right") - np.searchsorted(ends, calm["first_token_s"], "right")
    assert (m == calm["output_tokens"] - 1).all()
    s = res.summary["serving"]
    for key in ("completed", "request_throughput", "output_throughput", "total_token_throughput",
                "p90_tpot_ms", "median_itl_ms", "std_e2el_ms", "p99_ttft_ms"):
        assert key in s
    assert s["request_goodput"] is None


def test_gauges_follow_vllm_meanings():
    trace = traces.synthetic("sharegpt", num_requests=150, rate=40, seed=3)
    res = run_replay(trace, ReplayConfig(num_gpu_blocks=500))
    st_ = res.steps
    cap = res.summary["config"]["capacity_tokens"]
    used = cap - st_["free"] - st_["cached_free"]
    assert np.allclose(st_["kv_cache_usage_perc"], used / cap)
    assert st_["num_preemptions"].iloc[-1] == res.summary["preemptions"]
    assert st_["num_preemptions"].is_monotonic_increasing
    assert (st_["num_requests_running"] == st_["num_seqs"]).all()
    # under this overload requests queue: waiting is positive somewhere, zero at the end
    assert st_["num_requests_waiting"].max() > 0
    assert st_["num_requests_waiting"].iloc[-1] == 0


def test_prefix_cache_counters_add_up():
    trace = traces.synthetic("sharegpt", num_requests=100, rate=20, seed=2, system_prompt_tokens=200)
    res = run_replay(trace, ReplayConfig(num_gpu_blocks=400))
    st_, req = res.steps, res.requests
    q, h = st_["prefix_cache_queries"], st_["prefix_cache_hits"]
    assert q.is_monotonic_increasing and h.is_monotonic_increasing and (h <= q).all()
    assert h.iloc[-1] == req["cached_tokens"].sum() > 0
    # vLLM counts first admissions only: each queries exactly its prompt
    assert q.iloc[-1] == req["prompt_tokens"].sum()
    assert res.summary["prefix_cache"]["hit_rate_tokens"] == h.iloc[-1] / q.iloc[-1]


def _hits_over_queries(res):
    st_, req = res.steps, res.requests
    q, h = int(st_["prefix_cache_queries"].iloc[-1]), int(st_["prefix_cache_hits"].iloc[-1])
    admitted = req[req["rejected"].isna()]
    assert h == admitted["cached_tokens"].sum() > 0
    assert q == admitted["prompt_tokens"].sum()
    assert res.summary["prefix_cache"]["hit_rate_tokens"] == h / q


def test_summary_hit_rate_is_hits_over_queries_under_chunked_prefill():
    """Regression: the summary divided by the tokens of the first chunk
    allocated (cached + chunk) instead of all the tokens looked up, so with
    prompts longer than a chunk it read above the gauges and the requests table."""
    trace = traces.synthetic("sharegpt", num_requests=120, rate=20, seed=4, system_prompt_tokens=300)
    cfg = ReplayConfig(num_gpu_blocks=2000, scheduler=SchedulerConfig(max_num_batched_tokens=128))
    _hits_over_queries(run_replay(trace, cfg))


MOONCAKE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "raw" / "conversation_trace.jsonl"


@pytest.mark.shared
@pytest.mark.skipif(not MOONCAKE.is_file(), reason=f"no Mooncake trace at {MOONCAKE}")
def test_summary_hit_rate_on_a_mooncake_slice():
    """The same on the first 400 requests of the Mooncake conversation trace
    (hash ids: real prefix sharing), read in place; before the fix the
    summary said 63.9 % where hits / queries are 15.6 %."""
    trace = traces.load_trace(str(MOONCAKE))[:400]
    cfg = ReplayConfig(num_gpu_blocks=3000, scheduler=SchedulerConfig(max_num_batched_tokens=512))
    _hits_over_queries(run_replay(trace, cfg))


def test_cached_tokens_count_the_first_admission_only():
    """Regression: a request re-admitted after a recompute preemption added
    its new hits to cached_tokens again. vLLM sets num_cached_tokens at first
    scheduling only and counts a preempted request's lookup apart
    (preempted_queries/hits), so neither the column nor the gauges change."""
    trace = traces.synthetic("sharegpt", num_requests=150, rate=40, seed=3, system_prompt_tokens=200)
    res = run_replay(trace, ReplayConfig(num_gpu_blocks=500, prefix_caching=True),
                     record_requests=True)
    req, marks = res.requests, res.request_events
    assert res.summary["preemptions"] > 0 and (req["n"] == 1).all()   # one group per request
    lookups = marks[marks["kind"].isin(["admit", "readmit"])]
    first = lookups.groupby("request", sort=True)["cached"].first()
    later = lookups[lookups.duplicated("request")]
    assert later["cached"].sum() > 0, "the scenario needs re-admissions that hit the cache"
    assert (req.set_index("id")["cached_tokens"].loc[first.index] == first).all()
    assert res.steps["prefix_cache_hits"].iloc[-1] == req["cached_tokens"].sum()


@pytest.mark.parametrize("bad", [["ttft"], ["foo:1"], ["ttft:x"], ["tpot:-1"]])
def test_bad_goodput_names_the_option(bad):
    with pytest.raises(ValueError, match="--goodput"):
        parse_goodput(bad)


def test_percentiles_parse():
    assert parse_percentiles("50,90,99") == (50.0, 90.0, 99.0)
    with pytest.raises(ValueError, match="--metric-percentiles"):
        parse_percentiles("50,abc")
    with pytest.raises(ValueError, match="--metric-percentiles"):
        parse_percentiles("100")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=20), st.lists(st.integers(0, 30), max_size=200),
       st.booleans())
def test_gauge_counts_equal_searchsorted(events, times, shuffle):
    # num_requests_waiting counts the arrivals (finishes) at or before each
    # step start: numpy's searchsorted(side="right") by definition, whichever
    # way _counts_up_to computes it (sorted step times, or interleaved ones)
    ev = np.sort(np.asarray(events, dtype=np.float64))
    t = np.sort(np.asarray(times, dtype=np.float64))
    if shuffle:
        t = t[::-1].copy()
    got = _counts_up_to(ev, t)
    assert got.dtype == np.int64
    assert got.tolist() == np.searchsorted(ev, t, side="right").tolist()
