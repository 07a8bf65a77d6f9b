"""A CPU tier for the prefix cache: evicted blocks are kept in host memory.

vLLM's KV-offload connector and LMCache extend the GPU prefix cache with a
bounded pool of CPU blocks: a full block of known content that the GPU
evicts is copied to the CPU pool, and a later request whose prefix the GPU
no longer holds but the CPU pool does loads those blocks back over PCIe
instead of recomputing them. pagesim models that tier here, in the pure
core, on top of the paged manager:

* ``CpuPrefixTier`` is the CPU pool: ``capacity`` blocks, each holding the
  content of one block identity (its prefix-cache key), kept in LRU order.
  A store of a key it holds only refreshes it (nothing is copied); a store
  into a full pool drops the least recently used block and reuses its id.
* ``OffloadingKVCacheManager`` is a ``PagedKVCacheManager`` whose GPU
  evictions of known content are stored in the tier (``offload`` events),
  and whose prefix lookups continue in the tier where the GPU's cached
  prefix ends. A hit there takes a fresh GPU block for each loaded block
  (``alloc``, then ``load`` from its CPU block) and counts as cached: the
  scheduler computes only what follows (``load`` events, ``cpu_hit_tokens``).

The copies themselves are not priced here: the manager queues them
(``take_transfers``) and the engine decides what they cost, on the step or
on a PCIe link (``sim/engine/links.py``). pagesim offloads at eviction, as
the issue asks, not as vLLM's connector does when a block is completed; the
CPU pool keeps what the GPU has dropped, so a block is in at most one of
them as far as hits go (the GPU is looked up first).
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import islice
from typing import Protocol, runtime_checkable

from pagesim.sim.block_keys import UNIQUE_KEY_BASE, BlockKeys
from pagesim.sim.errors import InvalidArgument
from pagesim.sim.event_log import LOAD, OFFLOAD
from pagesim.sim.kv_cache_manager import PagedKVCacheManager


@runtime_checkable
class LoadsFromTier(Protocol):
    """A KV-cache manager whose ``allocate`` may load prefix blocks from a
    CPU tier (what the scheduler asks of it when transfers overlap compute)."""

    def blocks_loading(self, seq_id: int) -> int:
        """Blocks the last ``allocate`` loaded for ``seq_id`` (0: none)."""
        ...

    def take_transfers(self) -> tuple[list, list]:
        ...


def steps_before_offload(lazy, pool, k: int) -> int:
    """Steps (at most ``k``, at least 1) of a pure decode stretch whose
    block-boundary crossings evict known content only in the first step.

    With PCIe links on, an offload's copy enters the link at the start of
    the step that evicted it; a stretch that evicted later than its first
    step would have to know each step's start, so the fast mode ends it
    before the step that would evict (step-by-step mode takes that step on
    its own anyway). The free queue is read from its head only as far as
    the stretch's crossings reach: O(blocks the stretch takes)."""
    if not pool.num_cached_free or not lazy.paged:
        return k
    bs, cnt, r0 = lazy.bs, lazy.cross_count, lazy.D % lazy.bs
    full, rest = divmod(k, bs)
    total = full * len(lazy) + sum(cnt[(r0 + j) % bs] for j in range(rest))
    first = cnt[r0]
    pos = None
    for i, b in enumerate(islice(pool.free_queue, total)):
        if i >= first and b.hash is not None and b.hash < UNIQUE_KEY_BASE:
            pos = i
            break
    if pos is None:
        return k
    return max(1, lazy.memory_limit(k, pos))


class CpuPrefixTier:
    """``capacity`` CPU blocks holding evicted prefix content, LRU first.

    CPU block ids are their own space (as swap's CPU pool's are), from 0 to
    ``capacity - 1``; a dropped block's id is reused by the next store."""

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise InvalidArgument(f"cpu_offload_blocks must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.blocks: OrderedDict[int, int] = OrderedDict()   # key -> CPU block id, LRU first
        self._free = list(range(capacity - 1, -1, -1))       # pop() hands out 0, 1, 2, ...
        self.stores = 0        # blocks copied in
        self.drops = 0         # blocks dropped to make room

    def __len__(self) -> int:
        return len(self.blocks)

    def store(self, key: int) -> int | None:
        """Keep ``key``'s content; the CPU block it was copied to, or None
        when the tier already held it (then it only becomes most recent)."""
        blocks = self.blocks
        if key in blocks:
            blocks.move_to_end(key)
            return None
        if self._free:
            cpu = self._free.pop()
        else:
            _, cpu = blocks.popitem(last=False)
            self.drops += 1
        blocks[key] = cpu
        self.stores += 1
        return cpu

    def run(self, keys: BlockKeys, start: int, limit: int) -> list[tuple[int, int]]:
        """(key, CPU block) of the blocks ``start, start + 1, ...`` (below
        ``limit``) that the tier holds, up to the first it does not."""
        out, blocks, key = [], self.blocks, keys.key
        for i in range(start, limit):
            k = key(i)
            cpu = blocks.get(k)
            if cpu is None:
                break
            out.append((k, cpu))
        return out

    def touch(self, key: int) -> None:
        self.blocks.move_to_end(key)


class OffloadingKVCacheManager(PagedKVCacheManager):
    """The paged manager with a CPU tier under its prefix cache (see the
    module docstring). Needs prefix caching: only blocks with a key can be
    found again."""

    def __init__(self, num_blocks: int, block_size: int, *, cpu_offload_blocks: int,
                 **kwargs) -> None:
        super().__init__(num_blocks, block_size, **kwargs)
        if not self.enable_prefix_caching:
            raise InvalidArgument("a CPU offload tier needs prefix caching")
        self.tier = CpuPrefixTier(cpu_offload_blocks)
        self.pool.on_evict_content = self._evicted
        self.cpu_hit_tokens = 0
        #: Copies made since the engine last took them: (GPU, CPU) block
        #: pairs offloaded, and (CPU, GPU, seq) pairs loaded.
        self.offloads: list[tuple[int, int]] = []
        self.loads: list[tuple[int, int, int]] = []
        self._last_load = (-1, 0)    # (seq, blocks) of the last allocate

    def _evicted(self, block_id: int, key: int) -> None:
        """A GPU block of known content lost it: keep the content on the
        CPU unless another GPU block still holds it (a duplicate)."""
        if key in self.pool.cached:
            return
        cpu = self.tier.store(key)
        if cpu is None:
            return
        self.offloads.append((block_id, cpu))
        if self.log is not None:
            self.log.add(None, OFFLOAD, cpu, block_id)

    def _cpu_run(self, num_tokens: int, keys: BlockKeys | None, gpu_hits: int) -> list:
        if keys is None:
            return []
        limit = min(keys.known_blocks, (num_tokens - 1) // self.block_size)
        return self.tier.run(keys, gpu_hits, limit)

    def num_cached_tokens(self, num_tokens: int, keys: BlockKeys | None) -> int:
        """Leading tokens found in either tier (the GPU's run, then the CPU's)."""
        gpu = len(self.cached_prefix(num_tokens, keys))
        return (gpu + len(self._cpu_run(num_tokens, keys, gpu))) * self.block_size

    def allocate(self, seq_id: int, num_tokens: int, keys: BlockKeys | None = None, *,
                 max_tokens: int | None = None, prompt_tokens: int = 0) -> int:
        """``PagedKVCacheManager.allocate``, plus the blocks loaded from the
        CPU tier: they are counted as cached (the returned tokens include
        them). They are made most recent in the tier first, so that the
        evictions this allocation causes drop other blocks before them."""
        gpu = len(self.cached_prefix(num_tokens, keys))
        run = self._cpu_run(num_tokens, keys, gpu)
        for key, _ in run:
            self.tier.touch(key)
        self._last_load = (seq_id, len(run))
        cached = super().allocate(seq_id, num_tokens, keys, max_tokens=max_tokens,
                                  prompt_tokens=prompt_tokens)
        if not run:
            return cached
        table, first = self.seqs[seq_id].table, cached // self.block_size
        for j, (_, cpu) in enumerate(run):
            gpu_block = table[first + j].id
            self.loads.append((cpu, gpu_block, seq_id))
            if self.log is not None:
                self.log.add(seq_id, LOAD, gpu_block, cpu)
        loaded = len(run) * self.block_size
        self.cpu_hit_tokens += loaded
        return cached + loaded

    def blocks_loading(self, seq_id: int) -> int:
        sid, n = self._last_load
        return n if sid == seq_id else 0

    def take_transfers(self) -> tuple[list, list]:
        """(offloads, loads) made since the last call, for the engine."""
        out = self.offloads, self.loads
        self.offloads, self.loads = [], []
        return out


def check_tier(tier: CpuPrefixTier) -> None:
    """The CPU tier's invariants: bounded, each CPU block holds one key,
    and every block is either holding a key or free, never both."""
    used = list(tier.blocks.values())
    assert len(used) <= tier.capacity, f"CPU tier holds {len(used)} blocks, capacity {tier.capacity}"
    assert len(set(used)) == len(used), "a CPU tier block holds two keys"
    assert sorted(used + tier._free) == list(range(tier.capacity)), (
        "CPU tier blocks are not exactly the used ones plus the free ones")
    assert tier.stores - tier.drops == len(used), (
        f"CPU tier: {tier.stores} stores - {tier.drops} drops != {len(used)} held")
    assert all(k < UNIQUE_KEY_BASE for k in tier.blocks), "CPU tier holds content nobody can look up"


def tier_summary(scheds, kvs) -> dict:
    """The prefix cache's hits split by tier (the schedulers' counters: first
    admissions, as the summary's ``hit_rate_tokens``, which is the GPU
    tier's) and the CPU tiers' traffic, summed over replicas (``kvs``:
    their ``OffloadingKVCacheManager``s), for ``summary.json``; rates are
    None when nothing was queried."""
    q = sum(s.prefix_cache_queries for s in scheds)
    gpu = sum(s.prefix_cache_hits for s in scheds)
    cpu = sum(s.prefix_cache_cpu_hits for s in scheds)
    return {
        "gpu_hit_tokens": gpu, "cpu_hit_tokens": cpu, "queried_tokens": q,
        "gpu_hit_rate_tokens": gpu / q if q else None,
        "cpu_hit_rate_tokens": cpu / q if q else None,
        "hit_rate_tokens": (gpu + cpu) / q if q else None,
        "cpu_offload_blocks": sum(kv.tier.capacity for kv in kvs),
        "offloaded_blocks": sum(kv.tier.stores for kv in kvs),
        "dropped_blocks": sum(kv.tier.drops for kv in kvs),
        "loaded_blocks": sum(kv.cpu_hit_tokens // kv.block_size for kv in kvs),
    }
