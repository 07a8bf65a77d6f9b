"""Calibrate the table cost model on this GPU and check it against the GPU.

    PYTHONPATH=. python3 bench/calibrate_gpu.py [--trace FILE] [--model llama-3-8b]

1. build the synthetic model (random bf16 weights) and a KV cache that fits
   the card (or ``--num-gpu-blocks``);
2. time copy-on-write copies and swaps per block (stored in the file);
3. warm up (by default the calibration replay itself, unrecorded: Triton
   compiles a kernel variant the first time it meets its shapes);
4. replay the calibration trace through the GPU executor, fit the table,
   write ``calibration/<model>_<gpu>.json``;
5. simulated vs measured: the table's price of every measured step (median
   and p90 relative error), then a simulated replay of the same trace and
   of a held-out trace (measured on the GPU too): total time, TTFT, TPOT.

Prints a short table last; ``--results`` writes every number as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from pagesim.gpu.calibrate import compare_with_simulation, fit, gpu_preset_name, measure, step_errors
from pagesim.gpu.executor import GPUExecutor
from pagesim.gpu.kernels import swap_blocks
from pagesim.gpu.model import SyntheticDecoder
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.costmodel import get_model, kv_bytes_per_token
from pagesim.replay import ReplayConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--trace", help="trace file (default: synthetic ShareGPT-like)")
    p.add_argument("--workload", default="sharegpt", help="synthetic lengths (traces.synthetic)")
    p.add_argument("--num-requests", type=int, default=160, help="synthetic calibration requests")
    p.add_argument("--holdout-requests", type=int, default=80, help="synthetic held-out requests (0: none)")
    p.add_argument("--warmup", choices=["same", "short"], default="same",
                   help="warm-up replay (Triton compiles kernel variants on first use): the "
                   "calibration trace itself, or its first --warmup-requests requests")
    p.add_argument("--warmup-requests", type=int, default=24)
    p.add_argument("--rate", type=float, default=16.0, help="synthetic arrival rate (req/s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-gpu-blocks", type=int, help="default: 60%% of the memory free after the weights")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--out", default="calibration", help="folder of the calibration file")
    p.add_argument("--results", help="write all numbers here (JSON), updated after each phase")
    p.add_argument("--rows", help="write the measured steps here (CSV, a 'part' column)")
    return p.parse_args(argv)


def workloads(args):
    from pagesim import traces
    def synth(n, seed):
        return traces.synthetic(args.workload, num_requests=n, rate=args.rate, seed=seed)

    cal = traces.load_trace(args.trace) if args.trace else synth(args.num_requests, args.seed)
    hold = synth(args.holdout_requests, args.seed + 1) if args.holdout_requests and not args.trace else None
    return (cal if args.warmup == "same" else cal[:args.warmup_requests]), cal, hold


def fitting_blocks(spec, block_size: int, fraction: float = 0.6) -> int:
    """KV blocks in ``fraction`` of the memory free now (after the weights):
    the rest is left for activations (a full 8192-token prefill)."""
    free, _ = torch.cuda.mem_get_info()
    return int(free * fraction) // (block_size * kv_bytes_per_token(spec))


def _median_s(fn, reps: int) -> float:
    """Median seconds of ``fn``: do_bench (CUDA events) on a GPU, perf_counter on the CPU."""
    if torch.cuda.is_available():
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def per_block_costs(ex: GPUExecutor, n: int = 256) -> dict:
    """Seconds per block of a copy-on-write copy (all layers, one launch)
    and of a swap (GPU -> pinned CPU -> GPU, averaged over both ways)."""
    n = min(n, ex.cache.num_gpu_blocks // 2)
    pairs = [(i, n + i) for i in range(n)]
    copy_s = _median_s(lambda: ex.cache.copy(pairs), 3)
    gpu = [ex.cache.kv[l, i] for l in range(ex.cache.kv.shape[0]) for i in (0, 1)]
    cpu = [torch.empty((n, *t.shape[1:]), dtype=t.dtype, pin_memory=torch.cuda.is_available())
           for t in gpu]
    ids = [(i, i) for i in range(n)]

    def both_ways():
        swap_blocks(gpu, cpu, ids).synchronize()
        swap_blocks(cpu, gpu, ids).synchronize()
    swap_s = _median_s(both_ways, 3)
    return {"copy_block_s": copy_s / n, "swap_block_s": swap_s / (2 * n)}


def run(args) -> dict:
    spec = get_model(args.model)
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = SyntheticDecoder(spec, device=device, dtype=torch.bfloat16 if cuda else torch.float32,
                             seed=args.seed)
    if cuda:
        torch.cuda.synchronize()
    blocks = args.num_gpu_blocks or fitting_blocks(spec, args.block_size)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    preset = gpu_preset_name(name, torch.cuda.get_device_properties(0).total_memory if cuda else None)
    cfg = ReplayConfig(model=spec.name, gpu=preset if preset in ("h100-80gb", "h200") else "h100-80gb",
                       num_gpu_blocks=blocks, num_cpu_blocks=0, block_size=args.block_size,
                       scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs), seed=args.seed)
    ex = GPUExecutor(spec, blocks, 0, args.block_size, model=model, seed=args.seed, device=device)
    costs = per_block_costs(ex)
    print(f"{name}: {blocks} blocks of {args.block_size}; setup {time.perf_counter() - t0:.1f} s; "
          f"copy {costs['copy_block_s'] * 1e6:.2f} us/block, swap {costs['swap_block_s'] * 1e6:.1f} us/block",
          flush=True)
    warm, cal, hold = workloads(args)
    t = time.perf_counter()
    measure(warm, cfg, ex)
    print(f"warm-up: {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    result, rows = measure(cal, cfg, ex)
    print(f"calibration replay: {len(rows)} steps in {time.perf_counter() - t:.1f} s", flush=True)
    table = fit(rows, ex, cfg, cal, meta=costs)
    path = Path(args.out) / f"{spec.name}_{table.meta['gpu']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    out = {"device_name": name, "num_gpu_blocks": blocks, "calibration_file": str(path),
           "per_block": costs, "table": table.to_dict(),
           "in_sample": {"steps": step_errors(table, rows),
                         "replay": compare_with_simulation(cal, cfg, table, result)}}
    save(args, out, {"calibration": rows})
    print(report(out), flush=True)
    if hold is not None:
        t = time.perf_counter()
        hres, hrows = measure(hold, cfg, ex)
        print(f"held-out replay: {len(hrows)} steps in {time.perf_counter() - t:.1f} s", flush=True)
        out["held_out"] = {"steps": step_errors(table, hrows),
                           "replay": compare_with_simulation(hold, cfg, table, hres)}
        save(args, out, {"calibration": rows, "held_out": hrows})
    return out


def save(args, out: dict, parts: dict) -> None:
    """Write what is known so far (a later phase may run out of time)."""
    if args.results:
        Path(args.results).write_text(json.dumps(out, indent=2, default=str))
    if args.rows:
        pd.concat([r.assign(part=name) for name, r in parts.items()]).to_csv(args.rows, index=False)


def report(out: dict) -> str:
    lines = [f"{out['device_name']}  ->  {out['calibration_file']}",
             f"{'':10} {'steps':>6} {'med err':>8} {'p90 err':>8} | {'':11} {'measured':>9} "
             f"{'simulated':>9} {'err':>7}"]
    for part in ("in_sample", "held_out"):
        if part not in out:
            continue
        s, r = out[part]["steps"], out[part]["replay"]
        head = f"{part:10} {s['steps']:6d} {s['median_abs_rel_err']:8.1%} {s['p90_abs_rel_err']:8.1%} |"
        lines.append(f"{part}: {s['compile_steps']} steps compiled kernels "
                     f"({s['compile_steps_measured_s']:.2f} s measured), left out of the step errors")
        for i, key in enumerate(("total_s", "ttft_mean_s", "tpot_mean_s")):
            m, p = r[key]["measured"], r[key]["simulated"]
            lines.append(f"{head if i == 0 else ' ' * len(head)} {key:11} {m:9.4f} {p:9.4f} "
                         f"{(p - m) / m:7.1%}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: running under the Triton interpreter (a dry run; timings mean nothing)")
    out = run(args)
    print(report(out))


if __name__ == "__main__":
    main()
