"""Exceptions raised by shardflow."""

from __future__ import annotations

__all__ = ["Closed", "Full", "ShardflowError"]


class ShardflowError(Exception):
    """Base class of shardflow's own exceptions."""


class Full(ShardflowError):
    """A shard was full: ``on_full="raise"``, or a blocking submit timed out.

    When raised by ``submit_many`` it carries ``submitted`` (items queued before it) and
    ``unsent`` (items taken from the iterable but not queued), so nothing is lost.
    """

    submitted: int
    unsent: list[object]


class Closed(ShardflowError, RuntimeError):
    """The pool no longer accepts items (``close()`` or ``shutdown()`` was called).

    A subclass of ``RuntimeError``, which is what ``concurrent.futures`` executors raise
    for a submit after shutdown.
    """
