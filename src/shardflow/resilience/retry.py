"""``Retry``: call again after a failure, with backoff, a deadline and a retry budget.

Pure Python: a retry waits milliseconds to seconds, so the per-attempt bookkeeping is
not a hot path. The retry budget is shared by every call made through one ``Retry`` and
guarded by a lock (correct on free-threaded builds too).
"""

from __future__ import annotations

import functools
import inspect
import math
import random as _random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shardflow import _aio
from shardflow._validate import check_callable, check_choice, check_int, check_seconds
from shardflow.errors import CircuitOpen

__all__ = ["Retry", "RetryMetrics"]

T = TypeVar("T")

_BACKOFFS = ("exponential", "constant", "linear")
_BUDGET_BUCKETS = 10


@dataclass(frozen=True)
class RetryMetrics:
    """Counters of one ``Retry``: ``calls`` made through it, ``retries`` (attempts after
    the first), ``gave_up`` (calls that failed with a retryable error and were not retried
    any more: attempts exhausted, deadline or budget), ``budget_exhausted`` (retries
    refused by the retry budget)."""

    calls: int
    retries: int
    gave_up: int
    budget_exhausted: int


class _Budget:
    """Retries allowed = budget * calls + min_retries over a sliding window (buckets)."""

    def __init__(self, ratio: float, window: float, min_retries: int, clock: Callable[[], float]):
        self.ratio = ratio
        self.width = window / _BUDGET_BUCKETS
        self.min_retries = min_retries
        self.clock = clock
        self.lock = threading.Lock()
        # epoch -> [calls, retries]; at most _BUDGET_BUCKETS live entries
        self.buckets: dict[int, list[int]] = {}

    def _bucket(self) -> list[int]:
        epoch = math.floor(self.clock() / self.width)
        b = self.buckets.get(epoch)
        if b is None:
            for old in [e for e in self.buckets if e <= epoch - _BUDGET_BUCKETS]:
                del self.buckets[old]
            b = self.buckets[epoch] = [0, 0]
        return b

    def record_call(self) -> None:
        with self.lock:
            self._bucket()[0] += 1

    def try_retry(self) -> bool:
        with self.lock:
            b = self._bucket()
            calls = sum(v[0] for v in self.buckets.values())
            retries = sum(v[1] for v in self.buckets.values())
            if retries + 1 > self.ratio * calls + self.min_retries:
                return False
            b[1] += 1
            return True


def _retry_predicate(retry_on: Any) -> Callable[[BaseException], bool]:
    accepted = "an exception type, a tuple of exception types, or a predicate callable(exc)"
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        for t in retry_on:
            if not (isinstance(t, type) and issubclass(t, BaseException)):
                raise TypeError(f"retry_on must be {accepted}, got {retry_on!r}")
        types = retry_on
        return lambda exc: isinstance(exc, types)
    if callable(retry_on):
        pred: Callable[[BaseException], bool] = retry_on
        return pred
    raise TypeError(f"retry_on must be {accepted}, got {retry_on!r} ({type(retry_on).__name__})")


class Retry:
    """Call a function again when it fails, waiting longer each time.

    ``retry.call(fn, *args, **kwargs)`` makes up to ``attempts`` attempts (the first
    included) and returns the first result; if every attempt fails (or the deadline or the
    retry budget stops it) the last exception is re-raised unchanged. Also a decorator
    (functions and coroutine functions) and ``await retry.acall(coro_fn, ...)``.

    What is retried: exceptions matching ``retry_on`` (types, or a predicate ``exc ->
    bool``). Never retried: ``shardflow.CircuitOpen`` (the breaker already says when to
    come back: retrying it would only add load), and ``BaseException``s that are not
    ``Exception`` (``KeyboardInterrupt``, ``asyncio.CancelledError``).

    Delay before retry ``n`` (1, 2, ...): ``exponential`` ``base * 2**(n-1)``, ``linear``
    ``base * n``, ``constant`` ``base``; capped at ``max_delay``. With ``jitter`` the
    delay is drawn uniformly from ``[0, delay]`` ("full jitter", so that clients that
    failed together do not retry together).

    ``deadline`` (seconds, from the first attempt): no retry is started if its delay would
    end past the deadline. ``budget``: over the last ``budget_window`` seconds, retries
    are capped at ``budget`` times the calls made through this ``Retry`` plus
    ``budget_min_retries``, so that when a dependency is down retries add at most that
    fraction of load instead of multiplying it (a retry storm). ``budget=None`` disables.

    Args:
        attempts: total attempts per call (>= 1).
        backoff: ``"exponential"``, ``"constant"`` or ``"linear"``.
        base: first delay in seconds.
        max_delay: cap on one delay, seconds.
        jitter: randomise delays (full jitter).
        deadline: seconds for all attempts of one call, or None.
        retry_on: what to retry (see above).
        budget: fraction in [0, 1] of calls that may be retried, or None.
        budget_window: seconds over which the budget is counted.
        budget_min_retries: retries always allowed per window (so that low traffic can
            still retry).
        clock: seconds, monotonic (default ``time.monotonic``).
        sleep: used by ``call`` to wait (default ``time.sleep``).
        async_sleep: used by ``acall`` (default ``asyncio.sleep``).
        random: ``random() -> float in [0, 1)`` for jitter (default ``random.random``).

    Example:
        >>> import shardflow
        >>> tries = []
        >>> def flaky():
        ...     tries.append(1)
        ...     if len(tries) < 3:
        ...         raise ConnectionError("try again")
        ...     return "ok"
        >>> retry = shardflow.Retry(5, base=0.001, jitter=False)
        >>> retry.call(flaky), len(tries)
        ('ok', 3)
    """

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: str = "exponential",
        base: float = 0.1,
        max_delay: float = 10.0,
        jitter: bool = True,
        deadline: float | None = None,
        retry_on: Any = (Exception,),
        budget: float | None = 0.2,
        budget_window: float = 10.0,
        budget_min_retries: int = 3,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        check_int("attempts", attempts, lo=1, hi=1_000_000)
        check_choice("backoff", backoff, _BACKOFFS)
        check_seconds("base", base, optional=False)
        check_seconds("max_delay", max_delay, optional=False)
        if not isinstance(jitter, bool):
            raise TypeError(f"jitter must be a bool, got {jitter!r} ({type(jitter).__name__})")
        check_seconds("deadline", deadline, positive=True)
        self._retryable = _retry_predicate(retry_on)
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)):
                raise TypeError(
                    f"budget must be None or a fraction in [0, 1], got {budget!r} "
                    f"({type(budget).__name__})"
                )
            if not 0 <= budget <= 1:
                raise ValueError(f"budget must be None or a fraction in [0, 1], got {budget!r}")
        check_seconds("budget_window", budget_window, optional=False, positive=True)
        check_int("budget_min_retries", budget_min_retries, lo=0)
        check_callable("clock", clock, optional=True)
        check_callable("sleep", sleep, optional=True)
        check_callable("async_sleep", async_sleep, optional=True)
        check_callable("random", random, optional=True)

        self.attempts = attempts
        self.backoff = backoff
        self.base = float(base)
        self.max_delay = float(max_delay)
        self.jitter = jitter
        self.deadline = deadline
        self._clock = time.monotonic if clock is None else clock
        self._sleep = time.sleep if sleep is None else sleep
        self._async_sleep = _aio.sleep if async_sleep is None else async_sleep
        self._random = _random.random if random is None else random
        self._budget = (
            None
            if budget is None
            else _Budget(float(budget), float(budget_window), budget_min_retries, self._clock)
        )
        self._lock = threading.Lock()
        self._calls = self._retries = self._gave_up = self._budget_exhausted = 0

    # ------------------------------------------------------------------ policy

    def delay(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1-based), jitter applied."""
        if self.backoff == "exponential":
            d = self.base * (2.0 ** min(retry - 1, 1000))
        elif self.backoff == "linear":
            d = self.base * retry
        else:
            d = self.base
        d = min(d, self.max_delay)
        if self.jitter:
            d *= self._random()
        return d

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def _next_delay(self, exc: BaseException, attempt: int, start: float) -> float | None:
        """Delay before the next attempt, or None to give up and re-raise ``exc``."""
        if isinstance(exc, CircuitOpen) or not isinstance(exc, Exception):
            return None
        if not self._retryable(exc):
            return None
        if attempt >= self.attempts:
            self._count("_gave_up")
            return None
        d = self.delay(attempt)
        if self.deadline is not None and self._clock() + d > start + self.deadline:
            self._count("_gave_up")
            return None
        if self._budget is not None and not self._budget.try_retry():
            self._count("_budget_exhausted")
            self._count("_gave_up")
            return None
        self._count("_retries")
        return d

    def _begin(self) -> float:
        self._count("_calls")
        if self._budget is not None:
            self._budget.record_call()
        return self._clock()

    # ------------------------------------------------------------------ call forms

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` with retries; returns its result or re-raises the
        last exception."""
        start = self._begin()
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                d = self._next_delay(exc, attempt, start)
                if d is None:
                    raise
            if d > 0:
                self._sleep(d)
            attempt += 1

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` with retries (waits with ``async_sleep``)."""
        start = self._begin()
        attempt = 1
        while True:
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                d = self._next_delay(exc, attempt, start)
                if d is None:
                    raise
            if d > 0:
                await self._async_sleep(d)
            attempt += 1

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate ``fn`` (function or coroutine function) so each call is retried."""
        check_callable("fn", fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def metrics(self) -> RetryMetrics:
        """A snapshot of the counters (see ``RetryMetrics``)."""
        with self._lock:
            return RetryMetrics(self._calls, self._retries, self._gave_up, self._budget_exhausted)

    def __repr__(self) -> str:
        return f"<Retry attempts={self.attempts} backoff={self.backoff} base={self.base}>"
