"""An analytic step-time model: a roofline for each kind of kernel.

A forward pass is two families of kernels that run one after the other and
cannot hide each other's bottleneck:

* the linear layers (QKV, O, MLP, lm_head) stream every weight once per step
  and do ``2 * params`` FLOPs per token: memory bound at small batches,
  compute bound at large ones;
* attention reads the K/V of every context token of every sequence and does
  ``4 * head_dim`` FLOPs per head per (query, key) pair: memory bound in
  decode, compute bound in long prefills.

So per GPU, per step::

    t = overhead
      + max(linear_flops / (F * mfu), (weights + activations) / (B * mbu))
      + max(attn_flops / (F * mfu), kv_bytes / (B * mbu))
      + allreduce (tp > 1: 2 per layer, ring over NVLink)
      + copy_blocks * 2 * block_bytes / (B * mbu)          (copy-on-write)
      + swap_blocks * block_bytes / (pcie * pcie_efficiency)

with F the dense BF16 peak and B the HBM bandwidth of the datasheet. One
``max`` over the whole step would let a compute-bound prefill hide a
memory-bound attention over a long context for free, which real kernels
don't do; summing two rooflines never undercuts either bound.

``price`` uses only elementwise float64 ``+ - * /``, ``maximum`` and
``where``, with scalars precomputed in ``__init__``, so each step's price is
the same bit for bit whether priced alone or in a stretch.
"""
from __future__ import annotations

import numpy as np

from pagesim.sim.costmodel.presets import (
    GPUSpec, ModelSpec, get_gpu, get_model, kv_bytes_per_token, layer_matmul_params,
    streamed_params,
)
from pagesim.sim.plan import StepShapes


def activation_bytes_per_token(model: ModelSpec, tp: int = 1) -> int:
    """HBM traffic of activations per token, all layers, one GPU.

    Per layer each kernel writes its output and the next reads it: ~14 hidden
    vectors on the replicated residual path (norms, residual adds, inputs of
    the QKV and MLP projections, O and down outputs) and, sharded by tp, the
    QKV output, attention input/output (``4 q + 2 kv``) and the MLP inner
    tensors (``6 I`` gated: gate+up written and read, act written and read
    by down; ``4 I`` otherwise). L2 reuse is ignored: an upper bound, which
    only matters for very large decode batches.
    """
    q = model.num_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    mlp = (6 if model.gated_mlp else 4) * model.intermediate_size
    per_layer = 14 * model.hidden_size + (4 * q + 2 * kv + mlp) // tp
    return model.num_layers * per_layer * model.dtype_bytes


class RooflineCostModel:
    """Analytic step times for ``model`` on ``tp`` GPUs of kind ``gpu``.

    Defaults, to be replaced by a calibration (``TableCostModel``):

    * ``mfu=0.5``: large BF16 GEMMs and FlashAttention prefill reach 50-70%
      of the dense peak on A100/H100; end-to-end prefill in serving engines
      sits near the low end.
    * ``mbu=0.8``: batch-1 decode of 7-13B models in vLLM/TensorRT-LLM streams
      weights at 70-85% of the datasheet bandwidth; paged-attention decode
      kernels reach similar fractions at long contexts.
    * ``step_overhead_s=3e-4``: scheduling, input preparation, sampling and
      launch per step with CUDA graphs (a few hundred us); not scaled by
      batch size. ``seq_overhead_s`` (default 0) adds a per-sequence term.
    * ``pcie_efficiency=0.8``: pinned-memory copies reach ~80% of one PCIe
      direction (e.g. ~25 of 32 GB/s on Gen4).
    * ``nvlink_efficiency=0.8`` and ``allreduce_latency_s=1e-5``: NCCL ring
      bus bandwidth is ~80% of one NVLink direction for large messages; small
      (decode) all-reduces cost ~10 us each regardless of size.
    """

    def __init__(
        self,
        model: ModelSpec | str,
        gpu: GPUSpec | str,
        tp: int = 1,
        *,
        block_size: int = 16,
        mfu: float = 0.5,
        mbu: float = 0.8,
        step_overhead_s: float = 3e-4,
        seq_overhead_s: float = 0.0,
        pcie_efficiency: float = 0.8,
        nvlink_efficiency: float = 0.8,
        allreduce_latency_s: float = 1e-5,
    ) -> None:
        self.model, self.gpu, self.tp, self.block_size = get_model(model), get_gpu(gpu), tp, block_size
        for name, v in (("mfu", mfu), ("mbu", mbu), ("pcie_efficiency", pcie_efficiency),
                        ("nvlink_efficiency", nvlink_efficiency)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if min(step_overhead_s, seq_overhead_s, allreduce_latency_s) < 0 or block_size < 1:
            raise ValueError("overheads and latencies must be >= 0 and block_size >= 1")
        self.mfu, self.mbu = mfu, mbu
        self.step_overhead_s, self.seq_overhead_s = step_overhead_s, seq_overhead_s
        self.pcie_efficiency, self.nvlink_efficiency = pcie_efficiency, nvlink_efficiency
        self.allreduce_latency_s = allreduce_latency_s
        self._precompute()

    def _precompute(self) -> None:
        """Per-unit costs in seconds, so ``price`` is a few multiply-adds."""
        m, g, tp = self.model, self.gpu, self.tp
        flop_s = g.bf16_flops * self.mfu          # per GPU
        byte_s = g.mem_bandwidth * self.mbu
        kv_tok = kv_bytes_per_token(m, tp)        # checks tp against the heads
        self.block_bytes = self.block_size * kv_tok
        # linear layers: per token through all layers, per sampled sequence for lm_head
        self._lin_tok_s = 2.0 * m.num_layers * layer_matmul_params(m) / tp / flop_s
        self._lin_seq_s = 2.0 * m.vocab_size * m.hidden_size / tp / flop_s
        self._weights_s = streamed_params(m) * m.dtype_bytes / tp / byte_s
        self._act_tok_s = activation_bytes_per_token(m, tp) / byte_s
        # attention: per (query, key) pair; K/V read per context token, written per new token
        self._attn_pair_s = 4.0 * m.num_layers * (m.num_heads // tp) * m.head_dim / flop_s
        self._kv_tok_s = kv_tok / byte_s
        pair_s, kv_tok_s = self._attn_pair_s, self._kv_tok_s

        def attention_bounds(pairs, kv_read, n_tok) -> tuple:
            """Attention's two rooflines (the term is the larger): FLOPs over
            (query, key) pairs, and reading the context's K/V plus writing
            the new tokens'. ``decode_run`` evaluates the same two products
            inline, once per decode step (a call per step cost ~3 % of a
            replay); the tests pin the two bit-identical."""
            return pairs * pair_s, (kv_read + n_tok) * kv_tok_s
        self._attention_bounds = attention_bounds
        # tensor parallel: 2 all-reduces per layer of num_tokens * hidden values
        ring = 2.0 * (tp - 1) / tp
        bw = g.nvlink_bandwidth * self.nvlink_efficiency
        self._ar_fixed_s = 2.0 * m.num_layers * self.allreduce_latency_s if tp > 1 else 0.0
        self._ar_tok_s = 2.0 * m.num_layers * m.hidden_size * m.dtype_bytes * ring / bw
        self._copy_block_s = 2.0 * self.block_bytes / byte_s
        self._swap_block_s = self.block_bytes / (g.pcie_bandwidth * self.pcie_efficiency)

    @property
    def copy_block_s(self) -> float:
        """Seconds to copy one block on device (read + write)."""
        return self._copy_block_s

    @property
    def swap_block_s(self) -> float:
        """Seconds to move one block over PCIe (either direction)."""
        return self._swap_block_s

    #: Names of the terms ``_terms`` returns, in the order they are summed.
    TERMS = ("overhead", "linear", "attention", "allreduce", "copy", "swap")

    def _terms(self, n_tok, n_seq, kv_read, pairs, copies, swaps, maximum) -> tuple:
        """Each term of the step time, written once for numpy arrays and for
        Python floats (``price_one``): the same IEEE operations in the same
        order, so both give bit-identical results. Steps with no tokens run
        no forward pass (``runs`` is 0 or 1, and every term is finite and
        non-negative, so multiplying by it is exact)."""
        runs = n_tok > 0
        linear = maximum(n_tok * self._lin_tok_s + n_seq * self._lin_seq_s,
                         self._weights_s + n_tok * self._act_tok_s)
        attention = maximum(*self._attention_bounds(pairs, kv_read, n_tok))
        allreduce = self._ar_fixed_s + n_tok * self._ar_tok_s
        return (self.step_overhead_s + n_seq * self.seq_overhead_s, linear * runs,
                attention * runs, allreduce * runs, copies * self._copy_block_s,
                swaps * self._swap_block_s)

    def breakdown(self, shapes: StepShapes) -> dict[str, np.ndarray]:
        """Each term of the step time (seconds, arrays of length K).

        Steps with no tokens run no forward pass: only overhead, copies and
        swaps are charged.
        """
        f = np.float64
        terms = self._terms(
            np.asarray(shapes.num_tokens, dtype=f), np.asarray(shapes.num_seqs, dtype=f),
            np.asarray(shapes.kv_tokens_read, dtype=f), np.asarray(shapes.attn_pairs, dtype=f),
            np.asarray(shapes.copy_blocks, dtype=f), np.asarray(shapes.swap_blocks, dtype=f),
            np.maximum)
        return dict(zip(self.TERMS, terms))

    def price(self, shapes: StepShapes) -> np.ndarray:
        """Seconds per step; elementwise (see the module docstring)."""
        o, lin, att, ar, cp, sw = self.breakdown(shapes).values()
        return o + lin + att + ar + cp + sw

    def price_one(self, num_seqs, num_tokens, kv_tokens_read, attn_pairs, copy_blocks=0,
                  swap_blocks=0) -> float:
        """``price`` of a single step from plain numbers, without numpy's
        per-call overhead (the engine prices most steps one at a time)."""
        o, lin, att, ar, cp, sw = self._terms(
            float(num_tokens), float(num_seqs), float(kv_tokens_read), float(attn_pairs),
            float(copy_blocks), float(swap_blocks), max)
        return o + lin + att + ar + cp + sw

    def decode_run(self, n: int, ctx0: int, k: int, clock: float, stop_at) -> tuple:
        """Start times and durations of up to ``k`` plain decode steps of
        ``n`` sequences, contexts ``ctx0, ctx0 + n, ...``, stopping after the
        first step that ends at or after ``stop_at``: ``(times, dts, k)``.

        The fast engine prices every decode step this way. It is
        ``price_one`` with what does not change from step to step taken out
        of the loop: only the attention term depends on the context (its two
        products are ``attention_bounds``'s, written out in the loop), and
        adding the zero copy and swap terms is exact, so the times are
        bit-identical to pricing the steps one by one.
        """
        nf = float(n)
        o, lin, _, ar, _, _ = self._terms(nf, nf, 0.0, 0.0, 0.0, 0.0, max)
        base = o + lin
        pair_s, kv_tok_s = self._attn_pair_s, self._kv_tok_s
        stop = float("inf") if stop_at is None else stop_at
        times, dts = [clock], []
        add_time, add_dt = times.append, dts.append
        t = clock
        c = float(ctx0)  # exact: contexts are integers far below 2**53
        for j in range(k):
            # attention_bounds(c, c, nf), inline: pairs and K/V reads are both the context
            flops, traffic = c * pair_s, (c + nf) * kv_tok_s
            dt = (base + (flops if flops >= traffic else traffic)) + ar  # max(), without its call
            t = t + dt
            add_dt(dt)
            add_time(t)
            if t >= stop:
                return times, dts, j + 1
            c += nf
        return times, dts, k

    def __repr__(self) -> str:
        return (f"RooflineCostModel({self.model.name!r}, {self.gpu.name!r}, tp={self.tp}, "
                f"block_size={self.block_size}, mfu={self.mfu}, mbu={self.mbu}, "
                f"step_overhead_s={self.step_overhead_s})")
