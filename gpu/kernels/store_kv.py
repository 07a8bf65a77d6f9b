"""store_kv: write new tokens' K and V into their cache slots.

    slot = block_id * block_size + offset      (slot < 0: padding, skipped)
    k_cache[slot // block_size, slot % block_size] = k[token]   (and V alike)

One program moves ``TOKENS`` consecutive tokens, all kv heads of each
([heads, head_dim] tiles, 16-byte loads along head_dim): one token is only
4 KB of K+V at Llama-3-8B sizes, too little work for a program to hide its
start-up. Duplicate non-negative slots race.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagesim.gpu.kernels._common import check_cache, check_device, next_pow2


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    num_tokens, block_size,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_cs, stride_ch,
    NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    TOKENS: tl.constexpr,
):
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    hd = (h[:, None] < NUM_HEADS) & (d[None, :] < HEAD_DIM)
    for i in tl.static_range(TOKENS):
        t = tl.program_id(0).to(tl.int64) * TOKENS + i
        live = t < num_tokens
        slot = tl.load(slot_ptr + t, mask=live, other=-1).to(tl.int64)
        # Padding is tested on a block of copies of the slot, not as a scalar
        # comparison broadcast into the mask: Triton 3.9's interpreter keeps the
        # int64 operand type on a scalar comparison's result, so its broadcast is
        # no boolean and loads reject the mask ("mask has unsupported dtype").
        mask = hd & ((tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.int64) + slot) >= 0)
        dst = (slot // block_size) * stride_cb + (slot % block_size) * stride_cs + h[:, None] * stride_ch + d[None, :]
        k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
        v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
        tl.store(kc_ptr + dst, k, mask=mask)
        tl.store(vc_ptr + dst, v, mask=mask)


#: tokens per program on a GPU (bench/KERNEL_NOTES.md, run 7)
TOKENS_PER_PROGRAM = 4


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, *, tokens_per_program: int | None = None,
             num_warps: int | None = None) -> None:
    """In place: k, v [num_tokens, num_kv_heads, head_dim] into the caches."""
    check_device(k, v, k_cache, v_cache, slot_mapping)
    check_cache(k_cache, v_cache)
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    assert k.dim() == 3 and k.shape[1:] == (num_kv_heads, head_dim), \
        f"k must be [num_tokens, {num_kv_heads}, {head_dim}] to match the cache, got {tuple(k.shape)}"
    assert v.shape == k.shape, f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}"
    assert k.dtype == v.dtype == k_cache.dtype, f"k/v dtypes {k.dtype}/{v.dtype} != cache dtype {k_cache.dtype}"
    assert k.stride(2) == 1 and v.stride(2) == 1, "k and v need a contiguous head_dim"
    assert slot_mapping.shape == (k.shape[0],), f"slot_mapping must be [num_tokens={k.shape[0]}]"
    assert slot_mapping.dtype in (torch.int32, torch.int64), "slot_mapping must be int32 or int64"
    assert slot_mapping.is_contiguous(), "slot_mapping must be contiguous"
    if k.shape[0] == 0:
        return
    on_gpu = k.device.type == "cuda"
    tokens = tokens_per_program or (TOKENS_PER_PROGRAM if on_gpu else 2)
    _store_kv_kernel[(triton.cdiv(k.shape[0], tokens),)](
        k, v, k_cache, v_cache, slot_mapping, k.shape[0], block_size,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_HEADS=num_kv_heads, BLOCK_H=next_pow2(num_kv_heads), HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
        TOKENS=tokens, num_warps=num_warps or (4 if on_gpu else 1),
    )


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the caches with the valid tokens written (inputs untouched)."""
    block_size = k_cache.shape[1]
    kc, vc = k_cache.clone(), v_cache.clone()
    slots = slot_mapping.long()
    valid = slots >= 0
    blk, off = slots[valid] // block_size, slots[valid] % block_size
    kc[blk, off] = k[valid]
    vc[blk, off] = v[valid]
    return kc, vc
