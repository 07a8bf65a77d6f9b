"""The workload a ``replay`` or ``compare`` runs: a trace file or a
synthetic workload, with the command line's policies applied.

Requests longer than ``--max-model-len`` are never dropped here: under
``reject`` they reach the scheduler, which rejects each with its reason, so
that every one is a row of ``requests.parquet`` and counted in
``summary.json``; ``truncate`` cuts them and marks them (``truncated``);
``error`` stops at the first one, naming its file and line.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pagesim import traces
from pagesim.generated_options import option_specs
from pagesim.option_groups import WorkloadOptions
from pagesim.provenance import file_identity
from pagesim.sim.costmodel import get_model
from pagesim.traces.load import apply_max_model_len
from pagesim.traces.synthetic import DEFAULT_REQUESTS
from pagesim.traces.trace import Trace


def workload_dict(args) -> dict:
    """The workload options of a run, for ``summary.json``'s config block
    (a config file: ``--config``), the trace as an absolute path so the
    summary re-runs from any folder."""
    d = {s.dest: getattr(args, s.dest) for s in option_specs(WorkloadOptions)}
    if d.get("trace"):
        d["trace"] = str(Path(d["trace"]).resolve())
    return d


def workload_conflicts(args) -> list[tuple[str, str]]:
    """(option, problem) for options that the chosen workload would ignore."""
    if args.trace:
        synthetic_only = [("--workload", args.workload != "default"),
                          ("--num-requests", args.num_requests is not None),
                          ("--system-prompt", bool(args.system_prompt)),
                          ("--few-shot", args.few_shot is not None)]
        found = [(o, "applies to synthetic workloads only; with a TRACE use --limit, --rate, "
                  "--n, --beam-width") for o, given in synthetic_only if given]
        if args.cv is not None and args.rate is None:
            found.append(("--cv", "re-times a TRACE with Gamma arrivals and needs --rate"))
        return found
    trace_only = [("--format", args.trace_format is not None), ("--sort", args.sort)]
    return [(o, "applies to a TRACE only") for o, given in trace_only if given]


@dataclass
class Workload:
    trace: Trace
    max_model_len: int
    info: dict | None      # the trace file's provenance; None when synthetic


def load_workload(args) -> Workload:
    max_len = args.max_model_len or get_model(args.model).max_model_len
    if args.trace:
        trace, info = _from_file(args, max_len)
    else:
        trace, info = _synthetic(args, max_len), None
    if args.limit is not None:
        trace = trace[: args.limit]
    too_long = int((trace.prompt_tokens + trace.output_tokens > max_len).sum())
    if too_long:
        print(f"pagesim: {too_long} of {len(trace)} requests are longer than max_model_len "
              f"{max_len}: rejected, each a row of requests.parquet with its reason", file=sys.stderr)
    if info is not None:
        info.update(rows_replayed=len(trace), too_long_rejected=too_long)
    return Workload(trace, max_len, info)


def _from_file(args, max_len: int) -> tuple[Trace, dict]:
    arrival = None
    if args.rate is not None:
        arrival = f"gamma:{args.rate}:{args.cv}" if args.cv is not None else args.rate
    mode = args.on_too_long
    # Under "reject" the scheduler rejects (and reports) them: see the module doc.
    trace = traces.load_trace(args.trace, args.trace_format, arrival=arrival, seed=args.seed,
                              max_model_len=None if mode == "reject" else max_len,
                              on_too_long=mode, sort=args.sort)
    meta = dict(trace.meta)
    truncated = meta.pop("truncated_ids", [])
    info = {**file_identity(args.trace), "format": meta.get("format", "pagesim"),
            "rows_read": len(trace), "rows_rejected_at_load": 0,
            "rows_truncated_at_load": len(truncated), "rows_sorted": meta.get("sorted_rows", 0),
            "meta": meta}
    fanout = {k: v for k, v in (("n", args.n), ("beam_width", args.beam_width)) if v is not None}
    if fanout:
        frame = trace.to_dataframe().assign(**fanout)
        trace = Trace.from_frame(frame, trace.source, {**trace.meta, **fanout})
        info["set_for_every_request"] = fanout
    return trace, info


def _synthetic(args, max_len: int) -> Trace:
    n, beam = args.n or 1, args.beam_width or 1
    if (args.workload == "default" and args.num_requests is None and args.rate is None
            and n == 1 and beam == 1 and not args.system_prompt and not args.few_shot
            and args.cv is None):
        trace = traces.default_workload(args.seed)
    else:
        workload = "sharegpt" if args.workload == "default" else args.workload
        trace = traces.synthetic(workload, num_requests=args.num_requests or DEFAULT_REQUESTS,
                                 rate=args.rate or traces.DEFAULT_RATE, cv=args.cv, n=n,
                                 beam_width=beam, system_prompt_tokens=args.system_prompt,
                                 few_shot=args.few_shot, seed=args.seed)
    if args.on_too_long != "reject":
        trace = apply_max_model_len(trace, max_len, args.on_too_long)
    return trace
