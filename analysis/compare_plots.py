"""Figures of several runs at once: an overlay for ``pagesim compare`` and
the block-size sweep (fragmentation and prefix-cache hit rate against block
size). Built on ``matplotlib.figure.Figure`` without pyplot, like
``analysis.plots``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pagesim.analysis.plots import (CDF_POINTS, COLORS, LABELS, binned_max, latency_samples,
                                    new_figure, save, time_bins, weighted_cdf)
from pagesim.sim.accounting import CATEGORIES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PALETTE = ("#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8338ec", "#6a994e", "#bc4749", "#3a86ff")


def binned_mean(steps, column: str, bins: int = 400):
    """Time-weighted mean of ``column`` per time bin."""
    if len(steps) == 0:
        return np.array([]), np.array([])
    edges, idx = time_bins(steps, bins)
    dur = steps["duration_s"].to_numpy(dtype=float)
    w = np.bincount(idx, weights=dur, minlength=bins)
    v = np.bincount(idx, weights=steps[column].to_numpy(dtype=float) * dur, minlength=bins)
    keep = w > 0
    return 0.5 * (edges[:-1] + edges[1:])[keep], v[keep] / w[keep]


def overlay(results: dict, path=None, *, title: str | None = None) -> Figure:
    """label -> result (``.steps``, ``.requests``, ``.summary``): KV usage and
    waiting requests over time, the memory split, and TTFT/TPOT/E2EL CDFs."""
    fig = new_figure((14, 7.5))
    axes = fig.subplots(2, 3)
    usage, waiting, split = axes[0]
    for i, (label, res) in enumerate(results.items()):
        color = PALETTE[i % len(PALETTE)]
        usage.plot(*binned_mean(res.steps, "kv_cache_usage_perc"), color=color, label=label, linewidth=1.2)
        waiting.step(*binned_max(res.steps, "num_requests_waiting"), where="mid", color=color,
                     label=label, linewidth=1.2)
        samples = latency_samples(res.requests)
        for ax, name in zip(axes[1], ("TTFT", "TPOT", "E2EL")):
            x, y = weighted_cdf(*samples[name], max_points=CDF_POINTS)
            ax.plot(x, y, color=color, label=label, linewidth=1.3)
    usage.set(ylabel="kv_cache_usage_perc", xlabel="simulated time (s)", ylim=(0, 1.02),
              title="KV cache usage (time-weighted)")
    waiting.set(ylabel="num_requests_waiting (peak per bin)", xlabel="simulated time (s)",
                title="Waiting requests")
    memory_split_bars(split, results)
    for ax, name in zip(axes[1], ("TTFT", "TPOT", "E2EL")):
        ax.set(xlabel=f"{name} (ms)", ylabel="fraction", ylim=(0, 1.02), title=f"{name} CDF")
        xs = [line.get_xdata() for line in ax.lines if len(line.get_xdata())]
        if xs and min(x.min() for x in xs) > 0 and max(x.max() for x in xs) / min(x.min() for x in xs) > 50:
            ax.set_xscale("log")
    for ax in (*axes[0][:2], *axes[1]):
        ax.grid(alpha=0.3)
    usage.legend(fontsize=8, frameon=False)
    fig.suptitle(title or f"Comparison of {len(results)} runs", fontsize=11)
    save(fig, path)
    return fig


def memory_split_bars(ax, results: dict) -> None:
    labels = list(results)
    bottom = np.zeros(len(labels))
    for c in CATEGORIES:
        v = np.array([results[lb].summary["memory_split"][c] for lb in labels])
        ax.bar(range(len(labels)), v, bottom=bottom, color=COLORS[c], label=LABELS[c])
        bottom += v
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="share of KV capacity (time-averaged)", ylim=(0, 1), title="Where KV memory goes")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def block_size_sweep(df, path=None, *, ax=None, title: str | None = None):
    """``df``: one row per block size with columns ``block_size``,
    ``internal_frag`` (share of capacity) and optionally ``hit_rate``
    (prefix-cache hits / queried tokens) and ``token_states``."""
    if ax is None:
        ax = new_figure((7, 4)).subplots()
    bs = df["block_size"].to_numpy()
    ax.plot(bs, 100 * df["internal_frag"], "o-", color="#f4a261", label="internal fragmentation")
    if "token_states" in df:
        ax.plot(bs, 100 * df["token_states"], "s-", color="#2a9d8f", label="token states")
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.set(xlabel="block size (tokens)", ylabel="% of KV capacity (time-averaged)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "hit_rate" in df:
        ax2 = ax.twinx()
        ax2.plot(bs, 100 * df["hit_rate"], "^--", color="#8338ec", label="prefix-cache hit rate")
        ax2.set_ylabel("prefix-cache hit rate (%)")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, frameon=False, loc="best")
    ax.set_title(title or "Block size: fragmentation and prefix-cache hit rate", fontsize=10)
    save(ax.figure, path)
    return ax


def sweep_table(results: dict, block_sizes) -> pd.DataFrame:
    """The ``block_size_sweep`` input from results keyed like ``results``."""
    rows = []
    for bs, res in zip(block_sizes, results.values()):
        s = res.summary
        rows.append({"block_size": bs, "internal_frag": s["memory_split"]["internal_frag"],
                     "token_states": s["memory_split"]["token_states"],
                     "hit_rate": s["prefix_cache"].get("hit_rate_tokens") or 0.0,
                     "preemptions": s["preemptions"]})
    return pd.DataFrame(rows)


__all__ = ["overlay", "memory_split_bars", "block_size_sweep", "sweep_table", "binned_mean"]
