"""Replays side by side (``pagesim compare``), varying any option.

``variants(base, "block_size", ["8", "16", "32"])`` gives one config per value
of a field of ``ReplayConfig`` or of its ``SchedulerConfig`` (``allocator``,
``block_size``, ``prefix_caching``, ``victim``, ``preemption``...). The
arrival rate changes the trace instead, so the CLI builds one trace per rate
and hands ``run_all`` (label, trace, config) triples.
"""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from pagesim.analysis.compare import table
from pagesim.analysis.compare_plots import block_size_sweep, overlay, sweep_table
from pagesim.analysis.report import compare_report
from pagesim.replay import ReplayConfig, run_replay
from pagesim.sim.config import SchedulerConfig


def run_all(runs, *, progress: bool = False) -> dict:
    """Replay each (label, trace, config); label -> ReplayResult."""
    return {label: run_replay(trace, cfg, progress=progress) for label, trace, cfg in runs}


def compare(trace, configs, labels=None, *, progress: bool = False) -> pd.DataFrame:
    """Replay ``trace`` once per config; one column per config."""
    labels = labels or [c.allocator for c in configs]
    return table(run_all([(lb, trace, c) for lb, c in zip(labels, configs)], progress=progress))


def _field_types(cls) -> dict:
    """name -> the type a ``--vary`` value converts to, read from the
    annotation (an optional field such as ``prefix_caching: bool | None``
    has a None default, so the default's type would not say)."""
    defaults = cls()
    out = {}
    for f in fields(cls):
        words = str(f.type).replace("|", " ").split()
        out[f.name] = next((t for t in (bool, float, int, str) if t.__name__ in words),
                           type(getattr(defaults, f.name)))
    return out


def variants(base: ReplayConfig, option: str, values) -> list[tuple[str, ReplayConfig]]:
    """(label, config) per value of ``option`` (dashes or underscores)."""
    name = option.replace("-", "_")
    top, sched = _field_types(ReplayConfig), _field_types(SchedulerConfig)
    if name == "scheduler":  # the CLI's --scheduler is SchedulerConfig.generation
        name = "generation"
    if name not in top and name not in sched or name == "scheduler":
        raise ValueError(f"--vary: unknown option {option!r}; choose a replay option such as "
                         "allocator, block_size, prefix_caching, victim, preemption, rate")
    kind = top.get(name) or sched.get(name)
    out = []
    for raw in values:
        value = _convert(raw, kind, option)
        if name in top:
            cfg = replace(base, **{name: value})
        else:
            cfg = replace(base, scheduler=replace(base.scheduler, **{name: value}))
        out.append((f"{option}={raw}", cfg))
    return out


def _convert(raw: str, kind, option: str):
    if kind is type(None):  # optional sizes (num_gpu_blocks, max_model_len...) are ints
        kind = int
    if kind is bool:
        if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise ValueError(f"--vary: {option}={raw!r} is not on/off")
        return raw.lower() in ("true", "on", "1")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"--vary: {option}={raw!r} is not a{'n int' if kind is int else ' number'}") from None
    return raw


def write_compare(results: dict, tab, folder: Path, *, option: str = "allocator",
                  plots: bool = True, report: bool = True) -> list[Path]:
    """compare.csv, compare.png (overlay), block_size.png (when the block size
    varies) and report.html, into ``folder`` (a staged folder: see
    ``pagesim.outputs.staged_dir``, which makes the set appear as a whole)."""
    folder = Path(folder)
    tab.to_csv(folder / "compare.csv")
    written = [folder / "compare.csv"]
    if plots:
        overlay(results, folder / "compare.png", title=f"pagesim compare: {option}")
        written.append(folder / "compare.png")
        if option == "block_size":
            sizes = [res.config.block_size for res in results.values()]
            block_size_sweep(sweep_table(results, sizes), folder / "block_size.png")
            written.append(folder / "block_size.png")
    if report:
        compare_report(results, tab, folder / "report.html", option=option)
        written.append(folder / "report.html")
    return written


__all__ = ["run_all", "compare", "variants", "write_compare"]
