"""pagesim's own trace format: the canonical columns, checked, in CSV or Parquet.

One row per ``Request``, columns named as its fields. Optional tuples
(token ids, block hashes) are Parquet ``list<int64>`` columns, or JSON lists
such as ``[3,1,4]`` in CSV; an empty cell is ``None``. ``source`` and ``meta``
travel in the Parquet schema metadata (key ``pagesim``), or in CSV as a
first line ``# pagesim-trace {"source": ..., "meta": {...}}``. Floats are
written in their shortest round-trip form, so both files round-trip exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pagesim.traces import validate as v

COLUMNS = ("id", "arrival_s", "prompt_tokens", "output_tokens",
           "prompt_token_ids", "output_token_ids", "block_hashes",
           "hash_block_size", "n", "beam_width", "priority", "session_id")
TUPLE_COLUMNS = ("prompt_token_ids", "output_token_ids", "block_hashes")
NULLABLE_INT = ("hash_block_size", "session_id")
REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens")
CSV_MAGIC = "# pagesim-trace "
PARQUET_KEY = b"pagesim"
_MAX_ID = (1 << 63) - 1


@dataclass(slots=True)
class Table:
    """Canonical columns as read from a file, before the order and length
    policies of ``load_trace`` are applied. ``lines[i]`` is the file line (or
    Parquet row) of frame row ``i``, for error messages."""

    frame: pd.DataFrame
    lines: np.ndarray
    path: str
    fmt: str
    time_label: str = "arrival_s"
    time_shown: object = None         # original time values, for messages
    unit: str = "line"
    source: str = ""
    meta: dict = field(default_factory=dict)


def make_frame(arrival_s, prompt_tokens, output_tokens, *, ids=None,
               **optional) -> pd.DataFrame:
    """A canonical frame from already-valid columns (no checks: fast path)."""
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    size = len(arrival_s)
    cols = {
        "id": np.arange(size, dtype=np.int64) if ids is None else np.asarray(ids, np.int64),
        "arrival_s": arrival_s,
        "prompt_tokens": np.asarray(prompt_tokens, dtype=np.int64),
        "output_tokens": np.asarray(output_tokens, dtype=np.int64),
    }
    for name in COLUMNS[4:]:
        value = optional.pop(name, None)
        cols[name] = _default_column(name, size, value)
    if optional:
        raise TypeError(f"unknown columns {sorted(optional)}")
    return pd.DataFrame(cols, columns=list(COLUMNS))


def _default_column(name: str, size: int, value):
    if name in TUPLE_COLUMNS:
        if isinstance(value, np.ndarray) and value.dtype == object:
            return value
        arr = np.full(size, None, dtype=object)
        if value is not None:
            for i, item in enumerate(value):   # element-wise: no 2-D broadcasting
                arr[i] = item
        return arr
    if name in NULLABLE_INT:
        if value is None:
            return pd.array([pd.NA] * size, dtype="Int64")
        return pd.array(np.broadcast_to(value, size) if np.ndim(value) == 0 else value,
                        dtype="Int64")
    default = 0 if name == "priority" else 1
    value = default if value is None else value
    return np.broadcast_to(np.asarray(value, dtype=np.int64), size).copy()


def tuple_cell(cell, lo: int) -> tuple[int, ...] | None | str:
    """A cell as a tuple of ints in [lo, 2**63), None, or a problem text."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError:
            return f"is not a JSON list ({cell[:40]!r})"
    if not isinstance(cell, (list, tuple, np.ndarray)):
        return f"is not a list ({cell!r})"
    items = tuple(int(x) if isinstance(x, (int, np.integer)) and not isinstance(x, bool)
                  else None for x in cell)
    if any(x is None or x < lo or x > _MAX_ID for x in items):
        return f"must hold integers from {lo} to 2**63-1"
    return items


def _tuples(values: pd.Series, name: str):
    out = np.empty(len(values), dtype=object)
    for row, cell in enumerate(values.tolist()):
        got = tuple_cell(cell, 0)
        if isinstance(got, str):
            return out, (row, f"{name} {got}")
        out[row] = got
    return out, None


def _lengths(col: np.ndarray) -> np.ndarray:
    return np.fromiter((-1 if t is None else len(t) for t in col),
                       dtype=np.int64, count=len(col))


def _nullable(values: pd.Series, name: str, minimum):
    present = values.notna().to_numpy()
    arr, issue = v.number_column(values[present], name, minimum=minimum, integer=True)
    if issue is not None:
        issue = (int(np.flatnonzero(present)[issue[0]]), issue[1])
        return None, issue
    out = pd.array([pd.NA] * len(values), dtype="Int64")
    out[present] = arr
    return out, None


def _int(name, minimum):
    return lambda col: v.number_column(col, name, minimum=minimum, integer=True)


# How each canonical column is checked and parsed: (values, first issue).
_CHECKS = {
    "id": _int("id", 0),
    "arrival_s": lambda col: v.times(col, "arrival_s"),
    "prompt_tokens": lambda col: v.counts(col, "prompt_tokens", 1),
    "output_tokens": lambda col: v.counts(col, "output_tokens", 0),
    **{name: (lambda col, name=name: _tuples(col, name)) for name in TUPLE_COLUMNS},
    "hash_block_size": lambda col: _nullable(col, "hash_block_size", 1),
    "session_id": lambda col: _nullable(col, "session_id", None),
    "n": _int("n", 1),
    "beam_width": _int("beam_width", 1),
    "priority": _int("priority", None),
}


def check_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, v.Issue | None]:
    """Validate a frame in canonical columns and return it normalised.

    Missing optional columns take their defaults; ``id`` defaults to the row
    number. The issue is the first bad row (or row -1 for a missing column).
    """
    problem = v.missing_columns(list(df.columns), REQUIRED)
    if problem:
        return df, (-1, problem)
    if "id" not in df:
        df = df.assign(id=np.arange(len(df)))
    checked = {name: check(df[name]) for name, check in _CHECKS.items() if name in df}
    issue = v.earliest(*(found for _, found in checked.values()))
    if issue is not None:
        return df, issue
    out = {name: values for name, (values, _) in checked.items()}
    frame = make_frame(out.pop("arrival_s"), out.pop("prompt_tokens"),
                       out.pop("output_tokens"), ids=out.pop("id"), **out)
    return frame, _consistency(frame)


def _consistency(frame: pd.DataFrame) -> v.Issue | None:
    """Tuples agree with the counts they describe; ids are unique."""
    issues = []
    prompt = frame["prompt_tokens"].to_numpy()
    output = frame["output_tokens"].to_numpy()
    for name, want in (("prompt_token_ids", prompt), ("output_token_ids", output)):
        got = _lengths(frame[name].to_numpy())
        row = v.first_row((got >= 0) & (got != want))
        if row is not None:
            issues.append((row, f"{name} has {got[row]} ids but the request "
                                f"has {want[row]} {name.split('_')[0]} tokens"))
    issues.append(hash_count_issue(_lengths(frame["block_hashes"].to_numpy()),
                                   frame["hash_block_size"], prompt, output))
    ids = frame["id"].to_numpy()
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        row = int(order[1:][dup].min())
        issues.append((row, f"duplicate id {ids[row]}"))
    return v.earliest(*issues)


def hash_count_issue(count: np.ndarray, size: pd.Series, prompt: np.ndarray,
                     output: np.ndarray, label: str = "block_hashes") -> v.Issue | None:
    """Hash ids must cover the prompt (or prompt + output) exactly."""
    has = count >= 0
    no_size = size.isna().to_numpy()
    row = v.first_row(has & no_size)
    if row is not None:
        return row, f"{label} given without hash_block_size"
    s = size.fillna(1).to_numpy(dtype=np.int64)
    need = -(-prompt // s)
    need_all = -(-(prompt + output) // s)
    row = v.first_row(has & (count != need) & (count != need_all))
    if row is None:
        return None
    return row, (f"{label} has {count[row]} ids but prompt_tokens {prompt[row]} "
                 f"needs ceil({prompt[row]}/{s[row]}) = {need[row]}")


def meta_json(source: str, meta: dict) -> str:
    return json.dumps({"source": source, "meta": meta}, default=_jsonable,
                      separators=(",", ":"))


def _jsonable(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    return str(obj)


def write(frame: pd.DataFrame, path: Path, source: str, meta: dict) -> None:
    """Write a canonical frame to ``path`` (.parquet, or .csv otherwise)."""
    header = meta_json(source, meta)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.Table.from_pandas(frame, preserve_index=False)
        old = table.schema.metadata or {}
        table = table.replace_schema_metadata({**old, PARQUET_KEY: header.encode()})
        pq.write_table(table, path)
        return
    out = frame.copy()
    for name in TUPLE_COLUMNS:
        out[name] = [None if t is None else "[" + ",".join(map(str, t)) + "]"
                     for t in out[name]]
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(CSV_MAGIC + header + "\n")
        out.to_csv(f, index=False, lineterminator="\n")
