"""Exceptions raised by shardflow."""

from __future__ import annotations

__all__ = ["CircuitOpen", "Closed", "Full", "ShardflowError"]


class ShardflowError(Exception):
    """Base class of shardflow's own exceptions."""


class Full(ShardflowError):
    """A shard was full: ``on_full="raise"``, or a blocking submit timed out.

    It carries ``submitted`` (items queued before it: 0 for ``submit``) and ``unsent``
    (items taken but not queued: ``[item]`` for ``submit``), so nothing is lost.
    """

    submitted: int
    unsent: list[object]


class Closed(ShardflowError, RuntimeError):
    """The pool no longer accepts items (``close()`` or ``shutdown()`` was called).

    A subclass of ``RuntimeError``, which is what ``concurrent.futures`` executors raise
    for a submit after shutdown. From ``submit``/``submit_many`` it carries ``submitted``
    and ``unsent`` like ``Full``.
    """

    submitted: int
    unsent: list[object]


class CircuitOpen(ShardflowError):
    """A circuit breaker refused a call: it is open, forced open, or half-open with all
    of its trial calls running.

    ``remaining`` is the number of seconds until the breaker lets a trial call through:
    ``> 0`` while open, ``0.0`` when half-open (retry as soon as a trial finishes),
    ``math.inf`` when forced open by hand. ``shardflow.Retry`` never retries it.

    Example:
        >>> import shardflow
        >>> breaker = shardflow.CircuitBreaker(max_failures=1, reset_timeout=30)
        >>> breaker.force_open()
        >>> try:
        ...     breaker.call(print, "never printed")
        ... except shardflow.CircuitOpen as exc:
        ...     print(exc.remaining)
        inf
    """

    remaining: float

    def __init__(self, message: str = "circuit breaker is open", *, remaining: float = 0.0):
        super().__init__(message)
        self.remaining = remaining

    def __reduce__(self) -> tuple[object, tuple[str, float]]:  # keep ``remaining``
        return (_rebuild_circuit_open, (self.args[0] if self.args else "", self.remaining))


def _rebuild_circuit_open(message: str, remaining: float) -> CircuitOpen:
    return CircuitOpen(message, remaining=remaining)
