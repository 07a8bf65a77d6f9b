"""Queue order and preemption victim: separate, named, registered policies."""
import pytest

from pagesim.cli import main
from pagesim.replay import build, replace
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.kv_cache_manager import PagedKVCacheManager
from pagesim.sim.policies import (
    ORDER_POLICIES, VICTIM_POLICIES, MostBlocks, OrderPolicy, VictimPolicy, order_policy,
    register_order, register_victim, victim_policy,
)
from pagesim.sim.sequence import Group, RequestRecord, Sequence
from tests.simhelpers import LinearCost, config, trace_of


def run(trace, cfg):
    engine, sched, kv, _ = build(trace, replace(cfg, fast=False), CostModelExecutor(LinearCost()))
    engine.run()
    return sched


def req(prompt, output, priority=0, arrival=0.0):
    return dict(arrival_s=arrival, prompt_tokens=prompt, output_tokens=output, priority=priority)


def first_token_order(sched):
    return [r.id for r in sorted(sched.records, key=lambda r: (r.first_token_s, r.id))]


def preempted(sched):
    return [r.id for r in sched.records if r.preemptions]


# One sequence at a time: the queue order alone decides who starts first.
ONE_AT_A_TIME = trace_of(req(4, 2, priority=2), req(4, 2, priority=0), req(4, 2, priority=1))


def test_fcfs_order_serves_arrivals_in_order_whatever_their_priority():
    sched = run(ONE_AT_A_TIME, config(max_num_seqs=1, order="fcfs"))
    assert first_token_order(sched) == [0, 1, 2]


def test_priority_order_serves_lower_priority_values_first():
    sched = run(ONE_AT_A_TIME, config(max_num_seqs=1, order="priority"))
    assert first_token_order(sched) == [1, 2, 0]


# 4 blocks of 4: H, A and B prefill one block each at step 0; at step 1 H's
# decode takes the last free block and A's needs one more, so someone among
# A and B (never H, the head of the running list) is preempted.
CROWDED = trace_of(req(4, 3), req(4, 3, priority=5), req(4, 3, priority=0))


def test_latest_victim_is_the_latest_arrival():
    sched = run(CROWDED, config(num_blocks=4, victim="latest"))
    assert preempted(sched) == [2]


def test_priority_victim_is_the_least_important_and_does_not_change_the_order():
    sched = run(CROWDED, config(num_blocks=4, victim="priority"))
    assert preempted(sched) == [1], "A (priority 5) gives up its memory, B (priority 0) keeps it"
    # fcfs order kept: H, A and B were admitted in arrival order at step 0
    assert first_token_order(sched)[:1] == [0]
    sched = run(ONE_AT_A_TIME, config(max_num_seqs=1, victim="priority"))
    assert first_token_order(sched) == [0, 1, 2]


def test_most_blocks_victim_in_a_replay():
    # A holds two blocks (8 tokens), B one: A is preempted although B arrived later.
    trace = trace_of(req(4, 3), req(8, 3), req(4, 3))
    assert preempted(run(trace, config(num_blocks=5, victim="latest"))) == [2]
    assert preempted(run(trace, config(num_blocks=5, victim="most-blocks"))) == [1]


def _group(gid, seq_ids, arrival=0.0, priority=0):
    rec = RequestRecord(gid, arrival, 1, 1, 1, 1, priority)
    return Group(gid, rec, [Sequence(s, 1, 1, None) for s in seq_ids], arrival, priority)


def test_most_blocks_counts_blocks_not_tokens():
    kv = PagedKVCacheManager(16, 4)
    kv.allocate(1, 8)   # 8 tokens, 2 blocks
    kv.allocate(2, 5)   # 5 tokens, 2 blocks
    kv.allocate(3, 1)   # 1 token, 1 block
    x, y, z = _group(0, [1]), _group(1, [2]), _group(2, [3])
    # counting tokens would pick x; in blocks x and y tie, and ties go to
    # the later group in keep order
    assert MostBlocks().pick([x, y, z], kv) is y
    kv.append_slots(1, 1)  # x now holds 3 blocks
    assert MostBlocks().pick([x, y, z], kv) is x


def test_the_builtin_policies_are_registered_and_satisfy_their_protocols():
    assert set(ORDER_POLICIES) == {"fcfs", "priority"}
    assert set(VICTIM_POLICIES) == {"latest", "priority", "most-blocks"}
    assert all(isinstance(order_policy(n), OrderPolicy) for n in ORDER_POLICIES)
    assert all(isinstance(victim_policy(n), VictimPolicy) for n in VICTIM_POLICIES)
    with pytest.raises(ValueError, match="order must be one of fcfs, priority"):
        SchedulerConfig(order="lifo")
    with pytest.raises(ValueError, match="victim must be one of"):
        SchedulerConfig(victim="random")


@pytest.fixture
def user_policies():
    @register_order("longest-prompt-first")
    class LongestPromptFirst:
        def key(self, g):
            return (-g.seqs[0].prompt_len, g.gid)

    @register_victim("earliest")
    class EarliestArrival:
        def pick(self, candidates, kv):
            return min(candidates, key=lambda g: (g.arrival_s, g.gid))

    yield
    del ORDER_POLICIES["longest-prompt-first"], VICTIM_POLICIES["earliest"]


def test_user_registered_policies_work_without_touching_the_scheduler(user_policies):
    trace = trace_of(req(2, 2), req(6, 2), req(4, 2))
    sched = run(trace, config(max_num_seqs=1, order="longest-prompt-first"))
    assert first_token_order(sched) == [1, 2, 0]
    # "earliest" gives up A (arrived before B); H, the head, is never a victim
    assert preempted(run(CROWDED, config(num_blocks=4, victim="earliest"))) == [1]
    with pytest.raises(ValueError, match="already registered"):
        register_victim("earliest")(MostBlocks)
    with pytest.raises(TypeError, match="not a victim policy"):
        register_victim("no-pick")(type(order_policy("fcfs")))   # has key(), not pick()
    assert "no-pick" not in VICTIM_POLICIES


def test_cli_offers_order_and_victim_separately(tmp_path, capsys):
    args = ["replay", "--num-requests", "20", "--quiet", "--no-plots", "--num-gpu-blocks", "200"]
    assert main(args + ["--order", "priority", "--victim", "most-blocks"]) == 0
    assert main(args + ["--order", "lifo"]) == 2  # argparse's error, as an exit status
    assert "argument --order: invalid choice: 'lifo'" in capsys.readouterr().err
