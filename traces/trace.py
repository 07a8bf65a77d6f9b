"""``Trace``: an ordered collection of requests, with where it came from.

A trace is stored as columns (a pandas DataFrame in the canonical columns of
``traces.canonical``), because a million requests as Python objects cost
seconds to build and most consumers want arrays anyway (arrival times, token
counts). ``trace.requests`` turns the columns into ``Request`` objects once,
on first use, and keeps them.
"""
from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pagesim.traces import canonical
from pagesim.traces.errors import TraceError
from pagesim.traces.request import Request


class Trace:
    """Requests in arrival order, plus ``source`` (a short description) and
    ``meta`` (a JSON-able dict: format, options, counts of changed rows).

    The order is by ``arrival_s``; requests that arrive at the same time keep
    the order they were given in. Build one from requests
    (``Trace(reqs, source=...)``), from a DataFrame (``Trace.from_dataframe``)
    or from a file (``traces.load_trace``).
    """

    __slots__ = ("_frame", "source", "meta", "_requests")

    def __init__(self, requests: Iterable[Request] = (), source: str = "",
                 meta: dict | None = None) -> None:
        reqs = list(requests)
        cols = {name: [getattr(r, name) for r in reqs] for name in canonical.COLUMNS}
        hbs = pd.array(cols.pop("hash_block_size"), dtype="Int64")
        sid = pd.array(cols.pop("session_id"), dtype="Int64")
        frame = canonical.make_frame(
            cols.pop("arrival_s"), cols.pop("prompt_tokens"),
            cols.pop("output_tokens"), ids=cols.pop("id"),
            hash_block_size=hbs, session_id=sid, **cols)
        self._set(frame, source, meta)

    def _set(self, frame: pd.DataFrame, source: str, meta: dict | None) -> None:
        arrival = frame["arrival_s"].to_numpy()
        if len(arrival) > 1 and (np.diff(arrival) < 0).any():
            frame = frame.iloc[np.argsort(arrival, kind="stable")]
        self._frame = frame.reset_index(drop=True)
        self.source = source
        self.meta = dict(meta or {})
        self._requests: list[Request] | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str = "",
                   meta: dict | None = None) -> Trace:
        """Wrap a frame already in canonical form (``canonical.make_frame``),
        without checks. For readers and generators that built it themselves."""
        trace = cls.__new__(cls)
        trace._set(frame, source, meta)
        return trace

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, source: str = "dataframe",
                       meta: dict | None = None) -> Trace:
        """Check and convert a DataFrame with (at least) the columns
        ``arrival_s``, ``prompt_tokens`` and ``output_tokens``; the other
        canonical columns are optional. Raises ``TraceError`` naming the
        first bad row (1-based)."""
        frame, issue = canonical.check_frame(df.reset_index(drop=True))
        if issue is not None:
            row, problem = issue
            raise TraceError(source, row + 1 if row >= 0 else None, problem, unit="row")
        return cls.from_frame(frame, source, meta)

    def to_dataframe(self) -> pd.DataFrame:
        """A copy of the canonical columns, one row per request, in order."""
        return self._frame.copy()

    def save(self, path: str | Path) -> None:
        """Write the trace as Parquet (``.parquet``) or CSV (any other suffix);
        ``load_trace`` reads it back exactly, ``source`` and ``meta`` included."""
        canonical.write(self._frame, Path(path), self.source, self.meta)

    @property
    def requests(self) -> list[Request]:
        """The requests as ``Request`` objects, sorted by arrival (built once)."""
        if self._requests is None:
            self._requests = _build_requests(self._frame)
        return self._requests

    def __len__(self) -> int:
        return len(self._frame)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    def __getitem__(self, index):
        """``trace[i]`` is a Request; ``trace[a:b]`` is a Trace."""
        if isinstance(index, slice):
            return Trace.from_frame(self._frame.iloc[index], self.source, self.meta)
        return self.requests[index]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (self.source == other.source and self.meta == other.meta
                and self._frame.equals(other._frame))

    __hash__ = None  # mutable meta: not hashable

    def __repr__(self) -> str:
        return (f"Trace({len(self)} requests, {self.duration_s:.1f} s, "
                f"source={self.source!r})")

    def column(self, name: str) -> np.ndarray:
        """One canonical column as a read-only numpy array (no copy)."""
        arr = self._frame[name].to_numpy()
        arr.flags.writeable = False
        return arr

    @property
    def arrival_s(self) -> np.ndarray:
        return self.column("arrival_s")

    @property
    def prompt_tokens(self) -> np.ndarray:
        return self.column("prompt_tokens")

    @property
    def output_tokens(self) -> np.ndarray:
        return self.column("output_tokens")

    @property
    def duration_s(self) -> float:
        """Time from the first arrival to the last (0 for under two requests)."""
        a = self._frame["arrival_s"].to_numpy()
        return float(a[-1] - a[0]) if len(a) > 1 else 0.0

    def with_arrivals(self, arrival_s, source: str | None = None,
                      meta: dict | None = None) -> Trace:
        """The same requests (in their current order) at new arrival times."""
        frame = self._frame.copy()
        frame["arrival_s"] = np.asarray(arrival_s, dtype=np.float64)
        return Trace.from_frame(frame, self.source if source is None else source,
                                self.meta if meta is None else meta)

    def select(self, rows) -> Trace:
        """The requests at ``rows`` (a boolean mask or positions), same meta."""
        rows = np.asarray(rows)
        frame = self._frame.iloc[np.flatnonzero(rows) if rows.dtype == bool else rows]
        return Trace.from_frame(frame, self.source, self.meta)


def _build_requests(frame: pd.DataFrame) -> list[Request]:
    cols = []
    for name in canonical.COLUMNS:
        col = frame[name]
        if name in canonical.NULLABLE_INT:
            cols.append(col.astype(object).where(col.notna(), None).tolist())
        else:
            cols.append(col.tolist())
    enabled = gc.isenabled()
    gc.disable()   # a million new objects trigger many useless collections
    try:
        return list(map(Request, *cols))
    finally:
        if enabled:
            gc.enable()
