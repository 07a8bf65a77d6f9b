"""Routing policies: which replica serves an arriving request.

A router sees each replica through ``ReplicaView`` (its load and what its
prefix cache holds) at the request's arrival time and returns a replica
index. Policies are small registered classes, like the scheduling policies:
``@register_router("name")`` makes a new one available to ``--router``
without touching the engine.

* ``round-robin``: replicas in turn, whatever their state.
* ``least-outstanding``: fewest outstanding tokens (prompt + output of the
  requests routed there and not finished: queued and running work).
* ``prefix-aware``: the replica whose prefix cache holds the longest prefix
  of the request, as SGLang's cache-aware router and llm-d's scheduler do,
  unless the load is unbalanced (the busiest replica has more than
  ``balance_rel`` times the least busy one's outstanding tokens and more
  than ``balance_abs`` tokens more), in which case the least busy wins;
  ties go to the least busy, then the lowest index.
"""
from __future__ import annotations

from typing import Protocol


class ReplicaView(Protocol):
    """What a router may read of a replica."""

    index: int

    def outstanding_tokens(self) -> int:
        """Prompt + output tokens of the requests routed here and not finished."""
        ...

    def cached_prefix_tokens(self, req) -> int:
        """Leading prompt tokens of ``req`` this replica's prefix cache holds."""
        ...


class Router(Protocol):
    def route(self, req, replicas: list[ReplicaView]) -> int:
        ...


ROUTERS: dict[str, type] = {}


def register_router(name: str):
    def deco(cls):
        ROUTERS[name] = cls
        cls.name = name
        return cls
    return deco


def make_router(name: str, **options) -> Router:
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}")
    return ROUTERS[name](**options)


def least_busy(replicas: list[ReplicaView]) -> int:
    """Index of the replica with the fewest outstanding tokens (lowest index on ties)."""
    return min(replicas, key=lambda r: (r.outstanding_tokens(), r.index)).index


@register_router("round-robin")
class RoundRobin:
    def __init__(self) -> None:
        self.next = 0

    def route(self, req, replicas) -> int:
        i = self.next % len(replicas)
        self.next += 1
        return i


@register_router("least-outstanding")
class LeastOutstanding:
    def route(self, req, replicas) -> int:
        return least_busy(replicas)


@register_router("prefix-aware")
class PrefixAware:
    def __init__(self, balance_rel: float = 1.5, balance_abs: int = 32_768) -> None:
        if balance_rel < 1 or balance_abs < 0:
            raise ValueError("prefix-aware router: balance_rel must be >= 1 and balance_abs >= 0")
        self.balance_rel, self.balance_abs = balance_rel, balance_abs

    def route(self, req, replicas) -> int:
        loads = [r.outstanding_tokens() for r in replicas]
        lo, hi = min(loads), max(loads)
        if hi > self.balance_rel * lo and hi - lo > self.balance_abs:
            return least_busy(replicas)
        best = max(replicas, key=lambda r: (r.cached_prefix_tokens(req), -loads[r.index], -r.index))
        return best.index
