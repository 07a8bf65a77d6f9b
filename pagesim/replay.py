"""Replay a trace: one replica (``pagesim/replica.py`` builds it) or a
cluster of them (``pagesim/cluster.py``); collect the results. The CLI,
notebooks and tests all go through ``run_replay``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pagesim.cluster import run_cluster
from pagesim.replica import (
    ReplayConfig, ReplayResult, add_transfer_summary, build, check_drained, config_dict,
    has_content_identity, replace,
)
from pagesim.sim.costmodel import describe
from pagesim.sim.executor import cost_model_of
from pagesim.sim.gauges import Gauges
from pagesim.sim.metrics import requests_dataframe, summarize
from pagesim.steps_file import ParquetSink, StepsFile, finish_steps
from pagesim.traces.trace import Trace


def run_replay(trace, cfg: ReplayConfig = ReplayConfig(), *, executor=None,
               progress: bool = False, pause_gc: bool = False,
               record_requests: bool = False, steps_path: str | Path | None = None) -> ReplayResult:
    """Replay ``trace``; the results are the same whatever ``progress`` and
    ``pause_gc``. ``pause_gc`` turns CPython's cyclic garbage collector off
    for the run (about 15 % faster on large traces) and moves the objects
    alive at the end to the oldest generation; the collector's on/off state
    is restored. It is process-wide state, so it is off unless asked for
    (the CLI and the benchmarks ask).

    ``record_requests``: return each request's admissions, preemptions and
    swaps as ``request_events`` (for ``--timeline``). They are always
    recorded (one small row per admission or preemption, fewer than the
    requests table's rows times two plus the preemptions): the per-step
    prefix-cache counters are summed from them.

    ``steps_path``: once the steps table grows past ``HOLD_ROWS`` rows
    (``sim/step_recorder.py``), stream it to this Parquet file as the run
    goes and return it as a ``StepsFile`` (read by column) instead of a
    DataFrame: memory then stays bounded however many steps the run takes
    (``pagesim/steps_file.py``). A shorter table is returned as a DataFrame
    and nothing is written. Cluster runs keep their tables in memory."""
    if cfg.replicas > 1:
        return run_cluster(trace, cfg, executor=executor, progress=progress, pause_gc=pause_gc)
    raw = None if steps_path is None else Path(steps_path).with_name(f".{Path(steps_path).name}.raw")
    sink = None if raw is None else ParquetSink(raw)
    engine, sched, kv, recorder = build(trace, cfg, executor, sink=sink)
    engine.progress = progress
    engine.pause_gc = pause_gc
    sched.request_events = []
    try:
        engine.run()
        if sink is not None:
            recorder.close()
            sink.close()
    except BaseException:   # Ctrl-C included: no half-written file left behind
        if sink is not None:
            sink.discard()
        raise
    check_drained(sched, kv)
    meta = trace.meta if isinstance(trace, Trace) else {}
    req_df = requests_dataframe(sched.records, meta.get("truncated_ids", ()))
    marks = pd.DataFrame(sched.request_events, columns=["step", "request", "kind", "queried", "cached"])
    gauges = Gauges(req_df, kv.capacity_tokens, marks)
    if recorder.spilled:
        step_df = finish_steps(raw, Path(steps_path), gauges)
    else:
        step_df = gauges.add(recorder.to_dataframe())
    applies = kv.caps.prefix_caching and has_content_identity(trace, cfg)
    summary = summarize(req_df, step_df, capacity_tokens=kv.capacity_tokens,
                        preemptions=sched.preemptions, hit_tokens=sched.prefix_cache_hits,
                        queried_tokens=sched.prefix_cache_queries, wall_s=engine.wall_s,
                        sim_time_s=engine.clock, prefix_caching_applies=applies,
                        percentiles=cfg.metric_percentiles, goodput=cfg.goodput)
    summary["config"] = config_dict(cfg, kv)
    links = add_transfer_summary(summary, cfg, engine, kv)
    model = cost_model_of(engine.executor)
    summary["cost_model"] = describe(model) if model is not None else {"kind": "executor",
                                                                       "name": type(engine.executor).__name__}
    return ReplayResult(summary, req_df, step_df, sched.log, cfg,
                        marks if record_requests else None, links)


__all__ = ["ReplayConfig", "ReplayResult", "StepsFile", "run_replay", "build", "replace",
           "has_content_identity"]
