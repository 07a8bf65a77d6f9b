"""Vectorised checks of trace columns that point at the first bad row.

Every check returns the parsed numpy column and the earliest problem as an
``Issue`` ``(row, text)``; a reader gathers the issues of all its columns and
raises the one earliest in the file, so a file with several problems always
reports the same one, whatever order the checks ran in.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_integer_dtype, is_numeric_dtype

from pagesim.traces.errors import TraceError

Issue = tuple[int, str]   # (0-based data row, problem)

#: Largest token count of one request: far beyond any model's context, and
#: small enough that sums over millions of requests stay exact in int64.
MAX_TOKENS = 2**31 - 1
#: Largest arrival time in seconds: beyond 2**32 s (136 years) float64
#: seconds no longer resolve a microsecond, so such a time is a unit mistake
#: or garbage, not a schedule.
MAX_TIME_S = float(2**32)
_INT64_LIMIT = float(2**63)   # the first float that no int64 holds


def earliest(*issues: Issue | None) -> Issue | None:
    """The issue with the smallest row (ties: the first one given)."""
    found = [i for i in issues if i is not None]
    return min(found, key=lambda i: i[0]) if found else None


def raise_issue(issue: Issue | None, path, lines: Sequence[int] | None,
                unit: str = "line") -> None:
    """Raise ``issue`` as a TraceError at its file line; no-op for None."""
    if issue is None:
        return
    row, problem = issue
    line = None if lines is None or row < 0 else int(lines[row])
    raise TraceError(path, line, problem, unit=unit)


def first_row(mask: np.ndarray) -> int | None:
    """Index of the first True, or None."""
    return int(np.argmax(mask)) if mask.any() else None


def _as_float(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Floats (NaN where unparseable) and the mask of genuinely empty cells."""
    missing = values.isna().to_numpy()
    if is_bool_dtype(values):
        num = np.full(len(values), np.nan)
    elif is_numeric_dtype(values):
        num = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        objs = values.map(lambda v: None if isinstance(v, bool) else v)
        num = pd.to_numeric(objs, errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
    return num, missing


def number_column(values: pd.Series, name: str, *, minimum: float | None = 0,
                  integer: bool = False, maximum: float | None = None,
                  why: str = "") -> tuple[np.ndarray, Issue | None]:
    """Check a numeric column: present, numeric, finite, >= minimum,
    <= maximum (``why`` says why, in the message), integral and within int64.

    Returns int64 values when ``integer`` (else float64) and the first issue.
    """
    if integer and is_integer_dtype(values) and not values.isna().any():
        arr = values.to_numpy(dtype=np.int64)
        low = first_row(arr < minimum) if minimum is not None else None
        high = first_row(arr > maximum) if maximum is not None else None
        return arr, earliest(_below(name, arr, low, minimum), _above(name, arr, high, maximum, why))
    num, missing = _as_float(values)
    if integer and maximum is None:
        maximum, why = _INT64_LIMIT - 1024, " (the 64-bit integer limit)"
    text = np.isnan(num) & ~missing
    inf = np.isinf(num)
    neg = num < 0 if minimum is not None and minimum >= 0 else np.zeros_like(missing)
    frac = (num != np.floor(num)) & np.isfinite(num) if integer else np.zeros_like(missing)
    low = num < minimum if minimum is not None else np.zeros_like(missing)
    high = num > maximum if maximum is not None else np.zeros_like(missing)
    row = first_row(missing | text | inf | neg | frac | low | high)
    if row is None:
        return (num.astype(np.int64) if integer else num), None
    raw, v = values.iloc[row], num[row]
    if missing[row]:
        problem = f"missing or NaN {name}"
    elif text[row]:
        problem = f"non-numeric {name} ({raw!r})"
    elif inf[row]:
        problem = f"infinite {name}"
    elif neg[row]:
        problem = f"negative {name} ({v:g})"
    elif frac[row]:
        problem = f"non-integer {name} ({v:g})"
    elif high[row]:
        return num, _above(name, num, row, maximum, why)
    else:
        return num, _below(name, num, row, minimum)
    return num, (row, problem)


def _above(name: str, arr: np.ndarray, row: int | None, maximum, why: str) -> Issue | None:
    if row is None:
        return None
    return row, f"{name} is {arr[row]:g}, too large: at most {maximum:,.0f}{why}"


def _below(name: str, arr: np.ndarray, row: int | None, minimum) -> Issue | None:
    if row is None:
        return None
    v = arr[row]
    if v < 0 <= minimum:
        return row, f"negative {name} ({v:g})"
    return row, f"{name} is {v:g}; it must be at least {minimum:g}"


def counts(values: pd.Series, name: str, minimum: int = 0):
    """A token-count column: integers from ``minimum`` to ``MAX_TOKENS``."""
    return number_column(values, name, minimum=minimum, integer=True, maximum=MAX_TOKENS,
                         why=" tokens per request")


def times(values: pd.Series, name: str, scale: float = 1.0):
    """An arrival-time column in units of ``1/scale`` seconds (ms: 1000):
    finite, >= 0 and at most ``MAX_TIME_S``."""
    return number_column(values, name, maximum=MAX_TIME_S * scale,
                         why=" (2**32 s; later times lose microsecond precision)")


def order_issue(times: np.ndarray, label: str, shown: Sequence | None = None) -> Issue | None:
    """The first row whose time is earlier than the row before it."""
    row = first_row(np.diff(times) < 0)
    if row is None:
        return None
    row += 1
    shown = times if shown is None else shown
    return row, (f"{label} out of order: {shown[row]} comes after "
                 f"{shown[row - 1]} (pass --sort, or sort=True in Python, to sort by "
                 "arrival)")


def blank_rows(frame: pd.DataFrame) -> Issue | None:
    """An entirely empty CSV row (a blank line in the middle of the file)."""
    row = first_row(frame.isna().all(axis=1).to_numpy())
    return None if row is None else (row, "blank line")


def drop_trailing_blank(frame: pd.DataFrame) -> pd.DataFrame:
    """Trailing blank lines are harmless; blank lines inside the data are not."""
    empty = frame.isna().all(axis=1).to_numpy()
    keep = len(empty)
    while keep and empty[keep - 1]:
        keep -= 1
    return frame.iloc[:keep]


def missing_columns(columns: Sequence[str], required: Sequence[str]) -> str | None:
    """A problem text naming absent columns, or None."""
    absent = [c for c in required if c not in columns]
    if not absent:
        return None
    names = ", ".join(repr(c) for c in absent)
    found = ", ".join(str(c) for c in columns) or "nothing"
    s = "s" if len(absent) > 1 else ""
    return f"missing column{s} {names} (found: {found})"
