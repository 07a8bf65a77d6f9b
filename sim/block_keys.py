"""Content identities of a sequence's full blocks, for prefix caching.

A full block's key is a chained hash: ``hash((parent_key, content, extra))``,
so equal keys mean equal content *and* equal prefix (vLLM V1). Content is
either the block's token ids, or one page identity per block when a trace
gives prefix hash ids instead of tokens (Mooncake; see
``traces.page_keys``). ``extra`` carries anything else that changes the KV
(a LoRA id, multimodal inputs, a cache salt).

Blocks past the known content (generated tokens of a simulated request) get
unique keys from the manager instead: they are cached like any other full
block (and so show up as cached-but-free memory after a free), but no other
request can ever hit them. Keys are Python ints; the hash of a tuple of ints
does not depend on PYTHONHASHSEED, so runs are reproducible.
"""
from __future__ import annotations

from typing import Sequence

from pagesim.sim.errors import InvalidArgument

#: Unique keys start above the range of ``hash()`` so they never collide.
UNIQUE_KEY_BASE = 1 << 64


class BlockKeys:
    """Lazily computed chained keys of the first ``known_blocks`` blocks."""

    __slots__ = ("block_size", "known_blocks", "_tokens", "_pages", "_extra", "_keys")

    def __init__(
        self,
        block_size: int,
        *,
        token_ids: Sequence[int] | None = None,
        page_ids: Sequence[int] | None = None,
        extra: object = None,
    ) -> None:
        if (token_ids is None) == (page_ids is None):
            raise InvalidArgument("give exactly one of token_ids or page_ids")
        self.block_size = block_size
        self._tokens = tuple(token_ids) if token_ids is not None else None
        self._pages = tuple(page_ids) if page_ids is not None else None
        self._extra = extra
        self._keys: list[int] = []
        if self._tokens is not None:
            self.known_blocks = len(self._tokens) // block_size
        else:
            self.known_blocks = len(self._pages)

    def key(self, i: int) -> int:
        """Chained key of block ``i`` (``i < known_blocks``)."""
        keys = self._keys
        while len(keys) <= i:
            j = len(keys)
            parent = keys[-1] if keys else None
            if self._tokens is not None:
                b = self.block_size
                content = self._tokens[j * b:(j + 1) * b]
            else:
                content = self._pages[j]
            keys.append(hash((parent, content, self._extra)))
        return keys[i]

    def truncated(self, num_blocks: int) -> "BlockKeys":
        """Keys of the first ``num_blocks`` blocks only (a forked child shares
        its parent's history up to the fork, then writes its own tokens)."""
        out = BlockKeys.__new__(BlockKeys)
        out.block_size = self.block_size
        out._tokens = self._tokens
        out._pages = self._pages
        out._extra = self._extra
        out.known_blocks = min(num_blocks, self.known_blocks)
        out._keys = self._keys[: out.known_blocks]
        return out
