"""The canonical request record: what a trace gives the simulator.

Tokens are counted, not stored, unless a trace carries real identities:
``prompt_token_ids`` (token-id traces) or ``block_hashes`` (Mooncake-style
prefix-chained hash ids of ``hash_block_size`` tokens each). Either lets the
simulator's prefix cache find shared prefixes; with neither, every prompt is
unique content.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace.

    ``block_hashes`` identify consecutive ``hash_block_size``-token blocks of
    the request's tokens, prompt first. They cover at least the prompt
    (``ceil(prompt_tokens / hash_block_size)`` ids; the last may be a partial
    block) and may go on over the output tokens (multi-turn workloads, where
    the next turn's prompt repeats this turn's answer). Equal ids at equal
    positions mean equal content up to the end of that block.
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prompt_token_ids: tuple[int, ...] | None = None
    output_token_ids: tuple[int, ...] | None = None
    block_hashes: tuple[int, ...] | None = None
    hash_block_size: int | None = None
    n: int = 1                 # parallel samples
    beam_width: int = 1        # beam search width (1 = no beam search)
    priority: int = 0          # lower value = more important (vLLM convention)
    session_id: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens
