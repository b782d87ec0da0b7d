"""The public API used the way users would, type-checked by ``mypy --strict``.

Not a test module (pytest collects ``test_*.py`` only): tests/test_static_checks.py runs
mypy over it, so a stub (``_worker.pyi`` ...) or an annotation that would break users'
type checking fails the suite. It also runs as a script (a quick smoke test that every
example really works): ``python tests/typing_examples.py``.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from typing import TYPE_CHECKING, Any

import shardflow
from shardflow import (
    ARRAY_CAPACITY,
    DEFAULT_CAPACITY,
    BatchProcessor,
    BreakerMetrics,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Closed,
    Executor,
    Full,
    Latency,
    Limiter,
    LimiterMetrics,
    MetricsDelta,
    Pipeline,
    PipelineReport,
    PoolMetrics,
    RateLimiter,
    RateLimiterMetrics,
    Retry,
    RetryMetrics,
    RowMetrics,
    ShardedPool,
    ShardflowError,
    ShardMetrics,
    StageReport,
    StageRows,
)

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:  # at run time: only the checker needs it (typing.assert_type is 3.11+)

    def assert_type(value: object, _type: object) -> object:
        return value


def pool_without_key() -> None:
    seen: list[int] = []
    pool: ShardedPool[int] = ShardedPool(seen.append, workers=2, capacity=1024)
    with pool:
        assert_type(pool.submit(1), bool)
        assert_type(pool.submit(2, timeout=0.5), bool)
        assert_type(pool.submit_many(range(10)), int)
        assert_type(pool.submit_many([1, 2, 3], timeout=None), int)
        assert_type(pool.flush(timeout=1.0), bool)
        assert_type(pool.workers, int)
        assert_type(pool.capacity, int)
        assert_type(pool.batch_size, int)
        assert_type(pool.steal, bool)
        assert_type(pool.closed, bool)
        assert_type(pool.name, str)
    assert_type(pool.join(timeout=1.0), bool)
    assert len(seen) == 15


def pool_with_key_and_policies() -> None:
    errors: list[tuple[Any, BaseException]] = []

    def handle(order: dict[str, int]) -> None:
        if order["qty"] < 0:
            raise ValueError(order)

    def on_error(item: Any, exc: BaseException) -> None:
        errors.append((item, exc))

    def customer(order: dict[str, int]) -> int:
        return order["customer"]

    pool: ShardedPool[dict[str, int]] = ShardedPool(
        handle,
        workers=2,
        key=customer,
        on_full="raise",
        on_error=on_error,
        name="orders",
        ordered=True,
    )
    pool.submit({"customer": 1, "qty": 2})
    pool.submit({"customer": 2, "qty": -1})
    left = pool.shutdown(wait=True, cancel=False)
    assert_type(left, list[Any])
    m = pool.metrics()
    assert_type(m, PoolMetrics)
    assert_type(m.unfinished, int)
    assert_type(m.shards, tuple[ShardMetrics, ...])
    for shard in m.shards:
        assert_type(shard.index, int)
        assert_type(shard.high_water, int)
        assert_type(shard.stolen_in, int)
    assert m.processed == 1 and m.failed == 1 and len(errors) == 1


def pool_with_batches_guards_and_dead_letter() -> None:
    batches: list[list[bytes]] = []
    dead: queue.Queue[tuple[Any, BaseException]] = queue.Queue(maxsize=100)

    def handle_batch(batch: list[bytes]) -> None:
        batches.append(list(batch))

    pool: ShardedPool[bytes] = ShardedPool(
        handle_batch,
        workers=1,
        batch_size=8,
        batch_timeout=0.01,
        on_full="block",
        steal=False,
        reuse_batches=False,
        breaker=CircuitBreaker(max_failures=3, reset_timeout=1.0),
        limiter=Limiter(4),
        rate_limiter=RateLimiter(1e6, burst=1000),
        retry=Retry(2, base=0.001),
        dead_letter=dead,
    )
    pool.submit_many(b"x" * i for i in range(20))
    returned: list[Any] = pool.shutdown(cancel=True)
    m = pool.metrics()
    assert m.processed + m.returned + m.dead_lettered + m.failed == m.submitted == 20
    assert len(returned) == m.returned


def batch_processor() -> None:
    got: list[list[str]] = []

    def on_error(batch: list[str], exc: BaseException) -> None:
        raise AssertionError(exc)

    bp: BatchProcessor[str]
    with BatchProcessor(got.append, batch_size=3, batch_timeout=0.05, on_error=on_error) as bp:
        assert_type(bp, BatchProcessor[str])
        assert_type(bp.put("a"), bool)
        assert_type(bp.put_many(["b", "c", "d"]), int)
        assert_type(bp.flush(), bool)
        assert_type(bp.batch_size, int)
        assert_type(bp.batch_timeout, float | None)
    assert_type(bp.metrics(), PoolMetrics)
    assert sorted(len(b) for b in got) == [1, 3]


def circuit_breaker() -> None:
    transitions: list[tuple[BreakerState, BreakerState]] = []

    def listener(b: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        transitions.append((old, new))

    breaker = CircuitBreaker(
        max_failures=2,
        reset_timeout=10,
        failure_rate=0.5,
        window_type="time",
        window=5.0,
        exclude=[KeyError, lambda exc: isinstance(exc, LookupError)],
        listeners=[listener],
        name="db",
    )

    def double(x: int) -> int:
        return 2 * x

    assert_type(breaker.call(double, 21), int)

    @breaker
    def fetch(x: int) -> str:
        return str(x)

    assert fetch(1) == "1"
    with breaker:
        pass
    assert_type(breaker.state, BreakerState)
    breaker.force_open()
    try:
        breaker.call(double, 1)
    except CircuitOpen as exc:
        assert_type(exc.remaining, float)
        assert exc.remaining == math.inf
    breaker.reset()
    breaker.add_listener(listener)
    m = breaker.metrics()
    assert_type(m, BreakerMetrics)
    assert_type(m.failure_rate, float)
    assert_type(m.state, BreakerState)
    assert m.state == "closed"

    async def get(x: int) -> int:
        return x

    assert asyncio.run(breaker.acall(get, 3)) == 3


def limiters() -> None:
    limiter = Limiter(2, fair=True)
    assert_type(limiter.acquire(timeout=0.1), bool)
    limiter.release()
    assert_type(limiter.try_acquire(), bool)
    limiter.release()
    with limiter:
        assert_type(limiter.in_use, int)
    assert_type(limiter.concurrency, int)
    assert_type(limiter.metrics(), LimiterMetrics)

    @limiter
    def work() -> None:
        pass

    work()

    async def use() -> bool:
        async with limiter:
            pass
        return await limiter.aacquire(timeout=0.1)

    assert asyncio.run(use())
    limiter.release()

    clock = [0.0]
    rl = RateLimiter(10.0, burst=2, clock=lambda: clock[0], sleep=lambda s: None)
    assert_type(rl.try_acquire(), bool)
    assert_type(rl.acquire(2, timeout=1.0), bool)
    assert_type(rl.burst, int)
    assert_type(rl.rate, float)
    rm = rl.metrics()
    assert_type(rm, RateLimiterMetrics)
    assert rm.acquired == 3


def retries() -> None:
    retry = Retry(3, backoff="constant", base=0.0, jitter=False, retry_on=(ConnectionError,))
    calls: list[int] = []

    def flaky(x: int) -> str:
        calls.append(x)
        if len(calls) < 2:
            raise ConnectionError("again")
        return f"ok {x}"

    assert_type(retry.call(flaky, 1), str)
    assert_type(retry.delay(1), float)

    @retry
    def decorated() -> int:
        return 1

    assert decorated() == 1

    async def coro(x: int) -> int:
        return x

    assert asyncio.run(retry.acall(coro, 5)) == 5
    m = retry.metrics()
    assert_type(m, RetryMetrics)
    assert m.retries == 1


def exceptions() -> None:
    for exc_type in (Full, Closed, CircuitOpen):
        assert issubclass(exc_type, ShardflowError)
    assert issubclass(Closed, RuntimeError)
    pool: ShardedPool[int] = ShardedPool(lambda x: None, workers=1, capacity=1, on_full="raise")
    pool.close()
    try:
        pool.submit(1)
    except Closed as exc:
        assert_type(exc, Closed)
    pool.join()
    release = threading.Event()
    stuck: ShardedPool[int] = ShardedPool(
        lambda x: release.wait(), workers=1, capacity=1, on_full="raise"
    )
    try:
        stuck.submit_many(range(10))
    except Full as exc:  # carries what was queued and what was not (submit_many only)
        assert_type(exc.submitted, int)
        assert_type(exc.unsent, list[object])
        assert exc.submitted + len(exc.unsent) <= 10
    else:
        raise AssertionError("a 1-slot shard took 10 items")
    finally:
        release.set()
        stuck.shutdown()
    assert_type(CircuitOpen("open", remaining=1.5).remaining, float)
    assert DEFAULT_CAPACITY == shardflow.DEFAULT_CAPACITY
    assert_type(shardflow.__version__, str)


def pipelines() -> None:
    p = Pipeline(range(100)).map(lambda x: x * 2).filter(lambda x: x % 3 == 0)
    out: list[int] = list(p)
    assert len(out) == 34
    report = Pipeline(["a", "bb"], ordered=True).flat_map(list).map(str.upper).run()
    assert_type(report, PipelineReport)
    assert_type(report.stages[0], StageReport)
    assert report.balanced and report.results == 3

    async def collect() -> list[str]:
        return [x async for x in Pipeline(["x", "y"]).map(str.upper)]

    assert sorted(asyncio.run(collect())) == ["X", "Y"]


def executor_and_snapshots() -> None:
    with Executor(max_workers=2) as ex:
        fut = ex.submit(pow, 2, 8)
        assert fut.result() == 256
        assert list(ex.map(abs, [-1, -2], buffersize=1)) == [1, 2]
    with Executor(1, backend="process", max_tasks_per_child=100) as procs:
        assert procs.submit(pow, 3, 2).result() == 9
        assert list(procs.map(abs, [-1, -2], chunksize=1)) == [1, 2]
    pool: ShardedPool[int] = ShardedPool(lambda item: None, workers=2, name="typed")
    with pool:
        before = pool.snapshot()
        pool.submit_many(range(100))
        pool.flush()
        after = pool.snapshot()

        async def feed() -> bool:
            return await pool.asubmit(7)

        assert asyncio.run(feed())
    delta = after - before
    assert_type(delta, MetricsDelta)
    assert_type(after.service_time, Latency)
    assert_type(after.queue_wait.p99, float)
    assert delta.processed == 100 and delta.rate("processed") >= 0.0


def array_pools_and_stages() -> None:
    import numpy as np

    sums: list[float] = []

    def handle(batch: dict[str, Any]) -> None:
        sums.append(float(batch["x"].sum()))

    data = {"k": np.arange(1000) % 7, "x": np.ones(1000)}
    pool: ShardedPool[Any] = ShardedPool(handle, workers=2, arrays=True, capacity=ARRAY_CAPACITY)
    with pool:
        queued: int = pool.submit_array(data, key="k", batch_size=128, timeout=5.0)
        assert queued == 1000
    rows = pool.row_metrics()
    assert_type(rows, RowMetrics)
    assert rows.processed == 1000 and rows.pending == 0
    p = Pipeline.from_array(data, batch_size=256).map_batches(lambda b: b, workers=2)
    out = p.concat()
    assert len(out["x"]) == 1000
    report: dict[str, StageRows] = p.row_report()
    assert report["source"].emitted == 1000


def main() -> None:
    pool_without_key()
    pool_with_key_and_policies()
    pool_with_batches_guards_and_dead_letter()
    batch_processor()
    circuit_breaker()
    limiters()
    retries()
    exceptions()
    pipelines()
    executor_and_snapshots()
    array_pools_and_stages()


if __name__ == "__main__":
    main()
