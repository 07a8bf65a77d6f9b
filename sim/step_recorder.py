"""Per-step records of a replay, kept in bounded, typed memory.

A replay can run millions of engine steps (100k requests on a tight pool:
6.26 million). Keeping a Python tuple per step and converting them all at
the end peaked at about 590 bytes per step. The recorder instead buffers at
most ``chunk_steps`` steps as Python objects, then writes them into the
table's own typed columns (8 bytes per value, 112 per step), which grow by
doubling: a grown column is one fresh ``mmap``-backed array (the old one
goes back to the operating system, not into the heap as freed fragments),
and the untouched tail of its capacity is never resident. ``to_dataframe``
shrinks them to their length in place and hands them to pandas without a
copy.

::

    add / add_stretch ──► buffers (≤ chunk_steps steps of tuples)
                              │ _flush: vectorised expansion, usage_from
                              ▼
                          typed columns, step order, capacity doubling
                              │ to_dataframe: trimmed to length     │ with a sink: every
                              ▼                                     ▼ SPILL_ROWS rows
                          DataFrame (shares the columns)       sink.write (e.g. a
                                                               Parquet row group)

With a sink, a table longer than ``HOLD_ROWS`` is never held whole: a
100k-request replay of 6 M steps keeps at most ``HOLD_ROWS`` rows (~75 MB)
instead of 0.45 GB. A shorter one stays in memory (``spilled`` is False)
and is read with ``to_dataframe``: writing and reading it back would cost a
typical replay more than its whole loop saves.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from pagesim.sim.accounting import CATEGORIES

STEP_COLUMNS = ("step", "start_s", "duration_s", "num_seqs", "num_tokens", "num_prefill_seqs",
                "kv_tokens_read", "preemptions") + CATEGORIES
FLOAT_COLUMNS = ("start_s", "duration_s")
#: Each column's type. Counts of sequences, tokens per step, preemptions per
#: step and the memory split (tokens of one GPU's KV cache: far below 2**31)
#: are 32-bit: a 6 M-step table is 0.25 GB smaller that way, which is what
#: keeps a 100k-request replay under 1 GB. Step numbers and the context
#: tokens a step reads (sum over a batch) stay 64-bit.
COLUMN_DTYPES = {c: np.float64 if c in FLOAT_COLUMNS else
                 np.int64 if c in ("step", "kv_tokens_read") else np.int32 for c in STEP_COLUMNS}

#: Steps buffered as Python objects before they become typed columns: large
#: enough that the per-chunk numpy calls are negligible, small enough (a few
#: MB) not to matter next to the table.
CHUNK_STEPS = 1 << 14
#: Rows handed to a sink at a time: a row group of a streamed steps file.
SPILL_ROWS = 1 << 18
#: Rows held in memory before a recorder with a sink starts streaming.
HOLD_ROWS = 1 << 20


class StepSink(Protocol):
    """Where a recorder streams its rows (``pagesim/steps_file.py`` writes
    them as Parquet row groups): each call gets the next rows in step order,
    one array per column of ``STEP_COLUMNS``, valid only during the call."""

    def write(self, columns: dict[str, np.ndarray]) -> None: ...


class StepRecorder:
    """Per-step rows, stored as typed column chunks until ``to_dataframe``.

    A step-by-step row stores its scalars plus the allocator's live-token
    count and ``counters()`` snapshot. A fast-mode decode stretch of ``k``
    steps stores a handful of numbers and the counter snapshots taken at its
    allocator events; both are expanded by vectorised code when a chunk is
    flushed. Memory categories are computed by the manager's own
    ``usage_from`` formula in both cases, so the two modes give identical
    tables.
    """

    def __init__(self, usage_from, chunk_steps: int = CHUNK_STEPS, sink: StepSink | None = None,
                 spill_rows: int | None = None, hold_rows: int | None = None) -> None:
        self.usage_from = usage_from
        self.chunk_steps = chunk_steps
        self.sink = sink
        self.spill_rows = SPILL_ROWS if spill_rows is None else spill_rows
        self.hold_rows = HOLD_ROWS if hold_rows is None else hold_rows
        self.spilled = False   # whether rows went to the sink (then all of them do)
        self._rows: list[tuple] = []
        self._clear_stretches()
        self._pending = 0                      # steps in the two buffers
        self._cols = {c: np.empty(0, dtype=COLUMN_DTYPES[c]) for c in STEP_COLUMNS}
        self._n = 0                            # rows written into the columns

    def add(self, step, start, dur, shape, preemptions, live, counters) -> None:
        self._rows.append((step, start, dur, *shape, preemptions, live, *counters))
        self._pending += 1
        if self._pending >= self.chunk_steps:
            self._flush()

    def add_stretch(self, step0, k, n, sum_ctx0, live0, times, dts, snap_steps, snap_counters) -> None:
        """``snap_steps[i]`` (relative step, -1 for the state before the
        first step) from which the ``i``-th ``counters()`` snapshot holds;
        ``snap_counters`` holds the snapshots concatenated. Everything goes
        into flat lists (one C-level extend each), so that a flush converts
        each kind of number with one ``fromiter`` over one list."""
        self._st_nums += (step0, k, n, sum_ctx0, live0, len(snap_steps))
        self._st_times += times[:k]
        self._st_dts += dts[:k]
        self._st_snap_steps += snap_steps
        self._st_snap_counters += snap_counters
        self._pending += k
        if self._pending >= self.chunk_steps:
            self._flush()

    def _clear_stretches(self) -> None:
        self._st_nums: list[int] = []           # step0, k, n, sum_ctx0, live0, snapshots; per stretch
        self._st_times: list[float] = []
        self._st_dts: list[float] = []
        self._st_snap_steps: list[int] = []
        self._st_snap_counters: list[int] = []

    # ------------------------------------------------------------ flushing
    def _flush(self) -> None:
        """Turn the buffered steps into final rows. The chunk's steps are
        consecutive (every step is recorded once, as a row or in a stretch),
        so each part is written straight to its rows: step rows (a few) by
        position, stretch rows (the rest, in step order) through a mask,
        which numpy writes about 3x faster than positions; no
        concatenation, sort or second copy."""
        rows, stretches = self._step_rows(), self._stretch_rows()
        self._rows, self._pending = [], 0
        self._clear_stretches()
        parts = [p for p in (rows, stretches) if p is not None]
        if not parts:
            return
        m = sum(len(p["step"]) for p in parts)
        first = min(int(p["step"][0]) for p in parts)
        assert max(int(p["step"][-1]) for p in parts) - first + 1 == m, \
            f"a chunk's steps must be consecutive: {m} rows from step {first}"
        assert self._n == 0 or self._cols["step"][self._n - 1] < first, \
            "steps must be recorded in increasing order (chunks are appended without sorting)"
        self._reserve(self._n + m)
        lo = self._n
        if len(parts) == 1:
            places = [slice(None)]
        else:
            at = rows["step"] - first
            rest = np.ones(m, dtype=bool)
            rest[at] = False
            places = [at, rest]
        for p, where in zip(parts, places):
            self._write(p, lo, m, where)
        assert (self._cols["step"][lo:lo + m] == np.arange(first, first + m)).all(), \
            "each step of a chunk must be recorded exactly once"
        self._n = lo + m
        if self.sink is not None and (self.spilled or self._n > self.hold_rows):
            self._spill(final=False)

    def _write(self, part: dict, lo: int, m: int, where) -> None:
        """One part's columns and memory split into rows ``lo .. lo + m``
        at ``where`` (a slice, positions or a mask)."""
        cols = self._cols
        for c in STEP_COLUMNS[:8]:
            cols[c][lo:lo + m][where] = part[c]
        split = self.usage_from(part["live"], *part["counters"])
        for c in CATEGORIES:
            v = np.asarray(getattr(split, c), dtype=np.int64)
            assert v.size == 0 or (v.min() >= -2**31 and v.max() < 2**31), (
                f"memory category {c} out of its column's int32 range")
            cols[c][lo:lo + m][where] = v

    def _reserve(self, end: int) -> None:
        """Room for ``end`` rows: capacity doubles, one column at a time
        (peak = table + one column)."""
        if end <= len(self._cols["step"]):
            return
        cap = max(end, 2 * len(self._cols["step"]), self.chunk_steps)
        for c, old in self._cols.items():
            new = np.empty(cap, dtype=old.dtype)
            new[:self._n] = old[:self._n]
            self._cols[c] = new

    def _spill(self, final: bool) -> None:
        """Hand every full group of ``spill_rows`` rows (and at the end the
        rest) to the sink and move what is left to the columns' front, so
        that they never grow past ``spill_rows`` plus one chunk."""
        done = 0
        while self._n - done >= self.spill_rows or (final and self._n > done):
            end = min(done + self.spill_rows, self._n)
            self.sink.write({c: v[done:end] for c, v in self._cols.items()})
            self.spilled = True
            done = end
        if done:
            rest = self._n - done
            for c, v in self._cols.items():   # the held rows' capacity goes back to the system
                keep = v if len(v) <= 2 * self.spill_rows else np.empty(2 * self.spill_rows, v.dtype)
                keep[:rest] = v[done:self._n]
                self._cols[c] = keep
            self._n = rest

    def _step_rows(self) -> dict | None:
        if not self._rows:
            return None
        cols = list(zip(*self._rows))
        names = STEP_COLUMNS[:8] + ("live",)
        out = {c: np.asarray(v) for c, v in zip(names, cols)}
        out["counters"] = [np.asarray(v, dtype=np.int64) for v in cols[len(names):]]
        return out

    def _stretch_rows(self) -> dict | None:
        if not self._st_nums:
            return None
        nums = np.fromiter(self._st_nums, dtype=np.int64, count=len(self._st_nums)).reshape(-1, 6)
        step0, ks, ns, ctx0, live0, num_snaps = nums.T
        offsets = np.cumsum(ks) - ks
        total = int(ks.sum())
        sid = np.repeat(np.arange(len(ks)), ks)
        j = np.arange(total) - offsets[sid]
        n = ns[sid]
        # A snapshot holds from its step's row (the one before the first
        # step: from row 0) until the next one's; of two at one row the
        # later holds. Rows run in step order, so snapshot i covers
        # start_rows[i] .. start_rows[i + 1] - 1 (np.repeat refuses a
        # negative count: snapshots out of order).
        rel = np.fromiter(self._st_snap_steps, dtype=np.int64, count=len(self._st_snap_steps))
        start_rows = np.repeat(offsets, num_snaps) + np.maximum(rel, 0)
        assert start_rows[0] == 0, "a stretch's first counters() snapshot must hold from its first step"
        which = np.repeat(np.arange(len(rel)), np.diff(start_rows, append=total))
        counters = np.fromiter(self._st_snap_counters, dtype=np.int64,
                               count=len(self._st_snap_counters)).reshape(len(rel), -1)
        snap = counters[which]
        return {
            "step": step0[sid] + j,
            "start_s": np.fromiter(self._st_times, dtype=np.float64, count=total),
            "duration_s": np.fromiter(self._st_dts, dtype=np.float64, count=total),
            "num_seqs": n, "num_tokens": n,
            "num_prefill_seqs": 0,
            "kv_tokens_read": ctx0[sid] + j * n,
            "preemptions": 0,
            "live": live0[sid] + (j + 1) * n,
            "counters": [snap[:, i] for i in range(snap.shape[1])],
        }

    # -------------------------------------------------------------- output
    def close(self) -> None:
        """With a sink that got rows: hand it the last ones, so that it holds
        the whole table. A table short enough to hold (``spilled`` False)
        stays here, for ``to_dataframe``."""
        assert self.sink is not None, "close() is for a recorder with a sink; use to_dataframe()"
        self._flush()
        if self.spilled:
            self._spill(final=True)

    def to_dataframe(self) -> pd.DataFrame:
        """The table, one row per step in step order. The columns shrink to
        their length in place (``realloc``: no copy) and the DataFrame
        shares them. Only columns no DataFrame has seen are longer than
        their length (a grown column is a fresh array), so shrinking in
        place never pulls memory from under a view."""
        self._flush()
        for v in self._cols.values():
            if len(v) > self._n:
                v.resize(self._n, refcheck=False)
        return pd.DataFrame({c: self._cols[c][:self._n] for c in STEP_COLUMNS}, copy=False)
