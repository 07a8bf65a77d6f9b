"""``pagesim trace stats`` on small files, through the hook the main CLI uses."""
from __future__ import annotations

import argparse
import json
import re

from pagesim import traces
from pagesim.trace_cli import add_subcommands, main

AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:15:00.0000000,100,10\n"
         "2023-11-16 18:15:01.0000000,300,30\n"
         "2023-11-16 18:15:03.0000000,200,20\n")


def test_hook_registers_trace_stats(tmp_path):
    parser = argparse.ArgumentParser(prog="pagesim")
    add_subcommands(parser.add_subparsers(dest="command"))
    path = tmp_path / "a.csv"
    path.write_text(AZURE)
    args = parser.parse_args(["trace", "stats", str(path), "--format", "azure"])
    assert args.func(args) == 0


def test_stats_text(tmp_path, capsys):
    path = tmp_path / "a.csv"
    path.write_text(AZURE)
    assert main(["trace", "stats", str(path)]) == 0
    out = capsys.readouterr().out
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert rows["trace"] == f"{path} (azure)"
    assert rows["requests"] == "3"
    assert rows["duration"] == "3.0 s"
    assert rows["arrival rate"] == "0.667 requests/s"      # 1 / mean gap
    assert rows["burstiness"] == "CV of gaps 0.333"
    assert rows["prompt tokens"] == "mean 200.00  p50 200  p99 298"
    assert rows["output tokens"] == "mean 20.00  p50 20  p99 30"
    assert "prefix reuse" not in rows


def test_stats_json_with_hashes(tmp_path, capsys):
    t = traces.synthetic("fixed:64:8", num_requests=4, rate=1.0, system_prompt_tokens=32)
    t.save(tmp_path / "s.parquet")
    assert main(["trace", "stats", str(tmp_path / "s.parquet"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    # 4 requests x 6 blocks of 16 (96 tokens); the 2 system-prompt blocks repeat.
    assert stats["prefix_reuse"]["references"] == 24
    assert stats["prefix_reuse"]["unique_blocks"] == 18


def test_length_file_with_and_without_rate(tmp_path, capsys):
    path = tmp_path / "l.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,1\n20,2\n30,3\n")
    assert main(["trace", "stats", str(path)]) == 0
    assert "none in the file (pass --rate R)" in capsys.readouterr().out
    assert main(["trace", "stats", str(path), "--rate", "4"]) == 0
    assert "arrival rate" in capsys.readouterr().out


def test_bad_file_exits_2_with_the_error(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text(AZURE + "2023-11-16 18:15:04.0000000,-3,1\n")
    assert main(["trace", "stats", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}, line 5: negative ContextTokens (-3)")
