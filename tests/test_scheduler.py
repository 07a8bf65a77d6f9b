"""Scheduler plans are executable: every copy, swap and block table a plan
lists belongs to a sequence that runs in that step."""
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagesim.replay import build, replace
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.invariants import check_plan
from tests.simhelpers import LinearCost, config, trace_of


def checked_run(rows, cfg):
    """Replay step by step with block tables in the plans; check each plan
    against the allocator before the step runs. Returns the plans."""
    engine, sched, kv, _ = build(trace_of(*rows), replace(cfg, fast=False),
                                 CostModelExecutor(LinearCost()))
    sched.plan_tables = True
    plans = []

    def hook(plan, start, dt):
        check_plan(plan, kv)
        plans.append(plan)
    engine.on_step = hook
    engine.run()
    return plans


def test_copy_on_write_of_a_group_preempted_in_the_same_reservation_is_dropped():
    # Three V0 groups, the last two forked into 3 samples sharing a partial
    # last block. In step 1 the youngest group copies one sample's block on
    # write, then cannot get a block for the next sample and preempts
    # itself: its copy must not stay in the plan (its blocks are freed).
    rows = [{"arrival_s": 0.0, "prompt_tokens": 7, "output_tokens": 7, "n": 1},
            {"arrival_s": 0.0, "prompt_tokens": 2, "output_tokens": 3, "n": 3},
            {"arrival_s": 0.0, "prompt_tokens": 6, "output_tokens": 3, "n": 3}]
    cfg = config(num_blocks=8, block_size=4, generation="v0", max_num_batched_tokens=64,
                 max_model_len=64)
    plans = checked_run(rows, cfg)
    step1 = plans[1]
    assert step1.freed, "the scenario no longer preempts in step 1"
    assert all(s not in step1.seq_ids for s in step1.freed)


@st.composite
def v0_runs(draw):
    rows = [{"arrival_s": draw(st.sampled_from([0.0, 0.0, 0.0, 2.0])),
             "prompt_tokens": draw(st.integers(1, 12)), "output_tokens": draw(st.integers(1, 8)),
             "n": draw(st.sampled_from([1, 3, 3])),
             "beam_width": draw(st.sampled_from([1, 1, 2]))}
            for _ in range(draw(st.integers(1, 5)))]
    for r in rows:
        if r["beam_width"] > 1:
            r["n"] = 1
    rows.sort(key=lambda r: r["arrival_s"])
    pre = draw(st.sampled_from(["recompute", "swap"]))
    cfg = config(num_blocks=draw(st.integers(6, 12)), block_size=draw(st.sampled_from([2, 4])),
                 generation="v0", preemption=pre, victim=draw(st.sampled_from(["latest", "most-blocks"])),
                 max_num_batched_tokens=64, max_model_len=64)
    return rows, replace(cfg, num_cpu_blocks=draw(st.sampled_from([4, 16])) if pre == "swap" else 0)


@settings(max_examples=int(os.environ.get("PAGESIM_PLAN_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(v0_runs())
def test_plans_only_list_copies_and_tables_of_running_sequences(run):
    rows, cfg = run
    checked_run(rows, cfg)
