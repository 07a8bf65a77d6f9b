"""Model, hardware, allocator and scheduler options of ``replay`` and
``compare``, and the checks of how they combine.

Each value is checked by its ``type`` (``pagesim.options``) as it is
parsed; ``engine_conflicts`` then finds the combinations that cannot run
(``--preemption swap`` with no CPU blocks, a tensor-parallel degree that
does not divide the heads, weights that do not fit), so that each is refused
with the option's name before a trace is even read.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from pagesim import options as opt
from pagesim.sim.allocators import ALLOCATORS, PLACEMENTS
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.policies import ORDER_POLICIES, VICTIM_POLICIES
from pagesim.sim.engine.links import LINK_MODELS
from pagesim.sim.router import ROUTERS
from pagesim.sim.vllm_profile import BEHAVIOURS, PROFILES
from pagesim.sim.costmodel import (
    KV_CACHE_DTYPES, get_model, kv_cache_blocks, kv_heads_per_gpu, make_cost_model,
)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and hardware")
    g.add_argument("--model", type=opt.model_preset, default="llama-3-8b",
                   help="model preset (see README)")
    g.add_argument("--gpu", type=opt.gpu_preset, default="h100-80gb", help="GPU preset (see README)")
    g.add_argument("--tp", type=opt.positive_int, default=1, help="tensor-parallel GPUs")
    g.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                   help="K/V element type, as vLLM's: auto (the model's dtype) or fp8 (one byte: "
                   "twice the tokens in the same memory, half the bytes read per token)")
    g.add_argument("--gpu-memory-utilization", type=opt.fraction, default=0.9,
                   help="fraction of GPU memory vLLM may use, in (0, 1] (sizes the KV cache)")
    g.add_argument("--num-gpu-blocks", type=opt.positive_int,
                   help="KV blocks, overriding the size derived from memory")
    g.add_argument("--num-cpu-blocks", type=opt.non_negative_int,
                   help="CPU swap blocks (default 4 GiB with --preemption swap)")
    g.add_argument("--cost-model", type=opt.cost_model, default="auto",
                   help="'auto' (a shipped calibration matching --model/--gpu/--tp/--block-size, "
                   "else roofline; the summary says which), 'roofline', or a calibration file")
    g.add_argument("--executor", choices=["sim", "gpu"], default="sim",
                   help="sim: cost model; gpu: run every step on the GPU (pip install 'pagesim[gpu]')")
    a = p.add_argument_group("allocator and scheduler")
    a.add_argument("--allocator", choices=ALLOCATORS, default="paged", help="KV memory manager")
    a.add_argument("--placement", choices=PLACEMENTS, default=None,
                   help="where the contiguous baselines (orca-*) place a request's region: a "
                   "binary buddy allocator (default, the vLLM paper's Orca) or first-fit on exact "
                   "sizes; refused with --allocator paged")
    a.add_argument("--block-size", type=opt.block_size, default=16,
                   help=f"tokens per KV block (1..{opt.MAX_BLOCK_SIZE})")
    a.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse cached prefix blocks (vLLM V1 semantics; default: on where the "
                   "allocator supports it, i.e. paged)")
    opt.add_dataclass_options(a, SchedulerConfig)   # declared once, in sim/config.py
    a.add_argument("--seed", type=opt.non_negative_int, default=0,
                   help="seeds every random choice (a non-negative integer)")
    a.add_argument("--step-by-step", action="store_true",
                   help="no fast decode stretches (same results, slower; for checking)")
    c = p.add_argument_group("cluster")
    c.add_argument("--replicas", type=opt.positive_int, default=1,
                   help="serving replicas behind a router, each with its own KV cache (default 1)")
    c.add_argument("--router", choices=sorted(ROUTERS), default="round-robin",
                   help="routing policy with --replicas > 1 (sim/router.py)")
    c.add_argument("--cpu-offload-blocks", type=opt.non_negative_int, default=0, metavar="N",
                   help="CPU tier of N blocks under each replica's prefix cache (LRU): evicted "
                   "prefix blocks are kept there and loaded back instead of recomputed (vLLM's "
                   "KV-offload connector, LMCache); 0: none")
    c.add_argument("--link-model", choices=LINK_MODELS, default="none",
                   help="pcie: swaps and CPU-tier copies travel on a PCIe link per replica that "
                   "overlaps compute (bandwidth from the cost model), delaying only the groups "
                   "that wait on them; none: the step pays for them (default)")
    c.add_argument("--pcie-bandwidth", type=opt.positive_float, metavar="GB/S",
                   help="with --link-model pcie: the link's bandwidth per direction in GB/s "
                   "(default: the cost model's swap time per block, from the GPU preset's PCIe "
                   "bandwidth or the calibration file)")
    a.add_argument("--check-invariants", type=opt.non_negative_int, default=0, metavar="N",
                   help="check the allocator and scheduler invariants every N steps (slow; 0: off)")
    m = p.add_argument_group("serving metrics (as vllm bench serve)")
    m.add_argument("--metric-percentiles", type=opt.metric_percentiles, default=(99.0,),
                   help="comma-separated percentiles of TTFT/TPOT/ITL/E2EL in summary.json (default 99)")
    m.add_argument("--goodput", nargs="+", type=opt.goodput_slo, metavar="NAME:MS", default=(),
                   help="SLOs for request_goodput, e.g. ttft:500 tpot:50 (NAME in ttft, tpot, e2el)")


def engine_conflicts(args) -> list[tuple[str, str]]:
    """(option, problem) for engine options that cannot work together; each
    found before anything is loaded or simulated."""
    found = []
    spec = model_spec(args)
    try:
        kv_heads_per_gpu(spec, args.tp)
    except ValueError as exc:
        found.append(("--tp", str(exc)))
    found += swap_conflicts(args.preemption, args.scheduler, args.num_cpu_blocks)
    if args.allocator == "paged" and args.placement is not None:
        found.append(("--placement", "places the contiguous baselines' regions; --allocator paged "
                      "has none (use --allocator orca-*)"))
    if args.cpu_offload_blocks:
        if args.allocator != "paged":
            found.append(("--cpu-offload-blocks", f"the {args.allocator} allocator has no prefix "
                          "cache to put a CPU tier under (use --allocator paged)"))
        elif args.prefix_caching is False:
            found.append(("--cpu-offload-blocks", "the CPU tier keeps evicted prefix-cache blocks: "
                          "it needs --prefix-caching"))
    if args.pcie_bandwidth is not None and args.link_model == "none":
        found.append(("--pcie-bandwidth", "sets the PCIe link's bandwidth: it needs --link-model pcie"))
    if args.link_model != "none" and args.executor == "gpu":
        found.append(("--link-model", "the GPU executor moves its blocks itself: use --executor sim"))
    if args.allocator != "paged" and getattr(args, "events", False):
        found.append(("--events", f"the {args.allocator} allocator keeps no block-level event log"))
    if args.cost_model not in ("auto", "roofline") and not found:
        try:
            make_cost_model(args.cost_model, spec, args.gpu, args.tp, args.block_size)
        except ValueError as exc:
            found.append(("--cost-model", str(exc)))
    if args.executor == "gpu":
        found += gpu_executor_conflicts(args)
    if not found and args.num_gpu_blocks is None:
        try:
            kv_cache_blocks(spec, args.gpu, args.block_size, args.gpu_memory_utilization,
                            args.tp)
        except ValueError as exc:
            found.append(("--gpu-memory-utilization", str(exc)))
    return found


def model_spec(args):
    """The model with the run's ``--kv-cache-dtype`` (as ``ReplayConfig.model_spec``)."""
    spec = get_model(args.model)
    return spec if args.kv_cache_dtype == "auto" else replace(spec, kv_cache_dtype=args.kv_cache_dtype)


def swap_conflicts(preemption: str, scheduler: str, num_cpu_blocks: int | None) -> list[tuple[str, str]]:
    """(option, problem) for swap preemption without what it needs, or CPU
    blocks without swap (``replay``, ``compare`` and ``validate`` share it)."""
    found = []
    if preemption == "swap":
        if scheduler != "v0":
            found.append(("--preemption", "swap exists only in the v0 scheduler (--scheduler v0)"))
        if num_cpu_blocks == 0:
            found.append(("--num-cpu-blocks", "--preemption swap needs CPU blocks to swap to; "
                          "got 0 (omit it for 4 GiB, or use --preemption recompute)"))
    elif num_cpu_blocks:
        found.append(("--num-cpu-blocks", "CPU blocks are used only by --preemption swap"))
    return found


def gpu_executor_conflicts(args) -> list[tuple[str, str]]:
    if args.kv_cache_dtype != "auto":
        return [("--executor", "gpu keeps K/V in the model's dtype: --kv-cache-dtype must be auto")]
    if args.allocator != "paged":
        return [("--executor", "gpu needs the paged allocator's block tables")]
    if args.tp != 1:
        return [("--executor", "gpu runs one GPU from the CLI: --tp must be 1 (tensor parallelism "
                 "runs through pagesim.gpu.tp.run_replay_tp)")]
    if getattr(args, "replicas", 1) != 1:
        return [("--executor", "gpu drives one replica: --replicas must be 1")]
    try:
        import torch  # noqa: F401  (the [gpu] extra: checked, not used, here)
        import triton  # noqa: F401
    except ImportError as exc:
        return [("--executor", f"gpu needs torch and triton ({exc}); install them with "
                 "pip install 'pagesim[gpu]'")]
    return []
