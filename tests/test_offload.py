"""The CPU offload tier and the PCIe links: fast mode equals step-by-step
mode with both on (per replica), the tier keeps and serves evicted prefix
blocks by identity, and a transfer delays only the group that waits on it."""
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pagesim.analysis.links import link_utilisation
from pagesim.cluster import run_cluster
from pagesim.replay import ReplayConfig, build, replace, run_replay
from pagesim.sim.costmodel import get_model, kv_bytes_per_token
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.offload import CpuPrefixTier
from pagesim.sim.router import ROUTERS
from pagesim.traces import Request, Trace
from tests.clihelpers import FAST, run, strict_load
from tests.simhelpers import LinearCost, ScalarLinearCost, config
from tests.test_fast_mode import same


@st.composite
def tiered_runs(draw):
    """Requests drawing their prompts from a few prefix families (so that
    blocks are evicted and asked for again) into a small GPU pool."""
    bs = draw(st.sampled_from([2, 4, 8]))
    families = draw(st.integers(1, 5))
    rows, t = [], 0.0
    for i in range(draw(st.integers(1, 16))):
        t += draw(st.sampled_from([0.0, 0.25, 1.0, 3.0]))
        f = draw(st.integers(0, families - 1))
        shared = draw(st.integers(1, 5))
        tail = draw(st.integers(0, 2))
        hashes = tuple([100 * (f + 1) + b for b in range(shared)] + [10_000 + 10 * i + b for b in range(tail)])
        p = len(hashes) * bs - draw(st.integers(0, bs - 1))
        rows.append(Request(id=i, arrival_s=t, prompt_tokens=p, output_tokens=draw(st.integers(1, 20)),
                            n=draw(st.sampled_from([1, 1, 2])), block_hashes=hashes, hash_block_size=bs))
    gen = draw(st.sampled_from(["v1", "v0"]))
    preemption = draw(st.sampled_from(["recompute", "swap"])) if gen == "v0" else "recompute"
    cfg = replace(
        config(num_blocks=draw(st.integers(14, 40)), block_size=bs, caching=True, generation=gen,
               preemption=preemption, chunked_prefill=draw(st.booleans()),
               max_num_batched_tokens=draw(st.sampled_from([16, 64])),
               max_num_seqs=draw(st.sampled_from([2, 8])), max_model_len=128,
               watermark=draw(st.sampled_from([0.0, 0.1])),
               vllm=draw(st.sampled_from(["0.33", "0.11"])), null_block=draw(st.booleans())),
        num_cpu_blocks=16 if preemption == "swap" else None,
        cpu_offload_blocks=draw(st.integers(1, 24)),
        link_model=draw(st.sampled_from(["none", "pcie"])),
        replicas=draw(st.sampled_from([1, 1, 2, 3])),
        router=draw(st.sampled_from(sorted(ROUTERS))),
        seed=draw(st.integers(0, 3)), check_invariants=1)
    return Trace(rows, source="hypothesis"), cfg, draw(st.sampled_from([LinearCost, ScalarLinearCost, None]))


@settings(max_examples=int(os.environ.get("PAGESIM_OFFLOAD_EXAMPLES", "80")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(tiered_runs())
def test_fast_mode_equals_step_by_step_with_the_tier_and_links(run):
    trace, cfg, cost = run
    note(repr([(r.arrival_s, r.prompt_tokens, r.output_tokens, r.n, r.block_hashes) for r in trace]))
    note(repr(cfg))
    ex = CostModelExecutor(cost()) if cost else None
    fast = run_replay(trace, replace(cfg, fast=True), executor=ex)  # invariants every step
    slow = run_replay(trace, replace(cfg, fast=False), executor=ex)
    same(fast, slow)
    if cfg.link_model != "none":
        pd.testing.assert_frame_equal(fast.links, slow.links, check_exact=True)
    if cfg.replicas > 1:
        assert fast.summary["replicas"] == slow.summary["replicas"]
    r = fast.requests
    assert (r["finish_s"].notna() | r["rejected"].notna()).all()
    tiers = fast.summary["prefix_cache"]["tiers"]
    # hits count first admissions (as vLLM's counters); loads also serve re-admissions
    assert tiers["cpu_hit_tokens"] <= tiers["loaded_blocks"] * cfg.block_size
    if not fast.summary["preemptions"]:
        assert tiers["cpu_hit_tokens"] == tiers["loaded_blocks"] * cfg.block_size
    ev = fast.events.to_dataframe()
    assert (ev["kind"] == "load").sum() == tiers["loaded_blocks"]
    assert (ev["kind"] == "offload").sum() == tiers["offloaded_blocks"]


def conversations(families: int, turns: int, bs: int = 16, gap: float = 2.0) -> Trace:
    """``families`` long shared prefixes (8 blocks), asked for in turn."""
    reqs = []
    for i in range(families * turns):
        f = i % families
        hashes = tuple([1000 * (f + 1) + b for b in range(8)] + [50_000 + i])
        reqs.append(Request(i, gap * i, 8 * bs + bs, 4, block_hashes=hashes, hash_block_size=bs))
    return Trace(reqs, source="conversations")


def test_the_tier_turns_recomputed_prefixes_into_loads():
    """Four 8-block prefixes in turn do not all fit a 24-block GPU: without
    the tier every turn recomputes its prefix; with it, each turn after the
    first loads its prefix from the CPU, block by block, by identity."""
    trace = conversations(families=4, turns=3)
    cfg = ReplayConfig(num_gpu_blocks=24, events=True, check_invariants=1)
    without = run_replay(trace, cfg)
    with_tier = run_replay(trace, replace(cfg, cpu_offload_blocks=64))
    assert without.summary["prefix_cache"]["hit_rate_tokens"] == 0.0
    tiers = with_tier.summary["prefix_cache"]["tiers"]
    assert tiers["gpu_hit_tokens"] == 0
    assert tiers["cpu_hit_tokens"] == 8 * 16 * 4 * 2  # every later turn, its whole prefix
    assert tiers["dropped_blocks"] == 0
    assert with_tier.requests["cached_tokens"].sum() == tiers["cpu_hit_tokens"]
    ev = with_tier.events.to_dataframe()
    offloaded = ev[ev["kind"] == "offload"]
    loads = ev[ev["kind"] == "load"]
    # a load reads a CPU block an earlier offload wrote, into a block its seq just took
    assert set(loads["src_block"]) <= set(offloaded["block"])
    allocs = ev[ev["kind"] == "alloc"]
    for _, row in loads.iterrows():
        assert ((allocs["seq"] == row["seq"]) & (allocs["block"] == row["block"])).any()
    # prefill work saved: fewer tokens computed, so the run ends no later
    assert with_tier.summary["sim"]["sim_time_s"] <= without.summary["sim"]["sim_time_s"]


def test_cpu_tier_is_lru_and_bounded():
    tier = CpuPrefixTier(2)
    assert tier.store(1) == 0 and tier.store(2) == 1
    assert tier.store(1) is None          # held already: refreshed, not copied
    assert tier.store(3) == 1             # drops 2, the least recently used
    assert list(tier.blocks) == [1, 3] and tier.drops == 1


def test_without_tier_or_links_nothing_changes():
    """The new options default off: same tables, same event-log categories."""
    trace = conversations(families=4, turns=2)
    cfg = ReplayConfig(num_gpu_blocks=24, events=True)
    a = run_replay(trace, cfg)
    b = run_replay(trace, replace(cfg, link_model="pcie"))  # no swaps, no tier: nothing to move
    assert b.summary.pop("links")["h2d"]["transfers"] == 0 and len(b.links) == 0
    same(a, b)
    assert list(a.events.to_dataframe()["kind"].cat.categories) == [
        "alloc", "free", "fork", "cow", "cache_hit", "evict", "swap_out", "swap_in"]
    assert "tiers" not in a.summary["prefix_cache"] and "links" not in a.summary


def test_a_load_on_the_link_delays_only_its_group():
    """With links, a request whose prefix loads from the CPU waits for its
    blocks while a long decode keeps running; without links the step that
    admits it pays for the load (1/2 s a block with ``LinearCost``)."""
    convs = list(conversations(families=4, turns=2, gap=40.0))
    long = Request(len(convs), 0.0, 8, 400)  # decodes through every load
    trace = Trace(convs + [long], source="t")
    cfg = ReplayConfig(num_gpu_blocks=40, cpu_offload_blocks=64, events=True, check_invariants=1)
    ex = CostModelExecutor(LinearCost())
    off = run_replay(trace, cfg, executor=ex)
    on = run_replay(trace, replace(cfg, link_model="pcie"), executor=ex)
    loaded = on.summary["prefix_cache"]["tiers"]["loaded_blocks"]
    assert loaded == off.summary["prefix_cache"]["tiers"]["loaded_blocks"] > 0
    compute = lambda st: 1.0 + st["num_tokens"] / 8  # noqa: E731  (LinearCost without moves)
    assert (on.steps["duration_s"] == compute(on.steps)).all()  # no step pays for a move
    assert (off.steps["duration_s"] - compute(off.steps)).sum() == 0.5 * loaded
    links = on.links
    loads = links[links["kind"] == "load"]
    assert loads["blocks"].sum() == loaded == on.summary["links"]["h2d"]["blocks"]
    assert ((loads["end_s"] - loads["start_s"]) == 0.5 * loads["blocks"]).all()
    ev = on.events.to_dataframe()
    seq_req = on.events.sequences_dataframe().set_index("seq")["request"]
    first = on.requests.set_index("id")["first_token_s"]
    starts = on.steps["start_s"]
    for (_, load), seq in zip(loads.iterrows(), ev.loc[ev["kind"] == "load", "seq"].unique()):
        assert first[seq_req[seq]] > load["end_s"]  # its group waited for its blocks...
        # ...while the others ran: the step that started the load decoded them
        admitting = on.steps[starts == load["enqueued_s"]]
        assert len(admitting) == 1 and admitting["num_seqs"].iloc[0] >= 1


def test_a_swap_in_on_the_link_delays_only_its_group():
    """V0 swap preemption with links: a swapped-in sequence runs in no step
    that starts before its swap-in has ended, while the other sequences
    keep running meanwhile; fast mode still equals step by step."""
    reqs = [Request(i, 0.1 * i, 24, 40) for i in range(8)]
    cfg = replace(config(num_blocks=20, block_size=4, generation="v0", preemption="swap"),
                  num_cpu_blocks=64, link_model="pcie", check_invariants=1)
    ex = CostModelExecutor(LinearCost())
    fast = run_replay(Trace(reqs, source="t"), cfg, executor=ex)
    slow = run_replay(Trace(reqs, source="t"), replace(cfg, fast=False), executor=ex)
    same(fast, slow)
    assert {"swap_in", "swap_out"} <= set(fast.links["kind"])
    # step by step, watching every plan
    engine, sched, kv, _ = build(Trace(reqs, source="t"), replace(cfg, fast=False), ex)
    ran = []  # (start, seq ids) of every step
    engine.on_step = lambda plan, start, dt: ran.append((start, set(plan.seq_ids)))
    engine.run()
    ev = sched.log.to_dataframe()
    swapped_in = ev[ev["kind"] == "swap_in"].groupby("step")["seq"].agg(set)
    links = fast.links[fast.links["kind"] == "swap_in"].groupby("step")["end_s"].min()
    assert len(swapped_in) > 0 and list(swapped_in.index) == list(links.index)
    others_ran = False
    for step, seqs in swapped_in.items():
        end = links[step]
        during = [ids for start, ids in ran if start < end]
        assert not any(ids & seqs for ids in during[step + 1:]), f"step {step}: ran before its swap-in ended"
        others_ran |= any(ids for ids in during[step:])
    assert others_ran


def test_cli_refuses_a_tier_without_prefix_caching(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(capsys, "replay", "--workload", "sharegpt", "--num-requests", "3",
                       "--no-prefix-caching", "--cpu-offload-blocks", "8", "--out", out, *FAST)
    assert code == 2 and "--cpu-offload-blocks" in err
    assert not out.exists()


def test_cli_writes_the_links_table(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(capsys, "replay", "--workload", "sharegpt", "--num-requests", "40",
                       "--num-gpu-blocks", "120", "--cpu-offload-blocks", "64",
                       "--link-model", "pcie", "--replicas", "2", "--out", out, *FAST)
    assert code == 0, err
    assert (out / "links.parquet").exists()
    s = strict_load(out / "summary.json")
    assert set(s["links"]) == {"h2d", "d2h"} and "tiers" in s["prefix_cache"]
    assert all("links" in r for r in s["replicas"])


def test_one_replica_cluster_with_tier_and_links_equals_the_single_engine():
    trace = conversations(families=4, turns=3, gap=0.5)
    cfg = ReplayConfig(num_gpu_blocks=40, cpu_offload_blocks=32, link_model="pcie", events=True)
    single, one = run_replay(trace, cfg), run_cluster(trace, cfg)
    pd.testing.assert_frame_equal(single.requests, one.requests.drop(columns="replica"))
    pd.testing.assert_frame_equal(single.steps, one.steps.drop(columns="replica"))
    pd.testing.assert_frame_equal(single.events.to_dataframe(), one.events.to_dataframe())
    pd.testing.assert_frame_equal(single.links, one.links.drop(columns="replica"))
    assert single.summary["prefix_cache"]["tiers"] == one.summary["prefix_cache"]["tiers"]
    assert single.summary["links"] == one.summary["links"] == one.summary["replicas"][0]["links"]


def test_pcie_bandwidth_sets_the_links_block_time(tmp_path, capsys):
    """--pcie-bandwidth: a block's K and V over that many GB/s, per transfer."""
    trace = conversations(families=4, turns=2, gap=40.0)
    cfg = ReplayConfig(num_gpu_blocks=24, cpu_offload_blocks=64, link_model="pcie", pcie_bandwidth_gbps=2.0)
    links = run_replay(trace, cfg).links
    block_s = kv_bytes_per_token(get_model(cfg.model), 1) * 16 / 2e9
    assert len(links) > 0
    # end = start + blocks * block_s, one float addition: equal up to its rounding
    assert np.allclose(links["end_s"] - links["start_s"], links["blocks"] * block_s, rtol=1e-9, atol=0)
    code, _, err = run(capsys, "replay", "--workload", "sharegpt", "--num-requests", "3",
                       "--pcie-bandwidth", "16", "--out", tmp_path / "o", *FAST)
    assert code == 2 and "--pcie-bandwidth" in err and "--link-model pcie" in err


def test_a_hit_on_blocks_still_arriving_waits_for_them():
    """Two turns of one conversation arrive together after its prefix went
    to the CPU: the first loads it, the second hits the blocks the load is
    still filling, so neither computes before the load has ended."""
    reqs = list(conversations(families=4, turns=1, gap=40.0))
    t = reqs[-1].arrival_s + 40.0
    for j in range(2):  # conversation 0 again, twice at once
        hashes = tuple([1000 + b for b in range(8)] + [60_000 + j])
        reqs.append(Request(len(reqs), t, 8 * 16 + 16, 4, block_hashes=hashes, hash_block_size=16))
    cfg = ReplayConfig(num_gpu_blocks=24, cpu_offload_blocks=64, link_model="pcie", events=True,
                       check_invariants=1)
    ex = CostModelExecutor(LinearCost())
    res = run_replay(Trace(reqs, source="t"), cfg, executor=ex)
    slow = run_replay(Trace(reqs, source="t"), replace(cfg, fast=False), executor=ex)
    same(res, slow)
    loads = res.links[res.links["kind"] == "load"]
    assert list(loads["blocks"]) == [8]  # loaded once, by the first
    first = res.requests.set_index("id")["first_token_s"]
    assert first[4] > loads["end_s"].iloc[0] and first[5] > loads["end_s"].iloc[0]
    assert res.summary["prefix_cache"]["tiers"]["gpu_hit_tokens"] == 8 * 16  # the second's hit


def test_link_utilisation_over_time_keeps_every_busy_second():
    trace = conversations(families=4, turns=3, gap=3.0)
    cfg = ReplayConfig(num_gpu_blocks=24, cpu_offload_blocks=64, link_model="pcie")
    res = run_replay(trace, cfg, executor=CostModelExecutor(LinearCost()))
    util = link_utilisation(res.links, 2.0)
    for d in ("h2d", "d2h"):
        assert util[d].between(0, 1).all()
        assert np.isclose(util[d].sum() * 2.0, res.summary["links"][d]["busy_s"])
    assert util["h2d"].sum() > 0
