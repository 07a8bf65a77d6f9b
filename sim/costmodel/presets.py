"""Model and GPU presets, and the sizes derived from them.

A cost model only needs a handful of numbers about the model (how many
weights are streamed per step, how many bytes of K/V one token occupies) and
the GPU (memory, bandwidths, peak FLOP/s). They live here as frozen
dataclasses with a dict registry, so that a run names ``"llama-3-8b"`` on
``"h100-80gb"`` instead of repeating figures.

Model figures are the HuggingFace ``config.json`` values of each checkpoint;
``num_params`` is the exact count of the released checkpoint (recomputed from
the architecture, see ``tests/test_costmodel.py``). GPU figures are NVIDIA
datasheet values, except ``memory_bytes``, which is the capacity NVML reports
(``nvidia-smi``): that is what vLLM sizes its cache from, and it differs from
the marketing "GB" by ~7%.
"""
from __future__ import annotations

from pagesim.sim.costmodel.specs import KV_CACHE_DTYPES, GiB, GPUSpec, MiB, ModelSpec
from pagesim.sim.costmodel.spec_files import gpu_from_file, is_spec_file, model_from_hf_config

__all__ = ["KV_CACHE_DTYPES", "GiB", "MiB", "GPUSpec", "ModelSpec"]  # re-exported from specs


def _models() -> dict[str, ModelSpec]:
    specs = [
        # huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
        ModelSpec("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 8192, True),
        # huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
        ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 6_738_415_616, 4096, True),
        # huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json
        ModelSpec("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, 13_015_864_320, 4096, True),
        # huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
        # (max_position_embeddings 32768; attention uses a 4096-token sliding
        # window, which this simulator does not model: every token is kept)
        ModelSpec("mistral-7b", 32, 4096, 32, 8, 128, 14336, 32000, 7_241_732_096, 32768, True),
        # huggingface.co/facebook/opt-13b/blob/main/config.json (ffn_dim 20480,
        # tied lm_head, learned positions; the vLLM paper's Figure 2 model)
        ModelSpec("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, 12_853_473_280, 2048, False),
        # huggingface.co/facebook/opt-66b/blob/main/config.json
        ModelSpec("opt-66b", 64, 9216, 72, 72, 128, 36864, 50272, 65_719_701_504, 2048, False),
        # OPT paper (Zhang et al. 2022, arXiv:2205.01068) Table 1: 96 layers,
        # 96 heads, d_model 12288; not on the HF hub, same layout as opt-66b
        ModelSpec("opt-175b", 96, 12288, 96, 96, 128, 49152, 50272, 174_604_468_224, 2048, False),
        # Test model for the GPU harness on CPU: Llama layout, untied. Params:
        # 2 * (64*64*2 + 64*32*2 + 3*64*128 + 2*64) + 2*256*64 + 64 = 106816
        ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 256, 106_816, 512, True),
    ]
    return {s.name: s for s in specs}


def _gpus() -> dict[str, GPUSpec]:
    # memory_bytes: NVML totals as tabulated in
    # thundergolfer.com/blog/nvidia-gpu-memory-capacity (nvidia-smi output).
    # PCIe/NVLink datasheet figures are bidirectional; one direction is half.
    specs = [
        # A100 datasheet (nvidia.com/.../a100-80gb-datasheet): SXM4 40GB
        # 1,555 GB/s, BF16 312 TFLOPS dense, PCIe Gen4 64 GB/s, NVLink 600 GB/s
        GPUSpec("a100-40gb", 40_960 * MiB, 1.555e12, 312e12, 32e9, 300e9),
        # A100 datasheet: SXM4 80GB 2,039 GB/s, otherwise as the 40GB part
        GPUSpec("a100-80gb", 81_920 * MiB, 2.039e12, 312e12, 32e9, 300e9),
        # H100 datasheet (nvidia.com/.../h100): SXM5 3.35 TB/s, BF16 989 TFLOPS
        # dense (1,979 with sparsity), PCIe Gen5 128 GB/s, NVLink 900 GB/s
        GPUSpec("h100-80gb", 81_559 * MiB, 3.35e12, 989e12, 64e9, 450e9),
        # H200 datasheet (nvidia.com/.../h200): 141 GB HBM3e at 4.8 TB/s, same
        # Hopper compute and links as H100 SXM
        GPUSpec("h200", 143_771 * MiB, 4.8e12, 989e12, 64e9, 450e9),
    ]
    return {s.name: s for s in specs}


MODELS: dict[str, ModelSpec] = _models()
GPUS: dict[str, GPUSpec] = _gpus()


def _lookup(registry: dict, kind: str, name: str):
    spec = registry.get(str(name).strip().lower())
    if spec is None:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry))}")
    return spec


def get_model(name: str | ModelSpec) -> ModelSpec:
    """Registry lookup, case-insensitive; a ModelSpec passes through; a
    path (``.json``, or an existing file) is read as a HuggingFace config."""
    if isinstance(name, ModelSpec):
        return name
    if str(name).strip().lower() not in MODELS and is_spec_file(name):
        return model_from_hf_config(name)
    return _lookup(MODELS, "model", name)


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Registry lookup, case-insensitive; a GPUSpec passes through; a path
    (``.json``/``.yaml``/``.toml``, or an existing file) is a GPU spec file."""
    if isinstance(name, GPUSpec):
        return name
    if str(name).strip().lower() not in GPUS and is_spec_file(name):
        return gpu_from_file(name)
    return _lookup(GPUS, "gpu", name)


def _check_tp(model: ModelSpec, tp: int) -> None:
    """vLLM's rule: query heads split evenly; KV heads either split evenly or,
    when there are fewer KV heads than GPUs, each is replicated evenly."""
    if tp < 1 or model.num_heads % tp:
        raise ValueError(f"tp={tp} must be >= 1 and divide {model.name}'s "
                         f"{model.num_heads} query heads")
    kv = model.num_kv_heads
    if kv % tp and tp % kv:
        raise ValueError(f"tp={tp} and {model.name}'s {kv} KV heads: one must divide the other")


def kv_heads_per_gpu(model: ModelSpec, tp: int = 1) -> int:
    """KV heads each GPU stores: split across GPUs, at least one (replicated)."""
    _check_tp(model, tp)
    return max(1, model.num_kv_heads // tp)


def kv_bytes_per_token(model: ModelSpec, tp: int = 1) -> int:
    """Bytes of K and V one token occupies on one GPU, all layers."""
    return 2 * model.num_layers * kv_heads_per_gpu(model, tp) * model.head_dim * model.kv_dtype_bytes


def weight_bytes(model: ModelSpec, tp: int = 1) -> float:
    """Bytes of weights resident on one GPU (everything sharded by tp)."""
    _check_tp(model, tp)
    return model.num_params * model.dtype_bytes / tp


def layer_matmul_params(model: ModelSpec) -> int:
    """Weights of the matrix multiplies of one layer (Q, K, V, O and the MLP).

    Biases and norms are left out: they are <0.1% of the bytes and FLOPs.
    """
    h = model.hidden_size
    q = model.num_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    mlp = (3 if model.gated_mlp else 2) * h * model.intermediate_size
    return 2 * h * q + 2 * h * kv + mlp


def streamed_params(model: ModelSpec) -> int:
    """Weights every forward pass reads from HBM: all layers plus lm_head.

    The input embedding is a row lookup (a few KB per token), so an untied
    embedding table is resident but not streamed; this is why a Llama-3-8B
    decode step reads ~15.0 GB, not the 16.06 GB of its checkpoint.
    """
    return model.num_layers * layer_matmul_params(model) + model.vocab_size * model.hidden_size
