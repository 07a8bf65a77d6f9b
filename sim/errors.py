"""Exceptions of the allocator layer.

Every allocator operation checks before it acts: when one of these is raised,
no state was changed (tests assert this).
"""
from __future__ import annotations


class AllocatorError(Exception):
    """Base class of allocator errors."""


class OutOfBlocks(AllocatorError):
    """Not enough free blocks; callers should have asked ``can_*`` first."""


class UnknownSequence(AllocatorError, KeyError):
    """The sequence id is not (or no longer) held by this manager."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown sequence"


class InvalidArgument(AllocatorError, ValueError):
    """A size, count or id that can never be valid."""
