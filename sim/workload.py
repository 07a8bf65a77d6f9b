"""From a trace request to scheduler groups: identities, fan-out, rejection.

Rejection happens here, once, with a reason, so that the scheduler never
retries a request that can never run (the livelock guard): longer than
``max_model_len``, or needing more memory than the whole cache.
"""
from __future__ import annotations

from pagesim.sim.block_keys import BlockKeys
from pagesim.sim.sequence import Group, RequestRecord, Sequence


def request_keys(req, block_size: int, *, shared_prompt: bool) -> BlockKeys | None:
    """Content identities of the request's blocks, for prefix caching.

    Real token ids win, then trace hash ids (mapped to pages of our block
    size). Without either, a request whose prompt is shared by its own child
    requests (``n > 1`` in V1) gets identities unique to the request.
    """
    if req.prompt_token_ids is not None:
        ids = tuple(req.prompt_token_ids) + tuple(req.output_token_ids or ())
        return BlockKeys(block_size, token_ids=ids)
    if req.block_hashes is not None and req.hash_block_size:
        return BlockKeys(block_size, page_ids=req.page_keys(block_size))
    if shared_prompt:
        return BlockKeys(block_size, page_ids=[("req", req.id, i)
                                               for i in range(req.prompt_tokens // block_size)])
    return None


def forks_of(req, generation: str) -> int:
    """Sequences a request forks into: beams, and V0's parallel samples
    (V1 runs ``n > 1`` as child requests instead)."""
    return max(req.beam_width, req.n if generation == "v0" else 1)


def rejection(sched, req) -> str | None:
    cfg = sched.cfg
    total = req.prompt_tokens + req.output_tokens
    if total > cfg.max_model_len:
        return f"longer than max_model_len ({total} > {cfg.max_model_len} tokens)"
    return sched.kv.rejection(req.prompt_tokens, req.output_tokens, forks_of(req, cfg.generation),
                              sched.watermark_blocks)


def admit_request(sched, req) -> tuple[RequestRecord, list[Group]]:
    rec = RequestRecord(req.id, req.arrival_s, req.prompt_tokens, req.output_tokens,
                        req.n, req.beam_width, req.priority)
    reason = rejection(sched, req)
    if reason is not None:
        rec.rejected = reason
        return rec, []
    kv = sched.kv
    beam = req.beam_width
    if beam > 1 or (sched.cfg.generation == "v0" and req.n > 1):
        fanout, children = (req.n if beam <= 1 else 1), 1
    else:
        fanout, children = 1, req.n
    caching = kv.caps.prefix_caching
    keys = request_keys(req, kv.block_size, shared_prompt=children > 1) if caching else None
    groups = []
    for _ in range(children):
        seq = Sequence(sched.next_seq_id, req.prompt_tokens, req.output_tokens, keys)
        sched.next_seq_id += 1
        g = Group(sched.next_gid, rec, [seq], req.arrival_s, req.priority,
                  fanout=fanout, beam_width=beam)
        if sched.log is not None:
            sched.log.add_sequence(seq.seq_id, req.id, g.gid)
        sched.next_gid += 1
        groups.append(g)
    rec.open_groups = len(groups)
    return rec, groups
