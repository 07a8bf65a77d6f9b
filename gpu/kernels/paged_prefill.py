"""Paged prefill attention: new query tokens over a cached prefix plus themselves.

Sequence b adds q_len = cu_seqlens_q[b+1] - cu_seqlens_q[b] tokens on top of
prefix = context_lens[b] - q_len cached ones; the K/V of all context_lens[b]
tokens are already in the paged cache (store_kv ran first). New token i sits
at position prefix + i and sees keys 0 .. prefix + i (causal)::

    keys   0 ........... prefix ............ ctx
           [ cached prefix ][ new tokens' K/V ]
    query i                 |-- i --|  sees keys [0, prefix + i]

Prefix caching (prefix from a shared block) and chunked prefill (prefix from
earlier chunks) are both this case. Program (m, b, h) takes BLOCK_M query
rows of one head; keys before the tile's first row need no causal mask, so
the loop over keys is split into an unmasked part and a masked diagonal part.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagesim.gpu.kernels._common import ATTN_TYPES, check_cache, check_device, dot_precision, gather_kv, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q, k_ptr, v_ptr, bt_row, head_off, n0, d, dmask, pos, ctx, m_i, l_i, acc, qk_scale,
                 stride_kb, stride_ks, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr):
    """One online-softmax step over keys [n0, n0 + BLOCK_N)."""
    tok = n0 + tl.arange(0, BLOCK_N)
    if CAUSAL:
        tmask = tok < ctx
        blk = tl.load(bt_row + tok // BLOCK_SIZE, mask=tmask, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_row + tok // BLOCK_SIZE).to(tl.int64)
    row = blk * stride_kb + (tok % BLOCK_SIZE) * stride_ks + head_off
    if CAUSAL:
        kv_mask = tmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
    else:
        k = tl.load(k_ptr + row[:, None] + d[None, :], mask=dmask[None, :], other=0.0)
        v = tl.load(v_ptr + row[:, None] + d[None, :], mask=dmask[None, :], other=0.0)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if CAUSAL:
        qk = tl.where((tok[None, :] <= pos[:, None]) & tmask[None, :], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_new, l_i, acc


@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, cu_ptr, ctx_ptr, out_ptr,
    qk_scale,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_btb, stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr, HEAVY_FIRST: tl.constexpr,
):
    if HEAVY_FIRST:  # grid (heads, batch, m tiles), last query tiles (the most keys) launched first
        h = tl.program_id(0)
        b = tl.program_id(1)
        mt = tl.num_programs(2) - 1 - tl.program_id(2)
    else:
        mt = tl.program_id(0)
        b = tl.program_id(1)
        h = tl.program_id(2)
    q_start = tl.load(cu_ptr + b)
    q_len = tl.load(cu_ptr + b + 1) - q_start
    if mt * BLOCK_M >= q_len:
        return
    ctx = tl.load(ctx_ptr + b)
    prefix = ctx - q_len
    r = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    rmask = r < q_len
    dmask = d < HEAD_DIM
    tok_q = (q_start + r).to(tl.int64)
    q = tl.load(q_ptr + tok_q[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)
    pos = prefix + r  # absolute position of each query row

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_btb
    head_off = (h // GROUP).to(tl.int64) * stride_kh
    first_row = prefix + mt * BLOCK_M
    full_hi = first_row // BLOCK_N * BLOCK_N  # keys below: visible to every row, all < ctx
    for n0 in range(0, full_hi, BLOCK_N):
        m_i, l_i, acc = _attend_tile(q, k_ptr, v_ptr, bt_row, head_off, n0, d, dmask, pos, ctx, m_i, l_i, acc,
                                     qk_scale, stride_kb, stride_ks, BLOCK_SIZE, BLOCK_N, False, DOT_PREC)
    diag_hi = tl.minimum(ctx, first_row + BLOCK_M)
    for n0 in range(full_hi, diag_hi, BLOCK_N):
        m_i, l_i, acc = _attend_tile(q, k_ptr, v_ptr, bt_row, head_off, n0, d, dmask, pos, ctx, m_i, l_i, acc,
                                     qk_scale, stride_kb, stride_ks, BLOCK_SIZE, BLOCK_N, True, DOT_PREC)
    o = acc / l_i[:, None]  # every row sees key full_hi <= its position, so l_i > 0
    tl.store(out_ptr + tok_q[:, None] * stride_ot + h * stride_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & dmask[None, :])


def prefill_config(device: torch.device, head_dim: int) -> dict:
    """Heuristic tiles as data: large tiles for the tensor cores on a GPU."""
    if device.type != "cuda":
        return dict(block_m=16, block_n=16, num_warps=1, num_stages=1, heavy_first=True)
    # H200 run 7 (bench/KERNEL_NOTES.md): heavy-first 354 vs 320 TFLOP/s without a prefix, 345 vs 350
    # with a 4096 prefix (where every tile has about the same work, so the order cannot matter much)
    if head_dim <= 128:
        return dict(block_m=64, block_n=64, num_warps=4, num_stages=2, heavy_first=True)
    return dict(block_m=64, block_n=32, num_warps=4, num_stages=2, heavy_first=True)


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                  cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None, *,
                  max_seqlen_q: int | None = None, block_m: int | None = None, block_n: int | None = None,
                  num_warps: int | None = None, num_stages: int | None = None,
                  heavy_first: bool | None = None) -> torch.Tensor:
    """Causal attention of packed q [total_q, num_heads, head_dim] over paged KV.

    ``heavy_first``: launch the query tiles with the most keys first, so the
    last wave is made of short programs (longest-processing-time order).

    ``max_seqlen_q`` sizes the grid; by default it is read from cu_seqlens_q
    (one device sync). Requires context_lens[b] >= q_len[b] (not checked on device).
    """
    device = check_device(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens)
    check_cache(k_cache, v_cache)
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    assert q.dim() == 3 and q.shape[2] == head_dim, f"q must be [total_q, num_heads, {head_dim}], got {tuple(q.shape)}"
    total_q, num_heads, _ = q.shape
    assert q.dtype == k_cache.dtype and q.dtype in ATTN_TYPES, f"q/cache dtypes {q.dtype}/{k_cache.dtype}: same, fp16/bf16/fp32"
    assert q.stride(2) == 1, "q's head_dim must be contiguous"
    assert num_heads % num_kv_heads == 0, f"num_heads {num_heads} not a multiple of num_kv_heads {num_kv_heads}"
    assert head_dim >= 16, f"head_dim {head_dim} < 16 (tl.dot minimum)"
    batch = block_tables.shape[0]
    assert block_tables.dtype == torch.int32 and block_tables.stride(1) == 1, "block_tables: int32, contiguous rows"
    assert cu_seqlens_q.shape == (batch + 1,) and cu_seqlens_q.dtype == torch.int32, "cu_seqlens_q: int32 [batch+1]"
    assert context_lens.shape == (batch,) and context_lens.dtype == torch.int32, "context_lens: int32 [batch]"
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if batch else 0
    out = torch.empty(total_q, num_heads, head_dim, device=device, dtype=q.dtype)
    if batch == 0 or max_seqlen_q == 0:
        return out
    cfg = prefill_config(device, head_dim)
    block_m, block_n = block_m or cfg["block_m"], block_n or cfg["block_n"]
    assert block_m >= 16 and block_n >= 16, "block_m and block_n must be >= 16 (tl.dot minimum)"
    heavy = cfg["heavy_first"] if heavy_first is None else heavy_first
    m_tiles = triton.cdiv(max_seqlen_q, block_m)
    grid = (num_heads, batch, m_tiles) if heavy else (m_tiles, batch, num_heads)
    _paged_prefill_kernel[grid](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out,
        scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, DOT_PREC=dot_precision(q.dtype), HEAVY_FIRST=heavy,
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"],
    )
    return out


def paged_prefill_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                      scale: float | None = None) -> torch.Tensor:
    """Dense float32 reference with an explicit causal-with-prefix mask."""
    total_q, num_heads, head_dim = q.shape
    group = num_heads // k_cache.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.zeros(total_q, num_heads, head_dim, dtype=torch.float32, device=q.device)
    for b in range(block_tables.shape[0]):
        s, e, n = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(context_lens[b])
        if e == s:
            continue
        k = gather_kv(k_cache, block_tables[b], n).repeat_interleave(group, dim=1)  # [n, H, D]
        v = gather_kv(v_cache, block_tables[b], n).repeat_interleave(group, dim=1)
        pos = torch.arange(n - (e - s), n, device=q.device)
        visible = torch.arange(n, device=q.device)[None, :] <= pos[:, None]  # [q_len, n]
        scores = torch.einsum("qhd,nhd->hqn", q[s:e].float(), k) * scale
        w = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        out[s:e] = torch.einsum("hqn,nhd->qhd", w, v)
    return out
