"""Plots people would rather look at than read: where KV memory goes over
time, and latency distributions. Each function takes the replay's tables
(pandas DataFrames) and writes a PNG (or draws on a given Axes, for
notebooks).
"""
from __future__ import annotations

import numpy as np

from pagesim.sim.accounting import CATEGORIES

COLORS = {
    "token_states": "#2a9d8f", "reserved": "#e9c46a", "internal_frag": "#f4a261",
    "external_frag": "#e76f51", "cached_free": "#8ab17d", "free": "#d9d9d9",
}
LABELS = {
    "token_states": "token states", "reserved": "reserved (future tokens)",
    "internal_frag": "internal fragmentation", "external_frag": "external fragmentation",
    "cached_free": "cached, free", "free": "free",
}


def _figure(ax, size=(9, 4)):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=size)


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


def memory_breakdown(steps, summary=None, path=None, *, ax=None, title=None):
    """Stacked area of the KV capacity by accounting category over time."""
    fig, ax = _figure(ax)
    x, fr = binned_memory(steps)
    ax.stackplot(x, [fr[c] for c in CATEGORIES], colors=[COLORS[c] for c in CATEGORIES],
                 labels=[LABELS[c] for c in CATEGORIES], linewidth=0)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("share of KV capacity")
    ax.set_ylim(0, 1)
    if len(x):
        ax.set_xlim(x[0], x[-1])
    if title is None and summary is not None:
        cfg = summary.get("config", {})
        title = (f"{cfg.get('allocator', '')} · {cfg.get('model', '')} on {cfg.get('gpu', '')} · "
                 f"token states {summary['memory_split']['token_states']:.1%} (time-averaged)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, format="png")
        import matplotlib.pyplot as plt
        plt.close(fig)
    return ax


def _cdf(ax, values, label):
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    if len(v):
        ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)


def latency_cdfs(requests, path=None, *, axes=None):
    """CDFs of time to first token and time per output token."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    else:
        fig = axes[0].figure
    done = requests[requests["finish_s"].notna()]
    _cdf(axes[0], done["ttft_s"], "TTFT")
    _cdf(axes[1], done["tpot_s"] * 1e3, "TPOT")
    axes[0].set_xlabel("time to first token (s)")
    axes[1].set_xlabel("time per output token (ms)")
    for ax in axes:
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)
    return axes
