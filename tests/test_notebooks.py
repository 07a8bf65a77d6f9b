"""The notebooks run top to bottom (on a smaller workload) and compute what
their text says they show."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pagesim.analysis.plots import LABELS  # noqa: E402
from pagesim.sim.accounting import CATEGORIES  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALLOCATORS = ["orca-max", "orca-pow2", "orca-oracle", "paged"]


def run_notebook(name: str, **replace: str) -> dict:
    """Execute the code cells in one namespace; ``replace`` edits the source
    (old text -> new text), each edit required to apply."""
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for old, new in replace.items():
        assert old in code, f"{name}: {old!r} not found"
        code = code.replace(old, new)
    plt.close("all")
    ns: dict = {}
    exec(compile(code, str(NOTEBOOKS / name), "exec"), ns)
    return ns


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
        "calibration.ipynb", "cluster.ipynb", "fragmentation.ipynb"]


def test_calibration_notebook():
    ns = run_notebook("calibration.ipynb")
    tables = ns["tables"]
    assert "llama-3-8b_h100-80gb.json" in tables  # the shipped files are all loaded
    fit = ns["rows"]
    assert {r["regime"] for r in fit} == {"decode", "mixed"}
    assert all(r["feature"] in ("const", "num_tokens", "kv_tokens_read", "attn_pairs") for r in fit)


def test_cluster_notebook():
    ns = run_notebook("cluster.ipynb", **{'"PAGESIM_NB_REQUESTS", "600"': '"PAGESIM_NB_REQUESTS", "120"'})
    results = ns["results"]
    assert list(results) == ["round-robin", "least-outstanding", "prefix-aware"]
    for name, res in results.items():
        assert res.summary["requests"]["finished"] + res.summary["requests"]["rejected"] == 120, name
        assert len(res.summary["replicas"]) == 4
    assert results["round-robin"].requests["replica"].value_counts().max() == 30
    hit = {n: r.summary["prefix_cache"]["hit_rate_tokens"] for n, r in results.items()}
    assert hit["prefix-aware"] >= hit["round-robin"]


def test_fragmentation_notebook():
    ns = run_notebook("fragmentation.ipynb", **{"REQUESTS = 400": "REQUESTS = 60"})
    results = ns["results"]
    assert list(results) == ALLOCATORS
    for name, res in results.items():
        split = res.summary["memory_split"]
        assert abs(sum(split.values()) - 1) < 1e-9, name
        assert res.summary["requests"]["finished"] == 60, name
    # the vLLM paper's point, which the notebook illustrates: paging keeps
    # more of the KV memory for token states than any contiguous scheme
    paged = results["paged"].summary["memory_split"]["token_states"]
    assert all(paged > results[a].summary["memory_split"]["token_states"] for a in ALLOCATORS[:3])

    # the breakdown figure: one panel per allocator, titled with its share,
    # each a stacked area of every category in order, within [0, 1]
    fig = ns["fig"]
    assert len(fig.axes) == 4
    for ax, name in zip(fig.axes, ALLOCATORS):
        share = results[name].summary["memory_split"]["token_states"]
        assert ax.get_title() == f"{name}: token states {share:.1%}"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [LABELS[c] for c in CATEGORIES]
        areas = ax.collections
        assert len(areas) == len(CATEGORIES)
        top = areas[-1].get_paths()[0].vertices[:, 1]
        assert top.max() <= 1 + 1e-9 and top.max() > 0.99, "the stack must fill the capacity"

    # the event log of the shared-system-prompt run: cache hits happen and
    # every reference taken is given back
    events, res = ns["events"], ns["res"]
    counts = events["kind"].value_counts()
    assert counts["cache_hit"] > 0 and counts["alloc"] > 0
    assert res.summary["prefix_cache"]["hit_rate_tokens"] > 0
    taken = counts["alloc"] + counts["cache_hit"] + counts.get("fork", 0)
    assert taken == counts["free"]

    # the last cell: TTFT and TPOT CDFs, each a curve rising to 1
    axes = plt.gcf().axes
    assert len(axes) == 2
    for ax in axes:
        (line,) = ax.get_lines()
        y = line.get_ydata()
        assert y[-1] == 1.0 and np.all(np.diff(y) > 0)
