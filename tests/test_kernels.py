"""Kernels against their torch references.

Without CUDA the kernels run under Triton's CPU interpreter on tiny shapes in
fp32 and fp16 (``gpu.kernels._env`` sets TRITON_INTERPRET=1 before triton is
imported). With CUDA the same tests run on the GPU at real sizes in bf16
(marked ``gpu``). Unused block-table entries point at a block full of NaN, so
a kernel that reads past a sequence's context fails loudly.
"""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from pagesim.gpu.kernels import _env  # noqa: E402  sets TRITON_INTERPRET before triton loads

pytest.importorskip("triton")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from pagesim.gpu import kernels as K  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.triton
HERE = "cuda" if HAS_CUDA else "cpu"  # where launchers accept tensors in this process
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _env.interpreting(), reason="CPU tensors need the interpreter")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
]
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
HYP = settings(max_examples=6, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def dtypes(device: str) -> list:
    return [torch.float32, torch.float16] if device == "cpu" else [torch.bfloat16, torch.float16]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "output has NaN/inf (unwritten element or a read past the context)"
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def paged_kv(gen, ctx_lens, num_kv_heads, head_dim, block_size, dtype, device, share=True):
    """Random caches and shuffled block tables; block 0 is poison (NaN) and pads every table."""
    need = [math.ceil(c / block_size) for c in ctx_lens]
    max_blocks = max(1, max(need))
    num_blocks = 1 + sum(need) + 2
    k = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    k[0], v[0] = float("nan"), float("nan")
    ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = torch.zeros(len(ctx_lens), max_blocks, dtype=torch.int32)
    for b, n in enumerate(need):
        tables[b, :n] = torch.tensor([ids.pop() for _ in range(n)], dtype=torch.int32)
    if share and len(ctx_lens) > 1 and need[0] and need[1]:
        tables[1, 0] = tables[0, 0]  # two sequences share one physical block (prefix caching / fork)
    return k.to(dtype).to(device), v.to(dtype).to(device), tables.to(device)


# ---------------------------------------------------------------- store_kv
@pytest.mark.parametrize("device", DEVICES)
def test_store_kv_writes_valid_slots_and_skips_negative(device):
    gen = torch.Generator().manual_seed(1)
    for dtype in dtypes(device):
        nb, bs, kvh, d = (6, 3, 2, 16) if device == "cpu" else (512, 16, 8, 128)
        n = 11 if device == "cpu" else 1000
        slots = torch.randperm(nb * bs, generator=gen)[:n]
        slots[torch.rand(n, generator=gen) < 0.3] = -1
        k = torch.randn(n, kvh, d, generator=gen).to(dtype).to(device)
        v = torch.randn(n, kvh, d, generator=gen).to(dtype).to(device)
        kc = torch.randn(nb, bs, kvh, d, generator=gen).to(dtype).to(device)
        vc = torch.randn(nb, bs, kvh, d, generator=gen).to(dtype).to(device)
        for slot_dtype in (torch.int64, torch.int32):
            ref_k, ref_v = K.store_kv_ref(k, v, kc, vc, slots)
            K.store_kv(k, v, kc, vc, slots.to(slot_dtype).to(device))
            assert torch.equal(kc, ref_k) and torch.equal(vc, ref_v)


@pytest.mark.parametrize("device", DEVICES)
def test_store_kv_all_negative_changes_nothing(device):
    kc = torch.randn(4, 2, 2, 16, device=device)
    vc, before = kc.clone(), kc.clone()
    k = torch.randn(5, 2, 16, device=device)
    K.store_kv(k, k, kc, vc, torch.full((5,), -1, device=device))
    assert torch.equal(kc, before) and torch.equal(vc, before)


def test_store_kv_names_the_broken_invariant():
    kc, kv = torch.zeros(4, 2, 2, 16, device=HERE), torch.zeros(3, 2, 16, device=HERE)
    with pytest.raises(AssertionError, match="slot_mapping"):
        K.store_kv(kv, kv, kc, kc.clone(), torch.zeros(3, device=HERE))
    with pytest.raises(AssertionError, match="num_tokens"):
        K.store_kv(kv, kv, kc, kc.clone(), torch.zeros(2, dtype=torch.int64, device=HERE))


# ---------------------------------------------------------------- paged_decode
def check_decode(device, dtype, ctx_lens, heads, kv_heads, head_dim, block_size, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    kc, vc, bt = paged_kv(gen, ctx_lens, kv_heads, head_dim, block_size, dtype, device)
    q = torch.randn(len(ctx_lens), heads, head_dim, generator=gen).to(dtype).to(device)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=device)
    ref = K.paged_decode_ref(q, kc, vc, bt, ctx)
    out = K.paged_decode(q, kc, vc, bt, ctx, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < TOL[dtype], kw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_gqa_ratios_odd_lengths(device, group):
    for dtype in dtypes(device):
        if device == "cpu":
            check_decode(device, dtype, [37, 5, 1], 2 * group, 2, 32, 8, seed=group, tile_n=16, num_splits=2)
        else:
            check_decode(device, dtype, [3001, 17, 1, 513], 8 * group, 8, 128, 16, seed=group)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [1, 3, 16, 64])
def test_decode_block_sizes_and_short_sequences(device, block_size):
    # contexts shorter than one block, exactly one block, and crossing blocks
    lens = [1, 2, block_size, block_size + 1, 2 * block_size + 3]
    dtype = dtypes(device)[1]
    if device == "cpu":
        check_decode(device, dtype, lens, 4, 2, 16, block_size, seed=block_size, tile_n=16)
    else:
        check_decode(device, dtype, [x * 9 for x in lens], 32, 8, 128, block_size, seed=block_size)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bt_ahead", [False, True])
def test_decode_split_k_merges(device, bt_ahead):
    lens = [70, 3, 0, 33] if device == "cpu" else [32768, 100, 0, 4097]  # 0: empty context -> zeros
    dtype = dtypes(device)[0]
    for splits in (1, 3, 7):
        if device == "cpu":
            check_decode(device, dtype, lens, 8, 2, 16, 16, seed=splits, tile_n=16, num_splits=splits,
                         bt_ahead=bt_ahead)
        else:
            check_decode(device, dtype, lens, 32, 8, 128, 16, seed=splits, num_splits=8 * splits, bt_ahead=bt_ahead)
            for tile_n, stages in ((32, 3), (64, 3), (64, 5)):  # K/V buffer counts 2 to 4 with bt_ahead
                check_decode(device, dtype, lens, 32, 8, 128, 16, seed=splits, num_splits=8 * splits,
                             tile_n=tile_n, num_stages=stages, bt_ahead=bt_ahead)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_heuristic_defaults(device):
    lens = [45, 130] if device == "cpu" else [8192, 200]
    if device == "cpu":
        check_decode(device, torch.float32, lens, 8, 2, 64, 16, seed=5)
    else:
        check_decode(device, torch.bfloat16, lens, 32, 8, 128, 16, seed=5)


@given(data=st.data())
@HYP
def test_decode_random_shapes_interpreter(data):
    if not _env.interpreting():
        pytest.skip("interpreter-only property test")
    group = data.draw(st.sampled_from([1, 2, 4, 8]))
    block_size = data.draw(st.sampled_from([1, 2, 5, 8, 16, 32]))
    lens = data.draw(st.lists(st.integers(0, 80), min_size=1, max_size=3))
    check_decode("cpu", data.draw(st.sampled_from([torch.float32, torch.float16])), lens, group * 2, 2,
                 data.draw(st.sampled_from([16, 32])), block_size, seed=data.draw(st.integers(0, 99)),
                 tile_n=data.draw(st.sampled_from([16, 32])), num_splits=data.draw(st.integers(1, 4)),
                 bt_ahead=data.draw(st.booleans()))


# ---------------------------------------------------------------- paged_prefill
def prefill_case(device, dtype, q_lens, prefixes, heads, kv_heads, head_dim, block_size, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    ctx_lens = [q + p for q, p in zip(q_lens, prefixes)]
    kc, vc, bt = paged_kv(gen, ctx_lens, kv_heads, head_dim, block_size, dtype, device)
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    q = torch.randn(sum(q_lens), heads, head_dim, generator=gen).to(dtype).to(device)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=device)
    return q, kc, vc, bt, cu, ctx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group,block_size", [(1, 16), (4, 1), (8, 5)])
def test_prefill_with_and_without_cached_prefix(device, group, block_size):
    if device == "cpu":  # prompt only, prefix + chunk, one-token chunk, empty, shared first block
        shape = dict(q_lens=[19, 9, 1, 0, 33], prefixes=[0, 21, 40, 4, 16], heads=2 * group, kv_heads=2, head_dim=32)
        kw = dict(block_m=16, block_n=16)
    else:
        shape = dict(q_lens=[1000, 511, 1, 2048], prefixes=[0, 3000, 77, 2048], heads=8 * group, kv_heads=8,
                     head_dim=128)
        kw = {}
    for dtype in dtypes(device):
        args = prefill_case(device, dtype, block_size=block_size, seed=group, **shape)
        out = K.paged_prefill(*args, **kw)
        assert rel_err(out, K.paged_prefill_ref(*args)) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_prefill_equals_whole_prompt(device):
    """Attending in two chunks (the second over the first as cached prefix) gives the same rows."""
    n, first, heads, kvh, d = (45, 20, 4, 2, 32) if device == "cpu" else (3000, 1234, 32, 8, 128)
    dtype = dtypes(device)[0]
    q, kc, vc, bt, _, _ = prefill_case(device, dtype, [n], [0], heads, kvh, d, 16, seed=3)
    kw = dict(block_m=16, block_n=16) if device == "cpu" else {}
    i32 = dict(dtype=torch.int32, device=device)
    whole = K.paged_prefill(q, kc, vc, bt, torch.tensor([0, n], **i32), torch.tensor([n], **i32), **kw)
    tail = K.paged_prefill(q[first:], kc, vc, bt, torch.tensor([0, n - first], **i32), torch.tensor([n], **i32), **kw)
    assert rel_err(tail, whole[first:].float()) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_decode_equals_last_prefill_row(device):
    lens, heads, kvh, d = ([30, 17], 8, 2, 16) if device == "cpu" else ([2049, 300], 32, 8, 128)
    dtype = dtypes(device)[0]
    q, kc, vc, bt, cu, ctx = prefill_case(device, dtype, lens, [0, 0], heads, kvh, d, 8, seed=4)
    kw = dict(block_m=16, block_n=16) if device == "cpu" else {}
    rows = K.paged_prefill(q, kc, vc, bt, cu, ctx, **kw)[cu[1:].long() - 1]
    dec = K.paged_decode(q[cu[1:].long() - 1].contiguous(), kc, vc, bt, ctx)
    assert rel_err(dec, rows.float()) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_store_then_prefill_then_decode(device):
    """The executor's order: store_kv the new tokens' K/V, then attend over the paged context."""
    gen = torch.Generator().manual_seed(6)
    dtype = dtypes(device)[0]
    n, heads, kvh, d, bs = (21, 4, 2, 16, 4) if device == "cpu" else (777, 32, 8, 128, 16)
    nb = n // bs + 4
    kc = torch.full((nb, bs, kvh, d), float("nan"), dtype=dtype, device=device)
    vc = kc.clone()
    table = torch.randperm(nb, generator=gen)[: n // bs + 1].to(torch.int32)
    pos = torch.arange(n)
    slots = (table[pos // bs].long() * bs + pos % bs).to(device)
    k = torch.randn(n, kvh, d, generator=gen).to(dtype).to(device)
    v = torch.randn(n, kvh, d, generator=gen).to(dtype).to(device)
    q = torch.randn(n, heads, d, generator=gen).to(dtype).to(device)
    K.store_kv(k, v, kc, vc, slots)
    bt, i32 = table[None].to(device), dict(dtype=torch.int32, device=device)
    out = K.paged_prefill(q, kc, vc, bt, torch.tensor([0, n], **i32), torch.tensor([n], **i32))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.float().repeat_interleave(heads // kvh, 1).transpose(0, 1),
        v.float().repeat_interleave(heads // kvh, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
    assert rel_err(out, dense) < TOL[dtype]
    last = K.paged_decode(q[-1:].contiguous(), kc, vc, bt, torch.tensor([n], **i32))
    assert rel_err(last, dense[-1:]) < TOL[dtype]


@given(data=st.data())
@HYP
def test_prefill_random_shapes_interpreter(data):
    if not _env.interpreting():
        pytest.skip("interpreter-only property test")
    b = data.draw(st.integers(1, 3))
    q_lens = data.draw(st.lists(st.integers(0, 40), min_size=b, max_size=b))
    prefixes = data.draw(st.lists(st.integers(0, 40), min_size=b, max_size=b))
    group = data.draw(st.sampled_from([1, 2, 4]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16]))
    if sum(q_lens) == 0:
        q_lens[0] = 1
    args = prefill_case("cpu", dtype, q_lens, prefixes, 2 * group, 2, 16,
                        data.draw(st.sampled_from([1, 3, 8, 16])), seed=data.draw(st.integers(0, 99)))
    out = K.paged_prefill(*args, block_m=data.draw(st.sampled_from([16, 32])), block_n=16)
    assert rel_err(out, K.paged_prefill_ref(*args)) < TOL[dtype]


# ---------------------------------------------------------------- copy_blocks
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("block_major", [False, True])
def test_copy_blocks_copies_exactly_the_pairs(device, stacked, block_major):
    gen = torch.Generator().manual_seed(7)
    layers, nb, bs, kvh, d = (3, 12, 4, 2, 16) if device == "cpu" else (32, 128, 16, 8, 128)
    for dtype in dtypes(device):
        stack = torch.randn(layers, 2, nb, bs, kvh, d, generator=gen).to(dtype).to(device)
        caches = stack if stacked else [torch.randn(nb, bs, kvh, d, generator=gen).to(dtype).to(device)
                                        for _ in range(2 * layers)]
        perm = torch.randperm(nb, generator=gen).tolist()
        pairs = list(zip(perm[:5], perm[5:10]))
        ref = K.copy_blocks_ref(caches, pairs)
        K.copy_blocks(caches, pairs, block_major=block_major, chunk=32 if device == "cpu" else None)
        got = list(stack.reshape(-1, nb, bs, kvh, d)) if stacked else caches
        assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_copy_blocks_rejects_chained_pairs():
    caches = [torch.zeros(4, 2, 2, 16, device=HERE)]
    with pytest.raises(AssertionError, match="also a source"):
        K.copy_blocks(caches, [(0, 1), (1, 2)])
    with pytest.raises(AssertionError, match=r"\[0, 4\)"):
        K.copy_blocks(caches, [(0, 4)])


# ---------------------------------------------------------------- swap
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pool_ids", [[0, 1, 2, 3], [4, 0, 2, 1]], ids=["run", "scattered"])
def test_swap_round_trip_is_bit_identical(device, pool_ids):
    gen = torch.Generator().manual_seed(8)
    nb, shape = (10, (4, 2, 16)) if device == "cpu" else (4096, (16, 8, 128))
    for dtype in dtypes(device):
        gpu = [torch.randn(nb, *shape, generator=gen).to(dtype).to(device) for _ in range(4)]
        before = [t.clone() for t in gpu]
        pool = [K.pinned_pool_like(t, nb // 2).zero_() for t in gpu]
        out_pairs = list(zip([3, 4, 7, 1], pool_ids))
        expect = K.swap_blocks_ref(gpu, pool, out_pairs)
        K.swap_blocks(gpu, pool, out_pairs).synchronize()
        assert all(torch.equal(a, b) for a, b in zip(pool, expect))
        for t in gpu:
            t[[3, 4, 7, 1]] = float("nan")  # the GPU blocks are reused while swapped out
        handle = K.swap_blocks(pool, gpu, [(c, g) for g, c in out_pairs])
        handle.wait()  # orders the current stream; the comparison below runs on it
        assert all(torch.equal(a, b) for a, b in zip(gpu, before))
        handle.synchronize()
        assert handle.done()
