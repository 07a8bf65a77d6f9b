"""The wheel installs one package, ``pagesim``, and works outside the checkout.

The source tree keeps sim/, gpu/, traces/, analysis/ at the top; installed,
they must live under ``pagesim/`` (nothing named ``traces`` or ``sim`` in a
user's site-packages), and ``import pagesim.sim.scheduler`` must find the
installed copy, not a checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.childenv import ROOT, instead_of_checkout
SOURCES = ("pyproject.toml", "README.md", "pagesim", "sim", "gpu", "traces", "analysis", "calibration")

pytestmark = pytest.mark.slow


def run(*args, cwd, env=None):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build from a copy of the sources, so that the build leaves no build/
    or egg-info in the checkout (and parallel test runs do not collide)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    # No build isolation where setuptools is at hand: no download, and the
    # wheel is what the local toolchain makes of pyproject.toml.
    flags = ["--no-build-isolation"] if _has_setuptools() else []
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *flags, str(src), "-w", str(tmp / "dist"),
        cwd=tmp)
    (built,) = (tmp / "dist").glob("pagesim-*.whl")
    return built


def _has_setuptools() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 64


def test_wheel_holds_only_the_pagesim_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops - dist_info == {"pagesim"}, sorted(tops)
    for sub in ("sim", "sim/engine", "sim/costmodel", "gpu", "gpu/kernels", "traces", "analysis"):
        assert f"pagesim/{sub}/__init__.py" in names, f"pagesim/{sub} missing from the wheel"
    assert "pagesim/sim/scheduler.py" in names and "pagesim/cli.py" in names
    assert not any(n.startswith("pagesim/tests/") or "/__pycache__/" in n for n in names)


def test_installed_wheel_imports_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
        str(wheel), cwd=tmp_path)
    assert not (site / "sim").exists() and not (site / "traces").exists()
    # the run's dependencies come from this interpreter's env (and the caller's PYTHONPATH)
    env = {**os.environ, "PYTHONPATH": instead_of_checkout(site)}
    code = ("import pagesim, pagesim.sim.scheduler, pagesim.traces, pagesim.replay\n"
            "print(pagesim.__file__); print(pagesim.sim.scheduler.__file__); print(pagesim.__path__)")
    out = run(sys.executable, "-c", code, cwd=tmp_path, env=env).splitlines()
    assert all(line.startswith(str(site)) for line in out[:2]), out
    assert str(ROOT) not in out[2], f"the checkout leaked onto pagesim's path: {out[2]}"
    helptext = run(sys.executable, "-m", "pagesim", "--help", cwd=tmp_path, env=env)
    assert "replay" in helptext
