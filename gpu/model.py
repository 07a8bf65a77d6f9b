"""A synthetic decoder with a preset model's shapes, over the paged KV cache.

Random weights (seeded ``torch.Generator``), synthetic token ids: the point
is not the text but the *work* of a real step, done by the same kernels a
serving engine would use, on the block tables the simulator's allocator
produced. Per layer (``mode="model"``)::

    x ── RMSNorm ── QKV GEMM ── RoPE + store_kv ── paged attention ── O GEMM ──(+x)
      ── RMSNorm ── MLP (SwiGLU: gate/up GEMM, SiLU*up, down GEMM) ──(+x)

then a final RMSNorm and the LM head on each sequence's last token (the
logits are computed, as a real step must, and thrown away). Each residual
add is fused with the RMSNorm after it, RoPE with store_kv, SiLU with the
product (``gpu/kernels/fused.py``): nine launches per layer at decode; with
``fuse_decode`` a decode-only step does RoPE + store_kv inside the attention
launch (``gpu/kernels/rope_decode.py``): eight. Decoding rows
go to ``paged_decode``, prefill rows (chunks, with or without a cached
prefix) to ``paged_prefill``; see ``gpu/batch.py`` for the row order.

``mode="attention"`` keeps only the KV-cache work: q/k/v come from a fixed
random table indexed by token id and layer (no GEMM), then RoPE + store_kv
and paged attention (with ``fuse_decode``, at decode-only steps the gather,
RoPE, store and attention are one launch, plus the split merge). It isolates
what the memory manager changes.

Weights are scaled by 1/sqrt(fan_in) so activations stay O(1) through any
number of layers, which keeps bf16 attention inputs well conditioned.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pagesim.gpu.batch import StepBatch
from pagesim.gpu.cache import PagedCache
from pagesim.gpu.kernels import add_rmsnorm, paged_decode, paged_prefill, rope_decode, rope_store, silu_mul
from pagesim.sim.costmodel import ModelSpec

MODES = ("model", "attention")
#: weight storage: "out_in" [out, in] as nn.Linear (x @ W.T, the layout cuBLAS's skinny GEMMs
#: are tuned for), "in_out" [in, out] (x @ W); the same random matrices either way
LAYOUTS = ("out_in", "in_out")
ROPE_THETA = 10000.0
ATTN_TABLE_ROWS = 4096  # distinct q/k/v rows in attention mode


class SyntheticDecoder:
    def __init__(self, spec: ModelSpec, *, device: torch.device, dtype: torch.dtype,
                 mode: str = "model", seed: int = 0, layout: str = "out_in", fuse_decode: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.spec, self.device, self.dtype, self.mode = spec, torch.device(device), dtype, mode
        self.layout = layout
        # decode-only steps through rope_decode; off by default until timed on a GPU (KERNEL_NOTES run 8)
        self.fuse_decode = fuse_decode
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        h, H, Hkv, D = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.qkv_width = (H + 2 * Hkv) * D
        if mode == "attention":
            self.table = self._rand(ATTN_TABLE_ROWS, self.qkv_width, scale=1.0)
            self._layer_offsets = torch.arange(spec.num_layers, device=self.device, dtype=torch.int32) * 7919
            return
        inner = spec.intermediate_size
        self.embed = self._rand(spec.vocab_size, h, scale=1.0)
        self.layers = [self._layer(h, H * D, inner, spec.gated_mlp) for _ in range(spec.num_layers)]
        self.final_norm = torch.ones(h, dtype=dtype, device=self.device)
        self.lm_head = self._stored(self._rand(h, spec.vocab_size))

    def _rand(self, rows: int, cols: int, scale: float | None = None) -> torch.Tensor:
        """[rows, cols] normal, times ``scale`` (default 1/sqrt(rows): a GEMM's fan-in)."""
        w = torch.randn(rows, cols, generator=self.gen, device=self.device, dtype=self.dtype)
        return w.mul_(scale if scale is not None else 1.0 / math.sqrt(rows))

    def _stored(self, w: torch.Tensor) -> torch.Tensor:
        """[in, out] as drawn -> the storage layout."""
        return w.t().contiguous() if self.layout == "out_in" else w

    def mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x @ (the [in, out] matrix w stores)."""
        return F.linear(x, w) if self.layout == "out_in" else x @ w

    def _layer(self, h: int, qd: int, inner: int, gated: bool) -> dict:
        ones = torch.ones(h, dtype=self.dtype, device=self.device)
        return {
            "norm1": ones, "norm2": ones.clone(),
            "wqkv": self._stored(self._rand(h, self.qkv_width)), "wo": self._stored(self._rand(qd, h)),
            "wup": self._stored(self._rand(h, (2 if gated else 1) * inner)),
            "wdown": self._stored(self._rand(inner, h)),
        }

    # ------------------------------------------------------------ forward
    def forward(self, cache: PagedCache, batch: StepBatch, hook=None) -> torch.Tensor | None:
        """Run one step. ``hook(layer, q, k, v, attn_out)`` sees every layer's
        attention inputs (k, v exactly as stored) and output. Returns the
        logits of each sequence's last token (model mode) or None.

        Only device work that depends on the batch's device views and its
        static sizes: with views into static buffers the whole call can be
        captured in a CUDA graph (``gpu/graphs.py``)."""
        if batch.num_tokens == 0:
            return None
        d = batch.dev
        if self.mode == "attention":  # table rows of every layer at once: 3 launches a step, not a layer
            rows = (d["tokens"][None, :] + self._layer_offsets[:, None]) % ATTN_TABLE_ROWS
            for layer in range(self.spec.num_layers):
                self._attention(layer, self.table, cache, batch, hook, rows[layer])
            return None
        x = self.embed[d["tokens"]]
        h = add_rmsnorm(x, None, self.layers[0]["norm1"])
        for layer, w in enumerate(self.layers):
            attn = self._attention(layer, self.mm(h, w["wqkv"]), cache, batch, hook)
            h = add_rmsnorm(x, self.reduce(self.mm(attn.reshape(x.shape[0], -1), w["wo"])), w["norm2"])  # x += attention
            nxt = self.layers[layer + 1]["norm1"] if layer + 1 < len(self.layers) else self.final_norm
            h = add_rmsnorm(x, self.reduce(self._mlp(h, w)), nxt)                                 # x += MLP
        return self.mm(h[d["last_rows"]], self.lm_head)

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum of a row-parallel GEMM's partial outputs over the tensor-
        parallel group: nothing to do on one GPU (see ``gpu/tp.py``)."""
        return partial

    def _mlp(self, h: torch.Tensor, w: dict) -> torch.Tensor:
        up = self.mm(h, w["wup"])
        if self.spec.gated_mlp:
            return self.mm(silu_mul(up), w["wdown"])
        return self.mm(F.relu(up), w["wdown"])

    def _attention(self, layer, qkv, cache, batch, hook, rows=None) -> torch.Tensor:
        """RoPE, store_kv and paged attention of the step's qkv rows (with ``rows``:
        rows ``qkv[rows]`` of a table). With ``fuse_decode`` a decode-only step
        does all three in one launch (``rope_decode``; the gather too); otherwise
        RoPE and store_kv are one launch (q and k rotated in place in the rows),
        attention another."""
        spec = self.spec
        H, Hkv, D = spec.num_heads, spec.num_kv_heads, spec.head_dim
        k_cache, v_cache = cache.layer(layer)
        d = batch.dev
        if self.fuse_decode and batch.num_decode == batch.num_tokens:
            out, q, k = rope_decode(qkv, d["positions"], d["slots"], k_cache, v_cache, d["dec_tables"], d["dec_ctx"],
                                    H, rows=rows, theta=ROPE_THETA, max_context_len=batch.dec_max_ctx,
                                    split_by_context=batch.graph)
            if hook is not None:
                src = qkv[rows] if rows is not None else qkv
                hook(layer, q, k, src[:, (H + Hkv) * D:].view(-1, Hkv, D), out)
            return out
        if rows is not None:
            qkv = qkv[rows]
        T = qkv.shape[0]
        rope_store(qkv, d["positions"], d["slots"], k_cache, v_cache, H, ROPE_THETA)
        q = qkv[:, :H * D].view(T, H, D)
        out = paged_attention(q, k_cache, v_cache, batch)
        if hook is not None:
            hook(layer, q, qkv[:, H * D:(H + Hkv) * D].view(T, Hkv, D), qkv[:, (H + Hkv) * D:].view(T, Hkv, D), out)
        return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    batch: StepBatch) -> torch.Tensor:
    """Decode rows through ``paged_decode``, prefill rows through
    ``paged_prefill`` (the step's K/V are already stored). A batch marked
    ``graph`` sizes the decode grid by its table width and lets each
    sequence split its own context (one grid for every step of a bucket)."""
    d, nd = batch.dev, batch.num_decode

    def decode(qd):
        return paged_decode(qd, k_cache, v_cache, d["dec_tables"], d["dec_ctx"],
                            max_context_len=batch.dec_max_ctx, split_by_context=batch.graph)

    def prefill(qp):
        return paged_prefill(qp, k_cache, v_cache, d["pre_tables"], d["pre_cu"], d["pre_ctx"],
                             max_seqlen_q=batch.pre_max_q)

    if nd == q.shape[0]:
        return decode(q)
    if nd == 0:
        return prefill(q)
    out = torch.empty_like(q)
    out[:nd] = decode(q[:nd])
    out[nd:] = prefill(q[nd:])
    return out
