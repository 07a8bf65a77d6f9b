"""The option groups of ``replay`` and ``compare``: one dataclass a group,
each field an option declared once (help, check, choices: see
``generated_options.option``); tyro generates the options from them, and
``--config`` files are read through the same declarations. The scheduler's
options come from ``SchedulerConfig`` (``sim/config.py``) the same way.

The defaults are ``ReplayConfig``'s where the option is one of its fields.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagesim import options as opt
from pagesim.generated_options import option
from pagesim.sim.allocators import ALLOCATORS, PLACEMENTS
from pagesim.sim.costmodel import KV_CACHE_DTYPES
from pagesim.sim.engine.links import LINK_MODELS
from pagesim.sim.router import ROUTERS
from pagesim.traces.load import FORMATS, ON_TOO_LONG


@dataclass(frozen=True)
class ConfigOption:
    """Options kept in a file."""

    config: str | None = option(
        "read options from a YAML, TOML or JSON file (keys: option names, e.g. block_size: 32), "
        "or a run's summary.json to re-run it; options given on the command line override the "
        "file", metavar="FILE")


@dataclass(frozen=True)
class WorkloadOptions:
    """The requests replayed: a TRACE file, or a synthetic workload."""

    trace: str | None = option(
        "trace file (Azure, Mooncake, Vidur, lengths, token-id JSONL, pagesim Parquet/CSV; "
        "gzip-compressed too); omitted: a synthetic workload (default)", check=opt.trace_file,
        metavar="TRACE", positional=True)
    trace_format: str | None = option("trace format, if not detected (default: detected)",
                                      choices=FORMATS, flag="format")
    sort: bool = option("sort the trace by arrival (stable) instead of refusing a file whose "
                        "times go backwards", default=False)
    workload: str = option("synthetic workload when no TRACE is given (default: 3,000 "
                           "ShareGPT-like requests at 20 req/s)",
                           choices=("default", "sharegpt", "alpaca"), default="default")
    num_requests: int | None = option("requests of the synthetic workload (default: the "
                                      "workload's)", check=opt.positive_int, metavar="N")
    rate: float | None = option("mean arrival rate (req/s): synthetic workloads, length-only "
                                "traces, or to re-time a trace with Poisson arrivals (default: "
                                "the workload's or the trace's)", check=opt.positive_float,
                                metavar="REQ/S")
    cv: float | None = option("burstiness: coefficient of variation of gaps (Gamma arrivals; "
                              "with a TRACE, needs --rate; default: Poisson)",
                              check=opt.positive_float)
    n: int | None = option("parallel samples per request (with a TRACE: set for every request; "
                           "default: the trace's, or 1)", check=opt.positive_int)
    beam_width: int | None = option("beam search width (with a TRACE: set for every request; "
                                    "default: the trace's, or 1)", check=opt.positive_int)
    system_prompt: int = option("shared system prompt tokens (synthetic workloads)",
                                check=opt.non_negative_int, default=0, metavar="TOKENS")
    few_shot: str | None = option("shared few-shot prefix (synthetic workloads; default: none)",
                                  choices=("one-shot", "five-shot"))
    on_too_long: str = option("requests longer than --max-model-len: reject (a row with the "
                              "reason), truncate (a row marked truncated) or error (stop, naming "
                              "file and line)", choices=ON_TOO_LONG, default="reject")
    limit: int | None = option("replay only the first N requests (default: all)",
                               check=opt.positive_int, metavar="N")


@dataclass(frozen=True)
class ModelOptions:
    """Model and hardware."""

    model: str = option("model preset (see README) or a HuggingFace config.json",
                        check=opt.model_preset, default="llama-3-8b")
    gpu: str = option("GPU preset (see README) or a GPU spec file", check=opt.gpu_preset,
                      default="h100-80gb")
    tp: int = option("tensor-parallel GPUs", check=opt.positive_int, default=1)
    kv_cache_dtype: str = option(
        "K/V element type, as vLLM's: auto (the model's dtype) or fp8 (one byte: twice the "
        "tokens in the same memory, half the bytes read per token)", choices=KV_CACHE_DTYPES,
        default="auto")
    gpu_memory_utilization: float = option(
        "fraction of GPU memory vLLM may use, in (0, 1] (sizes the KV cache)",
        check=opt.fraction, default=0.9)
    num_gpu_blocks: int | None = option("KV blocks, overriding the size derived from memory "
                                        "(default: from memory)", check=opt.positive_int,
                                        metavar="N")
    num_cpu_blocks: int | None = option("CPU swap blocks (default 4 GiB with --preemption swap)",
                                        check=opt.non_negative_int, metavar="N")
    cost_model: str = option(
        "'auto' (a shipped calibration matching --model/--gpu/--tp/--block-size, else roofline; "
        "the summary says which), 'roofline', or a calibration file", check=opt.cost_model,
        default="auto", metavar="{auto,roofline,FILE}")
    executor: str = option("sim: cost model; gpu: run every step on the GPU (pip install "
                           "'pagesim[gpu]')", choices=("sim", "gpu"), default="sim")


@dataclass(frozen=True)
class AllocatorOptions:
    """KV memory manager."""

    allocator: str = option("KV memory manager", choices=ALLOCATORS, default="paged")
    placement: str | None = option(
        "where the contiguous baselines (orca-*) place a request's region: a binary buddy "
        "allocator (default, the vLLM paper's Orca) or first-fit on exact sizes; refused with "
        "--allocator paged", choices=PLACEMENTS)
    block_size: int = option(f"tokens per KV block (1..{opt.MAX_BLOCK_SIZE})",
                             check=opt.block_size, default=16)
    prefix_caching: bool | None = option("reuse cached prefix blocks (vLLM V1 semantics; "
                                         "default: on where the allocator supports it, i.e. "
                                         "paged)")


@dataclass(frozen=True)
class RunOptions:
    """Seed and checking."""

    seed: int = option("seeds every random choice (a non-negative integer)",
                       check=opt.non_negative_int, default=0)
    step_by_step: bool = option("no fast decode stretches (same results, slower; for checking)",
                                default=False)
    check_invariants: int = option("check the allocator and scheduler invariants every N steps "
                                   "(slow; 0: off)", check=opt.non_negative_int, default=0,
                                   metavar="N")


@dataclass(frozen=True)
class ClusterOptions:
    """Replicas, CPU tier and PCIe links."""

    replicas: int = option("serving replicas behind a router, each with its own KV cache",
                           check=opt.positive_int, default=1)
    router: str = option("routing policy with --replicas > 1 (sim/router.py)",
                         choices=sorted(ROUTERS), default="round-robin")
    cpu_offload_blocks: int = option(
        "CPU tier of N blocks under each replica's prefix cache (LRU): evicted prefix blocks are "
        "kept there and loaded back instead of recomputed (vLLM's KV-offload connector, "
        "LMCache); 0: none", check=opt.non_negative_int, default=0, metavar="N")
    link_model: str = option(
        "pcie: swaps and CPU-tier copies travel on a PCIe link per replica that overlaps compute "
        "(bandwidth from the cost model), delaying only the groups that wait on them; none: the "
        "step pays for them", choices=LINK_MODELS, default="none")
    pcie_bandwidth: float | None = option(
        "with --link-model pcie: the link's bandwidth per direction in GB/s (default: the cost "
        "model's swap time per block, from the GPU preset's PCIe bandwidth or the calibration "
        "file)", check=opt.positive_float, metavar="GB/S")


@dataclass(frozen=True)
class MetricsOptions:
    """Serving metrics, as vllm bench serve takes them."""

    metric_percentiles: tuple = option("comma-separated percentiles of TTFT/TPOT/ITL/E2EL in "
                                       "summary.json", check=opt.metric_percentiles,
                                       default=(99.0,), metavar="P1,P2,...")
    goodput: tuple = option("SLOs for request_goodput, e.g. ttft:500 tpot:50 (NAME in ttft, "
                            "tpot, e2el; default: none)", check=opt.goodput_slo, default=(),
                            nargs="+", metavar="NAME:MS")


@dataclass(frozen=True)
class OutputOptions:
    """What is written, and where."""

    out: str | None = option("output folder, written as a whole when the run completes "
                             "(default: none, print the summary only)", check=opt.out_dir,
                             metavar="DIR")
    overwrite: bool = option("replace an existing non-empty --out (refused otherwise)",
                             default=False)
    quiet: bool = option("no progress bar", default=False)
    no_plots: bool = option("skip the PNG plots", default=False)
    report: bool = option("write the self-contained HTML report (report.html) with --out",
                          default=True)


@dataclass(frozen=True)
class ReplayOutputOptions:
    """What only replay writes."""

    events: bool = option("write the allocator event log and its sequence map", default=False)
    table_format: str = option("format of the tables", choices=("parquet", "csv"),
                               default="parquet")
    timeline: int | None = option(
        "write timeline.json (Chrome/Perfetto trace: engine steps, one track per request) with "
        "--out; at most MAX_REQUESTS request tracks (1000 without a value; default: none)",
        check=opt.positive_int, nargs="?", const=1000, metavar="[MAX_REQUESTS]")


@dataclass(frozen=True)
class CompareOptions:
    """What is compared."""

    allocators: tuple = option("comma-separated allocators to compare",
                               check=opt.allocator_list, default=tuple(ALLOCATORS),
                               metavar="A1,A2,...")
    vary: str | None = option(
        "compare values of any option instead of allocators, e.g. block-size=8,16,32, "
        "victim=latest,most-blocks, prefix-caching=on,off, rate=10,20,40 (default: allocators)",
        check=opt.vary_spec, metavar="OPTION=V1,V2")


@dataclass(frozen=True)
class CalibrateOptions:
    """What is profiled, and where the fitted table goes."""

    model: str = option("model preset", check=opt.model_preset, default="llama-3-8b")
    gpu_memory_utilization: float = option("fraction of GPU memory for weights + KV (sizes the "
                                           "cache, as vLLM)", check=opt.fraction, default=0.9)
    block_size: int = option("tokens per KV block", check=opt.block_size, default=16)
    num_gpu_blocks: int | None = option("KV blocks (default: from memory)",
                                        check=opt.positive_int, metavar="N")
    max_num_seqs: int = option("largest decode batch", check=opt.positive_int, default=256)
    mode: str = option("synthetic decoder (model) or attention only",
                       choices=("model", "attention"), default="model")
    scale: float = option("shrink the grid's lengths and counts (dry runs on a CPU)",
                          check=opt.fraction, default=1.0)
    refit: tuple | None = option("refit the pooled samples of these calibration files (no GPU "
                                 "needed; default: profile)", nargs="+", flag="from",
                                 metavar="FILE")
    seed: int = option("seeds the profiled shapes", check=opt.non_negative_int, default=0)
    out: str | None = option("calibration file to write (JSON)", required=True, metavar="FILE")
    overwrite: bool = option("replace --out if it exists", default=False)
    quiet: bool = option("no progress bar", default=False)


@dataclass(frozen=True)
class ValidateOptions:
    """The validated workload (--measured needs the same) and the output."""

    trace: str | None = option("trace file (default: the built-in workload)",
                               check=opt.trace_file, metavar="TRACE", positional=True)
    calibration: str | None = option("calibration file (pagesim calibrate)", required=True,
                                     metavar="FILE")
    limit: int | None = option("first N requests only (default: all)", check=opt.positive_int,
                               metavar="N")
    duration_s: float | None = option("requests arriving in the first S seconds only (default: "
                                      "all)", check=opt.positive_float, metavar="S")
    n: int | None = option("parallel samples per request, set for every request (forks and "
                           "copy-on-write under --scheduler v0; default: the trace's)",
                           check=opt.positive_int)
    beam_width: int | None = option("beam search width, set for every request (default: the "
                                    "trace's)", check=opt.positive_int)
    scheduler: str = option("vLLM scheduler generation", choices=("v1", "v0"), default="v1")
    preemption: str = option("swap needs --scheduler v0", choices=("recompute", "swap"),
                             default="recompute")
    max_num_seqs: int = option("most sequences running at once", check=opt.positive_int,
                               default=256)
    num_gpu_blocks: int | None = option("KV blocks (default: from memory; small to force "
                                        "preemption)", check=opt.positive_int, metavar="N")
    num_cpu_blocks: int | None = option("CPU swap blocks (default 4 GiB with --preemption swap)",
                                        check=opt.non_negative_int, metavar="N")
    warmup: int | None = option("requests replayed first, unrecorded (default 16)",
                                check=opt.non_negative_int, metavar="N")
    measured: str | None = option("no GPU: re-check an earlier validate output folder's GPU run "
                                  "against --calibration (same workload options; default: run "
                                  "on the GPU)", metavar="DIR")
    seed: int = option("seeds the workload", check=opt.non_negative_int, default=0)
    out: str = option("output folder", default="validation", metavar="DIR")
    overwrite: bool = option("replace --out if it exists", default=False)
