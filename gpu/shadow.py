"""Correctness checks while the GPU executor runs: a shadow of every sequence.

The paged cache is what is under test, so the shadow keeps its own, much
simpler copy of the K/V: per sequence, a list of rows of a dense arena, one
row (all layers, K and V) per token, written from the very k/v tensors
``store_kv`` received. No blocks, no block tables, no kernels::

    seq 7   rows [12, 13, 40, 41, 42]      arena[layer, 0/1, row] = k/v of that token
    seq 9   rows [12, 13, 40, 77]          (forked from 7 after token 3: shares rows)

A forked child shares its parent's rows (reference counts), and appends
its own. Rows are stored in the cache dtype: bf16/fp16 -> fp32 is exact,
so this is the dense float32 copy at half the memory. Against it:

* attention: on sampled steps (every ``check_every``), each sequence's
  paged attention output is compared with float32 dense attention over its
  rows (causal after its cached prefix); the largest relative error is the
  step's ``max_rel_err``, and one above the dtype tolerance raises;
* swap: the blocks a swap-in restores are bit-identical to what was
  swapped out (fingerprints taken at swap-out);
* copy-on-write: right after the copy, the child's block equals the
  parent's, bit for bit;
* prefix-cache hits: a hit block still holds what it held when it was
  filled (every block gets a fingerprint when its last slot is written).
  A sequence with a hit adopts the hit blocks' contents as its prefix rows:
  whether a hit is *allowed* is the allocator's business, tested in sim/.

Fingerprints are exact integer dot products of the blocks' bits with fixed
random weights (kept small enough that int64 never overflows), one per
layer and K/V: equal blocks always match, different ones collide with
negligible probability. NaN poison compares like any other bits.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from pagesim.gpu.batch import StepBatch
from pagesim.gpu.cache import PagedCache

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
DECODE_CHUNK = 32   # decoding sequences compared per batched reference
FP_CHUNK = 16       # blocks fingerprinted at once (bounds the int64 temporary)


class RowArena:
    """Dense K/V rows with reference counts: [layers, 2, capacity, heads, dim]."""

    def __init__(self, layers: int, heads: int, dim: int, dtype, device, capacity: int = 256) -> None:
        self.data = torch.empty(layers, 2, capacity, heads, dim, dtype=dtype, device=device)
        self.refs = np.zeros(capacity, dtype=np.int64)
        self.free = list(range(capacity - 1, -1, -1))

    def alloc(self, n: int) -> list[int]:
        while len(self.free) < n:
            self._grow()
        ids = [self.free.pop() for _ in range(n)]
        self.refs[ids] = 1
        return ids

    def share(self, ids: list[int]) -> None:
        self.refs[ids] += 1

    def release(self, ids: list[int]) -> None:
        """Drop one reference from each row (a sequence's rows are distinct)."""
        if ids:
            a = np.asarray(ids, dtype=np.int64)
            self.refs[a] -= 1
            self.free.extend(a[self.refs[a] == 0].tolist())

    def _grow(self) -> None:
        cap = self.data.shape[2]
        self.data = torch.cat([self.data, torch.empty_like(self.data)], dim=2)
        self.refs = np.concatenate([self.refs, np.zeros(cap, dtype=np.int64)])
        self.free.extend(range(2 * cap - 1, cap - 1, -1))


class Shadow:
    def __init__(self, cache: PagedCache, *, check_every: int, seed: int = 0) -> None:
        self.cache = cache
        L, _, _, bs, Hkv, D = cache.kv.shape
        self.block_size = bs
        self.tol = TOLERANCE[cache.dtype]
        self.int_view = INT_VIEW[cache.dtype]
        self.check_every = check_every
        self.arena = RowArena(L, Hkv, D, cache.dtype, cache.kv.device)
        self.seq_rows: dict[int, list[int]] = {}
        self.full_fp: dict[int, torch.Tensor] = {}              # GPU block -> fingerprint when filled
        self.cpu_fp: dict[int, tuple[torch.Tensor, bool]] = {}  # CPU block -> (fingerprint, was full)
        gen = torch.Generator().manual_seed(seed)
        self.weights = torch.randint(1, 1 << 16, (bs * Hkv * D,), generator=gen,
                                     dtype=torch.int64).to(cache.kv.device)
        self.checking = False
        self.max_err = float("nan")

    # ------------------------------------------------------ between steps
    def fork(self, parent: int, child: int) -> None:
        rows = list(self.seq_rows[parent])
        self.arena.share(rows)
        self.seq_rows[child] = rows

    def free(self, seq_id: int) -> None:
        """K/V released (finished or preempted): its rows go. The token
        history, which a recompute reuses, lives in the TokenBook."""
        self.arena.release(self.seq_rows.pop(seq_id, []))

    # ---------------------------------------------------- block movements
    def fingerprint(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), layers * 2] int64, exact function of the blocks' bits."""
        out = []
        for i in range(0, len(ids), FP_CHUNK):
            x = self.cache.blocks(ids[i:i + FP_CHUNK])
            ints = x.view(self.int_view).reshape(x.shape[0] * 2, x.shape[2], -1).to(torch.int64)
            out.append((ints * self.weights).sum(-1).T)
        return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.int64)

    def before_swap_out(self, pairs) -> None:
        if pairs:
            gpu = [g for g, _ in pairs]
            for (g, c), fp in zip(pairs, self.fingerprint(gpu)):
                self.cpu_fp[c] = (fp, g in self.full_fp)

    def after_swap_in(self, step: int, pairs) -> None:
        if not pairs:
            return
        now = self.fingerprint([g for _, g in pairs])
        for (c, g), fp in zip(pairs, now):
            assert c in self.cpu_fp, f"step {step}: swap-in of CPU block {c}, which was never swapped out"
            before, full = self.cpu_fp.pop(c)
            assert torch.equal(fp, before), (f"step {step}: swap-in of CPU block {c} into GPU block "
                                             f"{g} did not restore the blocks that were swapped out")
            if full:
                self.full_fp[g] = fp
            else:
                self.full_fp.pop(g, None)

    def after_cow(self, step: int, pairs) -> None:
        if not pairs:
            return
        src = self.cache.blocks([s for s, _ in pairs]).view(self.int_view)
        dst = self.cache.blocks([d for _, d in pairs]).view(self.int_view)
        differs = (src != dst).flatten(3).any(-1).any(0).any(0)  # [pairs]
        if differs.any():
            s, d = pairs[int(differs.nonzero()[0])]
            raise AssertionError(f"step {step}: copy-on-write of block {s} into block {d}: "
                                 f"the child's block differs from the parent's")
        for _, d in pairs:
            self.full_fp.pop(d, None)

    # ---------------------------------------------------------- the step
    def begin(self, batch: StepBatch) -> None:
        """Before the forward: give new tokens rows, adopt cached prefixes."""
        self.checking = self.check_every > 0 and batch.step % self.check_every == 0
        self._batch = batch
        self._mine = [self.arena.alloc(q) for q in batch.query_lens.tolist()]
        bs, self._filling = self.block_size, {}
        for i, (t, s, c) in enumerate(zip(batch.tables, batch.starts.tolist(), batch.context_lens.tolist())):
            for j in range(s // bs, c // bs):
                self._filling.setdefault(t[j], (i, j))
        for i, (sid, start) in enumerate(zip(batch.seq_ids, batch.starts.tolist())):
            rows = self.seq_rows.get(sid)
            if rows is None:
                rows = self._adopt(i) if start else []
                self.seq_rows[sid] = rows
            assert len(rows) == start, (f"seq {sid} step {batch.step}: the plan resumes at token "
                                        f"{start}, but the shadow holds {len(rows)}")
            rows.extend(self._mine[i])
        new = [r for rows in self._mine for r in rows]
        self._new = torch.tensor(new, dtype=torch.long, device=self.cache.kv.device)
        self._refs = self._reference_indices(batch) if self.checking else None
        self.max_err = 0.0 if self.checking else float("nan")

    def _row(self, i: int, pos: int) -> int:
        """Arena row of position ``pos`` of the batch's ``i``-th sequence."""
        start = int(self._batch.starts[i])
        return self._mine[i][pos - start] if pos >= start else self.seq_rows[self._batch.seq_ids[i]][pos]

    def _adopt(self, i: int) -> list[int]:
        """Rows of sequence ``i``'s cached prefix. A hit block that another
        sequence fills in this same step shares that sequence's rows; one
        filled earlier is checked intact, then copied from the cache."""
        b, bs = self._batch, self.block_size
        sid, table, start = b.seq_ids[i], b.tables[i], int(b.starts[i])
        assert start % bs == 0, f"seq {sid} step {b.step}: cached prefix {start} is not whole blocks"
        rows: list[int] = []
        old = []
        for j, blk in enumerate(table[:start // bs]):
            if blk in self._filling:
                w, jw = self._filling[blk]
                shared = [self._row(w, jw * bs + o) for o in range(bs)]
                self.arena.share(shared)
                rows.extend(shared)
            else:
                assert blk in self.full_fp, (f"seq {sid} step {b.step}: prefix-cache hit on block "
                                             f"{blk}, which was never filled")
                old.append((j, blk))
                rows.extend([-1] * bs)
        if old:
            self._copy_intact(sid, b.step, old, rows)
        return rows

    def _copy_intact(self, sid: int, step: int, old: list[tuple[int, int]], rows: list[int]) -> None:
        """Check blocks ``old`` (logical index, block) against their fingerprints
        and copy them into fresh rows at their places in ``rows``."""
        blocks = [blk for _, blk in old]
        same = (self.fingerprint(blocks) == torch.stack([self.full_fp[x] for x in blocks])).all(-1)
        if not bool(same.all()):
            blk = blocks[int((~same).nonzero()[0])]
            raise AssertionError(f"seq {sid} step {step}: prefix-cache hit on block {blk}, whose "
                                 f"contents changed since it was filled")
        bs = self.block_size
        fresh = self.arena.alloc(len(blocks) * bs)
        for k, (j, _) in enumerate(old):
            rows[j * bs:(j + 1) * bs] = fresh[k * bs:(k + 1) * bs]
        data = self.cache.blocks(blocks)
        idx = torch.tensor(fresh, dtype=torch.long, device=data.device)
        self.arena.data.index_copy_(2, idx, data.reshape(*data.shape[:2], -1, *data.shape[4:]))

    def layer_hook(self, layer: int, q, k, v, out) -> None:
        """Called by the model after each layer's attention."""
        self.arena.data[layer, 0].index_copy_(0, self._new, k)
        self.arena.data[layer, 1].index_copy_(0, self._new, v)
        if self.checking:
            self._compare(layer, q, out)

    def end(self) -> float:
        """After the forward: fingerprint the blocks this step filled."""
        for blk in np.unique(self._batch.slots // self.block_size).tolist():
            self.full_fp.pop(blk, None)
        filled = list(self._filling)
        for blk, fp in zip(filled, self.fingerprint(filled)):
            self.full_fp[blk] = fp
        return self.max_err

    # ------------------------------------------------- attention reference
    def _reference_indices(self, b: StepBatch) -> dict:
        """Arena rows of each checked sequence, on the device, once per step."""
        dev = self.cache.kv.device
        nd = b.num_decode
        chunks = []
        for i in range(0, nd, DECODE_CHUNK):
            ids = b.seq_ids[i:min(i + DECODE_CHUNK, nd)]
            width = max(len(self.seq_rows[s]) for s in ids)
            idx = np.zeros((len(ids), width), dtype=np.int64)
            valid = np.zeros((len(ids), width), dtype=bool)
            for j, s in enumerate(ids):
                r = self.seq_rows[s]
                idx[j, :len(r)], valid[j, :len(r)] = r, True
            chunks.append((i, torch.from_numpy(idx).to(dev), torch.from_numpy(valid).to(dev)))
        prefills = [(i, torch.tensor(self.seq_rows[b.seq_ids[i]], dtype=torch.long, device=dev))
                    for i in range(nd, len(b.seq_ids))]
        return {"decode": chunks, "prefill": prefills}

    def _compare(self, layer: int, q, out) -> None:
        b, rows = self._batch, self.arena.data[layer]
        for i, idx, valid in self._refs["decode"]:
            n = idx.shape[0]
            ref = dense_decode(q[i:i + n].float(), rows[0][idx].float(), rows[1][idx].float(), valid)
            self._judge(layer, range(i, i + n), out[i:i + n], ref)
        for i, idx in self._refs["prefill"]:
            r0, m = int(b.row0[i]), int(b.query_lens[i])
            ref = dense_prefill(q[r0:r0 + m].float(), rows[0][idx].float(), rows[1][idx].float(),
                                int(b.starts[i]))
            self._judge(layer, [i], out[r0:r0 + m][None], ref[None])

    def _judge(self, layer: int, seqs, out, ref) -> None:
        """Relative error per sequence (leading axis); raise above tolerance."""
        diff = (out.float() - ref).flatten(1).norm(dim=1)
        err = (diff / ref.flatten(1).norm(dim=1).clamp_min(1e-30)).tolist()
        for i, e in zip(seqs, err):
            if not e <= self.tol:  # NaN fails too
                sid = self._batch.seq_ids[i]
                raise AssertionError(f"seq {sid} step {self._batch.step} layer {layer}: paged "
                                     f"attention differs from dense reference, rel err {e:.3g} "
                                     f"(tolerance {self.tol:g})")
            self.max_err = max(self.max_err, e)


def dense_decode(q, k, v, valid) -> torch.Tensor:
    """q [n, H, D] over k, v [n, T, Hkv, D] where ``valid`` [n, T]; float32."""
    n, H, D = q.shape
    Hkv = k.shape[2]
    qg = q.view(n, Hkv, H // Hkv, D)
    s = torch.einsum("nkgd,ntkd->nkgt", qg, k) / math.sqrt(D)
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("nkgt,ntkd->nkgd", s.softmax(-1), v).reshape(n, H, D)


def dense_prefill(q, k, v, start: int) -> torch.Tensor:
    """q [m, H, D] at positions start.. over k, v [start + m, Hkv, D], causal; float32."""
    m, H, D = q.shape
    Hkv = k.shape[1]
    qg = q.view(m, Hkv, H // Hkv, D)
    s = torch.einsum("mkgd,ckd->kgmc", qg, k) / math.sqrt(D)
    pos = torch.arange(start, start + m, device=q.device)
    visible = torch.arange(k.shape[0], device=q.device)[None, :] <= pos[:, None]
    s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("kgmc,ckd->mkgd", s.softmax(-1), v).reshape(m, H, D)
