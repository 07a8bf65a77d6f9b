"""The notebooks run top to bottom under a real Jupyter kernel, on the small
inputs they are committed with, every cell tagged ``figure`` shows an image,
and a check cell appended to each asserts what its text says it shows.
They are committed without outputs."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel) is missing")
nbclient = pytest.importorskip("nbclient", reason="the test extra (nbformat, nbclient, ipykernel) is missing")

from tests.childenv import ROOT, with_checkout  # noqa: E402

NOTEBOOKS = {p.stem: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
CONVERSATION = Path(__file__).resolve().parents[2] / "shared" / "traces" / "raw" / "conversation_trace.jsonl"


# Run in the notebook's kernel after its last cell: the claims of its text.
CHECKS = {
    "fragmentation": """
assert list(results) == ["orca-max", "orca-pow2", "orca-oracle", "paged"]
for name, res in results.items():
    assert abs(sum(res.summary["memory_split"].values()) - 1) < 1e-9, name
    r = res.summary["requests"]
    assert r["finished"] + r["rejected"] == REQUESTS and r["rejected"] <= 0.05 * REQUESTS, (name, r)
# the vLLM paper's point: paging keeps more KV memory for token states
paged = results["paged"].summary["memory_split"]["token_states"]
assert all(paged > results[a].summary["memory_split"]["token_states"] for a in ["orca-max", "orca-pow2", "orca-oracle"])
# the ablation: internal fragmentation grows with the block size
frag = ablation["internal_frag"].to_numpy()
assert (frag[1:] > frag[:-1]).all(), frag
""",
    "preemption": """
for name, res in results.items():
    r = res.summary["requests"]
    assert r["finished"] + r["rejected"] == REQUESTS and r["rejected"] <= 0.05 * REQUESTS, (name, r)
    assert res.summary["preemptions"] > 0, f"{name}: the workload must overload the cache"
# most-blocks frees the most memory per victim, so it preempts less often
assert results["recompute · most-blocks"].summary["preemptions"] < results["recompute · latest"].summary["preemptions"]
""",
    "calibration": """
assert "llama-3-8b_h100-80gb.json" in tables  # the shipped files are all loaded
assert {r["regime"] for r in rows} == {"decode", "mixed"}
assert all(r["feature"] in ("const", "num_tokens", "kv_tokens_read", "attn_pairs") for r in rows)
""",
    "cluster": """
assert list(results) == ["round-robin", "least-outstanding", "prefix-aware"]
for name, res in results.items():
    assert res.summary["requests"]["finished"] + res.summary["requests"]["rejected"] == 120, name
    assert len(res.summary["replicas"]) == 4
assert results["round-robin"].requests["replica"].value_counts().max() == 30
hit = {n: r.summary["prefix_cache"]["hit_rate_tokens"] for n, r in results.items()}
assert hit["prefix-aware"] >= hit["round-robin"]
# with and without the CPU tier: hits split by tier, the tier's loads are its hits
assert set(tiered) == {(n, s) for n in results for s in ("GPU only", "GPU + CPU tier")}
for router in results:
    without = tiered[router, "GPU only"].summary["prefix_cache"]
    with_tier = tiered[router, "GPU + CPU tier"]
    t = with_tier.summary["prefix_cache"]["tiers"]
    assert t["gpu_hit_rate_tokens"] == with_tier.summary["prefix_cache"]["hit_rate_tokens"]
    # first admissions' CPU hits; loads also serve re-admissions after a preemption
    assert t["cpu_hit_tokens"] <= 16 * t["loaded_blocks"] and t["loaded_blocks"] > 0, (router, t)
    assert t["offloaded_blocks"] > 0 and "tiers" not in without
    # what the text claims: the total hit rate is at least the GPU-only run's
    assert t["hit_rate_tokens"] >= without["hit_rate_tokens"], (router, t, without)
    links = with_tier.summary["links"]
    assert links["h2d"]["blocks"] == t["loaded_blocks"] and 0 < links["h2d"]["utilisation"] < 1
    assert len(with_tier.links) == links["h2d"]["transfers"] + links["d2h"]["transfers"]
assert tiered["prefix-aware", "GPU + CPU tier"].summary["prefix_cache"]["tiers"]["cpu_hit_tokens"] > 0
assert tier_table.shape[0] == 6
""",
    "prefix_caching": """
assert len(trace) == SLICE
unlimited = offline[offline["cache_tokens"].isna()]
assert (unlimited["token_reuse"] > 0).all()
limited = offline.dropna(subset=["cache_tokens"])
for bs, g in limited.groupby("block_size"):
    reuse = g.sort_values("cache_tokens")["token_reuse"].to_numpy()
    assert (reuse[1:] >= reuse[:-1] - 1e-12).all(), f"LRU reuse must grow with the cache (block {bs})"
    assert reuse[-1] <= unlimited.set_index("block_size").loc[bs, "token_reuse"] + 1e-12
""",
}


def run_notebook(path: Path, env: dict) -> object:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ["PYTHONPATH"] = with_checkout()
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def check_figures(nb, name):
    figure_cells = [c for c in nb.cells if "figure" in c.get("metadata", {}).get("tags", [])]
    assert figure_cells, f"{name}: no cell tagged figure"
    for c in figure_cells:
        images = [o for o in c.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, f"{name}: figure cell drew {len(images)} images:\n{c.source}"


def test_committed_without_outputs():
    assert set(NOTEBOOKS) == set(CHECKS), "every notebook has its checks here"
    for name, path in NOTEBOOKS.items():
        nb = nbformat.read(path, as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{name} is committed with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fragmentation", "preemption"])
def test_notebook_runs_and_draws(name):
    check_figures(run_notebook(NOTEBOOKS[name], {}), name)


@pytest.mark.slow
@pytest.mark.parametrize("name, env", [("calibration", {}), ("cluster", {"PAGESIM_NB_REQUESTS": "120"})])
def test_other_notebooks_run(name, env):
    run_notebook(NOTEBOOKS[name], env)


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.skipif(not CONVERSATION.exists(), reason=f"no shared conversation trace at {CONVERSATION}")
def test_prefix_caching_notebook_on_a_slice():
    nb = run_notebook(NOTEBOOKS["prefix_caching"],
                      {"PAGESIM_CONVERSATION_TRACE": str(CONVERSATION), "PAGESIM_SLICE": "60"})
    check_figures(nb, "prefix_caching")
