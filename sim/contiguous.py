"""Contiguous-reservation baselines from the vLLM paper (Orca).

Each request reserves one contiguous region for its whole life, placed by a
buddy allocator, sized by policy:

* ``max``    (Orca Max):    the model's maximum length
* ``pow2``   (Orca Pow2):   the next power of two of the actual final length
* ``oracle`` (Orca Oracle): exactly the actual final length

A region of R slots for a request whose final length is F and whose current
length is c splits into token states (c), reserved for future tokens (F - c),
internal fragmentation (R - F, over-reservation) and external fragmentation
(the buddy's rounding of R up to a power of two). Free slots in chunks too
small for the request waiting at the head of the queue are external
fragmentation as well.

Implements ``sim.kv_protocol.KVCacheManager`` with block size 1 (a "block"
is a token slot); its capabilities say what it cannot do: ``fork``,
swapping, block tables and prefix caching have no meaning here and raise,
and ``sim/allocators.py`` refuses configurations that need them. The
watermark is honoured (slots kept free when admitting).
"""
from __future__ import annotations

from dataclasses import dataclass

from pagesim.sim.accounting import MemorySplit
from pagesim.sim.buddy import BuddyAllocator, order_for
from pagesim.sim.errors import InvalidArgument, OutOfBlocks, UnknownSequence
from pagesim.sim.kv_protocol import Capabilities

POLICIES = ("max", "pow2", "oracle")


@dataclass(slots=True)
class Region:
    offset: int
    reserved: int     # R: what the policy asked for
    final: int        # F: the sequence's final length
    num_tokens: int   # c


class ContiguousKVCacheManager:
    caps = Capabilities(paged=False, prefix_caching=False, fork=False, swap=False,
                        needs_final_length=True)
    block_size = 1

    def __init__(self, capacity_tokens: int, policy: str, *, max_model_len: int) -> None:
        if policy not in POLICIES:
            raise InvalidArgument(f"policy must be one of {POLICIES}, got {policy!r}")
        if not isinstance(max_model_len, int) or max_model_len <= 0:
            raise InvalidArgument(f"max_model_len must be a positive int, got {max_model_len!r}")
        self.policy = policy
        self.max_model_len = max_model_len
        self.buddy = BuddyAllocator(capacity_tokens)
        self.seqs: dict[int, Region] = {}
        self.live_tokens = 0
        self.hit_tokens = self.queried_tokens = 0
        # Running sums so that usage() is O(1): sum of F, of R - F, of 2^k - R.
        self._sum_final = self._sum_internal = self._sum_rounding = 0

    @property
    def capacity_tokens(self) -> int:
        return self.buddy.capacity

    def reservation(self, final_len: int) -> int:
        if self.policy == "max":
            return max(self.max_model_len, final_len)
        if self.policy == "pow2":
            return 1 << order_for(final_len)
        return final_len

    @property
    def num_blocks(self) -> int:
        return self.buddy.capacity

    @property
    def num_free_blocks(self) -> int:
        return self.buddy.free_slots

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)

    def rejection(self, prompt_tokens: int, output_tokens: int, forks: int,
                  watermark_blocks: int) -> str | None:
        if forks > 1:
            return "needs fork (beams or V0 samples), which a contiguous baseline cannot do"
        size = self.reservation(prompt_tokens + output_tokens)
        k = order_for(size)
        if k > self.buddy.max_order:
            return f"its reservation exceeds the largest contiguous region ({size} slots)"
        have = self.buddy.capacity - watermark_blocks
        if (1 << k) > have:
            return f"its reservation ({1 << k} slots) exceeds the cache less the watermark ({have} slots)"
        return None

    def _seq(self, seq_id: int) -> Region:
        r = self.seqs.get(seq_id)
        if r is None:
            raise UnknownSequence(f"sequence {seq_id} is not held by the contiguous allocator")
        return r

    def num_tokens(self, seq_id: int) -> int:
        return self._seq(seq_id).num_tokens

    def num_cached_tokens(self, num_tokens: int, keys=None) -> int:
        return 0

    def num_blocks_held(self, seq_id: int) -> int:
        return self._seq(seq_id).reserved

    def can_allocate(self, num_tokens: int, keys=None, *, watermark_blocks: int = 0,
                     max_tokens: int | None = None) -> bool:
        """Room for the reservation, leaving ``watermark_blocks`` slots free."""
        final = max_tokens if max_tokens is not None else num_tokens
        size = self.reservation(final)
        return (num_tokens > 0 and self.buddy.can_alloc(size)
                and self.buddy.free_slots - (1 << order_for(size)) >= watermark_blocks)

    def allocate(self, seq_id: int, num_tokens: int, keys=None, *, max_tokens: int | None = None) -> int:
        if seq_id in self.seqs:
            raise InvalidArgument(f"sequence {seq_id} already has a region")
        if not isinstance(num_tokens, int) or num_tokens <= 0:
            raise InvalidArgument(f"num_tokens must be a positive int, got {num_tokens!r}")
        final = max_tokens if max_tokens is not None else num_tokens
        if final < num_tokens:
            raise InvalidArgument(f"max_tokens {final} < num_tokens {num_tokens}")
        size = self.reservation(final)
        offset = self.buddy.alloc(size)
        r = Region(offset, size, final, num_tokens)
        self.seqs[seq_id] = r
        self.live_tokens += num_tokens
        self._account(r, +1)
        return 0

    def _account(self, r: Region, sign: int) -> None:
        self._sum_final += sign * r.final
        self._sum_internal += sign * (r.reserved - r.final)
        self._sum_rounding += sign * ((1 << order_for(r.reserved)) - r.reserved)

    def can_append(self, seq_id: int, n: int = 1) -> bool:
        r = self._seq(seq_id)
        return r.num_tokens + n <= r.reserved

    def append_slots(self, seq_id: int, n: int = 1) -> list[tuple[int, int]]:
        r = self._seq(seq_id)
        if r.num_tokens + n > r.reserved:
            raise OutOfBlocks(f"sequence {seq_id} would outgrow its reservation of {r.reserved}")
        if r.num_tokens + n > r.final:  # outgrew its stated final length
            self._account(r, -1)
            r.final = r.num_tokens + n
            self._account(r, +1)
        r.num_tokens += n
        self.live_tokens += n
        return []

    def write_in_place(self, seq_ids, counts) -> None:
        """Bulk ``append_slots`` for tokens known to fit (the fast engine)."""
        for sid, n in zip(seq_ids, counts):
            if not n:
                continue
            r = self.seqs[sid]
            assert r.num_tokens + n <= r.reserved, f"sequence {sid} outgrows its reservation"
            if r.num_tokens + n > r.final:
                self._account(r, -1)
                r.final = r.num_tokens + n
                self._account(r, +1)
            r.num_tokens += n
            self.live_tokens += n

    def free(self, seq_id: int) -> None:
        r = self.seqs.pop(seq_id, None)
        if r is None:
            raise UnknownSequence(f"cannot free sequence {seq_id}: not held")
        self.buddy.free(r.offset)
        self.live_tokens -= r.num_tokens
        self._account(r, -1)

    # ------------------------------------------------ capabilities it lacks
    def fork(self, parent_id: int, child_id: int) -> None:
        raise InvalidArgument("contiguous baselines cannot share memory between sequences (no fork)")

    def _no_swap(self, *args, **kw):
        raise InvalidArgument("contiguous baselines have no CPU pool (no swap)")

    can_swap_out = swap_out = can_swap_in = swap_in = _no_swap

    def cross_blocks(self, seq_ids, lags) -> None:
        raise InvalidArgument("contiguous baselines have no blocks to cross (not paged)")

    def block_table(self, seq_id: int) -> list[int]:
        raise InvalidArgument("contiguous baselines have no block tables (not paged)")

    def counters(self, pending_tokens: int | None = None) -> tuple:
        """Everything ``usage`` depends on besides ``live_tokens``."""
        unusable = 0
        if pending_tokens is not None:
            unusable = self.buddy.free_in_chunks_smaller_than(self.reservation(pending_tokens))
        return (self._sum_final, self._sum_internal, self._sum_rounding + unusable,
                self.buddy.free_slots - unusable)

    @staticmethod
    def usage_from(live, sum_final, sum_internal, external, free) -> MemorySplit:
        """The accounting formula (ints or numpy arrays)."""
        return MemorySplit(
            token_states=live,
            reserved=sum_final - live,
            internal_frag=sum_internal + live * 0,
            external_frag=external + live * 0,
            cached_free=live * 0,
            free=free + live * 0,
        )

    def usage(self, pending_tokens: int | None = None) -> MemorySplit:
        """``pending_tokens``: final length of the request waiting at the head
        of the queue; free chunks too small for it count as external."""
        return self.usage_from(self.live_tokens, *self.counters(pending_tokens))
