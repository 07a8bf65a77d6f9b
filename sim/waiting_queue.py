"""The queue of groups waiting to (re)start, in key order.

The scheduler always serves the smallest key first. A binary heap does that
in O(log n), but at high load the queue holds hundreds of thousands of
groups and every push and pop walks ~20 levels of tuple comparisons through
memory that is no longer cached. Almost every key arrives in order, though:
new requests come in arrival order and the default key is
``(arrival_s, gid)``. So keys that arrive in order go to a FIFO (O(1) both
ways); only the others (a preempted group going back, or priority keys)
go to a heap. The head is the smaller of the two heads, so the order served
is exactly the heap's.
"""
from __future__ import annotations

import heapq
from collections import deque


class WaitingQueue:
    def __init__(self) -> None:
        self._fifo: deque[tuple] = deque()   # (key, item), keys ascending
        self._heap: list[tuple] = []         # (key, item), a binary heap

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._fifo) or bool(self._heap)

    def push(self, key: tuple, item) -> None:
        fifo = self._fifo
        if not fifo or fifo[-1][0] < key:
            fifo.append((key, item))
        else:
            heapq.heappush(self._heap, (key, item))

    def head(self):
        """The item with the smallest key (the queue must not be empty)."""
        return (self._heap[0] if self._heap_first() else self._fifo[0])[1]

    def pop(self):
        """Remove and return the item with the smallest key."""
        if self._heap_first():
            return heapq.heappop(self._heap)[1]
        return self._fifo.popleft()[1]

    def _heap_first(self) -> bool:
        fifo, heap = self._fifo, self._heap
        return bool(heap) and (not fifo or heap[0][0] < fifo[0][0])
