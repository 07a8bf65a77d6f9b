"""Random interleavings of allocator operations, invariants after each step.

Token contents come from a tiny alphabet of shared prefixes so that prefix
hits, revivals from the free queue and evictions all happen often.
"""
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagesim.sim.block_keys import BlockKeys
from pagesim.sim.errors import OutOfBlocks
from pagesim.sim.event_log import EventLog
from pagesim.sim.invariants import check_manager
from pagesim.sim.kv_cache_manager import PagedKVCacheManager

PREFIXES = [tuple(range(0, 40)), tuple(range(0, 20)) + tuple(range(100, 120)), tuple(range(200, 240))]
EXAMPLES = int(os.environ.get("PAGESIM_STATEFUL_EXAMPLES", "300"))


def snapshot(m):
    return (
        [(b.ref_cnt, b.hash, b.fill) for b in m.pool.blocks],
        m.pool.free_queue.ids(),
        {k: ([b.id for b in s.table], s.num_tokens, s.on_cpu) for k, s in m.seqs.items()},
        m.live_tokens,
    )


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = None
        self.next_id = 0

    @precondition(lambda self: self.m is None)
    @rule(num_blocks=st.integers(2, 24), block_size=st.sampled_from([1, 2, 3, 4, 16]),
          caching=st.booleans(), cpu=st.integers(0, 16), null=st.booleans())
    def init(self, num_blocks, block_size, caching, cpu, null):
        self.m = PagedKVCacheManager(num_blocks, block_size, enable_prefix_caching=caching,
                                     num_cpu_blocks=cpu, null_block=null, event_log=EventLog())

    def on_gpu(self):
        return sorted(k for k, s in self.m.seqs.items() if not s.on_cpu)

    def on_cpu(self):
        return sorted(k for k, s in self.m.seqs.items() if s.on_cpu)

    @precondition(lambda self: self.m is not None)
    @rule(prefix=st.integers(0, 2), length=st.integers(1, 40), tail=st.integers(0, 5))
    def allocate(self, prefix, length, tail):
        toks = PREFIXES[prefix][:length] + tuple(range(1000 + tail, 1000 + tail + tail))
        keys = BlockKeys(self.m.block_size, token_ids=toks)
        sid, self.next_id = self.next_id, self.next_id + 1
        before = snapshot(self.m)
        if self.m.can_allocate(len(toks), keys):
            cached = self.m.allocate(sid, len(toks), keys)
            assert 0 <= cached < len(toks) and cached % self.m.block_size == 0
        else:
            try:
                self.m.allocate(sid, len(toks), keys)
                raise AssertionError("allocate succeeded after can_allocate said no")
            except OutOfBlocks:
                assert snapshot(self.m) == before, "a failed allocate changed state"

    @precondition(lambda self: self.m is not None)
    @rule(data=st.data(), n=st.integers(1, 9))
    def append(self, data, n):
        seqs = self.on_gpu()
        if not seqs:
            return
        sid = data.draw(st.sampled_from(seqs))
        before = snapshot(self.m)
        if self.m.can_append(sid, n):
            pairs = self.m.append_slots(sid, n)
            assert len(pairs) <= 1
        else:
            try:
                self.m.append_slots(sid, n)
                raise AssertionError("append succeeded after can_append said no")
            except OutOfBlocks:
                assert snapshot(self.m) == before, "a failed append changed state"

    def _writable(self, sid):
        """Room left in the sequence's last block, if it is unshared."""
        s = self.m.seqs[sid]
        last = s.table[-1]
        return self.m.block_size - last.fill if last.ref_cnt == 1 else 0

    @precondition(lambda self: self.m is not None)
    @rule(data=st.data())
    def write_in_place(self, data):
        # The fast path's bulk write: tokens known to fit in unshared last blocks.
        seqs = [sid for sid in self.on_gpu() if self._writable(sid)]
        if not seqs:
            return
        picked = data.draw(st.lists(st.sampled_from(seqs), min_size=1, max_size=3, unique=True))
        counts = [data.draw(st.integers(0, self._writable(sid))) for sid in picked]
        tokens = {sid: self.m.num_tokens(sid) for sid in picked}
        self.m.write_in_place(picked, counts)
        for sid, n in zip(picked, counts):
            assert self.m.num_tokens(sid) == tokens[sid] + n

    @precondition(lambda self: self.m is not None)
    @rule(data=st.data())
    def cross_blocks(self, data):
        # The fast path's block-boundary crossings: fill each last block
        # exactly (unshared if written into), then one token in a new block.
        bs = self.m.block_size
        seqs = [sid for sid in self.on_gpu()
                if self._writable(sid) or self.m.seqs[sid].table[-1].fill == bs]
        if not seqs:
            return
        picked = data.draw(st.lists(st.sampled_from(seqs), min_size=1, max_size=3, unique=True))
        lags = [bs - self.m.seqs[sid].table[-1].fill for sid in picked]
        before = snapshot(self.m)
        if len(picked) > self.m.num_free_blocks:
            try:
                self.m.cross_blocks(picked, lags)
                raise AssertionError("cross_blocks succeeded without enough free blocks")
            except OutOfBlocks:
                assert snapshot(self.m) == before, "a failed cross_blocks changed state"
            return
        tokens = {sid: self.m.num_tokens(sid) for sid in picked}
        self.m.cross_blocks(picked, lags)
        for sid, lag in zip(picked, lags):
            s = self.m.seqs[sid]
            assert s.num_tokens == tokens[sid] + lag + 1 and s.table[-1].fill == 1

    @precondition(lambda self: self.m is not None)
    @rule(data=st.data())
    def fork(self, data):
        seqs = self.on_gpu()
        if not seqs:
            return
        parent = data.draw(st.sampled_from(seqs))
        free = self.m.num_free_blocks
        self.m.fork(parent, self.next_id)
        self.next_id += 1
        assert self.m.num_free_blocks == free, "fork allocated blocks"

    @precondition(lambda self: self.m is not None)
    @rule(data=st.data())
    def free(self, data):
        seqs = sorted(self.m.seqs)
        if seqs:
            self.m.free(data.draw(st.sampled_from(seqs)))

    @precondition(lambda self: self.m is not None and self.m.cpu_pool is not None)
    @rule(data=st.data())
    def swap_out(self, data):
        seqs = self.on_gpu()
        if not seqs:
            return
        group = data.draw(st.lists(st.sampled_from(seqs), min_size=1, max_size=3, unique=True))
        before = snapshot(self.m)
        if self.m.can_swap_out(group):
            pairs = self.m.swap_out(group)
            assert len({g for g, _ in pairs}) == len(pairs), "a shared block was moved twice"
        else:
            try:
                self.m.swap_out(group)
                raise AssertionError("swap_out succeeded after can_swap_out said no")
            except OutOfBlocks:
                assert snapshot(self.m) == before

    @precondition(lambda self: self.m is not None and self.m.cpu_pool is not None)
    @rule(data=st.data())
    def swap_in(self, data):
        seqs = self.on_cpu()
        if not seqs:
            return
        group = data.draw(st.lists(st.sampled_from(seqs), min_size=1, max_size=3, unique=True))
        if self.m.can_swap_in(group):
            self.m.swap_in(group)

    @invariant()
    def invariants_hold(self):
        if self.m is not None:
            check_manager(self.m)

    def teardown(self):
        if self.m is None:
            return
        for sid in list(self.m.seqs):
            self.m.free(sid)
        check_manager(self.m)
        null = 1 if self.m.pool.null_block is not None else 0
        assert self.m.num_free_blocks == self.m.pool.num_blocks - null, "blocks leaked"
        assert self.m.live_tokens == 0


AllocatorMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestAllocator = AllocatorMachine.TestCase
