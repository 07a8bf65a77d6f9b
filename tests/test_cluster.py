"""Replicas behind a router: fast mode equals step-by-step per replica, one
replica equals the single engine, and the routers route as documented."""
import os

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pagesim.analysis.plots import binned_memory, memory_per_replica
from pagesim.cluster import run_cluster
from pagesim.replay import ReplayConfig, replace, run_replay
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.router import ROUTERS, PrefixAware, make_router, register_router
from pagesim.traces import Request, Trace, synthetic
from tests.test_fast_mode import same, small_runs


@settings(max_examples=int(os.environ.get("PAGESIM_CLUSTER_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(small_runs(), st.integers(2, 3), st.sampled_from(sorted(ROUTERS)))
def test_cluster_fast_mode_equals_step_by_step(run, replicas, router):
    trace, cfg, cost = run
    cfg = replace(cfg, replicas=replicas, router=router, check_invariants=1)
    note(repr(cfg))
    ex = CostModelExecutor(cost()) if cost else None
    fast = run_replay(trace, replace(cfg, fast=True), executor=ex)
    slow = run_replay(trace, replace(cfg, fast=False), executor=ex)
    same(fast, slow)
    assert fast.summary["replicas"] == slow.summary["replicas"]
    r = fast.requests
    assert (r["finish_s"].notna() | r["rejected"].notna()).all()
    assert list(r["id"]) == [q.id for q in trace]  # trace order kept
    assert sum(s["requests"]["total"] for s in fast.summary["replicas"]) == len(trace)


def test_one_replica_cluster_equals_the_single_engine():
    trace = synthetic("sharegpt", num_requests=200, rate=30, seed=2, system_prompt_tokens=32)
    cfg = ReplayConfig(num_gpu_blocks=300, events=True)
    single = run_replay(trace, cfg)
    one = run_cluster(trace, cfg)
    pd.testing.assert_frame_equal(single.requests, one.requests.drop(columns="replica"))
    pd.testing.assert_frame_equal(single.steps, one.steps.drop(columns="replica"))
    pd.testing.assert_frame_equal(single.events.to_dataframe(), one.events.to_dataframe())


class View:
    def __init__(self, index, load, cached=0):
        self.index, self.load, self.cached = index, load, cached

    def outstanding_tokens(self):
        return self.load

    def cached_prefix_tokens(self, req):
        return self.cached


def test_routers_route_as_documented():
    req = Request(0, 0.0, 100, 10)
    rr = make_router("round-robin")
    assert [rr.route(req, [View(0, 9), View(1, 0), View(2, 0)]) for _ in range(4)] == [0, 1, 2, 0]
    lo = make_router("least-outstanding")
    assert lo.route(req, [View(0, 9), View(1, 3), View(2, 3)]) == 1  # ties: lowest index
    pa = PrefixAware(balance_rel=1.5, balance_abs=100)
    assert pa.route(req, [View(0, 50, 0), View(1, 60, 64), View(2, 40, 32)]) == 1  # longest prefix
    assert pa.route(req, [View(0, 50, 64), View(1, 40, 64)]) == 1  # tie: least busy
    assert pa.route(req, [View(0, 1000, 0), View(1, 10, 0), View(2, 500, 96)]) == 1  # unbalanced
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        make_router("nope")


def test_a_user_router_plugs_in_without_touching_the_engine():
    @register_router("always-last")
    class AlwaysLast:
        def route(self, req, replicas):
            return len(replicas) - 1

    try:
        trace = synthetic("sharegpt", num_requests=30, rate=10, seed=0)
        res = run_replay(trace, ReplayConfig(num_gpu_blocks=300, replicas=3, router="always-last"))
        assert set(res.requests["replica"]) == {2}
        assert [s["requests"]["total"] for s in res.summary["replicas"]] == [0, 0, 30]
    finally:
        del ROUTERS["always-last"]


def test_prefix_aware_keeps_a_shared_prefix_on_one_replica():
    """Three conversations with distinct system prompts on two replicas: the
    prefix-aware router keeps each on the replica that cached it,
    round-robin spreads them and recomputes prefixes on both replicas."""
    reqs = []
    for i in range(60):
        conv = i % 3
        hashes = tuple([1000 * (conv + 1) + b for b in range(8)] + [10_000 + i])
        reqs.append(Request(i, 0.5 * i, 8 * 16 + 16, 8, block_hashes=hashes, hash_block_size=16))
    trace = Trace(reqs, source="two-prefixes")
    cfg = ReplayConfig(num_gpu_blocks=400)
    aware = run_replay(trace, replace(cfg, replicas=2, router="prefix-aware"))
    rr = run_replay(trace, replace(cfg, replicas=2, router="round-robin"))
    assert aware.summary["prefix_cache"]["hit_rate_tokens"] > rr.summary["prefix_cache"]["hit_rate_tokens"]
    by_conv = aware.requests.assign(conv=aware.requests["id"] % 3).groupby("conv")["replica"].nunique()
    assert (by_conv == 1).all()


def test_cluster_refuses_an_executor_that_runs_steps():
    class Runs:
        needs_plans = True

    with pytest.raises(ValueError, match="drives one replica only"):
        run_replay(synthetic("sharegpt", num_requests=3, seed=0),
                   ReplayConfig(num_gpu_blocks=100, replicas=2), executor=Runs())


def test_memory_plot_has_one_panel_pair_per_replica():
    """A cluster's replicas interleave in time: the memory figure draws each
    replica's own rows (its stacked split ends at its own last step)."""
    trace = synthetic("sharegpt", num_requests=120, rate=30, seed=5)
    res = run_replay(trace, ReplayConfig(num_gpu_blocks=200, replicas=3, router="round-robin"))
    fig = memory_per_replica(res.steps, res.summary)
    axes = fig.get_axes()
    assert len(axes) == 6
    for r in range(3):
        top = axes[2 * r]
        assert top.get_title().startswith(f"KV memory of replica {r}")
        own = res.steps[res.steps["replica"] == r]
        x, _ = binned_memory(own)
        stack = top.collections[0].get_paths()[0].vertices[:, 0]  # token-states area's outline
        assert stack.max() == pytest.approx(x[-1]), f"replica {r}'s panel is not drawn from its own steps"
