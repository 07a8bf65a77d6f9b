"""copy_blocks: copy-on-write copies of (src, dst) block pairs, all layers, one launch.

``caches`` is either a list of same-shaped per-layer tensors (K and V of each
layer) or one stacked tensor whose last four axes are
[num_blocks, block_size, num_kv_heads, head_dim]. Every cache is addressed as
``base + offset[c]`` with ``offset[c]`` in elements from the first cache, so
one grid (pair, cache, chunk) covers them all::

    program (p, c, j): cache c, elements [j*CHUNK, (j+1)*CHUNK) of block
                       pairs[p].src  ->  same elements of block pairs[p].dst

A destination must not also be a source (checked when pairs is a list).

The same kernel moves blocks between two stacks of caches with one layout
(``move_blocks``), e.g. from the GPU cache into a pinned CPU pool: the GPU
reads and writes pinned host memory directly (zero-copy, over PCIe), so
scattered block ids cost no host-side gather or scatter.

Capturable in a CUDA graph: with ``pairs`` already a device tensor, a call
does no host-to-device copy (the cache offsets are uploaded once per
layout and kept).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import triton
import triton.language as tl

from pagesim.gpu.kernels._common import check_device, next_pow2


@triton.jit
def _copy_blocks_kernel(src_ptr, dst_ptr, src_off_ptr, dst_off_ptr, pairs_ptr, block_numel,
                        src_stride_block, dst_stride_block, n_caches, n_chunks, CHUNK: tl.constexpr,
                        VEC: tl.constexpr, BLOCK_MAJOR: tl.constexpr):
    if BLOCK_MAJOR:  # 1-D grid, chunks of one (pair, cache) block on consecutive programs
        pid = tl.program_id(0)
        j = pid % n_chunks
        c = (pid // n_chunks) % n_caches
        p = pid // (n_chunks * n_caches)
    else:
        p = tl.program_id(0)
        c = tl.program_id(1)
        j = tl.program_id(2)
    src = tl.load(pairs_ptr + 2 * p).to(tl.int64)
    dst = tl.load(pairs_ptr + 2 * p + 1).to(tl.int64)
    s_off = tl.multiple_of(tl.load(src_off_ptr + c), VEC)  # launcher checked: 16-byte aligned
    d_off = tl.multiple_of(tl.load(dst_off_ptr + c), VEC)
    i = j * CHUNK + tl.arange(0, CHUNK)
    mask = i < block_numel
    x = tl.load(src_ptr + s_off + src * src_stride_block + i, mask=mask)
    tl.store(dst_ptr + d_off + dst * dst_stride_block + i, x, mask=mask)


_OFFSETS: dict = {}  # (device, offsets) -> device tensor; a few layouts per process


def _offsets_on(device: torch.device, offsets: list[int]) -> torch.Tensor:
    key = (str(device), tuple(offsets))
    if key not in _OFFSETS:
        _OFFSETS[key] = torch.tensor(offsets, dtype=torch.int64).to(device)
    return _OFFSETS[key]


def _launch(src: torch.Tensor, src_offsets: list[int], dst: torch.Tensor, dst_offsets: list[int],
            pairs_t: torch.Tensor, device: torch.device, chunk: int | None, num_warps: int | None,
            block_major: bool = False) -> None:
    """One launch: block pairs[p].src of every source cache -> block pairs[p].dst of its destination."""
    block_numel = src[0].numel()
    assert dst[0].numel() == block_numel and src.dtype == dst.dtype, "source and destination blocks differ"
    assert src[0].is_contiguous() and dst[0].is_contiguous(), \
        "each block must be contiguous (block_size, kv_heads, head_dim)"
    if pairs_t.shape[0] == 0:
        return
    vec = max(1, 16 // src.element_size())
    aligned = (all(o % vec == 0 for o in src_offsets + dst_offsets) and src.stride(0) % vec == 0
               and dst.stride(0) % vec == 0 and src.data_ptr() % 16 == 0 and dst.data_ptr() % 16 == 0)
    chunk = chunk or min(next_pow2(block_numel), 4096)
    n_chunks = triton.cdiv(block_numel, chunk)
    grid = (pairs_t.shape[0], len(src_offsets), n_chunks)
    if block_major:
        grid = (grid[0] * grid[1] * grid[2],)
    _copy_blocks_kernel[grid](src, dst, _offsets_on(device, src_offsets), _offsets_on(device, dst_offsets),
                              pairs_t, block_numel, src.stride(0), dst.stride(0), len(src_offsets), n_chunks,
                              CHUNK=chunk, VEC=vec if aligned else 1, BLOCK_MAJOR=block_major,
                              num_warps=num_warps or (4 if device.type == "cuda" else 1))


def _as_caches(caches: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """(base tensor [num_blocks, ...], element offsets of every cache from it)."""
    if isinstance(caches, torch.Tensor):
        assert caches.dim() >= 4, "a stacked cache needs [..., num_blocks, block_size, kv_heads, head_dim]"
        lead = caches.shape[:-4]
        strides = caches.stride()[:-4]
        offsets = [sum(i * s for i, s in zip(idx, strides)) for idx in itertools.product(*map(range, lead))]
        return caches[(0,) * len(lead)], offsets
    caches = list(caches)
    assert caches, "caches is empty"
    base = caches[0]
    for t in caches:
        assert t.shape == base.shape and t.dtype == base.dtype and t.stride() == base.stride(), \
            "all caches in the list need one shape, dtype and strides"
        assert t.device == base.device, "all caches must be on one device"
    size = base.element_size()
    diffs = [t.data_ptr() - base.data_ptr() for t in caches]
    assert all(x % size == 0 for x in diffs), "cache addresses must be element-aligned"
    return base, [x // size for x in diffs]


def _pairs_tensor(pairs, num_blocks: int, device: torch.device) -> torch.Tensor:
    """[n, 2] int64 on ``device``; a Python list is validated on the host first."""
    if isinstance(pairs, torch.Tensor):
        assert pairs.dim() == 2 and pairs.shape[1] == 2, "pairs tensor must be [n, 2] (src, dst)"
        return pairs.to(device=device, dtype=torch.int64).contiguous()
    pairs = [(int(s), int(d)) for s, d in pairs]
    srcs, dsts = {s for s, _ in pairs}, [d for _, d in pairs]
    assert len(set(dsts)) == len(dsts), "a destination block appears twice"
    assert not srcs & set(dsts), "a destination block is also a source"
    assert all(0 <= x < num_blocks for x in srcs | set(dsts)), f"block ids must lie in [0, {num_blocks})"
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).to(device)


def copy_blocks(caches: torch.Tensor | Sequence[torch.Tensor], pairs, *, chunk: int | None = None,
                num_warps: int | None = None, block_major: bool = False) -> None:
    """In place: for every cache, block[dst] = block[src] for each (src, dst).

    Graph-capturable when ``pairs`` is a device tensor (module docstring).
    ``chunk`` elements per program; ``block_major`` launches the chunks of
    one block on consecutive programs (a 1-D grid) instead of one chunk of
    every pair.
    """
    base, offsets = _as_caches(caches)
    device = check_device(base)
    pairs_t = _pairs_tensor(pairs, base.shape[0], device)
    _launch(base, offsets, base, offsets, pairs_t, device, chunk, num_warps, block_major)


def move_blocks(src: torch.Tensor, dst: torch.Tensor, pairs, *, chunk: int | None = None,
                num_warps: int | None = None) -> None:
    """dst[..., d, :] = src[..., s, :] for each (s, d), all leading caches, one launch.

    ``src`` and ``dst`` are stacks [..., num_blocks, block_size, heads, dim]
    with the same leading shape (their block counts may differ). One of them
    may be a *pinned* CPU tensor while the other is on the GPU: the kernel
    then reads or writes host memory directly. Ordered on the current stream.
    """
    assert src.shape[:-4] == dst.shape[:-4] and src.shape[-3:] == dst.shape[-3:], \
        f"stacks differ: {tuple(src.shape)} vs {tuple(dst.shape)}"
    gpu = [t.device for t in (src, dst) if t.device.type == "cuda"]
    device = gpu[0] if gpu else check_device(src, dst)
    for t in (src, dst):
        assert t.device == device or t.is_pinned(), "a CPU side of a GPU transfer must be pinned"
    s_base, s_off = _as_caches(src)
    d_base, d_off = _as_caches(dst)
    pairs = [(int(a), int(b)) for a, b in pairs] if not isinstance(pairs, torch.Tensor) else pairs
    if not isinstance(pairs, torch.Tensor):
        assert all(0 <= a < src.shape[-4] and 0 <= b < dst.shape[-4] for a, b in pairs), "block id out of range"
        assert len({b for _, b in pairs}) == len(pairs), "a destination block appears twice"
        pairs = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    pairs_t = pairs.to(device=device, dtype=torch.int64).contiguous()
    _launch(s_base, s_off, d_base, d_off, pairs_t, device, chunk, num_warps)


def copy_blocks_ref(caches: torch.Tensor | Sequence[torch.Tensor], pairs) -> list[torch.Tensor]:
    """Copies of the caches (a list, stacked input flattened to [n, num_blocks, ...]) after the copies."""
    if isinstance(caches, torch.Tensor):
        caches = list(caches.reshape(-1, *caches.shape[-4:]))
    out = [t.clone() for t in caches]
    for s, d in (pairs.tolist() if isinstance(pairs, torch.Tensor) else pairs):
        for t in out:
            t[d] = t[s]
    return out
