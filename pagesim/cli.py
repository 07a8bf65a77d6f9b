"""``pagesim``: replay traces through the KV-cache manager and compare
allocators. ``pagesim --help`` lists the commands; every option has help.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from pagesim.calibrate_cli import add_subcommands as add_calibration_commands
from pagesim.sim.allocators import ALLOCATORS
from pagesim.sim.config import VICTIM_POLICIES, SchedulerConfig, config_help
from pagesim.sim.serving_metrics import parse_goodput, parse_percentiles


def add_workload_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("trace", nargs="?", help="trace file (Azure, Mooncake, Vidur, lengths, token-id "
                   "JSONL, pagesim Parquet/CSV); omitted: a synthetic workload")
    g.add_argument("--format", dest="trace_format", help="trace format, if not detected")
    g.add_argument("--workload", choices=["default", "sharegpt", "alpaca"], default="default",
                   help="synthetic workload when no TRACE is given (default: 3,000 ShareGPT-like "
                   "requests at 20 req/s)")
    g.add_argument("--num-requests", type=int, help="requests of the synthetic workload")
    g.add_argument("--rate", type=float, help="mean arrival rate (req/s): synthetic workloads, "
                   "length-only traces, or to re-time a trace with Poisson arrivals")
    g.add_argument("--cv", type=float, help="burstiness: coefficient of variation of gaps (Gamma)")
    g.add_argument("--n", type=int, default=1, help="parallel samples per request")
    g.add_argument("--beam-width", type=int, default=1, help="beam search width")
    g.add_argument("--system-prompt", type=int, default=0, help="shared system prompt tokens")
    g.add_argument("--few-shot", choices=["one-shot", "five-shot"], help="shared few-shot prefix")
    g.add_argument("--on-too-long", choices=["reject", "truncate", "error"], default="reject",
                   help="requests longer than --max-model-len (always reported)")
    g.add_argument("--limit", type=int, help="replay only the first N requests")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and hardware")
    g.add_argument("--model", default="llama-3-8b", help="model preset (see README)")
    g.add_argument("--gpu", default="h100-80gb", help="GPU preset (see README)")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory vLLM may use (sizes the KV cache)")
    g.add_argument("--num-gpu-blocks", type=int, help="KV blocks, overriding the size derived from memory")
    g.add_argument("--num-cpu-blocks", type=int, help="CPU swap blocks (default 4 GiB with --preemption swap)")
    g.add_argument("--cost-model", default="auto",
                   help="'auto' (a shipped calibration matching --model/--gpu/--tp/--block-size, "
                   "else roofline; the summary says which), 'roofline', or a calibration file")
    g.add_argument("--executor", choices=["sim", "gpu"], default="sim",
                   help="sim: cost model; gpu: run every step on the GPU (gpu extra)")
    a = p.add_argument_group("allocator and scheduler")
    a.add_argument("--allocator", choices=ALLOCATORS, default="paged", help="KV memory manager")
    a.add_argument("--block-size", type=int, default=16, help="tokens per KV block (1..256)")
    a.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse cached prefix blocks (vLLM V1 semantics)")
    helps = config_help(SchedulerConfig)
    d = SchedulerConfig()
    a.add_argument("--scheduler", choices=["v1", "v0"], default=d.generation, help=helps["generation"])
    a.add_argument("--preemption", choices=["recompute", "swap"], default=d.preemption,
                   help=helps["preemption"])
    a.add_argument("--victim", choices=VICTIM_POLICIES, default=d.victim, help=helps["victim"])
    a.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help=helps["max_num_seqs"])
    a.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens,
                   help=helps["max_num_batched_tokens"])
    a.add_argument("--chunked-prefill", action=argparse.BooleanOptionalAction,
                   default=d.chunked_prefill, help=helps["chunked_prefill"])
    a.add_argument("--watermark", type=float, default=d.watermark, help=helps["watermark"])
    a.add_argument("--max-model-len", type=int, help="longest request (default: the model's)")
    a.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    a.add_argument("--step-by-step", action="store_true",
                   help="no fast decode stretches (same results, slower; for checking)")
    a.add_argument("--check-invariants", type=int, default=0, metavar="N",
                   help="check the allocator and scheduler invariants every N steps (slow; 0: off)")
    m = p.add_argument_group("serving metrics (as vllm bench serve)")
    m.add_argument("--metric-percentiles", default="99",
                   help="comma-separated percentiles of TTFT/TPOT/ITL/E2EL in summary.json (default 99)")
    m.add_argument("--goodput", nargs="+", metavar="NAME:MS",
                   help="SLOs for request_goodput, e.g. ttft:500 tpot:50 (NAME in ttft, tpot, e2el)")


def load_workload(args):
    from pagesim import traces
    from pagesim.sim.costmodel import get_model
    from pagesim.traces.synthetic import DEFAULT_REQUESTS
    max_len = args.max_model_len or get_model(args.model).max_model_len
    if args.trace:
        arrival = args.rate if args.rate is not None else None
        trace = traces.load_trace(args.trace, args.trace_format, arrival=arrival, seed=args.seed,
                                  max_model_len=max_len, on_too_long=args.on_too_long)
    elif (args.workload == "default" and args.num_requests is None and args.rate is None
          and args.n == 1 and args.beam_width == 1 and not args.system_prompt and not args.few_shot
          and args.cv is None):
        trace = traces.default_workload(args.seed)
    else:
        workload = "sharegpt" if args.workload == "default" else args.workload
        trace = traces.synthetic(workload, num_requests=args.num_requests or DEFAULT_REQUESTS,
                                 rate=args.rate or traces.DEFAULT_RATE, cv=args.cv, n=args.n,
                                 beam_width=args.beam_width, system_prompt_tokens=args.system_prompt,
                                 few_shot=args.few_shot, seed=args.seed)
    if args.limit is not None:
        trace = trace[: args.limit]
    return trace, max_len


def replay_config(args, max_len: int):
    from pagesim.replay import ReplayConfig
    sched = SchedulerConfig(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        chunked_prefill=args.chunked_prefill, watermark=args.watermark, generation=args.scheduler,
        preemption=args.preemption, victim=args.victim, max_model_len=max_len)
    return ReplayConfig(
        model=args.model, gpu=args.gpu, tp=args.tp, gpu_memory_utilization=args.gpu_memory_utilization,
        num_gpu_blocks=args.num_gpu_blocks, num_cpu_blocks=args.num_cpu_blocks,
        block_size=args.block_size, allocator=args.allocator, prefix_caching=args.prefix_caching,
        cost_model=args.cost_model, scheduler=sched, seed=args.seed,
        events=getattr(args, "events", False), fast=not args.step_by_step,
        check_invariants=args.check_invariants,
        metric_percentiles=parse_percentiles(args.metric_percentiles), goodput=parse_goodput(args.goodput))


def make_executor(args, cfg):
    if args.executor == "sim":
        return None
    from pagesim.gpu.executor import executor_for_replay  # needs the [gpu] extra
    return executor_for_replay(cfg)


def print_summary(s: dict, out=sys.stdout) -> None:
    r, lat, th, mem, sim = s["requests"], s["latency"], s["throughput"], s["memory_split"], s["sim"]
    c = s.get("config", {})

    def f(x, scale=1.0, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x * scale)

    rows = [
        ("allocator", f"{c.get('allocator')} (block {c.get('block_size')}, {c.get('num_gpu_blocks')} blocks)"),
        ("requests", f"{r['finished']} finished / {r['total']} ({r['rejected']} rejected)"),
        ("TTFT mean / p99", f"{f(lat['ttft_mean_s'])} s / {f(lat['ttft_p99_s'])} s"),
        ("TPOT mean", f"{f(lat['tpot_mean_s'], 1e3, '{:.2f}')} ms"),
        ("normalized latency", f"{f(lat['normalized_latency_mean_s_per_token'], 1e3, '{:.2f}')} ms/token"),
        ("throughput", f"{th['requests_per_s']:.2f} req/s, {th['output_tokens_per_s']:.0f} tok/s"),
        ("preemptions", str(s["preemptions"])),
        ("prefix-cache hit rate", f"{s['prefix_cache']['hit_rate_tokens']:.1%}"),
        ("KV memory (time avg)", "  ".join(f"{k} {v:.1%}" for k, v in mem.items())),
        ("simulated", f"{sim['sim_time_s']:.1f} s in {sim['steps']} steps, wall {sim['wall_s']:.2f} s "
                      f"({sim['sim_time_s'] / max(sim['wall_s'], 1e-9):.0f}x real time)"),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=out)


def cmd_replay(args) -> int:
    from pagesim.replay import run_replay, write_outputs
    trace, max_len = load_workload(args)
    cfg = replay_config(args, max_len)
    print(f"replaying {len(trace)} requests from {trace.source or 'synthetic'} "
          f"({cfg.model} on {cfg.gpu}, {cfg.allocator})", file=sys.stderr)
    result = run_replay(trace, cfg, executor=make_executor(args, cfg), progress=not args.quiet,
                        record_requests=bool(args.timeline))
    print_summary(result.summary)
    if args.out:
        files = write_outputs(result, args.out, plots=not args.no_plots, table_format=args.table_format,
                              report=args.report, timeline=args.timeline)
        print(f"wrote {len(files)} files to {args.out}/ ({', '.join(p.name for p in files)})")
    return 0


def cmd_compare(args) -> int:
    from pagesim.compare import run_all
    runs = compare_runs(args)
    results = run_all(runs, progress=not args.quiet)
    from pagesim.analysis.compare import format_table, table
    tab = table(results)
    print(format_table(tab))
    if args.out:
        from pagesim.compare import write_compare
        files = write_compare(results, tab, args.out, option=compare_option(args),
                              plots=not args.no_plots, report=args.report)
        print(f"wrote {len(files)} files to {args.out}/ ({', '.join(p.name for p in files)})")
    return 0


def compare_option(args) -> str:
    return args.vary.partition("=")[0].replace("-", "_") if args.vary else "allocator"


def compare_runs(args) -> list:
    """(label, trace, config) per compared value: ``--vary OPTION=V1,V2``
    or, by default, the ``--allocators``."""
    from pagesim.compare import variants
    if args.vary:
        option, sep, values = args.vary.partition("=")
        values = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not values:
            raise ValueError(f"--vary: expected OPTION=V1,V2,..., got {args.vary!r}")
        if option == "rate":
            runs = []
            for v in values:
                args.rate = _positive_float(v, "--vary rate")
                trace, max_len = load_workload(args)
                runs.append((f"rate={v}", trace, replay_config(args, max_len)))
            return runs
    else:
        option, values = "allocator", [a.strip() for a in args.allocators.split(",") if a.strip()]
        for a in values:
            if a not in ALLOCATORS:
                raise ValueError(f"unknown allocator {a!r}; choose from {', '.join(ALLOCATORS)}")
    trace, max_len = load_workload(args)
    base = replay_config(args, max_len)
    labelled = variants(base, option, values)
    if not args.vary:
        labelled = [(cfg.allocator, cfg) for _, cfg in labelled]
    return [(label, trace, cfg) for label, cfg in labelled]


def _positive_float(v: str, what: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"{what}: {v!r} is not a number") from None
    if x <= 0:
        raise ValueError(f"{what}: {v!r} must be positive")
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagesim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="replay a trace (or the built-in default) and report")
    add_workload_options(r)
    add_engine_options(r)
    r.add_argument("--events", action="store_true", help="write the allocator event log")
    r.add_argument("--out", help="output folder (summary.json, tables, plots)")
    r.add_argument("--table-format", choices=["parquet", "csv"], default="parquet")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the self-contained HTML report (report.html) with --out")
    r.add_argument("--timeline", nargs="?", type=int, const=1000, metavar="MAX_REQUESTS",
                   help="write timeline.json (Chrome/Perfetto trace: engine steps, one track per "
                   "request) with --out; at most MAX_REQUESTS request tracks (default 1000)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_replay)
    c = sub.add_parser("compare", help="several allocators on one trace, side by side")
    add_workload_options(c)
    add_engine_options(c)
    c.add_argument("--allocators", default=",".join(ALLOCATORS),
                   help="comma-separated allocators to compare")
    c.add_argument("--vary", metavar="OPTION=V1,V2",
                   help="compare values of any option instead of allocators, e.g. block-size=8,16,32, "
                   "victim=latest,most-blocks, prefix-caching=on,off, rate=10,20,40")
    c.add_argument("--out", help="folder for compare.csv, compare.png, report.html")
    c.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    c.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the self-contained HTML report (report.html)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_compare)
    from pagesim.trace_cli import add_subcommands
    add_subcommands(sub)
    add_calibration_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # TraceError is a ValueError
        print(f"pagesim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
