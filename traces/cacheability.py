"""Offline cacheability of a trace: prefix reuse against block size and cache size.

Before replaying anything, how much could a prefix cache save on this trace?
For a block size ``B`` each prompt is cut into full ``B``-token pages (a
partial last page is never shared, as in vLLM), each named by the chained
identity of everything up to its end (``traces.pages``). Then:

* **unlimited cache**: a page is reusable if any earlier request had it;
  ``token_reuse`` = reusable page tokens / prompt tokens. Smaller blocks reuse
  more (a shared prefix is cut at a block boundary), and with hash traces of
  ``S``-token blocks nothing below ``S`` is known to be shared.
* **cache of C tokens** (``C // B`` pages, least recently used evicted): each
  request hits the longest run of leading pages still cached, then all its
  pages become most recently used. Requests are taken in arrival order and
  one at a time (no concurrency, no pinning by running requests), so this is
  the trace's cacheability, not a replay's hit rate.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from pagesim.traces.pages import page_keys, token_block_hashes
from pagesim.traces.trace import Trace


def request_pages(trace: Trace, block_size: int) -> list[list[int]] | None:
    """Per request, the identities of its prompt's full pages, or None when
    the trace identifies no content."""
    out = []
    any_content = False
    for r in trace:
        if r.prompt_token_ids is not None:
            keys = token_block_hashes([r.prompt_token_ids], block_size)[0]
            out.append(list(keys[: r.prompt_tokens // block_size]))
            any_content = True
        elif r.block_hashes is not None:
            covered = min(r.prompt_tokens, len(r.block_hashes) * r.hash_block_size)
            out.append(page_keys(r.block_hashes, r.hash_block_size, covered, block_size))
            any_content = True
        else:
            out.append([])
    return out if any_content else None


def unlimited_reuse(pages: list[list[int]], block_size: int, prompt_tokens: int) -> dict:
    arrays = [np.asarray(p, dtype=np.uint64) for p in pages if len(p)]
    flat = np.sort(np.concatenate(arrays)) if arrays else np.zeros(0, dtype=np.uint64)
    refs = int(flat.size)
    unique = int(refs and 1 + np.count_nonzero(flat[1:] != flat[:-1]))
    return {"references": refs, "unique_pages": unique,
            "token_reuse": (refs - unique) * block_size / prompt_tokens if prompt_tokens else 0.0}


def lru_hits(pages: list[list[int]], capacity_pages: int) -> int:
    """Pages hit (leading run per request) under an LRU cache of that many pages."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for keys in pages:
        run = 0
        while run < len(keys) and keys[run] in cache:
            run += 1
        hits += run
        for k in keys:
            if k in cache:
                cache.move_to_end(k)
            else:
                cache[k] = None
        while len(cache) > capacity_pages:
            cache.popitem(last=False)
    return hits


def cacheability(trace: Trace, block_sizes, cache_tokens=()) -> list[dict] | None:
    """One row per (block size, cache size); cache size None is unlimited.

    The LRU pass is a Python loop over every page reference (about a second
    per million references and cache size), so cache sizes are opt-in;
    ``cache_tokens="auto"`` takes 1 %, 3 %, 10 % and 30 % of the trace's
    distinct prompt tokens at the smallest block size.
    """
    prompt_tokens = int(trace.prompt_tokens.sum())
    per_size = {}
    for b in block_sizes:
        pages = request_pages(trace, b)
        if pages is None:
            return None
        per_size[b] = pages
    rows = []
    for b, pages in per_size.items():
        base = unlimited_reuse(pages, b, prompt_tokens)
        rows.append({"block_size": b, "cache_tokens": None, **base})
        if cache_tokens == "auto":
            footprint = unlimited_reuse(per_size[min(per_size)], min(per_size), prompt_tokens)
            distinct = footprint["unique_pages"] * min(per_size)
            cache_tokens = [int(distinct * f) for f in (0.01, 0.03, 0.1, 0.3)]
        for c in cache_tokens:
            hits = lru_hits(pages, max(c // b, 0))
            rows.append({"block_size": b, "cache_tokens": int(c), "references": base["references"],
                         "unique_pages": base["unique_pages"],
                         "token_reuse": hits * b / prompt_tokens if prompt_tokens else 0.0})
    return rows


def format_cacheability(rows: list[dict]) -> str:
    """A block size × cache size table of token reuse (%)."""
    sizes = sorted({r["block_size"] for r in rows})
    caches = []
    for r in rows:
        if r["cache_tokens"] not in caches:
            caches.append(r["cache_tokens"])
    head = ["cache tokens"] + [f"block {b}" for b in sizes]
    lines = ["prefix reuse (% of prompt tokens) by block size and LRU cache size"]
    table = [head]
    for c in caches:
        label = "unlimited" if c is None else f"{c:,}"
        vals = {r["block_size"]: r["token_reuse"] for r in rows if r["cache_tokens"] == c}
        table.append([label] + [f"{100 * vals[b]:.1f}" for b in sizes])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        lines.append("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))))
    return "\n".join(lines)


__all__ = ["cacheability", "format_cacheability", "request_pages", "lru_hits", "unlimited_reuse"]
