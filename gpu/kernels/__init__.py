"""Triton kernels for the paged KV cache, each with its launcher and torch reference.

Import this package (not a kernel file alone) first: ``_env`` selects Triton's
CPU interpreter when there is no CUDA device, before any kernel is decorated.
"""
from pagesim.gpu.kernels import _env  # noqa: F401  (must precede the kernel modules)
from pagesim.gpu.kernels.copy_blocks import copy_blocks, copy_blocks_ref, move_blocks
from pagesim.gpu.kernels.fused import add_rmsnorm, add_rmsnorm_ref, rope_ref, rope_store, silu_mul, silu_mul_ref
from pagesim.gpu.kernels.paged_decode import paged_decode, paged_decode_ref
from pagesim.gpu.kernels.paged_prefill import paged_prefill, paged_prefill_ref
from pagesim.gpu.kernels.rope_decode import rope_decode
from pagesim.gpu.kernels.store_kv import store_kv, store_kv_ref
from pagesim.gpu.kernels.swap import SwapHandle, pinned_pool_like, swap_blocks, swap_blocks_ref

__all__ = [
    "store_kv", "store_kv_ref", "paged_decode", "paged_decode_ref", "paged_prefill", "paged_prefill_ref",
    "copy_blocks", "copy_blocks_ref", "move_blocks", "rope_decode", "rope_store", "rope_ref", "add_rmsnorm",
    "add_rmsnorm_ref", "silu_mul", "silu_mul_ref", "swap_blocks", "swap_blocks_ref", "SwapHandle", "pinned_pool_like",
]
