"""Frozen, validated configuration of the scheduler and engine.

Each field's metadata declares its command-line option once (help, parse
check, choices; see ``_help``): ``pagesim.generated_options`` generates
the options from it with tyro.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from pagesim.sim.policies import ORDER_POLICIES, VICTIM_POLICIES
from pagesim.sim.vllm_profile import BEHAVIOURS, PROFILES, Behaviour, resolve


def _help(text: str, *, check: str | None = None, choices=None, cli: str | None = None, **kw):
    """A field with what its command-line option needs, declared once here:
    help text, the CLI's parse-time ``check`` (a name in
    ``pagesim.options.CHECKS``: the core imports nothing of the CLI),
    ``choices``, and the option's name when it is not the field's."""
    meta = {"help": text}
    if check is not None:
        meta["check"] = check
    if choices is not None:
        meta["choices"] = tuple(choices)
    if cli is not None:
        meta["cli"] = cli
    return field(metadata=meta, **kw)


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM's scheduler knobs, and the vLLM release whose behaviour is imitated."""

    max_num_seqs: int = _help("most sequences running at once (vLLM max_num_seqs)",
                              check="positive_int", default=256)
    max_num_batched_tokens: int = _help("token budget of one step (vLLM max_num_batched_tokens)",
                                        check="positive_int", default=8192)
    chunked_prefill: bool = _help("split long prompts into chunks within the token budget; "
                                  "decodes are scheduled first", default=True)
    vllm: str = _help("behaviour profile: the vLLM version imitated step for step "
                      f"({', '.join(PROFILES)}); each behaviour below overrides it",
                      choices=PROFILES, default="0.33")
    watermark: float | None = _help("fraction of all GPU blocks (null block included) kept free "
                                    "when admitting requests (vLLM watermark); default: the "
                                    "profile's (0.0; V0: 0.01); in [0, 1)", check="watermark",
                                    default=None)
    watermark_only_while_running: bool | None = _help(
        "apply the watermark only while some request runs (vLLM 0.33); default: the profile's",
        default=None)
    scheduler_reserve_full_isl: bool | None = _help(
        "admit a waiting request whose prefill would be chunked only if the blocks for its whole "
        "prompt fit (vLLM scheduler_reserve_full_isl); default: the profile's (0.33: on)",
        default=None)
    async_scheduling: bool | None = _help(
        "schedule step k+1 before step k's output is applied, so finishes and the blocks they "
        "free take effect one step later (vLLM async_scheduling); default: the profile's "
        "(0.33: on)", default=None)
    null_block: bool | None = _help("reserve block 0 as vLLM V1's null block (N blocks, N-1 "
                                    "usable); default: the profile's (V1: on, V0: off)",
                                    default=None)
    unhashed_first: bool | None = _help(
        "freed blocks without a hash go to the head of the free queue, reused first (vLLM 0.33 "
        "block_pool.free_blocks); default: the profile's", default=None)
    cache_duplicates: bool | None = _help(
        "keep every full block of equal content findable under its hash (vLLM 0.33); default: "
        "the profile's", default=None)
    generation: str = _help("v1: recompute-only preemption, n>1 as child requests sharing the "
                            "prompt through the prefix cache; v0: sequence groups with "
                            "fork/copy-on-write, swap or recompute preemption",
                            choices=("v1", "v0"), cli="scheduler", default="v1")
    preemption: str = _help("recompute or swap (swap needs v0 and a CPU pool)",
                            choices=("recompute", "swap"), default="recompute")
    order: str = _help("queue order (sim/policies.py): fcfs (arrival, vLLM default) or priority "
                       "(lower value first, then arrival)", choices=ORDER_POLICIES, default="fcfs")
    victim: str = _help("preemption victim (sim/policies.py): latest (arrival, vLLM default), "
                        "priority (largest value), most-blocks (most KV blocks held)",
                        choices=VICTIM_POLICIES, default="latest")
    max_model_len: int | None = _help("longest request, prompt + output tokens (default: the "
                                      "model's, filled in by ReplayConfig)", check="max_model_len",
                                      default=None)

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            v = getattr(self, name)
            if name == "max_model_len" and v is None:
                continue
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.watermark is not None and not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.generation not in ("v1", "v0"):
            raise ValueError(f"generation must be v1 or v0, got {self.generation!r}")
        self.behaviour  # validates the profile and the overrides
        if self.preemption not in ("recompute", "swap"):
            raise ValueError(f"preemption must be recompute or swap, got {self.preemption!r}")
        if self.preemption == "swap" and self.generation != "v0":
            raise ValueError("swap preemption exists only in the v0 scheduler (--scheduler v0)")
        if self.order not in ORDER_POLICIES:
            raise ValueError(f"order must be one of {', '.join(ORDER_POLICIES)}, got {self.order!r}")
        if self.victim not in VICTIM_POLICIES:
            raise ValueError(f"victim must be one of {', '.join(VICTIM_POLICIES)}, got {self.victim!r}")

    @property
    def behaviour(self) -> Behaviour:
        """The profile's behaviours with this configuration's overrides."""
        return resolve(self.vllm, self.generation, {n: getattr(self, n) for n in BEHAVIOURS})

    @property
    def token_budget(self) -> int:
        """Without chunked prefill a whole prompt must fit in one step, so the
        budget is at least the longest sequence (as vLLM sets it)."""
        if self.chunked_prefill:
            return self.max_num_batched_tokens
        return max(self.max_num_batched_tokens, self.max_model_len or 0)


def config_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}
