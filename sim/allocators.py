"""Registry: allocator name -> KV-cache manager factory.

Names are the ones the CLI exposes (``--allocator``).
"""
from __future__ import annotations

from pagesim.sim.contiguous import ContiguousKVCacheManager
from pagesim.sim.kv_cache_manager import PagedKVCacheManager

ALLOCATORS = ("paged", "orca-max", "orca-pow2", "orca-oracle")


def make_kv_cache_manager(name: str, *, num_blocks: int, block_size: int, max_model_len: int,
                          enable_prefix_caching: bool = False, num_cpu_blocks: int = 0,
                          event_log=None):
    """Build the named allocator over the same memory (``num_blocks *
    block_size`` token slots), so that baselines compare like for like."""
    if name == "paged":
        return PagedKVCacheManager(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching,
                                   num_cpu_blocks=num_cpu_blocks, event_log=event_log)
    if name.startswith("orca-") and name[5:] in ("max", "pow2", "oracle"):
        return ContiguousKVCacheManager(num_blocks * block_size, name[5:], max_model_len=max_model_len)
    raise ValueError(f"unknown allocator {name!r}; choose one of {', '.join(ALLOCATORS)}")
