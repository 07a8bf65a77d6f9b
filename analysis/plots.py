"""Plots that answer a serving engineer's first questions at a glance.

* ``memory_over_time``: where KV memory goes (stacked split) and, below it,
  how many requests run and wait, with a mark at every preemption;
* ``latency_cdfs``: TTFT, TPOT, ITL and E2EL distributions in ms, p50/p99
  marked, with a title that states the run.

Each function takes the replay's tables (pandas DataFrames) and returns a
``matplotlib.figure.Figure`` built without pyplot, so library code never
touches the global backend or a notebook's figure state; pass ``path=`` to
also write a PNG, or ``ax=``/``axes=`` to draw into a figure of your own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagesim.sim.accounting import CATEGORIES
from pagesim.sim.serving_metrics import itl_samples, weighted_stats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = {
    "token_states": "#2a9d8f", "reserved": "#e9c46a", "internal_frag": "#f4a261",
    "external_frag": "#e76f51", "cached_free": "#8ab17d", "free": "#d9d9d9",
}
LABELS = {
    "token_states": "token states", "reserved": "reserved (future tokens)",
    "internal_frag": "internal fragmentation", "external_frag": "external fragmentation",
    "cached_free": "cached, free", "free": "free",
}
DPI = 110


def new_figure(size=(9, 4)) -> Figure:
    """A figure that belongs to no pyplot state (savefig uses the Agg canvas)."""
    # matplotlib is imported here, not at the top: it costs ~0.5 s, which
    # every ``pagesim replay --no-plots`` (and each library import) would pay
    from matplotlib.figure import Figure
    return Figure(figsize=size, layout="constrained")


def save(fig: Figure, path) -> None:
    if path is not None:
        fig.savefig(path, dpi=DPI, format="png")


def run_title(summary) -> str:
    """'paged · llama-3-8b on h100-80gb · block 16 · 600 blocks'."""
    if not summary:
        return ""
    cfg = summary.get("config", {})
    sched = cfg.get("scheduler") or {}
    policy = None
    if sched and (sched.get("generation") != "v1" or sched.get("victim") != "latest"):
        policy = f"{sched.get('generation')} {sched.get('preemption')}, victim {sched.get('victim')}"
    parts = [cfg.get("allocator"), policy, f"{cfg.get('model')} on {cfg.get('gpu')}" if cfg.get("model") else None,
             f"block {cfg.get('block_size')}" if cfg.get("block_size") else None,
             f"{cfg.get('num_gpu_blocks'):,} blocks" if cfg.get("num_gpu_blocks") else None]
    return " · ".join(str(p) for p in parts if p)


# ---------------------------------------------------------------- binning
def time_bins(steps, bins: int = 600):
    """(edges, bin index of each step): equal time bins over the run."""
    t = steps["start_s"].to_numpy(dtype=float)
    dur = steps["duration_s"].to_numpy(dtype=float)
    edges = np.linspace(t[0], t[-1] + dur[-1], bins + 1)
    return edges, np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)


#: Rows per block in ``binned_memory``: its temporaries stay a few MB even
#: for tables of millions of steps (the table itself is the memory budget).
BIN_BLOCK_ROWS = 1 << 16


def binned_memory(steps, bins: int = 600):
    """Time-weighted memory fractions in ``bins`` equal time bins (so a
    million-step run plots as fast as a small one).

    Rows are taken in blocks; ``np.add.at`` accumulates in row order, so the
    sums equal one ``bincount`` over the whole table bit for bit."""
    t = steps["start_s"].to_numpy()
    dur = steps["duration_s"].to_numpy()
    if len(t) == 0:
        return np.array([]), {c: np.array([]) for c in CATEGORIES}
    edges = np.linspace(t[0], t[-1] + dur[-1], bins + 1)
    cols = {c: steps[c].to_numpy() for c in CATEGORIES}
    w = np.zeros(bins)
    sums = {c: np.zeros(bins) for c in CATEGORIES}
    for i in range(0, len(t), BIN_BLOCK_ROWS):
        rows = slice(i, i + BIN_BLOCK_ROWS)
        idx = np.clip(np.searchsorted(edges, t[rows], side="right") - 1, 0, bins - 1)
        d = dur[rows]
        np.add.at(w, idx, d)
        cap = sum(v[rows] for v in cols.values()).astype(float)
        for c, v in cols.items():
            np.add.at(sums[c], idx, v[rows] / cap * d)
    keep = w > 0
    out = {c: sums[c][keep] / w[keep] for c in CATEGORIES}
    centers = 0.5 * (edges[:-1] + edges[1:])[keep]
    return centers, out


def binned_max(steps, column: str, bins: int = 600):
    """Per time bin, the largest value of ``column`` (so no peak is lost)."""
    if len(steps) == 0:
        return np.array([]), np.array([])
    edges, idx = time_bins(steps, bins)
    out = np.full(bins, -np.inf)
    np.maximum.at(out, idx, steps[column].to_numpy(dtype=float))
    keep = np.isfinite(out)
    return 0.5 * (edges[:-1] + edges[1:])[keep], out[keep]


# ---------------------------------------------------------------- memory
def memory_over_time(steps, summary=None, path=None, *, axes=None, title=None) -> Figure:
    """Stacked KV memory split (top) and running / waiting requests with
    preemptions (bottom) on one time axis."""
    if axes is None:
        fig = new_figure((10, 5.6))
        axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    fig = axes[0].figure
    memory_breakdown(steps, summary, ax=axes[0], title=title)
    queue_panel(steps, ax=axes[1])
    save(fig, path)
    return fig


def memory_breakdown(steps, summary=None, path=None, *, ax=None, title=None):
    """Stacked area of the KV capacity by accounting category over time."""
    if ax is None:
        ax = new_figure().subplots()
    x, fr = binned_memory(steps)
    ax.stackplot(x, [fr[c] for c in CATEGORIES], colors=[COLORS[c] for c in CATEGORIES],
                 labels=[LABELS[c] for c in CATEGORIES], linewidth=0)
    ax.set_ylabel("share of KV capacity")
    ax.set_ylim(0, 1)
    ax.set_xlabel("simulated time (s)")
    if len(x):
        ax.set_xlim(x[0], x[-1])
    if title is None and summary is not None:
        title = (f"KV memory: {run_title(summary)} · token states "
                 f"{summary['memory_split']['token_states']:.1%} (time-averaged)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    save(ax.figure, path)
    return ax


def queue_panel(steps, *, ax):
    """Running and waiting requests (per-bin peaks) and preemption marks."""
    for col, color, label in (("num_requests_running", "#264653", "running"),
                              ("num_requests_waiting", "#e76f51", "waiting")):
        if col in steps:
            x, y = binned_max(steps, col)
            ax.step(x, y, where="mid", color=color, label=label, linewidth=1.2)
    pre = steps[steps["preemptions"] > 0]
    if len(pre):
        ax.plot(pre["start_s"], np.zeros(len(pre)), "|", color="#9b2226", markersize=12,
                label=f"preemption ({int(pre['preemptions'].sum()):,})", clip_on=False)
    ax.set_ylabel("requests")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return ax


def memory_per_replica(steps, summary=None, path=None) -> Figure:
    """``memory_over_time`` for each replica of a cluster run (the steps
    table's ``replica`` column), one row of panels each, on one time axis:
    the replicas' steps interleave in time, so one panel over all of them
    would mix their memory."""
    replicas = sorted(int(r) for r in steps["replica"].unique())
    fig = new_figure((10, 4.2 * len(replicas)))
    axes = fig.subplots(2 * len(replicas), 1, sharex=True, height_ratios=[3, 2] * len(replicas))
    per = (summary or {}).get("replicas") or []
    for k, r in enumerate(replicas):
        part = steps[steps["replica"].to_numpy() == r]
        title = f"KV memory of replica {r}"
        if r < len(per) and "memory_split" in per[r]:
            title += f" · token states {per[r]['memory_split']['token_states']:.1%} (time-averaged)"
        memory_over_time(part, None, axes=axes[2 * k:2 * k + 2], title=title)
    if summary:
        fig.suptitle(run_title(summary), fontsize=10)
    save(fig, path)
    return fig


# ---------------------------------------------------------------- latency
def weighted_cdf(values, counts=None, max_points: int | None = None):
    """(sorted values, cumulative fraction) of a weighted sample; with
    ``max_points``, thinned to about that many points at evenly spaced
    fractions (the extremes kept): a line drawn through them is the same
    picture, and a 6 M-step run's ITL curve stays a few KB. Temporaries are
    freed as it goes (each is one value per step)."""
    v = np.asarray(values, dtype=float)
    w = np.ones(len(v), dtype=np.int64) if counts is None else np.asarray(counts)
    keep = np.isfinite(v) & (w > 0)
    if not keep.all():
        v, w = v[keep], w[keep]
    del keep
    order = np.argsort(v, kind="stable")
    v = v[order]
    # counts summed in float64, as integers: exact (the division goes in place)
    c = np.cumsum(w[order], dtype=np.float64)
    del order, w
    if len(c):
        c /= c[-1]
    if max_points is not None and len(v) > max_points:
        idx = np.unique(np.concatenate((np.searchsorted(c, np.linspace(0, 1, max_points)).clip(0, len(v) - 1),
                                        [0, len(v) - 1])))
        v, c = v[idx], c[idx]
    return v, c


#: Points of a plotted CDF line (see ``weighted_cdf``).
CDF_POINTS = 2000


def latency_samples(requests, steps=None):
    """name -> (values in ms, counts or None): the four vLLM latencies (ITL
    only with the step table, from which it is derived)."""
    done = requests[requests["finish_s"].notna()]
    out = {
        "TTFT": (done["ttft_s"].to_numpy(dtype=float) * 1e3, None),
        "TPOT": (done["tpot_s"].dropna().to_numpy(dtype=float) * 1e3, None),
    }
    if steps is not None:
        itl_v, itl_c = itl_samples(requests, steps)
        itl_v *= 1e3  # in place: one value per step (the same floats as itl_v * 1e3)
        out["ITL"] = (itl_v, itl_c)
    out["E2EL"] = (done["e2e_s"].to_numpy(dtype=float) * 1e3, None)
    return out


def percentile_marks(values, counts) -> dict:
    """p50 and p99 as the summary computes them (linear interpolation),
    over the finite values (copied only if some are not)."""
    v = np.asarray(values, dtype=float)
    c = np.ones(len(v), dtype=np.int64) if counts is None else np.asarray(counts)
    ok = np.isfinite(v)
    if ok.all():
        return weighted_stats(v, c, (50, 99))
    return weighted_stats(v[ok], c[ok], (50, 99))


def latency_cdfs(requests, steps=None, path=None, *, summary=None, axes=None) -> Figure:
    """CDFs of TTFT, TPOT, ITL and E2EL in ms, p50 and p99 marked."""
    if axes is None:
        fig = new_figure((11, 6))
        axes = fig.subplots(2, 2).ravel()
    fig = axes[0].figure
    samples = latency_samples(requests, steps)
    for ax, (name, (values, counts)) in zip(axes, samples.items()):
        x, y = weighted_cdf(values, counts, max_points=CDF_POINTS)
        if len(x):
            ax.plot(x, y, color="#264653", linewidth=1.5)
            marks = percentile_marks(values, counts)
            for key, q, style, side in (("p50", 0.5, ":", 1), ("p99", 0.99, "--", -1)):
                v = marks[key]
                ax.axvline(v, color="#e76f51", linestyle=style, linewidth=1)
                ax.annotate(f"{key} {v:,.1f} ms", (v, q), xytext=(4 * side, -12), ha="left" if side > 0 else "right",
                            textcoords="offset points", fontsize=8, color="#9b2226")
            positive = x[x > 0]
            if len(positive) and x[-1] / positive[0] > 50:
                if x[0] > 0:
                    ax.set_xscale("log")
                else:
                    ax.set_xscale("symlog", linthresh=positive[0])
                    ax.set_xlim(left=0)
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle("Latency CDFs (TTFT, TPOT, ITL, E2EL as vllm bench serve)"
                 + (f": {run_title(summary)}" if summary else ""), fontsize=10)
    save(fig, path)
    return fig


__all__ = ["memory_over_time", "memory_per_replica", "memory_breakdown", "queue_panel", "latency_cdfs", "binned_memory",
           "binned_max", "weighted_cdf", "latency_samples", "percentile_marks", "new_figure", "run_title"]
