"""Split-K depth of ``paged_decode``, tuned once per device and cached.

How many programs per SM the split shapes want depends on the card, not
only on its SM count: the H100 sweeps (bench/KERNEL_NOTES.md, run 6) found
one program per SM best, while on an H200 (same 132 SMs, 1.4x the bandwidth)
32 splits at 1 x 32768 and 4 at 8 x 4096 - two per SM - beat that table by
4-5 %. More bandwidth at the same latency wants more bytes in flight
(Little's law), and how much more a program buys is not something a formula
over the datasheet gets right to 1 %. So the split rows of the decode table
take their ``waves`` (programs per SM) from a file written by ``tune``::

    $PAGESIM_CACHE_DIR (default ~/.cache/pagesim)/decode-<device slug>-<SMs>sm.json
        {"device": "NVIDIA H200", "sms": 132, "waves_small": 2, "waves": 2, "times_us": {...}}

``waves_small`` applies to at most SMs/8 (sequence, kv head) groups (one or
two sequences), ``waves`` to the other split rows. Without a file the table's
own values (the H100's) apply. ``tune`` times each candidate on the two
shapes of each class with CUDA-graph replay over input sets larger than L2.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import statistics
from pathlib import Path

import torch

WAVE_CANDIDATES = (1, 2, 3, 4)
TUNE_SHAPES = {"waves_small": (1, 32768), "waves": (8, 4096)}  # (batch, context) per class
ROTATE_BYTES = 256 << 20


def cache_path(device: torch.device) -> Path:
    props = torch.cuda.get_device_properties(device)
    slug = re.sub(r"[^a-z0-9]+", "-", props.name.lower()).strip("-")
    root = Path(os.environ.get("PAGESIM_CACHE_DIR", Path.home() / ".cache" / "pagesim"))
    return root / f"decode-{slug}-{props.multi_processor_count}sm.json"


@functools.lru_cache(maxsize=None)
def _load(index: int) -> dict:
    path = cache_path(torch.device("cuda", index))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tuned(device: torch.device) -> dict:
    """The cached tuning of ``device`` ({} when none, or on the CPU)."""
    if device.type != "cuda":
        return {}
    return _load(device.index if device.index is not None else torch.cuda.current_device())


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
    from pagesim.gpu.kernels.paged_decode import decode_config, num_splits_for, paged_decode

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
        _load.cache_clear()
    return result
