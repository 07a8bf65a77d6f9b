"""Fast mode: run a stretch of pure-decode steps in one go.

Between arrivals and finishes, a batch in which every running request is
decoding, nothing can be admitted and no memory runs short evolves in a
determined way: each step appends one token to each sequence, and blocks are
taken only at block boundaries. This module computes how many such steps
follow (``k``), prices them in one vectorised call, makes exactly the
allocator calls the step-by-step engine would make, in the same order
(every block fill and every block boundary crossing, step by step,
sequence by sequence), and records per-step rows whose memory split is
extrapolated exactly between allocator events. Results equal step-by-step
mode; the tests compare the two on random traces.
"""
from __future__ import annotations

import numpy as np

from sim.plan import StepShapes


def stable_decode(sched) -> bool:
    """True when the next step is pure decode and admits, swaps and
    preempts nothing. ``sched.all_decoding`` (kept by ``commit``) says that
    every running group is one sequence in plain decode: a chunked
    prefill's last token is not a decode, its step sets the first token."""
    if not sched.all_decoding or sched.swapped or not sched.running:
        return False
    budget = sched.cfg.token_budget - sched.num_running_seqs
    if budget < 0:
        return False
    return not sched.waiting or sched.admissible(sched.waiting[0][1], budget) is None


def _event_steps(kv, seqs, c: list[int], k: int) -> list[tuple[int, int]]:
    """(step, running-order index) of every allocator call a step-by-step
    run would make that is not a plain in-place token write: crossing into a
    new block, and (for sequences whose upcoming content is known, so that
    its cache key could collide with another block's) filling a block, which
    is when it gets hashed. Sorted as the step-by-step engine meets them."""
    bs = kv.block_size
    caching = kv.enable_prefix_caching
    events = []
    for i, ci in enumerate(c):
        events.extend((j, i) for j in range((-ci) % bs, k, bs))
        if caching:
            keys = seqs[i].keys
            if keys is not None and keys.known_blocks > ci // bs:
                events.extend((j, i) for j in range((-ci - 1) % bs, k, bs))
    events.sort()
    return events


def run_stretch(sched, executor, clock: float, next_arrival: float | None, recorder) -> float | None:
    """Run ``k >= 1`` decode steps if the state is stable; return the new
    clock, or None when the next step needs the full scheduler."""
    if not stable_decode(sched):
        return None
    kv = sched.kv
    seqs = [g.seqs[0] for g in sched.running]
    n = len(seqs)
    c = [s.computed for s in seqs]
    k = min(s.output_len - s.generated for s in seqs)
    if hasattr(kv, "pool"):
        k = _memory_limit(c, k, kv.block_size, kv.pool.num_free)
        if k == 0:
            return None
    sum_ctx0 = sum(c) + n
    times, dts, k = _price(executor, n, sum_ctx0, k, clock, next_arrival)
    _apply(sched, seqs, c, k, times, dts, n, sum_ctx0, recorder)
    return float(times[k])


def _memory_limit(c: list[int], k: int, bs: int, free: int) -> int:
    """Steps (at most ``k``) whose block-boundary crossings the free blocks
    cover; the step-by-step engine would preempt at the next one."""
    total = 0
    for ci in c:
        j0 = (-ci) % bs
        if j0 < k:
            total += (k - 1 - j0) // bs + 1
    if total <= free:
        return k
    per_residue = [0] * bs
    for ci in c:
        per_residue[(-ci) % bs] += 1
    need = 0
    for j in range(k):
        need += per_residue[j % bs]
        if need > free:
            return j
    return k


#: Stretches up to this long are priced step by step with the executor's
#: scalar ``price_one`` (no numpy call overhead, and most stretches end at
#: the next arrival long before their determined length).
SCALAR_PRICING_MAX = 64


def _price(executor, n: int, sum_ctx0: int, k: int, clock: float, next_arrival):
    """Step durations and start times of up to ``k`` decode steps, cut at the
    first step that would start at or after ``next_arrival`` (the
    step-by-step engine admits it there). ``times[j]`` is step j's start;
    times come from sequential float additions either way, so they equal
    the step-by-step clock exactly."""
    price_one = getattr(executor, "price_one", None)
    if price_one is not None:
        times, dts = [clock], []
        t = clock
        for j in range(min(k, SCALAR_PRICING_MAX)):
            ctx = sum_ctx0 + j * n
            dt = price_one(n, n, ctx, float(ctx), 0, 0)
            t = t + dt
            dts.append(dt)
            times.append(t)
            if j + 1 == k or (next_arrival is not None and t >= next_arrival):
                return times, dts, j + 1
        clock = t  # a long stretch: price the rest in one vectorised call
        head_t, head_d, done = times, dts, len(dts)
    else:
        head_t, head_d, done = [clock], [], 0
    rest = executor.price(StepShapes.decode_stretch(n, sum_ctx0 + done * n, k - done))
    times = head_t + np.cumsum(np.concatenate(([clock], rest)))[1:].tolist()
    dts = head_d + rest.tolist()
    if next_arrival is not None:
        p = int(np.searchsorted(np.asarray(times[done + 1:k]), next_arrival, side="left"))
        k = min(k, done + p + 1)
    return times, dts, k


def _apply(sched, seqs, c, k, times, dts, n, sum_ctx0, recorder) -> None:
    kv, log, step0 = sched.kv, sched.log, sched.step
    pending = sched.pending_tokens()
    live0 = kv.live_tokens
    snap_steps, snaps = [-1], [kv.counters(pending)]
    if hasattr(kv, "pool"):
        cur = list(c)
        last_j = None
        for j, i in _event_steps(kv, seqs, c, k):
            if j != last_j:
                if last_j is not None:
                    snap_steps.append(last_j)
                    snaps.append(kv.counters(pending))
                if log is not None:
                    log.step = step0 + j
                last_j = j
            target = c[i] + j + 1
            if target > cur[i]:
                kv.append_slots(seqs[i].seq_id, target - cur[i])
                cur[i] = target
        if last_j is not None:
            snap_steps.append(last_j)
            snaps.append(kv.counters(pending))
        kv.write_in_place([s.seq_id for s in seqs], [ci + k - x for ci, x in zip(c, cur)])
    else:
        for s in seqs:
            kv.append_slots(s.seq_id, k)
    if recorder is not None:
        recorder.add_stretch(step0, k, n, sum_ctx0, live0, times, dts, snap_steps, snaps)
    for s in seqs:
        s.computed += k
        s.generated += k
    if log is not None:
        log.step = step0 + k - 1
    now = float(times[k])
    for g in [g for g in sched.running if g.seqs[0].done]:
        sched._finish(g, now)
    sched.step = step0 + k
    sched._pending_forks.clear()
    sched._pending_freed.clear()
    sched._pending_finished.clear()
