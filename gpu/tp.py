"""Tensor parallelism: the synthetic decoder sharded Megatron-style.

Rank ``r`` of ``tp`` holds, per layer:

* the column-parallel QKV GEMM: its ``H / tp`` query heads and ``Hkv / tp``
  KV heads (the KV cache of those heads lives in the rank's own paged
  cache, indexed by the same block tables as every other rank's);
* the row-parallel O GEMM over those heads, then an all-reduce (sum);
* the column-parallel gate/up GEMM over ``I / tp`` inner columns and the
  row-parallel down GEMM, then an all-reduce.

Embeddings, norms and the LM head are replicated. Weights are drawn from
the *unsharded* model's random stream, layer by layer, and sliced, so the
sharded model computes the unsharded model's function (up to the order of
the all-reduce's additions): the CPU tests compare the two.

Every rank runs the same scheduler and allocator on the same trace (they are
deterministic), so every rank sees the same plans; ``TPExecutor`` measures
each rank's step and returns the slowest rank's time to all ranks (an
all-reduce MAX), which keeps their clocks, and so their schedules, equal.
NCCL on GPUs, gloo on CPUs. NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``).
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist

from pagesim.gpu.executor import GPUExecutor
from pagesim.gpu.model import ATTN_TABLE_ROWS, SyntheticDecoder
from pagesim.replay import run_replay
from pagesim.sim.costmodel import ModelSpec, get_model

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")


def rank_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The shapes one rank holds: heads and MLP inner width divided by ``tp``."""
    if spec.num_heads % tp or spec.num_kv_heads % tp or spec.intermediate_size % tp:
        raise ValueError(f"{spec.name}: {spec.num_heads} query heads, {spec.num_kv_heads} KV heads "
                         f"and MLP width {spec.intermediate_size} must divide by tp={tp}")
    return replace(spec, name=f"{spec.name}/tp{tp}", num_heads=spec.num_heads // tp,
                   num_kv_heads=spec.num_kv_heads // tp,
                   intermediate_size=spec.intermediate_size // tp)


class ShardedDecoder(SyntheticDecoder):
    """Rank ``rank`` of a ``tp``-way sharded ``SyntheticDecoder``."""

    def __init__(self, spec: ModelSpec | str, *, tp: int, rank: int, group=None,
                 device: torch.device, dtype: torch.dtype, mode: str = "model",
                 seed: int = 0) -> None:
        full = get_model(spec)
        if not 0 <= rank < tp:
            raise ValueError(f"rank must be in 0..{tp - 1}, got {rank}")
        self.full, self.tp, self.rank, self.group = full, tp, rank, group
        self._full_qkv = (full.num_heads + 2 * full.num_kv_heads) * full.head_dim
        super().__init__(rank_spec(full, tp), device=device, dtype=dtype, mode=mode, seed=seed)

    # The parent draws weights through these two in the unsharded order.
    def _rand(self, rows: int, cols: int, scale: float | None = None) -> torch.Tensor:
        if self.mode == "attention" and rows == ATTN_TABLE_ROWS and cols == self.qkv_width:
            full = super()._rand(rows, self._full_qkv, scale)
            return full[:, self._qkv_columns()].contiguous()
        if cols == self.spec.vocab_size or rows == self.spec.vocab_size:
            return super()._rand(rows, cols, scale)  # embeddings and LM head: replicated
        raise AssertionError("ShardedDecoder draws layer weights in _layer only")

    def _layer(self, h: int, qd: int, inner: int, gated: bool) -> dict:
        f, r, tp = self.full, self.rank, self.tp
        full_inner = f.intermediate_size

        def rand(rows, cols):  # the parent's draw, in unsharded shapes
            return SyntheticDecoder._rand(self, rows, cols)

        wqkv = rand(h, self._full_qkv)[:, self._qkv_columns()]
        wo = rand(f.num_heads * f.head_dim, h)
        q_rows = slice(r * qd, (r + 1) * qd)
        wup = rand(h, (2 if gated else 1) * full_inner)
        cols = torch.arange(r * inner, (r + 1) * inner, device=wup.device)
        if gated:
            cols = torch.cat((cols, cols + full_inner))
        wdown = rand(full_inner, h)
        ones = torch.ones(h, dtype=self.dtype, device=self.device)
        return {"norm1": ones, "norm2": ones.clone(), "wqkv": self._stored(wqkv.contiguous()),  # storage layout
                "wo": self._stored(wo[q_rows].contiguous()), "wup": self._stored(wup[:, cols].contiguous()),
                "wdown": self._stored(wdown[r * inner:(r + 1) * inner].contiguous())}

    def _qkv_columns(self) -> torch.Tensor:
        """Columns of the unsharded QKV output that this rank computes."""
        f, r, tp, D = self.full, self.rank, self.tp, self.full.head_dim
        hq, hkv = f.num_heads // tp, f.num_kv_heads // tp
        q = torch.arange(r * hq * D, (r + 1) * hq * D)
        k = f.num_heads * D + torch.arange(r * hkv * D, (r + 1) * hkv * D)
        v = (f.num_heads + f.num_kv_heads) * D + torch.arange(r * hkv * D, (r + 1) * hkv * D)
        return torch.cat((q, k, v)).to(self.device)

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return partial
        dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)
        return partial


class TPExecutor:
    """A rank's ``GPUExecutor`` that returns the slowest rank's step time.

    Built by ``tp_executor``; every rank of the group must run the same
    replay (same trace, configuration and seed)."""

    def __init__(self, inner, group=None) -> None:
        self.inner, self.group = inner, group
        self.needs_plans = True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, plan) -> float:
        dt = self.inner.execute(plan)
        t = torch.tensor([dt], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t.item())

    def price(self, shapes):
        return self.inner.price(shapes)


def tp_executor(cfg, *, rank: int, tp: int, group=None, **kwargs) -> TPExecutor:
    """Rank ``rank``'s executor for replay configuration ``cfg`` (its model,
    pool sizes and block size), inside an initialised process group."""
    if cfg.allocator != "paged":
        raise ValueError(f"the GPU executor needs block tables: allocator must be 'paged', "
                         f"got {cfg.allocator!r}")
    device = torch.device(kwargs.pop("device", None)
                          or (f"cuda:{rank}" if torch.cuda.is_available() else "cpu"))
    dtype = kwargs.pop("dtype", None) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    mode = kwargs.pop("mode", "model")
    seed = kwargs.pop("seed", cfg.seed)
    model = ShardedDecoder(cfg.model, tp=tp, rank=rank, group=group, device=device, dtype=dtype,
                           mode=mode, seed=seed)
    inner = GPUExecutor(model.spec, cfg.gpu_blocks(), cfg.cpu_blocks(), cfg.block_size,
                        device=device, dtype=dtype, mode=mode, seed=seed, model=model, **kwargs)
    return TPExecutor(inner, group)


def _replay_rank(rank: int, tp: int, init: str, trace, cfg, kwargs: dict, out: str | None) -> None:
    """One rank's process: join the group, replay, rank 0 saves the result."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=tp)
    try:
        ex = tp_executor(cfg, rank=rank, tp=tp, **kwargs)
        result = run_replay(trace, cfg, executor=ex)
        if out is not None:
            torch.save({"rank": rank, "result": result, "kv": ex.cache.kv.cpu(),
                        "records": ex.records_frame()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run_replay_tp(trace, cfg, *, tp: int, workdir: str, **kwargs) -> list[dict]:
    """Replay ``trace`` on ``tp`` ranks (one process each; GPUs 0..tp-1 when
    CUDA exists, gloo on the CPU otherwise); returns each rank's saved
    ``{"result", "kv", "records"}`` (``kwargs`` go to ``GPUExecutor``)."""
    import torch.multiprocessing as mp

    if torch.cuda.is_available() and torch.cuda.device_count() < tp:
        raise ValueError(f"--tp {tp} needs {tp} GPUs, this machine has {torch.cuda.device_count()}")
    init = f"file://{os.path.abspath(os.path.join(workdir, 'tp-init'))}"
    out = os.path.join(workdir, "tp-rank")
    mp.spawn(_replay_rank, args=(tp, init, trace, cfg, kwargs, out), nprocs=tp, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(tp)]
