"""``Limiter``: bound how many callers run a section at once (a semaphore in the core).

The permit count lives in the compiled core (``shardflow._limiter``, C in
``_limiter.h``): an uncontended acquire or release is one CAS, with no Python-level lock.
The same limiter serves threads and any number of asyncio event loops at once.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from shardflow import _aio
from shardflow._limiter import LimiterCore
from shardflow._validate import check_int, check_seconds

__all__ = ["Limiter", "LimiterMetrics"]

# asyncio slow path: poll try_acquire with exponential backoff from 50 µs up to 2 ms.
_ASYNC_BACKOFF_START = 50e-6
_ASYNC_BACKOFF_MAX = 2e-3

# Every live limiter, for the fork hook below.
_live: weakref.WeakSet[Limiter] = weakref.WeakSet()
_live_lock = threading.Lock()


@dataclass(frozen=True)
class LimiterMetrics:
    """A snapshot of a limiter's counters (not an atomic cut across fields).

    ``in_use``: permits held now; ``waiting``: threads and tasks waiting now;
    ``timeouts``: acquires that gave up (timed out, or refused with ``timeout=0``);
    ``waited``: acquires that succeeded after waiting.
    """

    concurrency: int
    in_use: int
    waiting: int
    timeouts: int
    waited: int


class Limiter(LimiterCore):
    """A counting semaphore: at most ``concurrency`` holders at once.

    ``acquire(timeout=None) -> bool`` takes a permit (waiting with the GIL released,
    Ctrl-C raises ``KeyboardInterrupt`` within ~50 ms); ``release()`` gives it back and
    raises ``ValueError`` if none is held. Also a context manager (``with limiter:``), an
    async context manager (``async with limiter:``), and a decorator for functions and
    coroutine functions.

    ``fair=False`` (default): a released permit goes to whoever takes it first (woken
    threads race, newcomers may barge): the fastest mode. ``fair=True``: blocked threads
    are served in arrival order (FIFO): a release hands the permit straight to the oldest
    waiting thread, and a newcomer's fast path refuses while any thread is queued.

    asyncio: ``aacquire`` does not bind the limiter to a loop, so tasks of several event
    loops (in several threads) and plain threads may share one limiter. Its slow path
    polls ``try_acquire`` with an exponential backoff ``asyncio.sleep`` from 50 µs up to
    2 ms (a permit freed by another loop or thread cannot wake a future of this loop
    without ``call_soon_threadsafe``, which would put loop bookkeeping on every release;
    polling keeps release one CAS). Consequently async waiters are not FIFO among
    themselves even with ``fair=True``, though they never barge past queued threads.

    Fork: the permits are per process. A limiter made before ``fork()`` raises
    ``RuntimeError`` when used in the child (the parent's holders and waiters are not
    there, so a wait could never end); make a new one in the child.

    Args:
        concurrency: permits (>= 1).
        fair: serve blocked threads first-come first-served.

    Example:
        >>> import shardflow, threading
        >>> limiter = shardflow.Limiter(2)
        >>> @limiter
        ... def fetch(x):
        ...     assert limiter.in_use <= 2
        ...     return x
        >>> threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
        >>> for t in threads: t.start()
        >>> for t in threads: t.join()
        >>> with limiter:
        ...     limiter.in_use
        1
    """

    def __init__(self, concurrency: int, *, fair: bool = False) -> None:
        check_int("concurrency", concurrency, lo=1, hi=(1 << 62))
        if not isinstance(fair, bool):
            raise TypeError(f"fair must be a bool, got {fair!r} ({type(fair).__name__})")
        self._core_init(concurrency, fair)
        with _live_lock:
            _live.add(self)

    async def aacquire(self, timeout: float | None = None) -> bool:
        """Take a permit from a coroutine, waiting up to ``timeout`` seconds (None: no
        limit). Returns True, or False on timeout. Cancellation leaves no permit held."""
        if self.try_acquire():
            return True
        check_seconds("timeout", timeout, allow_inf=True)
        if timeout is not None and timeout <= 0:
            self._count_timeout()
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _ASYNC_BACKOFF_START
        self._waiting_add(1)
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if self.try_acquire():
                            break
                        self._count_timeout()
                        return False
                    await _aio.sleep(min(delay, left))
                else:
                    await _aio.sleep(delay)
                if self.try_acquire():
                    break
                delay = min(delay * 2, _ASYNC_BACKOFF_MAX)
        finally:
            self._waiting_add(-1)
        self._count_acquired_after_wait()
        return True

    async def __aenter__(self) -> Limiter:
        await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate ``fn`` (function or coroutine function) to run holding a permit."""
        if not callable(fn):
            raise TypeError(f"fn must be a callable, got {fn!r} ({type(fn).__name__})")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper

    def metrics(self) -> LimiterMetrics:
        """A snapshot of the counters (see ``LimiterMetrics``)."""
        in_use, waiting, timeouts, waited = self._counters()
        return LimiterMetrics(self.concurrency, in_use, waiting, timeouts, waited)

    def __repr__(self) -> str:
        return (
            f"<Limiter concurrency={self.concurrency} in_use={self.in_use}"
            f"{' fair' if self.fair else ''}>"
        )


def _after_fork_in_child() -> None:
    # Only this thread exists in the child: the parent's permit holders and waiters are
    # gone, so an inherited limiter refuses to be used (RuntimeError) rather than wait.
    for limiter in list(_live):
        limiter._mark_forked()
    global _live_lock
    _live_lock = threading.Lock()  # may have been held by another thread at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
