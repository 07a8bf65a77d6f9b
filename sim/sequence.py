"""Scheduler-side state of requests, groups and sequences.

A trace ``Request`` becomes one ``RequestRecord`` (its metrics) and one or
more ``Group``s, the unit the scheduler admits, preempts and finishes. A
group holds one or more ``Sequence``s that share a prompt:

* V1 scheduler: a request with ``n > 1`` becomes ``n`` groups of one
  sequence each (child requests) that share the prompt through the prefix
  cache, as in vLLM V1.
* V0 scheduler: one group whose prompt sequence forks into ``n`` samples or
  ``beam_width`` beams after the prefill (fork / copy-on-write).

A sequence's progress is two numbers: ``computed`` tokens have K/V in the
cache, and ``known = prompt_len + generated`` tokens exist. A step computes
``q`` tokens; when ``computed`` catches up with ``known``, the step samples
the next token. Prefill, chunked prefill, decode and recompute after
preemption are all this one rule.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagesim.sim.block_keys import BlockKeys

WAITING, RUNNING, SWAPPED, FINISHED, REJECTED = "waiting", "running", "swapped", "finished", "rejected"
#: Done, but under async scheduling still holding its blocks until the next
#: step has been scheduled (vLLM applies step k's output after scheduling k+1).
FINISHING = "finishing"


@dataclass(slots=True)
class RequestRecord:
    """Metrics of one trace request (all its groups and sequences)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    n: int
    beam_width: int
    priority: int
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    cached_tokens: int = 0
    open_groups: int = 0
    rejected: str | None = None


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    prompt_len: int
    output_len: int
    keys: BlockKeys | None
    generated: int = 0
    computed: int = 0

    @property
    def known(self) -> int:
        return self.prompt_len + self.generated

    @property
    def done(self) -> bool:
        return self.generated >= self.output_len


@dataclass(slots=True, eq=False)
class Group:
    """A scheduling unit: sequences admitted, preempted and finished together."""

    gid: int
    record: RequestRecord
    seqs: list[Sequence]
    arrival_s: float
    priority: int
    fanout: int = 1          # V0: samples to fork after the prefill
    beam_width: int = 1      # V0: beams kept each step
    status: str = WAITING
    forked: bool = False
    #: Requeued to recompute at least once: a later admission is a
    #: re-admission (vLLM's ``num_preemptions > 0``), whose prefix-cache
    #: lookup vLLM counts apart and whose hits it leaves out of
    #: ``num_cached_tokens``.
    preempted: bool = False

    def advance(self, q: int) -> bool:
        """Apply a step that computed ``q`` tokens of every sequence (the
        progress rule above); True if the step sampled a token."""
        sampled = False
        for s in self.seqs:
            s.computed += q
            if s.computed == s.prompt_len + s.generated:
                s.generated += 1
                sampled = True
        return sampled
