"""V0 parallel sampling and beam search: which sequences a group forks.

Right after its prefill a group forks into its samples or beams (the prompt
sequence is every child's parent). Beams are then pruned and re-forked every
step by a seeded stochastic model: each of the ``beam_width`` next beams
picks a parent uniformly among the ``w`` current ones; a beam nobody picked
is dropped, one picked ``c`` times continues and forks ``c - 1`` children.
``apply_branch`` makes the allocator calls; the scheduler reports them in
the next step's record.
"""
from __future__ import annotations

from pagesim.sim.sequence import Sequence


def branch(g, rng) -> tuple[list, list[tuple[object, int]]]:
    """(sequences to drop, [(parent, children to fork)]) for group ``g``
    after a step in which it sampled, in the order to apply them."""
    if not g.forked:
        return [], [(g.seqs[0], max(g.fanout, g.beam_width) - 1)]
    if g.beam_width <= 1 or g.seqs[0].done:
        return [], []
    w = len(g.seqs)
    counts = [0] * w
    for p in rng.integers(0, w, size=g.beam_width).tolist():
        counts[p] += 1
    dropped = [s for s, c in zip(g.seqs, counts) if c == 0]
    forks = [(s, c - 1) for s, c in zip(g.seqs, counts) if c > 1]
    return dropped, forks


def apply_branch(g, kv, rng, next_seq_id: int):
    """Branch group ``g`` after a step that sampled: free the dropped
    sequences, fork the children (new ids from ``next_seq_id``). Returns
    ``(forks as (parent, child) ids, dropped ids, next free sequence id)``."""
    dropped, parents = branch(g, rng)
    g.forked = True
    gone = [s.seq_id for s in dropped]
    for sid in gone:
        kv.free(sid)
    if dropped:
        g.seqs = [s for s in g.seqs if s not in dropped]
    forks = []
    for parent, children in parents:
        for _ in range(children):
            child = Sequence(next_seq_id, parent.prompt_len, parent.output_len, None,
                             parent.generated, parent.computed)
            next_seq_id += 1
            kv.fork(parent.seq_id, child.seq_id)
            forks.append((parent.seq_id, child.seq_id))
            g.seqs.append(child)
    return forks, gone, next_seq_id
