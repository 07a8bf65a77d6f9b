"""Fast mode: advance the decoding batch in bulk, exactly.

When every running group is one sequence in plain decode (all members of
the scheduler's ``LazyDecodeSet``), the steps ahead are determined until the
next arrival, the next finish, or the step whose block-boundary crossings
the free blocks no longer cover. The fast engine then either

* runs a **stretch** of ``k`` such steps when nothing waiting could be
  admitted: prices them in one go and makes only the allocator calls the
  step-by-step engine would make (crossings, hashing fills of known content),
  in the same order; or
* runs a **mixed step** when the head of the queue can be admitted: the
  decodes in bulk, then the admissions through the scheduler's own code.

Per-step rows are recorded from counter snapshots with the manager's own
accounting formula. The result equals step-by-step mode bit for bit (the
tests compare both on random traces); work is proportional to events, not
to running sequences times steps.
"""
from __future__ import annotations

import numpy as np

from pagesim.sim.plan import StepPlan, StepShapes

#: Stretches up to this long are priced step by step with the executor's
#: ``decode_run`` or scalar ``price_one`` (no numpy call overhead, and most
#: stretches end at the next arrival long before their determined length).
SCALAR_PRICING_MAX = 64


def ready(sched) -> bool:
    """Every running group is a lazy decode member (or done, its blocks
    held until the next step is scheduled: async scheduling), some are
    members, and nothing is swapped."""
    n = len(sched.lazy)
    return n > 0 and n + len(sched.finishing) == len(sched.running) and not sched.swapped


def fast_step(sched, executor, clock: float, next_arrival, recorder) -> float | None:
    """A stretch or a mixed step; None when the full scheduler is needed."""
    if not ready(sched):
        return None
    lazy = sched.lazy
    n = len(lazy)
    budget = sched.cfg.token_budget - n
    if budget < 0:
        return None
    k = lazy.steps_to_first_finish()
    if lazy.paged:
        k = lazy.memory_limit(k, sched.kv.pool.num_free)
    if k == 0:
        return None
    if sched.finishing:  # released once the next step is scheduled: a single step
        return _mixed_step(sched, executor, clock, recorder, budget)
    if sched.waiting and sched.admissible(sched.waiting.head(), budget) is not None:
        return _mixed_step(sched, executor, clock, recorder, budget)
    return _stretch(sched, executor, clock, next_arrival, recorder, k)


def _decode_events(sched, j: int) -> int:
    """The allocator calls of the lazy members at step ``j``; returns the
    tokens they wrote through ``append_slots`` (already in live_tokens)."""
    lazy, kv = sched.lazy, sched.kv
    events = lazy.events_at(j)
    at = lazy.D + j
    if not lazy.num_fill or all(m.fill is None for m in events):
        # Only crossings of content nobody can share: one bulk call.
        ids, lags = [], []
        for m in events:
            ids.append(m.sid)
            lags.append(at - m.kd0)
            m.kd0 = at + 1
        kv.cross_blocks(ids, lags)
        return 0
    written = 0
    r = at % lazy.bs
    for m in events:
        lazy.materialize(m, at)
        s = m.seq
        if m.cross == r:
            kv.append_slots(s.seq_id, 1)
            written += 1
        else:  # a fill of known content: hashed at this step
            kv.write_in_place((s.seq_id,), (1,), count_live=False)
        s.computed += 1
        s.generated += 1
        m.d0 = m.kd0 = at + 1
    return written


def _stretch(sched, executor, clock, next_arrival, recorder, k) -> float:
    lazy, kv, log, step0 = sched.lazy, sched.kv, sched.log, sched.step
    n = len(lazy)
    sum_ctx0 = lazy.sum_computed + n
    times, dts, k = _price(executor, n, sum_ctx0, k, clock, next_arrival)
    pending = sched.pending_tokens()
    live0 = kv.live_tokens
    snap_steps, snaps = [-1], [kv.counters(pending)]
    written = 0
    if lazy.paged:
        buckets, bs, r0 = lazy.buckets, lazy.bs, lazy.D % lazy.bs
        for j in range(k):
            if buckets[(r0 + j) % bs]:
                if log is not None:
                    log.step = step0 + j
                written += _decode_events(sched, j)
                snap_steps.append(j)
                snaps.append(kv.counters(pending))
    kv.live_tokens += n * k - written
    if recorder is not None:
        recorder.add_stretch(step0, k, n, sum_ctx0, live0, times, dts, snap_steps, snaps)
    lazy.D += k
    if log is not None:
        log.step = step0 + k - 1
    _finish_members(sched, float(times[k]))
    sched.step = step0 + k
    sched._pending_forks.clear()
    sched._pending_freed.clear()
    sched._pending_finished.clear()
    return float(times[k])


def _finish_members(sched, now: float) -> None:
    lazy = sched.lazy
    done = []
    for m in lazy.finished_by(lazy.D):
        lazy.remove(m.sid)
        done.append(m.group)
    sched.end_groups(done, now)


def _mixed_step(sched, executor, clock, recorder, budget) -> float:
    """One step: the lazy members decode in bulk (they come first in the
    step-by-step order: running groups before admissions), then the
    scheduler admits from the queue (possibly no one), then the groups
    finished at the last step release their blocks (async scheduling)."""
    lazy, kv = sched.lazy, sched.kv
    n = len(lazy)
    plan = StepPlan(step=sched.step, bulk_decode_seqs=n, bulk_decode_ctx=lazy.sum_computed + n)
    if sched.log is not None:
        sched.log.step = sched.step
    sched._scheduled = []
    written = _decode_events(sched, 0) if lazy.paged else 0
    kv.live_tokens += n - written
    sched._schedule_waiting(plan, budget)
    if sched.finishing:  # the previous step's output is applied after this one is scheduled
        sched.apply_finishes()
    counters = kv.counters(sched.pending_tokens())
    dt = executor.execute(plan)
    end = clock + dt
    if recorder is not None:
        n_seq, n_tok, kv_read, _, n_pre, _, _ = plan.shape_numbers()
        recorder.add(plan.step, clock, dt, (n_seq, n_tok, n_pre, kv_read), 0, kv.live_tokens, counters)
    lazy.D += 1
    admitted = [g for g, _ in sched._scheduled]
    sched.commit(end, before_finish=lambda: _finish_members(sched, end))
    sched.adopt_decoders(admitted)
    return end


def _price(executor, n: int, sum_ctx0: int, k: int, clock: float, next_arrival):
    """Step durations and start times of up to ``k`` decode steps, cut at the
    first step that would start at or after ``next_arrival`` (the
    step-by-step engine admits it there). ``times[j]`` is step j's start;
    times come from sequential float additions either way, so they equal
    the step-by-step clock exactly."""
    decode_run = getattr(executor, "decode_run", None)
    price_one = getattr(executor, "price_one", None)
    head = min(k, SCALAR_PRICING_MAX)
    if decode_run is not None:
        times, dts, done = decode_run(n, sum_ctx0, head, clock, next_arrival)
    elif price_one is not None:
        times, dts, done = _price_scalar(price_one, n, sum_ctx0, head, clock, next_arrival)
    else:
        times, dts, done = [clock], [], 0
    if done == k or (done and next_arrival is not None and times[-1] >= next_arrival):
        return times, dts, done  # ended at the stretch's end or at the next arrival
    head_t, head_d, clock = times, dts, times[-1]
    rest = executor.price(StepShapes.decode_stretch(n, sum_ctx0 + done * n, k - done))
    times = head_t + np.cumsum(np.concatenate(([clock], rest)))[1:].tolist()
    dts = head_d + rest.tolist()
    if next_arrival is not None:
        p = int(np.searchsorted(np.asarray(times[done + 1:k]), next_arrival, side="left"))
        k = min(k, done + p + 1)
    return times, dts, k


def _price_scalar(price_one, n, sum_ctx0, k, clock, next_arrival):
    """``decode_run`` through a model's generic ``price_one``."""
    times, dts = [clock], []
    t = clock
    for j in range(k):
        ctx = sum_ctx0 + j * n
        dt = price_one(n, n, ctx, float(ctx), 0, 0)
        t = t + dt
        dts.append(dt)
        times.append(t)
        if next_arrival is not None and t >= next_arrival:
            return times, dts, j + 1
    return times, dts, k
