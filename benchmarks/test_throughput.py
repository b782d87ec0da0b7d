"""No-op throughput: ShardedPool against what a user would pick instead.

Every benchmark moves the same number of items (``SHARDFLOW_BENCH_ITEMS``) with the same
no-op handler, so ``pytest benchmarks --benchmark-only --benchmark-group-by=group`` shows
them side by side in the group ``noop-throughput``. Construction (pool, executor,
consumer threads) happens in ``setup`` and is not timed; ``close()`` + ``join()`` (or
waiting for every future, or joining the consumers) is timed, so a round covers every
item being handled. ``python -m shardflow bench`` runs the same contenders interleaved
round by round, which is the fairer comparison on a noisy machine.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import pytest

from shardflow import ShardedPool
from shardflow.bench.common import BATCH, WORKERS, noop, noop_batch

GROUP = "noop-throughput"
_STOP = object()

Setup = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


@pytest.mark.benchmark(group=GROUP)
def test_bare_loop(benchmark: Any, items: int, rounds: int, record_rate: Any) -> None:
    """The single-thread ceiling: ``for x in range(n): noop(x)``."""

    def run() -> None:
        fn = noop
        for x in range(items):
            fn(x)

    benchmark.pedantic(run, rounds=rounds, iterations=1)
    record_rate(items)


@pytest.mark.benchmark(group=GROUP)
def test_thread_pool_executor(benchmark: Any, items: int, rounds: int, record_rate: Any) -> None:
    """``ThreadPoolExecutor(2).submit`` per item, then wait for every future."""

    def setup() -> tuple[tuple[ThreadPoolExecutor], dict[str, Any]]:
        ex = ThreadPoolExecutor(WORKERS)
        # Start both threads now (the executor starts them lazily, on submit).
        wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
        return (ex,), {}

    def run(ex: ThreadPoolExecutor) -> None:
        sub = ex.submit
        fn = noop
        futures = [sub(fn, x) for x in range(items)]
        wait_futures(futures)
        ex.shutdown(wait=True)

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    record_rate(items)


def _queue_setup(make: Callable[[], Any]) -> Setup:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        q = make()

        def consume() -> None:
            get = q.get
            fn = noop
            while True:
                x = get()
                if x is _STOP:
                    return
                fn(x)

        threads = [threading.Thread(target=consume, daemon=True) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        return (q, threads), {}

    return setup


def _queue_run(items: int) -> Callable[[Any, list[threading.Thread]], None]:
    def run(q: Any, threads: list[threading.Thread]) -> None:
        put = q.put
        for x in range(items):
            put(x)
        for _ in threads:
            put(_STOP)
        for t in threads:
            t.join()

    return run


@pytest.mark.benchmark(group=GROUP)
def test_two_threads_queue(benchmark: Any, items: int, rounds: int, record_rate: Any) -> None:
    """The main thread produces into one ``queue.Queue``, two threads consume."""
    benchmark.pedantic(
        _queue_run(items), setup=_queue_setup(queue.Queue), rounds=rounds, iterations=1
    )
    record_rate(items)


@pytest.mark.benchmark(group=GROUP)
def test_two_threads_simplequeue(benchmark: Any, items: int, rounds: int, record_rate: Any) -> None:
    """The main thread produces into one ``queue.SimpleQueue``, two threads consume."""
    benchmark.pedantic(
        _queue_run(items), setup=_queue_setup(queue.SimpleQueue), rounds=rounds, iterations=1
    )
    record_rate(items)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize(
    ("batch_size", "use_submit_many"),
    [
        pytest.param(1, False, id="per-item"),
        pytest.param(BATCH, False, id="batch256-per-item-submit"),
        pytest.param(BATCH, True, id="batch256-submit_many"),
    ],
)
def test_sharded_pool(
    benchmark: Any,
    items: int,
    rounds: int,
    record_rate: Any,
    batch_size: int,
    use_submit_many: bool,
) -> None:
    """``ShardedPool(workers=2)``: per-item submit, batches of 256, or submit_many."""
    handler = noop if batch_size == 1 else noop_batch
    pools: list[ShardedPool[int]] = []

    def setup() -> tuple[tuple[ShardedPool[int]], dict[str, Any]]:
        pool: ShardedPool[int] = ShardedPool(handler, workers=WORKERS, batch_size=batch_size)
        pools.append(pool)
        return (pool,), {}

    def run_submit(pool: ShardedPool[int]) -> None:
        sub = pool.submit
        for x in range(items):
            sub(x)
        pool.close()
        pool.join()

    def run_many(pool: ShardedPool[int]) -> None:
        pool.submit_many(range(items))
        pool.close()
        pool.join()

    benchmark.pedantic(
        run_many if use_submit_many else run_submit, setup=setup, rounds=rounds, iterations=1
    )
    record_rate(items)
    for pool in pools:
        assert pool.metrics().processed == items
