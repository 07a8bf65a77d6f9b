"""Tensor parallelism on CPUs: two gloo ranks under the Triton interpreter.

The sharded executor must compute the unsharded model's K/V (each rank its
share of the KV heads) and, driven by the same scheduler and allocator,
make exactly the simulator's allocator decisions."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from pagesim.gpu.kernels import _env  # noqa: E402  interpreter only without CUDA, before triton loads

pytest.importorskip("triton")
if not _env.interpreting():
    # Kernels are compiled for CUDA in this process (the choice is made once,
    # when they are decorated), so CPU tensors cannot run through them.
    pytest.skip("CPU ranks need the Triton interpreter; this process compiles kernels for CUDA",
                allow_module_level=True)

from pagesim.gpu.executor import executor_for_replay  # noqa: E402
from pagesim.gpu.tp import ShardedDecoder, rank_spec, run_replay_tp  # noqa: E402
from pagesim.gpu.model import SyntheticDecoder  # noqa: E402
from pagesim.replay import ReplayConfig, run_replay  # noqa: E402
from pagesim.sim.config import SchedulerConfig  # noqa: E402
from pagesim.sim.costmodel import get_model  # noqa: E402
from pagesim.sim.executor import CostModelExecutor  # noqa: E402
from pagesim.traces import Request, Trace  # noqa: E402
from tests.simhelpers import LinearCost  # noqa: E402

pytestmark = pytest.mark.slow


def test_rank_spec_divides_heads_and_mlp():
    spec = rank_spec(get_model("tiny"), 2)
    full = get_model("tiny")
    assert (spec.num_heads, spec.num_kv_heads, spec.intermediate_size) == (
        full.num_heads // 2, full.num_kv_heads // 2, full.intermediate_size // 2)
    assert spec.hidden_size == full.hidden_size and spec.vocab_size == full.vocab_size
    with pytest.raises(ValueError, match="must divide by tp=3"):
        rank_spec(full, 3)


def test_shards_are_slices_of_the_unsharded_weights():
    full = SyntheticDecoder(get_model("tiny"), device=torch.device("cpu"), dtype=torch.float32, seed=3)
    parts = [ShardedDecoder("tiny", tp=2, rank=r, device=torch.device("cpu"), dtype=torch.float32,
                            seed=3) for r in (0, 1)]
    def in_out(m, w):  # the [in, out] matrix whatever the storage layout
        return w.t() if m.layout == "out_in" else w

    for layer in range(len(full.layers)):
        w = full.layers[layer]
        # row-parallel: the ranks' O and down rows stack to the full matrix
        for name in ("wo", "wdown"):
            assert torch.equal(torch.cat([in_out(p, p.layers[layer][name]) for p in parts]), in_out(full, w[name]))
    assert torch.equal(parts[1].embed, full.embed) and torch.equal(parts[0].lm_head, full.lm_head)


def test_two_gloo_ranks_match_unsharded_kv_and_simulated_allocator(tmp_path):
    cfg = ReplayConfig(model="tiny", num_gpu_blocks=48, block_size=4, cost_model="roofline",
                       scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32),
                       events=True, seed=0)
    cost = LinearCost()  # picklable: it travels to the spawned ranks
    trace = Trace([Request(i, 0.0005 * i, 6 + 5 * i, 3 + i % 4) for i in range(5)], source="t")
    ranks = run_replay_tp(trace, cfg, tp=2, workdir=str(tmp_path), time_from=cost, check_every=1)
    sim = run_replay(trace, cfg, executor=CostModelExecutor(cost))
    one = executor_for_replay(cfg, time_from=cost)
    run_replay(trace, cfg, executor=one)
    hkv = get_model("tiny").num_kv_heads // 2
    for r, got in enumerate(ranks):
        assert got["result"].events.rows() == sim.events.rows(), f"rank {r}: allocator decisions differ"
        assert got["records"]["max_rel_err"].max() < 1e-4  # the rank's shadow check of its heads
        want = one.cache.kv[..., r * hkv:(r + 1) * hkv, :]
        written = ~torch.isnan(want)
        assert written.any() and torch.equal(written, ~torch.isnan(got["kv"]))
        torch.testing.assert_close(got["kv"][written], want[written], rtol=1e-4, atol=1e-5)
