"""Models and GPUs from files: ``--model path/to/config.json`` (a local
HuggingFace config) and ``--gpu path/to/spec.yaml`` (the ``GPUSpec`` fields).

A cost model needs the shape of the model, not its weights: the config's
``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``num_key_value_heads`` (default: the attention heads, as HuggingFace),
``intermediate_size`` (OPT: ``ffn_dim``), ``vocab_size``,
``max_position_embeddings``, ``head_dim`` (default ``hidden_size /
num_attention_heads``) and ``torch_dtype`` (or ``dtype``). The parameter
count is computed as the presets' counts are (``tests/test_costmodel.py``):
the matrices of every layer, norms, biases where the layout has them,
learned positions (OPT) and the embedding, counted twice unless
``tie_word_embeddings`` (HuggingFace's default: tied). Two layouts are
known: OPT-like (``model_type`` opt: LayerNorm with bias, biased linears,
2-matrix MLP, learned positions) and Llama-like (everything else: RMSNorm,
SwiGLU MLP, rotary positions; ``attention_bias`` and ``mlp_bias`` honoured,
Qwen2's q/k/v biases). A config the simulator cannot read (a field missing
or of the wrong kind) is refused naming the file and the field.

Files are read once per path and modification time.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import fields
from pathlib import Path

from pagesim.sim.costmodel.specs import GPUSpec, ModelSpec

SPEC_SUFFIXES = (".json", ".yaml", ".yml", ".toml")
#: Bytes per weight by ``torch_dtype``. A float32 checkpoint is served in 16
#: bits by vLLM's ``--dtype auto``, so it counts 2 bytes too.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 2, "float": 2}
#: Model types laid out as OPT (see the module doc).
OPT_LAYOUT = ("opt",)
#: Model types whose q, k and v projections carry biases whatever the config says.
QKV_BIAS = ("qwen2",)


def is_spec_file(name: str) -> bool:
    """Whether a ``--model``/``--gpu`` value names a file, not a preset."""
    return str(name).lower().endswith(SPEC_SUFFIXES) or Path(name).is_file()


def _stamp(path: str) -> tuple[str, int]:
    p = Path(path).expanduser().resolve()
    try:
        return str(p), p.stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None


def model_from_hf_config(path: str) -> ModelSpec:
    return _model(*_stamp(path))


def gpu_from_file(path: str) -> GPUSpec:
    return _gpu(*_stamp(path))


def loader(suffix: str):
    """(loads, its error type) for a file's suffix: JSON, TOML or YAML (any
    other suffix). The TOML and YAML parsers are imported when a file needs
    them: most commands read none, and loading them cost every start ~30 ms."""
    if suffix == ".json":
        return json.loads, json.JSONDecodeError
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        return tomllib.loads, tomllib.TOMLDecodeError
    import yaml
    return yaml.safe_load, yaml.YAMLError


def _read(path: str) -> dict:
    suffix = Path(path).suffix.lower()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    loads, error = loader(suffix if suffix in (".toml", ".yaml", ".yml") else ".json")
    try:
        data = loads(text)
    except error as exc:
        raise ValueError(f"{path}: not valid {suffix[1:].upper() or 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of fields at the top")
    return data


def _int(path: str, data: dict, key: str, default=None) -> int:
    value = data.get(key, default)
    if value is None:
        raise ValueError(f"{path}: field {key!r} is missing (a HuggingFace config.json needs it)")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{path}: field {key!r} must be a positive integer, got {value!r}")
    return value


@functools.lru_cache(maxsize=64)
def _model(path: str, _mtime: int) -> ModelSpec:
    c = _read(path)
    kind = str(c.get("model_type", "")).lower()
    opt = kind in OPT_LAYOUT
    h = _int(path, c, "hidden_size")
    layers = _int(path, c, "num_hidden_layers")
    heads = _int(path, c, "num_attention_heads")
    kv_heads = _int(path, c, "num_key_value_heads", heads)
    head_dim = _int(path, c, "head_dim", h // heads if h % heads == 0 else None)
    inter = _int(path, c, "ffn_dim" if opt else "intermediate_size")
    vocab = _int(path, c, "vocab_size")
    max_len = _int(path, c, "max_position_embeddings")
    dtype = c.get("torch_dtype", c.get("dtype", "bfloat16"))
    if str(dtype) not in DTYPE_BYTES:
        raise ValueError(f"{path}: field 'torch_dtype' is {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    q, kv = heads * head_dim, kv_heads * head_dim
    tied = c.get("tie_word_embeddings", True)
    if opt:
        per_layer = 2 * h * q + 2 * h * kv + 2 * h * inter       # matrices
        per_layer += q + 2 * kv + h + inter + h + 2 * 2 * h      # biases, two LayerNorms
        rest = 2 * h + (max_len + 2) * h                         # final LayerNorm, positions
    else:
        per_layer = 2 * h * q + 2 * h * kv + 3 * h * inter + 2 * h   # matrices, two RMSNorms
        if c.get("attention_bias", False):
            per_layer += q + 2 * kv + h
        elif kind in QKV_BIAS:
            per_layer += q + 2 * kv
        if c.get("mlp_bias", False):
            per_layer += 2 * inter + h
        rest = h                                                  # final RMSNorm
    params = layers * per_layer + rest + vocab * h * (1 if tied else 2)
    name = str(c.get("_name_or_path") or (Path(path).parent.name if Path(path).name == "config.json"
                                          else Path(path).stem)).lower()
    try:
        return ModelSpec(name, layers, h, heads, kv_heads, head_dim, inter, vocab, params, max_len,
                         gated_mlp=not opt, dtype_bytes=DTYPE_BYTES[str(dtype)])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


@functools.lru_cache(maxsize=64)
def _gpu(path: str, _mtime: int) -> GPUSpec:
    data = _read(path)
    names = [f.name for f in fields(GPUSpec)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{path}: unknown field {unknown[0]!r}; a GPU spec has "
                         f"{', '.join(names)}")
    values = {"name": str(data.get("name") or Path(path).stem).lower()}
    for name in names[1:]:
        if name not in data:
            raise ValueError(f"{path}: field {name!r} is missing ({GPUSpec.__dataclass_fields__[name].metadata['help']})")
        value = data[name]
        try:   # YAML reads 3.35e12 (no sign in the exponent) as a string
            number = float(str(value).replace("_", "")) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not number > 0 or number == float("inf"):
            raise ValueError(f"{path}: field {name!r} must be a positive number, got {value!r}")
        values[name] = int(number) if name == "memory_bytes" else number
    return GPUSpec(**values)
