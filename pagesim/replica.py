"""One replica of a replay: its configuration (``ReplayConfig``), how its
allocator, scheduler, executor and engine are built (``build``), and the
pieces of its summary. ``pagesim/replay.py`` runs one replica and
``pagesim/cluster.py`` many behind a router; both build on this module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from pagesim.sim.allocators import (
    PLACEMENTS, check_supported, default_prefix_caching, make_kv_cache_manager,
)
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.costmodel import (
    KV_CACHE_DTYPES, get_model, kv_bytes_per_token, kv_cache_blocks, make_cost_model,
)
from pagesim.sim.engine import Engine
from pagesim.sim.engine.links import LINK_COLUMNS, LINK_MODELS, PricesSwaps, Transfers, link_summary
from pagesim.sim.event_log import EventLog
from pagesim.sim.executor import CostModelExecutor, cost_model_of
from pagesim.sim.metrics import StepRecorder
from pagesim.sim.offload import tier_summary
from pagesim.sim.scheduler import Scheduler
from pagesim.sim.workload import forks_of
from pagesim.traces.trace import Trace

SWAP_SPACE_BYTES = 4 * 2**30  # vLLM V0's default swap_space: 4 GiB per GPU


@dataclass(frozen=True)
class ReplayConfig:
    """Everything a replay needs besides the trace (see README for the CLI)."""

    model: str = "llama-3-8b"
    gpu: str = "h100-80gb"
    tp: int = 1
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int | None = None     # overrides the size derived from memory
    num_cpu_blocks: int | None = None     # default: 4 GiB of swap space with --preemption swap
    block_size: int = 16
    allocator: str = "paged"
    placement: str | None = None           # contiguous baselines: buddy (None: the paper's) or first-fit
    prefix_caching: bool | None = None     # None: on where the allocator supports it
    cost_model: str = "auto"               # a shipped calibration if one matches, else roofline; or "roofline" or a file
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    seed: int = 0
    events: bool = False
    fast: bool = True                      # skip over determined decode stretches
    replicas: int = 1                      # serving replicas behind a router
    router: str = "round-robin"            # routing policy (sim/router.py) when replicas > 1
    cpu_offload_blocks: int = 0            # CPU tier under the prefix cache (sim/offload.py); 0: none
    link_model: str = "none"               # "pcie": swaps and tier copies on a link per replica
    pcie_bandwidth_gbps: float | None = None   # the link's bandwidth (GB/s); None: the cost model's
    check_invariants: int = 0              # check allocator/scheduler invariants every N steps (0: off)
    metric_percentiles: tuple[float, ...] = (99.0,)   # vllm bench serve --metric-percentiles
    goodput: tuple[tuple[str, float], ...] = ()       # SLOs in ms: (("ttft", 500.0), ...)
    kv_cache_dtype: str = "auto"           # vLLM --kv-cache-dtype: auto (the model's) or fp8*

    def __post_init__(self) -> None:
        if not 1 <= self.block_size <= 256:
            raise ValueError(f"block_size must be in 1..256, got {self.block_size}")
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, got {self.replicas!r}")
        if not isinstance(self.cpu_offload_blocks, int) or self.cpu_offload_blocks < 0:
            raise ValueError(f"cpu_offload_blocks must be an int >= 0, got {self.cpu_offload_blocks!r}")
        if self.link_model not in LINK_MODELS:
            raise ValueError(f"link_model must be one of {', '.join(LINK_MODELS)}, got {self.link_model!r}")
        if self.pcie_bandwidth_gbps is not None and (
                self.link_model == "none" or not self.pcie_bandwidth_gbps > 0):
            raise ValueError("pcie_bandwidth_gbps must be a positive number of GB/s, with "
                             f"link_model 'pcie'; got {self.pcie_bandwidth_gbps!r} with {self.link_model!r}")
        if not isinstance(self.check_invariants, int) or self.check_invariants < 0:
            raise ValueError(f"check_invariants must be an int >= 0, got {self.check_invariants!r}")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks <= 0:
            raise ValueError(f"num_gpu_blocks must be positive, got {self.num_gpu_blocks}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.scheduler.max_model_len is None:  # the model's own limit
            object.__setattr__(self, "scheduler", replace(
                self.scheduler, max_model_len=get_model(self.model).max_model_len))

    def model_spec(self):
        """The model with this run's K/V dtype: what sizes the cache and
        prices its reads (an fp8 cache holds twice the tokens per byte)."""
        spec = get_model(self.model)
        if self.kv_cache_dtype == "auto":
            return spec
        return replace(spec, kv_cache_dtype=self.kv_cache_dtype)

    def caching(self) -> bool:
        """Whether prefix caching is asked for (explicitly, or by default)."""
        if self.prefix_caching is None:
            return default_prefix_caching(self.allocator)
        return self.prefix_caching

    def gpu_blocks(self) -> int:
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        return kv_cache_blocks(self.model_spec(), self.gpu, self.block_size,
                               self.gpu_memory_utilization, self.tp)

    def cpu_blocks(self) -> int:
        if self.num_cpu_blocks is not None:
            return self.num_cpu_blocks
        if self.scheduler.preemption != "swap" or self.allocator != "paged":
            return 0
        return SWAP_SPACE_BYTES // (self.block_size * kv_bytes_per_token(self.model_spec(), self.tp))


@dataclass
class ReplayResult:
    summary: dict
    requests: object   # pandas DataFrame, one row per trace request
    steps: object      # one row per engine step: a DataFrame, or a StepsFile (``steps_path``)
    events: EventLog | None
    config: ReplayConfig
    request_events: object = None  # DataFrame (step, request, kind, queried, cached)
    links: object = None           # DataFrame of PCIe transfers (--link-model pcie), else None


def build(trace, cfg: ReplayConfig, executor=None, *, env=None, source=None, sink=None):
    """(engine, scheduler, kv manager, recorder) ready to run (one replica;
    ``env`` and ``source`` put it in a cluster, see ``pagesim/cluster.py``;
    ``sink`` receives the steps' rows as the run goes, see ``StepRecorder``).

    Raises ``Unsupported`` (a ValueError) when the configuration or the
    trace needs something the allocator cannot do (``sim/allocators.py``)."""
    sched_cfg = cfg.scheduler
    log = EventLog() if cfg.events else None
    kv = make_kv_cache_manager(cfg.allocator, num_blocks=cfg.gpu_blocks(), block_size=cfg.block_size,
                               max_model_len=sched_cfg.max_model_len,
                               enable_prefix_caching=cfg.caching(),
                               num_cpu_blocks=cfg.cpu_blocks(), event_log=log, config=sched_cfg,
                               placement=cfg.placement, cpu_offload_blocks=cfg.cpu_offload_blocks)
    if executor is None:
        executor = CostModelExecutor(make_cost_model(cfg.cost_model, cfg.model_spec(), cfg.gpu, cfg.tp,
                                                     cfg.block_size))
    generation = sched_cfg.generation
    check_supported(cfg.allocator, kv.caps, preemption=sched_cfg.preemption,
                    forks=any(forks_of(r, generation) > 1 for r in trace))
    rng = np.random.default_rng(cfg.seed)
    sched = Scheduler(sched_cfg, kv, rng=rng, event_log=log)
    sched.plan_tables = executor.needs_plans and kv.caps.paged
    recorder = StepRecorder(kv.usage_from, sink=sink)
    engine = Engine(trace, sched, executor, fast=cfg.fast, recorder=recorder,
                    check_invariants=cfg.check_invariants, env=env, source=source)
    engine.transfers = make_transfers(cfg, engine, sched)
    return engine, sched, kv, recorder


def make_transfers(cfg: ReplayConfig, engine, sched) -> Transfers | None:
    """The replica's block moves beyond its plans' swaps (``sim/engine/links.py``):
    None unless a CPU offload tier or a link model is asked for, so that
    other runs take exactly today's path."""
    if cfg.link_model == "none":
        return Transfers(engine.env, sched, links=False) if sched.tier is not None else None
    if engine.executor.needs_plans:
        raise ValueError("--link-model pcie prices transfers with a cost model: an executor that "
                         "runs steps (e.g. --executor gpu) moves its blocks itself")
    if cfg.pcie_bandwidth_gbps is not None:  # one block's K and V over the given bandwidth
        block_bytes = kv_bytes_per_token(get_model(cfg.model), cfg.tp) * cfg.block_size
        return Transfers(engine.env, sched, links=True,
                         block_s=block_bytes / (cfg.pcie_bandwidth_gbps * 1e9))
    model = cost_model_of(engine.executor)
    if not isinstance(model, PricesSwaps):
        raise ValueError("--link-model pcie needs a cost model with a per-block swap time "
                         "(swap_block_s: the roofline's PCIe bandwidth or a calibration file's)")
    return Transfers(engine.env, sched, links=True, block_s=float(model.swap_block_s))


def add_transfer_summary(summary: dict, cfg: ReplayConfig, engine, kv):
    """The CPU tier's split of the hit rate (``prefix_cache.tiers``) and
    the link's traffic (``links``) where asked for; returns the link's
    transfers as a DataFrame (None without links). Runs without either
    keep today's summary."""
    if cfg.cpu_offload_blocks:
        summary["prefix_cache"]["tiers"] = tier_summary([engine.sched], [kv])
    if cfg.link_model == "none":
        return None
    rows = sorted(engine.transfers.rows(), key=lambda r: (r[2], r[0]))  # by step, h2d first
    summary["links"] = link_summary(rows, engine.clock)
    return pd.DataFrame(rows, columns=list(LINK_COLUMNS))


def has_content_identity(trace, cfg: ReplayConfig) -> bool:
    """Whether any prompt could ever hit the prefix cache: some request
    carries token ids or hash ids, or (V1) shares its prompt with its own
    samples. Without that, every block is unique and a 0 % hit rate would
    report the trace, not the cache."""
    v1 = cfg.scheduler.generation == "v1"
    if isinstance(trace, Trace):
        known = (pd.notna(trace.column("prompt_token_ids")).any()
                 or pd.notna(trace.column("block_hashes")).any())
        return bool(known or (v1 and (trace.column("n") > 1).any()))
    return any(r.prompt_token_ids is not None or r.block_hashes is not None or (v1 and r.n > 1)
               for r in trace)


def check_drained(sched, kv) -> None:
    """Conservation at the end of a run: nothing left, no block leaked."""
    assert not sched.has_work(), "engine stopped with work left"
    assert kv.num_seqs == 0, f"{kv.num_seqs} sequences still hold KV at the end"
    assert kv.live_tokens == 0, "live token count is not zero at the end"
    split = kv.usage()
    assert split.internal_frag == split.external_frag == 0, f"KV memory leaked: {split}"


def config_dict(cfg: ReplayConfig, kv) -> dict:
    d = asdict(cfg)
    d["num_gpu_blocks"] = kv.num_blocks if kv.caps.paged else cfg.gpu_blocks()
    d["prefix_caching"] = kv.caps.prefix_caching
    d["capacity_tokens"] = kv.capacity_tokens
    return d


__all__ = ["ReplayConfig", "ReplayResult", "build", "make_transfers", "add_transfer_summary",
           "has_content_identity", "check_drained", "config_dict", "replace"]
