"""Behaviour profiles named by vLLM version: which vLLM pagesim imitates.

vLLM's scheduler and block pool changed in ways that move every block id,
cache hit and preemption. A profile is the set of those behaviours of one
vLLM release; each behaviour is also a switch of its own (``SchedulerConfig``
fields, ``--no-async-scheduling`` and friends), so a run can say "0.33, but
synchronous" as vLLM's own flags allow. The README's profile table gives the
vLLM source line and default of each behaviour.

``--scheduler v0`` is not a profile: the V0 block manager keeps its own
semantics (no null block, every free appended, the watermark always applied
and counted when deciding whether a request can ever fit).
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Behaviour:
    """The resolved behaviours of one run (see the module docstring)."""

    null_block: bool                    # block 0 reserved: N blocks, N - 1 usable
    unhashed_first: bool                # freed blocks without a hash go to the queue head
    cache_duplicates: bool              # equal-content full blocks all stay findable
    watermark: float                    # fraction of all blocks (null block included) kept free
    watermark_only_while_running: bool  # ... only when something is running
    scheduler_reserve_full_isl: bool    # admit a chunked prompt only if all of it fits
    async_scheduling: bool              # step k+1 scheduled before step k's output is applied


PROFILES: dict[str, Behaviour] = {
    # vLLM 0.33.0 (the default): today's V1.
    "0.33": Behaviour(null_block=True, unhashed_first=True, cache_duplicates=True, watermark=0.0,
                      watermark_only_while_running=True, scheduler_reserve_full_isl=True,
                      async_scheduling=True),
    # vLLM 0.11: the classic V1 that pagesim first modelled.
    "0.11": Behaviour(null_block=True, unhashed_first=False, cache_duplicates=False, watermark=0.0,
                      watermark_only_while_running=False, scheduler_reserve_full_isl=False,
                      async_scheduling=False),
}

#: The V0 block manager (``--scheduler v0``), whatever ``--vllm`` says.
V0 = Behaviour(null_block=False, unhashed_first=False, cache_duplicates=False, watermark=0.01,
               watermark_only_while_running=False, scheduler_reserve_full_isl=False,
               async_scheduling=False)

#: Behaviours that exist only in the V1 scheduler.
V1_ONLY = ("scheduler_reserve_full_isl", "async_scheduling")

BEHAVIOURS = tuple(f.name for f in fields(Behaviour))


def resolve(vllm: str, generation: str, overrides: dict) -> Behaviour:
    """The profile's behaviours with the explicitly set ones (not None) on top."""
    if vllm not in PROFILES:
        raise ValueError(f"vllm must be one of {', '.join(PROFILES)}, got {vllm!r}")
    base = V0 if generation == "v0" else PROFILES[vllm]
    values = {name: getattr(base, name) for name in BEHAVIOURS}
    for name, v in overrides.items():
        if v is None:
            continue
        if generation == "v0" and name in V1_ONLY and v:
            raise ValueError(f"{name} exists only in the V1 scheduler (not with --scheduler v0)")
        values[name] = v
    return Behaviour(**values)
