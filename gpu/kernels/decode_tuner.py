"""Tune ``paged_decode``'s split depth on this device and cache it (see ``decode_tuning``).

Each class's shape (1 x 32768 for ``waves_small``, 8 x 4096 for ``waves``)
is timed at 1, 2, 3 and 4 programs per SM with CUDA-graph replay over input
sets larger than L2 (bf16, Llama-3-8B attention, block 16, shuffled tables);
the fastest wave count of each class is written to the cache file.
"""
from __future__ import annotations

import json
import math
import statistics

import torch

from pagesim.gpu.kernels.decode_tuning import cache_path, forget
from pagesim.gpu.kernels.paged_decode import decode_config, num_splits_for, paged_decode

WAVE_CANDIDATES = (1, 2, 3, 4)
TUNE_SHAPES = {"waves_small": (1, 32768), "waves": (8, 4096)}  # (batch, context) per class
ROTATE_BYTES = 256 << 20


def graph_time(fns, samples: int = 15, min_ms: float = 2.0) -> float:
    """Median seconds per call of ``fns`` (one per input set), from CUDA-graph replays."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for f in fns:
        f()
    end.record()
    end.synchronize()
    est = start.elapsed_time(end) / len(fns)
    rounds = max(1, min(2000 // len(fns), math.ceil(min_ms / max(est, 1e-3) / len(fns))))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(rounds):
            for f in fns:
                f()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / (rounds * len(fns)))
    return statistics.median(times)


def _time_waves(device, batch: int, ctx: int, waves: int, kv_heads=8, heads=32, dim=128, bs=16) -> float:
    per_seq = -(-ctx // bs)
    kv_bytes = 2 * batch * ctx * kv_heads * dim * 2
    sets = max(2, min(16, -(-ROTATE_BYTES // kv_bytes)))
    n = sets * batch * per_seq
    kc = torch.randn(n, bs, kv_heads, dim, device=device, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    tables = [torch.randperm(n, device=device)[:batch * per_seq].view(batch, per_seq).int() for _ in range(sets)]
    qs = [torch.randn(batch, heads, dim, device=device, dtype=torch.bfloat16) for _ in range(sets)]
    lens = torch.full((batch,), ctx, device=device, dtype=torch.int32)
    cfg = decode_config(device, batch * kv_heads, ctx, bs, dim)
    splits = num_splits_for(batch * kv_heads, ctx, cfg["tile_n"], torch.cuda.get_device_properties(device)
                            .multi_processor_count, waves, min_tiles=2)
    fns = [lambda s=s: paged_decode(qs[s], kc, vc, tables[s], lens, num_splits=splits) for s in range(sets)]
    return graph_time(fns)


def tune(device: torch.device, *, write: bool = True) -> dict:
    """Time every wave count on each class's shape; keep the fastest; cache it."""
    device = torch.device(device)
    result = {"device": torch.cuda.get_device_name(device),
              "sms": torch.cuda.get_device_properties(device).multi_processor_count, "times_us": {}}
    for key, (batch, ctx) in TUNE_SHAPES.items():
        times = {w: _time_waves(device, batch, ctx, w) for w in WAVE_CANDIDATES}
        result["times_us"][key] = {str(w): t * 1e6 for w, t in times.items()}
        result[key] = min(times, key=times.get)
    if write:
        path = cache_path(device)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        forget()
    return result
