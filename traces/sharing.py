"""Block identities for synthetic workloads that share content.

A session's token stream is a row of *segments*, each a run of tokens with
one content id::

    [ system prompt | few-shot examples | user 0 | answer 0 | user 1 | answer 1 | ...]
      shared by all   shared by all       unique to this session, turn by turn

Every segment sits after a prefix that its id already determines (the shared
segments always come first, in a fixed order; a user or answer segment has a
unique id and belongs to one session). So the pair (id of the segment
holding a token, offset of that token in it) identifies the whole prefix up
to that token, which is all a chained block hash promises: block ``j`` of a
request is named by that pair at the block's last token. Turn ``k + 1``'s
prompt repeats turn ``k``'s prompt and answer, so its leading blocks get the
same identities and a prefix cache finds them.
"""
from __future__ import annotations

import numpy as np

from pagesim.traces.pages import combine, split

FEW_SHOT_TOKENS = {"one-shot": 80, "five-shot": 341}   # vLLM paper, section 6.4
_SYSTEM_TAG, _FEW_SHOT_TAG = 0x5157, 0xF5E7


def shared_segments(system_prompt_tokens: int, few_shot: str | None) -> list[tuple[int, int]]:
    """``(content id, tokens)`` of the segments every session starts with."""
    if system_prompt_tokens < 0:
        raise ValueError("system_prompt_tokens must be >= 0")
    if few_shot is not None and few_shot not in FEW_SHOT_TOKENS:
        raise ValueError(f"few_shot must be None or one of {sorted(FEW_SHOT_TOKENS)}")
    segs = []
    if system_prompt_tokens:
        segs.append((int(combine(_SYSTEM_TAG, system_prompt_tokens)), system_prompt_tokens))
    if few_shot is not None:
        size = FEW_SHOT_TOKENS[few_shot]
        # Its content depends on what precedes it, so the id does too.
        segs.append((int(combine(_FEW_SHOT_TAG, size * 100_003 + system_prompt_tokens)), size))
    return segs


def session_block_hashes(turn: np.ndarray, user: np.ndarray, answer: np.ndarray,
                         cover: np.ndarray, shared: list[tuple[int, int]],
                         block_size: int) -> np.ndarray:
    """Block identities of every request, as an object array of tuples.

    Args:
        turn: turn number of each request; requests of a session are
            consecutive, turn 0 first.
        user, answer: tokens of each request's new user message and answer.
        cover: how many leading tokens of its stream each request's hashes
            cover (its prompt, or prompt + answer for multi-turn sessions).
        shared: segments every session starts with (``shared_segments``).
        block_size: tokens per hash block.
    """
    seg_id, seg_start, base = _segments(turn, user, answer, shared)
    nblocks = -(-cover // block_size)
    req = np.repeat(np.arange(len(cover)), nblocks)
    first = np.cumsum(nblocks) - nblocks
    j = np.arange(nblocks.sum()) - np.repeat(first, nblocks)
    end = np.minimum((j + 1) * block_size, cover[req])
    pos = base[req] + end - 1                       # last token, global position
    seg = np.searchsorted(seg_start, pos, side="right") - 1
    keys = combine(seg_id[seg], (pos - seg_start[seg] + 1).astype(np.uint64))
    return split(keys.tolist(), nblocks)


def _segments(turn, user, answer, shared):
    """Global segment table: ids, start positions, and each request's
    session base position (sessions laid end to end)."""
    n, k = len(turn), len(shared)
    opens = turn == 0
    count = 2 + k * opens
    start = np.cumsum(count) - count
    seg_id = np.empty(count.sum(), dtype=np.uint64)
    seg_len = np.empty(count.sum(), dtype=np.int64)
    for i, (cid, size) in enumerate(shared):
        seg_id[start[opens] + i] = cid
        seg_len[start[opens] + i] = size
    own = start + k * opens
    seg_id[own] = 2 * np.arange(n, dtype=np.uint64) + 1      # unique ids
    seg_len[own] = user
    seg_id[own + 1] = 2 * np.arange(n, dtype=np.uint64) + 2
    seg_len[own + 1] = answer
    seg_start = np.cumsum(seg_len) - seg_len
    session_first = np.maximum.accumulate(np.where(opens, np.arange(n), 0))
    base = seg_start[start[session_first]]
    return seg_id, seg_start, base

