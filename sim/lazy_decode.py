"""The set of plainly decoding sequences, advanced in bulk.

In a decode-heavy batch almost nothing happens per step: every sequence
writes one token in place, and only those at a block boundary need the
allocator. This set lets the fast engine advance all its members by ``k``
steps in O(1), touching a member only when something happens to it: it
crosses a block boundary, fills a block whose content is known (prefix
caching must hash it at that step), or finishes.

A member's ``Sequence.computed`` / ``generated`` lag by ``D - d0`` tokens,
where ``D`` counts the decode steps the set has taken and ``d0`` is ``D`` when
the member was last brought up to date (``materialize``); its tokens not yet
written to the KV-cache manager are the ``D - kd0`` of its last
block-boundary crossing or materialization (a crossing resets ``kd0``
without touching the sequence: one object less per crossing).

Where the lag lives: on this side only. The manager's own state is exact
and self-consistent at every moment (its ``live_tokens`` equals what its
blocks hold, ``check_manager`` passes); the set counts the decoded tokens
not yet written (``unwritten``) and the scheduler's accounting adds them
(``Scheduler.live_tokens``). The unwritten tokens of a member always fit in
its unshared last block (a crossing writes them first), and they are written
before anything reads or changes the member individually (``materialize``;
the scheduler's full step materializes everyone). All of it is O(events).

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

from pagesim.sim.sequence import RUNNING


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
        self._sum_kd0 = 0          # sum over members of kd0

    def __len__(self) -> int:
        return len(self.members)

    @property
    def sum_computed(self) -> int:
        """Sum of the members' up-to-date computed tokens."""
        return self._sum_c_minus_d0 + len(self.members) * self.D

    @property
    def unwritten(self) -> int:
        """Tokens the members decoded that the KV-cache manager does not
        hold yet (``D - kd0`` each): what accounting adds to its count."""
        return len(self.members) * self.D - self._sum_kd0

    def computed_of(self, seq_ids, plus: int = 0) -> list[int]:
        """Up-to-date computed tokens (``+ plus``) of the given members."""
        members, D = self.members, self.D
        return [(m.seq.computed + D - m.d0 + plus) for m in map(members.__getitem__, seq_ids)]

    def adopt(self, groups, key) -> None:
        """Take over the running groups that are one sequence in plain
        decode (prompt done, one token to compute per step, no forks);
        ``key``: the scheduler's keep-order key."""
        members = self.members
        for g in groups:
            if g.status != RUNNING or len(g.seqs) != 1 or g.fanout > 1 or g.beam_width > 1:
                continue
            s = g.seqs[0]
            if s.generated >= 1 and s.known - s.computed == 1 and s.seq_id not in members:
                self.add(g, key(g))

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
        self._sum_kd0 += self.D

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
            self.kv.write_in_place((m.sid,), (lag,))
            m.kd0 = to_d
            self._sum_kd0 += lag

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
        self._sum_kd0 -= m.kd0
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

    def events_at(self, j: int):
        """Members needing the allocator at step ``j``, in running order (a
        view: the bucket must not change while it is read)."""
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
        return bucket.values()

    def run(self, st, pending_tokens, log=None) -> None:
        """Take the steps of the pure stretch ``st`` (a ``DecodeStretch``):
        each step's allocator events in order, recording the manager's
        ``counters(pending_tokens)`` before the first step and after each
        step with events in ``st``; then ``D`` advances. ``log``: the event
        log, stamped with steps."""
        counters = self.kv.counters
        steps, snaps = st.event_steps, st.event_counters = [-1], list(counters(pending_tokens))
        if self.paged:
            buckets, bs, r0 = self.buckets, self.bs, self.D % self.bs
            for j in range(st.num_steps):
                if buckets[(r0 + j) % bs]:  # some member needs the allocator at step j
                    if log is not None:
                        log.step = st.step + j
                    self.apply_events(j)
                    steps.append(j)
                    snaps += counters(pending_tokens)
        self.D += st.num_steps
        if log is not None:
            log.step = st.step + st.num_steps - 1

    def apply_events(self, j: int) -> None:
        """The allocator calls of the members at step ``j`` (from ``D``), in
        running order, exactly as the step-by-step engine makes them: each
        crossing writes the member's unwritten tokens, which fill its last
        block, then takes a block for this step's token; a fill of known
        content is written (and hashed) at this step."""
        if not self.paged:
            return  # contiguous memory: decodes never need the allocator
        kv = self.kv
        at = self.D + j
        r = at % self.bs
        # events_at(j), its common case inline (a call per step with events)
        events = self.buckets[r].values() if r not in self._unsorted else self.events_at(j)
        if not events:
            return
        if not self.num_fill or all(m.fill is None for m in events):
            # Only crossings of content nobody can share: one bulk call.
            ids, lags = [], []
            for m in events:
                ids.append(m.sid)
                lags.append(at - m.kd0)
                m.kd0 = at + 1
            self._sum_kd0 += kv.cross_blocks(ids, lags)  # each kd0 moved by its lag + 1
            return
        for m in events:
            self.materialize(m, at)
            s = m.seq
            if m.cross == r:
                kv.append_slots(s.seq_id, 1)
            else:  # a fill of known content: hashed at this step
                kv.write_in_place((s.seq_id,), (1,))
            s.computed += 1
            s.generated += 1
            m.d0 = m.kd0 = at + 1
            self._sum_kd0 += 1

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
