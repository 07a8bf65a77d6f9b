"""Option types of the command line: each checks one value at parse time.

argparse calls an option's ``type`` with the raw string; raising
``ArgumentTypeError`` there makes it print ``argument --tp: must be a
positive integer, got '0'`` and exit with code 2 before anything runs. So
every option gets a type that refuses what the simulator cannot honour,
instead of a fallback to a default (``--rate 0``) or a traceback deep in a
run (``--tp 0``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from pagesim.sim.allocators import ALLOCATORS
from pagesim.sim.costmodel import GPUS, MODELS, get_gpu, get_model
from pagesim.sim.costmodel.spec_files import is_spec_file
from pagesim.sim.costmodel.table import TableCostModel
from pagesim.sim.serving_metrics import parse_goodput, parse_percentiles

MAX_BLOCK_SIZE = 256


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def int_at_least(low: int, what: str = ""):
    """An int >= ``low``; ``what`` says why, in the error."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < low:
            name = {0: "a non-negative integer", 1: "a positive integer"}.get(
                low, f"an integer >= {low}")
            raise argparse.ArgumentTypeError(f"must be {name}{what}, got {text!r}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """In (0, 1]: a share of GPU memory."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def watermark(text: str) -> float:
    """In [0, 1): a share of blocks kept free."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def block_size(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= MAX_BLOCK_SIZE:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_BLOCK_SIZE}, got {text!r}")
    return value


def _preset(registry: dict, kind: str, load, files: str):
    """A preset name, or a spec file read and checked now (its absolute path
    is kept, so a summary's config re-runs from any folder)."""
    def parse(text: str) -> str:
        if text.strip().lower() in registry:
            return text
        if is_spec_file(text):
            try:
                load(text)
            except ValueError as exc:   # names the file and the field
                raise argparse.ArgumentTypeError(str(exc)) from None
            return str(Path(text).expanduser().resolve())
        raise argparse.ArgumentTypeError(
            f"unknown {kind} {text!r}; choose from {', '.join(sorted(registry))}, or give {files}")
    parse.__name__ = kind
    return parse


model_preset = _preset(MODELS, "model", get_model, "a HuggingFace config.json")
gpu_preset = _preset(GPUS, "GPU", get_gpu, "a GPU spec file (.json, .yaml, .toml)")


def cost_model(text: str) -> str:
    """``auto``, ``roofline`` or a calibration file that reads and checks
    cleanly (whether it fits the model and GPU is checked once those are known)."""
    if text in ("auto", "roofline"):
        return text
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"'auto', 'roofline' or a calibration file; no file at {text!r}")
    try:
        TableCostModel.from_file(text)
    except ValueError as exc:   # CalibrationError names the file
        raise argparse.ArgumentTypeError(str(exc)) from None
    return str(Path(text).resolve())   # absolute: a summary's config re-runs from any folder


def allocator_list(text: str) -> list[str]:
    """Comma-separated allocator names: at least one, each known, no repeats."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no allocator named; choose from {', '.join(ALLOCATORS)}")
    unknown = [a for a in names if a not in ALLOCATORS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown allocator {unknown[0]!r}; choose from "
                                         f"{', '.join(ALLOCATORS)}")
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"an allocator is named twice in {text!r}")
    return names


def trace_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text!r}")
    return text


def out_dir(text: str) -> str:
    """An output folder that could be created: not empty, not an existing
    file, not below a file. (Whether an existing folder may be replaced
    depends on ``--overwrite``: see ``pagesim.outputs.check_out``.)"""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file, not a folder")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} lies below {str(parent)!r}, which "
                                                 "is a file")
            break
    return text


def metric_percentiles(text: str) -> tuple[float, ...]:
    """``--metric-percentiles 50,90,99``: each in (0, 100), as vllm bench serve."""
    try:
        return parse_percentiles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--metric-percentiles: ")) from None


def goodput_slo(text: str) -> tuple[str, float]:
    """One ``--goodput`` item, ``NAME:MS`` (NAME in ttft, tpot, e2el)."""
    try:
        return parse_goodput([text])[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--goodput: ")) from None


def vary_spec(text: str) -> str:
    """``compare --vary OPTION=V1,V2,...``: the form only; the option and the
    values are checked against the configuration when the runs are built."""
    option, sep, values = text.partition("=")
    if not sep or not option.strip() or not [v for v in values.split(",") if v.strip()]:
        raise argparse.ArgumentTypeError(f"expected OPTION=V1,V2,..., got {text!r}")
    return text


#: The parse-time checks a dataclass field names in its metadata (``check``;
#: see ``sim/config.py``), so the core declares an option's check without
#: importing the CLI.
CHECKS = {
    "positive_int": positive_int,
    "non_negative_int": non_negative_int,
    "positive_float": positive_float,
    "fraction": fraction,
    "watermark": watermark,
    "max_model_len": int_at_least(2, " (a prompt and an output token)"),
}
