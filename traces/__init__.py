"""pagesim.traces: request traces in, ``Trace`` objects out.

Read real traces (Azure, Mooncake, Vidur/Splitwise, length-only samples,
token-id JSONL, pagesim's own Parquet/CSV) with ``load_trace``; generate
seeded synthetic workloads with ``synthetic`` / ``default_workload``; map a
request's hash blocks to the simulator's pages with ``page_keys``. Bad input
raises ``TraceError`` naming the file, line and problem.
"""
from traces.arrivals import Gamma, Poisson, Replay, parse_arrival, rescale
from traces.errors import TraceError, TraceWarning
from traces.lengths import EmpiricalLengths, FixedLengths, LognormalLengths, length_sampler
from traces.load import FORMATS, apply_max_model_len, load_trace, read_table
from traces.pages import page_keys
from traces.readers import detect_format
from traces.request import Request
from traces.stats import format_stats, prefix_reuse, trace_stats
from traces.synthetic import DEFAULT_RATE, default_workload, synthetic
from traces.trace import Trace

__all__ = [
    "Request", "Trace", "TraceError", "TraceWarning",
    "load_trace", "read_table", "detect_format", "FORMATS", "apply_max_model_len",
    "synthetic", "default_workload", "DEFAULT_RATE",
    "Poisson", "Gamma", "Replay", "parse_arrival", "rescale",
    "LognormalLengths", "FixedLengths", "EmpiricalLengths", "length_sampler",
    "page_keys", "trace_stats", "prefix_reuse", "format_stats",
]
