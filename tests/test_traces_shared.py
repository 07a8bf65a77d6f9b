"""Readers on the real samples in ../shared/traces/raw (see its SOURCES.md).

Row counts and Mooncake's block counts are the ones SOURCES.md and the issue
state; the length means and burstiness are what this reader measured on the
same byte-identical files (recorded here so that a change shows up)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pagesim import traces
from pagesim.traces import load_trace

RAW = Path(__file__).resolve().parents[2] / "shared" / "traces" / "raw"

pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not RAW.is_dir(), reason=f"no shared traces at {RAW}")]


def raw(name: str) -> Path:
    path = RAW / name
    if not path.is_file():
        pytest.skip(f"{name} not in {RAW}")
    return path


@pytest.mark.parametrize("name, rows, prompt_mean, output_mean, cv", [
    ("AzureLLMInferenceTrace_conv.csv", 19_366, 1154.70, 211.13, 1.094),
    ("AzureLLMInferenceTrace_code.csv", 8_819, 2047.85, 27.88, 13.15),
])
def test_azure(name, rows, prompt_mean, output_mean, cv):
    t = load_trace(raw(name))  # its speed: bench/bench_traces.py
    assert len(t) == rows and t.meta["format"] == "azure"
    assert t.meta["time_origin"].startswith("2023-11-16 18:1")   # 18:15 to 19:14
    assert 3400 < t.duration_s < 3600
    s = traces.trace_stats(t)
    assert s["prompt_tokens"]["mean"] == pytest.approx(prompt_mean, abs=0.01)
    assert s["output_tokens"]["mean"] == pytest.approx(output_mean, abs=0.01)
    assert s["cv_of_gaps"] == pytest.approx(cv, abs=0.01)


def test_mooncake_conversation():
    t = load_trace(raw("conversation_trace.jsonl"))
    assert len(t) == 12_031 and t.meta["format"] == "mooncake"
    assert len(np.unique(t.arrival_s)) == 1_180          # ~3 s buckets
    reuse = traces.prefix_reuse(t)
    assert reuse["references"] == 288_500 and reuse["unique_blocks"] == 182_790
    assert reuse["reuse_ratio"] == pytest.approx(0.366, abs=0.0005)
    r = t[0]
    assert len(r.block_hashes) == -(-r.prompt_tokens // 512) and r.hash_block_size == 512
    assert len(r.page_keys(16)) == r.prompt_tokens // 16


@pytest.mark.parametrize("name, rows, max_total", [
    ("sharegpt_8k_filtered_stats_llama2_tokenizer.csv", 30_731, 8_192),
    ("arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", 28_257, 4_096),
    ("bwb_stats_llama2_tokenizer_filtered_v2.csv", 33_768, 4_096),
])
def test_length_samples(name, rows, max_total):
    t = load_trace(raw(name), arrival=5.0, seed=0)
    assert len(t) == rows and t.meta["format"] == "lengths"
    assert (t.prompt_tokens + t.output_tokens).max() <= max_total
    assert (len(t) - 1) / t.duration_s == pytest.approx(5.0, rel=0.03)


def test_length_limit_on_a_real_sample():
    with pytest.warns(traces.TraceWarning, match="rejected"):
        t = load_trace(raw("sharegpt_8k_filtered_stats_llama2_tokenizer.csv"),
                       arrival=5.0, max_model_len=4096)
    assert 0 < t.meta["too_long"] < 30_731 and len(t) == 30_731 - t.meta["too_long"]


def test_empirical_lengths_and_replayed_arrivals():
    lengths = raw("sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    azure = raw("AzureLLMInferenceTrace_conv.csv")
    t = traces.synthetic(str(lengths), num_requests=5000,
                         arrival=traces.Replay.from_trace(traces.load_trace(azure)), seed=1)
    assert t.prompt_tokens.mean() == pytest.approx(2340.03, rel=0.05)
    real = load_trace(azure).arrival_s[:5000]
    assert np.allclose(t.arrival_s, real)


def test_cli_stats_on_mooncake(capsys):
    from pagesim.trace_cli import main
    assert main(["trace", "stats", str(raw("conversation_trace.jsonl"))]) == 0
    out = capsys.readouterr().out
    assert "12,031" in out and "36.6% of 288,500 block references" in out
    assert "182,790 unique blocks of 512 tokens" in out
