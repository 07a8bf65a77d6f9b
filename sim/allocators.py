"""Registry: allocator name -> KV-cache manager factory, and the check that
a configuration asks nothing of an allocator that it cannot do.

Names are the ones the CLI exposes (``--allocator``). Every option is either
honoured by every allocator or refused with the reason (the CLI exits 2):

================== ============ ==============================================
option             paged        contiguous baselines (orca-*)
================== ============ ==============================================
prefix caching     honoured     refused (no shared blocks); off by default
swap preemption    honoured     refused (no CPU pool), as is --num-cpu-blocks
beams, V0 n > 1    honoured     refused (no fork); V1 n > 1 runs as child
                                requests, each with its own region
watermark          honoured     honoured: slots kept free when admitting
block size         honoured     sets the capacity only (num_blocks x
                                block_size slots, the paged run's memory)
event log          honoured     refused (no blocks to log)
GPU executor       honoured     refused by the GPU executor (no block tables)
--placement        refused (no  honoured: buddy (default, the paper's Orca)
                   regions)     or first-fit on exact sizes
vLLM profile       honoured     watermark only (no null block, free queue or
                                hash table to behave differently)
================== ============ ==============================================
"""
from __future__ import annotations

from pagesim.sim.config import SchedulerConfig
from pagesim.sim.contiguous import PLACEMENTS as CONTIGUOUS_PLACEMENTS
from pagesim.sim.contiguous import ContiguousKVCacheManager
from pagesim.sim.kv_cache_manager import PagedKVCacheManager
from pagesim.sim.kv_protocol import Capabilities, KVCacheManager
from pagesim.sim.offload import OffloadingKVCacheManager

ALLOCATORS = ("paged", "orca-max", "orca-pow2", "orca-oracle")
PLACEMENTS = tuple(CONTIGUOUS_PLACEMENTS)


class Unsupported(ValueError):
    """The configuration needs a capability the allocator lacks."""


def default_prefix_caching(name: str) -> bool:
    """Prefix caching is on where the allocator supports it."""
    return name == "paged"


def make_kv_cache_manager(name: str, *, num_blocks: int, block_size: int, max_model_len: int,
                          enable_prefix_caching: bool = False, num_cpu_blocks: int = 0,
                          event_log=None, config: SchedulerConfig | None = None,
                          placement: str | None = None, cpu_offload_blocks: int = 0) -> KVCacheManager:
    """Build the named allocator over the same memory (``num_blocks *
    block_size`` token slots), so that baselines compare like for like.

    ``config`` is the scheduler's configuration: its behaviour profile
    (``--vllm``) decides the paged pool's null block, free order and
    duplicate caching, so a manager built here behaves as in ``replay``
    (default: ``SchedulerConfig()``, the CLI's default profile).
    ``placement`` places the contiguous baselines' regions: ``buddy`` (the
    vLLM paper's Orca; None means it) or ``first-fit`` on exact sizes; the
    paged allocator has no regions to place and refuses one.
    ``cpu_offload_blocks``: a CPU tier under the paged prefix cache
    (``sim/offload.py``); 0: none."""
    if name == "paged":
        refuse(name, [(placement is not None,
                       f"--placement {placement} (no contiguous regions): leave out --placement")])
        b = (config or SchedulerConfig()).behaviour
        kw = dict(enable_prefix_caching=enable_prefix_caching, num_cpu_blocks=num_cpu_blocks,
                  null_block=b.null_block, unhashed_first=b.unhashed_first,
                  cache_duplicates=b.cache_duplicates, event_log=event_log)
        if cpu_offload_blocks:
            refuse(name, [(not enable_prefix_caching,
                           "a CPU offload tier without prefix caching (nothing to find again): "
                           "use --prefix-caching")])
            return OffloadingKVCacheManager(num_blocks, block_size,
                                            cpu_offload_blocks=cpu_offload_blocks, **kw)
        return PagedKVCacheManager(num_blocks, block_size, **kw)
    if name.startswith("orca-") and name[5:] in ("max", "pow2", "oracle"):
        refuse(name, [
            (enable_prefix_caching, "prefix caching (no shared blocks): use --no-prefix-caching"),
            (num_cpu_blocks > 0, "a CPU pool (no swapping): leave out --num-cpu-blocks"),
            (cpu_offload_blocks > 0, "a CPU offload tier (no prefix cache): leave out "
                                     "--cpu-offload-blocks"),
            (event_log is not None, "an event log (no blocks to log): leave out --events"),
            (placement is not None and placement not in PLACEMENTS,
             f"--placement {placement}: choose one of {', '.join(PLACEMENTS)}"),
        ])
        return ContiguousKVCacheManager(num_blocks * block_size, name[5:], max_model_len=max_model_len,
                                        placement=placement or "buddy")
    raise ValueError(f"unknown allocator {name!r}; choose one of {', '.join(ALLOCATORS)}")


def check_supported(name: str, caps: Capabilities, *, preemption: str, forks: bool) -> None:
    """Refuse what the scheduler would need and ``caps`` lacks (``forks``:
    some request forks: beams, V0 samples). The GPU executor refuses an
    allocator without block tables itself (``gpu/executor.py``)."""
    refuse(name, [
        (preemption == "swap" and not caps.swap,
         "swap preemption without a CPU pool: give --num-cpu-blocks > 0" if caps.paged else
         "swap preemption (no CPU pool): use --preemption recompute"),
        (forks and not caps.fork, "fork (beam search, V0 parallel samples): use --scheduler v1 "
                                  "and --beam-width 1"),
    ])


def refuse(name: str, checks: list[tuple[bool, str]]) -> None:
    for failed, what in checks:
        if failed:
            raise Unsupported(f"--allocator {name} does not support {what}")
