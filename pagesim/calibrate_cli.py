"""``pagesim calibrate`` and ``pagesim validate``: the GPU-side commands.

Both need the ``gpu`` extra (torch, triton) and, to mean anything, a CUDA
device; without one they run under the Triton interpreter as a dry run
(small shapes via ``--scale``), which is how the tests exercise them.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from pagesim import traces
from pagesim.engine_options import swap_conflicts
from pagesim.replay import ReplayConfig
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.costmodel import CalibrationError, TableCostModel, get_model
from pagesim.traces.readers import exact_floats
from pagesim.traces.trace import Trace

WARMUP = 16  # requests replayed before a validation run (kernels compile, graphs capture)
GPU_HINT = "needs the gpu extra: pip install 'pagesim[gpu]' (torch and triton)"


class CommandError(ValueError):
    """A problem with the command's input: printed as one line, exit 2."""


def _gpu_modules():
    """torch and the GPU executor, or a CommandError with the install hint."""
    try:
        import torch

        from pagesim.gpu.calibrate import gpu_preset_name
        from pagesim.gpu.executor import GPUExecutor
    except ImportError as e:
        raise CommandError(f"{GPU_HINT} ({e})") from None
    return torch, GPUExecutor, gpu_preset_name


def _device(torch, gpu_preset_name) -> tuple[str, str]:
    """(device name, GPU preset) of the device the executor will use."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return name, gpu_preset_name(name, torch.cuda.get_device_properties(0).total_memory)
    print("pagesim: no CUDA device: running under the Triton interpreter (a dry run; its "
          "timings mean nothing)", file=sys.stderr)
    return "cpu", "cpu"


def cmd_calibrate(args) -> int:
    # the calibration pipeline loads only for this command, not for every
    # ``pagesim`` start (the parser is built for all commands)
    from pagesim.calibrate import calibrate, default_base, fit_report, refit_files
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CommandError(f"--out {out}: exists (give --overwrite to replace it)")
    if not out.parent.is_dir():
        raise CommandError(f"--out {out}: folder {out.parent} does not exist")
    if args.refit:
        table = refit_files(args.refit)
    else:
        torch, GPUExecutor, preset_of = _gpu_modules()
        _, preset = _device(torch, preset_of)
        base = default_base(args.model, preset, args.block_size, args.gpu_memory_utilization,
                            args.num_gpu_blocks, args.max_num_seqs, args.seed)
        swap = replace(base, scheduler=replace(base.scheduler, generation="v0", preemption="swap"))
        ex = GPUExecutor(get_model(args.model), base.gpu_blocks(), swap.cpu_blocks(),
                         args.block_size, mode=args.mode, seed=args.seed)
        table = calibrate(base, ex, gpu_preset=preset, scale=args.scale, progress=not args.quiet)
    _write_atomically(out, lambda p: table.save(p))
    print(fit_report(table))
    print(f"wrote {out}")
    return 0


def cmd_validate(args) -> int:
    from pagesim.validate import format_table, validate

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CommandError(f"--out {out}: exists (give --overwrite to replace it)")
    table = TableCostModel.from_file(args.calibration)
    trace = validation_trace(args)
    if args.measured:
        record = revalidate(args, trace, table)
    else:
        torch, GPUExecutor, preset_of = _gpu_modules()
        _, preset = _device(torch, preset_of)
        cfg = validation_config(args, table.meta, preset)
        ex = GPUExecutor(get_model(cfg.model), cfg.gpu_blocks(), cfg.cpu_blocks(), cfg.block_size,
                         mode=table.meta.get("mode", "model"), seed=args.seed,
                         graph_max_batch=args.max_num_seqs)
        warmup = WARMUP if args.warmup is None else args.warmup
        if warmup:
            validate(trace[:warmup], cfg, table, ex)  # compiles kernels, captures graphs
        record = validate(trace, cfg, table, ex)
        record["gpu_preset"] = preset
    record["workload"] = workload_of(args)
    write_validation(record, out)
    print(format_table(record))
    print(f"wrote {out}/")
    return 0


#: Options that choose the validated workload: ``--measured`` needs the same.
WORKLOAD_OPTIONS = ("trace", "limit", "duration_s", "n", "beam_width", "scheduler", "preemption",
                    "max_num_seqs", "num_gpu_blocks", "num_cpu_blocks", "seed")


def workload_of(args) -> dict:
    return {k: getattr(args, k) for k in WORKLOAD_OPTIONS} | {"calibration": args.calibration}


def validation_trace(args):
    """The trace file (or the built-in workload), cut by --limit and
    --duration-s, with --n / --beam-width set for every request."""
    trace = traces.load_trace(args.trace) if args.trace else traces.default_workload(args.seed)
    if args.limit:
        trace = trace[: args.limit]
    if args.duration_s:
        trace = trace.select(trace.arrival_s < trace.arrival_s[0] + args.duration_s)
    fanout = {k: v for k, v in (("n", args.n), ("beam_width", args.beam_width)) if v is not None}
    if fanout:
        trace = Trace.from_frame(trace.to_dataframe().assign(**fanout), trace.source,
                                 {**trace.meta, **fanout})
    return trace


def validation_config(args, meta: dict, preset: str) -> ReplayConfig:
    sched = SchedulerConfig(max_num_seqs=args.max_num_seqs, generation=args.scheduler,
                            preemption=args.preemption)
    return ReplayConfig(model=meta["model"], gpu=meta["gpu"] if preset != "cpu" else "h100-80gb",
                        block_size=int(meta["block_size"]), num_gpu_blocks=args.num_gpu_blocks,
                        num_cpu_blocks=args.num_cpu_blocks, scheduler=sched, seed=args.seed,
                        cost_model=args.calibration)


def revalidate(args, trace, table: TableCostModel) -> dict:
    """``--measured DIR``: the record of an earlier GPU run (its raw step
    records and requests, written by ``write_validation``) against
    ``table``; no GPU. Memory identity does not depend on the calibration
    and is taken from that run's record."""
    import pandas as pd

    from pagesim.validate import evaluate

    src = Path(args.measured)
    try:
        old = json.loads((src / "validation.json").read_text())
        # the measured seconds must come back exactly: --measured re-checks
        # give the same figures as the run that measured them
        rows = pd.read_csv(src / GPU_STEPS, **exact_floats())
        requests = pd.read_csv(src / GPU_REQUESTS, **exact_floats())
    except (OSError, ValueError) as e:
        raise CommandError(f"--measured {src}: not a validate output folder with raw GPU data "
                           f"({e})") from None
    now = workload_of(args)
    differ = [k for k in WORKLOAD_OPTIONS if k in old.get("workload", {}) and k != "trace"
              and old["workload"][k] != now[k]]
    if differ or len(requests) != len(trace):
        raise CommandError(f"--measured {src}: that run had other workload options "
                           f"({', '.join(differ) or 'request count'}); give the same ones")
    preset = old.get("gpu_preset", table.meta["gpu"])
    cfg = validation_config(args, table.meta, preset)
    record = evaluate(trace, cfg, table, rows, requests, old["memory"])
    record.update(measured_from=str(src), gpu_preset=preset)
    return record


GPU_STEPS, GPU_REQUESTS = "gpu_steps.csv.gz", "gpu_requests.csv.gz"


def write_validation(record: dict, out: Path) -> None:
    """validation.json, validation.md, the figures, and the GPU run's raw
    step records and requests (for ``--measured``), as one folder."""
    from pagesim.analysis.validation_plots import FIGURES
    from pagesim.validate import format_table, public

    def fill(tmp: Path) -> None:
        (tmp / "validation.json").write_text(json.dumps(public(record), indent=2, allow_nan=False,
                                                        default=_jsonable) + "\n")
        (tmp / "validation.md").write_text(format_table(record) + "\n")
        record["_gpu_rows"].to_csv(tmp / GPU_STEPS, index=False)
        record["_gpu_requests"].to_csv(tmp / GPU_REQUESTS, index=False)
        for name, draw in FIGURES.items():
            draw(record).savefig(tmp / name, dpi=110)

    _write_dir_atomically(out, fill)


def check_validate(args) -> list[tuple[str, str]]:
    """Cross-option problems of ``validate``, with replay's rules."""
    found = swap_conflicts(args.preemption, args.scheduler, args.num_cpu_blocks)
    if args.measured and args.warmup:
        found.append(("--warmup", "--measured re-reads an earlier GPU run; nothing is warmed"))
    return found


def _jsonable(x):
    return None if isinstance(x, float) else str(x)


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_dir_atomically(path: Path, fill) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["cmd_calibrate", "cmd_validate", "CommandError", "CalibrationError"]
