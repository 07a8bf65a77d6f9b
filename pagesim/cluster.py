"""Replaying a trace on several replicas behind a router (``--replicas N``).

Each replica is built exactly as ``run_replay`` builds its one engine (own
KV-cache manager, scheduler, executor, step recorder, event log), over one
shared SimPy environment (``sim/engine/cluster.py``). Outputs: the requests
table gains a ``replica`` column (trace order kept), the steps table one
row per replica step with a ``replica`` column, and ``summary.json`` the
cluster's numbers plus one summary per replica under ``replicas``. With
``--cpu-offload-blocks`` / ``--link-model pcie`` each replica has its own
CPU tier and PCIe link: the tiers' hits are summed, the links' traffic is
summed per direction (utilisation: the replicas' mean), and the links table
gains a ``replica`` column.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pagesim.replica import ReplayResult, add_transfer_summary, build, check_drained, config_dict
from pagesim.sim.engine.cluster import Cluster
from pagesim.sim.event_log import EventLog
from pagesim.sim.gauges import add_gauges
from pagesim.sim.metrics import requests_dataframe, summarize
from pagesim.sim.offload import tier_summary
from pagesim.sim.router import make_router
from pagesim.traces.trace import Trace


def run_cluster(trace, cfg, *, executor=None, progress: bool = False,
                pause_gc: bool = False) -> ReplayResult:
    if executor is not None and executor.needs_plans:
        raise ValueError("--replicas > 1 prices steps with a cost model: an executor that runs "
                         "steps (e.g. --executor gpu) drives one replica only")
    parts = {}

    def make_engine(env, replica):  # a cost-model executor is stateless: replicas share it
        engine, sched, kv, recorder = build(trace, cfg, executor, env=env, source=replica)
        sched.request_events = []   # the per-step gauges are derived from them
        parts[replica.index] = (sched, kv, recorder)
        return engine

    cluster = Cluster(trace, make_router(cfg.router), make_engine, cfg.replicas)
    cluster.run(pause_gc=pause_gc)
    reqs, steps, per_replica, links = [], [], [], []
    truncated = trace.meta.get("truncated_ids", ()) if isinstance(trace, Trace) else ()
    for i in range(cfg.replicas):
        sched, kv, recorder = parts[i]
        check_drained(sched, kv)
        rq = requests_dataframe(sched.records, truncated)
        marks = pd.DataFrame(sched.request_events,
                             columns=["step", "request", "kind", "queried", "cached"])
        st = add_gauges(recorder.to_dataframe(), rq, kv.capacity_tokens, marks).assign(replica=i)
        rq = rq.assign(replica=i)
        per_replica.append(_summary(rq, st, sched, kv, cluster.engines[i].clock, 0.0))
        lk = add_transfer_summary(per_replica[-1], cfg, cluster.engines[i], kv)
        if lk is not None:
            links.append(lk.assign(replica=i))
        reqs.append(rq)
        steps.append(st)
    req_df = _trace_order(reqs, cluster.dispatcher.order)
    step_df = pd.concat(steps, ignore_index=True)
    kv0 = parts[0][1]
    summary = summarize(req_df, step_df, capacity_tokens=kv0.capacity_tokens,
                        preemptions=sum(p[0].preemptions for p in parts.values()),
                        hit_tokens=sum(p[0].prefix_cache_hits for p in parts.values()),
                        queried_tokens=sum(p[0].prefix_cache_queries for p in parts.values()),
                        wall_s=cluster.wall_s, sim_time_s=cluster.clock,
                        percentiles=cfg.metric_percentiles, goodput=cfg.goodput)
    summary["config"] = config_dict(cfg, kv0)
    if cfg.cpu_offload_blocks:
        scheds, kvs = zip(*((p[0], p[1]) for p in parts.values()))
        summary["prefix_cache"]["tiers"] = tier_summary(scheds, kvs)
    link_df = pd.concat(links, ignore_index=True) if links else None
    if link_df is not None:  # the cluster's links: per direction, summed over replicas
        summary["links"] = {d: _sum_links([r["links"][d] for r in per_replica], cluster.clock)
                            for d in per_replica[0]["links"]}
    summary["replicas"] = per_replica
    return ReplayResult(summary, req_df, step_df, _merged_events(parts, cfg), cfg, links=link_df)


def _sum_links(parts: list[dict], sim_time_s: float) -> dict:
    out = {k: sum(p[k] for p in parts) for k in ("transfers", "blocks", "busy_s", "queued_s")}
    # mean utilisation of the replicas' links over the cluster's time
    out["utilisation"] = out["busy_s"] / (len(parts) * sim_time_s) if sim_time_s > 0 else None
    return out


def _summary(rq, st, sched, kv, clock, wall) -> dict:
    return summarize(rq, st, capacity_tokens=kv.capacity_tokens, preemptions=sched.preemptions,
                     hit_tokens=sched.prefix_cache_hits, queried_tokens=sched.prefix_cache_queries, wall_s=wall,
                     sim_time_s=clock)


def _trace_order(frames: list[pd.DataFrame], order: list[int]) -> pd.DataFrame:
    """Rows back in trace order: request ``j`` is the next row of replica ``order[j]``."""
    order_arr = np.asarray(order, dtype=np.int64)
    pos = np.empty(len(order_arr), dtype=np.int64)
    for i, df in enumerate(frames):
        where = np.flatnonzero(order_arr == i)
        assert len(where) == len(df), f"replica {i} has {len(df)} request rows, {len(where)} routed"
        pos[where] = np.arange(len(df)) + sum(len(f) for f in frames[:i])
    return pd.concat(frames, ignore_index=True).iloc[pos].reset_index(drop=True)


def _merged_events(parts, cfg) -> EventLog | None:
    """One event log per replica, tagged: ``replica_logs`` on the merged log."""
    logs = [parts[i][0].log for i in range(cfg.replicas)]
    if logs[0] is None:
        return None
    merged = EventLog()
    for name in ("steps", "seqs", "kinds", "blocks", "srcs"):
        setattr(merged, name, [x for log in logs for x in getattr(log, name)])
    merged.replicas = [i for i, log in enumerate(logs) for _ in range(len(log))]
    merged.replica_logs = logs
    return merged
