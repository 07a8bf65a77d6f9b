"""Plots and `pagesim compare --vary`: figures are built without touching
pyplot or the backend, and compare varies any option."""
import matplotlib
import pytest

from pagesim import traces
from pagesim.analysis.plots import latency_cdfs, memory_over_time
from pagesim.cli import main
from pagesim.compare import variants
from pagesim.replay import ReplayConfig, run_replay


@pytest.fixture(scope="module")
def run():
    trace = traces.synthetic("sharegpt", num_requests=80, rate=40, seed=4)
    return run_replay(trace, ReplayConfig(num_gpu_blocks=300))


def test_figures_leave_the_backend_and_pyplot_alone(run, tmp_path):
    import matplotlib.pyplot as plt
    backend, open_before = matplotlib.get_backend(), plt.get_fignums()
    mem = memory_over_time(run.steps, run.summary, tmp_path / "m.png")
    lat = latency_cdfs(run.requests, run.steps, tmp_path / "l.png", summary=run.summary)
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == open_before, "library code opened pyplot figures"
    assert (tmp_path / "m.png").stat().st_size > 10_000 and (tmp_path / "l.png").stat().st_size > 10_000
    top, bottom = mem.axes[0], mem.axes[1]
    assert "token states" in top.get_title()
    labels = bottom.get_legend_handles_labels()[1]
    assert "running" in labels and "waiting" in labels
    assert any(lb.startswith("preemption (") for lb in labels), "preemptions are marked"
    assert [ax.get_xlabel() for ax in lat.axes] == ["TTFT (ms)", "TPOT (ms)", "ITL (ms)", "E2EL (ms)"]
    assert lat.get_suptitle()
    texts = [t.get_text() for ax in lat.axes for t in ax.texts]
    assert sum(t.startswith("p50 ") for t in texts) == 4 and sum(t.startswith("p99 ") for t in texts) == 4


def test_variants_convert_and_reject():
    base = ReplayConfig()
    assert [c.block_size for _, c in variants(base, "block-size", ["8", "32"])] == [8, 32]
    assert variants(base, "victim", ["most-blocks"])[0][1].scheduler.victim == "most-blocks"
    assert variants(base, "prefix_caching", ["off"])[0][1].prefix_caching is False
    assert variants(base, "num-gpu-blocks", ["100"])[0][1].num_gpu_blocks == 100
    with pytest.raises(ValueError, match="--vary"):
        variants(base, "colour", ["red"])
    with pytest.raises(ValueError, match="--vary"):
        variants(base, "block-size", ["big"])


def test_compare_vary_block_size_writes_the_views(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--workload", "sharegpt", "--num-requests", "30", "--rate", "20",
               "--num-gpu-blocks", "300", "--quiet", "--vary", "block-size=16,32", "--out", str(out)])
    assert rc == 0
    assert "block-size=16" in capsys.readouterr().out
    for name in ("compare.csv", "compare.png", "block_size.png", "report.html"):
        assert (out / name).exists(), name
    assert main(["compare", "--quiet", "--vary", "colour=red"]) == 2
    assert main(["compare", "--quiet", "--vary", "rate=fast"]) == 2
