"""pagesim.traces: request traces in, ``Trace`` objects out.

Read real traces (Azure, Mooncake, Vidur/Splitwise, length-only samples,
token-id JSONL, pagesim's own Parquet/CSV) with ``load_trace``; generate
seeded synthetic workloads with ``synthetic`` / ``default_workload``; map a
request's hash blocks to the simulator's pages with ``page_keys``. Bad input
raises ``TraceError`` naming the file, line and problem.
"""
from pagesim.traces.arrivals import Gamma, Poisson, Replay, rescale
from pagesim.traces.errors import TraceError, TraceWarning
from pagesim.traces.lengths import EmpiricalLengths, FixedLengths, LognormalLengths, length_sampler
from pagesim.traces.load import FORMATS, apply_max_model_len, load_trace, parse_arrival, read_table
from pagesim.traces.pages import page_keys
from pagesim.traces.readers import detect_format
from pagesim.traces.request import Request
from pagesim.traces.stats import format_stats, prefix_reuse, trace_stats
from pagesim.traces.synthetic import DEFAULT_RATE, default_workload, synthetic
from pagesim.traces.trace import Trace

__all__ = [
    "Request", "Trace", "TraceError", "TraceWarning",
    "load_trace", "read_table", "detect_format", "FORMATS", "apply_max_model_len",
    "synthetic", "default_workload", "DEFAULT_RATE",
    "Poisson", "Gamma", "Replay", "parse_arrival", "rescale",
    "LognormalLengths", "FixedLengths", "EmpiricalLengths", "length_sampler",
    "page_keys", "trace_stats", "prefix_reuse", "format_stats",
]
