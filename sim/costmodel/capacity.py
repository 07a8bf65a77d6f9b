"""How many KV blocks fit on a GPU, sized the way vLLM sizes them.

vLLM loads the weights, runs one profiling forward pass at the largest batch
it will ever schedule, and reads the peak memory in use. Whatever is left
under ``gpu_memory_utilization * total`` becomes the KV cache::

    kv_bytes  = memory_bytes * gpu_memory_utilization
              - weight_bytes / tp            (resident weights, one GPU)
              - activation_reserve_bytes     (CUDA context + profiled peak)
    num_blocks = floor(kv_bytes / (block_size * kv_bytes_per_token(model, tp)))

Without a GPU to profile on, ``default_activation_reserve`` estimates the
reserve from the model shape (see its docstring). For OPT-13B on an
A100-40GB at utilisation 0.9 it gives 0.92 GB, leaving 12.0 GB (11.2 GiB) of
KV cache: the "~12 GB, >30% of memory" of the vLLM paper's Figure 2
(Kwon et al., SOSP'23). Pass ``activation_reserve_bytes`` to use a measured
figure instead.
"""
from __future__ import annotations

from pagesim.sim.costmodel.presets import (
    MiB, GPUSpec, ModelSpec, get_gpu, get_model, kv_bytes_per_token, weight_bytes,
)

#: Device memory taken outside the PyTorch allocator: CUDA context, cuBLAS
#: and NCCL workspaces. vLLM counts it because it measures ``total - free``.
#: ~500 MiB on A100/H100 with recent drivers.
NON_TORCH_BYTES = 512 * MiB


def default_activation_reserve(
    model: ModelSpec,
    tp: int = 1,
    max_num_batched_tokens: int = 2048,
    max_num_seqs: int = 256,
) -> int:
    """Memory not available to the KV cache beyond the weights (one GPU).

    ``NON_TORCH_BYTES`` plus the peak of the profiling pass, estimated as the
    live tensors inside one layer's MLP for ``max_num_batched_tokens`` tokens
    (residual and normed input, attention output and the up/gate and
    activation outputs: ``4 * hidden + 3 * intermediate / tp`` elements per
    token) plus fp32 logits for ``max_num_seqs`` sampled positions. The
    defaults are vLLM's (``max_num_batched_tokens`` = 2048 for OPT-13B's
    context, ``max_num_seqs`` = 256).
    """
    per_token = 4 * model.hidden_size + 3 * model.intermediate_size // tp
    layer_peak = max_num_batched_tokens * per_token * model.dtype_bytes
    logits = max_num_seqs * model.vocab_size * 4
    return NON_TORCH_BYTES + layer_peak + logits


def kv_cache_bytes(
    model: ModelSpec | str,
    gpu: GPUSpec | str,
    gpu_memory_utilization: float = 0.9,
    tp: int = 1,
    activation_reserve_bytes: int | None = None,
) -> float:
    """Bytes of one GPU left for the KV cache (the formula in the module doc).

    Raises ValueError when the weights and reserve alone exceed the budget,
    naming the numbers so the caller can raise ``tp`` or the utilisation.
    """
    model, gpu = get_model(model), get_gpu(gpu)
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if activation_reserve_bytes is None:
        activation_reserve_bytes = default_activation_reserve(model, tp)
    if activation_reserve_bytes < 0:
        raise ValueError("activation_reserve_bytes must be >= 0")
    budget = gpu.memory_bytes * gpu_memory_utilization
    weights = weight_bytes(model, tp)
    free = budget - weights - activation_reserve_bytes
    if free <= 0:
        raise ValueError(
            f"{model.name} does not fit on {gpu.name} with tp={tp}: weights need "
            f"{weights / 1e9:.2f} GB and the activation reserve "
            f"{activation_reserve_bytes / 1e9:.2f} GB per GPU, but only "
            f"{budget / 1e9:.2f} GB ({gpu_memory_utilization:g} of {gpu.memory_bytes / 1e9:.2f} GB) "
            f"may be used; raise tp or gpu_memory_utilization")
    return free


def kv_cache_blocks(
    model: ModelSpec | str,
    gpu: GPUSpec | str,
    block_size: int,
    gpu_memory_utilization: float = 0.9,
    tp: int = 1,
    activation_reserve_bytes: int | None = None,
) -> int:
    """Number of KV blocks of ``block_size`` tokens per GPU (vLLM's sizing).

    Every GPU of a tensor-parallel group holds the same number of blocks (its
    share of the heads of each token), so this is also the number of
    logical blocks the block manager has.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    model = get_model(model)
    free = kv_cache_bytes(model, gpu, gpu_memory_utilization, tp, activation_reserve_bytes)
    blocks = int(free // (block_size * kv_bytes_per_token(model, tp)))
    if blocks < 1:
        raise ValueError(f"{model.name} on {get_gpu(gpu).name}: {free / 1e6:.1f} MB left for "
                         f"the KV cache is less than one block of {block_size} tokens")
    return blocks


def kv_cache_tokens(
    model: ModelSpec | str,
    gpu: GPUSpec | str,
    block_size: int,
    gpu_memory_utilization: float = 0.9,
    tp: int = 1,
    activation_reserve_bytes: int | None = None,
) -> int:
    """Token slots of the cache: ``kv_cache_blocks(...) * block_size``."""
    return block_size * kv_cache_blocks(model, gpu, block_size, gpu_memory_utilization, tp,
                                        activation_reserve_bytes)
