"""Trace speed: loading real traces, generating and saving synthetic ones,
computing page keys.

These were wall-clock assertions in the tests (a load under 3 s, a million
requests under 8 s, page keys under 1 ms a request); a busy machine failed
them for reasons that had nothing to do with the code, so they are measured
here instead, against the same budgets. Prints a table; record the results
in BENCHMARKS.md.

    python bench/bench_traces.py [--requests 1000000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from pagesim.traces import load_trace, page_keys, synthetic

RAW = Path(__file__).resolve().parents[2] / "shared" / "traces" / "raw"
AZURE = ("AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv")


def best_of(repeat: int, fn) -> float:
    """The fastest of ``repeat`` runs: the least disturbed by other load."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cases(requests: int, tmp: Path):
    """(name, budget in seconds, what the budget is per, callable)."""
    for name in AZURE:
        path = RAW / name
        if path.is_file():
            yield f"load {name}", 3.0, "load", lambda p=path: load_trace(p)
    yield f"synthetic {requests:,} requests", 8.0, "call", \
        lambda: synthetic(num_requests=requests, rate=100.0, seed=0)
    big = tmp / "big.parquet"
    synthetic(num_requests=requests, rate=100.0, seed=0).save(big)
    yield f"load {requests:,} requests (parquet)", 8.0, "load", lambda: load_trace(big)
    hashes = tuple(range(64))  # a 32k-token Mooncake prompt, 512-token hash blocks
    yield "page_keys, 32k-token prompt (per request)", 1e-3, "request", \
        lambda: [page_keys(hashes, 512, 32000, 16) for _ in range(2000)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"best of {a.repeat}")
    print(f"{'case':<48}{'seconds':>10}{'budget':>10}{'within':>8}")
    with tempfile.TemporaryDirectory(prefix="bench_traces_") as tmp:
        for name, budget, per, fn in cases(a.requests, Path(tmp)):
            t = best_of(a.repeat, fn)
            if per == "request":
                t /= 2000
            print(f"{name:<48}{t:>10.4g}{budget:>10.4g}{'yes' if t < budget else 'NO':>8}", flush=True)


if __name__ == "__main__":
    main()
