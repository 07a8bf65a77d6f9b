"""Where a run's numbers came from, for ``summary.json``.

A summary read months later must say which file was replayed (path, size,
sha256: the same name may hold another file by then), how many of its rows
were read and set aside, the exact command, and the versions of the code
that ran, so that the run can be repeated or its difference explained.
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import simpy

import pagesim

_CHUNK = 1 << 20


def file_identity(path: str | Path) -> dict:
    """Path (absolute), size in bytes and sha256 of a file."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return {"path": str(path.absolute()), "size_bytes": path.stat().st_size,
            "sha256": digest.hexdigest()}


def git_commit() -> str | None:
    """The commit of the checkout pagesim runs from (None when not a git
    checkout, git is missing, or anything else fails), with ``+dirty`` when
    tracked files differ from it."""
    root = Path(pagesim.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        return None   # installed: site-packages may lie inside some other repository
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if Path(top).resolve() != root:
            return None
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def versions() -> dict:
    return {"pagesim": pagesim.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "pandas": pd.__version__, "simpy": simpy.__version__}


def provenance(argv: list[str], trace: dict | None) -> dict:
    """The ``provenance`` block of ``summary.json``.

    ``trace`` is None for a synthetic workload, else a dict with the file's
    identity (``file_identity``) and counts (``rows_read``,
    ``rows_rejected_at_load``, ...) from the caller, who knows the policies.
    """
    return {
        "command": ["pagesim", *argv],
        "pagesim_version": pagesim.__version__,
        "git_commit": git_commit(),
        "versions": versions(),
        "executable": sys.executable,
        "trace": trace,
    }
