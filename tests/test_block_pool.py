"""Block pool and free queue: O(1) queue operations and eviction order."""
import pytest

from pagesim.sim.block_pool import Block, BlockPool, FreeBlockQueue
from pagesim.sim.errors import InvalidArgument, OutOfBlocks
from pagesim.sim.invariants import check_pool_links


def test_free_queue_pop_append_remove_keep_order():
    blocks = [Block(i) for i in range(5)]
    q = FreeBlockQueue(blocks)
    assert q.ids() == [0, 1, 2, 3, 4]
    q.remove(blocks[2])
    assert q.ids() == [0, 1, 3, 4]
    assert q.popleft().id == 0
    q.append(blocks[2])
    assert q.ids() == [1, 3, 4, 2]
    assert len(q) == 4
    # the removed entry of block 2 was left behind and is skipped, not popped
    assert [b.id for b in q.pop_front(4)] == [1, 3, 4, 2]
    assert len(q) == 0 and q._stale == 0 and blocks[2].stale == 0


def test_free_queue_removed_twice_and_requeued_pops_in_order():
    blocks = [Block(i) for i in range(4)]
    q = FreeBlockQueue(blocks)
    for _ in range(2):  # revived, freed again, revived again: two stale entries
        q.remove(blocks[1])
        q.append(blocks[1])
    q.remove(blocks[0])
    assert q.ids() == [2, 3, 1] and len(q) == 3 and q._stale == 3
    assert q.popleft().id == 2
    q.append(blocks[0])
    assert q.ids() == [3, 1, 0]
    assert [b.id for b in q.pop_front(3)] == [3, 1, 0]
    assert q._stale == 0 and all(b.stale == 0 for b in blocks)


def test_free_queue_compacts_and_keeps_order():
    n = 3 * FreeBlockQueue._COMPACT_MIN
    blocks = [Block(i) for i in range(n)]
    q = FreeBlockQueue(blocks)
    for _ in range(3):  # pop everything and free it again, in a rotated order
        got = q.pop_front(n)
        got = got[7:] + got[:7]
        q.extend(got)
        assert len(q._q) <= 2 * n, "the popped prefix of the queue is never reclaimed"
    assert q.ids()[:3] == [21, 22, 23]


def test_free_queue_refuses_a_block_in_use():
    b = Block(0, ref_cnt=1)
    q = FreeBlockQueue([])
    with pytest.raises(AssertionError):
        q.append(b)


def test_free_queue_empty_pop_raises():
    q = FreeBlockQueue([])
    with pytest.raises(OutOfBlocks):
        q.popleft()


def test_pool_rejects_bad_sizes():
    for bad in (0, -3, 2.5, None):
        with pytest.raises(InvalidArgument):
            BlockPool(bad)


def test_null_block_is_held_forever():
    pool = BlockPool(4, null_block=True)
    assert pool.null_block.id == 0 and pool.null_block.ref_cnt == 1
    assert pool.num_free == 3
    got = pool.get_new_blocks(3)
    assert [b.id for b in got] == [1, 2, 3]


def test_get_new_blocks_evicts_cached_content_lru_first():
    evicted = []
    pool = BlockPool(3, on_evict=evicted.append)
    a, b, c = pool.get_new_blocks(3)
    for blk, h in ((a, 11), (b, 22)):
        blk.fill = 4
        pool.cache(blk, h)
    # Free c, then b, then a: the queue's head is evicted first.
    for blk in (c, b, a):
        pool.release(blk)
    assert pool.free_queue.ids() == [2, 1, 0]
    assert pool.num_cached_free == 2
    got = pool.get_new_blocks(2)
    assert [x.id for x in got] == [2, 1]
    assert evicted == [1]
    assert pool.lookup(22) is None and pool.lookup(11) is a
    check_pool_links(pool)


def test_touch_revives_cached_block_from_middle_of_queue():
    pool = BlockPool(3)
    blocks = pool.get_new_blocks(3)
    pool.cache(blocks[1], 7)
    for b in blocks:
        pool.release(b)
    pool.touch(pool.lookup(7))
    assert pool.free_queue.ids() == [0, 2]
    assert blocks[1].ref_cnt == 1 and pool.num_cached_free == 0
    check_pool_links(pool)


def test_get_more_than_free_changes_nothing():
    pool = BlockPool(2)
    with pytest.raises(OutOfBlocks):
        pool.get_new_blocks(3)
    assert pool.num_free == 2 and pool.free_queue.ids() == [0, 1]


def test_duplicate_content_is_cached_once():
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    assert pool.cache(a, 5) is True
    assert pool.cache(b, 5) is False
    assert b.hash is None and pool.lookup(5) is a


def test_free_queue_prepend_goes_before_the_head_in_order_and_empty_pops_take_nothing():
    blocks = [Block(i) for i in range(6)]
    q = FreeBlockQueue(blocks[:3])
    q.prepend([blocks[4], blocks[3]])
    assert q.ids() == [4, 3, 0, 1, 2] and len(q) == 5
    assert q.pop_front(0) == [] and q.ids() == [4, 3, 0, 1, 2]
    assert [b.id for b in q.pop_front(3)] == [4, 3, 0]
    q.prepend([blocks[5]])
    assert [b.id for b in q.pop_front(3)] == [5, 1, 2] and len(q) == 0
