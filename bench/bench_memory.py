"""Peak memory of long replays: is it bounded for millions of steps and requests?

Each case runs ``pagesim replay`` (the CLI, writing its outputs and plots to
a temporary folder) in a fresh Python process and reports that process's
peak resident set size (``VmHWM``), so that no case inherits another's heap.

1. ``tight``: N ShareGPT-like requests (default 100,000) at the default
   20 req/s on a pool of 200 blocks of 16 tokens: a few sequences at a time,
   about 64 engine steps per request (6.4 M steps for 100k requests).
2. ``memory-full``: M ShareGPT-like requests (default 1,000,000) at
   100 req/s with up to 2,048 running sequences, prefix caching off: the
   setting of ``bench/bench_sim.py``, with the KV cache ~98 % full.

``baseline`` is a process that only imports what the CLI imports. Prints a
table; record the results in BENCHMARKS.md. ``PYTHONPATH`` picks the
checkout measured (e.g. another worktree, for a before/after comparison).

    python bench/bench_memory.py [--tight 100000] [--full 1000000] [--only tight|memory-full]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cases(a) -> dict[str, list[str]]:
    common = ["--workload", "sharegpt", "--quiet"]
    return {
        "tight": common + ["--num-requests", str(a.tight), "--num-gpu-blocks", "200"],
        "memory-full": common + ["--num-requests", str(a.full), "--rate", "100", "--max-num-seqs", "2048",
                                 "--no-prefix-caching"],
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def child(result_path: str, cli_args: list[str]) -> None:
    """Run inside a fresh process: the command as a user runs it
    (``python -m pagesim``, in a process of its own, whose peak RSS is read
    from ``getrusage`` once it has exited), or the baseline imports here."""
    t = time.perf_counter()
    if cli_args:
        import resource
        subprocess.run([sys.executable, "-m", "pagesim", *cli_args], check=True, stdout=subprocess.DEVNULL)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    else:  # baseline: the modules a replay that writes parquet and plots loads
        import pyarrow.parquet  # noqa: F401

        import pagesim.analysis.plots  # noqa: F401
        import pagesim.replay  # noqa: F401
        from pagesim import traces  # noqa: F401
        peak_mb = peak_rss_mb()
    wall = time.perf_counter() - t
    out = {"peak_mb": peak_mb, "wall_s": wall}
    if "--out" in cli_args:
        summary = json.loads((Path(cli_args[cli_args.index("--out") + 1]) / "summary.json").read_text())
        out["requests"] = summary["requests"]["total"]
        out["steps"] = summary["sim"]["steps"]
    Path(result_path).write_text(json.dumps(out))


def measure(cli_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        args = ["replay", *cli_args, "--out", str(Path(tmp) / "out")] if cli_args else []
        subprocess.run([sys.executable, __file__, "--child", str(res), *args], check=True,
                       stdout=subprocess.DEVNULL)  # the CLI's summary; errors still show
        return json.loads(res.read_text())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tight", type=int, default=100_000, help="requests of the tight-pool case")
    ap.add_argument("--full", type=int, default=1_000_000, help="requests of the memory-full case")
    ap.add_argument("--only", choices=["tight", "memory-full"], help="run one case")
    a = ap.parse_args()
    import numpy
    import pandas
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, numpy {numpy.__version__}, pandas {pandas.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'case':<14}{'requests':>11}{'steps':>12}{'wall s':>9}{'peak RSS MB':>13}{'B/step':>9}")
    base = measure([])
    print(f"{'baseline':<14}{'':>11}{'':>12}{'':>9}{base['peak_mb']:>13,.0f}{'':>9}", flush=True)
    for name, args in cases(a).items():
        if a.only and name != a.only:
            continue
        r = measure(args)
        per_step = (r["peak_mb"] - base["peak_mb"]) * 2**20 / r["steps"]
        print(f"{name:<14}{r['requests']:>11,}{r['steps']:>12,}{r['wall_s']:>9.1f}{r['peak_mb']:>13,.0f}"
              f"{per_step:>9,.0f}", flush=True)


if __name__ == "__main__":
    main()
