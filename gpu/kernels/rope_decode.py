"""rope_decode: RoPE + store_kv + paged decode attention in one launch (plus the split merge).

At decode a layer's KV work was two launches, ``rope_store`` then
``paged_decode``, and in attention mode a third (the gather of the step's
q/k/v rows from the random table). Under CUDA-graph replay each launch
costs ~2-3 us of ramp and tail whatever its size: at batch 8 (68 MB of KV a
layer, 16 us at the copy bandwidth) they were a third of the layer
(bench/KERNEL_NOTES.md, run 7). Here every decode program::

    qkv row (or table[rows[b]]) ── rotate its q heads and the new k in registers
    split 0 ── q_rot, k_rot (for the shadow hook), k and v into the cache slot
    every split ── its tiles of the cached keys before position pos
    the split whose tiles hold pos ── one more online-softmax step over the
                   new k, v in registers (not from the slot, which another
                   program may not have written yet)

Keeping the new token out of the tile loop keeps the loop, its shared
memory and its occupancy exactly those of ``paged_decode`` (a first version
that swapped the new row into the loaded tile with tl.where needed 100 KB of
shared memory instead of 70 KB in an sm_90 compile: 2 programs per SM, not 3).
Rows are decode tokens: position pos holds the new token, keys before it
are cached. Padding rows: slot < 0 and context 0 (nothing stored, output 0).
"""
from __future__ import annotations

import math

import torch

from pagesim.gpu.kernels._common import ATTN_TYPES, check_cache, check_device
from pagesim.gpu.kernels.fused import ROPE_THETA
from pagesim.gpu.kernels.paged_decode import launch_decode


def rope_decode(src: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, num_heads: int, *,
                rows: torch.Tensor | None = None, theta: float = ROPE_THETA, max_context_len: int | None = None,
                split_by_context: bool = False, **overrides) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode attention of packed qkv rows ``src`` [batch, (H + 2 Hkv) * D] (or, with ``rows`` [batch],
    of rows ``src[rows]`` of a table) after RoPE, storing k and v at ``slots``.

    Returns (out [batch, H, D], rotated q [batch, H, D], rotated k [batch, Hkv, D]); ``src`` is not
    modified. Same result as ``rope_store`` on a copy of the rows, then ``paged_decode``; ``overrides``
    (num_splits, tile_n, num_warps, num_stages, bt_ahead) as paged_decode's."""
    device = check_device(src, positions, slots, k_cache, v_cache, block_tables, context_lens)
    check_cache(k_cache, v_cache)
    _, block_size, num_kv, head_dim = k_cache.shape
    assert src.dim() == 2 and src.shape[1] == (num_heads + 2 * num_kv) * head_dim and src.stride(1) == 1, \
        f"src must be [rows, {(num_heads + 2 * num_kv) * head_dim}] with contiguous rows"
    assert src.dtype == k_cache.dtype and src.dtype in ATTN_TYPES, "src in the cache dtype (fp16/bf16/fp32)"
    assert head_dim % 2 == 0 and head_dim >= 16 and num_heads % num_kv == 0, \
        f"even head_dim >= 16, num_heads {num_heads} a multiple of {num_kv}"
    batch = block_tables.shape[0]
    if rows is not None:
        assert rows.shape == (batch,) and rows.dtype in (torch.int32, torch.int64), "rows: one int per sequence"
    else:
        assert src.shape[0] == batch, f"src has {src.shape[0]} rows for {batch} sequences"
    assert positions.shape == slots.shape == (batch,), "one position and one slot per sequence"
    assert block_tables.dtype == torch.int32 and block_tables.stride(1) == 1, "block_tables: int32, contiguous rows"
    assert context_lens.shape == (batch,) and context_lens.dtype == torch.int32, "context_lens: int32 [batch]"
    out = torch.empty(batch, num_heads, head_dim, device=device, dtype=src.dtype)
    q_rot = torch.empty_like(out)
    k_rot = torch.empty(batch, num_kv, head_dim, device=device, dtype=src.dtype)
    if batch == 0:
        return out, q_rot, k_rot
    if max_context_len is None:
        max_context_len = block_tables.shape[1] * block_size
    rope = dict(rows=rows if rows is not None else positions, positions=positions, slots=slots, q_rot=q_rot,
                k_rot=k_rot, log2_theta=math.log2(theta), gather=rows is not None)
    launch_decode(src, (src.stride(0), head_dim), out, k_cache, v_cache, block_tables, context_lens,
                  1.0 / math.sqrt(head_dim), num_heads, max_context_len, split_by_context, overrides, rope)
    return out, q_rot, k_rot
