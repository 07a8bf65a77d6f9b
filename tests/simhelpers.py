"""Small helpers shared by the simulator tests."""
import numpy as np

from pagesim.sim.config import SchedulerConfig
from pagesim.sim.event_log import EventLog
from pagesim.replay import ReplayConfig
from pagesim.traces import Request, Trace


class LinearCost:
    """A cost model with round numbers: 1 s per step + 1/8 s per token
    (binary fractions, so times are exact); a swapped block costs 1/2 s,
    in the step or on a PCIe link (``swap_block_s``)."""

    swap_block_s = 0.5

    def price(self, shapes):
        return 1.0 + shapes.num_tokens.astype(np.float64) / 8 + shapes.swap_blocks * 0.5


class ScalarLinearCost(LinearCost):
    """The same prices, also through the scalar ``price_one`` path."""

    def price_one(self, num_seqs, num_tokens, kv_tokens_read, attn_pairs, copy_blocks=0, swap_blocks=0):
        return 1.0 + float(num_tokens) / 8 + float(swap_blocks) * 0.5


def trace_of(*rows, **kw):
    """rows: (arrival_s, prompt, output) or dicts of Request fields."""
    reqs = []
    for i, r in enumerate(rows):
        if isinstance(r, dict):
            reqs.append(Request(id=i, **r))
        else:
            reqs.append(Request(id=i, arrival_s=r[0], prompt_tokens=r[1], output_tokens=r[2], **kw))
    return Trace(reqs, source="test")


def config(num_blocks=16, block_size=4, *, caching=False, **sched):
    sched.setdefault("watermark", 0.0)
    # The exact scenarios of the engine tests were worked out for the classic
    # V1 profile with every block usable; tests of vLLM 0.33's behaviours
    # (tests/test_vllm_profiles.py) ask for them explicitly.
    sched.setdefault("vllm", "0.11")
    sched.setdefault("null_block", False)
    sched.setdefault("max_model_len", 4096)
    return ReplayConfig(num_gpu_blocks=num_blocks, block_size=block_size, prefix_caching=caching,
                        scheduler=SchedulerConfig(**sched), events=True,
                        num_cpu_blocks=None)


class EventBudget:
    """Fail (instead of hanging the suite) once replays in this block log more
    than ``limit`` allocator events: for regression tests of livelocks.

    A livelock moves blocks back and forth forever (swap out, swap in,
    allocate, free), and every move is an event of the log (replays built by
    ``config`` keep one), so this bounds the work done, within a step or
    across steps, whatever the machine's speed. Pick ``limit`` well above
    the count the fixed code needs (say it beside the call).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def __enter__(self):
        budget, add = self, EventLog.add

        def counted(log, *args, **kwargs):
            budget.count += 1
            if budget.count > budget.limit:
                raise AssertionError(f"more than {budget.limit} allocator events: livelock?")
            return add(log, *args, **kwargs)

        self._original = add
        EventLog.add = counted
        return self

    def __exit__(self, *exc):
        EventLog.add = self._original
        return False
