"""Invariants of the paged KV-cache manager and the scheduler.

The manager's hold at any moment; the scheduler's at every step boundary,
in both engine modes (``check_scheduler``; ``pagesim replay
--check-invariants N`` runs it during a real replay). Used after every step
of the property-based tests, and available to users who write their own
allocator policies. Each failure message names the broken invariant.
"""
from __future__ import annotations

from collections import Counter

from pagesim.sim.accounting import CATEGORIES
from pagesim.sim.block_keys import UNIQUE_KEY_BASE
from pagesim.sim.offload import OffloadingKVCacheManager, check_tier


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
    if isinstance(m, OffloadingKVCacheManager):
        check_tier(m.tier)
    live = sum(m.pool.blocks[b].fill for b in gpu)
    assert live == m.live_tokens, f"live_tokens {m.live_tokens} != {live} filled slots in held blocks"
    for b in m.pool.blocks:
        if b.hash is not None:
            assert b.fill == m.block_size, f"block {b.id} is cached but only {b.fill} slots full"
    check_split(m.usage(), m.capacity_tokens)


def check_plan(plan, kv) -> None:
    """A step plan is executable against the allocator's state right after
    ``schedule``: every scheduled sequence is held on the GPU with the
    block table the plan lists (if it lists tables), and every
    copy-on-write destination is a block of a sequence that runs in this
    step (a copy into a block freed in the same plan is a phantom copy)."""
    held = set()
    for i, sid in enumerate(plan.seq_ids):
        table = kv.block_table(sid)
        assert not kv.seqs[sid].on_cpu, f"step {plan.step}: scheduled sequence {sid} is swapped out"
        if plan.block_tables:
            assert plan.block_tables[i] == table, (
                f"step {plan.step}: plan lists a stale block table for sequence {sid}")
        held.update(table)
    for src, dst in plan.cow:
        assert dst in held, (
            f"step {plan.step}: copy-on-write ({src}, {dst}) into a block no running sequence holds")


def check_split(split, capacity: int) -> None:
    for k in CATEGORIES:
        assert getattr(split, k) >= 0, f"accounting category {k} is negative: {split}"
    assert split.capacity == capacity, f"accounting categories sum to {split.capacity}, not {capacity}"


def check_scheduler(sched) -> None:
    """The scheduler's state at a step boundary, and the manager's under it.

    The lazy decode set's lag (fast mode) lives on the scheduler side: the
    manager must be exact on its own, and the tokens the set decoded but has
    not written must each fit in their member's last block and make up the
    difference between the manager's count and the scheduler's."""
    kv = sched.kv
    running = sched.running
    assert running.keys == [sched.key(g) for g in running], "running list out of key order"
    assert running.keys == sorted(running.keys), "running keys not sorted"
    assert running.num_seqs == sum(len(g.seqs) for g in running), (
        f"running sequence count {running.num_seqs} != sequences of the running groups")
    for g in running:
        # finishing: done, holding its blocks until the next step is scheduled (async)
        assert g.status in ("running", "finishing"), f"group {g.gid} in the running list is {g.status}"
        for s in g.seqs:
            assert s.seq_id in kv.seqs, f"running sequence {s.seq_id} holds no KV"
    assert {g.gid for g, _ in sched.finishing} == {g.gid for g in running if g.status == "finishing"}, (
        "groups awaiting their finish are not exactly the finishing groups of the running list")
    for _, g in sched.swapped:
        assert g.status == "swapped", f"group {g.gid} in the swapped heap is {g.status}"
    running_gids = {g.gid for g in running}
    for gid, (ready, *_) in sched.held.items():
        # the engine answers every hold before the next step is scheduled
        assert gid in running_gids, f"group {gid} waits on a transfer but is not running"
        assert ready is not None, f"group {gid} waits on a transfer nobody timed"
        assert not any(m.group.gid == gid for m in sched.lazy.members.values()), (
            f"group {gid} waits on a transfer but decodes in the lazy set")
    check_decode_set(sched.lazy, kv, {g.seqs[0].seq_id for g in running})
    if kv.caps.paged:
        check_manager(kv)
    else:  # a contiguous baseline: its live count is what its regions hold
        held = sum(r.num_tokens for r in kv.seqs.values())
        assert held == kv.live_tokens, f"live_tokens {kv.live_tokens} != {held} tokens held"
    live = sched.live_tokens()
    check_split(kv.usage_from(live, *kv.counters(sched.pending_tokens())), kv.capacity_tokens)


def check_decode_set(lazy, kv, running_ids) -> None:
    """Each member's manager-side tokens plus its unwritten ones equal its
    up-to-date computed tokens; unwritten tokens fit in its unshared last
    block; the set's running totals match its members."""
    unwritten = computed = 0
    paged = kv.caps.paged
    for sid, m in lazy.members.items():
        assert sid in running_ids, f"lazy member {sid} is not a running sequence"
        c = m.seq.computed + lazy.D - m.d0
        lag = lazy.D - m.kd0
        assert lag >= 0, f"lazy member {sid} is written ahead of the set ({lag})"
        assert kv.num_tokens(sid) + lag == c, (
            f"lazy member {sid}: {kv.num_tokens(sid)} tokens in the manager + {lag} unwritten "
            f"!= {c} computed")
        if paged:
            last = kv.seqs[sid].table[-1]
            assert last.fill + lag <= lazy.bs and (lag == 0 or last.ref_cnt == 1), (
                f"lazy member {sid}: {lag} unwritten tokens do not fit its unshared last block")
            assert (lazy.D - c) % lazy.bs == m.cross, f"lazy member {sid}: stale crossing residue"
        unwritten += lag
        computed += c
    assert unwritten == lazy.unwritten, f"unwritten count {lazy.unwritten} != {unwritten}"
    assert computed == lazy.sum_computed, f"sum_computed {lazy.sum_computed} != {computed}"
