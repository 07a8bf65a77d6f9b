"""Readers of the CSV-family trace formats, the canonical files, and format
detection.

Each reader returns a ``canonical.Table``: canonical columns in file order
plus the file line of every row, or raises ``TraceError`` at the first bad
row. Whole columns are parsed and checked at once with pandas/numpy.
"""
from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pagesim.traces import canonical
from pagesim.traces import validate as v
from pagesim.traces.canonical import Table
from pagesim.traces.compression import open_binary, readable_compression
from pagesim.traces.errors import TraceError

AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"   # pandas' %f takes 7 digits too
#: A float that pandas' fast ("high") parser rounds to its neighbour.
_HARD_FLOAT = "3.1138546225766286e-06"


@functools.cache
def exact_floats() -> dict:
    """``read_csv`` options that parse floats exactly, as canonical CSVs
    must round-trip. Recent pandas do by default and deprecate asking
    (3.1); older ones must be asked for "round_trip". A version test chose
    wrong on the H200 machine's pandas (this value came back one ulp off),
    so ask the parser itself, once, on a value it would get wrong."""
    default = pd.read_csv(io.StringIO(f"x\n{_HARD_FLOAT}\n"))["x"].iloc[0]
    return {} if default == float(_HARD_FLOAT) else {"float_precision": "round_trip"}


def first_line(path: Path) -> tuple[int, str]:
    """The first non-blank line and its number; TraceError for an empty file."""
    try:
        with open_binary(path) as f:
            for number, raw in enumerate(f, 1):
                text = raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
                if text:
                    return number, text
    except (EOFError, OSError) as exc:   # a truncated or damaged compressed file
        raise TraceError(path, None, f"cannot decompress ({exc})") from None
    raise TraceError(path, None, "empty file")


def detect_format(path: str | Path) -> str:
    """The format of a trace file, from its suffix and first line.

    ``.parquet`` is pagesim's own format; a JSON object on the first line is
    Mooncake (``hash_ids``/``input_length``) or token-id JSONL
    (``input_toks``); otherwise the CSV header decides.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return "pagesim"
    number, line = first_line(path)
    if line.startswith(canonical.CSV_MAGIC.strip()):
        return "pagesim"
    if line.startswith("{"):
        try:
            keys = set(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TraceError(path, number, f"JSON syntax error: {exc.msg} "
                                           f"(column {exc.colno})") from None
        if keys & {"input_toks", "input_tok_ids", "arrival_time_ns"}:
            return "tokens"
        if keys & {"input_length", "hash_ids"}:
            return "mooncake"
        raise TraceError(path, number, "unrecognised JSON record with keys "
                         f"{sorted(keys)}; expected Mooncake or token-id JSONL")
    cols = {c.strip() for c in line.split(",")}
    if cols & {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}:
        return "azure"
    if "arrived_at" in cols:
        return "vidur"
    if cols & {"num_prefill_tokens", "num_decode_tokens"}:
        return "lengths"
    if "arrival_s" in cols:
        return "pagesim"
    raise TraceError(path, number, f"unrecognised header {line[:80]!r}; pass the "
                     "format explicitly if this is a known trace format")


def read_csv(path: Path, skip: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A CSV as strings-or-numbers, with the file line of each data row.

    Blank lines are kept as empty rows (so that line numbers stay right) and
    reported, except at the end of the file.
    """
    first_line(path)
    try:
        frame = pd.read_csv(path, skiprows=skip, skip_blank_lines=False,
                            compression=readable_compression(path), **exact_floats())
    except pd.errors.EmptyDataError:
        raise TraceError(path, None, "empty file") from None
    except (UnicodeDecodeError, EOFError, OSError) as exc:   # binary or damaged
        raise TraceError(path, None, f"not a readable text file ({exc})") from None
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise TraceError(path, int(m[2]) + skip, f"expected {m[1]} fields, "
                             f"saw {m[3]}") from None
        raise TraceError(path, None, f"malformed CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = v.drop_trailing_blank(frame)
    if frame.empty:
        raise TraceError(path, None, "no requests: the file has a header but no rows")
    return frame, np.arange(len(frame)) + 2 + skip


def _columns(frame, lines, path, required) -> None:
    problem = v.missing_columns(list(frame.columns), required)
    if problem:
        raise TraceError(path, int(lines[0]) - 1, problem)
    v.raise_issue(v.blank_rows(frame[list(required)]), path, lines)


def _azure_times(raw: pd.Series) -> pd.Series:
    """Wall-clock times; 2023 files have 7 fractional digits and no zone,
    2024 files may add a UTC offset, which ISO8601 parsing handles."""
    times = pd.to_datetime(raw, format=AZURE_TIME_FORMAT, errors="coerce")
    if times.isna().sum() > raw.isna().sum():
        iso = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
        if iso.isna().sum() < times.isna().sum():
            times = iso.dt.tz_localize(None)
    return times


def read_azure(path: Path) -> Table:
    """Azure LLM inference trace 2023/2024: TIMESTAMP, ContextTokens,
    GeneratedTokens. Arrivals are seconds after the earliest timestamp."""
    frame, lines = read_csv(path)
    _columns(frame, lines, path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    raw = frame["TIMESTAMP"]
    times = _azure_times(raw)
    bad = v.first_row(times.isna().to_numpy())
    time_issue = None
    if bad is not None:
        time_issue = (bad, "missing TIMESTAMP" if pd.isna(raw.iloc[bad]) else
                      f"unparseable TIMESTAMP ({raw.iloc[bad]!r}; expected "
                      "YYYY-MM-DD HH:MM:SS.fffffff)")
    prompt, i1 = v.counts(frame["ContextTokens"], "ContextTokens", 1)
    output, i2 = v.counts(frame["GeneratedTokens"], "GeneratedTokens", 0)
    v.raise_issue(v.earliest(time_issue, i1, i2), path, lines)
    ns = times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    origin = int(ns.min())
    return Table(canonical.make_frame((ns - origin) / 1e9, prompt, output), lines,
                 str(path), "azure", "TIMESTAMP", raw.to_numpy(),
                 meta={"time_origin": str(pd.Timestamp(origin))})


def read_vidur(path: Path) -> Table:
    """Vidur/Splitwise: arrived_at (seconds), num_prefill_tokens,
    num_decode_tokens. Times are kept as given."""
    frame, lines = read_csv(path)
    _columns(frame, lines, path, ("arrived_at", "num_prefill_tokens", "num_decode_tokens"))
    arrival, i0 = v.times(frame["arrived_at"], "arrived_at")
    prompt, i1 = v.counts(frame["num_prefill_tokens"], "num_prefill_tokens", 1)
    output, i2 = v.counts(frame["num_decode_tokens"], "num_decode_tokens", 0)
    v.raise_issue(v.earliest(i0, i1, i2), path, lines)
    return Table(canonical.make_frame(arrival, prompt, output), lines, str(path),
                 "vidur", "arrived_at")


def read_lengths(path: Path) -> Table:
    """Length-only samples (num_prefill_tokens, num_decode_tokens, as used by
    Vidur and Sarathi). Arrival times are left at 0 and marked missing:
    ``load_trace`` needs an arrival process for them."""
    frame, lines = read_csv(path)
    _columns(frame, lines, path, ("num_prefill_tokens", "num_decode_tokens"))
    prompt, i1 = v.counts(frame["num_prefill_tokens"], "num_prefill_tokens", 1)
    output, i2 = v.counts(frame["num_decode_tokens"], "num_decode_tokens", 0)
    v.raise_issue(v.earliest(i1, i2), path, lines)
    return Table(canonical.make_frame(np.zeros(len(prompt)), prompt, output), lines,
                 str(path), "lengths", meta={"needs_arrival": True})


def read_canonical(path: Path) -> Table:
    """pagesim's own format, Parquet or CSV (see ``traces.canonical``)."""
    if path.suffix == ".parquet":
        frame, header = _read_parquet(path)
        lines, unit = np.arange(len(frame)) + 1, "row"
    else:
        number, line = first_line(path)
        header, skip = {}, 0
        if line.startswith(canonical.CSV_MAGIC.strip()):
            header, skip = _header(path, number, line[len(canonical.CSV_MAGIC.strip()):]), number
        frame, lines = read_csv(path, skip)
        unit = "line"
    frame, issue = canonical.check_frame(frame)
    if issue is not None and issue[0] < 0:
        raise TraceError(path, None if unit == "row" else int(lines[0]) - 1, issue[1])
    v.raise_issue(issue, path, lines, unit)
    return Table(frame, lines, str(path), "pagesim", unit=unit,
                 source=header.get("source", ""), meta=header.get("meta", {}))


def _header(path, number, text) -> dict:
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(path, number, f"JSON syntax error in the pagesim-trace "
                         f"header: {exc.msg} (column {exc.colno})") from None
    if not isinstance(header, dict):
        raise TraceError(path, number, "pagesim-trace header is not a JSON object")
    return header


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TraceError(path, None, f"not a readable Parquet file ({exc})") from None
    raw = (table.schema.metadata or {}).get(canonical.PARQUET_KEY)
    header = json.loads(raw) if raw else {}
    if table.num_rows == 0:
        raise TraceError(path, None, "no requests: the file has no rows")
    return table.to_pandas(), header
