"""Summary statistics of a trace (``pagesim trace stats``).

The prefix-reuse ratio is what an unlimited prefix cache could save: the
share of prompt block references whose block was already seen earlier in the
trace. With chained hashes an id already implies its position and everything
before it, so counting distinct ids is enough:
``reuse = 1 - unique ids / references``. Blocks are the trace's hash blocks
(all ``ceil(prompt / S)`` of them, the last possibly partial, as Mooncake
counts them); for token-id traces they are the full 16-token blocks of the
prompt, hashed with a chained hash.
"""
from __future__ import annotations

import math

import numpy as np

from pagesim.traces.jsonl import TOKEN_HASH_BLOCK
from pagesim.traces.pages import token_block_hashes
from pagesim.traces.trace import Trace


def trace_stats(trace: Trace, timed: bool = True) -> dict:
    """Rows, timing (unless ``timed`` is False: a length-only file) and length
    statistics, plus ``prefix_reuse`` when the trace identifies content."""
    prompt, output = trace.prompt_tokens, trace.output_tokens
    out = {"source": trace.source, "requests": len(trace)}
    if timed:
        out.update(_timing(trace.arrival_s))
    for name, col in (("prompt", prompt), ("output", output)):
        p50, p99 = np.percentile(col, [50, 99]) if len(col) else (math.nan, math.nan)
        out[f"{name}_tokens"] = {"mean": float(col.mean()) if len(col) else math.nan,
                                 "p50": float(p50), "p99": float(p99)}
    reuse = prefix_reuse(trace)
    if reuse is not None:
        out["prefix_reuse"] = reuse
    return out


def _timing(arrival: np.ndarray) -> dict:
    """Duration, rate (one over the mean gap) and burstiness (CV of gaps)."""
    duration = float(arrival[-1] - arrival[0]) if len(arrival) > 1 else 0.0
    gaps = np.diff(arrival)
    mean = gaps.mean() if gaps.size else math.nan
    return {"duration_s": duration,
            "rate_per_s": float(1.0 / mean) if mean > 0 else math.nan,
            "cv_of_gaps": float(gaps.std() / mean) if mean > 0 else math.nan}


def prefix_reuse(trace: Trace) -> dict | None:
    """References, unique blocks and reuse ratio over prompt blocks, or None
    when the trace has neither token ids nor block hashes."""
    frame = trace.to_dataframe()
    prompt = frame["prompt_tokens"].to_numpy()
    tokens = frame["prompt_token_ids"].to_numpy()
    hashes = frame["block_hashes"].to_numpy()
    sizes = frame["hash_block_size"]
    from_tokens = np.fromiter((t is not None for t in tokens), bool, len(tokens))
    from_hashes = ~from_tokens & np.fromiter((h is not None for h in hashes), bool, len(hashes))
    if not (from_tokens.any() or from_hashes.any()):
        return None
    chunks, block_sizes = [], set()
    if from_tokens.any():
        rows = np.flatnonzero(from_tokens)
        ids = token_block_hashes([tokens[r] for r in rows], TOKEN_HASH_BLOCK)
        for r, h in zip(rows.tolist(), ids):
            chunks.append(h[:prompt[r] // TOKEN_HASH_BLOCK])
        block_sizes.add(TOKEN_HASH_BLOCK)
    for r in np.flatnonzero(from_hashes).tolist():
        size = int(sizes.iloc[r])
        chunks.append(hashes[r][:-(-prompt[r] // size)])
        block_sizes.add(size)
    flat = np.fromiter((x for c in chunks for x in c), dtype=np.uint64)
    unique = int(np.unique(flat).size)
    refs = int(flat.size)
    return {"block_tokens": sorted(block_sizes), "references": refs, "unique_blocks": unique,
            "reuse_ratio": (refs - unique) / refs if refs else 0.0}


def format_stats(stats: dict, label: str | None = None) -> str:
    """The stats as aligned text lines, for people."""
    rows = [("trace", label or stats["source"]), ("requests", f"{stats['requests']:,}")]
    if "duration_s" in stats:
        rows += [("duration", f"{stats['duration_s']:,.1f} s"),
                 ("arrival rate", f"{stats['rate_per_s']:.3f} requests/s"),
                 ("burstiness", f"CV of gaps {stats['cv_of_gaps']:.3f}")]
    else:
        rows.append(("arrivals", "none in the file (pass --rate R)"))
    for name in ("prompt", "output"):
        s = stats[f"{name}_tokens"]
        rows.append((f"{name} tokens",
                     f"mean {s['mean']:,.2f}  p50 {s['p50']:,.0f}  p99 {s['p99']:,.0f}"))
    reuse = stats.get("prefix_reuse")
    if reuse:
        sizes = "/".join(str(s) for s in reuse["block_tokens"])
        rows.append(("prefix reuse",
                     f"{100 * reuse['reuse_ratio']:.1f}% of {reuse['references']:,} "
                     f"block references ({reuse['unique_blocks']:,} unique blocks of "
                     f"{sizes} tokens; unlimited cache)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)
