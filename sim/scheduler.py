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
recompute. Parts of the scheduler live beside it as mixins, one concern a
file: preemption and swap-in (``sim/preemption.py``), fast mode's decode
stretches (``sim/decode_stretches.py``), async output (``sim/async_output.py``)
and groups waiting on a transfer (``sim/held.py``).

Fast mode (``fast = True``): the scheduler owns a ``LazyDecodeSet``
(``sim/lazy_decode.py``) of the running groups that are one sequence in plain
decode. When it holds every running group and nothing is swapped, the steps
ahead are determined and ``schedule`` returns a ``DecodeStretch``: a pure
stretch (nothing waiting can be admitted; the engine cuts it at the next
arrival, ``commit`` makes the allocator calls step-by-step mode would make,
in the same order) or a mixed step (the set decodes in bulk as this step's
running phase, then the usual swapped and waiting phases). Results equal
step-by-step mode bit for bit; work is proportional to events.
"""
from __future__ import annotations

import heapq

from pagesim.sim.async_output import AsyncOutput
from pagesim.sim.branching import apply_branch
from pagesim.sim.config import SchedulerConfig
from pagesim.sim.decode_stretches import DecodeStretches
from pagesim.sim.held import HeldGroups
from pagesim.sim.kv_protocol import KVCacheManager
from pagesim.sim.lazy_decode import LazyDecodeSet
from pagesim.sim.offload import LoadsFromTier
from pagesim.sim.plan import DecodeStretch, StepPlan
from pagesim.sim.preemption import Preemption
from pagesim.sim.policies import order_policy, victim_policy
from pagesim.sim.running import RunningList
from pagesim.sim.sequence import FINISHED, FINISHING, REJECTED, RUNNING, Group
from pagesim.sim.waiting_queue import WaitingQueue
from pagesim.sim.workload import admit_request


class Scheduler(Preemption, DecodeStretches, AsyncOutput, HeldGroups):
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, *, rng, event_log=None) -> None:
        self.cfg = config
        self.token_budget = config.token_budget  # tokens one step may compute (cfg is frozen)
        self.kv = kv
        self.rng = rng
        self.log = event_log
        #: The order policy's key: waiting queue, running list and swapped
        #: groups are all kept in this order (``sim/policies.py``).
        self.key = order_policy(config.order).key
        self.victim = victim_policy(config.victim)
        self.waiting = WaitingQueue()       # groups by key, smallest first
        self.running = RunningList()        # keep order: first = kept longest
        self.lazy = LazyDecodeSet(kv)       # plain decoders advanced in bulk (fast mode)
        self.fast = False                   # offer decode stretches (set by the engine)
        self.plan_tables = kv.caps.paged    # block tables in plans (executors on real tensors)
        self.stretch_detail = False         # seq ids in stretches (engine hooks; O(batch))
        self.swapped: list[tuple] = []      # heap of (key, group)
        self.records = []
        #: Prompt + output tokens of the requests added and not finished or
        #: rejected yet (a router's measure of outstanding work).
        self.open_tokens = 0
        #: Per-request scheduling events ``(step, request id, kind, queried
        #: tokens, cached tokens)`` with kind admit / readmit / preempt /
        #: swap_out / swap_in (the token counts are the prefix-cache lookup of
        #: an admission: see ``_count_lookup``); None: not kept.
        self.request_events: list[tuple[int, int, str, int, int]] | None = None
        self.step = 0
        self.preemptions = 0
        #: vLLM's prefix-cache counters in tokens (``_count_lookup``).
        self.prefix_cache_queries = self.prefix_cache_hits = self.prefix_cache_cpu_hits = 0
        self.preempted_queries = self.preempted_hits = 0
        self.next_seq_id = 0
        self.next_gid = 0
        self.behaviour = config.behaviour   # the vLLM profile's behaviours (sim/vllm_profile.py)
        # a fraction of all blocks, the null block included (vLLM)
        self.watermark_blocks = int(self.behaviour.watermark * kv.num_blocks)
        #: Groups done at the last commit that keep their blocks until the
        #: next step is scheduled (async scheduling), with their finish time.
        self.finishing: list[tuple[Group, float]] = []
        self._scheduled: list[tuple[Group, int]] = []   # (group, query tokens) of this step
        # forks, frees and finishes since the last step, for the next record
        self._pending_forks, self._pending_freed, self._pending_finished = [], [], []
        #: Block transfers overlap compute (PCIe links on; set by the engine):
        #: groups waiting on them are held (``sim/held.py``).
        self.async_transfers = False
        self.tier = kv if isinstance(kv, LoadsFromTier) else None
        self.init_held()

    # --------------------------------------------------------------- requests
    def add_request(self, req) -> None:
        """Turn a trace request into groups, or reject it with a reason."""
        record, groups = admit_request(self, req)
        self.records.append(record)
        if groups:
            self.open_tokens += req.prompt_tokens + req.output_tokens
        for g in groups:
            self.waiting.push(self.key(g), g)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def live_tokens(self) -> int:
        """Live token slots for accounting: the manager's count plus the
        tokens decoded in bulk and not written to it yet (fast mode)."""
        return self.kv.live_tokens + self.lazy.unwritten

    # --------------------------------------------------------------- schedule
    def schedule(self) -> StepPlan | DecodeStretch:
        """The next step, for ``commit`` once it ran: a ``StepPlan``, or in
        fast mode a ``DecodeStretch`` (a pure stretch, or a mixed step whose
        running phase is the lazy set's bulk decode).

        Under async scheduling the groups that finished at the last commit
        keep their blocks while this step is scheduled and release them
        right after. If nothing could be scheduled, vLLM runs no model step:
        it processes that output and schedules again."""
        out = self._schedule_step()
        if self.finishing:
            self.apply_finishes()
            if type(out) is StepPlan and not out.seq_ids:
                self._pending_forks[:0] = out.forks
                self._pending_freed[:0] = out.freed
                self._pending_finished[:0] = out.finished
                out = self._schedule_step()
        return out

    def _schedule_step(self) -> StepPlan | DecodeStretch:
        stretch = self._stretch_ahead() if self.fast else None
        if stretch is None:
            self.lazy.materialize_all()
        elif not self.finishing and not self._head_admissible(self.token_budget - stretch.num_seqs):
            # a pure stretch: nothing waiting can join it
            if self._pending_freed or self._pending_forks:  # (finished ones are freed too)
                stretch.forks, stretch.freed, stretch.finished = self._take_pending()
            stretch.live_tokens0 = self.live_tokens()
            return stretch
        forks, freed, finished = self._take_pending()
        plan = StepPlan(step=self.step, forks=forks, freed=freed, finished=finished)
        if self.log is not None:
            self.log.step = self.step
        self._scheduled = []
        budget = self.token_budget
        preempted_before = self.preemptions
        if stretch is not None:
            budget -= self._reserve_decoders()
        else:
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
        if stretch is not None:
            stretch.num_steps, stretch.admitted = 1, plan
            return stretch
        return plan

    def _head_admissible(self, budget: int) -> bool:
        """Whether the head of the queue could start within ``budget``."""
        return bool(self.waiting) and self.admissible(self.waiting.head(), budget) is not None

    def _take_pending(self) -> tuple[list, list, list]:
        """Forks, frees and finishes since the last step (for its record)."""
        out = self._pending_forks, self._pending_freed, self._pending_finished
        self._pending_forks, self._pending_freed, self._pending_finished = [], [], []
        return out

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
        held = self.held
        while i < len(running):
            g = running[i]
            if finishing and g.status == FINISHING:  # done; its output is not applied yet
                i += 1
                continue
            if held and g.gid in held:
                left = self._resume_held(plan, g, i, budget)
                if left is None:
                    continue  # g itself was preempted and left the running list
                budget = left
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

    def _note(self, g: Group, kind: str, queried: int = 0, cached: int = 0) -> None:
        if self.request_events is not None:
            self.request_events.append((self.step, g.record.id, kind, queried, cached))

    def _count_lookup(self, g: Group, known: int, cached: int, loaded: int = 0) -> None:
        """The prefix-cache lookup of an admission, as vLLM counts it
        (``PrefixCacheStats.record``): a first admission adds its known
        tokens to ``prefix_cache_queries`` and its GPU hits to
        ``prefix_cache_hits`` (the ``loaded`` tokens found in the CPU offload
        tier go to ``prefix_cache_cpu_hits``, as vLLM keeps a connector's
        hits apart) and sets the request's ``cached_tokens`` (vLLM's
        ``num_cached_tokens``: both tiers, set at first scheduling only); a
        re-admission after a preemption (event kind ``readmit``) goes to the
        ``preempted_*`` counters instead. With prefix caching off nothing is
        looked up."""
        queried = known if self.kv.caps.prefix_caching else 0
        gpu = cached - loaded
        if g.preempted:
            self.preempted_queries += queried
            self.preempted_hits += gpu
            self._note(g, "readmit", queried, gpu)
            return
        self.prefix_cache_queries += queried
        self.prefix_cache_hits += gpu
        self.prefix_cache_cpu_hits += loaded
        g.record.cached_tokens += cached
        self._note(g, "admit", queried, gpu)

    def admission_watermark(self) -> int:
        """Blocks to keep free when admitting: vLLM 0.33 keeps them only
        while something runs (an idle engine admits into an empty cache)."""
        if self.behaviour.watermark_only_while_running and not self.running:
            return 0
        return self.watermark_blocks

    def admissible(self, g: Group, budget: int) -> tuple[int, int] | None:
        """(cached tokens, query tokens) if waiting group ``g`` can start now."""
        kv, cfg = self.kv, self.cfg
        if budget <= 0 or self.running.num_seqs + max(g.fanout, g.beam_width) > cfg.max_num_seqs:
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
            loaded = self.tier.blocks_loading(s.seq_id) * kv.block_size if self.tier is not None else 0
            self._count_lookup(g, s.known, cached, loaded)
            self.running.insert_group(g, self.key(g))
            g.status = RUNNING
            if self.async_transfers and self._wait_for_blocks(g, cached, q):
                continue  # its prefix is still arriving (q's slots are taken)
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
        r = g.record
        r.rejected = "does not fit in an empty KV cache"
        r.open_groups -= 1
        if r.open_groups == 0:
            self.open_tokens -= r.prompt_tokens + r.output_tokens

    def _add_to_plan(self, plan: StepPlan, g: Group, q: int) -> None:
        tables = self.kv.block_table if self.plan_tables else None
        for s in g.seqs:
            plan.seq_ids.append(s.seq_id)
            plan.query_lens.append(q)
            plan.context_lens.append(s.computed + q)
            if tables is not None:
                plan.block_tables.append(tables(s.seq_id))
        self._scheduled.append((g, q))

    # ----------------------------------------------------------------- commit
    def commit(self, outcome: StepPlan | DecodeStretch, now: float) -> None:
        """Apply the outcome of what ``schedule`` returned, ending at ``now``.

        A step's tokens (and V0 forks) are applied first, then finished
        groups are freed in scheduling order (in a mixed step the bulk
        decoders come first in that order). A pure stretch must have been
        cut to the steps that ran."""
        if type(outcome) is DecodeStretch and outcome.admitted is None:
            self._commit_stretch(outcome, now)
            return
        mixed = type(outcome) is DecodeStretch
        finished = []
        for g, q in self._scheduled:
            if g.status != RUNNING:
                continue
            sampled = g.advance(q)
            if sampled and g.record.first_token_s is None:
                g.record.first_token_s = now
            if sampled and (g.fanout > 1 or g.beam_width > 1):
                self._branch(g)
            if all(s.done for s in g.seqs):
                finished.append(g)
        if mixed:
            self._finish_members(now)
        self.end_groups(finished, now)
        scheduled, self._scheduled = self._scheduled, []
        self.step += 1
        if self.fast:
            groups = [g for g, _ in scheduled] if mixed else self.running
            if self.held:  # a group waiting on a transfer does not decode yet
                groups = [g for g in groups if g.gid not in self.held]
            self.lazy.adopt(groups, self.key)

    def _finish(self, g: Group, now: float) -> None:
        self.running.remove_group(g, self.key(g))
        for s in g.seqs:
            self.kv.free(s.seq_id)
            self._pending_freed.append(s.seq_id)
            self._pending_finished.append(s.seq_id)
        g.status = FINISHED
        r = g.record
        r.open_groups -= 1
        if r.open_groups == 0:
            r.finish_s = now
            self.open_tokens -= r.prompt_tokens + r.output_tokens

    def _branch(self, g: Group) -> None:
        """V0 sampling: fork, prune and re-fork as ``sim/branching.py`` decides."""
        forks, dropped, self.next_seq_id = apply_branch(g, self.kv, self.rng, self.next_seq_id)
        if self.log is not None:   # the sequence map: whose request each child serves
            for parent, child in forks:
                self.log.add_sequence(child, g.record.id, g.gid, parent)
        self._pending_forks += forks
        self._pending_freed += dropped
        self._pending_finished += dropped
        self.running.num_seqs += len(forks) - len(dropped)  # branching happens to running groups
