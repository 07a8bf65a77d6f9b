"""Continuous-batching scheduler: decides each step, commits its outcome.

Pure Python over the allocator's check/act pairs; the SimPy engine only
drives it (``schedule`` -> executor -> ``commit``). One step, as in vLLM:

1. running groups, in keep order: decodes (one token per sequence) and
   continuing prefill chunks, within the token budget. A group that cannot
   get slots preempts victims (``victim`` policy) until it can, or is
   preempted itself;
2. swapped groups come back (V0, only if nobody was preempted this step);
3. waiting groups are admitted in order while the token budget, the
   sequence limit and the free blocks (minus the watermark) allow.

See ``sim/sequence.py`` for the progress rule shared by prefill, decode and
recompute.
"""
from __future__ import annotations

import bisect
import heapq

from pagesim.sim.config import SchedulerConfig
from pagesim.sim.errors import OutOfBlocks
from pagesim.sim.lazy_decode import LazyDecodeSet
from pagesim.sim.plan import StepPlan
from pagesim.sim.sequence import FINISHED, FINISHING, REJECTED, RUNNING, SWAPPED, WAITING, Group
from pagesim.sim.waiting_queue import WaitingQueue
from pagesim.sim.workload import admit_request


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv, *, rng, event_log=None) -> None:
        self.cfg = config
        self.kv = kv
        self.rng = rng
        self.log = event_log
        self.waiting = WaitingQueue()       # groups by key, smallest first
        self.running: list[Group] = []      # keep order: first = kept longest
        self._running_keys: list[tuple] = []
        self.num_running_seqs = 0           # kept in step with ``running``
        #: Plainly decoding sequences the fast engine advances in bulk.
        self.lazy = LazyDecodeSet(kv)
        #: Put block tables into step plans (only executors that run the
        #: step on real tensors need them).
        self.plan_tables = True
        self.swapped: list[tuple] = []      # heap of (key, group)
        self.records = []
        self.step = 0
        self.preemptions = 0
        self.next_seq_id = 0
        self.next_gid = 0
        self.behaviour = config.behaviour
        num_blocks = getattr(getattr(kv, "pool", None), "num_blocks", 0)
        # a fraction of all blocks, the null block included (vLLM)
        self.watermark_blocks = int(self.behaviour.watermark * num_blocks)
        self._scheduled: list[tuple[Group, list[int]]] = []
        self._pending_forks: list[tuple[int, int]] = []
        self._pending_freed: list[int] = []
        self._pending_finished: list[int] = []
        #: Groups done at the last commit whose blocks are released after
        #: the next step is scheduled (async scheduling), with their finish time.
        self.finishing: list[tuple[Group, float]] = []

    # --------------------------------------------------------------- requests
    def key(self, g: Group) -> tuple:
        if self.cfg.victim == "priority":
            return (g.priority, g.arrival_s, g.gid)
        return (g.arrival_s, g.gid)

    def add_request(self, req) -> None:
        """Turn a trace request into groups, or reject it with a reason."""
        record, groups = admit_request(self, req)
        self.records.append(record)
        for g in groups:
            self.waiting.push(self.key(g), g)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # --------------------------------------------------------------- schedule
    def schedule(self) -> StepPlan:
        """The next step. Under async scheduling the groups that finished
        at the last commit still hold their blocks while it is scheduled,
        and release them right after; if nothing could be scheduled, vLLM
        runs no model step but processes that output and schedules again."""
        plan = self._schedule_step()
        if self.finishing:
            self.apply_finishes()
            if not plan.seq_ids:
                self._pending_forks[:0] = plan.forks
                self._pending_freed[:0] = plan.freed
                self._pending_finished[:0] = plan.finished
                plan = self._schedule_step()
        return plan

    def _schedule_step(self) -> StepPlan:
        plan = StepPlan(step=self.step, forks=self._pending_forks, freed=self._pending_freed,
                        finished=self._pending_finished)
        self._pending_forks, self._pending_freed, self._pending_finished = [], [], []
        if self.log is not None:
            self.log.step = self.step
        self._scheduled = []
        budget = self.cfg.token_budget
        preempted_before = self.preemptions
        budget = self._schedule_running(plan, budget)
        if self.preemptions == preempted_before:
            budget = self._schedule_swapped(plan, budget)
            if not self.swapped:
                self._schedule_waiting(plan, budget)
        if not plan.seq_ids and not self.running and self.swapped:
            # Livelock guard: nothing runs and the head swapped group cannot
            # come back (the GPU cannot take it with the watermark): drop its
            # CPU copy and let it recompute, which admission always serves.
            self._requeue_for_recompute(heapq.heappop(self.swapped)[1], plan)
        return plan

    def _tokens_for(self, g: Group, budget: int) -> int:
        """Query tokens per sequence this step (0 if the budget is too small)."""
        s = g.seqs[0]
        left = s.known - s.computed
        if left == 1:
            return 1 if len(g.seqs) <= budget else 0
        if not self.cfg.chunked_prefill:
            return left if left <= budget else 0
        return min(left, budget)

    def _schedule_running(self, plan: StepPlan, budget: int) -> int:
        i = 0
        running = self.running
        finishing = self.finishing
        while i < len(running):
            g = running[i]
            if finishing and g.status == FINISHING:  # done; its output is not applied yet
                i += 1
                continue
            seqs = g.seqs
            if len(seqs) == 1 and seqs[0].known - seqs[0].computed == 1:
                q = 1 if budget >= 1 else 0  # a plain decode (the common case)
            else:
                q = self._tokens_for(g, budget)
            if q == 0:
                i += 1
                continue
            if not self._reserve(g, q, i, plan):
                continue  # g itself was preempted and left the running list
            self._add_to_plan(plan, g, q)
            budget -= q * len(g.seqs)
            i += 1
        return budget

    def _reserve(self, g: Group, q: int, index: int, plan: StepPlan) -> bool:
        append = self.kv.append_slots
        for s in g.seqs:
            while True:
                # append_slots checks before it acts: OutOfBlocks means
                # nothing changed (cheaper than can_append on every step).
                try:
                    pairs = append(s.seq_id, q)
                    break
                except OutOfBlocks:
                    victim = self._pick_victim(index)
                    self._preempt(victim, plan)
                    if victim is g:
                        return False
            if pairs:
                plan.cow.extend(pairs)
        return True

    def _pick_victim(self, index: int) -> Group:
        """Among the running groups not yet scheduled this step (``index``
        onwards, the one asking included), the one the policy gives up.

        The head of the running list (kept longest) is never a victim while
        another group runs: it always progresses, so every run ends even
        when preemption loses work (restarted V0 sample groups)."""
        if self.cfg.victim == "most-blocks":
            rest = self.running[max(index, 1):] or self.running[index:]
            return max(reversed(rest), key=lambda g: sum(self.kv.num_tokens(s.seq_id) for s in g.seqs))
        return self.running[-1]

    def _remove_running(self, g: Group) -> None:
        # keys are unique (they end with the group id) and stable while running
        i = bisect.bisect_left(self._running_keys, self.key(g))
        assert self.running[i] is g, f"group {g.gid} is not where its key sorts in the running list"
        del self.running[i]
        del self._running_keys[i]
        self.num_running_seqs -= len(g.seqs)

    def _insert_running(self, g: Group) -> int:
        """Insert ``g`` in keep order; returns its index."""
        k = self.key(g)
        i = bisect.bisect(self._running_keys, k)
        self._running_keys.insert(i, k)
        self.running.insert(i, g)
        self.num_running_seqs += len(g.seqs)
        g.status = RUNNING
        return i

    def _preempt(self, g: Group, plan: StepPlan) -> None:
        if g.status == FINISHING:
            self._preempt_finishing(g, plan)
            return
        self._remove_running(g)
        self.preemptions += 1
        g.record.preemptions += 1
        ids = [s.seq_id for s in g.seqs]
        kv = self.kv
        if self.cfg.preemption == "swap" and kv.cpu_pool is not None and kv.can_swap_out(ids):
            plan.swap_out.extend(kv.swap_out(ids))
            g.status = SWAPPED
            heapq.heappush(self.swapped, (self.key(g), g))
            return
        self._requeue_for_recompute(g, plan)

    def _requeue_for_recompute(self, g: Group, plan: StepPlan) -> None:
        """Free the group's KV (GPU or CPU copy) and queue it to recompute."""
        for s in g.seqs:
            self.kv.free(s.seq_id)
            plan.freed.append(s.seq_id)
        if len(g.seqs) > 1:
            # Forked samples/beams cannot be recomputed from the prompt alone
            # (vLLM V0 requires swap for them): the group restarts, losing its
            # generated tokens; the dropped children never come back.
            plan.finished.extend(s.seq_id for s in g.seqs[1:])
            g.seqs = [g.seqs[0]]
            g.seqs[0].generated = 0
            g.forked = False
        for s in g.seqs:
            s.computed = 0
        g.status = WAITING
        self.waiting.push(self.key(g), g)

    def _schedule_swapped(self, plan: StepPlan, budget: int) -> int:
        kv = self.kv
        bs = getattr(kv, "block_size", 1)
        while self.swapped:
            g = self.swapped[0][1]
            ids = [s.seq_id for s in g.seqs]
            q = self._tokens_for(g, budget)
            if q == 0 or self.num_running_seqs + len(ids) > self.cfg.max_num_seqs:
                break
            # Room for the blocks themselves and for this step's q tokens of
            # every sequence (a group swapped mid-prefill continues with a
            # chunk): otherwise it would preempt itself right back out.
            grow = len(ids) * -(-q // bs)
            if not kv.can_swap_in(ids, watermark_blocks=self.watermark_blocks + grow):
                break
            heapq.heappop(self.swapped)
            plan.swap_in.extend(kv.swap_in(ids))
            index = self._insert_running(g)
            if not self._reserve(g, q, index, plan):
                break  # it was preempted after all: no retry within this step
            self._add_to_plan(plan, g, q)
            budget -= q * len(ids)
        return budget

    def admission_watermark(self) -> int:
        """Blocks to keep free when admitting: vLLM 0.33 keeps them only
        while something runs (an idle engine admits into an empty cache)."""
        if self.behaviour.watermark_only_while_running and not self.running:
            return 0
        return self.watermark_blocks

    def admissible(self, g: Group, budget: int) -> tuple[int, int] | None:
        """(cached tokens, query tokens) if waiting group ``g`` can start now."""
        kv, cfg = self.kv, self.cfg
        if budget <= 0 or self.num_running_seqs + max(g.fanout, g.beam_width) > cfg.max_num_seqs:
            return None
        s = g.seqs[0]
        cached = kv.num_cached_tokens(s.known, s.keys)
        q = s.known - cached
        if q > budget:
            if not cfg.chunked_prefill:
                return None
            q = budget
        # vLLM 0.33 (scheduler_reserve_full_isl) admits a chunked prefill
        # only if the blocks for all its known tokens fit, not just the chunk's
        need = s.known if self.behaviour.scheduler_reserve_full_isl else cached + q
        if not kv.can_allocate(need, s.keys, watermark_blocks=self.admission_watermark(),
                               max_tokens=s.prompt_len + s.output_len, prompt_tokens=s.prompt_len):
            return None
        return cached, q

    def _schedule_waiting(self, plan: StepPlan, budget: int) -> None:
        kv = self.kv
        while self.waiting and budget > 0:
            g = self.waiting.head()
            got = self.admissible(g, budget)
            if got is None:
                if not self.running and not self.swapped and not plan.seq_ids:
                    self._reject_stuck(g)  # cannot start even in an empty cache
                    continue
                break
            cached, q = got
            self.waiting.pop()
            s = g.seqs[0]
            hit = kv.allocate(s.seq_id, cached + q, s.keys, max_tokens=s.prompt_len + s.output_len,
                              prompt_tokens=s.prompt_len)
            assert hit == cached, f"cache hit changed between check and act ({cached} -> {hit})"
            s.computed = cached
            g.record.cached_tokens += cached
            self._insert_running(g)
            self._add_to_plan(plan, g, q)
            budget -= q

    def pending_tokens(self) -> tuple[int, int] | None:
        """(final length, prompt length) of the group waiting at the head,
        for the contiguous baselines' accounting."""
        if not self.waiting:
            return None
        s = self.waiting.head().seqs[0]
        return s.prompt_len + s.output_len, s.prompt_len

    def _reject_stuck(self, g: Group) -> None:
        self.waiting.pop()
        g.status = REJECTED
        g.record.rejected = "does not fit in an empty KV cache"
        g.record.open_groups -= 1

    def _add_to_plan(self, plan: StepPlan, g: Group, q: int) -> None:
        tables = getattr(self.kv, "block_table", None) if self.plan_tables else None
        for s in g.seqs:
            plan.seq_ids.append(s.seq_id)
            plan.query_lens.append(q)
            plan.context_lens.append(s.computed + q)
            if tables is not None:
                plan.block_tables.append(tables(s.seq_id))
        self._scheduled.append((g, q))

    # ----------------------------------------------------------------- commit
    def commit(self, now: float, before_finish=None) -> list[Group]:
        """Apply the step's outcome at time ``now``; return finished groups.

        Tokens (and V0 forks) are applied first, then finished groups are
        freed in scheduling order; ``before_finish`` runs in between (the
        fast engine finishes its bulk-decoded sequences there, as they come
        first in scheduling order)."""
        finished = []
        for g, q in self._scheduled:
            if g.status != RUNNING:
                continue
            sampled = False
            for s in g.seqs:
                s.computed += q
                if s.computed == s.prompt_len + s.generated:
                    s.generated += 1
                    sampled = True
            if sampled and g.record.first_token_s is None:
                g.record.first_token_s = now
            if sampled and (g.fanout > 1 or g.beam_width > 1):
                self._branch(g)
            if all(s.done for s in g.seqs):
                finished.append(g)
        if before_finish is not None:
            before_finish()
        self.end_groups(finished, now)
        self._scheduled = []
        self.step += 1
        return finished

    def adopt_decoders(self, groups) -> None:
        """Hand running groups that are one sequence in plain decode to the
        lazy decode set (fast mode)."""
        lazy = self.lazy
        for g in groups:
            if g.status != RUNNING or len(g.seqs) != 1 or g.fanout > 1 or g.beam_width > 1:
                continue
            s = g.seqs[0]
            if s.generated >= 1 and s.known - s.computed == 1 and s.seq_id not in lazy.members:
                lazy.add(g, self.key(g))

    def end_groups(self, groups, now: float) -> None:
        """Finish ``groups`` (done at the step ending at ``now``). Under
        async scheduling their blocks are released only after the next step
        has been scheduled; at once if nothing else is left to schedule (vLLM
        then waits for the output and processes it before going idle)."""
        if not self.behaviour.async_scheduling:
            for g in groups:
                self._finish(g, now)
            return
        for g in groups:
            g.status = FINISHING
            self.finishing.append((g, now))
        if not (self.waiting or self.swapped or len(self.running) > len(self.finishing)):
            self.apply_finishes()

    def apply_finishes(self) -> None:
        """Release the groups finished at the last commit (async scheduling)."""
        finishing, self.finishing = self.finishing, []
        for g, now in finishing:
            self._finish(g, now)

    def _preempt_finishing(self, g: Group, plan: StepPlan) -> None:
        """The victim is done but its output is not applied yet (async):
        vLLM preempts it all the same (its blocks come free now, the
        preemption counts) and then finishes it when the output arrives."""
        self.preemptions += 1
        g.record.preemptions += 1
        i = next(i for i, (h, _) in enumerate(self.finishing) if h is g)
        _, now = self.finishing.pop(i)
        self._finish(g, now)
        plan.freed.extend(self._pending_freed)
        plan.finished.extend(self._pending_finished)
        self._pending_freed, self._pending_finished = [], []

    def _finish(self, g: Group, now: float) -> None:
        self._remove_running(g)
        for s in g.seqs:
            self.kv.free(s.seq_id)
            self._pending_freed.append(s.seq_id)
            self._pending_finished.append(s.seq_id)
        g.status = FINISHED
        r = g.record
        r.open_groups -= 1
        if r.open_groups == 0:
            r.finish_s = now

    def _fork(self, g: Group, parent) -> None:
        from pagesim.sim.sequence import Sequence
        child = Sequence(self.next_seq_id, parent.prompt_len, parent.output_len, None,
                         parent.generated, parent.computed)
        self.next_seq_id += 1
        self.kv.fork(parent.seq_id, child.seq_id)
        self._pending_forks.append((parent.seq_id, child.seq_id))
        g.seqs.append(child)
        self.num_running_seqs += 1  # forks happen in commit, to running groups

    def _branch(self, g: Group) -> None:
        """V0 sampling: fork the samples/beams after the prefill; beams are
        then pruned and re-forked every step by a seeded stochastic model
        (each of the ``w`` next beams picks a parent uniformly)."""
        if not g.forked:
            g.forked = True
            parent = g.seqs[0]
            for _ in range(max(g.fanout, g.beam_width) - 1):
                self._fork(g, parent)
            return
        if g.beam_width <= 1 or g.seqs[0].done:
            return
        w = len(g.seqs)
        picks = self.rng.integers(0, w, size=g.beam_width)
        counts = [0] * w
        for p in picks.tolist():
            counts[p] += 1
        survivors = []
        for s, c in zip(list(g.seqs), counts):
            if c == 0:
                self.kv.free(s.seq_id)
                self._pending_freed.append(s.seq_id)
                self._pending_finished.append(s.seq_id)
            else:
                survivors.append((s, c))
        g.seqs = [s for s, _ in survivors]
        self.num_running_seqs -= w - len(g.seqs)
        for s, c in survivors:
            for _ in range(c - 1):
                self._fork(g, s)
