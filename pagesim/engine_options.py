"""How the model, hardware, allocator and scheduler options of ``replay``
and ``compare`` combine (the options themselves: ``option_groups.py``).

Each value is checked by its option's check (``pagesim.options``) as it is
parsed; ``engine_conflicts`` then finds the combinations that cannot run
(``--preemption swap`` with no CPU blocks, a tensor-parallel degree that
does not divide the heads, weights that do not fit), so that each is refused
with the option's name before a trace is even read.
"""
from __future__ import annotations

from dataclasses import replace

from pagesim.sim.costmodel import get_model, kv_cache_blocks, kv_heads_per_gpu, make_cost_model


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
