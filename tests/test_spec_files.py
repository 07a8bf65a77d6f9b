"""``--model config.json`` and ``--gpu spec.yaml``: models and GPUs from
files, equal to the presets for the checkpoints the presets describe."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from pagesim.sim.costmodel import GPUS, MODELS, get_gpu, get_model, kv_cache_blocks
from tests.clihelpers import FAST, listing, run, strict_load

# The config.json files of the Hub checkpoints (fields the reader ignores kept,
# as a user's file has them).
LLAMA_3_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 128256}
LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "float16",
    "vocab_size": 32000}
OPT_13B = {
    "activation_function": "relu", "architectures": ["OPTForCausalLM"], "do_layer_norm_before": True,
    "ffn_dim": 20480, "hidden_size": 5120, "max_position_embeddings": 2048, "model_type": "opt",
    "num_attention_heads": 40, "num_hidden_layers": 40, "torch_dtype": "float16",
    "vocab_size": 50272, "word_embed_proj_dim": 5120}
H100_YAML = ("memory_bytes: 85_520_809_984\nmem_bandwidth: 3.35e12\nbf16_flops: 989e12\n"
             "pcie_bandwidth: 64e9\nnvlink_bandwidth: 450e9\n")


def _config(tmp_path, folder, data):
    path = tmp_path / folder / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("preset,data", [("llama-3-8b", LLAMA_3_8B), ("llama-2-7b", LLAMA_2_7B),
                                         ("opt-13b", OPT_13B)])
def test_hub_configs_give_the_presets(tmp_path, preset, data):
    spec = get_model(str(_config(tmp_path, preset.upper(), data)))
    assert spec.name == preset       # the folder's name, lower case
    assert spec == MODELS[preset]    # parameter count included


def test_name_or_path_names_the_model_and_head_dim_is_read(tmp_path):
    spec = get_model(str(_config(tmp_path, "m", {**LLAMA_3_8B, "_name_or_path": "Org/My-Model",
                                                "head_dim": 64})))
    assert spec.name == "org/my-model" and spec.head_dim == 64
    assert spec.num_params < MODELS["llama-3-8b"].num_params   # narrower q/k/v/o


@pytest.mark.parametrize("suffix,text", [
    ("yaml", H100_YAML),
    ("toml", H100_YAML.replace(": ", " = ")),
    ("json", json.dumps({"name": "h100", "memory_bytes": 85_520_809_984, "mem_bandwidth": 3.35e12,
                         "bf16_flops": 989e12, "pcie_bandwidth": 64e9, "nvlink_bandwidth": 450e9})),
])
def test_gpu_spec_files_give_the_preset(tmp_path, suffix, text):
    path = tmp_path / f"h100.{suffix}"
    path.write_text(text)
    assert replace(get_gpu(str(path)), name="h100-80gb") == GPUS["h100-80gb"]


def test_file_model_and_gpu_size_and_price_as_the_presets(tmp_path, capsys):
    model = _config(tmp_path, "llama", LLAMA_3_8B)
    gpu = tmp_path / "h100.yaml"
    gpu.write_text(H100_YAML)
    assert kv_cache_blocks(str(model), str(gpu), 16, 0.9) == kv_cache_blocks("llama-3-8b", "h100-80gb", 16, 0.9)
    common = ["--num-requests", 50, "--cost-model", "roofline", *FAST]
    assert run(capsys, "replay", "--out", tmp_path / "a", *common)[0] == 0
    assert run(capsys, "replay", "--model", model, "--gpu", gpu, "--out", tmp_path / "b", *common)[0] == 0
    for name in ("requests", "steps"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "b" / f"{name}.parquet"))
    config = strict_load(tmp_path / "b" / "summary.json")["config"]
    assert config["model"] == str(model.resolve()) and config["gpu"] == str(gpu.resolve())


@pytest.mark.parametrize("option,name,text,named", [
    ("--model", "config.json", {k: v for k, v in LLAMA_3_8B.items() if k != "num_hidden_layers"},
     "config.json: field 'num_hidden_layers' is missing"),
    ("--model", "config.json", {**LLAMA_3_8B, "hidden_size": "4096"},
     "config.json: field 'hidden_size' must be a positive integer"),
    ("--model", "config.json", {**LLAMA_3_8B, "torch_dtype": "int4"}, "field 'torch_dtype' is 'int4'"),
    ("--model", "config.json", {**LLAMA_3_8B, "num_key_value_heads": 5},
     "not a multiple of num_kv_heads 5"),
    ("--model", "config.json", "{not json", "config.json: not valid JSON"),
    ("--gpu", "gpu.yaml", "memory_bytes: 1e9\n", "gpu.yaml: field 'mem_bandwidth' is missing"),
    ("--gpu", "gpu.yaml", H100_YAML + "hbm: 3\n", "gpu.yaml: unknown field 'hbm'"),
    ("--gpu", "gpu.yaml", H100_YAML.replace("3.35e12", "fast"),
     "gpu.yaml: field 'mem_bandwidth' must be a positive number"),
    ("--gpu", "gone.yaml", None, "gone.yaml: cannot read"),
])
def test_bad_spec_file_names_file_and_field(tmp_path, capsys, option, name, text, named):
    path = tmp_path / name
    if text is not None:
        path.write_text(text if isinstance(text, str) else json.dumps(text))
    before = listing(tmp_path)
    code, _, err = run(capsys, "replay", option, path, "--out", tmp_path / "o", *FAST)
    assert code == 2 and f"argument {option}:" in err and named in err
    assert listing(tmp_path) == before
