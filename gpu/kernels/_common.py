"""Small helpers shared by the kernel launchers (no work at import time)."""
from __future__ import annotations

import functools

import torch

from pagesim.gpu.kernels._env import interpreting

HALF_TYPES = (torch.float16, torch.bfloat16)
ATTN_TYPES = (torch.float16, torch.bfloat16, torch.float32)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Multiprocessors of ``device``; a small stand-in on the CPU interpreter."""
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs are multiplied exactly ("ieee") rather than as TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_device(*tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; CPU tensors only under the interpreter."""
    device = tensors[0].device
    for t in tensors:
        assert t.device == device, f"all tensors must be on one device: {t.device} != {device}"
    if device.type == "cpu":
        assert interpreting(), (
            "CPU tensors need TRITON_INTERPRET=1 set before triton is imported "
            "(import gpu.kernels first, it sets it when there is no CUDA device)"
        )
    return device


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """K and V caches: [num_blocks, block_size, num_kv_heads, head_dim], same strides."""
    assert k_cache.dim() == 4, f"k_cache must be [num_blocks, block_size, kv_heads, head_dim], got {tuple(k_cache.shape)}"
    assert v_cache.shape == k_cache.shape, f"v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}"
    assert v_cache.dtype == k_cache.dtype, f"v_cache dtype {v_cache.dtype} != k_cache dtype {k_cache.dtype}"
    assert k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share strides"
    assert k_cache.stride(-1) == 1, "head_dim must be the contiguous (stride 1) axis of the caches"


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """Dense float32 [length, kv_heads, head_dim] of one sequence (reference helper)."""
    block_size = cache.shape[1]
    n_blocks = -(-length // block_size)
    blocks = cache[block_table[:n_blocks].long()].float()  # [n, bs, kvh, d]
    return blocks.reshape(-1, *cache.shape[2:])[:length]
