"""``load_trace``: any supported file to a checked ``Trace``.

Reading is all or nothing: the whole file is parsed and checked before a
``Trace`` exists. Then come the policies the caller chose explicitly: an
arrival process (needed by length-only files), sorting, and what to do with
requests longer than the model allows. Whatever a policy changes is counted
in ``trace.meta`` and announced with a ``TraceWarning``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pagesim.traces import validate as v
from pagesim.traces.arrivals import ArrivalProcess, Gamma, Poisson, Replay, draw
from pagesim.traces.canonical import Table
from pagesim.traces.errors import TraceError, TraceWarning
from pagesim.traces.jsonl import read_mooncake, read_tokens
from pagesim.traces.pages import combine
from pagesim.traces.readers import detect_format, read_azure, read_canonical, read_lengths, read_vidur
from pagesim.traces.trace import Trace

READERS = {
    "azure": read_azure,
    "mooncake": read_mooncake,
    "lengths": read_lengths,
    "vidur": read_vidur,
    "tokens": read_tokens,
    "pagesim": read_canonical,
}
FORMATS = tuple(READERS)
ON_TOO_LONG = ("reject", "truncate", "error")


def read_table(path: str | Path, fmt: str | None = None) -> Table:
    """Parse and check a trace file without applying any policy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}")
    if fmt is None:
        fmt = detect_format(path)
    elif fmt not in READERS:
        raise ValueError(f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}")
    table = READERS[fmt](path)
    if not table.source:
        table.source = f"{fmt}:{path.name}"
    if fmt != "pagesim":
        table.meta = {"format": fmt, "path": str(path), **table.meta}
    return table


def load_trace(path: str | Path, fmt: str | None = None, *, arrival=None, seed: int = 0,
               max_model_len: int | None = None, on_too_long: str = "reject",
               sort: bool = False) -> Trace:
    """Read a trace file into a ``Trace``.

    Args:
        path: the file.
        fmt: one of ``FORMATS`` (``azure``, ``mooncake``, ``lengths``,
            ``vidur``, ``tokens``, ``pagesim``); detected from the file if None.
        arrival: an arrival spec (``parse_arrival`` below: a rate for
            Poisson, ``"gamma:RATE:CV"``, ``"replay:PATH"``, a Trace, a
            callable). Required for length-only files; for timed files it
            replaces the file's times, rows staying in file order.
        seed: seeds the arrival process.
        max_model_len: the model's limit on prompt + output tokens, or None.
        on_too_long: for requests over ``max_model_len``: ``"reject"`` drops
            them, ``"truncate"`` cuts the prompt to at most
            ``max_model_len - 1`` tokens and then the output to fit,
            ``"error"`` raises ``TraceError`` at the first one. Either change
            is counted in ``meta`` (``too_long``; the ids of truncated
            requests in ``truncated_ids``) and warned about.
        sort: sort rows by arrival (stably) instead of rejecting a file
            whose times go backwards.

    Request ids are the 0-based data row in the file (canonical files keep
    their own ids), so they survive sorting and rejection and point back at
    the file.
    """
    if on_too_long not in ON_TOO_LONG:
        raise ValueError(f"on_too_long must be one of {ON_TOO_LONG}, got {on_too_long!r}")
    table = read_table(path, fmt)
    frame, lines, meta = table.frame, table.lines, dict(table.meta)
    needs_arrival = meta.pop("needs_arrival", False)
    if arrival is not None:
        process = parse_arrival(arrival)
        times = draw(process, len(frame), np.random.default_rng(seed))
        frame = frame.assign(arrival_s=times)
        meta.update(arrival=repr(process), seed=seed)
    elif needs_arrival:
        raise TraceError(path, None, "a length-only trace has no arrival times: pass "
                         "arrival= (e.g. arrival=10.0 for Poisson at 10 requests/s)")
    else:
        frame, lines = _order(table, frame, lines, sort, meta)
    if max_model_len is not None:
        frame, lines = _limit(table, frame, lines, max_model_len, on_too_long, meta)
    return Trace.from_frame(frame, table.source, meta)


def _order(table: Table, frame, lines, sort: bool, meta: dict):
    times = frame["arrival_s"].to_numpy()
    issue = v.order_issue(times, table.time_label, table.time_shown)
    if issue is None:
        return frame, lines
    if not sort:
        v.raise_issue(issue, table.path, lines, table.unit)
    order = np.argsort(times, kind="stable")
    meta["sorted_rows"] = int((order != np.arange(len(order))).sum())
    return frame.iloc[order].reset_index(drop=True), lines[order]


def _limit(table: Table, frame, lines, limit: int, mode: str, meta: dict):
    if limit < 2:
        raise ValueError(f"max_model_len must be at least 2, got {limit}")
    prompt = frame["prompt_tokens"].to_numpy()
    output = frame["output_tokens"].to_numpy()
    over = np.flatnonzero(prompt + output > limit)
    meta.update(max_model_len=limit, on_too_long=mode, too_long=int(over.size))
    if over.size == 0:
        return frame, lines
    row = int(over[0])
    if mode == "error":
        raise TraceError(table.path, int(lines[row]),
                         f"request of {prompt[row] + output[row]} tokens (prompt "
                         f"{prompt[row]} + output {output[row]}) exceeds max_model_len "
                         f"{limit}; pass on_too_long='truncate' or 'reject'",
                         unit=table.unit)
    shown = ", ".join(str(x) for x in lines[over[:5]])
    warnings.warn(f"{table.path}: {'rejected' if mode == 'reject' else 'truncated'} "
                  f"{over.size} of {len(frame)} requests longer than max_model_len="
                  f"{limit} (prompt + output tokens), e.g. {table.unit}s {shown}",
                  TraceWarning, stacklevel=3)
    if mode == "reject":
        keep = np.ones(len(frame), dtype=bool)
        keep[over] = False
        return frame.iloc[keep].reset_index(drop=True), lines[keep]
    meta["truncated_ids"] = frame["id"].to_numpy()[over].tolist()
    return truncate_rows(frame, over, limit), lines


def truncate_rows(frame: pd.DataFrame, rows: np.ndarray, limit: int) -> pd.DataFrame:
    """Cut the given rows to ``prompt + output <= limit``: the prompt keeps its
    first ``limit - 1`` tokens at most, then the output is shortened.

    Token ids are cut alike. Block hashes keep the blocks that are still
    whole; a block that now ends earlier gets a new id derived from the old
    one and its new length, because its content changed. If the prompt was
    cut, its output no longer follows the same text, so hashes then cover the
    prompt only.
    """
    frame = frame.copy()
    cols = {c: frame[c].to_numpy(copy=True) for c in
            ("prompt_tokens", "output_tokens", "prompt_token_ids",
             "output_token_ids", "block_hashes")}
    sizes = frame["hash_block_size"]
    for r in rows.tolist():
        p, o = int(cols["prompt_tokens"][r]), int(cols["output_tokens"][r])
        new_p = min(p, limit - 1)
        new_o = min(o, limit - new_p)
        cols["prompt_tokens"][r], cols["output_tokens"][r] = new_p, new_o
        if cols["prompt_token_ids"][r] is not None:
            cols["prompt_token_ids"][r] = cols["prompt_token_ids"][r][:new_p]
        if cols["output_token_ids"][r] is not None:
            cols["output_token_ids"][r] = cols["output_token_ids"][r][:new_o]
        hashes = cols["block_hashes"][r]
        if hashes is not None:
            size = int(sizes.iloc[r])
            covered = p + o if len(hashes) > -(-p // size) else p
            new_cover = min(covered, new_p + new_o if new_p == p else new_p)
            cols["block_hashes"][r] = _cut_hashes(hashes, size, covered, new_cover)
    for c, arr in cols.items():
        frame[c] = arr
    return frame


def _cut_hashes(hashes: tuple, size: int, covered: int, new_cover: int) -> tuple:
    keep = -(-new_cover // size)
    out = list(hashes[:keep])
    old_end = min(keep * size, covered)
    if keep and new_cover != old_end:
        out[-1] = int(combine(out[-1], new_cover - (keep - 1) * size))
    return tuple(out)


def apply_max_model_len(trace: Trace, max_model_len: int,
                        on_too_long: str = "reject") -> Trace:
    """``load_trace``'s length policy for a trace already in memory (a
    synthetic one, say); errors name the 1-based row."""
    if on_too_long not in ON_TOO_LONG:
        raise ValueError(f"on_too_long must be one of {ON_TOO_LONG}, got {on_too_long!r}")
    table = Table(trace.to_dataframe(), np.arange(len(trace)) + 1, trace.source,
                  "pagesim", unit="row")
    meta = dict(trace.meta)
    frame, _ = _limit(table, table.frame, table.lines, max_model_len, on_too_long, meta)
    return Trace.from_frame(frame, trace.source, meta)


def parse_arrival(spec) -> ArrivalProcess:
    """An arrival process from a short spec.

    Here, beside ``load_trace``, because ``"replay:PATH"`` loads a trace
    (whose own ``arrival=`` may be such a spec).

    Accepts a number (Poisson at that rate), ``"poisson:RATE"``,
    ``"gamma:RATE:CV"``, ``"replay:PATH"``, a ``Trace`` (replay its times), or
    any callable ``(n, rng) -> times`` (returned as is).
    """
    if isinstance(spec, Trace):
        return Replay.from_trace(spec)
    if callable(spec):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Poisson(float(spec))
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        try:
            if kind == "poisson":
                return Poisson(float(rest))
            if kind == "gamma":
                rate, _, cv = rest.partition(":")
                return Gamma(float(rate), float(cv))
            if kind == "replay" and rest:
                return Replay.from_trace(load_trace(rest))
            return Poisson(float(spec))
        except ValueError as exc:
            raise ValueError(f"bad arrival spec {spec!r}: {exc}") from None
    raise ValueError(f"bad arrival spec {spec!r}: expected a rate, 'poisson:R', "
                     "'gamma:R:CV', 'replay:PATH', a Trace or a callable")
