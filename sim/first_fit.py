"""A first-fit allocator of contiguous token-slot regions, exact sizes.

The placement the vLLM paper's Orca baselines imply (Figure 2): a region is
exactly the size the policy asks for, placed in the lowest-addressed hole
large enough; freeing merges it with free neighbours. Unlike the buddy
allocator nothing is rounded, so Oracle's exact reservations pack tighter
than Pow2's, and the only external fragmentation is the holes between live
regions.

Holes are kept as a sorted list of offsets and a map offset -> size; a
search scans the holes in address order (there are at most as many holes as
live regions plus one, a few hundred in a full cache).
"""
from __future__ import annotations

import bisect

from pagesim.sim.errors import InvalidArgument, OutOfBlocks


class FirstFitAllocator:
    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise InvalidArgument(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._holes: list[int] = [0]             # hole offsets, ascending
        self._size: dict[int, int] = {0: capacity}  # hole offset -> size
        self.allocated: dict[int, int] = {}      # region offset -> size
        self.free_slots = capacity

    @staticmethod
    def chunk(size: int) -> int:
        """Slots a request of ``size`` occupies: exactly ``size``."""
        return size

    def fits_ever(self, size: int) -> bool:
        return size <= self.capacity

    def largest_free(self) -> int:
        return max(self._size.values(), default=0)

    def _find(self, size: int) -> int | None:
        sizes = self._size
        for off in self._holes:
            if sizes[off] >= size:
                return off
        return None

    def can_alloc(self, size: int) -> bool:
        return size <= self.free_slots and self._find(size) is not None

    def alloc(self, size: int) -> int:
        """Reserve ``size`` slots at the lowest hole that holds them."""
        if size <= 0:
            raise InvalidArgument(f"size must be positive, got {size}")
        off = self._find(size) if size <= self.free_slots else None
        if off is None:
            raise OutOfBlocks(f"no free region of {size} slots (largest free {self.largest_free()})")
        rest = self._size.pop(off) - size
        i = bisect.bisect_left(self._holes, off)
        if rest:
            self._holes[i] = off + size
            self._size[off + size] = rest
        else:
            del self._holes[i]
        self.allocated[off] = size
        self.free_slots -= size
        return off

    def free(self, offset: int) -> None:
        size = self.allocated.pop(offset, None)
        if size is None:
            raise InvalidArgument(f"offset {offset} is not allocated")
        self.free_slots += size
        holes, sizes = self._holes, self._size
        i = bisect.bisect_left(holes, offset)
        end = offset + size
        if i < len(holes) and holes[i] == end:        # merge with the hole after
            size += sizes.pop(end)
            del holes[i]
        if i > 0 and holes[i - 1] + sizes[holes[i - 1]] == offset:  # and the one before
            sizes[holes[i - 1]] += size
        else:
            holes.insert(i, offset)
            sizes[offset] = size

    def free_in_chunks_smaller_than(self, size: int) -> int:
        """Free slots that lie in holes too small to hold ``size`` slots."""
        return sum(s for s in self._size.values() if s < size)
