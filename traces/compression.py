"""Compressed trace files, recognised by their first bytes, not their name.

Published traces often ship gzip-compressed (``.csv.gz``, ``.jsonl.gz``) and
get renamed on the way; reading one as text gives a baffling "unrecognised
header". gzip, bzip2 and xz are read transparently (the standard library
has them); zstd and zip are named in a clear error.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path
from typing import BinaryIO

from pagesim.traces.errors import TraceError

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"))
_OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
_HINTS = {"zstd": "zstd -d FILE", "zip": "unzip FILE"}


def compression(path: str | Path) -> str | None:
    """``"gzip"``, ``"bz2"``, ``"xz"``, ``"zstd"``, ``"zip"`` or None (plain)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def readable_compression(path: str | Path) -> str | None:
    """The compression of a file this package can read (None: plain);
    TraceError for one it cannot."""
    kind = compression(path)
    if kind in _HINTS:
        raise TraceError(path, None, f"the file is {kind}-compressed, which pagesim does not "
                         f"read; decompress it first ({_HINTS[kind]})")
    return kind


def open_binary(path: str | Path) -> BinaryIO:
    """The file's bytes, decompressed if it is gzip, bzip2 or xz."""
    kind = readable_compression(path)
    return open(path, "rb") if kind is None else _OPENERS[kind](path, "rb")
