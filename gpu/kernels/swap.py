"""swap_blocks: move KV blocks between the GPU cache and a pinned CPU pool.

Swap preemption copies a preempted sequence's blocks out (GPU -> CPU) and
later back in (CPU -> GPU). The copies run on a side CUDA stream so that the
next step's kernels can overlap them; ``swap_blocks`` returns a
``SwapHandle`` to wait on before the moved blocks are read (swap-in) or the
source blocks are reused (swap-out)::

    main stream  ──■ step k ■──────────────■ wait(h) ■ step k+1 reads blocks ■──
    side stream      └─ wait main ─ memcpy runs ─ record h ┘

Pairs are sorted and runs of consecutive (src, dst) ids are merged, so one
copy moves each run: with an empty pool the destination ids are often
consecutive. Without CUDA (or CPU to CPU) the copies are synchronous and the
handle is already complete. Not Triton: copies between memories are the DMA
engines' job.
"""
from __future__ import annotations

from typing import Sequence

import torch


class SwapHandle:
    """Completion of one ``swap_blocks`` call."""

    __slots__ = ("event", "device", "tensors")

    def __init__(self, event: torch.cuda.Event | None = None, device: torch.device | None = None,
                 tensors: tuple = ()) -> None:
        self.event = event
        self.device = device
        self.tensors = tensors  # kept alive until the copies are done

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self, stream: torch.cuda.Stream | None = None) -> None:
        """Order ``stream`` (default: the current one) after the copies; host does not block."""
        if self.event is not None:
            (stream or torch.cuda.current_stream(self.device)).wait_event(self.event)

    def synchronize(self) -> None:
        """Block the host until the copies are done."""
        if self.event is not None:
            self.event.synchronize()
        self.tensors = ()


def block_runs(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Sorted (src, dst) pairs merged into (src_start, dst_start, length) runs."""
    runs: list[list[int]] = []
    for s, d in sorted((int(s), int(d)) for s, d in pairs):
        if runs and s == runs[-1][0] + runs[-1][2] and d == runs[-1][1] + runs[-1][2]:
            runs[-1][2] += 1
        else:
            runs.append([s, d, 1])
    return [tuple(r) for r in runs]


def _as_list(caches: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [caches] if isinstance(caches, torch.Tensor) else list(caches)


def swap_blocks(src_cache: torch.Tensor | Sequence[torch.Tensor], dst_cache: torch.Tensor | Sequence[torch.Tensor],
                pairs: Sequence[tuple[int, int]], *, stream: torch.cuda.Stream | None = None) -> SwapHandle:
    """Copy block ``src`` of each source cache to block ``dst`` of the matching destination.

    Caches are tensors [num_blocks, ...] (or lists of them, one per layer and
    K/V), one side on the GPU and the other on the CPU (pinned, or the copies
    are not asynchronous), or both on one device. ``stream``: the side stream
    (default: a new one per call).
    """
    srcs, dsts = _as_list(src_cache), _as_list(dst_cache)
    assert len(srcs) == len(dsts), f"{len(srcs)} source caches but {len(dsts)} destination caches"
    for s, d in zip(srcs, dsts):
        assert s.shape[1:] == d.shape[1:] and s.dtype == d.dtype, \
            f"block shape/dtype differ: {tuple(s.shape[1:])} {s.dtype} vs {tuple(d.shape[1:])} {d.dtype}"
        assert s[0].is_contiguous() and d[0].is_contiguous(), "each block must be contiguous"
    runs = block_runs(pairs)
    for s0, d0, n in runs:
        assert 0 <= s0 and s0 + n <= srcs[0].shape[0], f"source blocks {s0}..{s0 + n - 1} out of range"
        assert 0 <= d0 and d0 + n <= dsts[0].shape[0], f"destination blocks {d0}..{d0 + n - 1} out of range"
    gpu = next((t.device for t in (srcs[0], dsts[0]) if t.device.type == "cuda"), None)
    if gpu is None:
        for s, d in zip(srcs, dsts):
            for s0, d0, n in runs:
                d[d0:d0 + n].copy_(s[s0:s0 + n])
        return SwapHandle()

    main = torch.cuda.current_stream(gpu)
    side = stream or torch.cuda.Stream(gpu)
    side.wait_stream(main)  # the cache writes before this call must land first
    with torch.cuda.stream(side):
        for s, d in zip(srcs, dsts):
            for s0, d0, n in runs:
                d[d0:d0 + n].copy_(s[s0:s0 + n], non_blocking=True)
        event = torch.cuda.Event()
        event.record(side)
    return SwapHandle(event, gpu, (srcs, dsts, side))


def pinned_pool_like(cache: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """CPU pool of ``num_blocks`` blocks shaped like ``cache``; pinned when CUDA exists."""
    return torch.empty((num_blocks, *cache.shape[1:]), dtype=cache.dtype, device="cpu",
                       pin_memory=torch.cuda.is_available())


def swap_blocks_ref(src_cache: torch.Tensor | Sequence[torch.Tensor], dst_cache: torch.Tensor | Sequence[torch.Tensor],
                    pairs: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Copies of the destination caches after the moves (inputs untouched)."""
    out = [d.clone() for d in _as_list(dst_cache)]
    for s, d in zip(_as_list(src_cache), out):
        for s0, d0 in pairs:
            d[d0] = s[s0].to(d.device)
    return out
