"""Frozen, validated configuration of the scheduler and engine.

Field help texts double as CLI help (``pagesim/cli.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from pagesim.sim.policies import ORDER_POLICIES, VICTIM_POLICIES


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = _help("most sequences running at once (vLLM max_num_seqs)", default=256)
    max_num_batched_tokens: int = _help("token budget of one step (vLLM max_num_batched_tokens)",
                                        default=8192)
    chunked_prefill: bool = _help("split long prompts into chunks within the token budget; "
                                  "decodes are scheduled first", default=True)
    watermark: float = _help("fraction of GPU blocks kept free when admitting new requests",
                             default=0.01)
    generation: str = _help("v1: recompute-only preemption, n>1 as child requests sharing the "
                            "prompt through the prefix cache; v0: sequence groups with "
                            "fork/copy-on-write, swap or recompute preemption", default="v1")
    preemption: str = _help("recompute or swap (swap needs v0 and a CPU pool)", default="recompute")
    order: str = _help("queue order (sim/policies.py): fcfs (arrival, vLLM default) or priority "
                       "(lower value first, then arrival)", default="fcfs")
    victim: str = _help("preemption victim (sim/policies.py): latest (arrival, vLLM default), "
                        "priority (largest value), most-blocks (most KV blocks held)",
                        default="latest")
    max_model_len: int | None = _help("longest sequence (prompt + output) admitted; None: the "
                                      "model preset's (filled in by ReplayConfig)", default=None)

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            v = getattr(self, name)
            if name == "max_model_len" and v is None:
                continue
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.generation not in ("v1", "v0"):
            raise ValueError(f"generation must be v1 or v0, got {self.generation!r}")
        if self.preemption not in ("recompute", "swap"):
            raise ValueError(f"preemption must be recompute or swap, got {self.preemption!r}")
        if self.preemption == "swap" and self.generation != "v0":
            raise ValueError("swap preemption exists only in the v0 scheduler (--scheduler v0)")
        if self.order not in ORDER_POLICIES:
            raise ValueError(f"order must be one of {', '.join(ORDER_POLICIES)}, got {self.order!r}")
        if self.victim not in VICTIM_POLICIES:
            raise ValueError(f"victim must be one of {', '.join(VICTIM_POLICIES)}, got {self.victim!r}")

    @property
    def token_budget(self) -> int:
        """Without chunked prefill a whole prompt must fit in one step, so the
        budget is at least the longest sequence (as vLLM sets it)."""
        if self.chunked_prefill:
            return self.max_num_batched_tokens
        return max(self.max_num_batched_tokens, self.max_model_len or 0)


def config_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}
