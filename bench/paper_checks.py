"""Checks against the vLLM paper (Kwon et al., SOSP'23), printed as tables.

1. Figure 2: where KV memory goes (OPT-13B on one A100-40GB, about 12 GB of
   KV cache, ShareGPT-like lengths, high load) for Orca Max / Pow2 / Oracle
   and the paged manager, through ``pagesim.compare``.
2. Section 6.3 (Figure 15): memory saved by sharing blocks, parallel
   sampling (n = 2, 4, 6) and beam search (width 2, 4, 6), OPT-13B with
   Alpaca-like and ShareGPT-like lengths (V0 scheduler: fork and
   copy-on-write). Saving = 1 - physical blocks / logical blocks, averaged
   over steps weighted by duration.

    python bench/paper_checks.py [--requests 2000] [--rate 6]
"""
from __future__ import annotations

import argparse

from pagesim import traces
from pagesim.analysis.compare import format_table
from pagesim.compare import compare
from pagesim.sim.config import SchedulerConfig
from pagesim.replay import ReplayConfig, build, replace

PAPER_FIG2 = {  # token states, reserved, internal, external (%)
    "orca-max": (20.4, 13.3, 57.3, 8.9), "orca-pow2": (26.8, 17.9, 13.6, 41.6),
    "orca-oracle": (38.2, 25.2, None, 36.6), "paged": (96.3, None, None, None),
}
PAPER_SAVING = {  # (workload, kind): (low %, high %) over n or width 2..6
    ("alpaca", "parallel"): (6.1, 9.8), ("alpaca", "beam"): (37.6, 55.2),
    ("sharegpt", "parallel"): (16.2, 30.5), ("sharegpt", "beam"): (44.3, 66.3),
}
BASE = ReplayConfig(model="opt-13b", gpu="a100-40gb", block_size=16, prefix_caching=False)


def figure2(requests: int, rate: float, placement: str) -> None:
    trace = traces.synthetic("sharegpt", num_requests=requests, rate=rate, seed=0)
    names = ["orca-max", "orca-pow2", "orca-oracle", "paged"]
    table = compare(trace, [replace(BASE, allocator=a, placement=None if a == "paged" else placement) for a in names],
                    labels=names)
    print(f"### contiguous regions placed by {placement}\n")
    print(f"## Figure 2 setting: OPT-13B / A100-40GB, {BASE.gpu_blocks() * 16:,} token slots "
          f"({BASE.gpu_blocks()} blocks of 16), {requests} ShareGPT-like requests at {rate} req/s\n")
    print(format_table(table.loc[["token states %", "reserved %", "internal frag %", "external frag %",
                                  "cached free %", "free %", "throughput req/s", "preemptions"]]))
    print("\npaper (token states / reserved / internal / external %):")
    for a in names:
        print(f"  {a:<12} " + " / ".join("-" if v is None else f"{v}" for v in PAPER_FIG2[a]))


def saving(trace, cfg) -> float:
    """Time-averaged 1 - physical/logical blocks of a replay (step by step)."""
    engine, sched, kv, _ = build(trace, replace(cfg, fast=False))
    acc = {"w": 0.0, "s": 0.0}

    def on_step(plan, start, dt):
        logical = sum(len(s.table) for s in kv.seqs.values() if not s.on_cpu)
        physical = kv.pool.num_blocks - kv.pool.num_free
        if logical:
            acc["s"] += (1 - physical / logical) * dt
            acc["w"] += dt

    engine.on_step = on_step
    engine.run()
    return acc["s"] / acc["w"] if acc["w"] else 0.0


def sharing(requests: int, rate: float) -> None:
    print("\n## Memory saved by sharing (OPT-13B / A100-40GB, V0 scheduler, fork + copy-on-write)\n")
    print(f"{'workload':<10}{'kind':<10}{'k=2':>8}{'k=4':>8}{'k=6':>8}   paper (k=2..6)")
    v0 = replace(BASE, scheduler=SchedulerConfig(generation="v0", max_model_len=2048))
    for workload in ("alpaca", "sharegpt"):
        for kind in ("parallel", "beam"):
            out = []
            for k in (2, 4, 6):
                kw = {"n": k} if kind == "parallel" else {"beam_width": k}
                trace = traces.synthetic(workload, num_requests=requests, rate=rate, seed=0, **kw)
                out.append(100 * saving(trace, v0))
            lo, hi = PAPER_SAVING[(workload, kind)]
            print(f"{workload:<10}{kind:<10}" + "".join(f"{x:>7.1f}%" for x in out) + f"   {lo}-{hi}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=6.0, help="req/s for figure 2 (high load)")
    ap.add_argument("--sharing-requests", type=int, default=300)
    ap.add_argument("--sharing-rate", type=float, default=2.0)
    ap.add_argument("--placement", choices=["first-fit", "buddy", "both"], default="both",
                    help="placement of the contiguous baselines (the paper's: first-fit)")
    a = ap.parse_args()
    for placement in (["first-fit", "buddy"] if a.placement == "both" else [a.placement]):
        figure2(a.requests, a.rate, placement)
    sharing(a.sharing_requests, a.sharing_rate)


if __name__ == "__main__":
    main()
