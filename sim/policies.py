"""Scheduling policies: queue order and preemption victim, each a small
registered class.

Two separate questions, two registries:

* an **order** policy gives every group a key; the scheduler serves the
  waiting queue smallest key first and keeps its running list in key order
  (``--order``);
* a **victim** policy chooses which running group gives up its memory when
  another cannot get slots (``--victim``).

Adding a policy needs no change to the scheduler::

    from pagesim.sim.policies import register_victim

    @register_victim("fewest-tokens")
    class FewestTokens:
        def pick(self, candidates, kv):
            return min(candidates, key=lambda g: g.seqs[0].computed)

    SchedulerConfig(victim="fewest-tokens")   # or --victim fewest-tokens

A policy is looked up by name when the scheduler is built; register it
before then (before the CLI parses its arguments, for it to be a choice).
"""
from __future__ import annotations

from operator import attrgetter
from typing import Callable, Protocol, Sequence, runtime_checkable

from pagesim.sim.sequence import Group


@runtime_checkable
class OrderPolicy(Protocol):
    def key(self, g: Group) -> tuple:
        """The group's place in line, smallest first. Keys must be unique
        (end them with ``g.gid``) and must not change while the group
        lives: the running list is kept sorted by them."""
        ...


@runtime_checkable
class VictimPolicy(Protocol):
    def pick(self, candidates: Sequence[Group], kv) -> Group:
        """The group to preempt, among ``candidates`` (non-empty, in keep
        order; the scheduler never offers the head of the running list
        while another group runs, so every run progresses). ``kv`` is the
        KV-cache manager, read only."""
        ...


ORDER_POLICIES: dict[str, type] = {}
VICTIM_POLICIES: dict[str, type] = {}


def _register(registry: dict, kind: str, protocol: type, name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if not issubclass(cls, protocol):
            raise TypeError(f"{cls.__name__} is not a {kind} policy (see {protocol.__name__})")
        if name in registry and registry[name] is not cls:
            raise ValueError(f"{kind} policy {name!r} is already registered ({registry[name].__name__})")
        registry[name] = cls
        return cls
    return add


def register_order(name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` a choice of ``--order``."""
    return _register(ORDER_POLICIES, "order", OrderPolicy, name)


def register_victim(name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` a choice of ``--victim``."""
    return _register(VICTIM_POLICIES, "victim", VictimPolicy, name)


def _make(registry: dict, kind: str, name: str):
    cls = registry.get(name)
    if cls is None:
        raise ValueError(f"unknown {kind} policy {name!r}; choose one of {', '.join(registry)}")
    return cls()


def order_policy(name: str) -> OrderPolicy:
    return _make(ORDER_POLICIES, "order", name)


def victim_policy(name: str) -> VictimPolicy:
    return _make(VICTIM_POLICIES, "victim", name)


# ------------------------------------------------------------------- orders
@register_order("fcfs")
class FirstComeFirstServed:
    """Arrival order (vLLM's default ``fcfs``); a preempted group goes back
    to its arrival place, ahead of later arrivals."""

    def key(self, g: Group) -> tuple:
        return (g.arrival_s, g.gid)


@register_order("priority")
class Priority:
    """Lower ``priority`` value first (vLLM's ``priority`` policy), then
    arrival order."""

    def key(self, g: Group) -> tuple:
        return (g.priority, g.arrival_s, g.gid)


# ------------------------------------------------------------------ victims
_arrival = attrgetter("arrival_s", "gid")
_priority = attrgetter("priority", "arrival_s", "gid")


@register_victim("latest")
class LatestArrival:
    """The latest arrival (vLLM's default; with ``fcfs`` order it is the
    tail of the running list)."""

    def pick(self, candidates: Sequence[Group], kv) -> Group:
        return max(candidates, key=_arrival)


@register_victim("priority")
class LowestPriority:
    """The least important group (largest ``priority`` value), the latest
    arrival among equals (vLLM V1's victim under priority scheduling)."""

    def pick(self, candidates: Sequence[Group], kv) -> Group:
        return max(candidates, key=_priority)


@register_victim("most-blocks")
class MostBlocks:
    """The group holding the most KV blocks (each sequence's table counted;
    a contiguous baseline counts the slots of its reservation): preempting
    it frees the most memory. Ties go to the later group in keep order."""

    def pick(self, candidates: Sequence[Group], kv) -> Group:
        held = kv.num_blocks_held
        return max(reversed(candidates), key=lambda g: sum(held(s.seq_id) for s in g.seqs))
