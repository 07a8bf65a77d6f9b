"""What the scheduler, request admission, the lazy decode set and the replay
need from a KV-cache manager: one declared interface, with explicit
capabilities instead of probing for attributes.

Implemented by ``PagedKVCacheManager`` (``sim/kv_cache_manager.py``) and
``ContiguousKVCacheManager`` (``sim/contiguous.py``, the Orca baselines);
``tests/test_kv_protocol.py`` checks both. A manager that lacks a
capability still has the methods, and they raise ``InvalidArgument``: the
caller asks ``caps`` first, and ``sim/allocators.py`` refuses a
configuration that would need a missing capability before anything runs.

Units: a "block" is the manager's unit of allocation, ``block_size`` token
slots (the contiguous baselines allocate single slots: ``block_size == 1``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pagesim.sim.accounting import MemorySplit


@dataclass(frozen=True, slots=True)
class Capabilities:
    #: Fixed-size blocks with block tables: plans can carry them to a GPU
    #: executor, and the fast engine tracks block-boundary crossings
    #: (``cross_blocks``). False: one contiguous region per sequence.
    paged: bool
    #: Prefix caching is on: ``num_cached_tokens`` can be non-zero, and
    #: full blocks of known content are hashed as they fill.
    prefix_caching: bool
    #: ``fork`` shares a sequence's memory with a child (V0 samples, beams).
    fork: bool
    #: A CPU pool exists: ``swap_out`` / ``swap_in`` work.
    swap: bool
    #: Memory is reserved by final length: ``max_tokens`` of
    #: ``can_allocate``/``allocate`` sizes the reservation, and
    #: ``pending_tokens`` of ``usage``/``counters`` finds free chunks too
    #: small for the head of the queue. A manager without it ignores both.
    needs_final_length: bool


@runtime_checkable
class KVCacheManager(Protocol):
    caps: Capabilities
    block_size: int
    #: Blocks of the GPU pool (token slots for the contiguous baselines).
    num_blocks: int
    #: Token slots holding live K/V (a shared block counted once).
    live_tokens: int
    #: Allocator-level prefix-cache statistics: tokens found cached / tokens
    #: allocated by ``allocate`` (the first chunk only, under chunked prefill).
    #: The summary's hit rate uses the scheduler's vLLM counters instead.
    hit_tokens: int
    queried_tokens: int

    @property
    def capacity_tokens(self) -> int: ...

    @property
    def num_free_blocks(self) -> int: ...

    @property
    def num_seqs(self) -> int:
        """Sequences holding memory (GPU or CPU)."""
        ...

    # admission
    def rejection(self, prompt_tokens: int, output_tokens: int, forks: int,
                  watermark_blocks: int) -> str | None:
        """Why a request could never run even in an empty cache (``forks``
        sequences sharing its prompt), or None."""
        ...

    def num_cached_tokens(self, num_tokens: int, keys) -> int: ...

    def can_allocate(self, num_tokens: int, keys=None, *, watermark_blocks: int = 0,
                     max_tokens: int | None = None, prompt_tokens: int = 0) -> bool:
        """``prompt_tokens``: the request's prompt length, for a reservation
        sized by final length (the pow2 baseline rounds only the output)."""
        ...

    def allocate(self, seq_id: int, num_tokens: int, keys=None, *,
                 max_tokens: int | None = None, prompt_tokens: int = 0) -> int: ...

    # growth
    def can_append(self, seq_id: int, n: int = 1) -> bool: ...

    def append_slots(self, seq_id: int, n: int = 1) -> list[tuple[int, int]]: ...

    def write_in_place(self, seq_ids, counts, *, count_live: bool = True) -> None: ...

    def cross_blocks(self, seq_ids, lags) -> None: ...

    # sharing, swapping, release
    def fork(self, parent_id: int, child_id: int) -> None: ...

    def can_swap_out(self, seq_ids) -> bool: ...

    def swap_out(self, seq_ids) -> list[tuple[int, int]]: ...

    def can_swap_in(self, seq_ids, *, watermark_blocks: int = 0) -> bool: ...

    def swap_in(self, seq_ids) -> list[tuple[int, int]]: ...

    def free(self, seq_id: int) -> None: ...

    # queries
    def num_tokens(self, seq_id: int) -> int: ...

    def num_blocks_held(self, seq_id: int) -> int: ...

    def block_table(self, seq_id: int) -> list[int]: ...

    # accounting
    def counters(self, pending_tokens: tuple[int, int] | None = None) -> tuple:
        """``pending_tokens``: (final length, prompt length) of the request
        at the head of the queue, or None."""
        ...

    def usage_from(self, live, *counters) -> MemorySplit: ...

    def usage(self, pending_tokens: tuple[int, int] | None = None) -> MemorySplit: ...
