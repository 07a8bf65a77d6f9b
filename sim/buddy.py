"""A binary buddy allocator over token slots.

The contiguous baselines (Orca Max / Pow2 / Oracle) place each request's
reservation with it, so the rounding to powers of two and the holes between
live reservations are real, measurable external fragmentation.

A capacity that is not a power of two is split greedily into power-of-two
top chunks, largest first; each top chunk's base is then a multiple of its
size, so the buddy of a chunk at ``offset`` of order ``k`` is simply
``offset ^ (1 << k)``. Placement is lowest address first, which keeps runs
deterministic and packs allocations toward the start.
"""
from __future__ import annotations

import bisect

from pagesim.sim.errors import InvalidArgument, OutOfBlocks


def order_for(size: int) -> int:
    """Smallest k with 2**k >= size."""
    return max(0, (size - 1).bit_length())


class BuddyAllocator:
    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise InvalidArgument(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.max_order = capacity.bit_length() - 1
        self.free_lists: list[list[int]] = [[] for _ in range(self.max_order + 1)]
        self._top_order: dict[int, int] = {}  # top chunk base -> order
        self._bases: list[int] = []
        base = 0
        for k in range(self.max_order, -1, -1):
            if capacity & (1 << k):
                self.free_lists[k].append(base)
                self._top_order[base] = k
                self._bases.append(base)
                base += 1 << k
        self.allocated: dict[int, int] = {}  # offset -> order
        self.free_slots = capacity

    @staticmethod
    def chunk(size: int) -> int:
        """Slots a request of ``size`` occupies: the next power of two."""
        return 1 << order_for(size)

    def fits_ever(self, size: int) -> bool:
        return order_for(size) <= self.max_order

    def _top_order_of(self, offset: int) -> int:
        i = bisect.bisect_right(self._bases, offset) - 1
        return self._top_order[self._bases[i]]

    def largest_free(self) -> int:
        for k in range(self.max_order, -1, -1):
            if self.free_lists[k]:
                return 1 << k
        return 0

    def can_alloc(self, size: int) -> bool:
        k = order_for(size)
        return k <= self.max_order and any(self.free_lists[j] for j in range(k, self.max_order + 1))

    def alloc(self, size: int) -> int:
        """Reserve a chunk of ``2**order_for(size)`` slots; return its offset."""
        if size <= 0:
            raise InvalidArgument(f"size must be positive, got {size}")
        k = order_for(size)
        j = k
        while j <= self.max_order and not self.free_lists[j]:
            j += 1
        if j > self.max_order:
            raise OutOfBlocks(f"no free chunk of {1 << k} slots (largest free {self.largest_free()})")
        offset = self.free_lists[j].pop(0)
        while j > k:  # split, keeping the upper halves free
            j -= 1
            bisect.insort(self.free_lists[j], offset + (1 << j))
        self.allocated[offset] = k
        self.free_slots -= 1 << k
        return offset

    def free(self, offset: int) -> None:
        k = self.allocated.pop(offset, None)
        if k is None:
            raise InvalidArgument(f"offset {offset} is not allocated")
        self.free_slots += 1 << k
        top = self._top_order_of(offset)
        while k < top:
            buddy = offset ^ (1 << k)
            fl = self.free_lists[k]
            i = bisect.bisect_left(fl, buddy)
            if i == len(fl) or fl[i] != buddy:
                break
            fl.pop(i)
            offset = min(offset, buddy)
            k += 1
        bisect.insort(self.free_lists[k], offset)

    def free_in_chunks_smaller_than(self, size: int) -> int:
        """Free slots that lie in chunks too small to hold ``size`` slots."""
        k = order_for(size)
        return sum(len(self.free_lists[j]) << j for j in range(min(k, self.max_order + 1)))
