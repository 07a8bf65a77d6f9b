"""The KV cache as tensors: GPU blocks, a CPU swap pool, and the block moves.

Block ids are the allocator's: ``sim/`` hands out ids, this module binds
them to memory. One tensor holds every layer so that a copy-on-write copy
is one launch over all layers::

    kv      [num_layers, 2 (K, V), num_gpu_blocks, block_size, num_kv_heads, head_dim]
    cpu_kv  [num_layers, 2 (K, V), num_cpu_blocks, ...]   pinned when CUDA exists

``kv[l, 0]`` and ``kv[l, 1]`` are layer ``l``'s K and V caches in the
layout the kernels take. New caches are filled with NaN, so a kernel that
reads a slot nobody wrote poisons its output instead of passing silently.

Swaps (``swap_mode``):

    zero_copy   one kernel moves every layer's blocks between the GPU cache and
                the pinned pool, reading / writing host memory directly over
                PCIe: scattered pool ids cost nothing extra (default)
    staged      swap out: one gather on the GPU into a staging tensor, one
                pinned transfer, one host scatter into the pool; swap in: one
                host gather, one transfer, one scatter on the GPU
"""
from __future__ import annotations

import torch

from pagesim.gpu.kernels import copy_blocks, move_blocks
from pagesim.sim.costmodel import ModelSpec


class PagedCache:
    def __init__(self, spec: ModelSpec, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 *, device: torch.device, dtype: torch.dtype, swap_mode: str = "zero_copy") -> None:
        if num_gpu_blocks <= 0 or num_cpu_blocks < 0:
            raise ValueError(f"need num_gpu_blocks > 0 and num_cpu_blocks >= 0, got "
                             f"{num_gpu_blocks} and {num_cpu_blocks}")
        if swap_mode not in ("zero_copy", "staged"):
            raise ValueError(f"swap_mode must be 'zero_copy' or 'staged', got {swap_mode!r}")
        self.block_size = block_size
        self.dtype = dtype
        self.swap_mode = swap_mode
        shape = (spec.num_layers, 2, num_gpu_blocks, block_size, spec.num_kv_heads, spec.head_dim)
        self.kv = torch.full(shape, float("nan"), dtype=dtype, device=device)
        self.cpu_kv = None
        if num_cpu_blocks:
            self.cpu_kv = torch.empty((*shape[:2], num_cpu_blocks, *shape[3:]), dtype=dtype,
                                      device="cpu", pin_memory=torch.cuda.is_available())
            self.cpu_kv.fill_(float("nan"))
        self._pending = []  # swap-out handles whose host-side scatter is still to do

    @property
    def num_gpu_blocks(self) -> int:
        return self.kv.shape[2]

    def layer(self, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv[l, 0], self.kv[l, 1]

    def blocks(self, ids) -> torch.Tensor:
        """A copy of GPU blocks ``ids``, all layers: [L, 2, len(ids), block_size, heads, dim]."""
        idx = torch.as_tensor(list(ids), dtype=torch.long, device=self.kv.device)
        return self.kv.index_select(2, idx)

    def copy(self, pairs: list[tuple[int, int]]) -> None:
        """Copy-on-write: block dst = block src, all layers, one launch."""
        if pairs:
            copy_blocks(self.kv, pairs)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """CPU -> GPU, ordered on the current stream (the step reads the blocks)."""
        if pairs:
            self._need_pool()
            self._transfer(self.cpu_kv, self.kv, pairs)

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """GPU -> CPU, ordered on the current stream before this step's writes
        (it may reuse the freed GPU blocks); the pool holds the blocks after
        ``finish_swaps``."""
        if pairs:
            self._need_pool()
            self._transfer(self.kv, self.cpu_kv, pairs)

    def _transfer(self, src: torch.Tensor, dst: torch.Tensor, pairs) -> None:
        if self.swap_mode == "zero_copy" or self.kv.device.type == "cpu":
            move_blocks(src, dst, pairs)
            return
        s_ids = torch.tensor([a for a, _ in pairs])
        d_ids = torch.tensor([b for _, b in pairs])
        if src.device.type == "cuda":  # out: gather on the GPU, one transfer, scatter on the host
            staged = src.index_select(2, s_ids.to(src.device))
            host = torch.empty(staged.shape, dtype=staged.dtype, pin_memory=True)
            host.copy_(staged, non_blocking=True)
            self._pending.append((dst, d_ids, host))
        else:                          # in: gather on the host, one transfer, scatter on the GPU
            host = torch.empty((*src.shape[:2], len(pairs), *src.shape[3:]), dtype=src.dtype, pin_memory=True)
            torch.index_select(src, 2, s_ids, out=host)
            dst.index_copy_(2, d_ids.to(dst.device), host.to(dst.device, non_blocking=True))

    def finish_swaps(self) -> None:
        """Block until swapped-out blocks are in the CPU pool (between steps)."""
        if self._pending:
            torch.cuda.current_stream(self.kv.device).synchronize()
        for dst, ids, host in self._pending:
            dst.index_copy_(2, ids, host)
        self._pending = []

    def _need_pool(self) -> None:
        if self.cpu_kv is None:
            raise ValueError("the plan swaps blocks, but the executor has no CPU pool "
                             "(num_cpu_blocks = 0)")
