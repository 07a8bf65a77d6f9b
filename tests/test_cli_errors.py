"""Every bad input to ``pagesim``: exit code 2, the option or file:line
named, nothing written."""
from __future__ import annotations

import os
import sys

import pytest

from pagesim import outputs
from pagesim.cli import main
from tests.clihelpers import AZURE, FAST, azure, listing, run  # noqa: F401 (azure: a fixture)


def test_too_long_error_names_file_and_line(tmp_path, azure, capsys):
    out = tmp_path / "run"
    before = listing(tmp_path)
    code, _, err = run(capsys, "replay", azure, "--max-model-len", 500, "--on-too-long", "error",
                       "--out", out, *FAST)
    assert code == 2
    assert f"{azure}, line 3: request of 920 tokens" in err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("extra,option", [
    (["--num-requests", "5"], "--num-requests"),
    (["--workload", "alpaca"], "--workload"),
    (["--system-prompt", "10"], "--system-prompt"),
    (["--few-shot", "one-shot"], "--few-shot"),
    (["--cv", "2"], "--cv"),
])
def test_synthetic_only_options_refused_with_a_trace(tmp_path, azure, capsys, extra, option):
    before = listing(tmp_path)
    code, _, err = run(capsys, "replay", azure, *extra, "--out", tmp_path / "o", *FAST)
    assert code == 2 and f"argument {option}:" in err
    assert listing(tmp_path) == before


def _garbage(tmp_path):
    path = tmp_path / "calib.json"
    path.write_text("{not json")
    return path


BAD = [
    (["--tp", "0"], "--tp"),
    (["--tp", "3"], "--tp"),                       # does not divide the heads
    (["--limit", "-1"], "--limit"),
    (["--limit", "0"], "--limit"),
    (["--rate", "0"], "--rate"),
    (["--rate", "-2"], "--rate"),
    (["--rate", "nan"], "--rate"),
    (["--num-requests", "0"], "--num-requests"),
    (["--max-model-len", "0"], "--max-model-len"),
    (["--preemption", "swap", "--scheduler", "v0", "--num-cpu-blocks", "0"], "--num-cpu-blocks"),
    (["--num-cpu-blocks", "8"], "--num-cpu-blocks"),  # recompute never uses them
    (["--preemption", "swap"], "--preemption"),     # v1 has no swap
    (["--seed", "-1"], "--seed"),
    (["--block-size", "0"], "--block-size"),
    (["--block-size", "257"], "--block-size"),
    (["--gpu-memory-utilization", "0"], "--gpu-memory-utilization"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
    (["--gpu-memory-utilization", "0.05"], "--gpu-memory-utilization"),  # weights do not fit
    (["--model", "gpt-5"], "--model"),
    (["--gpu", "tpu-v9"], "--gpu"),
    (["--watermark", "1"], "--watermark"),
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--max-num-batched-tokens", "-1"], "--max-num-batched-tokens"),
    (["--num-gpu-blocks", "0"], "--num-gpu-blocks"),
    (["--cv", "0"], "--cv"),
    (["--n", "0"], "--n"),
    (["--beam-width", "0"], "--beam-width"),
    (["--system-prompt", "-1"], "--system-prompt"),
    (["--sort"], "--sort"),                         # no trace to sort
    (["--format", "azure"], "--format"),
    (["--events", "--allocator", "orca-max"], "--events"),
    (["--out", ""], "--out"),
    (["no/such/trace.csv"], "trace"),
    (["--metric-percentiles", "0"], "--metric-percentiles"),
    (["--metric-percentiles", "50,x"], "--metric-percentiles"),
    (["--goodput", "ttft"], "--goodput"),
    (["--goodput", "itl:5"], "--goodput"),          # vllm's goodput SLOs: ttft, tpot, e2el
    (["--goodput", "ttft:-1"], "--goodput"),
    (["--timeline", "0"], "--timeline"),
]


@pytest.mark.parametrize("extra,option", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_option_exits_2_naming_it(tmp_path, capsys, monkeypatch, extra, option):
    monkeypatch.chdir(tmp_path)
    # the bad value last: a repeated option's last value is the one parsed (and checked)
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--out", "o", *FAST, *extra)
    assert code == 2, err
    assert f"argument {option}:" in err, err
    assert "Traceback" not in err and listing(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "below-file"])
def test_out_on_or_below_a_file(tmp_path, capsys, where):
    f = tmp_path / "f"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--out", out, *FAST)
    assert code == 2 and "argument --out:" in err and f.read_text() == "x"
    assert listing(tmp_path) == ["f"]


def test_out_in_unwritable_folder(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # os.access, not chmod: root (CI containers) may write anywhere
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: real(p, mode) and p != locked)
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--out", locked / "run", *FAST)
    assert code == 2 and f"argument --out: cannot write in {str(locked)!r}" in err
    assert listing(tmp_path) == ["locked"]


def test_garbage_cost_model_names_the_file(tmp_path, capsys):
    path = _garbage(tmp_path)
    code, _, err = run(capsys, "replay", "--cost-model", path, *FAST)
    assert code == 2 and "argument --cost-model:" in err and str(path) in err


@pytest.mark.parametrize("allocators", ["", " , ", "paged,nope", "paged,paged"])
def test_compare_bad_allocators(tmp_path, capsys, allocators):
    code, _, err = run(capsys, "compare", "--allocators", allocators, "--quiet",
                       "--out", tmp_path / "o")
    assert code == 2 and "argument --allocators:" in err
    assert listing(tmp_path) == []


def test_compare_refuses_the_gpu_executor(tmp_path, capsys):
    code, _, err = run(capsys, "compare", "--executor", "gpu", "--quiet", "--out", tmp_path / "o")
    assert code == 2 and "argument --executor: compare prices" in err


def test_gpu_executor_without_torch_gives_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    code, _, err = run(capsys, "replay", "--executor", "gpu", "--out", tmp_path / "o", *FAST)
    assert code == 2 and "argument --executor:" in err
    assert "pip install 'pagesim[gpu]'" in err and "Traceback" not in err
    assert listing(tmp_path) == []


def test_trace_error_names_file_line_and_field(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(AZURE + "2023-11-16 18:15:04.0000000,100000000000000000000000000000,1\n")
    code, _, err = run(capsys, "replay", path, "--out", tmp_path / "o", *FAST)
    assert code == 2
    assert f"{path}, line 7: ContextTokens is 1e+29, too large" in err
    assert listing(tmp_path) == ["t.csv"]


def test_events_without_out_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "replay", "--events", "--num-requests", 5, *FAST)
    assert code == 2 and "argument --events:" in err and out == ""


def test_help_exits_0(capsys):
    assert main(["replay", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


@pytest.mark.parametrize("extra,option", [(["--rate", "0"], "--rate"), (["--seed", "-1"], "--seed"),
                                          (["--max-model-len", "1"], "--max-model-len")])
def test_trace_stats_options_checked(azure, capsys, extra, option):
    code, _, err = run(capsys, "trace", "stats", azure, *extra)
    assert code == 2 and f"argument {option}:" in err


@pytest.mark.parametrize("vary", ["block-size", "block-size=", "rate=10,0"])
def test_compare_bad_vary(tmp_path, capsys, vary):
    code, _, err = run(capsys, "compare", "--num-requests", 5, "--vary", vary, "--quiet",
                       "--out", tmp_path / "o")
    assert code == 2 and "argument --vary:" in err, err
    assert listing(tmp_path) == []


def test_timeline_without_out_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--timeline", *FAST)
    assert code == 2 and "argument --timeline:" in err
    assert listing(tmp_path) == []
