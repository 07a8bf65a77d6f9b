"""Paged KV-cache manager: per-sequence block tables over one block pool.

Both generations of vLLM's block manager live here, because users compare
them: V1 prefix caching (chained block hashes, LRU reuse of freed blocks) and
V0 fork / copy-on-write for parallel sampling and beam search, plus swapping
to a CPU pool (``sim/swap.py``); the fast mode's bulk decode primitives are
in ``sim/bulk_decode.py``. Each action has a check beside it
(``can_allocate`` / ``allocate``, ``can_append`` / ``append_slots``); a
failed action raises before changing anything.

Block table of a sequence with ``num_tokens = 37``, ``block_size = 16``::

    logical  | 0: tokens 0-15 | 1: tokens 16-31 | 2: tokens 32-36 + 11 empty |
    physical |     b7         |      b2         |      b9                    |

Blocks 0 and 1 are full and (with prefix caching) hashed; block 2 is partial
and never shared through the cache, only through ``fork``.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagesim.sim.accounting import MemorySplit
from pagesim.sim.block_keys import UNIQUE_KEY_BASE, BlockKeys
from pagesim.sim.block_pool import Block, BlockPool
from pagesim.sim.errors import InvalidArgument, OutOfBlocks, UnknownSequence
from pagesim.sim.event_log import ALLOC, CACHE_HIT, COW, EVICT, FORK, FREE, EventLog
from pagesim.sim.kv_protocol import Capabilities
from pagesim.sim.bulk_decode import BulkDecodeMixin
from pagesim.sim.swap import SwapMixin


@dataclass(slots=True)
class SeqState:
    table: list[Block]        # physical blocks, logical order (ids: ``block_table``)
    num_tokens: int           # token slots in use
    keys: BlockKeys | None    # content identities for prefix caching
    num_hashed: int = 0       # leading full blocks already given a key
    on_cpu: bool = False      # swapped out: table holds CPU pool blocks


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class PagedKVCacheManager(SwapMixin, BulkDecodeMixin):
    """Block tables for sequences, on a pool of ``num_blocks`` GPU blocks.

    Sequence ids are ints, unique within a run (a forked child has its own).
    ``live_tokens`` is the number of token slots holding live K/V, counting
    a shared block once: it is what makes memory sharing measurable.
    Implements ``sim.kv_protocol.KVCacheManager``.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = False,
        num_cpu_blocks: int = 0,
        null_block: bool = False,
        unhashed_first: bool = False,
        cache_duplicates: bool = False,
        event_log: EventLog | None = None,
    ) -> None:
        if not isinstance(block_size, int) or not 1 <= block_size <= 256:
            raise InvalidArgument(f"block_size must be an int in 1..256, got {block_size!r}")
        if not isinstance(num_cpu_blocks, int) or num_cpu_blocks < 0:
            raise InvalidArgument(f"num_cpu_blocks must be an int >= 0, got {num_cpu_blocks!r}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.log = event_log
        on_evict = (lambda b: event_log.add(None, EVICT, b)) if event_log is not None else None
        self.pool = BlockPool(num_blocks, null_block=null_block, unhashed_first=unhashed_first,
                              cache_duplicates=cache_duplicates, on_evict=on_evict)
        self.cpu_pool = BlockPool(num_cpu_blocks) if num_cpu_blocks else None
        self.caps = Capabilities(paged=True, prefix_caching=enable_prefix_caching, fork=True,
                                 swap=self.cpu_pool is not None, needs_final_length=False)
        self.seqs: dict[int, SeqState] = {}
        self.live_tokens = 0
        self._next_unique = UNIQUE_KEY_BASE
        # Statistics for the simulator's summary.
        self.hit_tokens = 0
        self.queried_tokens = 0

    # ------------------------------------------------------------------ queries
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)

    def _seq(self, seq_id: int) -> SeqState:
        s = self.seqs.get(seq_id)
        if s is None:
            raise UnknownSequence(f"sequence {seq_id} is not held by the KV-cache manager")
        return s

    def block_table(self, seq_id: int) -> list[int]:
        """Physical block ids of the sequence, in logical order (a copy).

        Internally a table holds the ``Block`` objects themselves: freeing
        and decoding then never look a block up by id, which on large pools
        is a cache miss per block."""
        return [b.id for b in self._seq(seq_id).table]

    def num_tokens(self, seq_id: int) -> int:
        return self._seq(seq_id).num_tokens

    def num_blocks_held(self, seq_id: int) -> int:
        return len(self._seq(seq_id).table)

    def rejection(self, prompt_tokens: int, output_tokens: int, forks: int,
                  watermark_blocks: int) -> str | None:
        """Forked sequences (beams, V0 samples) each end up with their own
        copy of the prompt's last partial block and their own output blocks."""
        bs = self.block_size
        if forks > 1:
            need = cdiv(prompt_tokens, bs) + forks * (cdiv(output_tokens, bs) + 1)
        else:
            need = cdiv(prompt_tokens + output_tokens, bs)
        have = self.pool.num_usable - watermark_blocks  # the null block is never usable
        return f"needs {need} KV blocks, the cache has {have} usable" if need > have else None

    # ----------------------------------------------------------- prefix cache
    def cached_prefix(self, num_tokens: int, keys: BlockKeys | None) -> list[Block]:
        """Longest run of cached leading blocks usable for a new sequence of
        ``num_tokens`` tokens. The last token is always recomputed (its
        logits are needed), so at most ``(num_tokens - 1) // block_size``
        blocks can hit."""
        if not self.enable_prefix_caching or keys is None:
            return []
        limit = min(keys.known_blocks, (num_tokens - 1) // self.block_size)
        hits = []
        lookup = self.pool.cached.get
        for i in range(limit):
            b = lookup(keys.key(i))
            if b is None:
                break
            hits.append(b)
        return hits

    def num_cached_tokens(self, num_tokens: int, keys: BlockKeys | None) -> int:
        return len(self.cached_prefix(num_tokens, keys)) * self.block_size

    # ---------------------------------------------------------------- allocate
    def _allocate_need(self, num_tokens: int, hits: list[Block]) -> int:
        """Free blocks consumed: new blocks plus idle hit blocks revived."""
        revived = sum(1 for b in hits if b.ref_cnt == 0)
        return cdiv(num_tokens, self.block_size) - len(hits) + revived

    def can_allocate(self, num_tokens: int, keys: BlockKeys | None = None, *,
                     watermark_blocks: int = 0, max_tokens: int | None = None,
                     prompt_tokens: int = 0) -> bool:
        if num_tokens <= 0:
            return False
        hits = self.cached_prefix(num_tokens, keys)
        return self._allocate_need(num_tokens, hits) + watermark_blocks <= self.pool.num_free

    def allocate(self, seq_id: int, num_tokens: int, keys: BlockKeys | None = None, *,
                 max_tokens: int | None = None, prompt_tokens: int = 0) -> int:
        """Give a new sequence slots for its first ``num_tokens`` tokens,
        reusing its longest cached prefix. Returns the number of tokens whose
        K/V was found in the cache (the scheduler skips computing them).
        ``max_tokens`` (final length) and ``prompt_tokens`` are ignored here:
        paged memory grows on demand; the contiguous baselines need them."""
        if seq_id in self.seqs:
            raise InvalidArgument(f"sequence {seq_id} already has a block table")
        if not isinstance(num_tokens, int) or num_tokens <= 0:
            raise InvalidArgument(f"num_tokens must be a positive int, got {num_tokens!r}")
        hits = self.cached_prefix(num_tokens, keys)
        need = self._allocate_need(num_tokens, hits)
        if need > self.pool.num_free:
            raise OutOfBlocks(f"sequence {seq_id}: needs {need} blocks, {self.pool.num_free} free")
        log, bs = self.log, self.block_size
        for b in hits:
            if b.ref_cnt == 0:
                self.live_tokens += bs
            self.pool.touch(b)
            if log is not None:
                log.add(seq_id, CACHE_HIT, b.id)
        new = self.pool.get_new_blocks(cdiv(num_tokens, bs) - len(hits), fill=bs)
        if new:
            new[-1].fill = num_tokens - (len(hits) + len(new) - 1) * bs
        table = hits + new
        if log is not None:
            for b in new:
                log.add(seq_id, ALLOC, b.id)
        self.live_tokens += num_tokens - len(hits) * bs
        s = SeqState(table, num_tokens, keys, num_hashed=len(hits))
        self.seqs[seq_id] = s
        self._hash_full_blocks(s)
        cached = len(hits) * bs
        if self.enable_prefix_caching:
            self.hit_tokens += cached
            self.queried_tokens += num_tokens
        return cached

    def _hash_full_blocks(self, s: SeqState) -> None:
        """Enter every newly full block of ``s`` into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full = s.num_tokens // self.block_size
        keys, cached = s.keys, self.pool.cached
        dups = self.pool.duplicates if self.pool.cache_duplicates else None
        known = keys.known_blocks if keys is not None else 0
        for i in range(s.num_hashed, full):
            b = s.table[i]
            if b.hash is not None:  # shared with a fork sibling that hashed it
                continue
            if i < known:
                h = keys.key(i)
                # Inlined BlockPool.cache (see there for duplicates).
                if h not in cached:
                    cached[h] = b
                    b.hash = h
                elif dups is not None:
                    dups.setdefault(h, []).append(b)
                    b.hash = h
            else:
                # Unknown content: a unique key nobody can look up, so it
                # needs no map entry (see BlockPool.get_new_blocks).
                b.hash = self._next_unique
                self._next_unique += 1
        if full > s.num_hashed:
            s.num_hashed = full

    # ------------------------------------------------------------------ append
    def _append_need(self, s: SeqState, n: int) -> tuple[int, bool]:
        """(new blocks, whether the shared partial last block must be copied)."""
        bs = self.block_size
        new_blocks = -(-(s.num_tokens + n) // bs) - len(s.table)
        last = s.table[-1]
        return new_blocks, (n > 0 and last.ref_cnt > 1 and last.fill < bs)

    def can_append(self, seq_id: int, n: int = 1) -> bool:
        s = self._seq(seq_id)
        if s.on_cpu:
            return False
        new_blocks, cow = self._append_need(s, n)
        return new_blocks + cow <= self.pool.num_free

    def append_slots(self, seq_id: int, n: int = 1) -> list[tuple[int, int]]:
        """Make room for ``n`` more tokens; a new block only when the last one
        is full. If the last block is partial and shared (after ``fork``), it
        is copied first: the ``(src, dst)`` pair is returned so an executor
        can copy the data. Returns ``[]`` when nothing had to be copied."""
        s = self.seqs.get(seq_id)
        if s is None or s.on_cpu or not isinstance(n, int) or n < 0:
            self._reject_append(seq_id, s, n)
        bs = self.block_size
        table = s.table
        last = table[-1]
        room = bs - last.fill
        if last.ref_cnt == 1 and n <= room:
            # Fast path: an unshared last block with room left.
            last.fill += n
            s.num_tokens += n
            self.live_tokens += n
            if n == room and self.enable_prefix_caching:
                self._hash_full_blocks(s)
            return []
        new_blocks = (s.num_tokens + n + bs - 1) // bs - len(table)
        cow = n > 0 and room > 0 and last.ref_cnt > 1
        if new_blocks + cow > self.pool.free_queue._len:
            raise OutOfBlocks(f"sequence {seq_id}: needs {new_blocks + cow} blocks, "
                              f"{self.pool.num_free} free")
        pairs = []
        if cow:
            pairs.append(self._copy_on_write(seq_id, s))
            last = s.table[-1]
        left = n
        take = bs - last.fill
        if take > left:
            take = left
        last.fill += take
        left -= take
        log = self.log
        for b in self.pool.get_new_blocks(new_blocks):
            b.fill = bs if left >= bs else left
            left -= b.fill
            table.append(b)
            if log is not None:
                log.add(seq_id, ALLOC, b.id)
        s.num_tokens += n
        self.live_tokens += n
        if self.enable_prefix_caching:
            self._hash_full_blocks(s)
        return pairs

    def _reject_append(self, seq_id: int, s: SeqState | None, n) -> None:
        if s is None:
            raise UnknownSequence(f"sequence {seq_id} is not held by the KV-cache manager")
        if s.on_cpu:
            raise InvalidArgument(f"sequence {seq_id} is swapped out; swap it in before appending")
        raise InvalidArgument(f"n must be an int >= 0, got {n!r}")

    def _copy_on_write(self, seq_id: int, s: SeqState) -> tuple[int, int]:
        src = s.table[-1]
        dst = self.pool.get_new_blocks(1)[0]
        dst.fill = src.fill
        self.live_tokens += src.fill
        released = self.pool.release(src)
        assert not released, f"copy-on-write source block {src.id} had no other holder"
        s.table[-1] = dst
        if self.log is not None:
            self.log.add(seq_id, COW, dst.id, src.id)
        return (src.id, dst.id)

    # -------------------------------------------------------------- fork, free
    def fork(self, parent_id: int, child_id: int) -> None:
        """Child shares every block of the parent (ref counts up, nothing
        allocated); later appends copy a shared partial last block."""
        p = self._seq(parent_id)
        if child_id in self.seqs:
            raise InvalidArgument(f"sequence {child_id} already has a block table")
        if p.on_cpu:
            raise InvalidArgument(f"sequence {parent_id} is swapped out; cannot fork it")
        log = self.log
        for b in p.table:
            b.ref_cnt += 1
            if log is not None:
                log.add(child_id, FORK, b.id)
        keys = p.keys.truncated(p.num_tokens // self.block_size) if p.keys is not None else None
        self.seqs[child_id] = SeqState(list(p.table), p.num_tokens, keys, p.num_hashed)

    def free(self, seq_id: int) -> None:
        """Release a sequence's blocks, tail first (see ``BlockPool``)."""
        s = self.seqs.get(seq_id)
        if s is None:
            raise UnknownSequence(f"cannot free sequence {seq_id}: not held")
        if s.on_cpu:
            self._free_on_cpu(seq_id, s)
            return
        del self.seqs[seq_id]
        self.live_tokens -= self.pool.release_all(reversed(s.table))
        if self.log is not None:
            for b in reversed(s.table):
                self.log.add(seq_id, FREE, b.id)

    # ------------------------------------------------------------- accounting
    def counters(self, pending_tokens: tuple[int, int] | None = None) -> tuple:
        """Everything ``usage`` depends on besides ``live_tokens``: a cheap
        snapshot the fast engine takes at allocator events."""
        return (self.pool.num_free, self.pool.num_cached_free)

    def usage_from(self, live, num_free, num_cached_free) -> MemorySplit:
        """The accounting formula, written once. Arithmetic only, so it
        works on ints (``usage``) and on numpy arrays (per-step tables)."""
        bs, pool = self.block_size, self.pool
        null = 1 if pool.null_block is not None else 0
        return MemorySplit(
            token_states=live,
            reserved=null * bs + live * 0,
            internal_frag=(pool.num_blocks - num_free - null) * bs - live,
            external_frag=live * 0,
            cached_free=num_cached_free * bs,
            free=(num_free - num_cached_free) * bs,
        )

    def usage(self, pending_tokens: tuple[int, int] | None = None) -> MemorySplit:
        """Where the GPU pool's token slots are now (``pending_tokens`` is
        ignored: paged memory has no external fragmentation)."""
        return self.usage_from(self.live_tokens, *self.counters())

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size
