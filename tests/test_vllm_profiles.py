"""vLLM behaviour profiles: each behaviour of 0.33 pinned by a minimal case,
and 0.11 (the classic V1) beside it. The expected values follow from vLLM's
code as cited in the README's profile table, not from pagesim's output."""
import pytest

from pagesim.replay import ReplayConfig, replace, run_replay
from pagesim.sim.allocators import make_kv_cache_manager
from pagesim.sim.block_keys import BlockKeys
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.invariants import check_manager
from tests.simhelpers import LinearCost, config, trace_of


def manager(num_blocks, block_size=16, vllm="0.33", **kw):
    return make_kv_cache_manager("paged", num_blocks=num_blocks, block_size=block_size,
                                 max_model_len=4096, enable_prefix_caching=True,
                                 config=SchedulerConfig(vllm=vllm, **kw))


def keys(tokens, block_size=16):
    return BlockKeys(block_size, token_ids=tokens)


# ------------------------------------------------------------ (6) null block
@pytest.mark.parametrize("vllm", ["0.33", "0.11"])
def test_null_block_reserves_block_zero_in_every_v1_profile(vllm):
    m = manager(4, vllm=vllm)
    assert m.pool.null_block.id == 0 and m.pool.num_usable == 3 and m.num_free_blocks == 3
    m.allocate(1, 40)
    assert m.block_table(1) == [1, 2, 3]
    check_manager(m)


def test_v0_has_no_null_block_and_the_switch_turns_it_off():
    assert manager(4, generation="v0").pool.null_block is None
    assert manager(4, null_block=False).pool.null_block is None


# ------------------------------------------------- (2) free order by hash
def test_freed_block_without_hash_is_reused_first_under_0_33():
    # a one-token prompt holds block 1 (partial, no hash); freed, it goes
    # to the head of the free queue (block_pool.free_blocks: prepend_n)
    m = manager(3)
    m.allocate(1, 1, keys([7]))
    assert m.pool.free_queue.ids() == [2]
    m.free(1)
    assert m.pool.free_queue.ids() == [1, 2]


def test_freed_block_without_hash_is_appended_under_0_11():
    m = manager(3, vllm="0.11")
    m.allocate(1, 1, keys([7]))
    m.free(1)
    assert m.pool.free_queue.ids() == [2, 1]


def test_hashed_blocks_go_to_the_tail_and_unhashed_to_the_head_in_free_order():
    m = manager(8, block_size=4)
    m.allocate(1, 10, keys(list(range(10)), 4))   # blocks 1, 2 full (hashed), 3 partial
    m.free(1)  # freed tail first: 3 (no hash) to the head; 2, 1 to the tail
    assert m.pool.free_queue.ids() == [3, 4, 5, 6, 7, 2, 1]
    check_manager(m)


def test_without_prefix_caching_every_freed_block_goes_to_the_head():
    m = make_kv_cache_manager("paged", num_blocks=6, block_size=4, max_model_len=64,
                              config=SchedulerConfig())
    m.allocate(1, 9)                               # blocks 1, 2, 3
    m.free(1)
    assert m.pool.free_queue.ids() == [3, 2, 1, 4, 5]
    check_manager(m)


# ------------------------------------------- (3) duplicate full blocks
def test_resent_whole_block_prompt_caches_its_recomputed_last_block_twice():
    toks = list(range(32))                         # exactly two blocks of 16
    m = manager(6)
    m.allocate(1, 32, keys(toks))                  # blocks 1, 2
    # the last prompt token is always recomputed: block 1 hits, block 3 is a
    # second block with block 2's content
    assert m.allocate(2, 32, keys(toks)) == 16 and m.block_table(2) == [1, 3]
    k = keys(toks).key(1)
    assert m.pool.blocks[3].hash == k and m.pool.lookup(k).id == 2
    check_manager(m)
    # evicting block 2 removes only its own entry: block 3 is still found
    m.free(1)
    m.free(2)
    assert m.pool.free_queue.ids() == [4, 5, 2, 3, 1]
    m.allocate(3, 48)                              # takes 4, 5, 2 (evicts block 2)
    assert m.pool.lookup(k).id == 3
    assert m.num_cached_tokens(33, keys(toks + [0])) == 32
    check_manager(m)


def test_0_11_keeps_one_cached_block_per_content():
    toks = list(range(32))
    m = manager(6, vllm="0.11")
    m.allocate(1, 32, keys(toks))
    m.allocate(2, 32, keys(toks))
    assert m.pool.blocks[3].hash is None and m.pool.lookup(keys(toks).key(1)).id == 2
    check_manager(m)


# ---------------------------------------------------------- (5) watermark
def test_watermark_default_is_zero_and_counts_the_null_block():
    assert SchedulerConfig().behaviour.watermark == 0.0
    assert SchedulerConfig(generation="v0").behaviour.watermark == 0.01
    trace = trace_of((0.0, 4, 1))
    res = run_replay(trace, ReplayConfig(num_gpu_blocks=10, block_size=4, events=True,
                                         scheduler=SchedulerConfig(watermark=0.1, max_model_len=64)),
                     executor=CostModelExecutor(LinearCost()))
    assert res.summary["requests"]["finished"] == 1


@pytest.mark.parametrize("vllm", ["0.33", "0.11"])
def test_request_filling_every_usable_block_is_never_rejected_for_the_watermark(vllm):
    # 11 blocks of 4 with the null block: 10 usable; 40 tokens need all 10;
    # watermark 0.1 keeps int(0.1 * 11) = 1 block free only while admitting
    trace = trace_of((0.0, 36, 4))
    cfg = config(num_blocks=11, watermark=0.1, vllm=vllm, null_block=True, max_model_len=64)
    res = run_replay(trace, cfg, executor=CostModelExecutor(LinearCost()))
    assert res.requests.loc[0, "rejected"] is None or res.requests["rejected"].isna().all()
    assert res.summary["requests"]["finished"] == 1


def test_v0_still_refuses_a_request_that_eats_into_the_watermark():
    trace = trace_of((0.0, 36, 4))
    cfg = config(num_blocks=10, watermark=0.1, generation="v0", max_model_len=64)
    res = run_replay(trace, cfg, executor=CostModelExecutor(LinearCost()))
    assert "9 usable" in res.requests.loc[0, "rejected"]


def test_watermark_applies_only_while_something_runs_under_0_33():
    # the whole 39-token prompt needs all 10 usable blocks: an idle 0.33
    # engine admits it; 0.11 with the same watermark keeps one block back
    trace = trace_of((0.0, 39, 1))
    kw = dict(num_blocks=11, watermark=0.1, null_block=True, max_model_len=64)
    new = run_replay(trace, config(vllm="0.33", **kw), executor=CostModelExecutor(LinearCost()))
    assert new.summary["requests"]["finished"] == 1
    old = run_replay(trace, config(vllm="0.11", **kw), executor=CostModelExecutor(LinearCost()))
    assert old.summary["requests"]["rejected"] == 1


# ------------------------------------------------------------ plumbing
def test_each_behaviour_is_a_switch_over_the_profile():
    b = SchedulerConfig(vllm="0.33", async_scheduling=False, unhashed_first=False).behaviour
    assert not b.async_scheduling and not b.unhashed_first and b.cache_duplicates
    assert SchedulerConfig(vllm="0.11", cache_duplicates=True).behaviour.cache_duplicates
    with pytest.raises(ValueError, match="vllm must be one of"):
        SchedulerConfig(vllm="0.2")
    with pytest.raises(ValueError, match="only in the V1 scheduler"):
        SchedulerConfig(generation="v0", async_scheduling=True)


def test_factory_builds_the_profile_the_scheduler_config_names():
    old = manager(4, vllm="0.11").pool
    new = manager(4).pool
    assert (old.unhashed_first, old.cache_duplicates) == (False, False)
    assert (new.unhashed_first, new.cache_duplicates) == (True, True)


# ------------------------------------------ (1) full-prompt admission check
def first_steps(vllm, n=2, **kw):
    from pagesim.replay import build
    trace = trace_of((0.0, 1, 4), (0.0, 113, 4))
    cfg = replace(config(num_blocks=9, block_size=16, max_num_batched_tokens=8, vllm=vllm,
                         null_block=True, max_model_len=256, **kw), fast=False)
    engine, sched, kv, _ = build(trace, cfg, CostModelExecutor(LinearCost()))
    log = []
    engine.on_step = lambda plan, start, dt: log.append(dict(zip(plan.seq_ids, plan.query_lens)))
    engine.run()
    return log[:n], sched


def test_chunked_prompt_is_admitted_only_if_all_of_it_fits_under_0_33():
    # 8 usable blocks of 16, budget 8: after the 1-token request, 7 blocks
    # are free and the 113-token prompt needs 8, though its first 7-token
    # chunk would need one
    log, sched = first_steps("0.33")
    assert log[0] == {0: 1}
    assert sched.preemptions == 0 and all(r.finish_s is not None for r in sched.records)


def test_0_11_admits_the_first_chunk_and_the_switch_turns_the_check_off():
    for vllm, kw in (("0.11", {}), ("0.33", {"scheduler_reserve_full_isl": False})):
        log, _ = first_steps(vllm, **kw)
        assert log[0] == {0: 1, 1: 7}


# ------------------------------------------------- (4) async scheduling
def steps_of(trace, **kw):
    from pagesim.replay import build
    cfg = replace(config(block_size=4, null_block=True, max_model_len=64, **kw), fast=False)
    engine, sched, kv, _ = build(trace, cfg, CostModelExecutor(LinearCost()))
    log = []
    engine.on_step = lambda plan, start, dt: log.append(dict(zip(plan.seq_ids, plan.query_lens)))
    engine.run()
    return log, sched


def test_async_scheduling_frees_a_finished_request_one_step_later():
    # 2 usable blocks of 4. Step 0 runs C (1 + 3 tokens) and A (3 + 1); B
    # (3 + 1) waits for a block. A finishes at step 0. Synchronous: its
    # block is free when step 1 is scheduled, so B joins step 1. Async: step
    # 1 is scheduled before step 0's output is applied, so B joins step 2.
    trace = trace_of((0.0, 1, 3), (0.0, 3, 1), (0.0, 3, 1))
    sync, _ = steps_of(trace, num_blocks=3, vllm="0.33", async_scheduling=False)
    assert sync == [{0: 1, 1: 3}, {0: 1, 2: 3}, {0: 1}]
    asyn, sched = steps_of(trace, num_blocks=3, vllm="0.33")
    assert asyn == [{0: 1, 1: 3}, {0: 1}, {0: 1, 2: 3}]
    assert all(r.finish_s is not None for r in sched.records)


def test_async_scheduling_runs_no_empty_step_while_waiting_for_an_output():
    # A alone fills the cache; B can start only once A's blocks are free.
    # The step scheduled before A's output is applied would be empty: vLLM
    # runs no model step then, so B starts right after A, as in sync mode.
    trace = trace_of((0.0, 7, 1), (0.0, 7, 1))
    log, sched = steps_of(trace, num_blocks=3, vllm="0.33")
    assert log == [{0: 7}, {1: 7}] and sched.step == 2


def test_async_victim_can_be_a_request_whose_finish_is_not_applied_yet():
    # 2 usable blocks of 4: C (4 + 4) and A (3 + 1) fill them at step 0; A is
    # done. At step 1 C needs a second block. Sync: A's block is already
    # free. Async: A still holds it and is the last running request, so it
    # is the victim (vLLM pops running[-1]): one preemption, and A finishes.
    trace = trace_of((0.0, 4, 4), (0.0, 3, 1))
    sync, s_sched = steps_of(trace, num_blocks=3, vllm="0.33", async_scheduling=False)
    asyn, a_sched = steps_of(trace, num_blocks=3, vllm="0.33")
    assert s_sched.preemptions == 0
    assert a_sched.preemptions == 1 and a_sched.records[1].preemptions == 1
    assert a_sched.records[1].finish_s == s_sched.records[1].finish_s
    assert asyn == sync
