"""``BatchProcessor``: collect items into batches by size or by time, hand each to a handler.

It is one shard of the compiled core (a ``ShardedPool`` with one worker), so a batch's
deadline is kept by the worker's own timed park: no timer thread, no Python object per item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, TypeVar

from shardflow._validate import check_int, check_seconds, check_str
from shardflow.backends import Backend
from shardflow.metrics import PoolMetrics
from shardflow.pool import ShardedPool

__all__ = ["BatchProcessor"]

T = TypeVar("T")


class BatchProcessor(Generic[T]):
    """Hand items to ``handler`` in lists of up to ``batch_size``, or sooner when the
    oldest item in a partial batch has waited ``batch_timeout`` seconds.

    The deadline counts from a batch's first item (not from the last flush) and fires
    even if no further item arrives. ``flush()`` hands over a partial batch now;
    ``close()`` flushes what is left; the context manager closes and waits.

    Args:
        handler: called with a list of items. With ``reuse_batches`` (default) a list the
            handler does not keep is recycled for a later batch.
        batch_size: the most items per batch (>= 1).
        batch_timeout: seconds a partial batch may wait for more items (> 0).
        capacity: items that may wait in the queue before ``put`` blocks (or raises/drops,
            see ``on_full``); rounded up to a power of two.
        on_full: ``"block"``, ``"raise"`` or ``"drop"``, as for ``ShardedPool``.
        on_error: ``on_error(batch, exc)`` when the handler raises; default logs it.
        reuse_batches: see ``ShardedPool``.
        name: the worker thread's name prefix.
        backend: where the batches are handled, as for ``ShardedPool``: ``"thread"``
            (default), ``"process"`` (a worker process; the handler must be picklable),
            ``"ray"`` or a ``shardflow.backends.Backend`` (e.g. ``RayBackend(address=...)``).

    ``put(item, timeout=None) -> bool`` and ``put_many(iterable, timeout=None) -> int`` are
    the compiled ``ShardedPool.submit``/``submit_many`` of the underlying shard, bound once,
    so a ``put`` costs exactly a ``submit``.

    Example:
        >>> import shardflow
        >>> got = []
        >>> with shardflow.BatchProcessor(got.append, batch_size=3, batch_timeout=0.05) as bp:
        ...     bp.put_many(range(7))
        7
        >>> sorted(len(b) for b in got)
        [1, 3, 3]
    """

    def __init__(
        self,
        handler: Callable[[list[T]], object],
        *,
        batch_size: int,
        batch_timeout: float,
        capacity: int | None = None,
        on_full: Literal["block", "raise", "drop"] = "block",
        on_error: Callable[[list[T], BaseException], object] | None = None,
        reuse_batches: bool = True,
        name: str | None = None,
        backend: str | Backend = "thread",
    ) -> None:
        check_int("batch_size", batch_size, lo=1, hi=1 << 20)
        check_seconds("batch_timeout", batch_timeout, optional=False, positive=True)
        check_str("name", name)
        self._pool: ShardedPool[T] = ShardedPool(
            handler,
            workers=1,
            capacity=capacity,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            on_full=on_full,
            on_error=on_error,
            reuse_batches=reuse_batches,
            name=name or "BatchProcessor",
            steal=False,
            lists=True,  # a list even when batch_size=1
            backend=backend,
        )
        self._pool._fork_owner = "BatchProcessor"  # named by the error a forked child gets
        # The compiled methods themselves, bound once: put() costs what submit() costs.
        self.put: Callable[..., bool] = self._pool.submit
        self.put_many: Callable[[Iterable[T]], int] = self._pool.submit_many

    @property
    def batch_size(self) -> int:
        return self._pool.batch_size

    @property
    def batch_timeout(self) -> float | None:
        return self._pool.batch_timeout

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def flush(self, timeout: float | None = None) -> bool:
        """Hand the partial batch (and everything queued before the call) to the handler
        now; returns once it was handed over, or False if ``timeout`` ran out."""
        return self._pool.flush(timeout)

    def close(self) -> None:
        """Refuse new items; what is queued is batched and handed over, partial batch too."""
        self._pool.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything was handed over (after ``close()``)."""
        return self._pool.join(timeout)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> list[Any]:
        """As ``ShardedPool.shutdown``: with ``cancel=True`` returns the items not handed
        over."""
        return self._pool.shutdown(wait, cancel=cancel)

    def metrics(self) -> PoolMetrics:
        """Counters: ``batches`` is the number of handler calls."""
        return self._pool.metrics()

    def __enter__(self) -> BatchProcessor[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return (
            f"<BatchProcessor {self._pool.name!r} {state} batch_size={self.batch_size} "
            f"batch_timeout={self.batch_timeout}>"
        )
