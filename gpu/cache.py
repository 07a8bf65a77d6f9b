"""The KV cache as tensors: GPU blocks, a CPU swap pool, and the block moves.

Block ids are the allocator's: ``sim/`` hands out ids, this module binds
them to memory. One tensor holds every layer so that a copy-on-write copy
is one launch over all layers::

    kv      [num_layers, 2 (K, V), num_gpu_blocks, block_size, num_kv_heads, head_dim]
    cpu_kv  [num_layers, 2 (K, V), num_cpu_blocks, ...]   pinned when CUDA exists

``kv[l, 0]`` and ``kv[l, 1]`` are layer ``l``'s K and V caches in the
layout the kernels take. New caches are filled with NaN, so a kernel that
reads a slot nobody wrote poisons its output instead of passing silently.
"""
from __future__ import annotations

import torch

from pagesim.gpu.kernels import copy_blocks, swap_blocks
from pagesim.sim.costmodel import ModelSpec


class PagedCache:
    def __init__(self, spec: ModelSpec, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 *, device: torch.device, dtype: torch.dtype) -> None:
        if num_gpu_blocks <= 0 or num_cpu_blocks < 0:
            raise ValueError(f"need num_gpu_blocks > 0 and num_cpu_blocks >= 0, got "
                             f"{num_gpu_blocks} and {num_cpu_blocks}")
        self.block_size = block_size
        self.dtype = dtype
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

    def _lists(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        g = [self.kv[l, i] for l in range(self.kv.shape[0]) for i in (0, 1)]
        c = [self.cpu_kv[l, i] for l in range(self.kv.shape[0]) for i in (0, 1)]
        return g, c

    def copy(self, pairs: list[tuple[int, int]]) -> None:
        """Copy-on-write: block dst = block src, all layers, one launch."""
        if pairs:
            copy_blocks(self.kv, pairs)

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """CPU -> GPU; the current stream waits for the copies (the step reads them)."""
        if pairs:
            self._need_pool()
            g, c = self._lists()
            swap_blocks(c, g, pairs).wait()

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """GPU -> CPU. The current stream waits for the gather, since this
        step may write into the freed GPU blocks; the CPU side is complete
        after ``finish_swaps``."""
        if pairs:
            self._need_pool()
            g, c = self._lists()
            handle = swap_blocks(g, c, pairs)
            handle.wait()
            self._pending.append(handle)

    def finish_swaps(self) -> None:
        """Block until swapped-out blocks are in the CPU pool (between steps)."""
        for h in self._pending:
            h.synchronize()
        self._pending = []

    def _need_pool(self) -> None:
        if self.cpu_kv is None:
            raise ValueError("the plan swaps blocks, but the executor has no CPU pool "
                             "(num_cpu_blocks = 0)")
