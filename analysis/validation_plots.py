"""Figures of a validation record (``pagesim validate``).

Drawn on ``matplotlib.figure.Figure`` objects, never through pyplot's global
state, so a notebook's backend is left alone.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def step_scatter(record: dict) -> Figure:
    """Simulated against measured step time, log-log, one point per step."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    lo, hi = np.inf, 0.0
    for name, marker in (("roofline", "x"), ("calibrated", "o")):
        st = record["step_time"][name]
        m, p = np.asarray(st["measured_s"]) * 1e3, np.asarray(st["predicted_s"]) * 1e3
        ax.scatter(m, p, s=8, marker=marker, alpha=0.5,
                   label=f"{name} (median |err| {st['median_abs_rel_err']:.1%})")
        lo, hi = min(lo, m.min(), p.min()), max(hi, m.max(), p.max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="simulated = measured")
    ax.set(xscale="log", yscale="log", xlabel="measured step time (ms)",
           ylabel="simulated step time (ms)", title="Step time: simulated vs measured")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def error_cdf(record: dict) -> Figure:
    """CDF of |relative error| per step, with the 3 % / 8 % targets marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name in ("calibrated", "roofline"):
        st = record["step_time"][name]
        err = np.sort(np.abs(np.asarray(st["predicted_s"]) / np.asarray(st["measured_s"]) - 1)) * 100
        ax.plot(err, np.arange(1, len(err) + 1) / len(err), label=name)
    for x, text in ((3, "median target 3 %"), (8, "p95 target 8 %")):
        ax.axvline(x, ls="--", lw=0.8, color="gray")
        ax.text(x, 0.02, text, rotation=90, fontsize=7, va="bottom")
    ax.set(xscale="symlog", xlabel="|step time error| (%)", ylabel="fraction of steps",
           title="Step time error CDF", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_cdfs(record: dict) -> Figure:
    """TTFT and end-to-end latency CDFs: GPU run and the two simulations."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    runs = {"GPU (measured)": record["_gpu_requests"],
            "simulated, calibrated": record["end_to_end"]["calibrated"]["_requests"],
            "simulated, roofline": record["end_to_end"]["roofline"]["_requests"]}
    for ax, col, title in ((axes[0], "ttft_s", "TTFT"), (axes[1], "e2e_s", "End-to-end latency")):
        for label, df in runs.items():
            x = np.sort(df[col].dropna().to_numpy() * 1e3)
            if len(x):
                ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=label)
        ax.set(xlabel=f"{title} (ms)", ylabel="fraction of requests", title=title, ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


FIGURES = {"step_scatter.png": step_scatter, "step_error_cdf.png": error_cdf,
           "latency_cdfs.png": latency_cdfs}
