"""``--config FILE`` (YAML, TOML, JSON, a run's summary.json): options kept
in a file, the command line overriding them, bad keys and values refused."""
from __future__ import annotations

import json
from dataclasses import fields

import pandas as pd
import pytest

from pagesim import options
from pagesim.cli import command_specs, parse_command
from pagesim.sim.config import SchedulerConfig

from tests.clihelpers import FAST, azure, listing, run, strict_load  # noqa: F401 (azure: a fixture)

SMALL = ["--num-requests", "60", "--rate", "30"]


def _tables_equal(a, b):
    for name in ("requests", "steps"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{name}.parquet"),
                                      pd.read_parquet(b / f"{name}.parquet"))


@pytest.mark.parametrize("source", ["whole", "block"])
def test_summary_json_reruns_exactly(tmp_path, capsys, source):
    a, b = tmp_path / "a", tmp_path / "b"
    code, _, err = run(capsys, "replay", *SMALL, "--block-size", 8, "--num-gpu-blocks", 600,
                       "--max-num-seqs", 16, "--victim", "most-blocks", "--seed", 3,
                       "--system-prompt", 64, "--goodput", "ttft:500", "--out", a, *FAST)
    assert code == 0, err
    summary = strict_load(a / "summary.json")
    assert summary["preemptions"] > 0    # a run where the options matter
    config = tmp_path / "config.json"
    config.write_text(json.dumps(summary if source == "whole" else summary["config"]))
    code, _, err = run(capsys, "replay", "--config", config, "--out", b, *FAST)
    assert code == 0, err
    _tables_equal(a, b)
    assert strict_load(b / "summary.json")["config"] == summary["config"]


def test_summary_of_a_trace_run_reruns_from_another_folder(tmp_path, azure, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    code, _, err = run(capsys, "replay", azure, "--max-model-len", 500, "--on-too-long",
                       "truncate", "--out", a, *FAST)
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "replay", "--config", a / "summary.json", "--out", b, *FAST)
    assert code == 0, err
    _tables_equal(a, b)


def test_command_line_overrides_the_file(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("block-size: 32\nnum_requests: 40\nscheduler:\n"
                                       "  max_num_seqs: 8\ngoodput: [ttft:500]\n")
    code, _, err = run(capsys, "replay", "--config", tmp_path / "run.yaml", "--block-size", 8,
                       "--out", tmp_path / "o", *FAST)
    assert code == 0, err
    s = strict_load(tmp_path / "o" / "summary.json")
    assert s["config"]["block_size"] == 8                    # the command line
    assert s["config"]["scheduler"]["max_num_seqs"] == 8     # the file
    assert s["requests"]["total"] == 40
    assert s["config"]["goodput"] == [["ttft", 500.0]]


def test_toml_for_compare_and_paths_next_to_the_file(tmp_path, azure, capsys, monkeypatch):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "azure.csv").write_text(azure.read_text())
    (folder / "c.toml").write_text('trace = "azure.csv"\nallocators = ["paged", "orca-max"]\n'
                                   "max_model_len = 2000\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "compare", "--config", folder / "c.toml", "--quiet")
    assert code == 0, err
    assert "orca-max" in out and "orca-pow2" not in out


@pytest.mark.parametrize("name,text,named", [
    ("bad.yaml", "block_size: 32\nblok_size: 4\n", "bad.yaml:2: key 'blok_size': unknown option"),
    ("bad.yaml", "scheduler:\n  max_num_seqs: 0\n", "bad.yaml:2: key 'scheduler.max_num_seqs': "
     "must be a positive integer"),
    ("bad.yaml", "chunked_prefill: maybe\n", "key 'chunked_prefill': expected true or false"),
    ("bad.yaml", "block_size: [1, 2\n", "bad.yaml: not valid YAML"),
    ("bad.yaml", "- 1\n- 2\n", "expected a mapping"),
    ("bad.toml", 'allocator = "foo"\n', "bad.toml: key 'allocator': invalid choice: 'foo'"),
    ("bad.json", '{"gpu_memory_utilization": 2}', "key 'gpu_memory_utilization': must be in (0, 1]"),
    ("bad.json", '{"trace": "missing.csv"}', "key 'trace': no such file"),
    ("bad.ini", "[x]\n", "config files are .yaml, .yml, .toml or .json"),
])
def test_bad_config_names_file_and_key(tmp_path, capsys, name, text, named):
    path = tmp_path / name
    path.write_text(text)
    before = listing(tmp_path)
    code, _, err = run(capsys, "replay", "--config", path, "--out", tmp_path / "o", *FAST)
    assert code == 2
    assert "argument --config:" in err and named in err
    assert listing(tmp_path) == before


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run(capsys, "replay", "--config", tmp_path / "none.yaml")
    assert code == 2 and "none.yaml: cannot read" in err


def test_scheduler_options_are_generated_from_the_dataclass():
    """Each SchedulerConfig field is one option, its default (parsed from an
    empty command line) the dataclass's and its check one the CLI knows (the
    metadata of sim/config.py)."""
    specs, args = command_specs("replay"), parse_command("replay", [])
    defaults = SchedulerConfig()
    for f in fields(SchedulerConfig):
        dest = f.metadata.get("cli", f.name)
        assert getattr(args, dest) == getattr(defaults, f.name), f"--{dest}: default differs from the dataclass"
        assert specs[dest].help, f"--{dest} has no help"
        if "check" in f.metadata:
            assert specs[dest].check is options.CHECKS[f.metadata["check"]]
