"""Simulator speed: how much faster than real time does a replay run?

1. The full Azure 2023 conversation trace (19,366 requests, about an hour),
   Llama-3-8B on an H100-80GB, block size 16, with exact block-level
   accounting (prefix caching on and off), fast mode and step-by-step.
2. N synthetic ShareGPT-like requests (default 1,000,000) at a load that
   keeps the KV cache full (100 req/s with up to 2,048 running sequences:
   ~92 % of the cache holds token states), fast mode; peak memory is
   reported.

Prints a table; record the results in BENCHMARKS.md.

    python bench/bench_sim.py [--requests 1000000] [--rate 100] [--max-num-seqs 2048]
                              [--skip-large] [--skip-azure] [--step-by-step]
"""
from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

from pagesim.replay import ReplayConfig, replace, run_replay

AZURE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "raw" / "AzureLLMInferenceTrace_conv.csv"


def row(name, res, load_s):
    s = res.summary["sim"]
    speed = s["sim_time_s"] / s["wall_s"]
    print(f"{name:<46}{res.summary['requests']['total']:>10,}{s['steps']:>11,}{s['sim_time_s']:>10.0f}"
          f"{s['wall_s']:>9.2f}{speed:>10,.0f}x{load_s:>8.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=100.0, help="synthetic arrival rate (req/s)")
    ap.add_argument("--max-num-seqs", type=int, default=2048,
                    help="running-sequence limit of the synthetic run (high, so that memory, not it, saturates)")
    ap.add_argument("--skip-large", action="store_true", help="skip the synthetic run")
    ap.add_argument("--skip-azure", action="store_true", help="skip the Azure trace runs")
    ap.add_argument("--step-by-step", action="store_true", help="also time step-by-step mode")
    a = ap.parse_args()
    from pagesim import traces
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'run':<46}{'requests':>10}{'steps':>11}{'sim s':>10}{'wall s':>9}{'speed':>11}{'load s':>8}")
    cfg = ReplayConfig(model="llama-3-8b", gpu="h100-80gb", block_size=16)
    if a.skip_azure:
        pass
    elif AZURE.exists():
        t = time.perf_counter()
        trace = traces.load_trace(AZURE)
        load = time.perf_counter() - t
        for pc in (False, True):
            c = replace(cfg, prefix_caching=pc)
            row(f"azure conv, prefix caching {'on' if pc else 'off'}", run_replay(trace, c, pause_gc=True), load)
            if a.step_by_step:
                row(f"azure conv, prefix caching {'on' if pc else 'off'}, step-by-step",
                    run_replay(trace, replace(c, fast=False), pause_gc=True), load)
    else:
        print(f"(no {AZURE}: skipping the Azure trace)")
    if not a.skip_large:
        t = time.perf_counter()
        trace = traces.synthetic("sharegpt", num_requests=a.requests, rate=a.rate, seed=0)
        load = time.perf_counter() - t
        sched = replace(cfg.scheduler, max_num_seqs=a.max_num_seqs)
        res = run_replay(trace, replace(cfg, prefix_caching=False, scheduler=sched), pause_gc=True)
        row(f"sharegpt x{a.requests:,} @ {a.rate:g}/s, {a.max_num_seqs} seqs", res, load)
        m = res.summary["memory_split"]
        print(f"  memory: token states {m['token_states']:.1%}, free {m['free']:.1%}; "
              f"preemptions {res.summary['preemptions']:,}; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
