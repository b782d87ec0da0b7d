"""``ThreadBackend``: every shard loop runs in a daemon thread of this process.

The default backend, and the one whose behaviour the others reproduce. The handler is
called in the shard's thread, with the GIL held only around the call (the compiled loop
drains and waits without it); under the GIL, more workers help handlers that release it
(I/O, hashing large buffers, numpy, compiled code).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from shardflow.backends.base import Backend, ShardRunner, start_shard_threads

__all__ = ["ThreadBackend", "ThreadRunner"]


class ThreadRunner(ShardRunner):
    """The thread backend's runner: one daemon thread per shard (``threads``)."""

    def __init__(self, pool_name: str, workers: int) -> None:
        self._pool_name = pool_name
        self._workers = workers
        self._threads: list[threading.Thread] = []

    @property
    def threads(self) -> list[threading.Thread]:
        """The shard threads, in shard order (empty once joined)."""
        return self._threads

    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        try:
            self._threads = start_shard_threads(
                self._workers,
                run_shard,
                lambda i: f"{self._pool_name}-worker-{i}",
                starting,
                start_failed,
            )
        except BaseException as exc:
            self._threads = getattr(exc, "started", [])
            raise

    def join(self) -> None:
        # The core has counted every shard loop out; what is left of each thread is its
        # exit, so these joins are short.
        for t in self._threads:
            t.join()
        self._threads = []  # finished: keep no Thread objects alive

    def after_fork_in_child(self) -> None:
        # Only the forking thread exists in the child: there is nothing to join.
        self._threads = []

    def describe(self) -> str:
        return "thread"


class ThreadBackend(Backend):
    """Shards run in daemon threads of this process, named ``"<pool name>-worker-<i>"``.

    Example:
        >>> import shardflow
        >>> from shardflow.backends import ThreadBackend
        >>> seen = []
        >>> with shardflow.ShardedPool(seen.append, workers=2, backend=ThreadBackend()) as p:
        ...     p.submit_many(range(10))
        10
        >>> sorted(seen) == list(range(10))
        True
    """

    name: ClassVar[str] = "thread"

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        return ThreadRunner(pool_name, workers)
