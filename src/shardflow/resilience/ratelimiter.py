"""``RateLimiter``: at most ``rate`` operations per second on average, bursts up to ``burst``.

A token bucket in the compiled core (``shardflow._limiter``): the bucket is one atomic
word (a GCRA "theoretical arrival time" in ns), refilled lazily from the clock and taken
with a CAS loop, so threads (and event loops) share it without a lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from shardflow import _aio
from shardflow._limiter import RateLimiterCore
from shardflow._validate import check_callable, check_int

__all__ = ["RateLimiter", "RateLimiterMetrics"]


@dataclass(frozen=True)
class RateLimiterMetrics:
    """Snapshot: tokens handed out, acquires refused or timed out, tokens available now
    (fractional; negative while tokens are reserved ahead by blocked callers)."""

    rate: float
    burst: int
    acquired: int
    rejected: int
    available: float


class RateLimiter(RateLimiterCore):
    """Token bucket: ``rate`` tokens per second refill a bucket holding up to ``burst``.

    ``try_acquire(tokens=1)`` takes tokens if there are enough now. ``acquire(tokens=1,
    timeout=None)`` waits for them: it *reserves* the tokens at once (callers are served
    in reservation order) and sleeps until they are due; if they would not be due within
    ``timeout`` seconds nothing is reserved and it returns False at once. ``aacquire`` is
    the same with ``asyncio.sleep``. A reservation interrupted by Ctrl-C / cancellation
    is not given back (the tokens are spent).

    Args:
        rate: tokens per second (> 0).
        burst: bucket size (>= 1): most tokens taken at once after an idle period, and
            the largest ``tokens`` one call may ask for.
        clock: callable returning seconds (monotonic); default the C monotonic clock.
        sleep: used by ``acquire`` to wait (default ``time.sleep``); inject with a fake
            clock.

    Example:
        >>> import shardflow
        >>> t = [0.0]
        >>> rl = shardflow.RateLimiter(10, burst=2, clock=lambda: t[0])
        >>> rl.try_acquire(), rl.try_acquire(), rl.try_acquire()
        (True, True, False)
        >>> t[0] += 0.1  # one token refilled
        >>> rl.try_acquire()
        True
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(
                f"rate must be a number of tokens per second > 0, got {rate!r} "
                f"({type(rate).__name__})"
            )
        if not (1e-9 <= rate <= 1e9) or math.isnan(rate):
            # Below one token in ~31 years the per-token cost in ns leaves int64.
            raise ValueError(
                f"rate must be a number of tokens per second in [1e-9, 1e9], got {rate!r}"
            )
        check_int("burst", burst, lo=1, hi=1 << 62)
        check_callable("clock", clock, optional=True)
        check_callable("sleep", sleep, optional=True)
        cost_ns = max(1, round(1e9 / rate))
        if burst * cost_ns > (1 << 60):
            raise ValueError(
                f"burst={burst} at rate={rate} spans more than 36 years of refill; "
                "lower burst or raise rate"
            )
        self.rate = float(rate)
        self._sleep = time.sleep if sleep is None else sleep
        self._core_init(cost_ns, burst, clock)

    def acquire(self, tokens: int = 1, timeout: float | None = None) -> bool:
        """Take ``tokens``, waiting until they are due if that is within ``timeout``
        seconds (None: however long). Returns True, or False (nothing taken)."""
        wait = self._reserve(tokens, timeout)
        if wait is None:
            return False
        if wait > 0:
            self._sleep(wait)
        return True

    async def aacquire(self, tokens: int = 1, timeout: float | None = None) -> bool:
        """``acquire`` for coroutines: waits with ``asyncio.sleep``; not bound to a loop."""
        wait = self._reserve(tokens, timeout)
        if wait is None:
            return False
        if wait > 0:
            await _aio.sleep(wait)
        return True

    def metrics(self) -> RateLimiterMetrics:
        """A snapshot of the counters (see ``RateLimiterMetrics``)."""
        acquired, rejected, available = self._counters()
        return RateLimiterMetrics(self.rate, self.burst, acquired, rejected, available)

    def __repr__(self) -> str:
        return f"<RateLimiter rate={self.rate}/s burst={self.burst}>"
