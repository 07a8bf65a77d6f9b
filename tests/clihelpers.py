"""Helpers of the CLI tests: run ``pagesim`` in-process, list what it wrote."""
from __future__ import annotations

import json

import pytest

from pagesim.cli import main

FAST = ["--quiet", "--no-plots"]
AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:15:00.0000000,100,10\n"
         "2023-11-16 18:15:00.5000000,900,20\n"      # line 3: 920 tokens
         "2023-11-16 18:15:01.0000000,300,30\n"
         "2023-11-16 18:15:02.0000000,50,600\n"      # line 5: 650 tokens
         "2023-11-16 18:15:03.0000000,200,0\n")      # no output tokens


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def azure(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(AZURE)
    return path


def strict_load(path):
    def refuse(token):
        raise AssertionError(f"non-strict JSON constant {token} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)
