"""Synthetic workloads: seeded, deterministic, vectorised.

One ``numpy.random.default_rng(seed)`` is drawn from in a fixed order
(session arrivals, then lengths, then think times), so the same arguments
always give the same ``Trace``.
"""
from __future__ import annotations

import numpy as np

from pagesim.traces import canonical
from pagesim.traces.arrivals import Gamma, Poisson, draw
from pagesim.traces.load import parse_arrival
from pagesim.traces.lengths import length_sampler
from pagesim.traces.sharing import FEW_SHOT_TOKENS, session_block_hashes, shared_segments
from pagesim.traces.trace import Trace

#: Requests/s of the default workload. A Llama-3-8B-class model on one H100
#: (bf16, ~60 GB left for KV at 128 KiB/token, ~470k tokens) decodes a batch
#: of 256 ShareGPT-like sequences at roughly 25-30 ms/step, i.e. ~9k output
#: tokens/s or ~25 requests/s of 338 output tokens: 20 req/s keeps it busy
#: (queues form in bursts) without growing a queue without bound.
DEFAULT_RATE = 20.0
DEFAULT_REQUESTS = 3000


def synthetic(workload="sharegpt", num_requests: int = 1000, rate: float = 10.0,
              cv: float | None = None, n: int = 1, beam_width: int = 1,
              system_prompt_tokens: int = 0, few_shot: str | None = None,
              turns: int = 1, seed: int = 0, *, arrival=None,
              think_time_s: float = 10.0, hash_block_size: int = 16) -> Trace:
    """A synthetic trace.

    Args:
        workload: lengths: ``"sharegpt"`` or ``"alpaca"`` (lognormal fits of
            the vLLM paper's means, see ``traces.lengths``), ``"fixed:P:O"``,
            a path to a trace/length file (sampled empirically), or a sampler
            ``(n, rng) -> (prompt, output)``.
        num_requests: requests in the trace (over all sessions and turns).
        rate: mean requests/s. With ``turns > 1`` sessions start at
            ``rate / turns`` per second, so the request rate stays ``rate``.
        cv: coefficient of variation of the gaps between (session) arrivals:
            ``None`` for Poisson, ``> 1`` for bursts (Gamma gaps).
        n: parallel samples per request (vLLM's ``n``).
        beam_width: beam search width (1 = none).
        system_prompt_tokens: a system prompt of this many tokens, identical
            in every request and placed first.
        few_shot: ``None``, ``"one-shot"`` (80 tokens) or ``"five-shot"``
            (341 tokens), the vLLM paper's shared few-shot prefixes; they
            follow the system prompt.
        turns: turns per conversation. Turn ``k + 1``'s prompt is the whole
            previous context (turn ``k``'s prompt and answer) plus a new user
            message, and arrives an exponential think time (mean
            ``think_time_s``) after turn ``k`` *arrived*: a trace cannot know
            when the answer is done, so a simulator that wants causality
            should hold a turn until the previous turn of its ``session_id``
            finishes. The sampled prompt length is the new message only.
        seed: seeds the one generator everything is drawn from.
        arrival: any arrival spec (``traces.load.parse_arrival``) for the
            session starts; overrides ``rate`` and ``cv``.
        think_time_s: mean gap between turns of a conversation.
        hash_block_size: tokens per hash block when content is shared.

    Prompt lengths include the shared prefix. Block hashes are only made when
    something is shared (a prefix or several turns); otherwise every prompt is
    unique and ``block_hashes`` stays ``None``. Sessions get ``session_id``
    only when ``turns > 1``.
    """
    _check(num_requests, n, beam_width, turns, hash_block_size)
    rng = np.random.default_rng(seed)
    shared = shared_segments(system_prompt_tokens, few_shot)
    sampler = length_sampler(workload)
    turn = np.arange(num_requests) % turns
    session = np.arange(num_requests) // turns
    if arrival is None:
        arrival = Poisson(rate / turns) if cv is None else Gamma(rate / turns, cv)
    process = parse_arrival(arrival)
    starts = draw(process, int(session[-1]) + 1, rng)
    user, answer = sampler(num_requests, rng)
    arrival_s = starts[session]
    if turns > 1:
        think = rng.exponential(think_time_s, size=num_requests)
        arrival_s = arrival_s + _within_session(np.where(turn == 0, 0.0, think), turn, True)
    before = _within_session(user + answer, turn, False)
    prefix = sum(size for _, size in shared)
    prompt = prefix + before + user
    cols = {"n": n, "beam_width": beam_width}
    if shared or turns > 1:
        cover = prompt + answer if turns > 1 else prompt
        cols["block_hashes"] = session_block_hashes(turn, user, answer, cover,
                                                    shared, hash_block_size)
        cols["hash_block_size"] = hash_block_size
    if turns > 1:
        cols["session_id"] = session
    order = np.argsort(arrival_s, kind="stable")
    cols = {k: (c[order] if isinstance(c, np.ndarray) else c) for k, c in cols.items()}
    frame = canonical.make_frame(arrival_s[order], prompt[order], answer[order], **cols)
    meta = {"generator": "synthetic", "workload": repr(sampler), "num_requests": num_requests,
            "arrival": repr(process), "n": n, "beam_width": beam_width,
            "system_prompt_tokens": system_prompt_tokens, "few_shot": few_shot,
            "turns": turns, "think_time_s": think_time_s,
            "hash_block_size": hash_block_size, "seed": seed}
    name = workload if isinstance(workload, str) else repr(sampler)
    return Trace.from_frame(frame, f"synthetic:{name}", meta)


def _check(num_requests, n, beam_width, turns, hash_block_size) -> None:
    for name, value in (("num_requests", num_requests), ("n", n),
                        ("beam_width", beam_width), ("turns", turns),
                        ("hash_block_size", hash_block_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _within_session(values: np.ndarray, turn: np.ndarray, inclusive: bool) -> np.ndarray:
    """Running sum of ``values`` within each session (sessions are runs of
    consecutive requests starting at turn 0); inclusive or exclusive."""
    total = np.cumsum(values)
    at_open = np.where(turn == 0, total - values, 0)
    base = np.maximum.accumulate(at_open) if at_open.size else at_open
    running = total - base
    return running if inclusive else running - values


def default_workload(seed: int = 0) -> Trace:
    """The workload ``pagesim replay`` runs with no arguments: 3,000
    ShareGPT-like requests arriving as a Poisson process at ``DEFAULT_RATE``
    (about 150 s of traffic), no shared prefixes."""
    trace = synthetic("sharegpt", num_requests=DEFAULT_REQUESTS, rate=DEFAULT_RATE,
                      seed=seed)
    return Trace.from_frame(trace.to_dataframe(), "default", trace.meta)


__all__ = ["synthetic", "default_workload", "DEFAULT_RATE", "FEW_SHOT_TOKENS"]
