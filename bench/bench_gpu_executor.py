"""Step times through the GPU executor: whole model vs attention only.

    PYTHONPATH=. python3 bench/bench_gpu_executor.py [--model llama-3-8b] [--batch 1 8 32 128]

For each mode and batch size B, B requests (``--prompt`` tokens in,
``--output`` out) arrive together and are replayed through the executor.
Per run: the prefill step's time, the median decode step's device time
(CUDA events, what the engine is given) and host wall time (the executor's
whole ``execute``: bookkeeping, metadata, launches, the final sync), and
for decode the K/V bytes attention reads per second of device time. The
gap between wall and device time is the harness's host overhead; in
attention mode the device time is what the memory manager's layout costs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pagesim.gpu.calibrate import measure
from pagesim.gpu.executor import GPUExecutor
from pagesim.gpu.model import SyntheticDecoder
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.costmodel import get_model, kv_bytes_per_token
from pagesim.replay import ReplayConfig
from pagesim.traces import Request, Trace


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--output", type=int, default=32)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-gpu-blocks", type=int, default=8192)
    p.add_argument("--modes", nargs="+", default=["attention", "model"])
    p.add_argument("--results", help="write the rows here (JSON)")
    return p.parse_args(argv)


def together(batch: int, prompt: int, output: int) -> Trace:
    return Trace([Request(id=i, arrival_s=0.0, prompt_tokens=prompt, output_tokens=output)
                  for i in range(batch)], source=f"bench:{batch}x{prompt}+{output}")


def bench_mode(args, spec, mode: str, device, dtype) -> list[dict]:
    model = SyntheticDecoder(spec, device=device, dtype=dtype, mode=mode)
    ex = GPUExecutor(spec, args.num_gpu_blocks, 0, args.block_size, device=device, dtype=dtype,
                     mode=mode, model=model)
    cfg = ReplayConfig(model=spec.name, num_gpu_blocks=args.num_gpu_blocks, num_cpu_blocks=0,
                       block_size=args.block_size, prefix_caching=False,
                       scheduler=SchedulerConfig(max_num_seqs=max(args.batch)))
    measure(together(max(args.batch), args.prompt, 4), cfg, ex)  # compile the kernel variants
    rows = []
    for b in args.batch:
        _, rec = measure(together(b, args.prompt, args.output), cfg, ex)
        dec = rec[rec["num_prefill_seqs"] == 0]
        t = float(dec["measured_s"].median())
        kv = float(dec["kv_tokens_read"].median()) * kv_bytes_per_token(spec) * dtype.itemsize / 2
        rows.append({"mode": mode, "batch": b, "prefill_ms": float(rec["measured_s"].iloc[0]) * 1e3,
                     "decode_ms": t * 1e3, "decode_wall_ms": float(dec["wall_s"].median()) * 1e3,
                     "kv_GBps": kv / t / 1e9, "steps": int(len(rec))})
        print(rows[-1], flush=True)
    del ex, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    spec = get_model(args.model)
    rows = [r for mode in args.modes for r in bench_mode(args, spec, mode, device, dtype)]
    if args.results:
        Path(args.results).write_text(json.dumps(rows, indent=2))
    name = torch.cuda.get_device_name() if cuda else "cpu (interpreter)"
    print(f"{name}, {spec.name}, prompt {args.prompt}, output {args.output}, block {args.block_size}")
    print(f"{'mode':9} {'batch':>5} {'prefill ms':>10} {'decode ms':>9} {'wall ms':>8} {'KV GB/s':>8}")
    for r in rows:
        print(f"{r['mode']:9} {r['batch']:5d} {r['prefill_ms']:10.2f} {r['decode_ms']:9.3f} "
              f"{r['decode_wall_ms']:8.3f} {r['kv_GBps']:8.1f}")


if __name__ == "__main__":
    main()
