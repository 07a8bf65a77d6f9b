"""Readers of JSON-lines traces: Mooncake and token-id traces.

JSON has to be decoded line by line anyway (and a syntax error must name its
line), so records are collected into columns in one pass and the columns are
then checked with the same vectorised checks as CSV files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pagesim.traces import canonical
from pagesim.traces import validate as v
from pagesim.traces.canonical import Table
from pagesim.traces.compression import open_binary
from pagesim.traces.errors import TraceError
from pagesim.traces.pages import token_block_hashes

MOONCAKE_BLOCK = 512     # tokens per Mooncake hash id
TOKEN_HASH_BLOCK = 16    # block size for hashing real token ids (vLLM's default)
_ABSENT = object()


def read_records(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, list], np.ndarray]:
    """Columns of the given keys (``_ABSENT`` where a record lacks one) and
    the line of each record. Blank lines are skipped but counted."""
    cols: dict[str, list] = {k: [] for k in keys}
    lines = []
    with open_binary(path) as f:
        for number, raw in _numbered(path, f):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise TraceError(path, number, f"JSON syntax error: {exc.msg} "
                                               f"(column {exc.colno})") from None
            except UnicodeDecodeError:
                raise TraceError(path, number, "not UTF-8 text") from None
            if not isinstance(record, dict):
                raise TraceError(path, number, "expected a JSON object, got "
                                               f"{type(record).__name__}")
            for k in keys:
                cols[k].append(record.get(k, _ABSENT))
            lines.append(number)
    if not lines:
        raise TraceError(path, None, "empty file")
    return cols, np.asarray(lines)


def _numbered(path, f):
    """Lines numbered from 1; a damaged compressed file names the line where
    decompression failed."""
    number = 0
    try:
        for number, raw in enumerate(f, 1):
            yield number, raw
    except (EOFError, OSError) as exc:
        raise TraceError(path, number + 1, f"cannot decompress ({exc})") from None


def _series(values: list) -> pd.Series:
    return pd.Series([None if x is _ABSENT else x for x in values], dtype=object)


def _numbers(values: list, name: str, minimum: int):
    """A token count per record (see ``validate.counts``)."""
    return v.counts(_series(values), name, minimum)


def _id_lists(values: list, name: str, required: bool):
    """Tuples of non-negative ints (or None where absent and allowed)."""
    out = np.empty(len(values), dtype=object)
    for row, cell in enumerate(values):
        if cell is _ABSENT or cell is None:
            if required:
                return out, (row, f"missing {name}")
            out[row] = None
            continue
        if not isinstance(cell, list):
            return out, (row, f"{name} is not a list ({str(cell)[:40]})")
        got = canonical.tuple_cell(cell, 0)
        if isinstance(got, str):
            return out, (row, f"{name} {got}")
        out[row] = got
    return out, None


def read_mooncake(path: Path) -> Table:
    """Mooncake: timestamp (ms from trace start), input_length,
    output_length, hash_ids (chained ids of 512-token blocks; exactly
    ceil(input_length / 512) of them, the last possibly partial)."""
    cols, lines = read_records(path, ("timestamp", "input_length", "output_length",
                                      "hash_ids"))
    ms, i0 = v.times(_series(cols["timestamp"]), "timestamp", scale=1e3)
    prompt, i1 = _numbers(cols["input_length"], "input_length", 1)
    output, i2 = _numbers(cols["output_length"], "output_length", 0)
    hashes, i3 = _id_lists(cols["hash_ids"], "hash_ids", required=False)
    v.raise_issue(v.earliest(i0, i1, i2, i3), path, lines)
    count = np.fromiter((-1 if h is None else len(h) for h in hashes), np.int64, len(hashes))
    size = pd.Series(np.full(len(hashes), MOONCAKE_BLOCK))
    # Mooncake ids cover the input only, so prompt + output is no excuse here.
    mismatch = canonical.hash_count_issue(count, size, prompt, np.zeros_like(prompt),
                                          label="hash_ids")
    if mismatch is not None:
        row = mismatch[0]
        mismatch = (row, f"hash_ids has {count[row]} ids but input_length {prompt[row]} "
                         f"needs ceil({prompt[row]}/{MOONCAKE_BLOCK}) = "
                         f"{-(-prompt[row] // MOONCAKE_BLOCK)}")
    v.raise_issue(mismatch, path, lines)
    has = (count >= 0).tolist()
    size_col = (MOONCAKE_BLOCK if all(has) else
                pd.array([MOONCAKE_BLOCK if h else None for h in has], dtype="Int64"))
    frame = canonical.make_frame(ms / 1000.0, prompt, output, block_hashes=hashes,
                                 hash_block_size=size_col)
    return Table(frame, lines, str(path), "mooncake", "timestamp",
                 np.asarray(cols["timestamp"], dtype=object))


def read_tokens(path: Path) -> Table:
    """Token-id JSONL: arrival_time_ns, input_toks, output_toks,
    input_tok_ids, output_tok_ids (optional). Prefix sharing comes from the
    real ids: they are hashed into chained 16-token blocks over the prompt
    and, when known, the output. Arrivals are seconds after the earliest."""
    cols, lines = read_records(path, ("arrival_time_ns", "input_toks", "output_toks",
                                      "input_tok_ids", "output_tok_ids"))
    ns, i0 = v.number_column(_series(cols["arrival_time_ns"]), "arrival_time_ns",
                             maximum=float(2**63 - 1024), why=" (an int64 of nanoseconds)")
    prompt, i1 = _numbers(cols["input_toks"], "input_toks", 1)
    output, i2 = _numbers(cols["output_toks"], "output_toks", 0)
    pids, i3 = _id_lists(cols["input_tok_ids"], "input_tok_ids", required=True)
    oids, i4 = _id_lists(cols["output_tok_ids"], "output_tok_ids", required=False)
    v.raise_issue(v.earliest(i0, i1, i2, i3, i4), path, lines)
    issues = []
    for ids, want, name, count_name in ((pids, prompt, "input_tok_ids", "input_toks"),
                                        (oids, output, "output_tok_ids", "output_toks")):
        got = np.fromiter((-1 if t is None else len(t) for t in ids), np.int64, len(ids))
        row = v.first_row((got >= 0) & (got != want))
        if row is not None:
            issues.append((row, f"{name} has {got[row]} ids but {count_name} is {want[row]}"))
    v.raise_issue(v.earliest(*issues), path, lines)
    exact = _exact_ns(cols["arrival_time_ns"], ns)
    streams = [p if o is None else p + o for p, o in zip(pids, oids)]
    frame = canonical.make_frame(
        (exact - exact.min()) / 1e9, prompt, output, prompt_token_ids=pids,
        output_token_ids=oids, block_hashes=token_block_hashes(streams, TOKEN_HASH_BLOCK),
        hash_block_size=TOKEN_HASH_BLOCK)
    return Table(frame, lines, str(path), "tokens", "arrival_time_ns", exact,
                 meta={"time_origin_ns": int(exact.min())})


def _exact_ns(raw: list, approx: np.ndarray) -> np.ndarray:
    """Epoch nanoseconds exceed float64's 53 bits; keep integers exact."""
    if all(isinstance(x, int) for x in raw):
        return np.asarray(raw, dtype=np.int64)
    return approx.astype(np.int64)
