"""Generators: seeded and deterministic, hitting their target means, rates
and burstiness, with the sharing structure they promise."""
from __future__ import annotations

import numpy as np
import pytest

from pagesim import traces
from pagesim.traces import Gamma, Poisson, Replay, synthetic
from pagesim.traces.lengths import WORKLOADS, clipped_mean, solve_mu

TARGETS = {"sharegpt": (161.31, 337.99), "alpaca": (19.31, 58.45)}


@pytest.mark.parametrize("name", ["sharegpt", "alpaca"])
def test_length_means_hit_the_vllm_paper(name):
    sampler = WORKLOADS[name]
    want_p, want_o = TARGETS[name]
    for mean, sigma in ((want_p, sampler.prompt_sigma), (want_o, sampler.output_sigma)):
        mu = solve_mu(mean, sigma, 1, 2048)
        assert clipped_mean(mu, sigma, 1, 2048) == pytest.approx(mean, rel=1e-6)
    prompt, output = sampler(400_000, np.random.default_rng(0))
    assert prompt.mean() == pytest.approx(want_p, rel=0.01)
    assert output.mean() == pytest.approx(want_o, rel=0.01)
    assert prompt.min() >= 1 and output.max() <= 2048
    assert prompt.dtype == np.int64


def test_sharegpt_spreads_more_than_alpaca():
    rng = np.random.default_rng(1)
    sp, so = WORKLOADS["sharegpt"](50_000, rng)
    ap, ao = WORKLOADS["alpaca"](50_000, rng)
    assert sp.std() / sp.mean() > ap.std() / ap.mean()
    assert so.std() / so.mean() > ao.std() / ao.mean()


def test_same_seed_same_trace_and_different_seed_different_trace():
    kw = dict(num_requests=300, rate=4.0, system_prompt_tokens=50, turns=3, n=2)
    assert synthetic(seed=7, **kw) == synthetic(seed=7, **kw)
    assert synthetic(seed=7, **kw) != synthetic(seed=8, **kw)
    assert traces.default_workload(3) == traces.default_workload(3)


def gaps_cv(t):
    g = np.diff(t.arrival_s)
    return (len(t) - 1) / t.duration_s, g.std() / g.mean()


def test_poisson_and_gamma_rates_and_burstiness():
    rate, cv = gaps_cv(synthetic(num_requests=40_000, rate=10.0, seed=2))
    assert rate == pytest.approx(10.0, rel=0.03) and cv == pytest.approx(1.0, abs=0.05)
    rate, cv = gaps_cv(synthetic(num_requests=40_000, rate=10.0, cv=3.0, seed=2))
    assert rate == pytest.approx(10.0, rel=0.1) and cv == pytest.approx(3.0, rel=0.1)
    rate, cv = gaps_cv(synthetic(num_requests=40_000, rate=10.0, cv=0.5, seed=2))
    assert cv == pytest.approx(0.5, rel=0.05)


def test_arrival_specs():
    assert traces.parse_arrival(3) == Poisson(3.0)
    assert traces.parse_arrival("poisson:2.5") == Poisson(2.5)
    assert traces.parse_arrival("gamma:4:2") == Gamma(4.0, 2.0)
    for bad in ("gamma:4", "poisson:-1", "fast", None):
        with pytest.raises(ValueError):
            traces.parse_arrival(bad)


def test_replay_and_rescale():
    base = synthetic(num_requests=100, rate=2.0, seed=4)
    replayed = synthetic(num_requests=100, arrival=base, seed=9)
    assert np.allclose(replayed.arrival_s, base.arrival_s - base.arrival_s[0])
    times = Replay.from_trace(base)(250, np.random.default_rng(0))
    assert len(times) == 250 and (np.diff(times) >= 0).all()
    assert np.allclose(times[100:200] - times[100], times[:100])
    faster = traces.rescale(base, rate=20.0)
    assert (len(faster) - 1) / faster.duration_s == pytest.approx(20.0)
    assert faster.prompt_tokens.tolist() == base.prompt_tokens.tolist()
    assert gaps_cv(faster)[1] == pytest.approx(gaps_cv(base)[1])
    assert traces.rescale(base, duration=60.0).duration_s == pytest.approx(60.0)
    with pytest.raises(ValueError):
        traces.rescale(base, rate=1.0, duration=1.0)


def shared_prefix_blocks(t, tokens, size=16):
    return {r.block_hashes[:tokens // size] for r in t}


@pytest.mark.parametrize("few_shot, tokens", [(None, 0), ("one-shot", 80), ("five-shot", 341)])
def test_shared_prefixes(few_shot, tokens):
    t = synthetic("alpaca", num_requests=200, rate=5.0, system_prompt_tokens=37,
                  few_shot=few_shot, seed=1)
    prefix = 37 + tokens
    assert (t.prompt_tokens > prefix).all()
    assert len(shared_prefix_blocks(t, prefix)) == 1       # one shared prefix
    for r in t:
        assert len(r.block_hashes) == -(-r.prompt_tokens // 16) and r.hashed_tokens == r.prompt_tokens
    keys = [set(r.page_keys(16)) for r in t]
    common = set.intersection(*keys)
    assert len(common) == prefix // 16       # whole pages of the prefix, no more
    assert t.meta["few_shot"] == few_shot and t.meta["system_prompt_tokens"] == 37


def test_no_sharing_means_no_hashes():
    t = synthetic(num_requests=20, rate=1.0)
    assert all(r.block_hashes is None and r.session_id is None for r in t)
    assert traces.prefix_reuse(t) is None


def test_multi_turn_conversations_repeat_the_previous_context():
    t = synthetic(num_requests=3 * 40, rate=2.0, turns=3, system_prompt_tokens=20, seed=5)
    sessions = {}
    for r in t:
        sessions.setdefault(r.session_id, []).append(r)
    assert len(sessions) == 40 and all(len(s) == 3 for s in sessions.values())
    for turns_ in sessions.values():
        for prev, nxt in zip(turns_, turns_[1:]):
            assert nxt.arrival_s > prev.arrival_s
            context = prev.prompt_tokens + prev.output_tokens
            assert nxt.prompt_tokens > context
            assert len(prev.block_hashes) == -(-context // 16)   # answer covered too
            full = context // 16
            assert nxt.block_hashes[:full] == prev.block_hashes[:full]
            if context % 16:     # prev's last block is partial; nxt's is longer
                assert nxt.block_hashes[full] != prev.block_hashes[full]
    reuse = traces.prefix_reuse(t)["reuse_ratio"]
    assert 0.3 < reuse < 1


def test_parallel_sampling_and_beam_search_fields():
    t = synthetic("alpaca", num_requests=10, rate=1.0, n=4)
    assert {r.n for r in t} == {4} and {r.beam_width for r in t} == {1}
    t = synthetic("alpaca", num_requests=10, rate=1.0, beam_width=6)
    assert {r.beam_width for r in t} == {6}
    with pytest.raises(ValueError):
        synthetic(num_requests=10, n=0)
    with pytest.raises(ValueError):
        synthetic(num_requests=10, few_shot="ten-shot")


def test_fixed_and_empirical_lengths(tmp_path):
    t = synthetic("fixed:128:64", num_requests=10, rate=1.0)
    assert set(t.prompt_tokens) == {128} and set(t.output_tokens) == {64}
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,1\n20,2\n30,3\n")
    t = synthetic(str(path), num_requests=500, rate=1.0, seed=3)
    pairs = set(zip(t.prompt_tokens.tolist(), t.output_tokens.tolist()))
    assert pairs == {(10, 1), (20, 2), (30, 3)}      # pairs kept together


def test_default_workload():
    t = traces.default_workload()
    assert t.source == "default" and 2000 <= len(t) <= 4000
    assert (len(t) - 1) / t.duration_s == pytest.approx(traces.DEFAULT_RATE, rel=0.1)
    assert t.prompt_tokens.mean() == pytest.approx(161.31, rel=0.1)
    assert [r.id for r in t] == list(range(len(t)))


def test_a_large_trace_round_trips_through_parquet(tmp_path):
    # Speed at a million requests (a budget of 8 s each way) is measured by
    # bench/bench_traces.py; here the size only has to leave sampling noise
    # below the tolerance of the mean.
    t = synthetic(num_requests=100_000, rate=100.0, seed=0)
    assert len(t) == 100_000
    assert t.prompt_tokens.mean() == pytest.approx(161.31, rel=0.01)
    t.save(tmp_path / "big.parquet")
    back = traces.load_trace(tmp_path / "big.parquet")
    assert len(back) == 100_000
    assert np.array_equal(back.prompt_tokens, t.prompt_tokens)
    assert np.array_equal(back.output_tokens, t.output_tokens)
    assert np.array_equal(back.arrival_s, t.arrival_s)


def test_a_custom_arrival_callable_is_checked():
    t = synthetic(num_requests=5, arrival=lambda n, rng: np.arange(n) * 2.0)
    assert t.arrival_s.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    with pytest.raises(ValueError, match="finite times"):
        synthetic(num_requests=5, arrival=lambda n, rng: np.full(n, np.nan))
    with pytest.raises(ValueError, match="finite times"):
        synthetic(num_requests=5, arrival=lambda n, rng: np.zeros(n - 1))
