"""ShardedPool with breaker, limiter, rate limiter, retry and dead letters (resilience/guard.py)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

import shardflow

WAIT = 30.0


def accounted(m: shardflow.PoolMetrics) -> int:
    return m.processed + m.failed + m.dead_lettered + m.dropped + m.returned


def test_items_failing_after_their_retries_go_to_the_dead_letter_with_their_exception() -> None:
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def handler(x: int) -> None:
        with lock:
            attempts[x] = attempts.get(x, 0) + 1
        if x % 10 == 0:
            raise ValueError(f"bad {x}")

    dead: list[tuple[Any, BaseException]] = []
    retry = shardflow.Retry(3, base=0.0, jitter=False, budget=1.0)
    with shardflow.ShardedPool(
        handler, workers=2, retry=retry, dead_letter=lambda item, exc: dead.append((item, exc))
    ) as pool:
        pool.submit_many(range(100))
    m = pool.metrics()
    assert sorted(item for item, _ in dead) == list(range(0, 100, 10))
    assert all(isinstance(exc, ValueError) and str(exc) == f"bad {item}" for item, exc in dead)
    assert all(attempts[x] == 3 for x in range(0, 100, 10))
    assert all(attempts[x] == 1 for x in range(100) if x % 10)
    assert (m.submitted, m.processed, m.dead_lettered, m.failed) == (100, 90, 10, 0)
    assert m.submitted == accounted(m)


def test_an_open_breaker_rejects_without_calling_the_handler_and_is_not_retried() -> None:
    calls = []
    breaker = shardflow.CircuitBreaker(max_failures=1, reset_timeout=3600)
    breaker.trip()
    dead: list[tuple[Any, BaseException]] = []
    retry = shardflow.Retry(5, base=0.0, jitter=False)
    with shardflow.ShardedPool(
        calls.append,
        workers=1,
        breaker=breaker,
        retry=retry,
        dead_letter=lambda item, exc: dead.append((item, exc)),
    ) as pool:
        pool.submit_many(range(20))
    assert calls == []
    assert [item for item, _ in dead] == list(range(20))
    assert all(isinstance(exc, shardflow.CircuitOpen) for _, exc in dead)
    m = pool.metrics()
    assert (m.dead_lettered, m.processed, m.failed) == (20, 0, 0)


def test_a_bounded_dead_letter_queue_receives_item_exc_tuples_and_a_full_one_counts_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dlq: queue.Queue[tuple[Any, BaseException]] = queue.Queue(maxsize=3)
    errors: list[Any] = []

    def always_fails(x: int) -> None:
        raise RuntimeError(x)

    with shardflow.ShardedPool(
        always_fails,
        workers=1,
        dead_letter=dlq,
        on_error=lambda item, exc: errors.append(item),
    ) as pool:
        pool.submit_many(range(10))
    m = pool.metrics()
    queued = [dlq.get_nowait() for _ in range(dlq.qsize())]
    assert [item for item, _ in queued] == [0, 1, 2]
    assert all(isinstance(exc, RuntimeError) for _, exc in queued)
    assert errors == list(range(3, 10))
    assert (m.dead_lettered, m.failed) == (3, 7)
    assert m.submitted == accounted(m)
    assert "dead letter refused" in caplog.text


def test_batches_that_fail_are_dead_lettered_as_batches_and_counted_per_item() -> None:
    dead: list[Any] = []

    def fails(batch: list[int]) -> None:
        raise ValueError("no")

    with shardflow.ShardedPool(
        fails,
        workers=1,
        batch_size=8,
        batch_timeout=3600,
        dead_letter=lambda batch, exc: dead.append(list(batch)),
    ) as pool:
        pool.submit_many(range(20))
    assert sorted(x for batch in dead for x in batch) == list(range(20))
    assert pool.metrics().dead_lettered == 20


def test_the_limiter_bounds_concurrent_handler_calls_inside_the_pool() -> None:
    limiter = shardflow.Limiter(2)
    lock = threading.Lock()
    active = 0
    peak = 0

    def handler(x: int) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.002)  # releases the GIL, so 4 workers really overlap
        with lock:
            active -= 1

    with shardflow.ShardedPool(handler, workers=4, limiter=limiter) as pool:
        pool.submit_many(range(200))
    assert pool.metrics().processed == 200
    assert 1 <= peak <= 2
    assert limiter.metrics().in_use == 0


def test_the_rate_limiter_is_consulted_once_per_attempt() -> None:
    now = [0.0]
    limiter = shardflow.RateLimiter(1e9, burst=1000, clock=lambda: now[0])
    with shardflow.ShardedPool(lambda x: None, workers=2, rate_limiter=limiter) as pool:
        pool.submit_many(range(500))
    assert pool.metrics().processed == 500
    assert not limiter.try_acquire(501)  # 500 of the 1000-token burst were taken


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("breaker", object()),
        ("limiter", 3),
        ("rate_limiter", "fast"),
        ("retry", 2),
        ("dead_letter", 42),
    ],
)
def test_guards_of_the_wrong_type_are_refused_naming_the_parameter(param: str, value: Any) -> None:
    with pytest.raises(TypeError, match=param):
        shardflow.ShardedPool(lambda x: None, workers=1, **{param: value})
