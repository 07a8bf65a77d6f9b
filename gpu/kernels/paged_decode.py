"""Paged decode attention: one query token per sequence over its paged KV.

Layout (vLLM V1 / FlashAttention)::

    k_cache, v_cache   [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables       int32 [batch, max_blocks]   physical block ids
    token t of seq b   lives at block_tables[b, t // block_size], offset t % block_size

Work split::

    grid = (num_kv_heads, batch, num_splits)
    program (h, b, s) ── all GROUP = num_heads // num_kv_heads query heads of
                         kv head h (padded to >= 16 rows for tl.dot), over the
                         token tiles [s * tiles_per_split, (s+1) * tiles_per_split)
                         of sequence b; each K/V tile is loaded once per group.

With one split the program writes the output. With several (flash-decoding)
it writes a normalised partial output and its log2-sum-exp; a second small
kernel, one program per (seq, head), loads all splits of its head as one
tile and merges them.

Block ids a tile ahead (``BT_AHEAD``), the dependent DRAM round trips before
a program's first K/V bytes arrive::

    plain      context_lens[b] ──► block ids of tile 0 ──► K/V of tile 0    3
    BT_AHEAD   context_lens[b] ─┐
               block ids ───────┴──────────────────────► K/V of tile 0     2 (dense SDPA: 1)

The plain loop masks the block-id load with the context length, and the
software pipeliner predicates its prologue on the ctx-derived trip count, so
the first block ids wait for ``context_lens``. With BT_AHEAD the first tile's
ids are loaded before the loop (masked by the table width only) and each
iteration loads the next tile's; K/V addresses come from the loop-carried
ids. The ids then no longer take a pipeline stage of their own, so K/V get
num_stages - 1 shared buffers (plain: 1 up to num_stages 4, 2 at 5).
Measured on an H100 (bench/KERNEL_NOTES.md, run 6): 1.2-1.6 us less per call
on split shapes, ~0.6 us at 32 x 2048; not used at large batch, where the
plain loop's smaller footprint keeps 4 programs per SM.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from pagesim.gpu.kernels._common import ATTN_TYPES, check_cache, check_device, dot_precision, gather_kv, next_pow2, num_sms
from pagesim.gpu.kernels.decode_tuning import tuned
from pagesim.gpu.kernels.fused import new_token_scores, new_token_update, rope_prologue

LOG2E = 1.4426950408889634
MAX_SPLITS = 64  # the merge holds [splits, head_dim] fp32 per head in registers


@triton.jit
def _merge_head(opart_ptr, lse_ptr, out_ptr, b, head, num_heads, num_splits, stride_ob, stride_oh,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """out[b, head] = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), all splits loaded at once."""
    sp = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, BLOCK_D)
    smask = sp < num_splits
    row = (b * num_heads + head).to(tl.int64) * num_splits + sp
    lse = tl.load(lse_ptr + row, mask=smask, other=float("-inf"))
    o = tl.load(opart_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=smask[:, None] & (d[None, :] < HEAD_DIM),
                other=0.0)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty: weights 0, output 0
    w = tl.exp2(lse - m)
    out = tl.sum(w[:, None] * o, 0) / tl.maximum(tl.sum(w, 0), 1e-30)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty),
             mask=d < HEAD_DIM)


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, opart_ptr, lse_ptr,
    qk_scale, num_kv_heads, tiles_per_split, num_splits, table_tokens,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_btb, stride_ob, stride_oh,
    rows_ptr, pos_ptr, slot_ptr, qrot_ptr, krot_ptr, log2_theta,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr, SPLIT: tl.constexpr, DOT_PREC: tl.constexpr,
    BT_AHEAD: tl.constexpr, SPLIT_BY_CTX: tl.constexpr, ROPE: tl.constexpr,
):
    kvh = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    n = tl.arange(0, TILE_N)
    heads = kvh * GROUP + g
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    if ROPE:  # q_ptr holds packed qkv rows (gpu/kernels/rope_decode.py): rotate q, take the new k, v
        q, k_new, v_new, pos = rope_prologue(q_ptr, rows_ptr, pos_ptr, slot_ptr, qrot_ptr, krot_ptr, k_ptr, v_ptr,
                                              b, kvh, s, stride_qb, log2_theta, num_kv_heads, stride_kb, stride_ks,
                                              stride_kh, GROUP, BLOCK_G, HEAD_DIM, BLOCK_D, BLOCK_SIZE, ROPE)
        qk_new = new_token_scores(q, k_new, qk_scale)  # before the loop: q's float32 copy dies here
    else:
        q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None] & dmask[None, :], other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_btb
    head_off = kvh.to(tl.int64) * stride_kh
    n_tiles = tl.cdiv(ctx, TILE_N)
    if SPLIT_BY_CTX:  # each sequence spreads its own tiles over the splits (graph-safe grid)
        tiles_per_split = tl.cdiv(n_tiles, num_splits)
    if ROPE:  # the cache holds keys before the new token; it is added after the loop, from registers
        kv_end = tl.minimum(pos, ctx)
    else:
        kv_end = ctx
    tile_lo = s * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, tl.cdiv(kv_end, TILE_N))
    if BT_AHEAD:  # ids of the first tile, independent of ctx (past it they only feed masked loads)
        tok0 = tile_lo * TILE_N + n
        blk_next = tl.load(bt_row + tok0 // BLOCK_SIZE, mask=tok0 < table_tokens, other=0)
    for t in range(tile_lo, tile_hi):
        tok = t * TILE_N + n
        tmask = tok < kv_end
        if BT_AHEAD:
            blk = blk_next.to(tl.int64)
            nxt = tok + TILE_N
            blk_next = tl.load(bt_row + nxt // BLOCK_SIZE, mask=nxt < table_tokens, other=0)
        else:
            blk = tl.load(bt_row + tok // BLOCK_SIZE, mask=tmask, other=0).to(tl.int64)
        row = blk * stride_kb + (tok % BLOCK_SIZE) * stride_ks + head_off
        kv_mask = tmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        qk = tl.where(tmask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every visited tile has a valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    if ROPE:  # the split whose tiles hold position pos adds the new token (its slot may be unwritten yet)
        m_i, l_i, acc = new_token_update(qk_new, v_new, pos, ctx, tile_lo, tiles_per_split, m_i, l_i, acc,
                                         TILE_N, BLOCK_G)

    o = acc / tl.maximum(l_i, 1e-30)[:, None]  # empty range: acc == 0, o == 0
    if SPLIT:
        num_heads = num_kv_heads * GROUP
        row_s = (b * num_heads + heads).to(tl.int64) * num_splits + s
        tl.store(opart_ptr + row_s[:, None] * HEAD_DIM + d[None, :], o, mask=gmask[:, None] & dmask[None, :])
        tl.store(lse_ptr + row_s, m_i + tl.log2(tl.maximum(l_i, 1e-30)), mask=gmask)  # -inf when empty
    else:
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=gmask[:, None] & dmask[None, :])


@triton.jit
def _merge_kernel(opart_ptr, lse_ptr, out_ptr, num_heads, num_splits, stride_ob, stride_oh,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS_PAD: tl.constexpr):
    _merge_head(opart_ptr, lse_ptr, out_ptr, tl.program_id(1), tl.program_id(0), num_heads, num_splits,
                stride_ob, stride_oh, HEAD_DIM, BLOCK_D, SPLITS_PAD)


def num_splits_for(n_groups: int, max_context_len: int, tile_n: int, sms: int, waves: float,
                   min_tiles: int) -> int:
    """Splits giving at most ``waves`` programs per SM over all (seq, kv head)
    groups, rounded down (8 groups -> 16 splits, 64 -> 2 on 132 SMs: every
    program has an SM of its own), but never fewer than ``min_tiles`` tiles of
    ``tile_n`` tokens per split."""
    tiles = max(1, triton.cdiv(max_context_len, tile_n))
    want = math.floor(waves * sms / n_groups)
    return max(1, min(want, tiles // min_tiles))


# Launch parameters as data, from the H100 sweeps (bench/KERNEL_NOTES.md, run
# 6): the first row whose bound covers n_groups = batch * kv_heads (in SMs)
# applies. Every row: 64-token tiles, 4 warps, 3 stages.
#  <= 3 SMs   BT_AHEAD (2 K/V buffers, 70 KB: 3 programs/SM, so all of them
#             resident in one wave); up to SMs groups split down to one program
#             per SM (waves=1) - better than 2 per SM by 0.4-0.7 %
#  more       plain loop (1 K/V buffer, 38 KB: 4 programs/SM). BT_AHEAD's 3/SM
#             would need 1.3 waves at 512 groups (+10 % at 64 x 4096)
DECODE_TABLE = (
    (3.0, dict(tile_n=64, num_warps=4, num_stages=3, waves=1, bt_ahead=True)),
    (math.inf, dict(tile_n=64, num_warps=4, num_stages=3, waves=1, bt_ahead=False)),
)
# Blocks under 16 tokens: a 64-token tile spans 8+ blocks (pages), its loads
# take longer, and one program per SM with 2 buffers no longer hides that
# (block 8: +1.3 % at 1 x 32768, +1.2 % at 32 x 2048 against the rows below).
#  <= SMs     split to two programs per SM
#  <= 3 SMs   plain loop, 128-token tiles, 4 stages (run 3's choice)
SMALL_BLOCK_TABLE = (
    (1.0, dict(tile_n=64, num_warps=4, num_stages=3, waves=2, bt_ahead=True)),
    (3.0, dict(tile_n=128, num_warps=4, num_stages=4, waves=1, bt_ahead=False)),
    (math.inf, dict(tile_n=64, num_warps=4, num_stages=3, waves=1, bt_ahead=False)),
)


def decode_config(device: torch.device, n_groups: int, max_context_len: int, block_size: int,
                  head_dim: int) -> dict:
    """Launch parameters for one call: a DECODE_TABLE (or SMALL_BLOCK_TABLE) row plus its split count.

    The split rows (the first row of either table) take their programs per SM
    from the device's cached tuning when there is one (``decode_tuning``):
    ``waves_small`` up to SMs/8 groups, ``waves`` above; never fewer than the
    row's own value."""
    sms = num_sms(device)
    if device.type != "cuda":
        cfg = dict(tile_n=16, num_warps=1, num_stages=1, waves=1, bt_ahead=True)
    else:
        table = SMALL_BLOCK_TABLE if block_size < 16 else DECODE_TABLE
        row = next(i for i, (bound, _) in enumerate(table) if n_groups <= bound * sms)
        cfg = dict(table[row][1])
        tune = tuned(device)
        if row == 0 and tune:
            cfg["waves"] = max(cfg["waves"], tune["waves_small" if n_groups * 8 <= sms else "waves"])
        if head_dim > 128:
            cfg.update(tile_n=min(cfg["tile_n"], 64), num_stages=min(cfg["num_stages"], 3))
    cfg["num_splits"] = num_splits_for(n_groups, max_context_len, cfg["tile_n"], sms, cfg["waves"],
                                       min_tiles=2 if device.type == "cuda" else 1)
    return cfg


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float | None = None, *, max_context_len: int | None = None,
                 num_splits: int | None = None, tile_n: int | None = None, num_warps: int | None = None,
                 num_stages: int | None = None, bt_ahead: bool | None = None,
                 split_by_context: bool = False) -> torch.Tensor:
    """Attention of q [batch, num_heads, head_dim] over each sequence's paged KV.

    ``max_context_len`` (default: block_tables.shape[1] * block_size, so no
    device sync and graph-capturable) only sizes the split-K grid.
    Other keywords override the heuristic (``decode_config``); ``bt_ahead``
    picks the loop form (module docstring). ``split_by_context``: each
    sequence divides its own tiles among the splits, so a grid sized once
    (a CUDA graph captured with ``max_context_len`` = the table width) fits
    every step; otherwise every sequence uses the split size of
    ``max_context_len``.
    """
    device = check_device(q, k_cache, v_cache, block_tables, context_lens)
    check_cache(k_cache, v_cache)
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    assert q.dim() == 3, f"q must be [batch, num_heads, head_dim], got {tuple(q.shape)}"
    batch, num_heads, _ = q.shape
    assert q.shape[2] == head_dim, f"q head_dim {q.shape[2]} != cache head_dim {head_dim}"
    assert q.dtype == k_cache.dtype and q.dtype in ATTN_TYPES, f"q/cache dtypes {q.dtype}/{k_cache.dtype}: same, fp16/bf16/fp32"
    assert q.stride(2) == 1, "q's head_dim must be contiguous"
    assert num_heads % num_kv_heads == 0, f"num_heads {num_heads} not a multiple of num_kv_heads {num_kv_heads}"
    assert head_dim >= 16, f"head_dim {head_dim} < 16 (tl.dot minimum)"
    assert block_tables.dim() == 2 and block_tables.shape[0] == batch, "block_tables must be [batch, max_blocks]"
    assert block_tables.dtype == torch.int32 and block_tables.stride(1) == 1, "block_tables: int32, contiguous rows"
    assert context_lens.shape == (batch,) and context_lens.dtype == torch.int32, "context_lens: int32 [batch]"
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if max_context_len is None:
        max_context_len = block_tables.shape[1] * block_size

    if batch == 0:
        return torch.empty_like(q)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    launch_decode(q, (q.stride(0), q.stride(1)), out, k_cache, v_cache, block_tables, context_lens, scale,
                  num_heads, max_context_len, split_by_context,
                  dict(num_splits=num_splits, tile_n=tile_n, num_warps=num_warps, num_stages=num_stages,
                       bt_ahead=bt_ahead))
    return out


def launch_decode(q_src: torch.Tensor, q_strides: tuple[int, int], out: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                  num_heads: int, max_context_len: int, split_by_context: bool, overrides: dict,
                  rope: dict | None = None) -> None:
    """The decode launch (and its merge) into ``out`` [batch, num_heads, head_dim], arguments checked by
    the caller. ``rope`` (from ``rope_decode``): q_src is packed qkv rows to rotate, and its keys
    rows / positions / slots / q_rot / k_rot / log2_theta are the fused prologue's inputs and outputs."""
    device = out.device
    batch = out.shape[0]
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    group = num_heads // num_kv_heads
    cfg = decode_config(device, batch * num_kv_heads, max_context_len, block_size, head_dim)
    tile_n = overrides.get("tile_n") or cfg["tile_n"]
    assert tile_n >= 16 and tile_n & (tile_n - 1) == 0, f"tile_n {tile_n}: a power of two >= 16"
    tiles = max(1, triton.cdiv(max_context_len, tile_n))
    splits = min(overrides.get("num_splits") or cfg["num_splits"], tiles, MAX_SPLITS)
    tiles_per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, tiles_per_split)  # no split left without tiles

    if splits > 1:
        opart = torch.empty(batch, num_heads, splits, head_dim, device=device, dtype=torch.float32)
        lse = torch.empty(batch, num_heads, splits, device=device, dtype=torch.float32)
    else:
        opart, lse = out, out  # unused
    r = rope or dict(rows=context_lens, positions=context_lens, slots=context_lens, q_rot=out, k_rot=out,
                     log2_theta=0.0)  # unused without ROPE
    bt_ahead = overrides.get("bt_ahead")
    meta = dict(GROUP=group, BLOCK_G=max(16, next_pow2(group)), HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim))
    _paged_decode_kernel[(num_kv_heads, batch, splits)](
        q_src, k_cache, v_cache, block_tables, context_lens, out, opart, lse,
        scale * LOG2E, num_kv_heads, tiles_per_split, splits, block_tables.shape[1] * block_size,
        q_strides[0], q_strides[1], k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        r["rows"], r["positions"], r["slots"], r["q_rot"], r["k_rot"], r["log2_theta"],
        BLOCK_SIZE=block_size, TILE_N=tile_n, SPLIT=splits > 1, DOT_PREC=dot_precision(out.dtype),
        BT_AHEAD=cfg["bt_ahead"] if bt_ahead is None else bt_ahead, SPLIT_BY_CTX=split_by_context,
        ROPE=0 if rope is None else (2 if rope.get("gather") else 1),
        num_warps=overrides.get("num_warps") or cfg["num_warps"],
        num_stages=overrides.get("num_stages") or cfg["num_stages"], **meta,
    )
    if splits > 1:
        _merge_kernel[(num_heads, batch)](opart, lse, out, num_heads, splits, out.stride(0), out.stride(1),
                                          HEAD_DIM=head_dim, BLOCK_D=meta["BLOCK_D"], SPLITS_PAD=next_pow2(splits),
                                          num_warps=4 if device.type == "cuda" else 1)


def paged_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Dense float32 reference: gather each sequence's KV, then softmax attention."""
    batch, num_heads, head_dim = q.shape
    group = num_heads // k_cache.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.zeros(batch, num_heads, head_dim, dtype=torch.float32, device=q.device)
    for b in range(batch):
        n = int(context_lens[b])
        if n == 0:
            continue
        k = gather_kv(k_cache, block_tables[b], n).repeat_interleave(group, dim=1)  # [n, H, D]
        v = gather_kv(v_cache, block_tables[b], n).repeat_interleave(group, dim=1)
        w = torch.softmax(torch.einsum("hd,nhd->hn", q[b].float(), k) * scale, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", w, v)
    return out
