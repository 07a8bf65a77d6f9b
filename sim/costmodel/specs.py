"""The two spec dataclasses: a model's shape and a GPU's figures.

Presets of both are in ``presets.py``; ``spec_files.py`` reads them from a
HuggingFace ``config.json`` or a small GPU spec file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: vLLM's --kv-cache-dtype choices (fp8 is fp8_e4m3 on CUDA; each is one byte).
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")

MiB = 1 << 20
GiB = 1 << 30


def _help(text: str, **kw):
    """A dataclass field carrying help text (shown by CLIs and docs)."""
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a decoder-only transformer, as far as time and memory go."""

    name: str = _help("registry name, lower case")
    num_layers: int = _help("decoder layers")
    hidden_size: int = _help("residual stream width")
    num_heads: int = _help("query heads")
    num_kv_heads: int = _help("key/value heads (< num_heads for GQA)")
    head_dim: int = _help("width of one attention head")
    intermediate_size: int = _help("MLP inner width (ffn_dim for OPT)")
    vocab_size: int = _help("output vocabulary (lm_head rows)")
    num_params: int = _help("total parameters of the checkpoint, embeddings included")
    max_model_len: int = _help("longest context the model was trained for")
    gated_mlp: bool = _help("SwiGLU MLP with 3 matrices (Llama); False: 2 (OPT)")
    dtype_bytes: int = _help("bytes per weight and per K/V element (2: bf16/fp16)", default=2)
    kv_cache_dtype: str = _help("K/V element type, as vLLM's --kv-cache-dtype: auto (the model's "
                                "dtype) or an fp8 type (1 byte)", default="auto")

    @property
    def kv_dtype_bytes(self) -> int:
        """Bytes of one K or V element: fp8 caches store one byte whatever
        the weights' dtype (vLLM quantizes K/V as they are written)."""
        return 1 if self.kv_cache_dtype.startswith("fp8") else self.dtype_bytes

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size", "num_params", "max_model_len",
                     "dtype_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelSpec {self.name!r}: {name} must be positive")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"ModelSpec {self.name!r}: kv_cache_dtype must be one of "
                             f"{', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelSpec {self.name!r}: num_heads {self.num_heads} is not a "
                             f"multiple of num_kv_heads {self.num_kv_heads}")


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """One accelerator. Bandwidths in bytes/s, one direction."""

    name: str = _help("registry name, lower case")
    memory_bytes: int = _help("device memory as NVML reports it")
    mem_bandwidth: float = _help("HBM bandwidth, datasheet (bytes/s)")
    bf16_flops: float = _help("dense BF16 tensor-core peak, datasheet (FLOP/s)")
    pcie_bandwidth: float = _help("host<->device, one direction (bytes/s)")
    nvlink_bandwidth: float = _help("GPU<->GPU NVLink, one direction (bytes/s)")

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "mem_bandwidth", "bf16_flops", "pcie_bandwidth",
                     "nvlink_bandwidth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPUSpec {self.name!r}: {name} must be positive")
