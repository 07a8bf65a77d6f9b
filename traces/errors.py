"""The one error every trace reader raises for bad input.

A simulation run from a half-read or silently repaired trace produces numbers
nobody can trust, so readers check the whole file before returning anything
and stop at the first problem *in file order*, naming the file, the line (or
Parquet row) and what is wrong, e.g.::

    traces/x.csv, line 7: negative ContextTokens (-3)
"""
from __future__ import annotations

import os


class TraceError(ValueError):
    """A trace file (or trace data) is malformed.

    Attributes:
        path: the file, as given by the caller (``None`` for in-memory data).
        line: 1-based line number in the file (for CSV the header is line 1;
            for Parquet it is the 1-based row), or ``None`` when the problem
            concerns the whole file (empty file, unknown format).
        problem: what is wrong, in words.
        unit: ``"line"`` for text files, ``"row"`` for Parquet.
    """

    def __init__(self, path: str | os.PathLike | None, line: int | None,
                 problem: str, *, unit: str = "line") -> None:
        self.path = None if path is None else os.fspath(path)
        self.line = None if line is None else int(line)
        self.problem = problem
        self.unit = unit
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.path is not None else "<trace>"
        if self.line is not None:
            where = f"{where}, {self.unit} {self.line}"
        return f"{where}: {self.problem}"

    def __reduce__(self):
        # Keyword-only ``unit`` needs help to survive pickling (pytest-xdist).
        return (_rebuild, (self.path, self.line, self.problem, self.unit))


def _rebuild(path, line, problem, unit):
    return TraceError(path, line, problem, unit=unit)


class TraceWarning(UserWarning):
    """A trace was changed on request (requests truncated or rejected for
    being too long); the warning says how many, so it is never silent."""
