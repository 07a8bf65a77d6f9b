"""The HTML report: self-contained, bounded in size, and rendered by a real
headless browser with no errors (Debian's chromium; .ci/run installs it)."""
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from pagesim import traces
from pagesim.analysis.compare import table
from pagesim.analysis.report import MAX_POINTS, compare_report, replay_report
from pagesim.replay import ReplayConfig, run_replay
from pagesim.sim.accounting import CATEGORIES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def overloaded():
    """A small run under memory pressure: preemptions, a queue, cached blocks."""
    trace = traces.synthetic("sharegpt", num_requests=120, rate=40, seed=5)
    return run_replay(trace, ReplayConfig(num_gpu_blocks=400))


def _browser(tmp_path, html_path, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           *args, html_path.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _check_page(tmp_path, page, n_charts):
    dom = _browser(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = re.search(r"<html[^>]*>", dom.stdout).group(0)
    assert "data-errors" not in root, f"page errors: {root}"
    assert f'data-charts="{n_charts} drawn {n_charts}"' in root, f"not every chart drew: {root}"
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, "console messages:\n" + "\n".join(console)
    shot = tmp_path / "shot.png"
    r = _browser(tmp_path, page, f"--screenshot={shot}", "--window-size=1280,2400")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = imread(shot)[..., :3]
    ink = (img.sum(axis=2) < 2.4).mean()  # not white: text, axes, curves
    assert ink > 0.01, f"screenshot looks blank ({ink:.2%} of pixels not white)"


@needs_chromium
def test_replay_report_renders_in_a_browser(tmp_path, overloaded):
    assert overloaded.summary["preemptions"] > 0
    page = tmp_path / "report.html"
    replay_report(overloaded, page)
    _check_page(tmp_path, page, 6)


@needs_chromium
def test_compare_report_renders_in_a_browser(tmp_path, overloaded):
    trace = traces.synthetic("sharegpt", num_requests=60, rate=40, seed=5)
    results = {a: run_replay(trace, ReplayConfig(num_gpu_blocks=1200, allocator=a))
               for a in ("paged", "orca-max")}
    assert all(r.summary["requests"]["finished"] == 60 for r in results.values())
    page = tmp_path / "compare.html"
    compare_report(results, table(results), page)
    _check_page(tmp_path, page, 6)


def test_report_is_self_contained(overloaded):
    page = replay_report(overloaded)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "the report loads an outside resource"
    assert "http://" not in page and "https://" not in page


@dataclass
class _Result:
    summary: dict
    steps: pd.DataFrame
    requests: pd.DataFrame


def test_report_size_is_bounded_for_long_runs(overloaded):
    """200k steps: the time series are binned, the page stays small."""
    n = 200_000
    rng = np.random.default_rng(0)
    cap = 10_000
    used = rng.integers(0, cap, n)
    steps = pd.DataFrame({"step": np.arange(n), "start_s": np.arange(n) * 0.01, "duration_s": 0.01,
                          "num_seqs": rng.integers(0, 50, n), "preemptions": rng.integers(0, 2, n),
                          "num_requests_running": rng.integers(0, 50, n),
                          "num_requests_waiting": rng.integers(0, 50, n)})
    for c in CATEGORIES:
        steps[c] = 0
    steps["token_states"] = used
    steps["free"] = cap - used
    page = replay_report(_Result(overloaded.summary, steps, overloaded.requests))
    assert len(page) < 8 * 2**20, f"report is {len(page) / 2**20:.1f} MiB"
    assert MAX_POINTS < n
