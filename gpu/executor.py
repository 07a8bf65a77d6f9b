"""The GPU executor: run each scheduled step on real KV tensors and kernels.

It plugs into the simulator's engine in place of the cost-model executor
(``sim/executor.py``), so the *identical* allocator and scheduler drive real
memory: the block ids of every ``StepPlan`` index the cache tensors. One
step, in the order the plan prescribes::

    forks, frees            bookkeeping only (token histories, shadow rows)
    swap_in, swap_out       swap_blocks   (CPU pool <-> GPU blocks)
    copy-on-write           copy_blocks   (all layers, one launch)
    forward                 store_kv + paged_decode / paged_prefill per layer

On a GPU, decode-only steps replay CUDA graphs captured per batch-size
bucket (``gpu/graphs.py``, ``cuda_graphs=True``); steps with prefill rows
run eagerly (one launch per kernel; at thousands of tokens the GEMMs
dominate). The CPU has no graphs: everything runs eagerly there.

The step's duration (``measured_s``) is GPU time from the block moves to the
end of the forward: CUDA events around them on a GPU, ``time.perf_counter``
on the CPU (where everything is synchronous). Before the first event the GPU
is held in a spin while the host enqueues the step (sized from the host's
enqueue time of the last step of its kind, graph replay or eager), so that the host's launch rate is not billed as idle GPU time:
the clock is the device's, as in a serving engine that hides launches in
graphs. A step whose spin ran out before the host was done (``launch_gap``),
that compiled a Triton kernel (``compiles``) or captured a graph
(``captures``) has its forward run and timed again (``retimed``; see
``_retime``). The host's preparation of the step (bookkeeping, tokens,
metadata, filling the graph's input buffers) is ``prep_s``; ``wall_s`` is the
whole ``execute``, host time included. With ``time_from`` set to a cost
model the step still runs, but the cost model's price is returned, so the
schedule is exactly a simulated replay's (tests compare them).

Steps with checks (``check_every``) time the checks too; their records say
``checked`` (a graph step then also copies each layer's q/k/v/output out of
the graph for the shadow). Calibrate with ``check_every=0`` (checked steps are never retimed: the
shadow sees each layer once). ``graph_bucket`` is the batch
size the step was padded to (0: eager), ``graph_width`` the table width in
blocks its graph was captured for (the decode grid depends on it). The garbage collector is held off
during the timed region.
"""
from __future__ import annotations

import gc
import math
import time

import numpy as np
import pandas as pd
import torch

from pagesim.gpu.batch import build_batch
from pagesim.gpu.cache import PagedCache
from pagesim.gpu.graphs import SPIN_CYCLES, SPIN_HZ, DecodeGraphs
from pagesim.gpu.model import MODES, SyntheticDecoder
from pagesim.gpu.shadow import Shadow
from pagesim.gpu.tokens import TokenBook
from pagesim.sim.costmodel import get_model
from pagesim.sim.plan import StepPlan, StepShapes

RECORD_COLUMNS = ("step", "num_seqs", "num_tokens", "kv_tokens_read", "attn_pairs", "num_prefill_seqs",
                  "copy_blocks", "swap_blocks", "measured_s", "max_rel_err", "checked", "compiles", "wall_s",
                  "prep_s", "graph_bucket", "captures", "retimed", "launch_gap", "graph_width")
_compiles = [0]  # Triton compilations in this process so far (see _watch_compiles)


def _watch_compiles() -> None:
    """Count Triton compilations (chaining any hook already set). A step
    that compiles a kernel variant spends its time in the compiler, not on
    the GPU; its record says so, and calibration leaves it out."""
    from triton import knobs

    hook = knobs.runtime.jit_post_compile_hook
    if getattr(hook, "pagesim_counter", False):
        return

    def counting(*args, **kwargs):
        _compiles[0] += 1
        return hook(*args, **kwargs) if hook is not None else None

    counting.pagesim_counter = True
    knobs.runtime.jit_post_compile_hook = counting


class GPUExecutor:
    """Executes StepPlans on a synthetic model; see the module docstring.

    ``model`` reuses another executor's weights (same spec, device, dtype
    and mode), which saves the seconds a large model takes to initialise.
    ``graph_max_batch``: the largest decode batch replayed from a graph
    (the scheduler's ``max_num_seqs``); larger decode steps run eagerly.
    """

    needs_plans = True

    def __init__(self, model_spec, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int, *,
                 device=None, dtype: torch.dtype | None = None, mode: str = "model",
                 check_every: int = 0, time_from="measured", seed: int = 0,
                 model: SyntheticDecoder | None = None, cuda_graphs: bool = True,
                 graph_max_batch: int = 256) -> None:
        spec = get_model(model_spec)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every must be an int >= 0, got {check_every!r}")
        if time_from != "measured" and not hasattr(time_from, "price"):
            raise ValueError("time_from must be 'measured' or a cost model (an object with price())")
        if model is not None and (model.spec != spec or model.mode != mode or model.dtype != self.dtype):
            raise ValueError("the model given does not match model_spec, mode and dtype")
        self.spec, self.mode, self.time_from, self.check_every = spec, mode, time_from, check_every
        self.block_size = block_size
        self.model = model or SyntheticDecoder(spec, device=self.device, dtype=self.dtype,
                                               mode=mode, seed=seed)
        self.cache = PagedCache(spec, num_gpu_blocks, num_cpu_blocks, block_size,
                                device=self.device, dtype=self.dtype)
        self.seed = seed
        self.records: list[tuple] = []
        self.graphs = None
        if cuda_graphs and self.device.type == "cuda":
            self.graphs = DecodeGraphs(self.model, self.cache, block_size, graph_max_batch,
                                       taps=check_every > 0)
        # spin before a graph replay / an eager step, until the host's enqueue times say (``_timed``)
        self._spin = {True: SPIN_CYCLES, False: int(0.02 * SPIN_HZ)}
        _watch_compiles()
        self.reset()

    def reset(self) -> None:
        """Forget every sequence before another replay: sequence ids start
        over, and the last step's finishes never reach a plan. The weights,
        the cache tensors and the records stay."""
        n_gpu = self.cache.num_gpu_blocks
        n_cpu = 0 if self.cache.cpu_kv is None else self.cache.cpu_kv.shape[2]
        self.book = TokenBook(n_gpu, n_cpu, self.block_size, self.spec.vocab_size, self.seed)
        self.shadow = Shadow(self.cache, check_every=self.check_every, seed=self.seed) \
            if self.check_every else None

    # --------------------------------------------------------------- step
    def execute(self, plan: StepPlan) -> float:
        t0, compiles = time.perf_counter(), _compiles[0]
        self._bookkeeping(plan)
        batch = build_batch(plan, self.book, self.block_size)
        shadow = self.shadow
        if shadow is not None:
            shadow.begin(batch)
        hook = shadow.layer_hook if shadow is not None else None
        graphs = self.graphs if self.graphs is not None and self.graphs.fits(batch) else None
        bucket = graphs.fill(batch) if graphs is not None else 0
        capture = graphs is not None and not graphs.captured(bucket)
        if graphs is None:
            batch.pack(self.device)
        prep = time.perf_counter() - t0

        def forward() -> None:
            if graphs is None:
                self.model.forward(self.cache, batch, hook)
            elif capture:
                graphs.eager(bucket, plan.step, _first_rows(hook, len(batch.seq_ids)))
            else:
                graphs.replay(bucket)

        def moves() -> None:
            self._move_blocks(plan)
            if graphs is None:
                batch.upload()

        moves_s, measured, gap = self._timed(moves, forward, graphs is not None and not capture)
        if capture:
            graphs.capture(bucket)
        elif graphs is not None and hook is not None:
            graphs.replay_taps(len(batch.seq_ids), hook)
        compiled = _compiles[0] - compiles
        retimed = shadow is None and bool(compiled or capture or gap)
        if retimed:  # see ``_retime``
            measured, gap = self._retime(moves_s, graphs, bucket, batch)
        err = shadow.end() if shadow is not None else math.nan
        self.cache.finish_swaps()
        checked = shadow is not None and (shadow.checking or bool(plan.cow or plan.swap_in or plan.swap_out))
        self._record(plan, measured, err, checked, compiled, time.perf_counter() - t0,
                     prep, bucket, int(capture), int(retimed), int(gap),
                     graphs.width if graphs is not None else 0)
        if self.time_from == "measured":
            return measured
        return float(self.time_from.price(plan.shapes())[0])

    def _timed(self, moves, forward, graph: bool) -> tuple[float, float, bool]:
        """(seconds of the block moves, seconds of the step, launch gap?).

        The GPU is held in a spin while the host enqueues the step, so that
        the measured time is the device's work, not the host's launch rate.
        The spin is sized from the host's enqueue time of the last step of
        the same kind (graph replay: one launch and two copies, ~0.1 ms;
        eager: hundreds of launches, tens of ms). If the spin ran out before
        the host finished (``gap``), the GPU waited for launches inside the
        timed region and the time is not clean; the next spin is longer."""
        spin = self._spin[graph]
        gc_on = gc.isenabled()
        gc.disable()  # a collection inside the timed region would be billed to the step
        try:
            t0 = time.perf_counter()
            timer = _Timer(self.device, spin=spin)
            moves()
            timer.mark()
            forward()
            gap = timer.started()
            enqueue = time.perf_counter() - t0
            moves_s, measured = timer.stop()
        finally:
            if gc_on:
                gc.enable()
        self._spin[graph] = spin_cycles(enqueue, gap, spin)
        return moves_s, measured, gap

    def _retime(self, moves_s: float, graphs, bucket: int, batch) -> tuple[float, bool]:
        """A step that compiled a kernel, captured a graph or waited for the
        host measured the host, not the GPU; a serving engine compiles and
        captures before it serves. Its forward is run and timed again (it
        is idempotent: the same K/V are stored to the same slots and the
        same cache is read); the block moves, which are not (a swapped-out
        block may have been overwritten since), keep their first timing.
        Returns (seconds charged, launch gap in the second timing?)."""
        if graphs is not None:
            _, fwd, gap = self._timed(lambda: None, lambda: graphs.replay(bucket), True)
        else:
            _, fwd, gap = self._timed(lambda: None, lambda: self.model.forward(self.cache, batch), False)
        return moves_s + fwd, gap

    def _bookkeeping(self, plan: StepPlan) -> None:
        """Forks happened at the last commit, before any free of this plan
        (a sequence forked and finished in one commit is forked first)."""
        finished = set(plan.finished)
        for parent, child in plan.forks:
            self.book.fork(parent, child)
            if self.shadow is not None:
                self.shadow.fork(parent, child)
        for sid in plan.freed:
            self.book.free(sid, sid in finished)
            if self.shadow is not None:
                self.shadow.free(sid)
        self.book.swap_in(plan.swap_in)
        self.book.swap_out(plan.swap_out)
        self.book.copy(plan.cow)

    def _move_blocks(self, plan: StepPlan) -> None:
        cache, shadow = self.cache, self.shadow
        cache.swap_in(plan.swap_in)
        if shadow is not None:
            shadow.after_swap_in(plan.step, plan.swap_in)
            shadow.before_swap_out(plan.swap_out)
        cache.swap_out(plan.swap_out)
        cache.copy(plan.cow)
        if shadow is not None:
            shadow.after_cow(plan.step, plan.cow)

    def _record(self, plan: StepPlan, measured: float, err: float, checked: bool, compiles: int,
                wall: float, prep: float, bucket: int, captures: int, retimed: int, gap: int,
                width: int) -> None:
        s = plan.shapes()
        self.records.append((plan.step, int(s.num_seqs[0]), int(s.num_tokens[0]),
                             int(s.kv_tokens_read[0]), float(s.attn_pairs[0]),
                             int(s.num_prefill_seqs[0]), int(s.copy_blocks[0]),
                             int(s.swap_blocks[0]), measured, err, checked, compiles, wall,
                             prep, bucket, captures, retimed, gap, width))

    def records_frame(self) -> pd.DataFrame:
        """One row per executed step, in the columns ``fit_table`` reads."""
        return pd.DataFrame.from_records(self.records, columns=list(RECORD_COLUMNS))

    def price(self, shapes: StepShapes) -> np.ndarray:
        raise NotImplementedError(
            "GPUExecutor measures the steps it runs and cannot price steps it has not seen; "
            "the engine executes every step because needs_plans is True. To price shapes, fit "
            "a TableCostModel on this executor's records (gpu.calibrate).")


def _first_rows(hook, n: int):
    """``hook`` on the first ``n`` rows (a bucket's padding rows are no sequence's)."""
    if hook is None:
        return None
    return lambda layer, q, k, v, out: hook(layer, q[:n], k[:n], v[:n], out[:n])


class _Timer:
    """CUDA events on a GPU (device time of the region), perf_counter on the CPU.
    ``spin`` (cycles): keep the GPU busy for a moment before the first event,
    so that the time the host takes to enqueue the region is not measured as
    GPU time. ``mark`` splits the region in two (block moves, forward)."""

    def __init__(self, device: torch.device, spin: int = 0) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.mid, self.end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            if spin:
                torch.cuda._sleep(int(spin))
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def mark(self) -> None:
        if self.cuda:
            self.mid.record()
        else:
            self.t1 = time.perf_counter()

    def started(self) -> bool:
        """Did the GPU reach the first event already (the spin ran out while
        the host was still enqueueing)? Always False on the CPU."""
        return self.cuda and self.start.query()

    def stop(self) -> tuple[float, float]:
        """(seconds to the mark, seconds of the whole region)."""
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.mid) / 1e3, self.start.elapsed_time(self.end) / 1e3
        t = time.perf_counter()
        return self.t1 - self.t0, t - self.t0


def spin_cycles(enqueue_s: float, gap: bool, previous: int) -> int:
    """The spin before the next step of a kind: 1.5x this step's host
    enqueue time plus 0.1 ms, at a nominal 2 GHz (a slower clock spins
    longer, the safe side); after a launch gap at least twice the previous
    spin. Capped at 0.5 s (a step that compiled spent its enqueue in the
    compiler)."""
    cycles = int((1.5 * min(enqueue_s, 0.2) + 1e-4) * SPIN_HZ)
    if gap:
        cycles = max(cycles, 2 * previous)
    return min(cycles, int(0.5 * SPIN_HZ))


def executor_for_replay(cfg, **kwargs) -> GPUExecutor:
    """A GPUExecutor sized like ``cfg``'s allocator (its model, block size,
    GPU and CPU block counts), on CUDA when available. ``kwargs`` go to
    ``GPUExecutor`` (mode, check_every, dtype, time_from, ...)."""
    if cfg.allocator != "paged":
        raise ValueError(f"the GPU executor needs block tables: allocator must be 'paged', "
                         f"got {cfg.allocator!r}")
    if cfg.tp != 1:
        raise ValueError(f"the GPU executor runs one GPU: tp must be 1, got {cfg.tp}")
    if getattr(cfg, "kv_cache_dtype", "auto") != "auto":
        raise ValueError(f"the GPU executor keeps K/V in the model's dtype: kv_cache_dtype must "
                         f"be 'auto', got {cfg.kv_cache_dtype!r}")
    kwargs.setdefault("seed", cfg.seed)
    kwargs.setdefault("graph_max_batch", cfg.scheduler.max_num_seqs)
    return GPUExecutor(cfg.model, cfg.gpu_blocks(), cfg.cpu_blocks(), cfg.block_size, **kwargs)
