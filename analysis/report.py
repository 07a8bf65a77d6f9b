"""A self-contained HTML report: summary tables and interactive charts.

One file that opens offline anywhere (no CDN, no server): the chart code is
``report.js`` beside this module (a small canvas chart, no library) and
the data is inlined as JSON. Time series are reduced to at most
``MAX_POINTS`` time bins before they are written (memory shares are
time-weighted means per bin, request counts the peak per bin, so no
spike disappears); the browser thins them again to the pixels of the
visible range, so a run of millions of steps stays a few MB and zooms
smoothly (drag to zoom, double-click to reset).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from pagesim.analysis.compare_plots import PALETTE, binned_mean
from pagesim.analysis.plots import (COLORS, LABELS, binned_max, binned_memory, latency_samples,
                                    percentile_marks, run_title, weighted_cdf)
from pagesim.sim.accounting import CATEGORIES

MAX_POINTS = 20_000
CDF_POINTS = 1_000
JS = Path(__file__).with_name("report.js")

# Uncaught errors are recorded on the page (for the browser test and for bug reports).
ERRORS_JS = ("window.addEventListener('error',function(e){var h=document.documentElement;"
             "h.dataset.errors=(h.dataset.errors||'')+String(e.message)+';';});")
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}td:first-child,th:first-child{text-align:left}
.grid{display:grid;align-items:start;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:18px}
.chart{position:relative}.chart h3{font-size:13px;margin:6px 0}
.legend{font-size:12px}.legend span{margin-right:12px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
.tip{display:none;position:absolute;background:rgba(255,255,255,.95);border:1px solid #aaa;
 padding:4px 6px;font-size:11px;white-space:pre;pointer-events:none}
.note{color:#666;font-size:12px}
"""


def _r(a) -> list:
    """Round to 6 significant digits: the report stays small, nothing visible changes."""
    a = np.asarray(a, dtype=float)
    return [float(f"{v:.6g}") for v in a.tolist()]


def _chart(charts: list, title: str, spec: dict) -> str:
    cid = f"c{len(charts)}"
    spec["title"] = title
    charts.append((cid, spec))
    return f'<div class="chart"><h3>{html.escape(title)}</h3><div data-chart="{cid}"></div></div>'


# ---------------------------------------------------------------- series
def memory_spec(steps) -> dict:
    x, fr = binned_memory(steps, MAX_POINTS)
    series, top = [], np.zeros(len(x))
    for c in CATEGORIES:
        top = top + fr[c]
        series.append({"name": LABELS[c], "x": _r(x), "y": _r(top), "raw": _r(fr[c]),
                       "color": COLORS[c], "kind": "area"})
    return {"series": series, "xlabel": "simulated time (s)", "ylabel": "share of KV capacity",
            "ymin": 0, "ymax": 1}


def queue_spec(steps) -> dict:
    series = []
    for col, color, name in (("num_requests_running", "#264653", "running"),
                             ("num_requests_waiting", "#e76f51", "waiting")):
        x, y = binned_max(steps, col, MAX_POINTS)
        series.append({"name": name, "x": _r(x), "y": _r(y), "color": color, "kind": "step"})
    pre = steps[steps["preemptions"] > 0]
    if len(pre) > MAX_POINTS:
        pre = pre.iloc[np.linspace(0, len(pre) - 1, MAX_POINTS).astype(int)]
    series.append({"name": f"preemption ({int(steps['preemptions'].sum()):,})", "x": _r(pre["start_s"]),
                   "y": [0.0] * len(pre), "color": "#9b2226", "kind": "points"})
    return {"series": series, "xlabel": "simulated time (s)", "ylabel": "requests"}


def cdf_series(values, counts, name, color) -> dict:
    x, y = weighted_cdf(values, counts, max_points=CDF_POINTS)
    return {"name": name, "x": _r(x), "y": _r(y), "color": color, "kind": "line"}


def cdf_spec(name: str, runs: dict) -> dict:
    """runs: label -> (values in ms, counts or None)."""
    series, marks, lo, hi = [], [], np.inf, 0.0
    for i, (label, (v, c)) in enumerate(runs.items()):
        s = cdf_series(v, c, label, PALETTE[i % len(PALETTE)])
        series.append(s)
        if s["x"]:
            lo, hi = min(lo, min(s["x"])), max(hi, max(s["x"]))
    if len(runs) == 1:
        st = percentile_marks(*next(iter(runs.values())))
        marks = [{"x": st["p50"], "label": f"p50 {st['p50']:,.1f} ms"},
                 {"x": st["p99"], "label": f"p99 {st['p99']:,.1f} ms", "row": 1}]
    logx = bool(lo > 0 and hi / lo > 50)
    return {"series": series, "marks": marks, "xlabel": f"{name} (ms)", "ylabel": "fraction",
            "ymin": 0, "ymax": 1, "logx": logx}


# ---------------------------------------------------------------- tables
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c) if i else html.escape(str(c))}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _share(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def summary_rows(s: dict) -> tuple[list, list]:
    """(run rows, serving rows as vllm bench serve names them)."""
    r, sv = s["requests"], s.get("serving", {})
    rows = [("requests finished / total", f"{r['finished']:,} / {r['total']:,}"),
            ("rejected", r["rejected"]), ("preemptions", s["preemptions"]),
            ("prefix-cache hit rate", _share(s["prefix_cache"].get("hit_rate_tokens")))]
    rows += [(f"memory: {LABELS[c]}", f"{v:.1%}") for c, v in s["memory_split"].items()]
    rows += [("simulated time (s)", s["sim"]["sim_time_s"]), ("engine steps", s["sim"]["steps"]),
             ("wall time (s)", s["sim"]["wall_s"])]
    return rows, [(k, v) for k, v in sv.items() if not isinstance(v, dict)]


# ---------------------------------------------------------------- pages
def _json(spec: dict) -> str:
    """JSON safe inside a script element (no closing tag can appear)."""
    return json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")


def page(title: str, body: str, charts: list) -> str:
    data = "".join(f'<script type="application/json" id="{cid}">{_json(spec)}</script>'
                   for cid, spec in charts)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{ERRORS_JS}</script></head><body><h1>{html.escape(title)}</h1>{body}{data}"
            f"<script>{JS.read_text()}</script></body></html>")


def replay_report(result, path=None) -> str:
    """HTML of one replay (``result``: ``.summary``, ``.steps``, ``.requests``)."""
    s, charts = result.summary, []
    lat = latency_samples(result.requests, result.steps)
    body = (f"<p class=note>{html.escape(run_title(s))}. Drag across a chart to zoom, double-click "
            "to reset. Latencies are defined as in <code>vllm bench serve</code>.</p>"
            + "<h2>Summary</h2><div class=grid>"
            + "".join(html_table((head, ""), rows) for head, rows in
                      zip(("run", "serving (vllm bench serve keys)"), summary_rows(s)))
            + "</div>"
            + "<h2>Memory and queues over time</h2><div class=grid>"
            + _chart(charts, "KV memory split (stacked)", memory_spec(result.steps))
            + _chart(charts, "Running and waiting requests, preemptions", queue_spec(result.steps))
            + "</div><h2>Latency CDFs</h2><div class=grid>"
            + "".join(_chart(charts, f"{name} CDF", cdf_spec(name, {name: samples}))
                      for name, samples in lat.items())
            + "</div>")
    out = page(f"pagesim replay: {run_title(s)}", body, charts)
    if path is not None:
        Path(path).write_text(out)
    return out


def compare_report(results: dict, table, path=None, *, option: str = "allocator") -> str:
    """HTML of ``pagesim compare``: the table and overlaid charts."""
    charts = []
    header = ("", *table.columns)
    rows = [(idx, *row) for idx, row in zip(table.index, table.itertuples(index=False))]
    usage, waiting = [], []
    for i, (label, res) in enumerate(results.items()):
        color = PALETTE[i % len(PALETTE)]
        x, y = binned_mean(res.steps, "kv_cache_usage_perc", MAX_POINTS)
        usage.append({"name": label, "x": _r(x), "y": _r(y), "color": color, "kind": "line"})
        x, y = binned_max(res.steps, "num_requests_waiting", MAX_POINTS)
        waiting.append({"name": label, "x": _r(x), "y": _r(y), "color": color, "kind": "step"})
    lat = {label: latency_samples(res.requests, res.steps) for label, res in results.items()}
    body = (f"<p class=note>{len(results)} runs varying <code>{html.escape(option)}</code>. Drag to "
            "zoom, double-click to reset.</p><h2>Summary</h2>" + html_table(header, rows)
            + "<h2>Over time</h2><div class=grid>"
            + _chart(charts, "KV cache usage (kv_cache_usage_perc)",
                     {"series": usage, "xlabel": "simulated time (s)", "ylabel": "fraction", "ymin": 0, "ymax": 1})
            + _chart(charts, "Waiting requests (num_requests_waiting)",
                     {"series": waiting, "xlabel": "simulated time (s)", "ylabel": "requests"})
            + "</div><h2>Latency CDFs</h2><div class=grid>"
            + "".join(_chart(charts, f"{name} CDF", cdf_spec(name, {lb: lat[lb][name] for lb in lat}))
                      for name in ("TTFT", "TPOT", "ITL", "E2EL"))
            + "</div>")
    out = page(f"pagesim compare: {option}", body, charts)
    if path is not None:
        Path(path).write_text(out)
    return out


__all__ = ["replay_report", "compare_report", "MAX_POINTS"]
