"""``pagesim replay`` / ``compare`` in-process: honest outputs (every
request a row, provenance, strict JSON, n/a hit rate, the sequence map, an
output folder written as a whole, Ctrl-C)."""
from __future__ import annotations

import hashlib
import json
import os
import sys

import pandas as pd

import pagesim
from pagesim import outputs
from pagesim.cli import main
from tests.childenv import with_checkout
from tests.clihelpers import AZURE, FAST, azure, listing, run, strict_load  # noqa: F401 (azure: a fixture)


def test_too_long_requests_are_rejected_rows(tmp_path, azure, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "replay", azure, "--max-model-len", 500, "--out", out, *FAST)
    assert code == 0, err
    req = pd.read_parquet(out / "requests.parquet")
    assert sorted(req["id"]) == [0, 1, 2, 3, 4]          # every row of the file
    reasons = req.set_index("id")["rejected"]
    assert reasons[[1, 3]].str.contains("longer than max_model_len").all()
    assert reasons[[0, 2, 4]].isna().all()
    assert not req["truncated"].any()
    summary = strict_load(out / "summary.json")
    assert summary["requests"]["rejected"] == 2 and summary["requests"]["total"] == 5
    assert "2 of 5 requests are longer than max_model_len 500" in err


def test_too_long_truncated_rows_are_marked(tmp_path, azure, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "replay", azure, "--max-model-len", 500, "--on-too-long",
                       "truncate", "--out", out, *FAST)
    assert code == 0, err
    req = pd.read_parquet(out / "requests.parquet").set_index("id")
    assert req["truncated"].tolist() == [False, True, False, True, False]
    assert (req["prompt_tokens"] + req["output_tokens"] <= 500).all()
    assert req["rejected"].isna().all() and req["finish_s"].notna().all()
    summary = strict_load(out / "summary.json")
    assert summary["requests"]["truncated"] == 2 and summary["requests"]["rejected"] == 0
    assert summary["provenance"]["trace"]["rows_truncated_at_load"] == 2


def test_scheduler_rejections_stay(tmp_path, azure, capsys):
    """A request that fits max_model_len but not the whole cache is still a
    rejected row, with the scheduler's reason."""
    out = tmp_path / "run"
    code, _, err = run(capsys, "replay", azure, "--num-gpu-blocks", 40, "--out", out, *FAST)
    assert code == 0, err
    req = pd.read_parquet(out / "requests.parquet").set_index("id")
    # 40 blocks of 16 tokens, block 0 the null block (vLLM V1, the default
    # profile): 920 tokens need 58 blocks, 650 need 41, of 39 usable
    assert req.loc[1, "rejected"] == "needs 58 KV blocks, the cache has 39 usable"
    assert req.loc[3, "rejected"] == "needs 41 KV blocks, the cache has 39 usable"
    assert strict_load(out / "summary.json")["requests"]["rejected"] == 2


def test_n_and_beam_width_apply_to_trace_requests(tmp_path, azure, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "replay", azure, "--n", 3, "--out", out, *FAST)
    assert code == 0, err
    req = pd.read_parquet(out / "requests.parquet")
    assert (req["n"] == 3).all() and (req["beam_width"] == 1).all()
    out2 = tmp_path / "run2"
    code, _, err = run(capsys, "replay", azure, "--beam-width", 2, "--scheduler", "v0",
                       "--out", out2, *FAST)
    assert code == 0, err
    assert (pd.read_parquet(out2 / "requests.parquet")["beam_width"] == 2).all()


def test_provenance_and_strict_json(tmp_path, azure, capsys):
    out = tmp_path / "run"
    argv = ["replay", str(azure), "--out", str(out), *FAST]
    assert main(argv) == 0
    text = (out / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    s = strict_load(out / "summary.json")
    p = s["provenance"]
    assert p["command"] == ["pagesim", *argv]
    assert p["pagesim_version"] == pagesim.__version__
    assert set(p["versions"]) >= {"python", "numpy", "pandas", "simpy"}
    t = p["trace"]
    assert t["sha256"] == hashlib.sha256(AZURE.encode()).hexdigest()
    assert t["size_bytes"] == len(AZURE.encode()) and t["path"] == str(azure.absolute())
    assert (t["rows_read"], t["rows_rejected_at_load"], t["rows_replayed"]) == (5, 0, 5)
    # request 4 has no output tokens: latency per output token has no value
    req = pd.read_parquet(out / "requests.parquet").set_index("id")
    assert pd.isna(req.loc[4, "normalized_latency_s_per_token"])


def test_strict_json_maps_non_finite_to_null():
    text = outputs.strict_json({"a": float("inf"), "b": [float("nan"), 1.5]})
    assert json.loads(text) == {"a": None, "b": [None, 1.5]}


def test_hit_rate_not_applicable_without_content_identity(tmp_path, azure, capsys):
    code, out, _ = run(capsys, "replay", azure, "--out", tmp_path / "a", *FAST)
    assert code == 0
    assert strict_load(tmp_path / "a" / "summary.json")["prefix_cache"]["hit_rate_tokens"] is None
    assert any(line.split() == ["prefix-cache", "hit", "rate", "n/a"] for line in out.splitlines())


def test_hit_rate_with_shared_prefixes_and_caching_off(tmp_path, capsys):
    base = ["replay", "--num-requests", 20, "--system-prompt", 64, *FAST]
    assert run(capsys, *base, "--out", tmp_path / "on")[0] == 0
    rate = strict_load(tmp_path / "on" / "summary.json")["prefix_cache"]["hit_rate_tokens"]
    assert rate is not None and rate > 0
    assert run(capsys, *base, "--no-prefix-caching", "--out", tmp_path / "off")[0] == 0
    off = strict_load(tmp_path / "off" / "summary.json")
    assert off["prefix_cache"]["hit_rate_tokens"] is None


def test_event_seq_ids_map_to_request_rows(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, "replay", "--num-requests", 12, "--n", 2, "--beam-width", 2,
                       "--scheduler", "v0", "--events", "--out", out, *FAST)
    assert code == 0, err
    events = pd.read_parquet(out / "events.parquet")
    seqs = pd.read_parquet(out / "sequences.parquet")
    req = pd.read_parquet(out / "requests.parquet")
    assert seqs["seq"].is_unique
    assert set(events["seq"].dropna()) <= set(seqs["seq"])
    assert set(seqs["request"]) == set(req["id"][req["rejected"].isna()])
    forked = seqs[seqs["parent"].notna()]
    assert len(forked) > 0
    parents = seqs.set_index("seq").loc[forked["parent"].astype(int)]
    assert (parents["request"].to_numpy() == forked["request"].to_numpy()).all()
    assert (events[events["kind"] == "fork"]["seq"].isin(forked["seq"])).all()


def test_existing_out_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, "replay", "--num-requests", 5, "--out", out, *FAST)[0] == 0
    first = listing(tmp_path)
    assert first == ["run", "run/report.html", "run/requests.parquet", "run/steps.parquet", "run/summary.json"]
    args = ["replay", "--num-requests", 7, "--out", out, "--table-format", "csv", *FAST]
    code, _, err = run(capsys, *args)
    assert code == 2 and "argument --out:" in err and "--overwrite" in err
    assert listing(tmp_path) == first
    assert run(capsys, *args, "--overwrite")[0] == 0     # replaced, not mixed
    assert listing(tmp_path) == ["run", "run/report.html", "run/requests.csv", "run/steps.csv", "run/summary.json"]
    assert strict_load(out / "summary.json")["requests"]["total"] == 7


def test_interrupted_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupted(result, folder, **kw):
        (folder / "requests.parquet").write_text("half")
        raise KeyboardInterrupt
    monkeypatch.setattr("pagesim.cli.write_replay", interrupted)
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--out", tmp_path / "run", *FAST)
    assert code == 130
    assert err.strip().splitlines()[-1] == "pagesim: interrupted; nothing written"
    assert "Traceback" not in err
    assert listing(tmp_path) == []


def test_ctrl_c_during_simulation(tmp_path, capsys, monkeypatch):
    from pagesim import cli

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_replay", interrupted)
    code, out, err = run(capsys, "replay", "--num-requests", 5, "--out", tmp_path / "run", *FAST)
    assert code == 130 and "Traceback" not in err and out == ""
    assert listing(tmp_path) == []


def test_compare_out_written_as_a_whole(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--num-requests", 5, "--allocators", "paged,orca-max", "--quiet",
            "--out", out]
    assert run(capsys, *args)[0] == 0
    assert listing(tmp_path) == ["cmp", "cmp/compare.csv", "cmp/compare.png", "cmp/provenance.json",
                                 "cmp/report.html"]
    assert strict_load(out / "provenance.json")["command"][1] == "compare"
    code, _, err = run(capsys, *args)
    assert code == 2 and "argument --out:" in err
    # every file compare writes is one of pagesim's own, so --overwrite replaces the folder
    vary = [*args[:5], "--vary", "block-size=8,16", "--num-gpu-blocks", 400, "--quiet", "--out", out]
    assert run(capsys, *vary, "--overwrite")[0] == 0
    assert listing(tmp_path) == ["cmp", "cmp/block_size.png", "cmp/compare.csv", "cmp/compare.png",
                                 "cmp/provenance.json", "cmp/report.html"]
    assert run(capsys, *vary, "--overwrite", "--no-plots", "--no-report")[0] == 0
    assert listing(tmp_path) == ["cmp", "cmp/compare.csv", "cmp/provenance.json"]


def test_sort_option_sorts_unsorted_trace(tmp_path, capsys):
    path = tmp_path / "v.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n2,50,5\n1,60,6\n3,70,7\n")
    code, _, err = run(capsys, "replay", path, *FAST)
    assert code == 2 and f"{path}, line 3: arrived_at out of order" in err and "--sort" in err
    code, _, err = run(capsys, "replay", path, "--sort", "--out", tmp_path / "o", *FAST)
    assert code == 0, err
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["id"].tolist() == [1, 0, 2]          # ids are file rows; stable by arrival
    assert strict_load(tmp_path / "o" / "summary.json")["provenance"]["trace"]["rows_sorted"] == 2


def test_sigint_mid_run_exits_130_with_one_line(tmp_path):
    """A real Ctrl-C (SIGINT) while the engine runs: exit 130, one line on
    stderr, no traceback, no output folder. The signal is sent once the run
    has announced itself; 50,000 requests keep it busy for many seconds."""
    import signal
    import subprocess
    env = {**os.environ, "PYTHONPATH": with_checkout()}
    # A job started in the background by a non-interactive shell (a CI
    # runner, `cmd &`) inherits SIGINT ignored, and Python then keeps it
    # ignored: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "pagesim", "replay", "--num-requests", "50000",
                             "--quiet", "--out", str(tmp_path / "run")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()
    assert first.startswith("replaying 50000 requests"), first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert err.strip() == "pagesim: interrupted; nothing written" and out == ""
    assert listing(tmp_path) == []


def test_overwrite_never_deletes_foreign_files(tmp_path, capsys, monkeypatch):
    """``--out . --overwrite`` in a working folder must not wipe it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--out", ".", "--overwrite", *FAST)
    assert code == 2 and "'notes.txt', which pagesim did not write" in err
    assert listing(tmp_path) == ["notes.txt"]


def test_failed_run_removes_the_folders_it_created(tmp_path, capsys, monkeypatch):
    def failing(result, folder, **kw):
        raise OSError("disk full")
    monkeypatch.setattr("pagesim.cli.write_replay", failing)
    code, _, err = run(capsys, "replay", "--num-requests", 5, "--out", tmp_path / "a" / "b" / "run",
                       *FAST)
    assert code == 2 and "disk full" in err
    assert listing(tmp_path) == []


def test_synthetic_workload_too_long_rejected_or_truncated_alike(tmp_path, capsys):
    base = ["replay", "--num-requests", 40, "--max-model-len", 300, *FAST]
    assert run(capsys, *base, "--out", tmp_path / "r")[0] == 0
    assert run(capsys, *base, "--on-too-long", "truncate", "--out", tmp_path / "t")[0] == 0
    rej = pd.read_parquet(tmp_path / "r" / "requests.parquet").set_index("id")
    tru = pd.read_parquet(tmp_path / "t" / "requests.parquet").set_index("id")
    too_long = rej["prompt_tokens"] + rej["output_tokens"] > 300
    assert 0 < too_long.sum() < 40
    assert (rej["rejected"].notna() == too_long).all()
    assert (tru["truncated"] == too_long).all() and tru["rejected"].isna().all()


def test_gzip_trace_replayed_and_hashed_as_stored(tmp_path, capsys):
    import gzip
    packed = tmp_path / "azure.csv.gz"
    packed.write_bytes(gzip.compress(AZURE.encode()))
    code, _, err = run(capsys, "replay", packed, "--out", tmp_path / "o", *FAST)
    assert code == 0, err
    t = strict_load(tmp_path / "o" / "summary.json")["provenance"]["trace"]
    assert t["format"] == "azure" and t["rows_read"] == 5
    assert t["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()


def test_git_commit_of_this_checkout_or_none(monkeypatch, tmp_path):
    import subprocess
    from pagesim import provenance
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = None
    got = provenance.git_commit()
    assert got is None if head is None else got.removesuffix("+dirty") == head
    monkeypatch.setattr(provenance.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError))
    assert provenance.git_commit() is None            # no git: no commit, no error
