"""Token conservation, checked from the outside: a ledger of every step plan.

What must hold for every replay, preemptions, swaps, forks and beams
included (``TokenLedger.check``):

* every request finished or was rejected with a reason;
* a group's *attempt* runs from its admission to its end or its
  recompute-preemption (a swap keeps the attempt going). Within a sequence's
  life every step continues exactly where the last one ended (context
  before the step == context after the previous one): no token is computed
  twice or skipped. A life starts on the prefix-cache hit, or where its
  parent was when it forked;
* the final attempt of each group of a finished request computes exactly
  ``prompt - cached + samples * (output - 1)`` tokens (the last output token
  is sampled, never fed back), and exactly ``samples`` of its sequences end
  with ``prompt + output - 1`` tokens of KV, none beyond;
* the step table's ``num_tokens`` add up to those final attempts plus the
  tokens of attempts lost to recompute preemptions, counted by the ledger
  (so with no preemption, nothing is lost);
* the event log (when kept) gives back every block reference it took.

Samples per group follow the workload's definition: V0 samples and beams
(and beams under V1) fork inside one group; otherwise ``n`` groups of one.

The ledger watches plans, so it runs step by step (``needs_plans``); fast
mode is checked by comparing its step table with the ledger's counts.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pagesim.sim.event_log import KINDS
from pagesim.sim.scheduler import Scheduler


@dataclass
class Attempt:
    group: int                         # the seq id the group started with
    work: int = 0                      # tokens computed by all its sequences
    start: int | None = None           # its first sequence's context before its first step
    seqs: list = field(default_factory=list)


@dataclass
class Life:
    attempt: Attempt
    ctx: int | None = None             # tokens with KV; None until the first step
    done: bool = False


class TokenLedger:
    """Executor wrapper that checks and counts the tokens of every plan; also
    a context manager mapping each request to its groups' first sequences."""

    needs_plans = True

    def __init__(self, inner) -> None:
        self.inner = inner
        self.roots: dict[int, list[int]] = {}       # request id -> first seq of each group
        self.attempts: dict[int, list[Attempt]] = collections.defaultdict(list)  # group -> attempts
        self.lives: dict[int, Life] = {}
        self.starting: dict[int, int] = {}          # seq id -> group, for its next attempt
        self.lost = 0                                # tokens of attempts lost to preemption
        self.total = 0

    # ------------------------------------------------------ request -> seqs
    def __enter__(self):
        ledger, add = self, Scheduler.add_request

        def watched(sched, req):
            ledger.sched = sched
            first = sched.next_seq_id
            add(sched, req)
            ledger.roots[req.id] = list(range(first, sched.next_seq_id))
            ledger.starting.update((s, s) for s in ledger.roots[req.id])

        self._original = add
        Scheduler.add_request = watched
        return self

    def __exit__(self, *exc):
        Scheduler.add_request = self._original
        return False

    # -------------------------------------------------------------- plans
    def _life(self, step: int, sid: int) -> Life:
        """The sequence's current life; a new attempt of its group when it
        starts over (first admission, or after a recompute preemption)."""
        if sid in self.starting:
            attempt = Attempt(self.starting.pop(sid), seqs=[sid])
            self.attempts[attempt.group].append(attempt)
            self.lives[sid] = Life(attempt)
        assert sid in self.lives, f"step {step}: seq {sid} runs but was never admitted or forked"
        return self.lives[sid]

    def _forks(self, step, forks) -> None:
        for parent, child in forks:
            p = self.lives[parent]
            assert child not in self.lives, f"step {step}: seq {child} forked twice"
            self.lives[child] = Life(p.attempt, p.ctx)
            p.attempt.seqs.append(child)

    def execute(self, plan) -> float:
        finished = set(plan.finished)
        self._forks(plan.step, plan.forks)
        for sid in plan.freed:
            life = self.lives[sid]
            if sid in finished:
                life.done = True
                continue
            # recompute preemption: the attempt's work is lost and this
            # sequence starts the group's next attempt (its siblings, if
            # any, are dropped: finished in the same plan)
            self.lost += life.attempt.work
            del self.lives[sid]
            self.starting[sid] = life.attempt.group
        for sid, q, c in zip(plan.seq_ids, plan.query_lens, plan.context_lens):
            life = self._life(plan.step, sid)
            assert not life.done, f"step {plan.step}: seq {sid} runs after it finished"
            if life.ctx is None:
                assert c - q >= 0, f"step {plan.step}: seq {sid} starts at {c - q} tokens"
                life.attempt.start = c - q
            else:
                assert c - q == life.ctx, (f"step {plan.step}: seq {sid} continues at {c - q} "
                                           f"tokens, its KV holds {life.ctx}: tokens computed "
                                           "twice or skipped")
            life.ctx = c
            life.attempt.work += q
            self.total += q
        return self.inner.execute(plan)

    def price(self, shapes):
        return self.inner.price(shapes)

    # -------------------------------------------------------------- checks
    def check(self, result, *others) -> None:
        """Assert conservation on ``result`` (the run this ledger watched);
        ``others`` (e.g. the fast-mode run) must show the same token counts."""
        # Forks made by the last commit reach no plan (no step follows): a
        # V0 group whose samples fork on their final token ends that way.
        sched = getattr(self, "sched", None)
        if sched is not None:
            self._forks("end", sched._pending_forks)
            sched._pending_forks = []
        r = result.requests
        # A request the scheduler rejects while it waits ("does not fit in an
        # empty KV cache": e.g. Orca Pow2's buddy chunk plus the watermark is
        # the whole pool) never runs (again): its sequences are exempt.
        exempt = {s for rid in r.loc[r["rejected"].notna(), "id"] for s in self.roots.get(int(rid), [])}
        left = sorted(set(self.starting) - exempt)
        assert not left, f"seqs {left[:5]} were admitted or preempted and never ran again"
        assert (r["finish_s"].notna() ^ r["rejected"].notna()).all(), \
            "every request must end finished or rejected, not both or neither"
        cfg = result.config
        v0 = cfg.scheduler.generation == "v0"
        forking_alloc = cfg.allocator == "paged"
        final_work = 0
        for row in r.itertuples(index=False):
            roots = self.roots.get(row.id, [])  # none if rejected before the scheduler
            if isinstance(row.rejected, str):  # before the scheduler, or stuck while waiting
                assert not any(self.lives[s].done for s in roots if s in self.lives), (
                    f"rejected request {row.id} finished a sequence")
                continue
            forks = forking_alloc and (row.beam_width > 1 or (v0 and row.n > 1))
            samples = (row.beam_width if row.beam_width > 1 else row.n) if forks else 1
            assert len(roots) == (1 if forks else row.n), f"request {row.id}: {len(roots)} groups"
            target = row.prompt_tokens + row.output_tokens - 1
            # vLLM's num_cached_tokens: set at first scheduling only, so the
            # first attempt of each group; a re-admission's hits are not added
            cached = sum(self.attempts[g][0].start for g in roots if self.attempts[g])
            assert cached == row.cached_tokens, \
                f"request {row.id}: {row.cached_tokens} cached tokens reported, its groups' first " \
                f"attempts started on {cached}"
            for root in roots:
                final_work += self._check_final_attempt(row.id, root, row.prompt_tokens, target,
                                                        samples)
        assert self.total == final_work + self.lost, \
            f"{self.total} tokens computed != {final_work} finished + {self.lost} lost to preemption"
        if result.summary["preemptions"] == 0:
            assert self.lost == 0, "tokens lost without a preemption"
        for res in (result, *others):
            assert int(res.steps["num_tokens"].sum()) == self.total, \
                "the step table's num_tokens disagree with the plans' query tokens"
            assert int(res.steps["preemptions"].sum()) == res.summary["preemptions"] \
                == int(res.requests["preemptions"].sum()), "preemption counts disagree"
            if res.events is not None:
                check_block_references(res.events.to_dataframe())

    def _check_final_attempt(self, rid, root, prompt, target, samples) -> int:
        assert self.attempts[root], f"request {rid}: group of seq {root} never ran"
        attempt = self.attempts[root][-1]
        ends = [self.lives[s].ctx for s in attempt.seqs]
        assert max(ends) <= target, f"request {rid}: KV of {max(ends)} tokens > prompt + output - 1"
        assert ends.count(target) == samples, \
            f"request {rid}: {ends.count(target)} sequences completed, {samples} samples expected"
        want = prompt - attempt.start + samples * (target - prompt)
        assert attempt.work == want, (f"request {rid}: final attempt computed {attempt.work} tokens, "
                                      f"prompt - cached + samples x (output - 1) = {want}")
        return attempt.work


TAKES = {"alloc": "block", "cache_hit": "block", "fork": "block", "cow": "block",
         "swap_in": "block", "swap_out": "block"}
DROPS = {"free": "block", "cow": "src_block", "swap_out": "src_block", "swap_in": "src_block"}
CPU_SIDE = {("swap_out", "block"), ("swap_in", "src_block")}


def check_block_references(events) -> None:
    """Every block reference a sequence took (alloc, cache hit, fork, the new
    block of a copy-on-write or swap) is dropped again (free, the old block
    of a copy-on-write or swap) by the end of the run, per block and side."""
    assert set(events["kind"].astype(str)) <= set(KINDS)
    net = collections.Counter()
    for kind, col in TAKES.items():
        for b in events.loc[events["kind"] == kind, col]:
            net[("cpu" if (kind, col) in CPU_SIDE else "gpu", int(b))] += 1
    for kind, col in DROPS.items():
        for b in events.loc[events["kind"] == kind, col]:
            net[("cpu" if (kind, col) in CPU_SIDE else "gpu", int(b))] -= 1
    leaked = {k: v for k, v in net.items() if v}
    assert not leaked, f"block references not given back (side, block): {dict(list(leaked.items())[:5])}"
