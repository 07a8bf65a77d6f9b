"""Physical KV blocks, their free queue, and the prefix-cache map.

Eviction policy (stated once, carried by list position): the free queue is
ordered from "evict first" (head) to "evict last" (tail). New blocks are
popped from the head; a block whose ref count drops to 0 is appended at the
tail, keeping its content hash so that a later request can still hit it.
Callers free a sequence's blocks tail-first, so within one freed sequence the
tail blocks (least likely to be shared) are evicted before its head blocks.
This is least-recently-used order without any timestamps (vLLM V1).

Two refinements of today's vLLM (``unhashed_first``, ``cache_duplicates``;
see the profile table in README): a freed block without a hash can never be
hit, so it goes to the head instead (reused first, sparing cached prefixes);
and when two blocks fill with the same content, both stay findable under
the hash (the oldest surviving one is returned), so evicting one removes
only its own entry.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagesim.sim.block_keys import UNIQUE_KEY_BASE
from pagesim.sim.errors import InvalidArgument, OutOfBlocks


@dataclass(slots=True, eq=False)
class Block:
    """One physical block: ``block_size`` token slots of K/V.

    ``fill`` counts the slots written. ``hash`` is set while the block is in
    the prefix-cache map (full blocks only). ``stale`` counts this block's
    entries that ``FreeBlockQueue.remove`` left behind in the free queue.
    """

    id: int
    ref_cnt: int = 0
    fill: int = 0
    hash: int | None = None
    stale: int = 0


class FreeBlockQueue:
    """The free blocks (``ref_cnt == 0``) in eviction order, head first.

    O(1) ``popleft``, ``append`` and ``remove`` from the middle (a cached
    block revived by a prefix hit), like an intrusive doubly linked list,
    but stored as an array of entries: popping ``n`` blocks is one slice
    and freeing a sequence one ``extend``, with no per-block relinking
    (measured 2-3x faster for the simulator's bulk allocations and frees).

    ``remove`` is lazy: it counts the block's entry as stale (``Block.stale``)
    and pops skip it later. A block's stale entries always precede its live
    one (a block is re-appended at the tail), so the first entry of a block
    with ``stale > 0`` is a stale one. The array is compacted once the popped
    prefix is half of it, so memory stays O(blocks) and every operation
    O(1) amortised.

    ``prepend`` puts blocks before the head. They live in a second array,
    ``_front``, stored reversed (its end is the queue's head), so prepending
    and popping them are O(1) too. Only blocks without a hash are prepended
    and only hashed ones are ever removed (revived by a cache hit), so
    ``_front`` never holds a stale entry and the order rule above holds.
    """

    _COMPACT_MIN = 1024

    def __init__(self, blocks: list[Block]) -> None:
        self._q: list[Block] = list(blocks)
        self._h = 0           # entries before _h were popped
        self._len = len(self._q)
        self._stale = 0       # stale entries at or after _h
        self._front: list[Block] = []  # prepended blocks, reversed: _front[-1] is the head

    def __len__(self) -> int:
        return self._len

    def popleft(self) -> Block:
        if self._len == 0:
            raise OutOfBlocks("free queue is empty")
        return self.pop_front(1)[0]

    def pop_front(self, n: int) -> list[Block]:
        """Remove and return the first ``n`` live blocks (``n <= len``)."""
        assert 0 <= n <= self._len, f"pop of {n} blocks from a queue of {self._len}"
        front = self._front
        if front and n:  # (n == 0 would slice all of front: front[-0:])
            k = n if n < len(front) else len(front)
            taken = front[-k:]
            del front[-k:]
            taken.reverse()
            if k == n:
                self._len -= n
                return taken
            rest = self._pop_main(n - k)
            self._len -= n
            return taken + rest
        if not self._stale:
            # _pop_main's common case inlined (the simulator's hottest call):
            # one slice of the main array, nothing stale to skip
            q, h = self._q, self._h
            out = q[h:h + n]
            h += n
            if h > self._COMPACT_MIN and 2 * h > len(q):
                del q[:h]
                h = 0
            self._h = h
            self._len -= n
            return out
        out = self._pop_main(n)
        self._len -= n
        return out

    def _pop_main(self, n: int) -> list[Block]:
        """Pop ``n`` live blocks from the main array (``_len`` is the caller's)."""
        q, h = self._q, self._h
        if not self._stale:
            out = q[h:h + n]
            h += n
        else:
            out = []
            while len(out) < n:
                b = q[h]
                h += 1
                if b.stale:  # left behind by remove(): skip
                    b.stale -= 1
                    self._stale -= 1
                else:
                    out.append(b)
        if h > self._COMPACT_MIN and 2 * h > len(q):
            del q[:h]
            h = 0
        self._h = h
        return out

    def append(self, b: Block) -> None:
        assert b.ref_cnt == 0, f"block {b.id} queued as free with ref_cnt {b.ref_cnt}"
        self._q.append(b)
        self._len += 1

    def extend(self, blocks: list[Block]) -> None:
        """Append ``blocks`` in order (they must be free)."""
        self._q.extend(blocks)
        self._len += len(blocks)

    def prepend(self, blocks: list[Block]) -> None:
        """Put ``blocks`` before the head, in order (``blocks[0]`` becomes
        the head). For blocks without a hash only (see the class docstring)."""
        self._front.extend(reversed(blocks))
        self._len += len(blocks)

    def remove(self, b: Block) -> None:
        assert b.ref_cnt == 0, f"block {b.id} is not free (ref_cnt {b.ref_cnt}), so not queued"
        b.stale += 1
        self._stale += 1
        self._len -= 1

    def __iter__(self):
        yield from reversed(self._front)
        skip: dict[int, int] = {}
        for b in self._q[self._h:]:
            left = skip.get(b.id, b.stale)
            if left:
                skip[b.id] = left - 1
            else:
                skip[b.id] = 0
                yield b

    def ids(self) -> list[int]:
        """Block ids from head (evicted first) to tail."""
        return [b.id for b in self]


class BlockPool:
    """``num_blocks`` blocks, a free queue, and ``hash -> block`` for caching.

    The pool knows nothing about sequences: the KV-cache manager decides
    which blocks a sequence holds. The pool keeps two counters the memory
    accounting needs in O(1): free blocks, and free blocks that still hold
    cached content.

    ``cached`` maps a hash to the oldest surviving block under it (what a
    lookup returns); with ``cache_duplicates`` the younger blocks of equal
    content wait in ``duplicates`` (hash -> blocks, oldest first) and take
    over when the one in ``cached`` is evicted.
    """

    def __init__(self, num_blocks: int, *, null_block: bool = False, unhashed_first: bool = False,
                 cache_duplicates: bool = False, on_evict=None) -> None:
        if not isinstance(num_blocks, int) or num_blocks <= 0:
            raise InvalidArgument(f"num_blocks must be a positive int, got {num_blocks!r}")
        if null_block and num_blocks < 2:
            raise InvalidArgument("a pool with a null block needs at least 2 blocks")
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[int, Block] = {}
        self.duplicates: dict[int, list[Block]] = {}
        self.unhashed_first = unhashed_first
        self.cache_duplicates = cache_duplicates
        self.num_cached_free = 0
        self.on_evict = on_evict  # callback(block_id) for the event log
        #: callback(block_id, key) when a block of known content (a key
        #: below UNIQUE_KEY_BASE) is evicted: the CPU offload tier's hook
        #: (``sim/offload.py``); None: no tier.
        self.on_evict_content = None
        self.null_block: Block | None = None
        if null_block:
            # Block 0 pads block tables (vLLM V1): held forever, never freed.
            self.null_block = self.free_queue.popleft()
            self.null_block.ref_cnt = 1

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        # the queue's count read directly, as get_new_blocks does: len()
        # would be a second Python call (this is read at every allocator
        # event of a replay)
        return self.free_queue._len

    @property
    def num_usable(self) -> int:
        """Blocks a sequence can ever hold (all but the null block)."""
        return len(self.blocks) - (self.null_block is not None)

    def get_new_blocks(self, n: int, fill: int = 0) -> list[Block]:
        """Pop ``n`` blocks from the head, evicting cached content; each gets
        ref 1 and ``fill`` written slots.

        The hottest path of the simulator: one slice of the queue, and the
        eviction check only while some free block holds cached content.
        Blocks under a unique key (content nobody else can have, see
        ``sim.block_keys``) are not in the map, so evicting them is just
        forgetting the key.
        """
        q = self.free_queue
        if n > q._len:
            raise OutOfBlocks(f"need {n} blocks, {q._len} free")
        out = q.pop_front(n)
        if not self.num_cached_free:
            for b in out:
                b.ref_cnt = 1
                b.fill = fill
        elif self.on_evict is None and self.on_evict_content is None:
            evicted = 0  # (no callback can read the count mid-loop)
            for b in out:
                h = b.hash
                if h is not None:  # evict: the block loses its cached content
                    if h < UNIQUE_KEY_BASE:
                        self._forget(b, h)
                    b.hash = None
                    evicted += 1
                b.ref_cnt = 1
                b.fill = fill
            self.num_cached_free -= evicted
        else:
            self._evict_announced(out, fill)
        return out

    def _evict_announced(self, out: list[Block], fill: int) -> None:
        """``get_new_blocks``'s eviction with the callbacks (event log,
        offload tier) told of each evicted block as it goes."""
        for b in out:
            h = b.hash
            if h is not None:
                if h < UNIQUE_KEY_BASE:
                    self._forget(b, h)
                b.hash = None
                self.num_cached_free -= 1
                if self.on_evict is not None:
                    self.on_evict(b.id)
                if self.on_evict_content is not None and h < UNIQUE_KEY_BASE:
                    self.on_evict_content(b.id, h)
            b.ref_cnt = 1
            b.fill = fill

    def _forget(self, b: Block, h: int) -> None:
        """Remove ``b``'s entry under ``h`` from the map (eviction)."""
        dups = self.duplicates.get(h)
        if dups is None:
            del self.cached[h]
        elif self.cached[h] is b:  # the oldest duplicate takes over
            self.cached[h] = dups.pop(0)
        else:
            dups.remove(b)
        if dups is not None and not dups:
            del self.duplicates[h]

    def release_all(self, blocks) -> int:
        """Drop one reference from each of ``blocks``, in order; blocks
        reaching 0 join the queue's tail in that order (those without a hash
        its head, in that order, under ``unhashed_first``). Returns the
        filled slots of the blocks that became free (for the live-token
        count)."""
        freed = []
        front = [] if self.unhashed_first else freed
        freed_fill = 0
        ncf = 0
        for b in blocks:
            rc = b.ref_cnt
            # one test for the common case (the last reference): a finish
            # releases every block of its sequence, the replay's hottest loop
            if rc != 1:  # still shared after this release
                assert rc > 1, f"block {b.id} released with ref_cnt {rc}"
                b.ref_cnt = rc - 1
                continue
            b.ref_cnt = 0
            freed_fill += b.fill
            if b.hash is not None:
                ncf += 1
                freed.append(b)
            else:
                b.fill = 0
                front.append(b)
        if front is not freed:
            self.free_queue.prepend(front)
        self.free_queue.extend(freed)
        self.num_cached_free += ncf
        return freed_fill

    def touch(self, b: Block) -> None:
        """Take one more reference; revive ``b`` from the free queue if idle."""
        if b.ref_cnt == 0:
            self.free_queue.remove(b)
            if b.hash is not None:
                self.num_cached_free -= 1
        b.ref_cnt += 1

    def release(self, b: Block) -> bool:
        """Drop one reference; return True when the block became free."""
        assert b.ref_cnt > 0, f"block {b.id} released with ref_cnt {b.ref_cnt}"
        b.ref_cnt -= 1
        if b.ref_cnt:
            return False
        if b.hash is not None:
            self.num_cached_free += 1
        else:
            b.fill = 0
            if self.unhashed_first:
                self.free_queue.prepend([b])
                return True
        self.free_queue.append(b)
        return True

    def cache(self, b: Block, h: int) -> bool:
        """Enter full block ``b`` under content hash ``h``; return whether
        it was cached.

        If another block already holds ``h`` (two requests computed the same
        content), ``b`` joins it under ``cache_duplicates`` (vLLM today:
        block tables stay append-only, nothing is deduplicated); otherwise
        ``b`` stays uncached, one entry per content (vLLM 0.11 as pagesim
        modelled it).
        """
        assert b.hash is None, f"block {b.id} is already cached under another key"
        if h in self.cached:
            if not self.cache_duplicates:
                return False
            self.duplicates.setdefault(h, []).append(b)
        else:
            self.cached[h] = b
        b.hash = h
        return True

    def lookup(self, h: int) -> Block | None:
        return self.cached.get(h)
