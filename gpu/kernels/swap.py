"""swap_blocks: move KV blocks between the GPU cache and a pinned CPU pool.

Swap preemption copies a preempted sequence's blocks out (GPU -> CPU) and
later back in (CPU -> GPU). Per cache (one per layer and K/V) the blocks are
gathered into one contiguous staging tensor, moved in ONE copy over PCIe,
and scattered at the destination: a few large copies instead of one small
copy per block (Python issues those at ~10 us each; 16k of them for 256
blocks x 64 caches ran at 2-3 GB/s on an H100). The GPU side runs on a side
CUDA stream so the next step's kernels overlap it::

    main stream  ──■ step k ■───────────────────────■ wait(h) ■ step k+1 ■──
    side stream      └ wait main ─ gather ─ PCIe ─ scatter ─ record h ┘

    GPU -> CPU   index_select on GPU -> pinned staging (async); the scatter
                 into the pool is host work, done by ``handle.synchronize()``
                 (skipped when the destination ids are one consecutive run of
                 a pinned pool: the copy lands in place)
    CPU -> GPU   index_select on the host into pinned staging, then async
                 copy and index_copy_ on the side stream
    same device  index_select / index_copy_ (synchronous on the CPU)

Not Triton: copies between memories are the DMA engines' job.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


class SwapHandle:
    """Completion of one ``swap_blocks`` call.

    ``wait()`` orders a stream after the device-side work (the source GPU
    blocks may be reused, the destination GPU blocks read). ``synchronize()``
    blocks the host and finishes host-side work: a swap-out's CPU blocks are
    valid only after it.
    """

    __slots__ = ("event", "device", "finish", "tensors")

    def __init__(self, event: torch.cuda.Event | None = None, device: torch.device | None = None,
                 finish: Callable[[], None] | None = None, tensors: tuple = ()) -> None:
        self.event = event
        self.device = device
        self.finish = finish
        self.tensors = tensors  # staging buffers kept alive until the copies are done

    def done(self) -> bool:
        return self.finish is None and (self.event is None or self.event.query())

    def wait(self, stream: torch.cuda.Stream | None = None) -> None:
        """Order ``stream`` (default: the current one) after the copies; the host does not block."""
        if self.event is not None:
            (stream or torch.cuda.current_stream(self.device)).wait_event(self.event)

    def synchronize(self) -> None:
        """Block the host until the copies are done, then finish any host-side scatter."""
        if self.event is not None:
            self.event.synchronize()
        if self.finish is not None:
            self.finish()
            self.finish = None
        self.tensors = ()


def _as_list(caches: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [caches] if isinstance(caches, torch.Tensor) else list(caches)


def _run_start(ids: list[int]) -> int | None:
    """First id when ``ids`` is one ascending consecutive run, else None."""
    return ids[0] if ids == list(range(ids[0], ids[0] + len(ids))) else None


def swap_blocks(src_cache: torch.Tensor | Sequence[torch.Tensor], dst_cache: torch.Tensor | Sequence[torch.Tensor],
                pairs: Sequence[tuple[int, int]], *, stream: torch.cuda.Stream | None = None) -> SwapHandle:
    """Copy block ``src`` of each source cache to block ``dst`` of the matching destination.

    Caches are tensors [num_blocks, ...] (or lists of them, one per layer and
    K/V), one side on the GPU and the other on the CPU (pinned, or copies
    are not asynchronous), or both on one device. ``stream``: the side
    stream (default: a new one per call).
    """
    srcs, dsts = _as_list(src_cache), _as_list(dst_cache)
    pairs = [(int(s), int(d)) for s, d in pairs]
    _check_swap(srcs, dsts, pairs)
    if not pairs:
        return SwapHandle()
    src_ids, dst_ids = [s for s, _ in pairs], [d for _, d in pairs]
    src_idx, dst_idx = torch.tensor(src_ids), torch.tensor(dst_ids)
    src_dev, dst_dev = srcs[0].device, dsts[0].device
    if src_dev == dst_dev and src_dev.type == "cpu":
        for s, d in zip(srcs, dsts):
            d.index_copy_(0, dst_idx, s.index_select(0, src_idx))
        return SwapHandle()

    gpu = src_dev if src_dev.type == "cuda" else dst_dev
    side = stream or torch.cuda.Stream(gpu)
    side.wait_stream(torch.cuda.current_stream(gpu))  # cache writes issued before this call land first
    keep, pending = [], []
    with torch.cuda.stream(side):
        if src_dev.type == "cuda" and dst_dev.type == "cuda":
            si, di = src_idx.to(src_dev), dst_idx.to(dst_dev)
            for s, d in zip(srcs, dsts):
                d.index_copy_(0, di, s.index_select(0, si).to(dst_dev))
        elif src_dev.type == "cuda":
            _swap_out(srcs, dsts, src_idx, dst_ids, gpu, keep, pending)
        else:
            _swap_in(srcs, dsts, src_idx, src_ids, dst_idx, gpu, keep)
        event = torch.cuda.Event()
        event.record(side)

    def finish() -> None:
        for d, host in pending:
            d.index_copy_(0, dst_idx, host)

    return SwapHandle(event, gpu, finish if pending else None, (keep, srcs, dsts, side))


def _check_swap(srcs: list[torch.Tensor], dsts: list[torch.Tensor], pairs: list[tuple[int, int]]) -> None:
    """Matching caches, ids inside both pools, no destination written twice."""
    assert len(srcs) == len(dsts), f"{len(srcs)} source caches but {len(dsts)} destination caches"
    for s, d in zip(srcs, dsts):
        assert s.shape[1:] == d.shape[1:] and s.dtype == d.dtype, \
            f"block shape/dtype differ: {tuple(s.shape[1:])} {s.dtype} vs {tuple(d.shape[1:])} {d.dtype}"
    if not pairs:
        return
    src_ids, dst_ids = [s for s, _ in pairs], [d for _, d in pairs]
    assert 0 <= min(src_ids) and max(src_ids) < srcs[0].shape[0], f"source ids outside [0, {srcs[0].shape[0]})"
    assert 0 <= min(dst_ids) and max(dst_ids) < dsts[0].shape[0], f"destination ids outside [0, {dsts[0].shape[0]})"
    assert len(set(dst_ids)) == len(dst_ids), "a destination block appears twice"


def _swap_out(srcs, dsts, src_idx, dst_ids, gpu, keep, pending) -> None:
    """GPU -> CPU on the current (side) stream: gather the blocks on the
    device, then one transfer per cache, straight into the pinned pool when
    the destination ids are one run, else into pinned staging that
    ``finish`` scatters once the copy is done."""
    si, d0 = src_idx.pin_memory().to(gpu, non_blocking=True), _run_start(dst_ids)
    for s, d in zip(srcs, dsts):
        staged = s.index_select(0, si)
        if d0 is not None and d.is_pinned():
            d[d0:d0 + len(dst_ids)].copy_(staged, non_blocking=True)
        else:
            host = torch.empty(staged.shape, dtype=staged.dtype, pin_memory=True)
            host.copy_(staged, non_blocking=True)
            pending.append((d, host))
        keep.append(staged)


def _swap_in(srcs, dsts, src_idx, src_ids, dst_idx, gpu, keep) -> None:
    """CPU -> GPU on the current (side) stream: one transfer per cache from
    the pinned pool (a run of ids) or from pinned staging gathered on the
    host, scattered on the device."""
    di, s0 = dst_idx.pin_memory().to(gpu, non_blocking=True), _run_start(src_ids)
    for s, d in zip(srcs, dsts):
        if s0 is not None and s.is_pinned():
            host = s[s0:s0 + len(src_ids)]
        else:
            host = torch.empty((len(src_ids), *s.shape[1:]), dtype=s.dtype, pin_memory=True)
            torch.index_select(s, 0, src_idx, out=host)
        d.index_copy_(0, di, host.to(gpu, non_blocking=True))
        keep.append(host)


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
