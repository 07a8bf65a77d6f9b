"""The synthetic decoder's small per-token operations, one launch each.

A decode step at batch 1 is a few hundred launches whose data is tiny; under
CUDA-graph replay each still costs ~2 us of GPU time, so eager PyTorch's
~28 kernels per layer (RoPE alone is 7 element-wise kernels per tensor)
would put ~1.8 ms on a 3.8 ms weight-streaming floor. Fused here:

    rope_store    RoPE on q and k in place in the packed qkv rows, then k and v
                  into their cache slots (store_kv's job)       1 launch, was 16
    add_rmsnorm   x += delta; h = rmsnorm(x) * w                 1 launch, was ~6
    silu_mul      silu(gate) * up of a [tokens, 2 * inner] GEMM   1 launch, was 3

Each has a torch reference below it. RoPE angles are computed in float32
from the positions (rotate-half convention, theta 10000).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagesim.gpu.kernels._common import check_device, next_pow2

ROPE_THETA = 10000.0


@triton.jit
def _rotate(ptr, row, heads, pos, log2_theta, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
            HALF: tl.constexpr):
    """RoPE in place on ``heads`` heads starting at ``ptr + row``; returns the rotated halves."""
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF)
    mask = h[:, None] < heads
    inv_freq = tl.exp2(-(2.0 * d.to(tl.float32) / HEAD_DIM) * log2_theta)
    ang = pos.to(tl.float32) * inv_freq
    c, s = tl.cos(ang)[None, :], tl.sin(ang)[None, :]
    p1 = ptr + row + h[:, None] * HEAD_DIM + d[None, :]
    x1 = tl.load(p1, mask=mask).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask).to(tl.float32)
    y1 = (x1 * c - x2 * s).to(ptr.dtype.element_ty)
    y2 = (x2 * c + x1 * s).to(ptr.dtype.element_ty)
    tl.store(p1, y1, mask=mask)
    tl.store(p1 + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def _rope_store_kernel(qkv_ptr, pos_ptr, slot_ptr, kc_ptr, vc_ptr, stride_t, log2_theta, block_size,
                       stride_cb, stride_cs, stride_ch,
                       NUM_HEADS: tl.constexpr, NUM_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_KV: tl.constexpr, HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t)
    row = t * stride_t
    _rotate(qkv_ptr, row, NUM_HEADS, pos, log2_theta, HEAD_DIM, BLOCK_H, HALF)
    k1, k2 = _rotate(qkv_ptr, row + NUM_HEADS * HEAD_DIM, NUM_KV, pos, log2_theta, HEAD_DIM, BLOCK_KV, HALF)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    h = tl.arange(0, BLOCK_KV)
    d = tl.arange(0, HALF)
    # a block of the slot, not a scalar comparison (Triton 3.9's interpreter: see store_kv)
    mask = (h[:, None] < NUM_KV) & ((tl.zeros([BLOCK_KV, HALF], dtype=tl.int64) + slot) >= 0)
    dst = (slot // block_size) * stride_cb + (slot % block_size) * stride_cs + h[:, None] * stride_ch + d[None, :]
    tl.store(kc_ptr + dst, k1, mask=mask)
    tl.store(kc_ptr + dst + HALF, k2, mask=mask)
    vrow = qkv_ptr + row + (NUM_HEADS + NUM_KV) * HEAD_DIM + h[:, None] * HEAD_DIM + d[None, :]
    tl.store(vc_ptr + dst, tl.load(vrow, mask=mask), mask=mask)
    tl.store(vc_ptr + dst + HALF, tl.load(vrow + HALF, mask=mask), mask=mask)


@triton.jit
def rope_prologue(src_ptr, rows_ptr, pos_ptr, slot_ptr, qrot_ptr, krot_ptr, kc_ptr, vc_ptr, b, kvh, s, stride_t,
                  log2_theta, num_kv_heads, stride_cb, stride_cs, stride_ch, GROUP: tl.constexpr,
                  BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  ROPE: tl.constexpr):
    """rope_store's work for one (sequence b, kv head) inside the decode kernel (``rope_decode``).

    Reads packed qkv row b (ROPE 1) or row rows[b] of a table (ROPE 2). Returns the group's rotated
    q heads [BLOCK_G, BLOCK_D], the rotated new k and the new v [BLOCK_D], and the position. Split 0
    writes q and k to q_rot / k_rot and k, v to the cache slot (< 0: skipped); the split holding
    position pos adds k, v from registers (``new_token_update``), so none waits for the store.
    Rotate-half over the whole head: element d pairs with d +- D/2, the same float32 arithmetic as
    ``_rotate``."""
    if ROPE == 2:
        row = src_ptr + tl.load(rows_ptr + b).to(tl.int64) * stride_t
    else:
        row = src_ptr + b.to(tl.int64) * stride_t
    pos = tl.load(pos_ptr + b)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    lo = d < HEAD_DIM // 2
    dp = tl.where(lo, d + HEAD_DIM // 2, d - HEAD_DIM // 2)
    fi = tl.where(lo, d, d - HEAD_DIM // 2)
    ang = pos.to(tl.float32) * tl.exp2(-(2.0 * fi.to(tl.float32) / HEAD_DIM) * log2_theta)
    c = tl.cos(ang)
    sn = tl.where(lo, -tl.sin(ang), tl.sin(ang))
    heads = kvh * GROUP + g
    qm = gmask[:, None] & dmask[None, :]
    qa = tl.load(row + heads[:, None] * HEAD_DIM + d[None, :], mask=qm, other=0.0).to(tl.float32)
    qb = tl.load(row + heads[:, None] * HEAD_DIM + dp[None, :], mask=qm, other=0.0).to(tl.float32)
    q = (qa * c[None, :] + qb * sn[None, :]).to(src_ptr.dtype.element_ty)
    num_heads = num_kv_heads * GROUP
    krow = row + (num_heads + kvh) * HEAD_DIM
    ka = tl.load(krow + d, mask=dmask, other=0.0).to(tl.float32)
    kb = tl.load(krow + dp, mask=dmask, other=0.0).to(tl.float32)
    k_new = (ka * c + kb * sn).to(src_ptr.dtype.element_ty)
    v_new = tl.load(row + (num_heads + num_kv_heads + kvh) * HEAD_DIM + d, mask=dmask, other=0.0)
    # masks as blocks, not scalar comparisons (Triton 3.9's interpreter: see store_kv)
    first = (tl.zeros([BLOCK_D], tl.int32) + s) == 0
    bq = b.to(tl.int64)
    tl.store(qrot_ptr + (bq * num_heads + heads[:, None]) * HEAD_DIM + d[None, :], q, mask=qm & first[None, :])
    tl.store(krot_ptr + (bq * num_kv_heads + kvh) * HEAD_DIM + d, k_new, mask=dmask & first)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    smask = dmask & first & ((tl.zeros([BLOCK_D], tl.int64) + slot) >= 0)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + kvh.to(tl.int64) * stride_ch + d
    tl.store(kc_ptr + dst, k_new, mask=smask)
    tl.store(vc_ptr + dst, v_new, mask=smask)
    return q, k_new, v_new, pos


@triton.jit
def new_token_scores(q, k_new, qk_scale):
    """Scaled scores [BLOCK_G] of the group's rotated q heads against the new key, in float32."""
    return tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * qk_scale


@triton.jit
def new_token_update(qk_new, v_new, pos, ctx, tile_lo, tiles_per_split, m_i, l_i, acc,
                     TILE_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """Online-softmax step over the one new key (``rope_decode``; its scaled scores ``qk_new``
    [BLOCK_G] come from before the tile loop), taken only by the split whose tile range holds
    position ``pos`` (and only when pos lies in the context): a rank-1 update in registers, so the
    tile loop and its shared-memory buffers stay those of plain decode."""
    t_new = pos // TILE_N
    own = (t_new >= tile_lo) & (t_new < tile_lo + tiles_per_split) & (pos < ctx)
    ownv = (tl.zeros([BLOCK_G], tl.int32) + own.to(tl.int32)) != 0  # a block (Triton 3.9's interpreter)
    qk = tl.where(ownv, qk_new, float("-inf"))
    m_new = tl.maximum(m_i, qk)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet and not the owner
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk - m_safe)
    return m_new, l_i * alpha + p, acc * alpha[:, None] + p[:, None] * v_new.to(tl.float32)[None, :]


def rope_store(qkv: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, num_heads: int, theta: float = ROPE_THETA) -> None:
    """qkv [tokens, (H + 2 Hkv) * D]: rotate q and k in place, store k and v at ``slots`` (< 0: skipped)."""
    device = check_device(qkv, positions, slots, k_cache, v_cache)
    _, block_size, num_kv, head_dim = k_cache.shape
    assert qkv.dim() == 2 and qkv.shape[1] == (num_heads + 2 * num_kv) * head_dim and qkv.stride(1) == 1, \
        f"qkv must be [tokens, {(num_heads + 2 * num_kv) * head_dim}] with contiguous rows"
    assert head_dim % 2 == 0 and qkv.dtype == k_cache.dtype, "even head_dim, qkv in the cache dtype"
    assert positions.shape == slots.shape == (qkv.shape[0],), "one position and one slot per token"
    if qkv.shape[0] == 0:
        return
    _rope_store_kernel[(qkv.shape[0],)](
        qkv, positions, slots, k_cache, v_cache, qkv.stride(0), math.log2(theta), block_size,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_HEADS=num_heads, NUM_KV=num_kv, HEAD_DIM=head_dim, BLOCK_H=next_pow2(num_heads),
        BLOCK_KV=next_pow2(num_kv), HALF=head_dim // 2, num_warps=4 if device.type == "cuda" else 1)


def rope_ref(x: torch.Tensor, positions: torch.Tensor, theta: float = ROPE_THETA) -> torch.Tensor:
    """Rotate-half RoPE of x [tokens, heads, dim] in float32."""
    d = x.shape[-1]
    inv = theta ** -(torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = positions.float()[:, None] * inv[None, :]
    c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


@triton.jit
def _add_rmsnorm_kernel(x_ptr, delta_ptr, w_ptr, out_ptr, n, eps, stride_x, stride_d, stride_o,
                        HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + r * stride_x + i, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        x += tl.load(delta_ptr + r * stride_d + i, mask=mask, other=0.0).to(tl.float32)
        xr = x.to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + r * stride_x + i, xr, mask=mask)
        x = xr.to(tl.float32)  # normalise the sum as stored
    inv = 1.0 / tl.sqrt(tl.sum(x * x, 0) / n + eps)
    w = tl.load(w_ptr + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * stride_o + i, (x * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x [rows, n] += delta (in place, when given); returns rmsnorm(x) * weight."""
    device = check_device(x, weight)
    assert x.dim() == 2 and x.stride(1) == 1 and weight.shape == (x.shape[1],), "x [rows, n], weight [n]"
    if delta is not None:
        assert delta.shape == x.shape and delta.stride(1) == 1, "delta must match x"
    out = torch.empty_like(x)
    if x.shape[0]:
        _add_rmsnorm_kernel[(x.shape[0],)](
            x, delta if delta is not None else x, weight, out, x.shape[1], eps, x.stride(0),
            (delta if delta is not None else x).stride(0), out.stride(0), HAS_DELTA=delta is not None,
            BLOCK=next_pow2(x.shape[1]), num_warps=8 if device.type == "cuda" else 1)
    return out


def add_rmsnorm_ref(x, delta, weight, eps: float = 1e-5):
    """(new x, normed) in float32, without touching x."""
    x = x.float() + (delta.float() if delta is not None else 0)
    return x, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, inner, stride_g, stride_o, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = i < inner
    g = tl.load(gu_ptr + r * stride_g + i, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + r * stride_g + inner + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * stride_o + i, (g / (1.0 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [rows, 2 * inner] -> silu(gate) * up, [rows, inner]."""
    device = check_device(gate_up)
    rows, two = gate_up.shape
    assert two % 2 == 0 and gate_up.stride(1) == 1, "gate_up must be [rows, 2 * inner], contiguous rows"
    inner = two // 2
    out = torch.empty(rows, inner, device=device, dtype=gate_up.dtype)
    block = min(next_pow2(inner), 2048 if device.type == "cuda" else 64)
    if rows:
        _silu_mul_kernel[(rows, triton.cdiv(inner, block))](gate_up, out, inner, gate_up.stride(0), out.stride(0),
                                                             BLOCK=block, num_warps=4 if device.type == "cuda" else 1)
    return out


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.float().chunk(2, dim=-1)
    return torch.nn.functional.silu(g) * u
