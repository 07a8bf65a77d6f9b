"""V0 parallel sampling and beam search: which sequences a group forks.

Right after its prefill a group forks into its samples or beams (the prompt
sequence is every child's parent). Beams are then pruned and re-forked every
step by a seeded stochastic model: each of the ``beam_width`` next beams
picks a parent uniformly among the ``w`` current ones; a beam nobody picked
is dropped, one picked ``c`` times continues and forks ``c - 1`` children.
The scheduler applies the decision (allocator forks and frees, the step's
fork and free lists).
"""
from __future__ import annotations


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
