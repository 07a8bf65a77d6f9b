"""A synthetic decoder with a preset model's shapes, over the paged KV cache.

Random weights (seeded ``torch.Generator``), synthetic token ids: the point
is not the text but the *work* of a real step, done by the same kernels a
serving engine would use, on the block tables the simulator's allocator
produced. Per layer (``mode="model"``)::

    x ── RMSNorm ── QKV GEMM ── RoPE ── store_kv ── paged attention ── O GEMM ──(+x)
      ── RMSNorm ── MLP (SwiGLU: gate/up GEMM, SiLU*up, down GEMM) ──(+x)

then a final RMSNorm and the LM head on each sequence's last token (the
logits are computed, as a real step must, and thrown away). Decoding rows
go to ``paged_decode``, prefill rows (chunks, with or without a cached
prefix) to ``paged_prefill``; see ``gpu/batch.py`` for the row order.

``mode="attention"`` keeps only the KV-cache work: q/k/v come from a fixed
random table indexed by token id and layer (a gather, no GEMM), then
store_kv and paged attention. It isolates what the memory manager changes.

Weights are scaled by 1/sqrt(fan_in) so activations stay O(1) through any
number of layers, which keeps bf16 attention inputs well conditioned.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pagesim.gpu.batch import StepBatch
from pagesim.gpu.cache import PagedCache
from pagesim.gpu.kernels import paged_decode, paged_prefill, store_kv
from pagesim.sim.costmodel import ModelSpec

MODES = ("model", "attention")
ROPE_THETA = 10000.0
ATTN_TABLE_ROWS = 4096  # distinct q/k/v rows in attention mode


class SyntheticDecoder:
    def __init__(self, spec: ModelSpec, *, device: torch.device, dtype: torch.dtype,
                 mode: str = "model", seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.spec, self.device, self.dtype, self.mode = spec, torch.device(device), dtype, mode
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        h, H, Hkv, D = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.qkv_width = (H + 2 * Hkv) * D
        half = torch.arange(0, D, 2, dtype=torch.float32, device=self.device) / D
        self.inv_freq = ROPE_THETA ** -half
        if mode == "attention":
            self.table = self._rand(ATTN_TABLE_ROWS, self.qkv_width, scale=1.0)
            return
        inner = spec.intermediate_size
        self.embed = self._rand(spec.vocab_size, h, scale=1.0)
        self.layers = [self._layer(h, H * D, inner, spec.gated_mlp) for _ in range(spec.num_layers)]
        self.final_norm = torch.ones(h, dtype=dtype, device=self.device)
        self.lm_head = self._rand(h, spec.vocab_size)

    def _rand(self, rows: int, cols: int, scale: float | None = None) -> torch.Tensor:
        """[rows, cols] normal, times ``scale`` (default 1/sqrt(rows): a GEMM's fan-in)."""
        w = torch.randn(rows, cols, generator=self.gen, device=self.device, dtype=self.dtype)
        return w.mul_(scale if scale is not None else 1.0 / math.sqrt(rows))

    def _layer(self, h: int, qd: int, inner: int, gated: bool) -> dict:
        ones = torch.ones(h, dtype=self.dtype, device=self.device)
        return {
            "norm1": ones, "norm2": ones.clone(),
            "wqkv": self._rand(h, self.qkv_width), "wo": self._rand(qd, h),
            "wup": self._rand(h, (2 if gated else 1) * inner), "wdown": self._rand(inner, h),
        }

    # ------------------------------------------------------------ forward
    def forward(self, cache: PagedCache, batch: StepBatch, hook=None) -> torch.Tensor | None:
        """Run one step. ``hook(layer, q, k, v, attn_out)`` sees every layer's
        attention inputs (k, v exactly as stored) and output. Returns the
        logits of each sequence's last token (model mode) or None."""
        if batch.num_tokens == 0:
            return None
        d = batch.dev
        cos, sin = self._rope_tables(d["positions"])
        if self.mode == "attention":
            for layer in range(self.spec.num_layers):
                idx = (d["tokens"] + layer * 7919) % ATTN_TABLE_ROWS
                self._attention_block(layer, self.table[idx], cos, sin, cache, batch, hook)
            return None
        x = self.embed[d["tokens"]]
        for layer, w in enumerate(self.layers):
            qkv = F.rms_norm(x, (x.shape[-1],), w["norm1"]) @ w["wqkv"]
            attn = self._attention_block(layer, qkv, cos, sin, cache, batch, hook)
            x = x + self.reduce(attn.reshape(x.shape[0], -1) @ w["wo"])
            x = x + self.reduce(self._mlp(F.rms_norm(x, (x.shape[-1],), w["norm2"]), w))
        last = F.rms_norm(x[d["last_rows"]], (x.shape[-1],), self.final_norm)
        return last @ self.lm_head

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum of a row-parallel GEMM's partial outputs over the tensor-
        parallel group: nothing to do on one GPU (see ``gpu/tp.py``)."""
        return partial

    def _mlp(self, h: torch.Tensor, w: dict) -> torch.Tensor:
        up = h @ w["wup"]
        if self.spec.gated_mlp:
            gate, up = up.chunk(2, dim=-1)
            return (F.silu(gate) * up) @ w["wdown"]
        return F.relu(up) @ w["wdown"]

    def _rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ang = positions.float()[:, None] * self.inv_freq[None, :]
        return ang.cos().to(self.dtype)[:, None, :], ang.sin().to(self.dtype)[:, None, :]

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate-half RoPE on [tokens, heads, head_dim]."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _attention_block(self, layer, qkv, cos, sin, cache, batch, hook) -> torch.Tensor:
        spec = self.spec
        T, H, Hkv, D = qkv.shape[0], spec.num_heads, spec.num_kv_heads, spec.head_dim
        q = self._rope(qkv[:, :H * D].view(T, H, D), cos, sin)
        k = self._rope(qkv[:, H * D:(H + Hkv) * D].view(T, Hkv, D), cos, sin)
        v = qkv[:, (H + Hkv) * D:].view(T, Hkv, D)
        out = paged_attention(q, k, v, *cache.layer(layer), batch)
        if hook is not None:
            hook(layer, q, k, v, out)
        return out


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, batch: StepBatch) -> torch.Tensor:
    """store_kv for the step's new tokens, then decode rows through
    ``paged_decode`` and prefill rows through ``paged_prefill``."""
    d, nd = batch.dev, batch.num_decode
    store_kv(k, v, k_cache, v_cache, d["slots"])

    def decode(qd):
        return paged_decode(qd, k_cache, v_cache, d["dec_tables"], d["dec_ctx"],
                            max_context_len=batch.dec_max_ctx)

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
