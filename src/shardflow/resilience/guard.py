"""Compose a pool's handler with its resilience guards, once, at construction.

Order, outermost first: ``retry`` → ``rate_limiter`` → ``limiter`` → ``breaker`` →
handler. Each retry attempt therefore takes a rate token and a concurrency permit and is
seen by the breaker; an open breaker raises ``CircuitOpen``, which ``Retry`` never retries,
so a rejected item goes straight to the dead letter. The breaker is innermost so that its
slow-call measure covers the downstream call only, not the wait for a permit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardflow.resilience.breaker import CircuitBreaker
from shardflow.resilience.limiter import Limiter
from shardflow.resilience.ratelimiter import RateLimiter
from shardflow.resilience.retry import Retry

Handler = Callable[[Any], object]


def guard(
    handler: Handler,
    *,
    breaker: CircuitBreaker | None = None,
    limiter: Limiter | None = None,
    rate_limiter: RateLimiter | None = None,
    retry: Retry | None = None,
) -> Handler:
    """Return ``handler`` wrapped in the guards that are given (itself if none is)."""
    fn = handler
    if breaker is not None:
        fn = _behind_breaker(fn, breaker)
    if limiter is not None:
        fn = _behind_limiter(fn, limiter)
    if rate_limiter is not None:
        fn = _behind_rate_limiter(fn, rate_limiter)
    if retry is not None:
        fn = _with_retry(fn, retry)
    return fn


def _behind_breaker(fn: Handler, breaker: CircuitBreaker) -> Handler:
    call = breaker.call

    def guarded(item: Any) -> object:
        return call(fn, item)

    return guarded


def _behind_limiter(fn: Handler, limiter: Limiter) -> Handler:
    def guarded(item: Any) -> object:
        with limiter:
            return fn(item)

    return guarded


def _behind_rate_limiter(fn: Handler, rate_limiter: RateLimiter) -> Handler:
    acquire = rate_limiter.acquire

    def guarded(item: Any) -> object:
        acquire()
        return fn(item)

    return guarded


def _with_retry(fn: Handler, retry: Retry) -> Handler:
    call = retry.call

    def guarded(item: Any) -> object:
        return call(fn, item)

    return guarded


def dead_letter_target(
    dead_letter: Callable[[Any, BaseException], object] | Any,
) -> Callable[[Any, BaseException], object]:
    """A callable ``(item, exc)``, or a bounded queue (anything with ``put_nowait``) that
    receives ``(item, exc)`` tuples; a full queue raises, and the pool then counts the item
    as failed and reports it through ``on_error``/logging instead."""
    put_nowait = getattr(dead_letter, "put_nowait", None)
    if put_nowait is not None and callable(put_nowait):

        def to_queue(item: Any, exc: BaseException) -> None:
            put_nowait((item, exc))

        return to_queue
    if callable(dead_letter):
        return dead_letter
    raise TypeError(
        "dead_letter must be None, a callable (item, exc) or a queue with put_nowait(), "
        f"got {dead_letter!r} ({type(dead_letter).__name__})"
    )
