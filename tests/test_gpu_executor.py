"""The GPU executor: the simulator's allocator and scheduler on real KV tensors.

On a machine without CUDA every kernel runs under Triton's CPU interpreter
(fp32, the ``tiny`` preset, traces of a few requests) with the shadow
checking every step: paged attention against a dense float32 reference,
copy-on-write copies, swap round trips, prefix-cache hits. Planted bugs
show that each check can fail. With CUDA the last tests replay at
llama-3-8b sizes in bf16 (marked ``gpu``).
"""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from pagesim.gpu.kernels import _env  # noqa: E402,F401  sets TRITON_INTERPRET before triton loads

pytest.importorskip("triton")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pagesim.gpu.executor import GPUExecutor, executor_for_replay  # noqa: E402
from pagesim.gpu.tokens import TokenBook, synth_tokens  # noqa: E402
from pagesim.sim.executor import CostModelExecutor  # noqa: E402
from pagesim.replay import replace, run_replay  # noqa: E402
from tests.simhelpers import LinearCost, config, trace_of  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.triton


def tiny(cfg, **kw):
    return replace(cfg, model="tiny", **kw)


def six_requests(**kw):
    """Prompts 3-20 tokens, outputs 2-8, staggered arrivals."""
    return trace_of((0.0, 5, 3), (0.0, 12, 4), (0.1, 20, 2), (0.2, 3, 8), (1.0, 9, 5),
                    (1.5, 16, 6), **kw)


def shared_prefix_requests():
    """Two waves of requests whose prompts share 8 token ids, so that later
    ones hit blocks that earlier ones filled (and freed)."""
    ids = tuple(range(100, 108))
    rows = [(0.0, ids + (1, 2, 3), 9), (0.0, ids + (4, 5), 8), (40.0, ids + (6, 7, 8, 9), 3),
            (40.0, ids + (1, 2, 3), 2)]
    return trace_of(*[dict(arrival_s=a, prompt_tokens=len(p), output_tokens=o, prompt_token_ids=p)
                      for a, p, o in rows])


class PlanRecorder:
    """Forwards to an executor and keeps a deep copy of every plan it ran."""

    needs_plans = True

    def __init__(self, inner) -> None:
        self.inner, self.plans = inner, []

    def execute(self, plan):
        self.plans.append(copy.deepcopy(plan))
        return self.inner.execute(plan)

    def price(self, shapes):
        return self.inner.price(shapes)


def checked_executor(cfg, **kw):
    """The executor of the tiny traces, in fp32 on every device: Triton
    multiplies fp32 exactly ("ieee"), so the dense float32 reference holds
    it to 1e-4 on a GPU as under the interpreter (the executor's default on
    a GPU is bf16, 2e-2; ``test_real_sizes_bf16_on_gpu`` runs that)."""
    kw.setdefault("dtype", torch.float32)
    return executor_for_replay(cfg, **kw)


def replay_checked(trace, cfg, **kw):
    """Replay with every step checked. Step times come from ``LinearCost``
    (the kernels still run and are timed): measured times would make which
    arrivals join which step depend on the machine's load."""
    kw.setdefault("time_from", LinearCost())
    ex = checked_executor(cfg, check_every=1, **kw)
    rec = PlanRecorder(ex)
    result = run_replay(trace, cfg, executor=rec)
    df = ex.records_frame()
    assert len(df) == result.summary["sim"]["steps"]
    assert df["checked"].all() and (df["max_rel_err"] <= 1e-4).all(), df
    return result, ex, rec.plans


# ----------------------------------------------------------- tokens, no kernels
def test_tokens_deterministic_forked_and_kept_across_recompute():
    a = synth_tokens(3, 0, 50, 256, seed=1)
    assert np.array_equal(a, synth_tokens(3, 0, 50, 256, seed=1))
    assert not np.array_equal(a, synth_tokens(4, 0, 50, 256, seed=1))
    assert a.min() >= 0 and a.max() < 256
    book = TokenBook(8, 0, 4, 256, seed=1)
    assert np.array_equal(book.take(0, 3, [0, 1], 0, 6), a[:6])
    book.fork(3, 9)
    child = book.take(1, 9, [0, 2], 6, 7)
    assert book.tokens[9][:6] == book.tokens[3][:6] and child[0] == synth_tokens(9, 6, 7, 256, 1)[0]
    book.free(3, finished=False)   # recompute: the same tokens come back
    assert np.array_equal(book.take(2, 3, [0, 1], 0, 6), a[:6])
    with pytest.raises(AssertionError, match="resumes at token 5"):
        book.take(3, 3, [0, 1], 5, 6)


# ------------------------------------------------------------------ (a) replay
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_tiny_trace_every_step_matches_dense_reference(block_size):
    cfg = tiny(config(num_blocks=128 // block_size + 2, block_size=block_size))
    result, ex, plans = replay_checked(six_requests(), cfg)
    assert result.summary["requests"]["finished"] == 6
    df = ex.records_frame()
    assert df["num_prefill_seqs"].sum() >= 6 and (df["num_prefill_seqs"] == 0).any()
    assert df["measured_s"].gt(0).all()


def test_attention_only_mode():
    cfg = tiny(config(num_blocks=40, block_size=4))
    _, ex, _ = replay_checked(six_requests(), cfg, mode="attention")
    assert ex.model.mode == "attention"


# -------------------------------------------- (b) identical allocator decisions
@pytest.mark.parametrize("kind", ["recompute+prefix", "v0-swap"])
def test_same_decisions_as_simulated_replay(kind):
    if kind == "recompute+prefix":
        trace, cfg = shared_prefix_requests(), tiny(config(num_blocks=7, block_size=4, caching=True))
    else:
        trace = trace_of((0.0, 9, 5), (0.0, 7, 5), (0.3, 5, 4), n=2)
        cfg = tiny(config(num_blocks=9, block_size=4, generation="v0", preemption="swap"),
                   num_cpu_blocks=16)
    sim = PlanRecorder(CostModelExecutor(LinearCost()))
    want = run_replay(trace, cfg, executor=sim)
    fast = run_replay(trace, cfg, executor=CostModelExecutor(LinearCost()))
    got, ex, plans = replay_checked(trace, cfg, time_from=LinearCost())
    assert want.summary["preemptions"] > 0
    assert plans == sim.plans
    pd.testing.assert_frame_equal(got.events.to_dataframe(), want.events.to_dataframe())
    pd.testing.assert_frame_equal(got.requests, want.requests)
    pd.testing.assert_frame_equal(got.requests, fast.requests)
    pd.testing.assert_frame_equal(got.steps, want.steps)


# ------------------------------------------------------ (c) fork, copy-on-write
def fork_runs():
    return [
        ("samples", trace_of((0.0, 6, 4), (0.0, 9, 3), n=3), config(num_blocks=32, block_size=4, generation="v0")),
        ("beams", trace_of((0.0, 6, 5), (0.0, 9, 4), beam_width=3), config(num_blocks=48, block_size=4, generation="v0")),
    ]


@pytest.mark.parametrize("name,trace,cfg", fork_runs(), ids=[r[0] for r in fork_runs()])
def test_forked_sequences_write_and_read_their_own_tokens(name, trace, cfg):
    cfg = tiny(cfg)
    ex = checked_executor(cfg, check_every=1)
    written = {}
    take = ex.book.take

    def spy(step, seq, table, start, end):
        toks = take(step, seq, table, start, end)
        written.update({(seq, start + i): t for i, t in enumerate(toks.tolist())})
        return toks

    ex.book.take = spy
    rec = PlanRecorder(ex)
    run_replay(trace, cfg, executor=rec)
    df = ex.records_frame()
    assert df["copy_blocks"].sum() > 0 and (df["max_rel_err"] <= 1e-4).all()
    forks = [f for p in rec.plans for f in p.forks]
    assert len(forks) >= 4
    first = {}  # child -> first position it computed
    for p in rec.plans:
        for sid, q, c in zip(p.seq_ids, p.query_lens, p.context_lens):
            first.setdefault(sid, c - q)
    for parent, child in forks:
        pos = first[child]
        assert written[(child, pos)] != written[(parent, pos)], (parent, child, pos)


@pytest.mark.parametrize("broken", ["copy", "copy-and-its-check"])
def test_skipped_copy_on_write_is_caught(broken):
    _, trace, cfg = fork_runs()[0]
    cfg = tiny(cfg)
    ex = checked_executor(cfg, check_every=1)
    ex.cache.copy = lambda pairs: None
    match = "copy-on-write"
    if broken == "copy-and-its-check":  # then the attention reference must catch it
        ex.shadow.after_cow = lambda step, pairs: None
        match = "paged attention differs from dense reference"
    with pytest.raises(AssertionError, match=match):
        run_replay(trace, cfg, executor=ex)


# ----------------------------------------------------------------- (d) swapping
def swap_case():
    trace = trace_of((0.0, 14, 8), (0.0, 13, 8), (0.0, 10, 8), n=2)
    cfg = tiny(config(num_blocks=14, block_size=4, generation="v0", preemption="swap"), num_cpu_blocks=32)
    return trace, cfg


def test_swap_preemption_restores_blocks_bit_identically():
    trace, cfg = swap_case()
    result, ex, plans = replay_checked(trace, cfg)
    assert sum(len(p.swap_out) for p in plans) > 0 and sum(len(p.swap_in) for p in plans) > 0
    assert result.summary["requests"]["finished"] == 3


def test_corrupted_swap_is_caught():
    trace, cfg = swap_case()
    ex = checked_executor(cfg, check_every=1)
    swap_in = ex.cache.swap_in

    def corrupt(pairs):
        swap_in(pairs)
        if pairs:
            ex.cache.kv[0, 1, pairs[0][1], 0, 0, 0] += 1.0

    ex.cache.swap_in = corrupt
    with pytest.raises(AssertionError, match="did not restore the blocks that were swapped out"):
        run_replay(trace, cfg, executor=ex)


# ------------------------------------------------- (e) recompute, prefix hits
def test_recompute_preemption_same_tokens_and_own_prefix_hits():
    """Preempted sequences recompute the tokens they had, some of them on
    top of their own blocks still cached (prompts carry token ids)."""
    trace = trace_of(*[dict(arrival_s=0.0, prompt_tokens=p, output_tokens=8,
                            prompt_token_ids=tuple(range(1000 * i, 1000 * i + p)))
                       for i, p in enumerate((14, 13, 10))])
    cfg = tiny(config(num_blocks=8, block_size=4, caching=True))
    ex = checked_executor(cfg, check_every=1)
    seen, take = {}, ex.book.take

    def spy(step, seq, table, start, end):
        toks = take(step, seq, table, start, end)
        for i, t in enumerate(toks.tolist()):
            assert seen.setdefault((seq, start + i), t) == t, f"seq {seq} recomputed another token"
        return toks

    ex.book.take = spy
    rec = PlanRecorder(ex)
    result = run_replay(trace, cfg, executor=rec)
    assert (ex.records_frame()["max_rel_err"] <= 1e-4).all()
    assert result.summary["preemptions"] >= 2
    again = {s for p in rec.plans for s in set(p.freed) - set(p.finished)}
    restarts = [c - q for p in rec.plans for s, q, c in zip(p.seq_ids, p.query_lens, p.context_lens)
                if s in again and q > 1]
    assert 0 in restarts and max(restarts) > 0, restarts


def test_prefix_hits_adopt_cached_blocks_and_corruption_is_caught():
    trace, cfg = shared_prefix_requests(), tiny(config(num_blocks=16, block_size=4, caching=True))
    result, ex, _ = replay_checked(trace, cfg)
    assert result.requests["cached_tokens"].sum() >= 16
    ex = checked_executor(cfg, check_every=1, time_from=LinearCost())
    execute = ex.execute

    def poison_cached_free_blocks(plan):
        if any(c - q > 0 and q > 1 for q, c in zip(plan.query_lens, plan.context_lens)):
            ex.cache.kv[:, :, list(ex.shadow.full_fp)] += 1.0
        return execute(plan)

    ex.execute = poison_cached_free_blocks
    with pytest.raises(AssertionError, match="contents changed since it was filled"):
        run_replay(trace, cfg, executor=ex)


def test_price_refuses_and_config_checks():
    ex = GPUExecutor("tiny", 4, 0, 4)
    with pytest.raises(NotImplementedError, match="cannot price"):
        ex.price(None)
    with pytest.raises(ValueError, match="allocator must be 'paged'"):
        executor_for_replay(tiny(config(), allocator="orca-max"))
    with pytest.raises(ValueError, match="time_from"):
        GPUExecutor("tiny", 4, 0, 4, time_from="roofline")


def test_cli_replay_with_the_gpu_executor(tmp_path, capsys):
    from pagesim.cli import main
    out = tmp_path / "run"
    assert main(["replay", "--executor", "gpu", "--model", "tiny", "--workload", "alpaca",
                 "--num-requests", "3", "--rate", "100", "--num-gpu-blocks", "64", "--block-size", "4",
                 "--quiet", "--no-plots", "--out", str(out)]) == 0
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) == 3 and requests["finish_s"].notna().all()


# -------------------------------------------------------------- (f) on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kind", ["v1-prefix", "v0-fork-swap"])
def test_real_sizes_bf16_on_gpu(kind):
    from pagesim.traces import synthetic
    if kind == "v1-prefix":
        trace = synthetic("fixed:400:48", num_requests=24, rate=50.0, system_prompt_tokens=256, seed=3)
        cfg = replace(config(num_blocks=2048, block_size=16, caching=True, max_num_seqs=64),
                      model="llama-3-8b")
    else:
        trace = synthetic("fixed:300:40", num_requests=10, rate=50.0, n=3, seed=4)
        cfg = replace(config(num_blocks=160, block_size=16, generation="v0", preemption="swap",
                             max_num_seqs=64), model="llama-3-8b", num_cpu_blocks=512)
    result, ex, plans = replay_checked_gpu(trace, cfg)
    assert result.summary["requests"]["finished"] == len(trace)
    if kind == "v0-fork-swap":
        assert sum(len(p.swap_out) for p in plans) > 0 and sum(len(p.cow) for p in plans) > 0


def replay_checked_gpu(trace, cfg):
    ex = executor_for_replay(cfg, check_every=1, dtype=torch.bfloat16)
    rec = PlanRecorder(ex)
    result = run_replay(trace, cfg, executor=rec)
    df = ex.records_frame()
    assert (df["max_rel_err"] <= 2e-2).all(), df["max_rel_err"].max()
    print(f"{len(df)} steps, max rel err {df['max_rel_err'].max():.2e}, "
          f"median step {df['measured_s'].median() * 1e3:.2f} ms")
    return result, ex, rec.plans
