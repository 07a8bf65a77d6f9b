"""``pagesim trace ...`` subcommands; ``pagesim/cli.py`` mounts them with
``add_subcommands(subparsers)``. Also runs alone: ``python -m traces.cli``.
"""
from __future__ import annotations

import argparse
import json
import sys

from pagesim import options as opt
from pagesim.traces.cacheability import cacheability, format_cacheability
from pagesim.traces.errors import TraceError
from pagesim.traces.load import FORMATS, ON_TOO_LONG, load_trace, read_table
from pagesim.traces.stats import format_stats, trace_stats
from pagesim.traces.trace import Trace


def add_subcommands(subparsers) -> None:
    """Register ``trace`` (with ``stats``) on an argparse subparsers object.
    Each leaf parser sets ``func``: call ``args.func(args)`` for an exit code."""
    trace = subparsers.add_parser("trace", help="inspect request traces",
                                  description="Inspect request traces.")
    sub = trace.add_subparsers(dest="trace_command", metavar="COMMAND", required=True)
    stats = sub.add_parser(
        "stats", help="rows, rate, burstiness, lengths and prefix reuse of a trace",
        description="Print rows, duration, arrival rate, burstiness (CV of "
                    "inter-arrival gaps), mean/p50/p99 of prompt and output tokens, "
                    "and the prefix-reuse ratio under an unlimited cache when the "
                    "trace has hash ids or token ids.")
    stats.add_argument("file", type=opt.trace_file,
                       help="trace file (format detected unless --format; gzip read too)")
    stats.add_argument("--format", choices=FORMATS, default=None,
                       help="the file's format, if detection should not decide")
    stats.add_argument("--rate", type=opt.positive_float, default=None,
                       help="Poisson arrivals at R requests/s (length-only files "
                            "have no times; for others, replaces them)")
    stats.add_argument("--seed", type=opt.non_negative_int, default=0,
                       help="seed for --rate arrivals")
    stats.add_argument("--max-model-len", type=opt.int_at_least(2), default=None,
                       help="limit on prompt + output tokens per request")
    stats.add_argument("--on-too-long", choices=ON_TOO_LONG, default="reject",
                       help="what to do with requests over --max-model-len")
    stats.add_argument("--sort", action="store_true",
                       help="sort rows by arrival instead of rejecting disorder")
    stats.add_argument("--block-sizes", metavar="B1,B2,...",
                       help="prefix reuse against block size, e.g. 16,32,64,128 (offline "
                            "cacheability: full pages, chained identities)")
    stats.add_argument("--cache-sizes", metavar="auto|T1,T2,...",
                       help="with --block-sizes, also against LRU cache size in tokens "
                            "('auto': 1/3/10/30 %% of the distinct prompt tokens); a Python "
                            "pass over every page reference, so it takes a while on big traces")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    try:
        table = read_table(args.file, args.format)
        untimed = table.meta.get("needs_arrival") and args.rate is None
        if untimed:
            trace = Trace.from_frame(table.frame, table.source, table.meta)
        else:
            trace = load_trace(args.file, table.fmt, arrival=args.rate, seed=args.seed,
                               max_model_len=args.max_model_len,
                               on_too_long=args.on_too_long, sort=args.sort)
    except (TraceError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = trace_stats(trace, timed=not untimed)
    if args.block_sizes:
        try:
            sizes, caches = _sizes(args.block_sizes, "--block-sizes"), _cache_sizes(args.cache_sizes)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        rows = cacheability(trace, sizes, caches)
        stats["cacheability"] = rows
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(stats, f"{args.file} ({table.fmt})"))
        if stats.get("cacheability"):
            print(format_cacheability(stats["cacheability"]))
        elif args.block_sizes:
            print("prefix reuse by block size: the trace has no token ids or hash ids")
    return 0


def _sizes(spec: str, option: str) -> list[int]:
    out = []
    for part in spec.split(","):
        if not part.strip().isdigit() or int(part) <= 0:
            raise ValueError(f"{option}: {part!r} is not a positive integer")
        out.append(int(part))
    return out


def _cache_sizes(spec: str | None):
    if spec is None:
        return ()
    return "auto" if spec == "auto" else _sizes(spec, "--cache-sizes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagesim")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
