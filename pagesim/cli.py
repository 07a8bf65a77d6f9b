"""``pagesim``: replay traces through the KV-cache manager and compare
allocators. ``pagesim --help`` lists the commands; every option has help.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

from pagesim import generated_options, option_groups as og
from pagesim import options as opt
from pagesim.config_file import ConfigError, config_defaults, config_path
from pagesim.engine_options import engine_conflicts
from pagesim.generated_options import OptionError, option_specs
from pagesim.outputs import OutputError, check_out, staged_dir, strict_json, write_replay
from pagesim.process import bound_memory
from pagesim.provenance import provenance
from pagesim.replay import ReplayConfig, run_replay
from pagesim.sim.config import SchedulerConfig
from pagesim.calibrate_cli import check_validate, cmd_calibrate, cmd_validate
from pagesim.sim.vllm_profile import BEHAVIOURS
from pagesim.trace_cli import add_subcommands
from pagesim.workload_options import load_workload, workload_conflicts, workload_dict

_SHARED = {"config": og.ConfigOption, "workload": og.WorkloadOptions,
           "model and hardware": og.ModelOptions, "allocator": og.AllocatorOptions,
           "scheduler": SchedulerConfig, "seed and checking": og.RunOptions,
           "cluster": og.ClusterOptions, "serving metrics": og.MetricsOptions}


def replay_config(args, max_len: int):
    sched = SchedulerConfig(
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        chunked_prefill=args.chunked_prefill, generation=args.scheduler,
        preemption=args.preemption, order=args.order, victim=args.victim, max_model_len=max_len,
        vllm=args.vllm, **{name: getattr(args, name) for name in BEHAVIOURS})
    return ReplayConfig(
        model=args.model, gpu=args.gpu, tp=args.tp, gpu_memory_utilization=args.gpu_memory_utilization,
        num_gpu_blocks=args.num_gpu_blocks, num_cpu_blocks=args.num_cpu_blocks,
        block_size=args.block_size, allocator=args.allocator, placement=args.placement,
        prefix_caching=args.prefix_caching,
        cost_model=args.cost_model, scheduler=sched, seed=args.seed,
        events=getattr(args, "events", False), fast=not args.step_by_step,
        check_invariants=args.check_invariants, replicas=args.replicas, router=args.router,
        cpu_offload_blocks=args.cpu_offload_blocks, link_model=args.link_model,
        pcie_bandwidth_gbps=args.pcie_bandwidth,
        metric_percentiles=args.metric_percentiles, goodput=tuple(dict(args.goodput or ()).items()),
        kv_cache_dtype=args.kv_cache_dtype)


def make_executor(args, cfg):
    if args.executor == "sim":
        return None
    from pagesim.gpu.executor import executor_for_replay  # needs the [gpu] extra
    return executor_for_replay(cfg)


def print_summary(s: dict, out=None) -> None:
    out = sys.stdout if out is None else out
    r, lat, th, mem, sim = s["requests"], s["latency"], s["throughput"], s["memory_split"], s["sim"]
    c = s.get("config", {})

    def f(x, scale=1.0, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x * scale)

    hit = s["prefix_cache"]["hit_rate_tokens"]
    truncated = f", {r['truncated']} truncated" if r.get("truncated") else ""
    rows = [
        ("allocator", f"{c.get('allocator')} (block {c.get('block_size')}, {c.get('num_gpu_blocks')} blocks)"),
        ("requests", f"{r['finished']} finished / {r['total']} ({r['rejected']} rejected{truncated})"),
        ("TTFT mean / p99", f"{f(lat['ttft_mean_s'])} s / {f(lat['ttft_p99_s'])} s"),
        ("TPOT mean", f"{f(lat['tpot_mean_s'], 1e3, '{:.2f}')} ms"),
        ("normalized latency", f"{f(lat['normalized_latency_mean_s_per_token'], 1e3, '{:.2f}')} ms/token"),
        ("throughput", f"{th['requests_per_s']:.2f} req/s, {th['output_tokens_per_s']:.0f} tok/s"),
        ("preemptions", str(s["preemptions"])),
        ("prefix-cache hit rate", "n/a" if hit is None else f"{hit:.1%}"),
        ("KV memory (time avg)", "  ".join(f"{k} {v:.1%}" for k, v in mem.items())),
        ("simulated", f"{sim['sim_time_s']:.1f} s in {sim['steps']} steps, wall {sim['wall_s']:.2f} s "
                      f"({sim['sim_time_s'] / max(sim['wall_s'], 1e-9):.0f}x real time)"),
    ]
    tiers = s["prefix_cache"].get("tiers")
    if tiers is not None:  # --cpu-offload-blocks
        rows.insert(8, ("hits by tier (GPU + CPU)", f"{f(tiers['gpu_hit_rate_tokens'], 100, '{:.1f}')} % + "
                        f"{f(tiers['cpu_hit_rate_tokens'], 100, '{:.1f}')} % "
                        f"({tiers['loaded_blocks']} blocks loaded, {tiers['offloaded_blocks']} offloaded)"))
    if "links" in s:  # --link-model pcie
        rows.insert(-2, ("PCIe utilisation", "  ".join(
            f"{d} {f(v['utilisation'], 100, '{:.2f}')} % ({v['blocks']} blocks)" for d, v in s["links"].items())))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}", file=out)


def cmd_replay(args) -> int:
    work = load_workload(args)
    cfg = replay_config(args, work.max_model_len)
    print(f"replaying {len(work.trace)} requests from {work.trace.source or 'synthetic'} "
          f"({cfg.model} on {cfg.gpu}, {cfg.allocator})", file=sys.stderr)

    def replay(steps_path=None):
        result = run_replay(work.trace, cfg, executor=make_executor(args, cfg), progress=not args.quiet,
                            pause_gc=True,  # a CLI run owns its process
                            record_requests=bool(args.timeline), steps_path=steps_path)
        result.summary["config"].update(workload=workload_dict(args), executor=args.executor)
        result.summary["provenance"] = provenance(args.argv, work.info)
        print_summary(result.summary)
        return result

    if args.out is None:
        replay()
        return 0
    # the steps table streams into the staged output folder as the run goes:
    # memory stays bounded however many steps the run takes
    with staged_dir(args.out, args.overwrite) as tmp:
        result = replay(steps_path=tmp / "steps.parquet")
        names = [p.name for p in write_replay(result, tmp, plots=not args.no_plots,
                                              table_format=args.table_format, report=args.report,
                                              timeline=args.timeline)]
    print(f"wrote {len(names)} files to {args.out}/ ({', '.join(names)})")
    return 0


def cmd_compare(args) -> int:
    # the comparison's tables, report and plots load when it runs (the
    # other commands would pay for them at every start)
    from pagesim.analysis.compare import format_table, table
    from pagesim.compare import run_all, write_compare
    runs, info = compare_runs(args)
    results = run_all(runs, progress=not args.quiet)
    tab = table(results)
    print(format_table(tab))
    if args.out is not None:
        with staged_dir(args.out, args.overwrite) as tmp:
            names = [p.name for p in write_compare(results, tab, tmp, option=compare_option(args),
                                                   plots=not args.no_plots, report=args.report)]
            (tmp / "provenance.json").write_text(strict_json(provenance(args.argv, info)) + "\n")
        print(f"wrote {len(names) + 1} files to {args.out}/ ({', '.join(names)}, provenance.json)")
    return 0


def compare_option(args) -> str:
    return args.vary.partition("=")[0].replace("-", "_") if args.vary else "allocator"


def compare_runs(args) -> tuple[list, dict | None]:
    """(label, trace, config) per compared value, ``--vary OPTION=V1,V2``
    or by default the ``--allocators``; and the workload's provenance."""
    from pagesim.compare import variants   # (loaded with the command: see cmd_compare)
    if args.vary:
        option, _, values = args.vary.partition("=")
        values = [v.strip() for v in values.split(",") if v.strip()]
        if option == "rate":
            runs = []
            for v in values:
                args.rate = opt.positive_float(v)
                work = load_workload(args)
                runs.append((f"rate={v}", work.trace, replay_config(args, work.max_model_len)))
            return runs, work.info
    else:
        option, values = "allocator", args.allocators
    work = load_workload(args)
    labelled = variants(replay_config(args, work.max_model_len), option, values)
    if not args.vary:
        labelled = [(cfg.allocator, cfg) for _, cfg in labelled]
    return [(label, work.trace, cfg) for label, cfg in labelled], work.info


def check_run(args) -> list[tuple[str, str]]:
    """Every cross-option problem of replay/compare, before any work."""
    found = workload_conflicts(args) + engine_conflicts(args)
    if args.command == "compare" and args.executor != "sim":
        found.insert(0, ("--executor", "compare prices every allocator with the cost model; "
                         "run replay --executor gpu once per allocator instead"))
    if args.command == "compare" and args.vary and args.vary.startswith("rate="):
        for v in args.vary.partition("=")[2].split(","):
            try:
                opt.positive_float(v.strip())
            except argparse.ArgumentTypeError as exc:
                found.append(("--vary", f"rate={v.strip()}: {exc}"))
    if getattr(args, "timeline", None) and args.out is None:
        found.append(("--timeline", "timeline.json is written to --out DIR; none was given"))
    if getattr(args, "events", False) and args.out is None:
        found.append(("--events", "the event log is written to --out DIR; none was given"))
    if args.out is not None:
        try:
            check_out(args.out, args.overwrite)
        except OutputError as exc:
            found.append(("--out", str(exc).removeprefix("argument --out: ")))
    return found


@dataclass(frozen=True)
class Command:
    """A command whose options tyro generates from its option groups."""

    help: str
    groups: dict           # title -> option-group dataclass, in help order
    func: Callable         # args -> exit code
    check: Callable        # args -> [(option, problem)], found before any work


COMMANDS = {
    "replay": Command("replay a trace (or the built-in default) and report",
                      {**_SHARED, "output": og.OutputOptions,
                       "replay output": og.ReplayOutputOptions}, cmd_replay, check_run),
    "compare": Command("several allocators (or values of any option) on one trace, side by side",
                       {**_SHARED, "compared": og.CompareOptions, "output": og.OutputOptions},
                       cmd_compare, check_run),
    "calibrate": Command("profile step shapes on a GPU and fit the table cost model",
                         {"calibrate": og.CalibrateOptions}, cmd_calibrate, lambda args: []),
    "validate": Command("a trace on the GPU against the same trace simulated",
                        {"validate": og.ValidateOptions}, cmd_validate, check_validate),
}


def build_parser() -> argparse.ArgumentParser:
    """The commands, for ``pagesim --help`` and ``trace stats`` (argparse);
    the options of the others are generated by tyro (``parse_command``)."""
    p = argparse.ArgumentParser(prog="pagesim", description=__doc__.splitlines()[0])
    p.set_defaults(check=lambda args: [], parser=p)
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub.add_parser(name, add_help=False, help=command.help)
    add_subcommands(sub)
    return p


def command_specs(command: str) -> dict:
    """dest -> ``OptionSpec`` of every option of ``command``."""
    return {s.dest: s for cls in COMMANDS[command].groups.values() for s in option_specs(cls)}


def parse_command(command: str, argv: list[str]) -> argparse.Namespace:
    """The options of ``command`` (``argv`` after it), generated by tyro
    from its groups, with a ``--config`` file's values as the defaults.
    Raises ``OptionError`` naming the option."""
    specs = command_specs(command)
    path = config_path(argv) if "config" in specs else None
    values = {}
    if path is not None:
        try:
            values = config_defaults(path, specs, command)
        except ConfigError as exc:
            raise OptionError("--config", str(exc)) from None
    args = generated_options.parse(f"pagesim {command}", COMMANDS[command].groups, argv, values)
    args.command, args.func = command, COMMANDS[command].func
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pagesim: warning: {message}", file=sys.stderr)


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line, its cross-option problems found (exit 2 on any)."""
    if argv and argv[0] in COMMANDS:
        command = argv[0]
        try:
            args = parse_command(command, argv[1:])
            problems = COMMANDS[command].check(args)
            if problems:
                raise OptionError(*problems[0])
        except OptionError as exc:
            trace = any(s.positional for s in command_specs(command).values())
            print(f"usage: pagesim {command} [-h] [OPTIONS]{' [TRACE]' if trace else ''}\n"
                  f"pagesim {command}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return args
    args = build_parser().parse_args(argv)
    problems = args.check(args)
    if problems:
        option, problem = problems[0]
        args.parser.error(f"argument {option}: {problem}")   # the subcommand's usage
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (nothing written), 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse(argv)
        args.argv = argv
    except SystemExit as exc:   # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    bound_memory()   # this process runs one command: see pagesim/process.py
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            return args.func(args)
    except KeyboardInterrupt:
        print("pagesim: interrupted; nothing written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # TraceError is a ValueError
        print(f"pagesim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
