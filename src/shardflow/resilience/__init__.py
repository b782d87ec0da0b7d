"""Resilience primitives for calls to a downstream service, usable alone or as pool guards.

- ``breaker``: ``CircuitBreaker`` (closed / open / half-open, state in C atomics);
- ``limiter``: ``Limiter``, a concurrency limit (blocking, non-blocking and asyncio);
- ``ratelimiter``: ``RateLimiter``, a token bucket;
- ``retry``: ``Retry``, attempts with backoff and a retry budget;
- ``guard``: how a pool, stage or executor composes them around a handler (outermost
  first: retry, rate limiter, limiter, breaker) and where dead letters go.

Everything public is re-exported from ``shardflow`` itself.
"""

from shardflow.resilience.breaker import BreakerMetrics, BreakerState, CircuitBreaker
from shardflow.resilience.limiter import Limiter, LimiterMetrics
from shardflow.resilience.ratelimiter import RateLimiter, RateLimiterMetrics
from shardflow.resilience.retry import Retry, RetryMetrics

__all__ = [
    "BreakerMetrics",
    "BreakerState",
    "CircuitBreaker",
    "Limiter",
    "LimiterMetrics",
    "RateLimiter",
    "RateLimiterMetrics",
    "Retry",
    "RetryMetrics",
]
