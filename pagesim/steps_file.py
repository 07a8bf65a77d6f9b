"""A replay's steps table streamed to a Parquet file instead of held whole.

A 100k-request replay on a tight pool runs 6.3 M engine steps: held in
memory the steps table is 0.7 GB, most of a run's peak. With a
``steps_path``, ``run_replay`` streams the recorder's rows to a raw Parquet
file as the run goes (``ParquetSink``, one row group per
``SPILL_ROWS`` steps), then rewrites it row group by row group with the
gauge columns added (``finish_steps``: the gauges need the requests'
finish times, known only at the end) and hands back a ``StepsFile``.

``StepsFile`` reads one column at a time: the summary, the plots and the
report ask for the few columns they use (``steps["duration_s"]``), so the
table never comes back into memory whole. The values, and the results
computed from them, are the same as from the table held in memory; the
tests compare both.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pagesim.sim.gauges import Gauges
from pagesim.sim.step_recorder import STEP_COLUMNS


#: The raw file is read back once, by ``finish_steps``, and deleted: written
#: plain (no compression, dictionaries or statistics) it costs a copy rather
#: than a second encoding of the whole table (~1 G instructions of the
#: Azure trace). The final file keeps Parquet's defaults.
RAW = {"compression": "none", "use_dictionary": False, "write_statistics": False}


class ParquetSink:
    """A ``StepSink`` writing each batch of rows as one Parquet row group."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: pq.ParquetWriter | None = None

    def write(self, columns: dict[str, np.ndarray]) -> None:
        table = pa.table({c: columns[c] for c in STEP_COLUMNS})
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, **RAW)
        self._writer.write_table(table)

    def close(self) -> None:
        """Close the file (there is none if no row came)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def discard(self) -> None:
        """Close and delete the file (a run that failed)."""
        self.close()
        self.path.unlink(missing_ok=True)


def finish_steps(raw: Path, final: Path, gauges: Gauges) -> StepsFile:
    """Rewrite ``raw`` (the recorder's columns: at least one row group, as
    a sink writes a file only for rows) as ``final`` with the gauge
    columns, one row group at a time, and delete ``raw``."""
    source = pq.ParquetFile(raw)
    writer = None
    try:
        for i in range(source.num_row_groups):
            chunk = source.read_row_group(i).to_pandas()
            table = pa.Table.from_pandas(gauges.add(chunk), preserve_index=False)
            del chunk
            if writer is None:
                writer = pq.ParquetWriter(final, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.remove(raw)
    return StepsFile(final)


class StepsFile:
    """The steps table of a replay, in a Parquet file, read by column.

    Offers what the summary, plots, report and timeline use of a DataFrame:
    ``len``, ``in``, ``columns``, ``steps[name]`` (a Series, read from the
    file each time: nothing is cached, so memory stays bounded),
    ``steps[mask]`` (the rows where a boolean mask holds) and
    ``to_pandas()`` (the whole table, for a notebook that wants it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = pq.ParquetFile(self.path)
        self.columns = list(meta.schema_arrow.names)
        self._len = meta.metadata.num_rows

    def __len__(self) -> int:
        return self._len

    def __contains__(self, name) -> bool:
        return name in self.columns

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.columns:
                raise KeyError(key)
            values = pq.read_table(self.path, columns=[key]).column(0).to_numpy()
            return pd.Series(values, name=key, copy=False)
        if isinstance(key, list):
            return pq.read_table(self.path, columns=key).to_pandas()
        mask = np.asarray(key, dtype=bool)
        assert len(mask) == self._len, "a row mask must have one entry per step"
        return self._rows(mask)

    def _rows(self, mask: np.ndarray) -> pd.DataFrame:
        """The rows where ``mask`` holds, read one row group at a time."""
        source = pq.ParquetFile(self.path)
        parts, start = [], 0
        for i in range(source.num_row_groups):
            n = source.metadata.row_group(i).num_rows
            part = mask[start:start + n]
            if part.any():   # row labels as in the whole table: positions
                rows = source.read_row_group(i).to_pandas().set_axis(pd.RangeIndex(start, start + n))
                parts.append(rows[part])
            start += n
        if not parts:
            return source.schema_arrow.empty_table().to_pandas()
        return pd.concat(parts)

    def row_groups(self):
        """The table as DataFrames of consecutive rows (at least one, maybe empty)."""
        source = pq.ParquetFile(self.path)
        if source.num_row_groups == 0:
            yield source.schema_arrow.empty_table().to_pandas()
        for i in range(source.num_row_groups):
            yield source.read_row_group(i).to_pandas()

    def to_pandas(self) -> pd.DataFrame:
        return pd.read_parquet(self.path)

    def __repr__(self) -> str:
        return f"StepsFile({str(self.path)!r}, {self._len:,} steps)"


__all__ = ["ParquetSink", "StepsFile", "finish_steps"]
