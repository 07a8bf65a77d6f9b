"""Decode launch-config sweep, timed in interleaved rounds against dense SDPA (KERNEL_NOTES.md, run 6).

    python bench/sweep_decode.py [--rounds 3] [--shapes 1x32768,8x4096] [--block-sizes 8,16]
                                 [--default-only] [--out DIR]

bench_kernels.py times each variant once, one after the other; differences of
1-2 % between configs were then within the spread between two timings of the
same kernel. Here each round times SDPA, the current default and every variant
of a shape back to back, the rounds rotate the order, and a variant's time is
its median over rounds; ``spread`` (max - min over rounds) says how far apart
two variants must be before the difference counts.

The candidates per shape are chosen by occupancy (programs per SM from each
config's shared memory and registers, read off an sm_90 compile): split counts
that fill whole waves of resident programs, and the K/V buffer depths that
``bt_ahead`` (block ids loaded a tile ahead) makes available. A ragged batch
(NaN-poisoned padding) checks every candidate against the float32 reference
before any timing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

import bench_kernels as B  # noqa: E402
from pagesim.gpu.kernels.paged_decode import MAX_SPLITS, decode_config  # noqa: E402


def cfg(tile, warps, stages, splits, ahead):
    return dict(tile_n=tile, num_warps=warps, num_stages=stages, num_splits=splits, bt_ahead=ahead)


def candidates(batch: int, ctx: int, block_size: int = 16) -> list[dict]:
    """Configs worth timing at one shape (groups = batch * 8 KV heads): run 6's first sweep at block 16;
    at other block sizes the default against the nearest alternatives (deeper or more programs, old form)."""
    groups = batch * B.KV_HEADS
    c = []
    if block_size != 16:  # the two tables' rows (block 16 / small blocks) and the nearest others
        if groups <= 132:
            return [cfg(64, 4, 3, 132 // groups, True), cfg(64, 4, 3, 264 // groups, True),
                    cfg(64, 4, 4, 132 // groups, True)]
        return [cfg(64, 4, 3, 1, True), cfg(128, 4, 4, 1, False), cfg(32, 4, 4, 1, True)]
    if groups <= 8:                      # one sequence: split deep
        c += [cfg(64, 4, 5, s, False) for s in (16, 32, 48)]
        c += [cfg(64, 4, 3, s, True) for s in (16, 32, 48)]
        c += [cfg(64, 4, 4, s, True) for s in (16, 32)]
        c += [cfg(64, 4, 5, 16, True), cfg(128, 4, 3, 16, True)]
        c += [cfg(32, 4, 4, s, True) for s in (32, 64)]
        c += [cfg(32, 4, 5, s, True) for s in (32, 48)]
        c += [cfg(32, 4, 3, 64, True)]
    elif groups <= 132:                  # 8 x 4096: 64 groups
        c += [cfg(64, 4, 3, s, False) for s in (2, 4, 5, 6, 8)]
        c += [cfg(64, 4, 5, s, False) for s in (2, 4, 6)]
        c += [cfg(64, 4, 3, s, True) for s in (2, 4, 6)]
        c += [cfg(64, 4, 4, s, True) for s in (2, 4)]
        c += [cfg(32, 4, 4, s, True) for s in (4, 8)]
        c += [cfg(32, 4, 5, s, True) for s in (4, 6)]
        c += [cfg(128, 4, 3, 2, True), cfg(64, 4, 5, 2, True)]
    elif groups <= 396:                  # 32 x 2048: 256 groups
        c += [cfg(128, 4, 4, 1, False), cfg(64, 4, 3, 1, False), cfg(64, 4, 3, 2, False)]
        c += [cfg(64, 4, 3, 1, True), cfg(64, 4, 4, 1, True), cfg(64, 4, 2, 2, True)]
        c += [cfg(32, 4, 4, 1, True), cfg(32, 4, 4, 2, True), cfg(32, 4, 5, 1, True), cfg(32, 4, 3, 2, True)]
        c += [cfg(32, 4, 6, 1, True), cfg(128, 4, 2, 1, True)]
    else:                                # no split
        c += [cfg(64, 4, 3, 1, False), cfg(64, 4, 2, 1, False), cfg(64, 4, 3, 1, True), cfg(64, 4, 2, 1, True),
              cfg(64, 4, 4, 1, True), cfg(32, 4, 4, 1, True), cfg(32, 4, 3, 1, True)]
    return c


def name(c: dict) -> str:
    ahead = " ahead" if c["bt_ahead"] else ""
    return f"t{c['tile_n']} w{c['num_warps']} s{c['num_stages']} x{c['num_splits']}{ahead}"


def effective(c: dict, ctx: int) -> dict:
    """The split count the launcher will really use (it evens tiles per split out)."""
    tiles = triton.cdiv(ctx, c["tile_n"])
    per = triton.cdiv(tiles, min(c["num_splits"], tiles, MAX_SPLITS))
    return dict(c, num_splits=triton.cdiv(tiles, per))


def ragged_check(configs: list[dict], log) -> None:
    """Each config on a ragged batch (lengths 0..8k, shared and padded tables, pad block = NaN poison)
    against the float32 reference: reading past a context or mis-merging a split shows up here."""
    import pagesim.gpu.kernels as K

    gen = torch.Generator().manual_seed(6)
    lens, bs = [8192, 100, 0, 4097, 1, 2048, 777, 16], 16
    need = [triton.cdiv(n, bs) for n in lens]
    kc = torch.randn(1 + sum(need), bs, B.KV_HEADS, B.HEAD_DIM, generator=gen).to(B.DTYPE)
    vc = torch.randn_like(kc)
    kc[0], vc[0] = float("nan"), float("nan")
    ids = (torch.randperm(sum(need), generator=gen) + 1).tolist()
    bt = torch.zeros(len(lens), max(need), dtype=torch.int32)
    for b, n in enumerate(need):
        bt[b, :n] = torch.tensor([ids.pop() for _ in range(n)], dtype=torch.int32)
    bt[1, 0] = bt[0, 0]
    q = torch.randn(len(lens), B.HEADS, B.HEAD_DIM, generator=gen).to(B.DTYPE)
    kc, vc, bt, q = (x.cuda() for x in (kc, vc, bt, q))
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    ref = K.paged_decode_ref(q, kc, vc, bt, ctx)
    for c in configs:
        out = K.paged_decode(q, kc, vc, bt, ctx, **c)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert torch.isfinite(out).all() and err < 2e-2, f"ragged {name(c) if c else 'default'}: {err:.2e}"
    log(f"ragged check: {len(configs)} configs, all within 2e-2")


def sweep_shape(batch: int, ctx: int, block_size: int, rounds: int, log, with_candidates: bool = True) -> dict:
    case = B.DecodeCase(batch, ctx, block_size=block_size)
    case.check(case.paged_fns()[0]())  # the float32 reference before any timing (run 3)
    default = decode_config(torch.device("cuda"), batch * B.KV_HEADS, ctx, block_size, B.HEAD_DIM)
    variants = {"default": {}}
    for c in candidates(batch, ctx, block_size) if with_candidates else ():
        c = effective(c, ctx)
        variants.setdefault(name(c), c)
    fns = {"sdpa": case.sdpa_fns()}
    errs = {}
    for n, kw in variants.items():
        try:
            errs[n] = case.check(case.paged_fns(**kw)[0]())
        except Exception as e:  # shared memory over the limit, etc.
            log(f"  {batch}x{ctx} {n}: {type(e).__name__}: {str(e)[:100]}")
            continue
        assert errs[n] < 2e-2, f"{batch}x{ctx} {n}: relative error {errs[n]:.2e}"
        fns[n] = case.paged_fns(**kw)
    B.graph_time(fns["sdpa"])  # discarded (runs 1-3)
    times = {n: [] for n in fns}
    order = list(fns)
    for r in range(rounds):
        k = r * len(order) // rounds
        for n in order[k:] + order[:k]:
            times[n].append(B.graph_time(fns[n]) * 1e6)
    sdpa = statistics.median(times["sdpa"])
    keys = ("tile_n", "num_warps", "num_stages", "num_splits", "bt_ahead")
    res = dict(batch=batch, ctx=ctx, block_size=block_size, default={k: default[k] for k in keys},
               sdpa_us=sdpa, variants={})
    for n, ts in times.items():
        med = statistics.median(ts)
        res["variants"][n] = dict(us=med, spread=max(ts) - min(ts), gap=100 * (med / sdpa - 1), err=errs.get(n),
                                  times=ts)
    log(json.dumps(dict(shape=f"{batch}x{ctx} b{block_size}",
                        **{n: round(v["us"], 2) for n, v in res["variants"].items()})))
    del case, fns
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(f"{b}x{c}" for b, c in B.SHAPES))
    ap.add_argument("--top", type=int, default=6, help="variants per shape in the printed table")
    ap.add_argument("--block-sizes", default="16", help="comma-separated; each shape at each block size")
    ap.add_argument("--default-only", action="store_true", help="time only SDPA and the default config")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()

    def log(msg):
        print(msg, flush=True)

    blocks = [int(x) for x in args.block_sizes.split(",")]
    shapes = [tuple(int(x) for x in s.split("x")) + (bs,) for s in args.shapes.split(",") for bs in blocks]
    ragged_check([{}] if args.default_only else
                 list({name(c): c for b, n, bs in shapes for c in candidates(b, n, bs)}.values()), log)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, shapes=[])
    for batch, ctx, bs in shapes:
        res["shapes"].append(sweep_shape(batch, ctx, bs, args.rounds, log, not args.default_only))
        with open(os.path.join(args.out, "sweep.json"), "w") as f:
            json.dump(res, f, indent=1)
    print(f"\n{res['device']}: median of {args.rounds} rounds, us (gap to SDPA, spread)")
    for s in res["shapes"]:
        v = s["variants"]
        best = sorted((n for n in v if n != "sdpa"), key=lambda n: v[n]["us"])[: args.top]
        cells = [f"{n} {v[n]['us']:.1f} ({v[n]['gap']:+.1f}%, {v[n]['spread']:.1f})"
                 for n in dict.fromkeys(["default"] + best)]
        print(f"{s['batch']}x{s['ctx']} b{s['block_size']} sdpa {s['sdpa_us']:.1f} "
              f"(spread {v['sdpa']['spread']:.1f}) | " + " | ".join(cells))


if __name__ == "__main__":
    main()
