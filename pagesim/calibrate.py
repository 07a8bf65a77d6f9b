"""``pagesim calibrate``: profile step shapes on a GPU, fit the table cost model.

The grid is made of small workloads replayed through the GPU executor with
the real scheduler and allocator, so every profiled step is one the
scheduler can produce (no hand-built plans that the executor's token book
would reject). Together they cover:

* ``decode``: B requests arriving together with a C-token prompt and a
  short output: decode steps at batch B over contexts C .. C + output, for
  B in batch buckets and C in a few context lengths;
* ``prefill``: one prompt of P new tokens on top of a cached prefix of C
  tokens (a first request with the prefix's token ids warms the cache);
* ``mixed``: ShareGPT-like streams (16 and 48 requests/s) whose arrivals
  are prefilled beside running decodes (chunked prefill), at small and
  large batch sizes;
* ``cow``: V0 parallel sampling (n = 4): forks and copy-on-write copies;
* ``swap``: V0 with swap preemption on a pool too small for the stream.

The measured steps (compile steps left out) are fitted by
``pagesim.sim.costmodel.fit_table`` and saved, with the raw samples and the
run's provenance, in one calibration file. ``--from FILE ...`` refits the
pooled samples of earlier runs instead of profiling.
"""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pagesim import __version__
from pagesim.gpu.calibrate import gpu_rows
from pagesim.replay import ReplayConfig, run_replay
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.costmodel import TableCostModel, fit_table, get_model, refit
from pagesim.traces import Request, Trace, synthetic

#: Decode batch buckets (as serving engines capture CUDA graphs) and contexts.
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (256, 1024, 2048, 4096)
PREFILL_TOKENS = (128, 512, 2048, 4096)
PREFILL_CACHED = (0, 1024, 4096)


@dataclass(frozen=True)
class GridPoint:
    """One profiled workload: its part of the grid, a label, trace and config."""

    part: str
    label: str
    trace: Trace
    cfg: ReplayConfig


def _decode_trace(batch: int, ctx: int, out: int) -> Trace:
    return Trace([Request(i, 0.0, ctx, out) for i in range(batch)], source=f"grid:decode:{batch}x{ctx}")


def _prefill_trace(new: int, cached: int, seed: int) -> Trace:
    """A prefix request, then one that shares it and adds ``new`` tokens."""
    rng = np.random.default_rng(seed)
    prefix = tuple(int(t) for t in rng.integers(0, 32000, cached))
    tail = tuple(int(t) for t in rng.integers(0, 32000, new))
    reqs = [Request(1, 1.0, cached + new, 1, prompt_token_ids=prefix + tail)]
    if cached:
        reqs.insert(0, Request(0, 0.0, cached, 1, prompt_token_ids=prefix))
    return Trace(reqs, source=f"grid:prefill:{new}+{cached}")


def grid(base: ReplayConfig, *, max_num_seqs: int = 256, decode_tokens: int = 32,
         scale: float = 1.0, seed: int = 0) -> list[GridPoint]:
    """The calibration grid for ``base`` (its model, block size and pool).

    ``scale`` (0 < scale <= 1) shrinks every length and count, for a dry
    run on a CPU under the Triton interpreter."""
    def s(x: int) -> int:
        return max(1, int(round(x * scale)))

    points = []
    room = int(0.9 * base.gpu_blocks())  # a decode point must run without preempting
    bs, out = base.block_size, s(decode_tokens)
    for b in sorted({s(b) for b in DECODE_BATCHES if b <= max_num_seqs}):
        for c in sorted({s(c) for c in DECODE_CONTEXTS}):
            if b * -(-(c + out) // bs) <= room:
                points.append(GridPoint("decode", f"{b}x{c}", _decode_trace(b, c, out), base))
    for p in sorted({s(p) for p in PREFILL_TOKENS}):
        for c in sorted({int(c * scale) for c in PREFILL_CACHED}):
            points.append(GridPoint("prefill", f"{p}+{c}", _prefill_trace(p, c, seed), base))
    stream = synthetic("sharegpt", num_requests=s(96), rate=16.0, seed=seed)
    busy = synthetic("sharegpt", num_requests=s(160), rate=48.0, seed=seed + 1)
    if scale < 1:
        stream, busy = _shrunk(stream, scale), _shrunk(busy, scale)
    points.append(GridPoint("mixed", "sharegpt", stream, base))
    points.append(GridPoint("mixed", "sharegpt@48", busy, base))  # prefills beside large batches
    v0 = replace(base.scheduler, generation="v0")
    sampled = Trace([replace(r, n=4) for r in stream[: s(32)]], source="grid:cow")
    points.append(GridPoint("cow", "n=4", sampled, replace(base, scheduler=v0)))
    tight = max(8, base.gpu_blocks() // 8)
    swap_cfg = replace(base, num_gpu_blocks=tight, scheduler=replace(v0, preemption="swap"))
    points.append(GridPoint("swap", f"{tight} blocks", sampled, swap_cfg))
    return points


def _shrunk(trace: Trace, scale: float) -> Trace:
    return Trace([replace(r, prompt_tokens=max(1, int(r.prompt_tokens * scale)),
                          output_tokens=max(1, int(r.output_tokens * scale))) for r in trace],
                 source=trace.source)


def profile(points: list[GridPoint], executor, *, progress: bool = True) -> pd.DataFrame:
    """Replay each grid point once through ``executor``; its records,
    tagged by ``part`` and ``label``. A step that compiled a Triton kernel
    variant or captured a graph is run and timed again by the executor
    (``retimed``), so no point needs a warm-up replay of its own."""
    bar = _bar(len(points), progress)
    frames = []
    for pt in points:
        executor.reset()
        first = len(executor.records)
        run_replay(pt.trace, pt.cfg, executor=executor)
        rows = executor.records_frame().iloc[first:].reset_index(drop=True)
        frames.append(rows.assign(part=pt.part, label=pt.label))
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{pt.part} {pt.label}")
    if bar is not None:
        bar.close()
    return pd.concat(frames, ignore_index=True)


def _bar(total: int, on: bool):
    if not on:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit=" shapes", desc="calibrate")


def provenance(executor) -> dict:
    """Card, driver and versions: what a reader needs to trust the file."""
    import torch
    import triton

    dev = executor.device
    cuda = dev.type == "cuda"
    return {
        "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu (Triton interpreter)",
        "driver": _driver_version() if cuda else None,
        "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
        "python": platform.python_version(), "pagesim": __version__,
        "date": _dt.date.today().isoformat(),
        "dtype": str(executor.dtype).removeprefix("torch."), "mode": executor.mode,
    }


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def block_costs(executor, n: int = 64, reps: int = 5) -> dict:
    """Seconds per block of a copy-on-write copy and of a swap (out and back
    in, averaged), through the executor's own cache operations; medians."""
    cache = executor.cache
    cpu_blocks = 0 if cache.cpu_kv is None else int(cache.cpu_kv.shape[2])
    n = max(1, min(n, cache.num_gpu_blocks // 2, cpu_blocks or n))
    copy_pairs = [(i, n + i) for i in range(n)]
    swap_pairs = [(i, i) for i in range(n)]

    def swap_both_ways():
        cache.swap_out(swap_pairs)
        cache.finish_swaps()
        cache.swap_in(swap_pairs)
        cache.finish_swaps()

    copy_s = _median_seconds(lambda: cache.copy(copy_pairs), executor.device, reps)
    swap_s = _median_seconds(swap_both_ways, executor.device, reps) if cpu_blocks else 0.0
    return {"copy_block_s": copy_s / n, "swap_block_s": swap_s / (2 * n)}


def _median_seconds(fn, device, reps: int) -> float:
    import torch

    fn()  # warm-up: compiles
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def calibrate(base: ReplayConfig, executor, *, gpu_preset: str, scale: float = 1.0,
              progress: bool = True, points: list[GridPoint] | None = None) -> TableCostModel:
    """Profile the grid (or ``points``) on ``executor`` and fit; the model
    carries its samples."""
    costs = block_costs(executor)
    if points is None:
        points = grid(base, max_num_seqs=base.scheduler.max_num_seqs, scale=scale, seed=base.seed)
    rows = profile(points, executor, progress=progress)
    used = gpu_rows(rows)
    meta = {"model": get_model(base.model).name, "gpu": gpu_preset, "tp": base.tp,
            "block_size": base.block_size, **provenance(executor), **costs,
            "steps": int(len(used)), "compile_steps_left_out": int(len(rows) - len(used)),
            "grid": sorted({f"{p.part}" for p in points}), "grid_points": len(points)}
    return fit_table(used.reset_index(drop=True), meta)


def refit_files(paths: list[str]) -> TableCostModel:
    """``--from``: pool the samples of several calibration files and refit."""
    return refit([TableCostModel.from_file(p) for p in paths])


def fit_report(table: TableCostModel) -> str:
    """The fit, regime by regime: features (and why), coefficients, errors."""
    m = table.meta
    lines = [f"calibration: {m.get('model')} on {m.get('device_name', m.get('gpu'))}, "
             f"block {m.get('block_size')}, {m.get('steps', '?')} steps"]
    for name, r in table.regimes.items():
        f = r.fit
        lines.append(f"  {name:6} rows {f.get('rows', '?'):>5}  median |err| "
                     f"{f.get('median_rel_err', float('nan')):6.1%}  p95 "
                     f"{f.get('p95_rel_err', float('nan')):6.1%}  sum pred/measured "
                     f"{f.get('sum_pred_over_sum_measured', float('nan')):.3f}")
        for feat, c in zip(r.features, r.coef):
            why = f.get("why", {}).get(feat, "")
            lines.append(f"      {feat:16} {c: .4e}  {why}")
    lines.append(f"  per block: copy {table.copy_block_s * 1e6:.2f} us, swap {table.swap_block_s * 1e6:.1f} us")
    return "\n".join(lines)


def default_base(model: str, gpu_preset: str, block_size: int, gpu_memory_utilization: float,
                 num_gpu_blocks: int | None, max_num_seqs: int, seed: int) -> ReplayConfig:
    """The replay configuration the grid runs under (recompute, V1)."""
    gpu = gpu_preset if gpu_preset in ("h100-80gb", "h200", "a100-80gb", "a100-40gb") else "h100-80gb"
    return ReplayConfig(model=model, gpu=gpu, block_size=block_size,
                        gpu_memory_utilization=gpu_memory_utilization, num_gpu_blocks=num_gpu_blocks,
                        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs), seed=seed,
                        cost_model="roofline")
