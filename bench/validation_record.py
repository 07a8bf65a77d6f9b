"""Assemble docs/validation.json and the figures in docs/validation/ from
``pagesim validate`` output folders, and print the markdown tables of
docs/validation.md (the prose around them is written by hand).

    python bench/validation_record.py NAME=DIR=COMMAND ... [--device TEXT]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from pagesim.validate import LATENCIES, TARGETS

ROOT = Path(__file__).resolve().parents[1]
FIGS = ("step_scatter.png", "step_error_cdf.png", "latency_cdfs.png")


def table(run: dict) -> str:
    st, e2e, ok = run["step_time"], run["end_to_end"], run["pass"]
    yes = lambda b: "yes" if b else "**no**"  # noqa: E731
    rows = ["| metric | calibrated | roofline | target | met |", "|---|---|---|---|---|",
            f"| step median \\|err\\| | {st['calibrated']['median_abs_rel_err']:.1%} | "
            f"{st['roofline']['median_abs_rel_err']:.1%} | 3 % | {yes(ok['step_median'])} |",
            f"| step p95 \\|err\\| | {st['calibrated']['p95_abs_rel_err']:.1%} | "
            f"{st['roofline']['p95_abs_rel_err']:.1%} | 8 % | {yes(ok['step_p95'])} |"]
    for regime in ("decode", "mixed"):
        c, r = st["calibrated"].get(regime), st["roofline"].get(regime)
        if c:
            rows.append(f"| {regime} steps ({c['steps']}): median / p95 \\|err\\|, sum ratio | "
                        f"{c['median_abs_rel_err']:.1%} / {c['p95_abs_rel_err']:.1%}, "
                        f"{c['sum_pred_over_sum_measured']:.3f} | {r['median_abs_rel_err']:.1%} / "
                        f"{r['p95_abs_rel_err']:.1%}, {r['sum_pred_over_sum_measured']:.3f} | | |")
    rows.append(f"| summed step time, simulated / measured | "
                f"{st['calibrated']['sum_pred_over_sum_measured']:.3f} | "
                f"{st['roofline']['sum_pred_over_sum_measured']:.3f} | 1 | |")
    for k in LATENCIES:
        c, r = e2e["calibrated"][k], e2e["roofline"][k]
        rows.append(f"| {k.removesuffix('_s')} (measured {c['measured'] * 1e3:.2f} ms) | "
                    f"{c['simulated'] * 1e3:.2f} ms ({c['rel_err']:+.1%}) | {r['simulated'] * 1e3:.2f} ms "
                    f"({r['rel_err']:+.1%}) | {TARGETS['latency']:.0%} | {yes(ok[k])} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="NAME=DIR=COMMAND")
    p.add_argument("--device", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--calibrate-command", required=True)
    args = p.parse_args()
    figs = ROOT / "docs" / "validation"
    shutil.rmtree(figs, ignore_errors=True)
    figs.mkdir(parents=True)
    runs = []
    for spec in args.runs:
        name, folder, command = spec.split("=", 2)
        run = json.loads((Path(folder) / "validation.json").read_text())
        run |= {"name": name, "command": command}
        for f in FIGS:
            shutil.copy(Path(folder) / f, figs / f"{name}_{f}")
        runs.append(run)
        g = run["gpu_clock"]
        print(f"## {name}: {run['trace']}\n\n`{command}`\n\n{run['requests']} requests, "
              f"{run['steps']} steps ({g['retimed_steps']} retimed, {g['launch_gap_steps']} with a "
              f"launch gap left, {g['left_out_steps']} left out). Memory identical step by step: "
              f"{'yes' if run['memory']['identical'] else 'NO'}.\n\n{table(run)}\n")
    record = {"device": args.device, "date": args.date,
              "calibration": "calibration/llama-3-8b_h200.json",
              "calibrate_command": args.calibrate_command,
              "targets": {"step_median": 0.03, "step_p95": 0.08, "latency_means": 0.03},
              "runs": runs}
    (ROOT / "docs" / "validation.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
