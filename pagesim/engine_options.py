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

from pagesim import options as opt
from pagesim.sim.allocators import ALLOCATORS, PLACEMENTS
from pagesim.sim.config import SchedulerConfig, config_help
from pagesim.sim.policies import ORDER_POLICIES, VICTIM_POLICIES
from pagesim.sim.router import ROUTERS
from pagesim.sim.vllm_profile import BEHAVIOURS, PROFILES
from pagesim.sim.costmodel import get_model, kv_cache_blocks, kv_heads_per_gpu, make_cost_model


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and hardware")
    g.add_argument("--model", type=opt.model_preset, default="llama-3-8b",
                   help="model preset (see README)")
    g.add_argument("--gpu", type=opt.gpu_preset, default="h100-80gb", help="GPU preset (see README)")
    g.add_argument("--tp", type=opt.positive_int, default=1, help="tensor-parallel GPUs")
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
    helps = config_help(SchedulerConfig)
    d = SchedulerConfig()
    a.add_argument("--scheduler", choices=["v1", "v0"], default=d.generation, help=helps["generation"])
    a.add_argument("--preemption", choices=["recompute", "swap"], default=d.preemption,
                   help=helps["preemption"])
    a.add_argument("--order", choices=list(ORDER_POLICIES), default=d.order, help=helps["order"])
    a.add_argument("--victim", choices=list(VICTIM_POLICIES), default=d.victim, help=helps["victim"])
    a.add_argument("--max-num-seqs", type=opt.positive_int, default=d.max_num_seqs,
                   help=helps["max_num_seqs"])
    a.add_argument("--max-num-batched-tokens", type=opt.positive_int,
                   default=d.max_num_batched_tokens, help=helps["max_num_batched_tokens"])
    a.add_argument("--chunked-prefill", action=argparse.BooleanOptionalAction,
                   default=d.chunked_prefill, help=helps["chunked_prefill"])
    a.add_argument("--vllm", choices=list(PROFILES), default=d.vllm, help=helps["vllm"])
    a.add_argument("--watermark", type=opt.watermark, default=None,
                   help=helps["watermark"] + " (in [0, 1))")
    for name in BEHAVIOURS:  # each behaviour of the profile, also a switch of its own
        if name != "watermark":
            a.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                           default=None, help=helps[name])
    a.add_argument("--max-model-len", type=opt.int_at_least(2, " (a prompt and an output token)"),
                   help="longest request, prompt + output tokens (default: the model's)")
    a.add_argument("--seed", type=opt.non_negative_int, default=0,
                   help="seeds every random choice (a non-negative integer)")
    a.add_argument("--step-by-step", action="store_true",
                   help="no fast decode stretches (same results, slower; for checking)")
    c = p.add_argument_group("cluster")
    c.add_argument("--replicas", type=opt.positive_int, default=1,
                   help="serving replicas behind a router, each with its own KV cache (default 1)")
    c.add_argument("--router", choices=sorted(ROUTERS), default="round-robin",
                   help="routing policy with --replicas > 1 (sim/router.py)")
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
    try:
        kv_heads_per_gpu(get_model(args.model), args.tp)
    except ValueError as exc:
        found.append(("--tp", str(exc)))
    found += swap_conflicts(args.preemption, args.scheduler, args.num_cpu_blocks)
    if args.allocator == "paged" and args.placement is not None:
        found.append(("--placement", "places the contiguous baselines' regions; --allocator paged "
                      "has none (use --allocator orca-*)"))
    if args.allocator != "paged" and getattr(args, "events", False):
        found.append(("--events", f"the {args.allocator} allocator keeps no block-level event log"))
    if args.cost_model not in ("auto", "roofline") and not found:
        try:
            make_cost_model(args.cost_model, args.model, args.gpu, args.tp, args.block_size)
        except ValueError as exc:
            found.append(("--cost-model", str(exc)))
    if args.executor == "gpu":
        found += gpu_executor_conflicts(args)
    if not found and args.num_gpu_blocks is None:
        try:
            kv_cache_blocks(args.model, args.gpu, args.block_size, args.gpu_memory_utilization,
                            args.tp)
        except ValueError as exc:
            found.append(("--gpu-memory-utilization", str(exc)))
    return found


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
