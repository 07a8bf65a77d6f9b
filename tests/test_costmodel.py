"""Presets, KV capacity and the roofline cost model."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pagesim.sim.costmodel.capacity import (
    default_activation_reserve, kv_cache_blocks, kv_cache_bytes, kv_cache_tokens,
)
from pagesim.sim.costmodel.presets import (
    GPUS, MODELS, get_gpu, get_model, kv_bytes_per_token, kv_heads_per_gpu, layer_matmul_params,
    streamed_params, weight_bytes,
)
from pagesim.sim.costmodel.roofline import RooflineCostModel
from pagesim.sim.plan import StepPlan, StepShapes


def shapes(**fields) -> StepShapes:
    """StepShapes from lists; missing fields are zeros of the same length."""
    k = len(next(iter(fields.values())))
    cols = {f: np.asarray(fields.get(f, [0] * k), dtype=np.float64 if f == "attn_pairs" else np.int64)
            for f in StepShapes.__slots__}
    return StepShapes(**cols)


# --- presets -----------------------------------------------------------------

def test_kv_bytes_per_token_of_known_models():
    # 2 (K,V) * 32 layers * 8 kv heads * 128 * 2 bytes
    assert kv_bytes_per_token(get_model("llama-3-8b")) == 131072
    # 2 * 40 * 40 * 128 * 2: the vLLM paper's "800 KB per token"
    assert kv_bytes_per_token(get_model("opt-13b")) == 819200


@pytest.mark.parametrize("name", sorted(MODELS))
def test_num_params_agrees_with_architecture(name):
    """Matmul weights plus one embedding table come within 0.5% below the
    checkpoint count (norms, biases, positions and untied embeddings are the rest)."""
    m = MODELS[name]
    embed = m.vocab_size * m.hidden_size
    assert m.num_layers * layer_matmul_params(m) + embed <= m.num_params
    assert streamed_params(m) <= m.num_params
    untied = m.name.startswith(("llama", "mistral", "tiny"))
    approx = m.num_layers * layer_matmul_params(m) + embed * (2 if untied else 1)
    assert approx == pytest.approx(m.num_params, rel=5e-3)


def test_lookup_is_case_insensitive_and_errors_list_names():
    assert get_model(" Llama-3-8B ") is MODELS["llama-3-8b"]
    assert get_gpu("H100-80GB") is GPUS["h100-80gb"]
    with pytest.raises(ValueError, match="llama-3-8b"):
        get_model("gpt-5")
    with pytest.raises(ValueError, match="a100-40gb"):
        get_gpu("tpu")


def test_tiny_model_shape():
    m = get_model("tiny")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim) == (2, 64, 4, 2, 16)


def test_tensor_parallel_divides_weights_and_kv_heads():
    m = get_model("llama-3-8b")
    assert weight_bytes(m, 2) == weight_bytes(m, 1) / 2
    assert kv_bytes_per_token(m, 2) == 131072 // 2
    assert kv_heads_per_gpu(m, 8) == 1
    # fewer KV heads than GPUs: each GPU keeps one (replicated), not a fraction
    assert kv_heads_per_gpu(m, 16) == 1
    assert kv_bytes_per_token(m, 16) == kv_bytes_per_token(m, 8)
    with pytest.raises(ValueError):
        kv_bytes_per_token(m, 3)


# --- capacity ----------------------------------------------------------------

def test_opt13b_on_a100_40gb_matches_vllm_paper():
    """vLLM paper Fig. 2: 26 GB of weights, ~12 GB (>30%) of KV cache. We
    state 12 GB +- 5%."""
    free = kv_cache_bytes("opt-13b", "a100-40gb", 0.9)
    assert free == pytest.approx(12e9, rel=0.05)
    assert weight_bytes(get_model("opt-13b")) == pytest.approx(26e9, rel=0.02)
    blocks = kv_cache_blocks("opt-13b", "a100-40gb", 16)
    assert blocks == int(free // (16 * 819200))
    assert kv_cache_tokens("opt-13b", "a100-40gb", 16) == 16 * blocks


def test_capacity_formula_with_explicit_reserve():
    gpu = get_gpu("h100-80gb")
    m = get_model("llama-3-8b")
    free = kv_cache_bytes(m, gpu, 0.5, activation_reserve_bytes=10**9)
    assert free == gpu.memory_bytes * 0.5 - m.num_params * 2 - 10**9
    assert default_activation_reserve(m) > 0


def test_capacity_grows_with_tp_and_utilisation():
    assert kv_cache_blocks("llama-2-13b", "a100-80gb", 16, tp=2) > \
        kv_cache_blocks("llama-2-13b", "a100-80gb", 16, tp=1)
    assert kv_cache_blocks("llama-3-8b", "h100-80gb", 16, 0.95) > \
        kv_cache_blocks("llama-3-8b", "h100-80gb", 16, 0.9)


def test_weights_that_do_not_fit_raise_clearly():
    with pytest.raises(ValueError, match=r"opt-175b does not fit on a100-40gb with tp=1.*raise tp"):
        kv_cache_blocks("opt-175b", "a100-40gb", 16)
    assert kv_cache_blocks("opt-175b", "a100-80gb", 16, tp=8) > 0
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        kv_cache_blocks("tiny", "h100-80gb", 16, gpu_memory_utilization=1.5)


# --- roofline ----------------------------------------------------------------

def test_single_decode_is_memory_bound_on_weights():
    """Llama-3-8B, one sequence, 128 tokens of context on an H100: the step
    streams the weights once: ~15-16 GB / 3.35 TB/s / mbu ~ 5.6-6 ms."""
    cm = RooflineCostModel("llama-3-8b", "h100-80gb", mbu=0.8)
    t = cm.price(shapes(num_seqs=[1], num_tokens=[1], kv_tokens_read=[128], attn_pairs=[128]))[0]
    bound = 16.06e9 / 3.35e12 / 0.8
    assert t - cm.step_overhead_s == pytest.approx(bound, rel=0.08)
    parts = cm.breakdown(shapes(num_seqs=[1], num_tokens=[1], kv_tokens_read=[128], attn_pairs=[128]))
    exact = streamed_params(cm.model) * 2 / 3.35e12 / 0.8
    assert parts["linear"][0] == pytest.approx(exact, rel=1e-3)  # activations add ~0.01%


def test_price_is_monotone_in_tokens_and_context():
    cm = RooflineCostModel("llama-3-8b", "h100-80gb")
    n = np.array([1, 2, 8, 64, 256, 512, 2048, 8192])
    by_tokens = cm.price(shapes(num_seqs=[1] * 8, num_tokens=n, kv_tokens_read=n,
                                attn_pairs=n * (n + 1) / 2, num_prefill_seqs=[1] * 8))
    assert np.all(np.diff(by_tokens) > 0)
    kv = np.array([0, 100, 10_000, 100_000, 1_000_000, 4_000_000])
    by_context = cm.price(shapes(num_seqs=[64] * 6, num_tokens=[64] * 6, kv_tokens_read=kv,
                                 attn_pairs=kv))
    assert np.all(np.diff(by_context) >= 0) and by_context[-1] > 2 * by_context[0]


def test_long_prefill_is_compute_bound():
    cm = RooflineCostModel("llama-3-8b", "h100-80gb", mfu=0.5)
    b = cm.breakdown(shapes(num_seqs=[1], num_tokens=[8192], kv_tokens_read=[8192],
                            attn_pairs=[8192 * 8193 / 2], num_prefill_seqs=[1]))
    flops = 2 * 32 * layer_matmul_params(cm.model) * 8192 + 2 * 128256 * 4096
    assert b["linear"][0] == pytest.approx(flops / (989e12 * 0.5))


def test_copy_and_swap_cost_per_block():
    cm = RooflineCostModel("opt-13b", "a100-40gb", block_size=16, mbu=1.0, pcie_efficiency=1.0)
    block = 16 * 819200
    t = cm.breakdown(shapes(num_seqs=[0], copy_blocks=[3], swap_blocks=[2]))
    assert t["copy"][0] == pytest.approx(3 * 2 * block / 1.555e12)
    assert t["swap"][0] == pytest.approx(2 * block / 32e9)
    assert t["linear"][0] == 0.0  # no tokens, no forward pass


def test_tensor_parallel_speeds_up_and_adds_allreduce():
    one = RooflineCostModel("llama-2-13b", "a100-80gb", tp=1)
    two = RooflineCostModel("llama-2-13b", "a100-80gb", tp=2)
    s = shapes(num_seqs=[1, 32], num_tokens=[2048, 32], kv_tokens_read=[2048, 32_000],
               attn_pairs=[2048 * 2049 / 2, 32_000], num_prefill_seqs=[1, 0])
    assert np.all(two.price(s) < one.price(s))
    assert np.all(two.breakdown(s)["allreduce"] > 0) and np.all(one.breakdown(s)["allreduce"] == 0)
    assert two.block_bytes == one.block_bytes // 2


def test_plan_shapes_and_stretch_price_alike():
    """A decode stretch priced at once equals the same steps built as plans."""
    cm = RooflineCostModel("mistral-7b", "a100-80gb")
    stretch = cm.price(StepShapes.decode_stretch(num_seqs=2, sum_context0=30, steps=3))
    for k in range(3):
        ctx = [10 + k, 20 + k]
        plan = StepPlan(step=k, seq_ids=[0, 1], query_lens=[1, 1], context_lens=ctx)
        assert cm.price(plan.shapes())[0] == stretch[k]


_steps = st.lists(
    st.tuples(st.integers(0, 512), st.integers(0, 16_384), st.integers(0, 2_000_000),
              st.integers(0, 4), st.integers(0, 64), st.integers(0, 64)),
    min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_steps, st.sampled_from([1, 2, 8]), st.sampled_from(sorted(GPUS)))
def test_price_is_elementwise_bit_for_bit(rows, tp, gpu):
    cm = RooflineCostModel("opt-66b" if tp == 8 else "llama-2-13b", gpu, tp=tp)
    seqs, toks, kv, pre, cow, swap = (np.array(c) for c in zip(*rows))
    s = shapes(num_seqs=seqs, num_tokens=toks, kv_tokens_read=kv, attn_pairs=kv * 1.5 + toks,
               num_prefill_seqs=pre, copy_blocks=cow, swap_blocks=swap)
    whole = cm.price(s)
    for i in range(len(s)):
        one = StepShapes(**{f: getattr(s, f)[i:i + 1] for f in StepShapes.__slots__})
        assert cm.price(one)[0] == whole[i]  # exact, not approx


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 512), st.integers(0, 4_000_000), st.integers(1, 80),
       st.floats(0, 1e5), st.sampled_from([1, 2, 8]), st.sampled_from(sorted(GPUS)),
       st.one_of(st.none(), st.floats(0, 2e5)))
def test_decode_run_prices_like_price_and_price_one(n, ctx0, k, clock, tp, gpu, stop_at):
    """The three pricing paths share one formula: a decode run's durations
    are, bit for bit, those of ``price`` on the same decode steps and of
    ``price_one`` step by step; its times are sequential sums of them, and
    it stops after the first step ending at or after ``stop_at``."""
    cm = RooflineCostModel("opt-66b" if tp == 8 else "llama-2-13b", gpu, tp=tp)
    times, dts, done = cm.decode_run(n, ctx0, k, clock, stop_at)
    whole = cm.price(StepShapes.decode_stretch(num_seqs=n, sum_context0=ctx0, steps=k))
    assert dts == whole[:done].tolist()
    assert dts == [cm.price_one(n, n, ctx0 + j * n, ctx0 + j * n) for j in range(done)]
    t = clock
    for j, dt in enumerate(dts):
        t = t + dt
        assert times[j + 1] == t
    ends = times[1:]
    if stop_at is None or all(e < stop_at for e in ends):
        assert done == k
    else:
        assert done == ends.index(next(e for e in ends if e >= stop_at)) + 1
