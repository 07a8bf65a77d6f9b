"""Physical KV blocks, their free queue, and the prefix-cache map.

Eviction policy (stated once, carried by list position): the free queue is
ordered from "evict first" (head) to "evict last" (tail). New blocks are
popped from the head; a block whose ref count drops to 0 is appended at the
tail, keeping its content hash so that a later request can still hit it.
Callers free a sequence's blocks tail-first, so within one freed sequence the
tail blocks (least likely to be shared) are evicted before its head blocks.
This is least-recently-used order without any timestamps (vLLM V1).
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.block_keys import UNIQUE_KEY_BASE
from sim.errors import InvalidArgument, OutOfBlocks


@dataclass(slots=True, eq=False)
class Block:
    """One physical block: ``block_size`` token slots of K/V.

    ``fill`` counts the slots written. ``hash`` is set while the block is in
    the prefix-cache map (full blocks only). ``prev``/``next`` link the block
    into the free queue while ``ref_cnt == 0``; both are None otherwise.
    """

    id: int
    ref_cnt: int = 0
    fill: int = 0
    hash: int | None = None
    prev: "Block | None" = None
    next: "Block | None" = None


class FreeBlockQueue:
    """Intrusive doubly linked list of free blocks with sentinel ends.

    O(1) ``popleft``, ``append`` and ``remove`` from the middle (a cached
    block revived by a prefix hit); no allocation per operation.
    """

    def __init__(self, blocks: list[Block]) -> None:
        self._head = Block(-1)
        self._tail = Block(-1)
        self._head.next = self._tail
        self._tail.prev = self._head
        self._len = 0
        for b in blocks:
            self.append(b)

    def __len__(self) -> int:
        return self._len

    def popleft(self) -> Block:
        b = self._head.next
        if b is self._tail:
            raise OutOfBlocks("free queue is empty")
        nxt = b.next
        self._head.next = nxt
        nxt.prev = self._head
        b.prev = b.next = None
        self._len -= 1
        return b

    def append(self, b: Block) -> None:
        assert b.prev is None and b.next is None, f"block {b.id} is already queued"
        last = self._tail.prev
        last.next = b
        b.prev = last
        b.next = self._tail
        self._tail.prev = b
        self._len += 1

    def remove(self, b: Block) -> None:
        prev, nxt = b.prev, b.next
        assert prev is not None and nxt is not None, f"block {b.id} is not queued"
        prev.next = nxt
        nxt.prev = prev
        b.prev = b.next = None
        self._len -= 1

    def __iter__(self):
        b = self._head.next
        while b is not self._tail:
            yield b
            b = b.next

    def ids(self) -> list[int]:
        """Block ids from head (evicted first) to tail."""
        return [b.id for b in self]


class BlockPool:
    """``num_blocks`` blocks, a free queue, and ``hash -> block`` for caching.

    The pool knows nothing about sequences: the KV-cache manager decides
    which blocks a sequence holds. The pool keeps two counters the memory
    accounting needs in O(1): free blocks, and free blocks that still hold
    cached content.
    """

    def __init__(self, num_blocks: int, *, null_block: bool = False, on_evict=None) -> None:
        if not isinstance(num_blocks, int) or num_blocks <= 0:
            raise InvalidArgument(f"num_blocks must be a positive int, got {num_blocks!r}")
        if null_block and num_blocks < 2:
            raise InvalidArgument("a pool with a null block needs at least 2 blocks")
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[int, Block] = {}
        self.num_cached_free = 0
        self.on_evict = on_evict  # callback(block_id) for the event log
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
        return len(self.free_queue)

    def get_new_blocks(self, n: int, fill: int = 0) -> list[Block]:
        """Pop ``n`` blocks from the head, evicting cached content; each gets
        ref 1 and ``fill`` written slots.

        The hottest path of the simulator: the list walk is inlined and the
        queue is relinked once, not once per block. Blocks under a unique key
        (content nobody else can have, see ``sim.block_keys``) are not in the
        map, so evicting them is just forgetting the key.
        """
        q = self.free_queue
        if n > q._len:
            raise OutOfBlocks(f"need {n} blocks, {q._len} free")
        head = q._head
        out = []
        append = out.append
        b = head.next
        for _ in range(n):
            h = b.hash
            if h is not None:  # evict: the block loses its cached content
                if h < UNIQUE_KEY_BASE:
                    del self.cached[h]
                b.hash = None
                self.num_cached_free -= 1
                if self.on_evict is not None:
                    self.on_evict(b.id)
            b.ref_cnt = 1
            b.fill = fill
            append(b)
            nxt = b.next
            b.prev = b.next = None
            b = nxt
        head.next = b
        b.prev = head
        q._len -= n
        return out

    def release_all(self, block_ids) -> int:
        """Drop one reference from each block (given by id), in order; blocks
        reaching 0 join the queue's tail in that order. Returns the filled
        slots of the blocks that became free (for the live-token count)."""
        blocks = self.blocks
        q = self.free_queue
        tail = q._tail
        freed_fill = 0
        ncf = 0
        nq = 0
        for bid in block_ids:
            b = blocks[bid]
            rc = b.ref_cnt - 1
            assert rc >= 0, f"block {b.id} released with ref_cnt 0"
            b.ref_cnt = rc
            if rc:
                continue
            freed_fill += b.fill
            if b.hash is not None:
                ncf += 1
            else:
                b.fill = 0
            last = tail.prev
            last.next = b
            b.prev = last
            b.next = tail
            tail.prev = b
            nq += 1
        q._len += nq
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
        self.free_queue.append(b)
        return True

    def cache(self, b: Block, h: int) -> bool:
        """Enter full block ``b`` under content hash ``h``.

        If another block already holds ``h`` (two requests computed the same
        prefix concurrently), ``b`` stays uncached: one entry per content keeps
        eviction exact and the map a function. Returns whether ``b`` was cached.
        """
        assert b.hash is None, f"block {b.id} is already cached under another key"
        if h in self.cached:
            return False
        self.cached[h] = b
        b.hash = h
        return True

    def lookup(self, h: int) -> Block | None:
        return self.cached.get(h)
