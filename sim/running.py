"""The running groups, in keep order.

A list (first = kept longest, the last is the default preemption victim)
whose sort keys are kept alongside, so that a group is found by bisecting
its key instead of a linear scan of up to ``max_num_seqs`` groups. Keys are
unique (they end with the group id) and stable while a group runs. A
``list`` subclass so that the scheduler's hot loops index it at C speed.
"""
from __future__ import annotations

import bisect


class RunningList(list):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[tuple] = []
        self.num_seqs = 0   # sequences of all groups (forks and prunes adjust it)

    def insert_group(self, g, key: tuple) -> int:
        """Insert ``g`` where ``key`` sorts; returns its index."""
        i = bisect.bisect(self.keys, key)
        self.keys.insert(i, key)
        self.insert(i, g)
        self.num_seqs += len(g.seqs)
        return i

    def remove_group(self, g, key: tuple) -> None:
        i = bisect.bisect_left(self.keys, key)
        assert i < len(self) and self[i] is g, (
            f"group {g.gid} is not where its key sorts in the running list")
        del self[i]
        del self.keys[i]
        self.num_seqs -= len(g.seqs)
