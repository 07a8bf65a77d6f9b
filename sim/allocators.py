"""Registry: allocator name -> KV-cache manager factory.

Names are the ones the CLI exposes (``--allocator``).
"""
from __future__ import annotations

from pagesim.sim.config import SchedulerConfig
from pagesim.sim.contiguous import PLACEMENTS as CONTIGUOUS_PLACEMENTS
from pagesim.sim.contiguous import ContiguousKVCacheManager
from pagesim.sim.kv_cache_manager import PagedKVCacheManager

ALLOCATORS = ("paged", "orca-max", "orca-pow2", "orca-oracle")
PLACEMENTS = tuple(CONTIGUOUS_PLACEMENTS)


def make_kv_cache_manager(name: str, *, num_blocks: int, block_size: int, max_model_len: int,
                          enable_prefix_caching: bool = False, num_cpu_blocks: int = 0,
                          event_log=None, config: SchedulerConfig | None = None,
                          placement: str = "buddy"):
    """Build the named allocator over the same memory (``num_blocks *
    block_size`` token slots), so that baselines compare like for like.

    ``config`` is the scheduler's configuration: its behaviour profile
    (``--vllm``) decides the paged pool's null block, free order and
    duplicate caching, so a manager built here behaves as in ``replay``
    (default: ``SchedulerConfig()``, the CLI's default profile).
    ``placement`` places the contiguous baselines' regions: ``buddy`` (the
    vLLM paper's Orca) or ``first-fit`` on exact sizes."""
    if name == "paged":
        b = (config or SchedulerConfig()).behaviour
        return PagedKVCacheManager(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching,
                                   num_cpu_blocks=num_cpu_blocks, null_block=b.null_block,
                                   unhashed_first=b.unhashed_first,
                                   cache_duplicates=b.cache_duplicates, event_log=event_log)
    if name.startswith("orca-") and name[5:] in ("max", "pow2", "oracle"):
        return ContiguousKVCacheManager(num_blocks * block_size, name[5:], max_model_len=max_model_len,
                                        placement=placement)
    raise ValueError(f"unknown allocator {name!r}; choose one of {', '.join(ALLOCATORS)}")
