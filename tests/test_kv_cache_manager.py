"""PagedKVCacheManager: vLLM's block-manager scenarios, one operation each."""
import pytest

from pagesim.sim.block_keys import BlockKeys
from pagesim.sim.errors import InvalidArgument, OutOfBlocks, UnknownSequence
from pagesim.sim.event_log import EVICT, EventLog
from pagesim.sim.invariants import check_manager
from pagesim.sim.kv_cache_manager import PagedKVCacheManager


def mgr(num_blocks=16, block_size=4, **kw):
    return PagedKVCacheManager(num_blocks, block_size, **kw)


def keys(tokens, bs=4):
    return BlockKeys(bs, token_ids=tokens)


def test_allocate_then_free_restores_free_count():
    m = mgr()
    before = m.num_free_blocks
    m.allocate(1, 10)
    assert m.num_free_blocks == before - 3
    assert m.block_table(1) == [0, 1, 2]
    m.free(1)
    assert m.num_free_blocks == before
    check_manager(m)


def test_append_allocates_only_when_last_block_is_full():
    m = mgr()
    m.allocate(1, 7)
    assert m.append_slots(1) == [] and len(m.block_table(1)) == 2  # 8 tokens: fits
    m.append_slots(1)                                               # 9: new block
    assert len(m.block_table(1)) == 3
    m.append_slots(1, 7)                                            # 16: fits exactly
    assert len(m.block_table(1)) == 4 and m.num_tokens(1) == 16
    check_manager(m)


def test_fork_allocates_nothing_and_freeing_parent_keeps_child():
    m = mgr()
    m.allocate(1, 6)
    free = m.num_free_blocks
    m.fork(1, 2)
    assert m.num_free_blocks == free
    assert m.block_table(2) == m.block_table(1)
    assert all(m.pool.blocks[b].ref_cnt == 2 for b in m.block_table(1))
    m.free(1)
    assert m.num_free_blocks == free
    assert all(m.pool.blocks[b].ref_cnt == 1 for b in m.block_table(2))
    check_manager(m)


def test_one_copy_on_write_only_when_last_block_partial():
    m = mgr()
    m.allocate(1, 6)              # blocks [0, 1], block 1 half full
    m.fork(1, 2)
    pairs = m.append_slots(2)
    assert pairs == [(1, 2)]
    assert m.block_table(2) == [0, 2] and m.block_table(1) == [0, 1]
    assert m.append_slots(2) == []          # its own block now
    assert m.append_slots(1) == []          # parent is sole holder again
    check_manager(m)


def test_no_copy_on_write_when_shared_last_block_is_full():
    m = mgr()
    m.allocate(1, 8)
    m.fork(1, 2)
    assert m.append_slots(2) == []
    assert m.block_table(2)[:2] == m.block_table(1)
    check_manager(m)


def test_equal_token_chains_hash_equally_and_differ_otherwise():
    a, b = keys(list(range(12))), keys(list(range(12)))
    assert [a.key(i) for i in range(3)] == [b.key(i) for i in range(3)]
    c = keys([99] + list(range(1, 12)))
    assert all(a.key(i) != c.key(i) for i in range(3)), "a changed first block changes every chained key"
    p = BlockKeys(4, page_ids=[5, 6]); q = BlockKeys(4, page_ids=[5, 7])
    assert p.key(0) == q.key(0) and p.key(1) != q.key(1)


def test_prefix_hit_reuses_longest_cached_prefix_and_recomputes_last_token():
    m = mgr(enable_prefix_caching=True)
    toks = list(range(12))
    assert m.allocate(1, 12, keys(toks)) == 0
    assert m.allocate(2, 12, keys(toks)) == 8      # 2 blocks; the last token is recomputed
    assert m.block_table(2)[:2] == m.block_table(1)[:2]
    assert m.allocate(3, 14, keys(toks[:8] + [77] * 6)) == 8
    check_manager(m)


def test_freed_blocks_stay_findable_until_evicted():
    m = mgr(num_blocks=4, enable_prefix_caching=True)
    m.allocate(1, 9, keys(list(range(9))))
    m.free(1)
    assert m.usage().cached_free == 8
    assert m.allocate(2, 9, keys(list(range(9)))) == 8
    check_manager(m)


def test_free_queue_order_after_frees_fixes_eviction_order():
    m = mgr(num_blocks=6, enable_prefix_caching=True)
    m.allocate(1, 8, keys(list(range(8))))        # blocks 0, 1
    m.allocate(2, 8, keys(list(range(100, 108)))) # blocks 2, 3
    m.free(2)
    m.free(1)
    # Tail blocks first within each sequence; earlier frees nearer the head.
    assert m.pool.free_queue.ids() == [4, 5, 3, 2, 1, 0]
    log = EventLog()
    m.log = log
    m.pool.on_evict = lambda b: log.add(None, EVICT, b)
    m.allocate(3, 16)                              # takes 4, 5, 3, 2
    assert m.block_table(3) == [4, 5, 3, 2]
    assert [r for r in log.rows() if r[2] == "evict"] == [(0, None, "evict", 3, None), (0, None, "evict", 2, None)]
    assert m.num_cached_tokens(9, keys(list(range(9)))) == 8   # seq 1 blocks survived
    check_manager(m)


def test_failed_allocation_leaves_ref_counts_untouched():
    m = mgr(num_blocks=4, enable_prefix_caching=True)
    m.allocate(1, 8, keys(list(range(8))))
    snapshot = [(b.ref_cnt, b.hash, b.fill) for b in m.pool.blocks]
    queue = m.pool.free_queue.ids()
    assert not m.can_allocate(17, keys(list(range(17))))
    with pytest.raises(OutOfBlocks):
        m.allocate(2, 17, keys(list(range(17))))
    assert [(b.ref_cnt, b.hash, b.fill) for b in m.pool.blocks] == snapshot
    assert m.pool.free_queue.ids() == queue and 2 not in m.seqs
    m.allocate(3, 8)
    with pytest.raises(OutOfBlocks):
        m.append_slots(3)
    assert m.num_tokens(3) == 8
    check_manager(m)


def test_no_block_leaks_after_everything_is_freed():
    m = mgr(num_blocks=32, enable_prefix_caching=True, num_cpu_blocks=32)
    m.allocate(1, 13, keys(list(range(13))))
    m.fork(1, 2)
    m.append_slots(2, 5)
    m.allocate(3, 13, keys(list(range(13))))
    m.swap_out([1, 2])
    m.swap_in([1, 2])
    for s in (1, 2, 3):
        m.free(s)
    assert m.num_free_blocks == 32 and m.cpu_pool.num_free == 32
    assert m.usage().token_states == 0
    check_manager(m)


def test_swap_moves_shared_blocks_once_and_back():
    m = mgr(num_blocks=8, num_cpu_blocks=8)
    m.allocate(1, 6)
    m.fork(1, 2)
    m.append_slots(2)          # cow: 3 GPU blocks in use
    assert m.can_swap_out([1, 2])
    out = m.swap_out([1, 2])
    assert len(out) == 3 and m.num_free_blocks == 8
    assert m.block_table(1)[0] == m.block_table(2)[0], "shared block stays shared on CPU"
    assert not m.can_append(1)
    back = m.swap_in([1, 2])
    assert len(back) == 3 and m.num_free_blocks == 5
    assert m.block_table(1)[0] == m.block_table(2)[0]
    check_manager(m)


def test_accounting_sums_to_capacity_and_counts_shared_once():
    m = mgr(num_blocks=8, block_size=4)
    m.allocate(1, 6)
    m.fork(1, 2)
    u = m.usage()
    assert (u.token_states, u.internal_frag, u.free) == (6, 2, 24)
    assert u.capacity == 32


@pytest.mark.parametrize("bad", [0, 257, -1, 3.0])
def test_bad_block_size(bad):
    with pytest.raises(InvalidArgument):
        mgr(block_size=bad)


def test_bad_calls_raise_clear_errors_and_change_nothing():
    m = mgr()
    with pytest.raises(UnknownSequence, match="sequence 9"):
        m.free(9)
    with pytest.raises(InvalidArgument):
        m.allocate(1, 0)
    m.allocate(1, 3)
    with pytest.raises(InvalidArgument):
        m.allocate(1, 3)
    m.free(1)
    with pytest.raises(UnknownSequence):
        m.append_slots(1)
    with pytest.raises(InvalidArgument):
        m.fork(99, 1) if False else m.allocate(2, -4)
    with pytest.raises(UnknownSequence):
        m.fork(99, 100)
    check_manager(m)
    assert m.num_free_blocks == 16


def test_event_log_rows_follow_schema():
    log = EventLog()
    m = mgr(num_blocks=8, event_log=log, num_cpu_blocks=4)
    log.step = 3
    m.allocate(1, 5)
    m.fork(1, 2)
    m.append_slots(2)
    m.free(1)
    kinds = [r[2] for r in log.rows()]
    assert kinds == ["alloc", "alloc", "fork", "fork", "cow", "free", "free"]
    assert log.rows()[4] == (3, 2, "cow", 2, 1)
    df = log.to_dataframe()
    assert list(df.columns) == ["step", "seq", "kind", "block", "src_block"]
    assert df["src_block"].isna().sum() == 6
