"""The canonical request record: what a trace gives the simulator.

Tokens are counted, not stored, unless a trace carries real identities:
``prompt_token_ids`` (token-id traces) or ``block_hashes`` (Mooncake-style
prefix-chained hash ids of ``hash_block_size`` tokens each). Either lets the
simulator's prefix cache find shared prefixes; with neither, every prompt is
unique content.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagesim.traces.pages import page_keys


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

    @property
    def hashed_tokens(self) -> int:
        """How many leading tokens ``block_hashes`` identify (0 without them).

        The hashes cover the prompt and the output when there are more of
        them than the prompt needs and exactly as many as prompt + output
        need; otherwise only the prompt. When the output ends inside the
        prompt's last block the two readings have equally many ids; we then
        take the prompt alone, which never claims content it does not know.
        """
        if self.block_hashes is None or not self.hash_block_size:
            return 0
        size, count = self.hash_block_size, len(self.block_hashes)
        prompt_blocks = -(-self.prompt_tokens // size)
        if count > prompt_blocks and count == -(-self.total_tokens // size):
            return self.total_tokens
        return min(self.prompt_tokens, count * size)

    def page_keys(self, page_size: int, num_tokens: int | None = None) -> list[int]:
        """Identities of the full pages among the first ``num_tokens`` tokens.

        ``num_tokens`` defaults to, and is clipped at, ``hashed_tokens``:
        pages past the hashed tokens have no known identity. See
        ``traces.pages.page_keys`` for the rule.
        """
        covered = self.hashed_tokens
        if covered == 0:
            return []
        limit = covered if num_tokens is None else min(num_tokens, covered)
        return page_keys(self.block_hashes, self.hash_block_size, limit, page_size)
