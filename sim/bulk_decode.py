"""The fast mode's bulk decode primitives of the paged KV-cache manager.

In fast mode the scheduler decodes many plain sequences at once
(``sim/lazy_decode.py``) and calls the manager only where a sequence needs
it: a write into its unshared last block (``write_in_place``), or the
crossing of a block boundary (``cross_blocks``). Each equals the
``append_slots`` calls the step-by-step engine makes, event for event and
block for block, without the per-call checks a general append needs (the
callers' invariants, asserted here, make them unnecessary). The hypothesis
state machine (``tests/test_allocator_state_machine.py``) drives both.

Mixed into ``PagedKVCacheManager``; kept apart because only the fast mode
uses them.
"""
from __future__ import annotations

from pagesim.sim.errors import OutOfBlocks
from pagesim.sim.event_log import ALLOC


class BulkDecodeMixin:
    def write_in_place(self, seq_ids, counts) -> None:
        """Append ``counts[i]`` tokens to each sequence, known to fit in its
        unshared last block (asserted): the fast mode's ``append_slots``
        without the per-call checks and branches."""
        bs, seqs = self.block_size, self.seqs
        caching = self.enable_prefix_caching
        total = 0
        for sid, n in zip(seq_ids, counts):
            if not n:
                continue
            s = seqs[sid]
            b = s.table[-1]
            fill = b.fill + n
            assert fill <= bs and b.ref_cnt == 1, (
                f"write_in_place: sequence {sid} would overflow or write a shared block")
            b.fill = fill
            s.num_tokens += n
            total += n
            if caching and fill == bs:
                self._hash_full_blocks(s)
        self.live_tokens += total

    def cross_blocks(self, seq_ids, lags) -> int:
        """For each sequence in order: write ``lags[i]`` tokens in place,
        which fills its unshared last block exactly, then take one new block
        for one more token. The fast engine's block-boundary crossings, in
        one call (the caller checked that enough blocks are free). Only for
        content without known identities (see ``sim/lazy_decode.py``):
        their cache keys cannot collide. Returns the tokens written."""
        bs, seqs, log = self.block_size, self.seqs, self.log
        caching = self.enable_prefix_caching
        if log is None:  # raises OutOfBlocks before any change
            new = self.pool.get_new_blocks(len(seq_ids), fill=1)
        else:  # pop one by one so each eviction is logged before its alloc
            if len(seq_ids) > self.pool.num_free:
                raise OutOfBlocks(f"cross_blocks: {len(seq_ids)} crossings, {self.pool.num_free} free")
            new = (self.pool.get_new_blocks(1, fill=1)[0] for _ in seq_ids)
        for sid, lag, b in zip(seq_ids, lags, new):
            s = seqs[sid]
            table = s.table
            last = table[-1]
            fill = last.fill + lag
            last.fill = fill
            # a full last block may be shared (a prefix-cache hit); one that
            # is written into may not
            assert fill == bs and (lag == 0 or last.ref_cnt == 1), (
                f"cross_blocks: sequence {sid} is not at a block boundary, or writes a shared block")
            table.append(b)
            s.num_tokens += lag + 1
            if log is not None:
                log.add(sid, ALLOC, b.id)
            if caching:
                i = s.num_hashed
                keys = s.keys
                if (i == len(table) - 2 and last.hash is None
                        and (keys is None or keys.known_blocks <= i)):
                    # _hash_full_blocks inlined for the block just filled
                    # with unknown content: a unique key
                    last.hash = self._next_unique
                    self._next_unique += 1
                    s.num_hashed = i + 1
                else:
                    self._hash_full_blocks(s)
        written = sum(lags) + len(seq_ids)
        self.live_tokens += written
        return written
