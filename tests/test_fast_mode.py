"""Fast mode (decode stretches) equals step-by-step mode, bit for bit; runs
are deterministic; nothing leaks; overload never livelocks."""
import os

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pagesim.sim.costmodel import make_cost_model
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.plan import StepPlan
from pagesim.replay import ReplayConfig, replace, run_replay
from tests.simhelpers import EventBudget, LinearCost, ScalarLinearCost, config, trace_of
from pagesim.traces import Request, Trace, synthetic
from tests.token_ledger import TokenLedger


def same(a, b):
    pd.testing.assert_frame_equal(a.requests, b.requests, check_exact=True)
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    if a.events is not None:
        pd.testing.assert_frame_equal(a.events.to_dataframe(), b.events.to_dataframe())
    sa = {k: v for k, v in a.summary.items() if k not in ("sim", "config", "cost_model")}  # run metadata
    sb = {k: v for k, v in b.summary.items() if k not in ("sim", "config", "cost_model")}  # run metadata
    assert sa == sb
    assert a.summary["sim"]["steps"] == b.summary["sim"]["steps"]
    assert a.summary["sim"]["sim_time_s"] == b.summary["sim"]["sim_time_s"]


@st.composite
def small_runs(draw):
    n = draw(st.integers(1, 14))
    rows = []
    t = 0.0
    shared = draw(st.booleans())
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.25, 1.0, 3.0, 7.5]))
        p = draw(st.integers(1, 40))
        o = draw(st.integers(1, 30))
        kw = {}
        if shared and draw(st.booleans()):
            kw = {"block_hashes": tuple([7, 8, 9, 10, 11][: -(-p // 8)] + [100 + i] * 0), "hash_block_size": 8}
            if len(kw["block_hashes"]) * 8 < p:
                kw = {}
        rows.append(Request(id=i, arrival_s=t, prompt_tokens=p, output_tokens=o,
                            n=draw(st.sampled_from([1, 1, 2])), priority=draw(st.integers(0, 2)), **kw))
    allocator = draw(st.sampled_from(["paged", "paged", "orca-max", "orca-pow2", "orca-oracle"]))
    paged = allocator == "paged"  # the baselines refuse caching, forks, swap and event logs
    gen = draw(st.sampled_from(["v1", "v0"])) if paged else "v1"
    preemption = draw(st.sampled_from(["recompute", "swap"])) if gen == "v0" else "recompute"
    cfg = replace(
        config(num_blocks=draw(st.integers(12, 40)), block_size=draw(st.sampled_from([1, 2, 4, 8])),
               caching=paged and draw(st.booleans()), generation=gen, preemption=preemption,
               order=draw(st.sampled_from(["fcfs", "priority"])),
               victim=draw(st.sampled_from(["latest", "priority", "most-blocks"])),
               chunked_prefill=draw(st.booleans()), max_num_batched_tokens=draw(st.sampled_from([16, 64])),
               max_num_seqs=draw(st.sampled_from([2, 8])), max_model_len=128,
               watermark=draw(st.sampled_from([0.0, 0.1]))),
        allocator=allocator, events=paged,
        num_cpu_blocks=draw(st.sampled_from([0, 16])) if preemption == "recompute" and paged else
        (16 if paged else 0),
        seed=draw(st.integers(0, 3)))
    return Trace(rows, source="hypothesis"), cfg, draw(st.sampled_from([LinearCost, ScalarLinearCost, None]))


@settings(max_examples=int(os.environ.get("PAGESIM_FAST_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_runs())
def test_fast_mode_equals_step_by_step(run):
    trace, cfg, cost = run
    note(repr([(r.arrival_s, r.prompt_tokens, r.output_tokens, r.n, r.block_hashes) for r in trace]))
    note(repr(cfg))
    ex = CostModelExecutor(cost()) if cost else None  # None: the preset's roofline model
    # allocator and scheduler invariants at every step boundary, both modes
    fast = run_replay(trace, replace(cfg, fast=True, check_invariants=1), executor=ex)
    with TokenLedger(ex or preset_executor(cfg)) as ledger:  # step by step: it needs plans
        slow = run_replay(trace, replace(cfg, fast=False, check_invariants=1), executor=ledger)
    same(fast, slow)
    ledger.check(slow, fast)
    # each preemption is counted in the step that made it
    assert fast.steps["preemptions"].sum() == fast.summary["preemptions"]
    # conservation: every request finished or was rejected with a reason
    r = fast.requests
    assert (r["finish_s"].notna() | r["rejected"].notna()).all()


def test_fast_mode_equals_step_by_step_on_a_sharegpt_workload():
    trace = synthetic("sharegpt", num_requests=300, rate=40, seed=3, system_prompt_tokens=64)
    cfg = ReplayConfig(num_gpu_blocks=400, events=True)
    same(run_replay(trace, cfg), run_replay(trace, replace(cfg, fast=False)))


def test_same_seed_same_outputs_and_seed_matters_for_beams():
    trace = synthetic("alpaca", num_requests=80, rate=20, beam_width=4, seed=1)
    cfg = ReplayConfig(num_gpu_blocks=300, scheduler=config(generation="v0").scheduler, events=True)
    a, b = run_replay(trace, cfg), run_replay(trace, cfg)
    same(a, b)
    c = run_replay(trace, replace(cfg, seed=1))
    assert not a.events.to_dataframe().equals(c.events.to_dataframe())


def preset_executor(cfg):
    """The executor ``run_replay`` builds when given none."""
    return CostModelExecutor(make_cost_model(cfg.cost_model, cfg.model, cfg.gpu, cfg.tp, cfg.block_size))


CONSERVATION_RUNS = {
    # name: () -> (trace, config); each paged pool is tight enough to preempt
    "v1-recompute": lambda: (synthetic("sharegpt", num_requests=120, rate=50, seed=2),
                             ReplayConfig(num_gpu_blocks=200, events=True)),
    "v1-n2-prefix-cache": lambda: (synthetic("sharegpt", num_requests=80, rate=20, n=2, seed=1,
                                             system_prompt_tokens=64),
                                   ReplayConfig(num_gpu_blocks=150, events=True)),
    "v0-beams-recompute": lambda: (synthetic("alpaca", num_requests=40, rate=20, beam_width=4, seed=1),
                                   ReplayConfig(num_gpu_blocks=40, block_size=8, events=True,
                                                scheduler=config(generation="v0").scheduler)),
    "v0-samples-swap": lambda: (synthetic("alpaca", num_requests=40, rate=20, n=3, seed=1),
                                ReplayConfig(num_gpu_blocks=60, block_size=8, num_cpu_blocks=64, events=True,
                                             scheduler=config(generation="v0", preemption="swap").scheduler)),
    "v0-beams-swap": lambda: (synthetic("alpaca", num_requests=40, rate=20, beam_width=3, seed=1),
                              ReplayConfig(num_gpu_blocks=40, block_size=8, num_cpu_blocks=64, events=True,
                                           scheduler=config(generation="v0", preemption="swap").scheduler)),
    # contiguous reservations never preempt; some requests are rejected
    "orca-pow2-rejects": lambda: (synthetic("sharegpt", num_requests=60, rate=20, n=2, seed=3),
                                  ReplayConfig(num_gpu_blocks=100, allocator="orca-pow2")),
}


@pytest.mark.parametrize("name", list(CONSERVATION_RUNS))
def test_tokens_are_conserved_through_preemptions_swaps_forks_and_beams(name):
    trace, cfg = CONSERVATION_RUNS[name]()
    with TokenLedger(preset_executor(cfg)) as ledger:
        slow = run_replay(trace, replace(cfg, fast=False), executor=ledger)
    fast = run_replay(trace, cfg)
    ledger.check(slow, fast)
    if cfg.allocator != "paged":
        assert slow.requests["rejected"].notna().any() and slow.summary["preemptions"] == 0
    elif cfg.scheduler.preemption == "swap":
        assert (slow.events.to_dataframe()["kind"] == "swap_out").any(), "the case must swap"
    else:
        assert slow.summary["preemptions"] > 0, "the case must preempt to test conservation under it"
        assert ledger.lost > 0, "recompute preemptions must lose (and redo) work"


def test_the_ledger_catches_a_token_computed_twice():
    ledger = TokenLedger(CostModelExecutor(LinearCost()))
    ledger.starting[0] = 0
    ledger.execute(StepPlan(step=0, seq_ids=[0], query_lens=[4], context_lens=[4]))
    with pytest.raises(AssertionError, match="computed twice or skipped"):
        ledger.execute(StepPlan(step=1, seq_ids=[0], query_lens=[1], context_lens=[4]))


def test_overload_ends_without_livelock():
    rows = [Request(id=i, arrival_s=0.0, prompt_tokens=60, output_tokens=200) for i in range(200)]
    with EventBudget(100_000):  # the run logs 11,394 events
        res = run_replay(Trace(rows, source="overload"), config(num_blocks=30, block_size=16),
                         executor=CostModelExecutor(LinearCost()))
    assert res.summary["requests"]["finished"] == 200
    assert res.summary["preemptions"] > 0


def test_memory_split_sums_to_one_and_baselines_follow_definitions():
    trace = synthetic("sharegpt", num_requests=150, rate=30, seed=4)
    splits = {}
    for alloc in ("paged", "orca-max", "orca-pow2", "orca-oracle"):
        res = run_replay(trace, ReplayConfig(model="opt-13b", gpu="a100-40gb", allocator=alloc,
                                             prefix_caching=False))
        m = res.summary["memory_split"]
        assert abs(sum(m.values()) - 1) < 1e-9
        splits[alloc] = m
    assert splits["paged"]["reserved"] == 0 and splits["paged"]["external_frag"] == 0
    assert splits["orca-oracle"]["internal_frag"] == 0          # reserves exactly the final length
    assert splits["orca-max"]["internal_frag"] > splits["orca-pow2"]["internal_frag"] > 0
    assert splits["paged"]["token_states"] > max(splits[a]["token_states"] for a in splits if a != "paged")


def test_fast_mode_equals_step_by_step_on_long_decode_stretches():
    # Few arrivals and long outputs: stretches outgrow scalar pricing and are
    # priced in one vectorised call (with and without price_one).
    trace = synthetic("fixed:40:300", num_requests=12, rate=0.05, seed=5)
    cfg = ReplayConfig(num_gpu_blocks=120, block_size=8, events=True)
    same(run_replay(trace, cfg), run_replay(trace, replace(cfg, fast=False)))
    ex = CostModelExecutor(LinearCost())
    same(run_replay(trace, cfg, executor=ex), run_replay(trace, replace(cfg, fast=False), executor=ex))


def test_most_blocks_victim_never_livelocks_restarting_sample_groups():
    # Two V0 sample groups that fit alone but not together: preempting one
    # restarts it, so a policy that could preempt the head forever would loop.
    trace = Trace([Request(id=i, arrival_s=0.0, prompt_tokens=p, output_tokens=o, n=n)
                   for i, (p, o, n) in enumerate([(1, 1, 1), (14, 16, 2), (1, 1, 1), (5, 17, 2)])],
                  source="livelock")
    cfg = replace(config(num_blocks=28, block_size=2, generation="v0", victim="most-blocks",
                         chunked_prefill=False, max_num_batched_tokens=16, max_num_seqs=8,
                         max_model_len=128), num_cpu_blocks=0)
    ex = CostModelExecutor(LinearCost())
    with EventBudget(4000):  # the fixed code logs 157 events a run, in either mode
        fast = run_replay(trace, cfg, executor=ex)
        slow = run_replay(trace, replace(cfg, fast=False), executor=ex)
    assert fast.summary["requests"]["finished"] == 4
    same(fast, slow)


def test_event_budget_stops_a_run_that_exceeds_it():
    rows = [(0.0, 1, 6), (0.0, 31, 1)]
    with EventBudget(10), pytest.raises(AssertionError, match="more than 10 allocator events"):
        run_replay(trace_of(*rows), config(num_blocks=40, block_size=1),
                   executor=CostModelExecutor(LinearCost()))
    run_replay(trace_of(*rows), config(num_blocks=40, block_size=1),
               executor=CostModelExecutor(LinearCost()))  # and leaves EventLog as it was


def test_fast_mode_crosses_from_a_shared_full_block():
    # block size 1: a sequence's last block is a full prefix-cache hit shared
    # with another sequence when it crosses into its next block.
    rows = [(0.0, 1, 1, None), (0.0, 1, 1, None), (0.0, 1, 2, (7,)), (0.0, 2, 2, (7,)), (0.0, 1, 1, None)]
    trace = Trace([Request(id=i, arrival_s=a, prompt_tokens=p, output_tokens=o, block_hashes=h,
                           hash_block_size=8 if h else None) for i, (a, p, o, h) in enumerate(rows)],
                  source="shared-cross")
    cfg = config(num_blocks=12, block_size=1, caching=True, chunked_prefill=False,
                 max_num_batched_tokens=16, max_num_seqs=2, max_model_len=128)
    ex = CostModelExecutor(LinearCost())
    same(run_replay(trace, cfg, executor=ex), run_replay(trace, replace(cfg, fast=False), executor=ex))


def test_group_swapped_mid_prefill_does_not_swap_itself_in_and_out_forever():
    # Found by hypothesis: a group swapped out in the middle of a chunked
    # prefill came back, could not get slots for its next chunk, preempted
    # itself (swap out) and came back again, within one step, forever.
    rows = [(0.0, 1, 6), (0.0, 31, 1)] + [(0.0, 1, 1)] * 8
    cfg = config(num_blocks=33, block_size=1, generation="v0", preemption="swap",
                 chunked_prefill=True, max_num_batched_tokens=16, max_num_seqs=2,
                 max_model_len=128)
    cfg = replace(cfg, num_cpu_blocks=16)
    ex = CostModelExecutor(LinearCost())
    with EventBudget(4000):  # the fixed code logs 180 events a run, in either mode
        fast = run_replay(trace_of(*rows), cfg, executor=ex)
        slow = run_replay(trace_of(*rows), replace(cfg, fast=False), executor=ex)
    assert fast.summary["requests"]["finished"] == 10
    same(fast, slow)
