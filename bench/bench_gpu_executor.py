"""Step times through the GPU executor against the memory floor; graphs vs eager.

    PYTHONPATH=. python3 bench/bench_gpu_executor.py [--model llama-3-8b] [--batch 1 8 32 64 128]
        [--prompt 2048] [--output 24] [--eager-batch 1 32] [--modes model attention] [--results F]

For each mode and batch size B, B requests (``--prompt`` tokens in,
``--output`` out) arrive together and are replayed through the executor.
Decode steps replay CUDA graphs (the step that captures its bucket is left
out); ``--eager-batch`` sizes are replayed again with graphs off. Per run:
the median decode step's GPU time (``measured_s``), host preparation
(``prep_s``) and whole ``execute`` (``wall_s``), the K/V bytes attention
reads, and the floor:

    floor = (weight bytes + KV bytes read) / copy bandwidth (measured here)

with weight bytes = 2 * num_params (the issue's definition: embeddings
included, though a step reads only B rows of them) and, stricter, the bytes
a step actually reads (every layer, the final norm and the LM head). In
attention mode the floor is the KV bytes alone. Prefill steps run eagerly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pagesim.gpu.calibrate import measure  # noqa: E402
from pagesim.gpu.executor import GPUExecutor  # noqa: E402
from pagesim.gpu.model import SyntheticDecoder  # noqa: E402
from pagesim.sim.config import SchedulerConfig  # noqa: E402
from pagesim.sim.costmodel import get_model, kv_bytes_per_token  # noqa: E402
from pagesim.replay import ReplayConfig  # noqa: E402
from pagesim.traces import Request, Trace  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    p.add_argument("--eager-batch", type=int, nargs="*", default=[1, 32])
    p.add_argument("--prompt", type=int, default=2048)
    p.add_argument("--output", type=int, default=40)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--modes", nargs="+", default=["attention", "model"])
    p.add_argument("--layouts", nargs="+", default=["out_in"], help="model-mode weight layouts to time")
    p.add_argument("--fuse", nargs="+", default=["off"], choices=["on", "off"],
                   help="decode-only steps through rope_decode (on) or rope_store + paged_decode (off)")
    p.add_argument("--blas", choices=["default", "cublas", "cublaslt"], default="default",
                   help="torch's preferred BLAS library for the model's GEMMs")
    p.add_argument("--copy-gbs", type=float, help="copy bandwidth (default: measured here)")
    p.add_argument("--results", help="write the rows here (JSON)")
    return p.parse_args(argv)


def together(batch: int, prompt: int, output: int) -> Trace:
    return Trace([Request(id=i, arrival_s=0.0, prompt_tokens=prompt, output_tokens=output)
                  for i in range(batch)], source=f"bench:{batch}x{prompt}+{output}")


def weight_bytes_read(model: SyntheticDecoder) -> int:
    """Bytes of the weights a decode step reads (all but the embedding table)."""
    if model.mode != "model":
        return 0
    layers = sum(t.numel() * t.element_size() for w in model.layers for t in w.values())
    return layers + model.lm_head.numel() * model.lm_head.element_size() + model.final_norm.numel() * 2


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (median of do_bench)."""
    import triton

    a = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    t = triton.testing.do_bench(lambda: b.copy_(a), return_mode="median") / 1e3
    return 2 * a.numel() * 2 / t


def summarize(rec, spec, dtype, batch, graphs, model, copy_bps) -> dict:
    """Medians over the decode steps that ran all ``batch`` sequences (sequences
    prefilled early finish early, so the last decode steps run fewer); each
    step's ratio is its own time over its own floor."""
    dec = rec[rec["num_prefill_seqs"] == 0]
    if graphs:
        dec = dec[(dec["graph_bucket"] > 0) & (dec["captures"] == 0)]
    full = dec[dec["num_seqs"] == batch]
    sel = full if len(full) else dec
    kv = sel["kv_tokens_read"].to_numpy() * kv_bytes_per_token(spec) * dtype.itemsize / 2
    t = sel["measured_s"].to_numpy()
    issue_w = 2 * spec.num_params if model.mode == "model" else 0
    read_w = weight_bytes_read(model)
    floor, floor_read = (issue_w + kv) / copy_bps, (read_w + kv) / copy_bps
    med = lambda a: float(np.median(a))  # noqa: E731
    return {"mode": model.mode, "layout": getattr(model, "layout", ""), "batch": batch, "graphs": graphs,
            "steps": int(len(sel)), "steps_all_decode": int(len(dec)),
            "prefill_ms": float(rec["measured_s"].iloc[0]) * 1e3, "decode_ms": med(t) * 1e3,
            "prep_ms": float(sel["prep_s"].median()) * 1e3, "wall_ms": float(sel["wall_s"].median()) * 1e3,
            "kv_GB": med(kv) / 1e9, "floor_ms": med(floor) * 1e3, "ratio": med(t / floor),
            "ratio_read": med(t / floor_read), "ratio_max": float((t / floor).max()),
            "ratio_all_decode": float(np.median(dec["measured_s"].to_numpy() / (
                issue_w + dec["kv_tokens_read"].to_numpy() * kv_bytes_per_token(spec) * dtype.itemsize / 2)
                * copy_bps))}


def bench_mode(args, spec, mode: str, copy_bps: float, layout: str = "out_in", fuse: str = "on") -> list[dict]:
    device, dtype = torch.device("cuda"), torch.bfloat16
    model = SyntheticDecoder(spec, device=device, dtype=dtype, mode=mode, layout=layout, fuse_decode=fuse == "on")
    top = max(args.batch)
    blocks = top * (-(-(args.prompt + args.output) // args.block_size) + 1) + 64
    ex = GPUExecutor(spec, blocks, 0, args.block_size, device=device, dtype=dtype, mode=mode, model=model,
                     graph_max_batch=top)
    graphs = ex.graphs
    cfg = ReplayConfig(model=spec.name, num_gpu_blocks=blocks, num_cpu_blocks=0, block_size=args.block_size,
                       prefix_caching=False, scheduler=SchedulerConfig(max_num_seqs=top))
    measure(together(top, args.prompt, 4), cfg, ex)  # compile the kernel variants
    rows = []
    eager = args.eager_batch if layout == args.layouts[0] and fuse == args.fuse[0] else []
    runs = [(b, True) for b in args.batch] + [(b, False) for b in eager]
    for b, use_graphs in runs:
        ex.graphs = graphs if use_graphs else None
        _, rec = measure(together(b, args.prompt, args.output), cfg, ex)
        rows.append(dict(summarize(rec, spec, dtype, b, use_graphs, model, copy_bps), fused=fuse))
        print(json.dumps(rows[-1]), flush=True)
    ex.graphs = graphs
    del ex, model, graphs
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    spec = get_model(args.model)
    if args.blas != "default":
        torch.backends.cuda.preferred_blas_library(args.blas)
    copy_bps = args.copy_gbs * 1e9 if args.copy_gbs else copy_bandwidth()
    rows = []
    for mode in args.modes:
        for layout in (args.layouts if mode == "model" else args.layouts[:1]):
            for fuse in args.fuse:
                rows += bench_mode(args, spec, mode, copy_bps, layout, fuse)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "blas": args.blas, "copy_GBps": copy_bps / 1e9,
            "model": spec.name, "prompt": args.prompt, "output": args.output, "block_size": args.block_size}
    if args.results:
        Path(args.results).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(json.dumps(meta))
    print(f"{'mode':9} {'layout':6} {'fused':5} {'B':>4} {'graph':>5} {'steps':>5} {'decode ms':>9} {'prep ms':>7} "
          f"{'wall ms':>8} {'KV GB':>6} {'floor ms':>8} {'x floor':>7} {'x read':>6} {'max':>5} {'prefill ms':>10}")
    for r in rows:
        print(f"{r['mode']:9} {r['layout']:6} {r['fused']:5} {r['batch']:4d} {str(r['graphs']):>5} {r['steps']:5d} "
              f"{r['decode_ms']:9.3f} {r['prep_ms']:7.3f} {r['wall_ms']:8.3f} {r['kv_GB']:6.2f} "
              f"{r['floor_ms']:8.3f} {r['ratio']:7.2f} {r['ratio_read']:6.2f} {r['ratio_max']:5.2f} "
              f"{r['prefill_ms']:10.1f}")


if __name__ == "__main__":
    main()
