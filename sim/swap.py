"""Swapping whole sequence groups between the GPU pool and a CPU pool.

vLLM V0's swap preemption: when the GPU runs out of blocks, the scheduler
moves a sequence group's blocks to a CPU-side pool and later brings them
back. Blocks shared inside the group (after ``fork``) are moved once, and
stay shared on the other side. The returned ``(src, dst)`` mappings tell an
executor which block contents to copy; CPU and GPU ids are separate spaces.

Mixed into ``PagedKVCacheManager``; kept apart because it is the only part
that touches the CPU pool.
"""
from __future__ import annotations

from pagesim.sim.errors import InvalidArgument, OutOfBlocks
from pagesim.sim.event_log import FREE, SWAP_IN, SWAP_OUT


class SwapMixin:
    def _group(self, seq_ids, on_cpu: bool):
        if self.cpu_pool is None:
            raise InvalidArgument("swapping needs a CPU pool (num_cpu_blocks > 0)")
        states = []
        for sid in seq_ids:
            s = self._seq(sid)
            if s.on_cpu != on_cpu:
                where = "swapped out" if s.on_cpu else "on the GPU"
                raise InvalidArgument(f"sequence {sid} is already {where}")
            states.append((sid, s))
        return states

    @staticmethod
    def _unique_blocks(states) -> list:
        seen: dict = {}  # Block -> None, in first-seen order (blocks hash by identity)
        for _, s in states:
            for b in s.table:
                seen[b] = None
        return list(seen)

    def can_swap_out(self, seq_ids) -> bool:
        states = self._group(seq_ids, on_cpu=False)
        return len(self._unique_blocks(states)) <= self.cpu_pool.num_free

    def can_swap_in(self, seq_ids, *, watermark_blocks: int = 0) -> bool:
        states = self._group(seq_ids, on_cpu=True)
        return len(self._unique_blocks(states)) + watermark_blocks <= self.pool.num_free

    def swap_out(self, seq_ids) -> list[tuple[int, int]]:
        """Move the group to the CPU pool; returns ``(gpu, cpu)`` pairs."""
        states = self._group(seq_ids, on_cpu=False)
        return self._move(states, self.pool, self.cpu_pool, SWAP_OUT, to_cpu=True)

    def swap_in(self, seq_ids) -> list[tuple[int, int]]:
        """Bring the group back to the GPU pool; returns ``(cpu, gpu)`` pairs."""
        states = self._group(seq_ids, on_cpu=True)
        return self._move(states, self.cpu_pool, self.pool, SWAP_IN, to_cpu=False)

    def _move(self, states, src_pool, dst_pool, kind, *, to_cpu: bool):
        unique = self._unique_blocks(states)
        if len(unique) > dst_pool.num_free:
            raise OutOfBlocks(f"swap needs {len(unique)} blocks, {dst_pool.num_free} free")
        dst_blocks = dst_pool.get_new_blocks(len(unique))
        mapping = {}
        for src, dst in zip(unique, dst_blocks):
            dst.fill = src.fill
            dst.ref_cnt = 0  # re-counted below, one per holder in the group
            mapping[src] = dst
        log = self.log
        for sid, s in states:
            for src in s.table:
                dst = mapping[src]
                dst.ref_cnt += 1
                fill = src.fill
                if src_pool.release(src) and to_cpu:
                    self.live_tokens -= fill
                if log is not None:
                    log.add(sid, kind, dst.id, src.id)
            s.table = [mapping[b] for b in s.table]
            s.on_cpu = to_cpu
            if not to_cpu:
                s.num_hashed = 0
        if not to_cpu:
            self.live_tokens += sum(d.fill for d in mapping.values())
            for _, s in states:
                self._hash_full_blocks(s)
        return [(src.id, dst.id) for src, dst in mapping.items()]

    def _free_on_cpu(self, seq_id: int, s) -> None:
        """``free`` of a swapped-out sequence: its blocks are CPU blocks."""
        del self.seqs[seq_id]
        for b in reversed(s.table):
            self.cpu_pool.release(b)
            if self.log is not None:
                self.log.add(seq_id, FREE, b.id)
