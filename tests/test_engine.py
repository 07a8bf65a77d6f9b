"""The engine and scheduler: exact small scenarios, SimPy-style logs."""
import pytest

from pagesim.sim.executor import CostModelExecutor
from pagesim.sim.plan import DecodeStretch
from pagesim.replay import build, replace, run_replay
from tests.simhelpers import LinearCost, config, trace_of


def run_logged(trace, cfg):
    """Replay, returning [(step, start time, {seq: query tokens})] too."""
    log = []
    engine, sched, kv, rec = build(trace, cfg, CostModelExecutor(LinearCost()))
    engine.on_step = lambda plan, start, dt: log.append(
        (plan.step, start, dict(zip(plan.seq_ids, plan.query_lens))))
    engine.run()
    return log, sched, engine


def test_two_requests_exact_log():
    trace = trace_of((0.0, 6, 3), (0.5, 4, 2))
    cfg = replace(config(), fast=False)
    log, sched, engine = run_logged(trace, cfg)
    # step 0: A's prompt (6 tokens, 1.75 s); B arrived at 0.5, joins step 1
    assert log == [(0, 0.0, {0: 6}), (1, 1.75, {0: 1, 1: 4}), (2, 3.375, {0: 1, 1: 1})]
    assert engine.clock == 4.625
    a, b = sched.records
    assert (a.first_token_s, a.finish_s) == (1.75, 4.625)
    assert (b.first_token_s, b.finish_s) == (3.375, 4.625)
    rows = sched.log.rows()
    assert [r for r in rows if r[2] == "alloc"] == [
        (0, 0, "alloc", 0, None), (0, 0, "alloc", 1, None),
        (1, 1, "alloc", 2, None), (2, 1, "alloc", 3, None)]
    assert [(r[0], r[1], r[3]) for r in rows if r[2] == "free"] == [
        (2, 0, 1), (2, 0, 0), (2, 1, 3), (2, 1, 2)]


def test_recompute_preemption_latest_arrival_first():
    # 3 blocks of 4: A (8 + 4) and B (3 + 4) both start; A's first decode
    # needs a third block while B holds it: B, the latest arrival, is preempted.
    trace = trace_of((0.0, 8, 4), (0.0, 3, 4))
    cfg = replace(config(num_blocks=3), fast=False)
    log, sched, _ = run_logged(trace, cfg)
    assert log[0] == (0, 0.0, {0: 8, 1: 3})
    assert log[1][2] == {0: 1}
    assert sched.preemptions == 1 and sched.records[1].preemptions == 1
    # After A finishes B recomputes its prompt plus the token it had sampled.
    resumed = [entry for entry in log if 1 in entry[2]]
    assert resumed[1][2] == {1: 4}
    assert all(r.finish_s is not None for r in sched.records)


def test_swap_preemption_keeps_progress():
    trace = trace_of((0.0, 8, 4), (0.0, 3, 4))
    cfg = replace(config(num_blocks=3, generation="v0", preemption="swap"), num_cpu_blocks=8, fast=False)
    log, sched, _ = run_logged(trace, cfg)
    kinds = [r[2] for r in sched.log.rows()]
    assert "swap_out" in kinds and "swap_in" in kinds
    # B never recomputes: after its prompt, it only ever decodes one token.
    assert [e[2][1] for e in log if 1 in e[2]] == [3, 1, 1, 1]


def test_parallel_sampling_v0_forks_and_copies_on_write():
    trace = trace_of({"arrival_s": 0.0, "prompt_tokens": 6, "output_tokens": 3, "n": 3})
    cfg = replace(config(generation="v0"), fast=False)
    log, sched, _ = run_logged(trace, cfg)
    kinds = [r[2] for r in sched.log.rows()]
    assert kinds.count("fork") == 2 * 2      # two children share the prompt's two blocks
    assert kinds.count("cow") == 2           # the partial last block is copied twice
    assert log[1][2] == {0: 1, 1: 1, 2: 1}


def test_parallel_sampling_v1_shares_prompt_through_prefix_cache():
    trace = trace_of({"arrival_s": 0.0, "prompt_tokens": 9, "output_tokens": 2, "n": 3})
    cfg = replace(config(caching=True), fast=False)
    res = run_replay(trace, cfg, executor=CostModelExecutor(LinearCost()))
    assert res.requests.loc[0, "cached_tokens"] == 2 * 8
    assert res.summary["prefix_cache"]["hit_rate_tokens"] == pytest.approx(16 / 27)


def test_beam_search_forks_prunes_and_finishes():
    trace = trace_of({"arrival_s": 0.0, "prompt_tokens": 5, "output_tokens": 12, "beam_width": 4})
    cfg = replace(config(num_blocks=64, generation="v0"), fast=False)
    log, sched, _ = run_logged(trace, cfg)
    kinds = [r[2] for r in sched.log.rows()]
    assert kinds.count("cow") > 3 and kinds.count("free") > kinds.count("alloc") / 2
    assert all(len(e[2]) == 4 for e in log[1:])
    assert sched.records[0].finish_s is not None


def test_request_that_can_never_fit_is_rejected_not_retried():
    trace = trace_of((0.0, 100, 10), (0.0, 4, 2))
    res = run_replay(trace, config(num_blocks=8), executor=CostModelExecutor(LinearCost()))
    assert res.requests["rejected"].tolist()[0].startswith("needs 28 KV blocks")
    assert res.summary["requests"] == {"total": 2, "finished": 1, "rejected": 1, "truncated": 0}


def test_chunked_prefill_splits_prompt_within_budget():
    trace = trace_of((0.0, 10, 2))
    cfg = replace(config(max_num_batched_tokens=4), fast=False)
    log, _, _ = run_logged(trace, cfg)
    assert [e[2] for e in log] == [{0: 4}, {0: 4}, {0: 2}, {0: 1}]


def test_without_chunked_prefill_the_prompt_runs_whole():
    trace = trace_of((0.0, 10, 2), (0.0, 3, 2))
    cfg = replace(config(max_num_batched_tokens=12, max_model_len=12, chunked_prefill=False), fast=False)
    log, _, _ = run_logged(trace, cfg)
    assert log[0][2] == {0: 10}           # B (3 tokens) would overflow the budget
    assert log[1][2] == {0: 1, 1: 3}


def test_run_replay_leaves_the_cyclic_gc_alone_unless_asked():
    import gc

    from pagesim.sim.engine import engine as engine_module
    seen = []

    class Spy(CostModelExecutor):
        def execute(self, plan):
            seen.append(gc.isenabled())
            return super().execute(plan)

    calls = []
    real = engine_module.cyclic_gc_paused

    def counting():
        calls.append(1)
        return real()
    engine_module.cyclic_gc_paused = counting
    try:
        trace, cfg = trace_of((0, 5, 3)), replace(config(), fast=False)
        run_replay(trace, cfg, executor=Spy(LinearCost()))
        assert seen and all(seen) and not calls, "a library call changed process-wide GC state"
        seen.clear()
        run_replay(trace, cfg, executor=Spy(LinearCost()), pause_gc=True)
        assert seen and not any(seen) and calls == [1]
    finally:
        engine_module.cyclic_gc_paused = real
    assert gc.isenabled()


def test_the_cyclic_gc_is_paused_during_a_run_and_restored_after():
    import gc

    from pagesim.sim.engine import cyclic_gc_paused
    seen = []
    engine, *_ = build(trace_of((0, 5, 3)), config(), CostModelExecutor(LinearCost()))
    engine.on_step = lambda plan, start, dt: seen.append(gc.isenabled())
    engine.pause_gc = True
    engine.run()
    assert seen and not any(seen), "the collector ran during the replay"
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled(), "a collector the caller had disabled was turned on"
    finally:
        gc.enable()
    with pytest.raises(RuntimeError):
        with cyclic_gc_paused():
            raise RuntimeError("boom")
    assert gc.isenabled(), "an error inside left the collector off"
    # a reference cycle made during a run is still collected afterwards
    import weakref

    class Node:
        pass
    with cyclic_gc_paused():
        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = weakref.ref(a)
        del a, b
    gc.collect()
    assert probe() is None, "garbage made while the collector was paused was never collected"


def expanded_steps(trace, cfg, **kw):
    """Every step an ``on_step`` hook reports, as plain tuples (explicit
    plans as they are, decode stretches expanded with ``plans()``), and the
    kinds of records seen."""
    out, kinds = [], []

    def hook(record, start, dt):
        if isinstance(record, DecodeStretch):
            assert len(start) == len(dt) == record.num_steps
            kinds.append("mixed" if record.admitted is not None else "stretch")
            plans = list(record.plans())
        else:
            kinds.append("plan")
            plans, start, dt = [record], [start], [dt]
        for p, t, d in zip(plans, start, dt):
            out.append((p.step, p.seq_ids, p.query_lens, p.context_lens, p.cow, p.swap_in,
                        p.swap_out, p.forks, sorted(p.freed), sorted(p.finished), t, d))
    engine, *_ = build(trace, cfg, CostModelExecutor(LinearCost()))
    engine.on_step = hook
    engine.run()
    return out, kinds


@pytest.mark.parametrize("caching", [False, True])
def test_hooks_see_every_step_in_both_modes(caching):
    # Staggered arrivals and long outputs: fast mode runs pure stretches and
    # mixed steps, which the hook must report as the same steps.
    rows = [(0.0, 6, 40), (0.0, 9, 25), (3.0, 5, 30), (9.5, 17, 12), (30.0, 3, 20)]
    cfg = config(num_blocks=40, block_size=4, caching=caching)
    fast, kinds = expanded_steps(trace_of(*rows), cfg)
    slow, slow_kinds = expanded_steps(trace_of(*rows), replace(cfg, fast=False))
    assert "stretch" in kinds and "mixed" in kinds and set(slow_kinds) == {"plan"}
    assert [s[0] for s in slow] == list(range(len(slow)))
    assert fast == slow


def test_check_invariants_runs_every_n_steps_in_both_modes(monkeypatch):
    import pagesim.sim.engine.engine as engine_mod
    from pagesim.sim.invariants import check_scheduler
    seen = []

    def spy(sched):
        check_scheduler(sched)
        seen.append(sched.step)
    monkeypatch.setattr(engine_mod, "check_scheduler", spy)
    rows = [(0.0, 6, 40), (0.0, 9, 25), (3.0, 5, 30), (9.5, 17, 12)]
    for fast in (True, False):
        seen.clear()
        bounds = []
        engine, *_ = build(trace_of(*rows), replace(config(num_blocks=30), fast=fast, check_invariants=7),
                           CostModelExecutor(LinearCost()))
        engine.on_step = lambda r, start, dt: bounds.append(
            r.step + (r.num_steps if isinstance(r, DecodeStretch) else 1))
        engine.run()
        # at the first step boundary at or after each multiple of 7
        expected = sorted({min(b for b in bounds if b >= m) for m in range(7, bounds[-1] + 1, 7)})
        assert seen == expected and len(seen) >= 3
        if not fast:
            assert seen == list(range(7, bounds[-1] + 1, 7))


def test_cli_check_invariants_runs_the_checks_in_both_modes(monkeypatch, capsys):
    import pagesim.sim.engine.engine as engine_mod
    from pagesim.cli import main
    from pagesim.sim.invariants import check_scheduler
    calls = []

    def spy(sched):
        check_scheduler(sched)
        calls.append(sched.step)
    monkeypatch.setattr(engine_mod, "check_scheduler", spy)
    args = ["replay", "--workload", "sharegpt", "--num-requests", "40", "--num-gpu-blocks", "80",
            "--quiet", "--check-invariants", "25"]
    assert main(args) == 0
    fast = list(calls)
    calls.clear()
    assert main(args + ["--step-by-step"]) == 0
    assert fast and calls and calls == list(range(25, calls[-1] + 1, 25))
    assert main(args[:-1] + ["-1"]) == 2
    assert "invariants" in capsys.readouterr().err  # the option is named


def test_summary_names_what_priced_the_steps():
    """summary.json's cost_model: the cost model behind a CostModelExecutor
    (a user's own by class name), and "executor" for one that runs steps,
    even when that executor has a ``model`` of its own (the GPU executor's
    is the network it runs, not a price list)."""
    from pagesim.sim.executor import ReplayedExecutor

    trace = trace_of((0.0, 6, 3))
    res = run_replay(trace, config(), executor=CostModelExecutor(LinearCost()))
    assert res.summary["cost_model"] == {"kind": "custom", "name": "LinearCost"}
    steps = len(res.steps)

    class RunsANetwork(ReplayedExecutor):
        model = object()  # like GPUExecutor.model: what it runs

    res = run_replay(trace, replace(config(), fast=False), executor=RunsANetwork([0.5] * steps))
    assert res.summary["cost_model"] == {"kind": "executor", "name": "RunsANetwork"}
