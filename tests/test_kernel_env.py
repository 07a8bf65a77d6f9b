"""Triton's interpreter is chosen once per process, from CUDA's presence.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated. A test module
that set it to 1 at import made every later-collected GPU test run CUDA
tensors through the interpreter on a GPU machine (bf16 garbage, CUDA-graph
capture refused): `_env` now writes its choice down either way, and no test
module sets the variable itself."""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Neither is imported here: triton imported before ``_env`` has chosen
# breaks the interpreter for every later module of this process.
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
    pytest.skip("needs torch and triton (the gpu extra)", allow_module_level=True)

from tests.childenv import ROOT, with_checkout  # noqa: E402


def choice(cuda: bool) -> str:
    """TRITON_INTERPRET after importing the kernels in a fresh process
    whose torch reports CUDA as ``cuda``."""
    code = ("import os, torch\n"
            f"torch.cuda.is_available = lambda: {cuda}\n"
            "from pagesim.gpu.kernels import _env\n"
            "os.environ.setdefault('TRITON_INTERPRET', '1')  # a later module's wish changes nothing\n"
            "print(os.environ['TRITON_INTERPRET'], _env.interpreting())\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = with_checkout()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_choice_is_written_down_either_way():
    assert choice(cuda=True) == "0 False"
    assert choice(cuda=False) == "1 True"


def test_no_test_module_sets_the_interpreter_itself():
    """Only ``gpu/kernels/_env.py`` decides; a module that writes the
    variable flips the whole pytest process (every module is imported at
    collection, before any test runs)."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path == Path(__file__).resolve():
            continue  # this file names it to look for it
        offenders += [f"{path.relative_to(ROOT)}:{node.lineno}"
                      for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.Constant) and node.value == "TRITON_INTERPRET"]
    assert offenders == [], f"test modules must not set TRITON_INTERPRET: {offenders}"
