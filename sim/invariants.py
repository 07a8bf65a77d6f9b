"""Invariants of the paged KV-cache manager, checkable at any moment.

Used after every step of the property-based tests, and available to users
who write their own allocator policies. Each failure message names the
broken invariant.
"""
from __future__ import annotations

from collections import Counter

from pagesim.sim.accounting import CATEGORIES
from pagesim.sim.block_keys import UNIQUE_KEY_BASE


def check_pool_links(pool) -> set[int]:
    """The free queue holds each free block exactly once, live, and nothing
    else; its stale entries (lazy removals) are accounted for."""
    q = pool.free_queue
    assert not any(b.stale for b in q._front), "a block prepended to the free queue was removed"
    entries = q._front + q._q[q._h:]
    stale_total = sum(b.stale for b in pool.blocks)
    assert stale_total == q._stale, (
        f"free queue counts {q._stale} stale entries but the blocks carry {stale_total}")
    per_block = Counter(b.id for b in entries)
    for b in pool.blocks:
        assert per_block.get(b.id, 0) >= b.stale, (
            f"block {b.id} has {b.stale} stale free-queue entries but only "
            f"{per_block.get(b.id, 0)} entries are queued")
    live = list(q)
    assert len({b.id for b in live}) == len(live), "a block is live twice in the free queue"
    for b in live:
        assert b.ref_cnt == 0, f"block {b.id} is in the free queue with ref_cnt {b.ref_cnt}"
    assert len(live) == len(q), f"free-queue length {len(q)} != {len(live)} live entries"
    assert len(entries) == len(live) + q._stale, "free queue holds entries that are neither live nor stale"
    return {b.id for b in live}


def check_pool(pool, holders: Counter) -> None:
    """``holders``: block id -> number of block tables holding it."""
    queued_ids = check_pool_links(pool)
    null = pool.null_block
    for b in pool.blocks:
        expected = holders.get(b.id, 0) + (1 if b is null else 0)
        assert b.ref_cnt == expected, (
            f"ref count of block {b.id} is {b.ref_cnt} but {expected} tables hold it")
        queued = b.id in queued_ids
        assert queued == (b.ref_cnt == 0), (
            f"block {b.id}: in free queue={queued} but ref_cnt={b.ref_cnt}")
    used = sum(1 for b in pool.blocks if b.ref_cnt > 0)
    assert pool.num_free + used == pool.num_blocks, "free + in use != total blocks"
    entries = [(h, b) for h, b in pool.cached.items()]
    entries += [(h, b) for h, bs in pool.duplicates.items() for b in bs]
    for h, b in entries:
        assert b.hash == h, f"hash map entry {h} points to block {b.id} whose hash is {b.hash}"
    assert all(h in pool.cached and bs for h, bs in pool.duplicates.items()), (
        "a duplicate entry outlived the block the map returns for its hash")
    hashed = [b for b in pool.blocks if b.hash is not None]
    findable = [b for b in hashed if b.hash < UNIQUE_KEY_BASE]
    assert len(findable) == len(entries), "a block carries a hash that the map does not know"
    cached_free = sum(1 for b in hashed if b.ref_cnt == 0)
    assert cached_free == pool.num_cached_free, (
        f"num_cached_free {pool.num_cached_free} != {cached_free} hashed free blocks")


def check_manager(m) -> None:
    """All invariants of a ``PagedKVCacheManager``."""
    gpu, cpu = Counter(), Counter()
    for s in m.seqs.values():
        (cpu if s.on_cpu else gpu).update(b.id for b in s.table)
        assert len(s.table) == -(-s.num_tokens // m.block_size), (
            f"block table of {len(s.table)} blocks for {s.num_tokens} tokens")
        pool = m.cpu_pool if s.on_cpu else m.pool
        for b in s.table:
            assert pool.blocks[b.id] is b, f"block {b.id} of a table is not the pool's block {b.id}"
    check_pool(m.pool, gpu)
    if m.cpu_pool is not None:
        check_pool(m.cpu_pool, cpu)
    live = sum(m.pool.blocks[b].fill for b in gpu)
    assert live == m.live_tokens, f"live_tokens {m.live_tokens} != {live} filled slots in held blocks"
    for b in m.pool.blocks:
        if b.hash is not None:
            assert b.fill == m.block_size, f"block {b.id} is cached but only {b.fill} slots full"
    check_split(m.usage(), m.capacity_tokens)


def check_split(split, capacity: int) -> None:
    for k in CATEGORIES:
        assert getattr(split, k) >= 0, f"accounting category {k} is negative: {split}"
    assert split.capacity == capacity, f"accounting categories sum to {split.capacity}, not {capacity}"
