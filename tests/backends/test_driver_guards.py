"""breaker/limiter/rate_limiter with backends that run the handler elsewhere: the guards
stay in the caller's process around the shipping of batches (backends/_guards.py), one
shared state, as with threads. Process backend (synchronous outcomes) and the fake Ray
remote (outcomes settled later, a window of batches in flight)."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import proc_handlers as ph
import pytest
from test_ray_backend import FakeRayBackend

import shardflow
from shardflow.backends import ProcessBackend
from shardflow.errors import CircuitOpen

BACKENDS = ["process", "fake-ray"]


def make_backend(name: str, ship: int = 20) -> Any:
    if name == "process":
        if sys.platform != "linux":
            pytest.skip("the process backend is tested on Linux here")
        return ProcessBackend(ship_batch_size=ship)
    return FakeRayBackend(batch_size=ship)


def accounted(pool: shardflow.ShardedPool[Any]) -> Any:
    m = pool.metrics()
    assert m.submitted == m.processed + m.failed + m.dead_lettered + m.dropped + m.returned
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_breaker_for_all_workers_opens_and_refuses_the_rest(backend: str) -> None:
    breaker = shardflow.CircuitBreaker(max_failures=5, reset_timeout=60)
    dead: list[tuple[Any, BaseException]] = []
    pool = shardflow.ShardedPool(
        ph.fail_below_100,
        workers=2,
        breaker=breaker,
        backend=make_backend(backend),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    with pool:
        pool.submit_many(range(50))
        pool.flush()  # the outcomes are in: one breaker saw both workers' failures
        assert breaker.state == shardflow.BreakerState.OPEN
        pool.submit_many(range(50, 100))
    bm = breaker.metrics()
    refused = [item for item, exc in dead if isinstance(exc, CircuitOpen)]
    failed = [item for item, exc in dead if isinstance(exc, ConnectionError)]
    # Every item is dead-lettered once, with the downstream's error or the breaker's;
    # nothing after the breaker opened was shipped.
    assert sorted(refused + failed) == list(range(100))
    assert set(range(50, 100)) <= set(refused) and len(failed) >= 5
    assert bm.failures == len(failed) and bm.rejections == len(refused)
    m = accounted(pool)
    assert m.dead_lettered == 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_breaker_records_successes_and_per_item_failures(backend: str) -> None:
    breaker = shardflow.CircuitBreaker(max_failures=1000)
    errors: list[Any] = []
    with shardflow.ShardedPool(
        ph.square,  # raises for x % 7 == 3
        workers=2,
        breaker=breaker,
        backend=make_backend(backend),
        on_error=lambda item, exc: errors.append(item),
    ) as pool:
        pool.submit_many(range(140))
    bm = breaker.metrics()
    assert bm.calls == 140 and bm.failures == 20 and bm.rejections == 0
    assert sorted(errors) == [x for x in range(140) if x % 7 == 3]
    assert accounted(pool).processed == 120


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_list_handler_is_admitted_once_per_batch(backend: str) -> None:
    breaker = shardflow.CircuitBreaker(max_failures=1, reset_timeout=60)
    dead: list[tuple[Any, BaseException]] = []
    with shardflow.ShardedPool(
        ph.batch_sum,  # raises for the batch holding 13
        workers=1,
        batch_size=10,
        breaker=breaker,
        backend=make_backend(backend),
        dead_letter=lambda batch, exc: dead.append((list(batch), exc)),
    ) as pool:
        pool.submit_many(range(20))
        pool.flush()
        ran = pool.metrics().batches
        pool.submit_many(range(20, 40))
    assert isinstance(dead[0][1], ValueError) and 13 in dead[0][0]
    refused = [batch for batch, exc in dead[1:] if isinstance(exc, CircuitOpen)]
    assert len(refused) == len(dead) - 1
    assert set(range(20, 40)) <= {x for batch in refused for x in batch}
    bm = breaker.metrics()
    # Batches are formed from what is queued: after the one holding 13, the rest of the
    # first 20 may have been refused too. One admission per batch either way.
    refused_early = sum(1 for batch in refused if max(batch) < 20)
    assert bm.calls == ran - refused_early and bm.failures == 1
    assert bm.rejections == len(refused)
    m = accounted(pool)
    assert m.dead_lettered == len(dead[0][0]) + sum(map(len, refused))
    assert m.processed == 40 - m.dead_lettered


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_limiter_bounds_the_batches_running_across_workers(backend: str, tmp_path: Any) -> None:
    limiter = shardflow.Limiter(1)
    with shardflow.ShardedPool(
        ph.Interval(str(tmp_path), 0.02),
        workers=2,
        batch_size=5,
        limiter=limiter,
        backend=make_backend(backend),
    ) as pool:
        pool.submit_many(range(60))
    spans = ph.read_intervals(str(tmp_path)) if backend == "process" else None
    if spans is not None:
        # One permit: no two batches ran at the same time, in either worker.
        assert len(spans) == pool.metrics().batches
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    lm = limiter.metrics()
    assert lm.in_use == 0 and lm.waiting == 0  # every permit given back
    assert accounted(pool).processed == 60


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rate_limiter_paces_shipping_and_caps_batches_at_its_burst(backend: str) -> None:
    rl = shardflow.RateLimiter(500, burst=10)
    t0 = time.monotonic()
    with shardflow.ShardedPool(
        ph.noop, workers=2, rate_limiter=rl, backend=make_backend(backend, ship=100)
    ) as pool:
        pool.submit_many(range(100))
    elapsed = time.monotonic() - t0
    m = accounted(pool)
    assert m.processed == 100
    assert rl.metrics().acquired == 100  # one token per item
    assert m.batches >= 10  # no shipped batch holds more than a burst
    assert elapsed >= (100 - 10) / 500 * 0.95  # a lower bound only: tokens are due then


def test_retry_is_refused_with_a_remote_backend() -> None:
    with pytest.raises(ValueError, match=r"retry= is not supported.*later items of its key"):
        shardflow.ShardedPool(
            ph.noop, workers=1, backend=FakeRayBackend(), retry=shardflow.Retry(2)
        )
