"""Both KV-cache managers implement the declared interface, state their
capabilities, and honour or refuse every option."""
import pytest

from pagesim.cli import main
from pagesim.replay import ReplayConfig, replace, run_replay
from pagesim.sim.allocators import Unsupported, make_kv_cache_manager
from pagesim.sim.contiguous import ContiguousKVCacheManager
from pagesim.sim.errors import InvalidArgument, OutOfBlocks
from pagesim.sim.event_log import EventLog
from pagesim.sim.kv_cache_manager import PagedKVCacheManager
from pagesim.sim.kv_protocol import Capabilities, KVCacheManager
from pagesim.traces import synthetic
from tests.simhelpers import config, trace_of


def managers():
    return [PagedKVCacheManager(8, 4), PagedKVCacheManager(8, 4, enable_prefix_caching=True,
                                                           num_cpu_blocks=4),
            ContiguousKVCacheManager(32, "oracle", max_model_len=32)]


@pytest.mark.parametrize("kv", managers(), ids=["paged", "paged+cache+cpu", "contiguous"])
def test_managers_satisfy_the_protocol_and_its_check_act_pairs(kv):
    assert isinstance(kv, KVCacheManager)
    assert isinstance(kv.caps, Capabilities)
    assert kv.capacity_tokens == kv.num_blocks * kv.block_size == 32
    assert kv.num_free_blocks == kv.num_blocks and kv.num_seqs == 0
    assert kv.can_allocate(6, max_tokens=8)
    assert kv.allocate(1, 6, max_tokens=8) == 0
    assert kv.num_seqs == 1 and kv.num_tokens(1) == 6 and kv.live_tokens == 6
    held = kv.num_blocks_held(1)
    assert held == (2 if kv.caps.paged else 8), "blocks of the table / slots of the reservation"
    assert kv.can_append(1, 2) and kv.append_slots(1, 2) == []
    assert kv.usage().capacity == kv.capacity_tokens
    kv.free(1)
    assert kv.num_seqs == 0 and kv.live_tokens == 0 and kv.num_free_blocks == kv.num_blocks


def test_capabilities_are_stated_not_probed():
    paged, cached, contiguous = managers()
    assert paged.caps == Capabilities(paged=True, prefix_caching=False, fork=True, swap=False,
                                      needs_final_length=False)
    assert cached.caps.prefix_caching and cached.caps.swap
    assert contiguous.caps == Capabilities(paged=False, prefix_caching=False, fork=False, swap=False,
                                           needs_final_length=True)


def test_what_a_contiguous_manager_cannot_do_raises_and_changes_nothing():
    kv = ContiguousKVCacheManager(32, "oracle", max_model_len=32)
    kv.allocate(1, 4, max_tokens=8)
    before = kv.usage()
    for call in (lambda: kv.fork(1, 2), lambda: kv.can_swap_out([1]), lambda: kv.swap_in([1]),
                 lambda: kv.cross_blocks([1], [0]), lambda: kv.block_table(1)):
        with pytest.raises(InvalidArgument):
            call()
    assert kv.usage() == before


def test_contiguous_manager_honours_the_watermark():
    kv = ContiguousKVCacheManager(32, "oracle", max_model_len=32)
    assert kv.can_allocate(8, watermark_blocks=24)
    assert not kv.can_allocate(8, watermark_blocks=25), "8 of 32 slots leave 24 free, not 25"
    assert kv.can_allocate(9, watermark_blocks=0)
    assert kv.can_allocate(9, watermark_blocks=16)
    assert not kv.can_allocate(9, watermark_blocks=17), "9 slots take a buddy chunk of 16"
    assert kv.rejection(10, 6, 1, 16) is None
    assert "less the watermark" in kv.rejection(10, 7, 1, 16)
    assert "fork" in kv.rejection(4, 4, 2, 0)


def test_paged_rejection_counts_forked_blocks():
    kv = PagedKVCacheManager(8, 4)
    assert kv.rejection(16, 16, 1, 0) is None           # 8 blocks
    assert kv.rejection(16, 16, 1, 1) == "needs 8 KV blocks, the cache has 7 usable"
    # 3 beams share the prompt's block; each has 2 output blocks and a copy
    # of the partial block it writes into after the fork: 1 + 3 * 3
    assert kv.rejection(4, 8, 3, 0) == "needs 10 KV blocks, the cache has 8 usable"


@pytest.mark.parametrize("kw, reason", [
    (dict(enable_prefix_caching=True), "prefix caching"),
    (dict(num_cpu_blocks=4), "a CPU pool"),
    (dict(event_log=EventLog()), "an event log"),
])
def test_contiguous_baselines_refuse_what_they_cannot_do(kw, reason):
    with pytest.raises(Unsupported, match=f"--allocator orca-max does not support {reason}"):
        make_kv_cache_manager("orca-max", num_blocks=4, block_size=4, max_model_len=16, **kw)


def test_replay_refuses_swap_forks_and_block_tables_on_a_baseline():
    base = replace(config(), allocator="orca-pow2", events=False)
    trace = trace_of((0.0, 4, 4))
    swap = replace(base, scheduler=replace(base.scheduler, generation="v0", preemption="swap"))
    with pytest.raises(Unsupported, match="swap preemption"):
        run_replay(trace, swap)
    with pytest.raises(Unsupported, match="fork"):
        run_replay(trace_of((0.0, 4, 4), beam_width=2), base)
    v0 = replace(base, scheduler=replace(base.scheduler, generation="v0"))
    with pytest.raises(Unsupported, match="fork"):
        run_replay(trace_of((0.0, 4, 4), n=2), v0)
    # V1 runs n > 1 as child requests: no fork needed
    assert run_replay(trace_of((0.0, 4, 4), n=2), base).summary["requests"]["finished"] == 1


def test_paged_swap_without_a_cpu_pool_is_refused():
    cfg = replace(config(generation="v0", preemption="swap"), num_cpu_blocks=0)
    with pytest.raises(Unsupported, match="--num-cpu-blocks"):
        run_replay(trace_of((0.0, 4, 4)), cfg)


def test_prefix_caching_defaults_to_what_the_allocator_supports():
    trace = synthetic("sharegpt", num_requests=30, rate=20, seed=1, system_prompt_tokens=64)
    paged = run_replay(trace, ReplayConfig(num_gpu_blocks=400))
    orca = run_replay(trace, ReplayConfig(num_gpu_blocks=400, allocator="orca-max"))
    assert paged.summary["config"]["prefix_caching"] is True
    assert paged.summary["prefix_cache"]["hit_rate_tokens"] > 0
    assert orca.summary["config"]["prefix_caching"] is False


def test_cli_refuses_with_the_reason_and_exit_code_2(capsys):
    code = main(["replay", "--num-requests", "5", "--quiet", "--no-plots", "--allocator", "orca-max",
                 "--scheduler", "v0", "--preemption", "swap"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--allocator orca-max does not support swap preemption" in err and "--preemption recompute" in err
    assert main(["replay", "--num-requests", "5", "--quiet", "--no-plots", "--allocator", "orca-max",
                 "--prefix-caching"]) == 2
    assert "prefix caching" in capsys.readouterr().err


def test_out_of_blocks_is_raised_by_both_before_any_change():
    for kv in managers():
        kv.allocate(1, 4, max_tokens=4)
        before = kv.usage()
        with pytest.raises(OutOfBlocks):
            kv.append_slots(1, 40)
        assert kv.usage() == before
