"""Process-wide memory settings of a CLI run (the CLI owns its process;
library calls such as ``run_replay`` leave these alone).

A long replay's post-processing (gauges, summary, plots, report) works
column by column on tables of millions of steps: each temporary is tens of
MB and lives briefly. glibc's malloc raises its ``mmap`` threshold
dynamically (up to 32 MB on 64-bit) after such blocks are freed, so later
ones come from the heap, and the freed holes keep the resident set high;
Arrow's own allocator (mimalloc or jemalloc) likewise keeps what it freed.
A fixed threshold of 1 MiB (large blocks are mapped and unmapped, returned
to the system at once) and Arrow on the system allocator took the peak of a
100k-request, 6.3 M-step replay from 995 to ~700 MiB (BENCHMARKS.md). Small
objects, which are all the simulator itself allocates, are unaffected.
"""
from __future__ import annotations

import ctypes
import sys

import pyarrow as pa

#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def bound_memory() -> bool:
    """Apply both settings; returns whether glibc's took effect (False on
    other C libraries and systems, where nothing is changed)."""
    pa.set_memory_pool(pa.system_memory_pool())
    if not sys.platform.startswith("linux"):
        return False
    try:
        # the process's own symbols, which hold the C library's: no
        # ``find_library`` (it runs ``ldconfig``, ~15 ms of every start)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


__all__ = ["bound_memory"]
