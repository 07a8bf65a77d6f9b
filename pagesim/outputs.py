"""Output folders written as a whole, and the files of a replay.

A run's files are written into a fresh temporary folder next to ``--out``
and that folder is renamed to ``--out`` only once every file is complete.
An interrupted or failed run therefore leaves either nothing or a complete
set, and two runs' files never mix: an existing non-empty ``--out`` is
refused unless ``overwrite``, which replaces it as a whole.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pagesim.steps_file import StepsFile


#: The files pagesim writes into an output folder. ``--overwrite`` replaces
#: only folders holding nothing else: a mistyped ``--out .`` or ``--out ~``
#: must not delete a working directory.
OUTPUT_FILES = frozenset(
    [f"{name}.{ext}" for name in ("requests", "steps", "events", "sequences", "links")
     for ext in ("parquet", "csv")]
    + ["summary.json", "memory.png", "latency.png", "compare.csv", "provenance.json",
       "report.html", "timeline.json", "compare.png", "block_size.png"])


class OutputError(ValueError):
    """``--out`` cannot be used; the message names the option."""


def check_out(out: str | Path, overwrite: bool, option: str = "--out") -> Path:
    """Refuse, before anything is simulated, a folder that the run could not
    write or would mix with an earlier run's files."""
    path = Path(out)
    if not str(out).strip():
        raise OutputError(f"argument {option}: empty path")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"argument {option}: {str(out)!r} is an existing file, not a folder")
        entries = sorted(p.name for p in path.iterdir())
        if entries and not overwrite:
            raise OutputError(f"argument {option}: {str(out)!r} exists and is not empty; pass "
                              "--overwrite to replace it, or choose another folder")
        foreign = [e for e in entries if e not in OUTPUT_FILES]
        if foreign:
            raise OutputError(f"argument {option}: {str(out)!r} holds {foreign[0]!r}, which "
                              "pagesim did not write; refusing to replace the folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"argument {option}: {str(out)!r} lies below {str(parent)!r}, "
                          "which is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"argument {option}: cannot write in {str(parent)!r}")
    return path


@contextmanager
def staged_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success it replaces
    ``out``, on any exception (Ctrl-C included) it is deleted."""
    out = check_out(out, overwrite)
    made = [p for p in out.absolute().parents if not p.exists()]
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.absolute().parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)   # mkdtemp's 0700 is for secrets; results are shared as usual
    try:
        yield tmp
        _replace(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:   # innermost first: the folders this call created
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def _replace(new: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:   # appeared while this run was busy
            raise OutputError(f"argument --out: {str(out)!r} was created during the run; "
                              "nothing written")
        check_out(out, overwrite)   # still only pagesim's files: move it aside first
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=new.parent))
        os.replace(out, old / "x")
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(old / "x", out)   # put the earlier run back
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)


def finite(obj):
    """``obj`` with every non-finite float (NaN, Infinity) replaced by None,
    so that ``json.dumps(..., allow_nan=False)`` gives strict JSON."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def strict_json(obj) -> str:
    return json.dumps(finite(obj), indent=2, allow_nan=False, default=str)


def write_replay(result, folder: Path, *, plots: bool = True, table_format: str = "parquet",
                 report: bool = False, timeline: int | None = None) -> list[Path]:
    """summary.json, requests/steps tables, the event log with its sequence
    map, plots, the HTML report and the Perfetto timeline (at most
    ``timeline`` request tracks), into ``folder`` (a staged folder: see
    ``staged_dir``)."""
    ext = "parquet" if table_format == "parquet" else "csv"
    tables = [("requests", result.requests), ("steps", result.steps)]
    if result.events is not None:
        tables += [("events", result.events.to_dataframe()),
                   ("sequences", result.events.sequences_dataframe())]
    if result.links is not None:  # --link-model pcie: the links' transfers
        tables.append(("links", result.links))
    written = []
    for name, df in tables:
        path = folder / f"{name}.{ext}"
        if isinstance(df, StepsFile):   # streamed during the run (``steps_path``)
            _place_steps(df, path)
        elif ext == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_csv(path, index=False)
        written.append(path)
    # the figure, report and timeline modules load only when asked for (a
    # --no-plots --no-report replay starts without them)
    if plots:
        from pagesim.analysis.plots import latency_cdfs, memory_over_time, memory_per_replica
        if "replica" in result.steps and result.steps["replica"].nunique() > 1:
            memory_per_replica(result.steps, result.summary, folder / "memory.png")
        else:
            memory_over_time(result.steps, result.summary, folder / "memory.png")
        latency_cdfs(result.requests, result.steps, folder / "latency.png", summary=result.summary)
        written += [folder / "memory.png", folder / "latency.png"]
    if report:
        from pagesim.analysis.report import replay_report
        replay_report(result, folder / "report.html")
        written.append(folder / "report.html")
    if timeline:
        from pagesim.analysis.timeline import write_timeline
        write_timeline(result.requests, result.steps, folder / "timeline.json",
                       result.request_events, max_requests=timeline)
        written.append(folder / "timeline.json")
    if isinstance(result.steps, StepsFile) and ext == "csv" and result.steps.path.parent == folder:
        result.steps.path.unlink()   # streamed as Parquet, written as CSV: the Parquet was a means
    (folder / "summary.json").write_text(strict_json(result.summary) + "\n")
    written.append(folder / "summary.json")
    return written


def _place_steps(steps: StepsFile, path: Path) -> Path:
    """A streamed steps file as ``path``: moved if it lies elsewhere, turned
    into CSV one row group at a time for ``--table-format csv``."""
    if path.suffix == ".parquet":
        if steps.path.resolve() != path.resolve():
            shutil.move(steps.path, path)
            steps.path = path
        return path
    for i, part in enumerate(steps.row_groups()):
        part.to_csv(path, index=False, mode="w" if i == 0 else "a", header=i == 0)
    return path


def write_outputs(result, out: str | Path, *, plots: bool = True, table_format: str = "parquet",
                  overwrite: bool = False, report: bool = False,
                  timeline: int | None = None) -> list[Path]:
    """Write a replay's files to ``out`` as a whole (see the module doc).
    Returns the final paths."""
    with staged_dir(out, overwrite) as tmp:
        names = [p.name for p in write_replay(result, tmp, plots=plots, table_format=table_format,
                                                report=report, timeline=timeline)]
    return [Path(out) / n for n in names]
