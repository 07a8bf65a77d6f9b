"""pagesim: a memory-manager simulator for PagedAttention-style KV caches.

The package is laid out in layers (see README, "Architecture"):

* ``pagesim.sim``       the pure core (block pool, KV-cache manager,
  scheduler, policies, cost models) and ``pagesim.sim.engine`` (SimPy);
* ``pagesim.gpu``       the GPU executor and Triton kernels;
* ``pagesim.traces``    trace readers and generators;
* ``pagesim.analysis``  tables and plots;
* ``pagesim.cli``, ``pagesim.replay``: the application layer on top.

In the source tree the subpackages are the top-level folders ``sim/``,
``gpu/``, ``traces/`` and ``analysis/``; an installed pagesim holds them under
``pagesim/``. Running from a checkout (``PYTHONPATH=.``), the checkout's root
is added to this package's search path so that ``pagesim.sim`` resolves to
``./sim`` there too, with nothing named ``sim`` or ``traces`` imported at top
level.
"""
from __future__ import annotations

import os as _os

__version__ = "0.2.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isdir(_os.path.join(_root, "sim")):
    __path__.append(_root)  # type: ignore[name-defined]  # a source checkout
del _root
