"""Cluster speed: 8 replicas on 8x the Azure 2023 conversation load.

The single-replica replay of the Azure conversation trace against 8 copies
of every request interleaved (8x the load and 8x the work) on 8 replicas,
for each router; the issue's target is at most 10x the single replica's wall
time. Prints a table; record the results in BENCHMARKS.md.

    python bench/bench_cluster.py [--replicas 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from pagesim import traces
from pagesim.replay import ReplayConfig, replace, run_replay
from pagesim.sim.router import ROUTERS

AZURE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "raw" / "AzureLLMInferenceTrace_conv.csv"


def copies(trace, k: int):
    """``k`` copies of every request at its arrival time (k x the load, k x the work)."""
    reqs = [replace(r, id=r.id * k + c) for r in trace for c in range(k)]
    return traces.Trace(reqs, source=f"{trace.source} x{k} copies")


def timed(trace, cfg, repeat: int):
    walls, res = [], None
    for _ in range(repeat):
        res = run_replay(trace, cfg)
        walls.append(res.summary["sim"]["wall_s"])
    return statistics.median(walls), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (median wall time)")
    ap.add_argument("--trace", default=str(AZURE), help="the Azure conversation trace")
    a = ap.parse_args()
    trace = traces.load_trace(a.trace)
    fast = copies(trace, a.replicas)
    cfg = ReplayConfig(model="llama-3-8b", gpu="h100-80gb", block_size=16, cost_model="roofline")
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; median of {a.repeat}")
    print(f"{'run':<44}{'requests':>9}{'steps':>11}{'wall s':>9}{'x single':>10}{'TTFT ms':>9}{'hit %':>7}")
    base, res = timed(trace, cfg, a.repeat)

    def row(name, wall, r):
        s = r.summary
        hit = s["prefix_cache"]["hit_rate_tokens"]
        print(f"{name:<44}{s['requests']['total']:>9,}{s['sim']['steps']:>11,}{wall:>9.2f}"
              f"{wall / base:>10.2f}{s['latency']['ttft_mean_s'] * 1e3:>9.1f}"
              f"{'-' if hit is None else f'{hit:.1%}':>7}", flush=True)

    row("azure conv, 1 replica", base, res)
    for router in sorted(ROUTERS):
        wall, r = timed(fast, replace(cfg, replicas=a.replicas, router=router), a.repeat)
        row(f"azure x{a.replicas} copies, {a.replicas} replicas, {router}", wall, r)


if __name__ == "__main__":
    main()
