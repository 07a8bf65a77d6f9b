"""Allocator micro-benchmark: block operations per second on one core.

Replays realistic sequences (ShareGPT-like prompt/output lengths) through the
paged KV-cache manager: allocate the prompt, grow the output, free. A
"block operation" is one block allocated, freed, or taken from the prefix
cache. Two growth modes: one ``append_slots`` call per token (as a
step-by-step engine does) and one per block boundary (as the simulator's
fast mode does). Prints a table; record results in BENCHMARKS.md.

    python bench/bench_allocator.py [--seqs 20000] [--block-size 16]
"""
from __future__ import annotations

import argparse
import platform
import time
from collections import deque

import numpy as np

from pagesim.sim.block_keys import BlockKeys
from pagesim.sim.kv_cache_manager import PagedKVCacheManager


def lengths(rng, n):
    # Lognormal shapes with the vLLM paper's ShareGPT means (161 in, 338 out).
    p = np.clip(rng.lognormal(4.6, 0.9, n), 4, 2048).astype(int)
    o = np.clip(rng.lognormal(5.3, 0.9, n), 1, 2048).astype(int)
    return p, o


def run(num_seqs: int, block_size: int, caching: bool, per_token: bool, live: int = 64):
    rng = np.random.default_rng(0)
    p, o = lengths(rng, num_seqs)
    system = list(range(256))  # a shared 256-token system prompt when caching
    m = PagedKVCacheManager(8192, block_size, enable_prefix_caching=caching)
    queue = deque()
    t0 = time.perf_counter()
    for sid in range(num_seqs):
        keys = None
        if caching:
            keys = BlockKeys(block_size, token_ids=system + list(range(10_000 * sid, 10_000 * sid + int(p[sid]))))
            n = 256 + int(p[sid])
        else:
            n = int(p[sid])
        m.allocate(sid, n, keys)
        out = int(o[sid])
        if per_token:
            for _ in range(out):
                m.append_slots(sid, 1)
        else:
            # Jump from block boundary to block boundary, as the fast engine does.
            first = min(out, (-n) % block_size or block_size)
            if first:
                m.append_slots(sid, first)
            for done in range(first, out, block_size):
                m.append_slots(sid, min(block_size, out - done))
        queue.append(sid)
        if len(queue) > live:
            m.free(queue.popleft())
    for sid in queue:
        m.free(sid)
    dt = time.perf_counter() - t0
    blocks = 0
    for sid in range(num_seqs):
        n = (256 if caching else 0) + int(p[sid]) + int(o[sid])
        blocks += -(-n // block_size)
    ops = 2 * blocks  # every block is taken (alloc or hit) once and freed once
    return ops, dt, m.hit_tokens / max(1, m.queried_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=20000)
    ap.add_argument("--block-size", type=int, default=16)
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{a.seqs} sequences, block size {a.block_size}")
    print(f"{'mode':<34}{'block ops':>12}{'seconds':>10}{'Mops/s':>9}{'hit rate':>10}")
    for caching in (False, True):
        for per_token in (True, False):
            ops, dt, hit = run(a.seqs, a.block_size, caching, per_token)
            name = f"{'prefix caching' if caching else 'no caching'}, {'per-token' if per_token else 'per-block'} append"
            print(f"{name:<34}{ops:>12,}{dt:>10.2f}{ops / dt / 1e6:>9.2f}{hit:>10.1%}")


if __name__ == "__main__":
    main()
