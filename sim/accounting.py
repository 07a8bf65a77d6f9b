"""Where every KV token slot is, at one moment.

The categories partition the capacity (they always sum to
``capacity_tokens``), so a stacked-area plot of them over time shows exactly
where memory goes:

============== ==========================================================
token_states   slots holding the K/V of a live token (shared blocks once)
reserved       slots set aside for tokens not generated yet (contiguous
               baselines), plus a paged pool's null block
internal_frag  allocated but never to be used: empty tail slots of paged
               blocks; over-reservation past the final length (baselines)
external_frag  free but unusable: buddy-allocator rounding, and free chunks
               too small for the request waiting at the head of the queue
cached_free    free blocks that still hold prefix-cache content
free           free, usable
============== ==========================================================
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

CATEGORIES = ("token_states", "reserved", "internal_frag", "external_frag", "cached_free", "free")


@dataclass(frozen=True, slots=True)
class MemorySplit:
    token_states: int
    reserved: int
    internal_frag: int
    external_frag: int
    cached_free: int
    free: int

    @property
    def capacity(self) -> int:
        return (self.token_states + self.reserved + self.internal_frag
                + self.external_frag + self.cached_free + self.free)

    def fractions(self) -> dict[str, float]:
        cap = self.capacity
        return {k: v / cap for k, v in asdict(self).items()}
