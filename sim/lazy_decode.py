"""The set of plainly decoding sequences, advanced in bulk.

In a decode-heavy batch almost nothing happens per step: every sequence
writes one token in place, and only those at a block boundary need the
allocator. This set lets the fast engine advance all its members by ``k``
steps in O(1), touching a member only when something happens to it: it
crosses a block boundary, fills a block whose content is known (prefix
caching must hash it at that step), or finishes.

A member's ``Sequence.computed`` / ``generated`` lag by ``D - d0`` tokens,
where ``D`` counts the decode steps the set has taken and ``d0`` is ``D`` when
the member was last brought up to date (``materialize``); its KV-cache
manager state (token count, last block's fill) lags by ``D - kd0``, which a
block-boundary crossing resets without touching the sequence (one object
less per crossing). The manager's ``live_tokens``
is kept exact in bulk, so memory accounting never lags. Anything that reads
or changes a member individually must materialize it first; the scheduler's
full step materializes everyone.

Crossings are found by residue: a member whose up-to-date token count is
``c`` at ``D`` crosses a block boundary at the steps ``j`` with
``(D + j) % block_size == (d0 - c0) % block_size`` (``c0`` being its count at
``d0``), which does not change as it advances. Block allocations are made
in the order the step-by-step engine makes them: by step, then by running
order (the scheduler's keep key).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from operator import attrgetter


@dataclass(slots=True, eq=False)
class Member:
    seq: object        # sim.sequence.Sequence
    group: object      # sim.sequence.Group
    key: tuple         # the scheduler's keep-order key
    d0: int            # D when the sequence's counters were last brought up to date
    cross: int         # residue of the steps at which it crosses a block boundary
    fill: int | None   # residue of block fills that must be hashed then (known content)
    sid: int           # the sequence id
    kd0: int           # D when its KV-cache state was last brought up to date


_running_order = attrgetter("key")


class LazyDecodeSet:
    def __init__(self, kv) -> None:
        self.kv = kv
        self.paged = kv.caps.paged
        self.bs = kv.block_size if self.paged else 1
        self.D = 0
        self.members: dict[int, Member] = {}
        self.buckets: list[dict[int, Member]] = [dict() for _ in range(self.bs)]
        # A bucket lists its members in running order unless a member with
        # an earlier key joined after a later one (a resumed group); then it
        # is re-sorted once, when next read.
        self._unsorted: set[int] = set()
        self._last_key: list[tuple | None] = [None] * self.bs
        self.finish_heap: list[tuple[int, tuple, int]] = []
        self.cross_count = [0] * self.bs   # members crossing at each residue
        self.num_fill = 0                  # members with known content to hash
        self._sum_c_minus_d0 = 0   # sum over members of (c0 - d0)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def sum_computed(self) -> int:
        """Sum of the members' up-to-date computed tokens."""
        return self._sum_c_minus_d0 + len(self.members) * self.D

    def add(self, group, key) -> None:
        """Take over a running group of one sequence in plain decode."""
        s = group.seqs[0]
        bs = self.bs
        fill = None
        if self.paged and self.kv.caps.prefix_caching:
            keys = s.keys
            if keys is not None and keys.known_blocks > s.computed // bs:
                fill = (self.D - s.computed - 1) % bs
        m = Member(s, group, key, self.D, (self.D - s.computed) % bs, fill, s.seq_id, self.D)
        self.members[s.seq_id] = m
        self._put(m.cross, m)
        self.cross_count[m.cross] += 1
        if fill is not None:
            self.num_fill += 1
            if fill != m.cross:
                self._put(fill, m)
        heapq.heappush(self.finish_heap, (self.D + s.output_len - s.generated, key, s.seq_id))
        self._sum_c_minus_d0 += s.computed - self.D

    def _put(self, r: int, m: Member) -> None:
        last = self._last_key[r]
        if last is not None and m.key < last:
            self._unsorted.add(r)
        else:
            self._last_key[r] = m.key
        self.buckets[r][m.sid] = m

    def materialize(self, m: Member, to_d: int | None = None) -> None:
        """Bring member ``m`` up to step count ``to_d`` (default ``D``)."""
        to_d = self.D if to_d is None else to_d
        lag = to_d - m.d0
        if lag:
            s = m.seq
            s.computed += lag
            s.generated += lag
            m.d0 = to_d
        lag = to_d - m.kd0
        if lag:
            self.kv.write_in_place((m.sid,), (lag,), count_live=False)
            m.kd0 = to_d

    def remove(self, seq_id: int) -> Member:
        """Materialize a member and hand it back to explicit scheduling."""
        m = self.members.pop(seq_id)
        self.materialize(m)
        self.buckets[m.cross].pop(seq_id, None)
        self.cross_count[m.cross] -= 1
        if m.fill is not None:
            self.num_fill -= 1
            self.buckets[m.fill].pop(seq_id, None)
        self._sum_c_minus_d0 -= m.seq.computed - self.D
        return m

    def materialize_all(self) -> None:
        for sid in list(self.members):
            self.remove(sid)
        self.finish_heap.clear()
        self._unsorted.clear()
        self._last_key = [None] * self.bs

    def steps_to_first_finish(self) -> int:
        heap = self.finish_heap
        while heap and heap[0][2] not in self.members:
            heapq.heappop(heap)  # left the set another way (stale entry)
        return heap[0][0] - self.D if heap else 0

    def memory_limit(self, k: int, free: int) -> int:
        """Steps (at most ``k``) whose block-boundary crossings the free
        blocks cover; the step-by-step engine would preempt at the next."""
        if not self.paged:
            return k
        bs, cnt = self.bs, self.cross_count
        full, rest = divmod(k, bs)
        r0 = self.D % bs
        ahead = cnt[r0:r0 + rest]          # the residues of the last partial round
        if len(ahead) < rest:
            ahead += cnt[:rest - len(ahead)]
        if full * len(self.members) + sum(ahead) <= free:
            return k
        need = 0
        for j in range(k):
            need += cnt[(r0 + j) % bs]
            if need > free:
                return j
        return k

    def events_at(self, j: int) -> list[Member]:
        """Members needing the allocator at step ``j``, in running order."""
        if not self.paged:
            return []
        r = (self.D + j) % self.bs
        bucket = self.buckets[r]
        if r in self._unsorted:
            self._unsorted.discard(r)
            ordered = sorted(bucket.values(), key=_running_order)
            bucket.clear()
            bucket.update((m.sid, m) for m in ordered)
            self._last_key[r] = ordered[-1].key if ordered else None
            return ordered
        return list(bucket.values())

    def finished_by(self, d: int) -> list[Member]:
        """Members whose last token is produced by step count ``d``."""
        out = []
        heap = self.finish_heap
        while heap and heap[0][0] <= d:
            _, _, sid = heapq.heappop(heap)
            m = self.members.get(sid)
            if m is not None:
                out.append(m)
        return out
