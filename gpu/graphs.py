"""Decode steps as CUDA graphs, one per batch-size bucket.

A decode step launches ~9 kernels per layer; eagerly that is host-bound
(the issue measured 31-34 ms per llama-3-8b step on an H200 whose weight
floor is 3.8 ms). As serving engines do, a decode-only step is padded to
the next bucket (1, 2, 4, 8, then multiples of 8 up to ``max_batch``) and
replayed from a graph captured for that bucket::

    host (pinned)   tokens | positions | slots | ctx     tables [Bmax, W]
                       │ two async copies, sized by the bucket
    device (static) tokens | positions | slots | ctx     tables [Bmax, W]
                       └── views [:B] ── graph of bucket B (all layers)

Padding rows have slot -1 (store skips them) and context 0 (attention
returns 0). The decode grid is sized by the table width W blocks and every
sequence splits its own context (``paged_decode(split_by_context=True)``),
so one graph fits every step of its bucket. W grows by doubling when a step
needs wider tables; the graphs are then captured again.

A bucket is captured after the first step that needs it, which runs
eagerly on the same static views (compiling any kernel variant and
warming cuBLAS); capture records work without running it. With ``taps``
the graph also copies each layer's q, k, v and attention output into
static buffers, so the shadow checks see them after the replay.
"""
from __future__ import annotations

import numpy as np
import torch

from pagesim.gpu.batch import ALIGN, StepBatch

SPIN_HZ = 2e9  # nominal SM clock for converting spin seconds to cycles
SPIN_CYCLES = 200_000  # ~0.1 ms at 2 GHz: the GPU waits while the host enqueues the replay


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to and including ``max_batch``."""
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch + 1, 8))
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class DecodeGraphs:
    def __init__(self, model, cache, block_size: int, max_batch: int, *, taps: bool,
                 width: int = 64) -> None:
        self.model, self.cache, self.block_size = model, cache, block_size
        self.buckets = bucket_sizes(max_batch)
        self.max_batch = self.buckets[-1]
        self.taps = taps
        self.device = cache.kv.device
        self.width = 0
        self._alloc(width)

    # ------------------------------------------------------------ buffers
    def _alloc(self, width: int) -> None:
        """Static buffers for tables ``width`` blocks wide; drops every graph."""
        B = self.max_batch
        self.width, self.graphs, self.pool = width, {}, None
        self.head = 4 * _aligned(B)  # tokens, positions, slots, ctx
        self.host = torch.zeros(self.head + B * width, dtype=torch.int32)
        if self.device.type == "cuda":
            self.host = self.host.pin_memory()
        self.buf = torch.zeros_like(self.host, device=self.device)
        self.rows = torch.arange(B, device=self.device, dtype=torch.int32)
        spec = self.model.spec
        if self.taps:
            L, H, Hkv, D = spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim
            dt = self.cache.dtype
            self.tq = torch.empty(L, B, H, D, device=self.device, dtype=dt)
            self.to = torch.empty_like(self.tq)
            self.tk = torch.empty(L, B, Hkv, D, device=self.device, dtype=dt)
            self.tv = torch.empty_like(self.tk)

    def fits(self, batch: StepBatch) -> bool:
        n = len(batch.seq_ids)
        return 0 < n <= self.max_batch and batch.num_decode == n

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def static_batch(self, b: int, step: int) -> StepBatch:
        """A StepBatch of ``b`` rows whose device views are the static buffers."""
        a, buf = _aligned(self.max_batch), self.buf
        zero = np.zeros(b, dtype=np.int64)
        sb = StepBatch(step, [], zero, zero + 1, zero, [], zero, b, zero, zero, graph=True)
        sb.dev = {"tokens": buf[:b], "positions": buf[a:a + b], "slots": buf[2 * a:2 * a + b],
                  "dec_ctx": buf[3 * a:3 * a + b],
                  "dec_tables": buf[self.head:self.head + b * self.width].view(b, self.width),
                  "last_rows": self.rows[:b]}
        sb.dec_max_ctx = self.width * self.block_size
        return sb

    def fill(self, batch: StepBatch) -> int:
        """Write ``batch`` into the pinned host buffers, padded to its bucket
        (host work only); returns the bucket. Widens the tables if needed."""
        n = len(batch.seq_ids)
        need = max(len(t) for t in batch.tables)
        if need > self.width:
            w = self.width
            while w < need:
                w *= 2
            self._alloc(w)
        b, a = self.bucket(n), _aligned(self.max_batch)
        h = self.host.numpy()
        for i, col in enumerate((batch.tokens, batch.context_lens - 1, batch.slots, batch.context_lens)):
            h[i * a:i * a + n] = col
            h[i * a + n:i * a + b] = -1 if i == 2 else 0
        tables = h[self.head:self.head + b * self.width].reshape(b, self.width)
        tables[:] = 0
        for i, t in enumerate(batch.tables):
            tables[i, :len(t)] = t
        return b

    def upload(self, b: int) -> None:
        """Host buffers -> static device buffers (what bucket ``b`` reads)."""
        self.buf[:self.head].copy_(self.host[:self.head], non_blocking=True)
        end = self.head + b * self.width
        self.buf[self.head:end].copy_(self.host[self.head:end], non_blocking=True)

    # ------------------------------------------------------------- graphs
    def captured(self, b: int) -> bool:
        return b in self.graphs

    def eager(self, b: int, step: int, hook) -> None:
        """The step on the static views, without a graph (the capture step)."""
        self.upload(b)
        self.model.forward(self.cache, self.static_batch(b, step), hook)

    def capture(self, b: int) -> None:
        """Record bucket ``b``'s graph (nothing runs). Graphs share one memory pool:
        they replay one at a time on one stream, and keep no output. On the CPU
        (tests) nothing is recorded and a replay runs the static views eagerly."""
        sb = self.static_batch(b, -1)
        hook = self._tap if self.taps else None
        if self.device.type != "cuda":
            self.graphs[b] = None
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.model.forward(self.cache, sb, hook)
        self.pool = graph.pool()
        self.graphs[b] = graph

    def replay(self, b: int) -> None:
        if self.graphs[b] is None:
            self.eager(b, -1, self._tap if self.taps else None)
            return
        self.upload(b)
        self.graphs[b].replay()

    def _tap(self, layer, q, k, v, out) -> None:
        n = q.shape[0]
        self.tq[layer, :n].copy_(q)
        self.tk[layer, :n].copy_(k)
        self.tv[layer, :n].copy_(v)
        self.to[layer, :n].copy_(out)

    def replay_taps(self, n: int, hook) -> None:
        """Hand the tapped tensors of the last replay (its first ``n`` rows) to ``hook``."""
        for layer in range(self.tq.shape[0]):
            hook(layer, self.tq[layer, :n], self.tk[layer, :n], self.tv[layer, :n], self.to[layer, :n])
