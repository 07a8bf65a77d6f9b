"""PYTHONPATH for the child processes tests start.

A child runs this checkout (or, for the packaging test, an installed wheel
instead of it), but its dependencies may live on the caller's PYTHONPATH:
on the GPU machines they are installed with ``pip --target`` there. So the
caller's entries are kept, never replaced."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _callers() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def with_checkout() -> str:
    """The checkout first, then the caller's entries."""
    return os.pathsep.join([str(ROOT), *_callers()])


def instead_of_checkout(site: Path) -> str:
    """``site`` first, then the caller's entries other than the checkout."""
    return os.pathsep.join([str(site), *(p for p in _callers() if Path(p).resolve() != ROOT)])
