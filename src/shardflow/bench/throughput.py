"""Section ``throughput``: no-op items through ShardedPool and what a user would write
instead.

Contenders: a bare ``for`` loop (the single-thread ceiling under the GIL),
``ThreadPoolExecutor(2).submit`` (on ``n // TPE_DIVISOR`` items: it is slow; reported as
items/s so its ratios stay comparable), two consumer threads over one ``queue.Queue`` and
over one ``queue.SimpleQueue`` (the main thread produces, a sentinel per consumer stops
them), and ``ShardedPool`` with per-item ``submit``, with ``batch_size=256`` and per-item
``submit``, and with ``batch_size=256`` fed by ``submit_many``. Then a lazy source: the
same pool fed by ``submit_many`` with a generator, beside the cost of draining that
generator alone (``deque(gen, maxlen=0)``): a Python generator may be the ceiling, so the
pool is judged by what it adds to it. Construction is excluded from the timings;
``close()`` + ``join()`` is included.
"""

from __future__ import annotations

import collections
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TextIO

from shardflow.bench.common import (
    BATCH,
    STOP,
    TPE_DIVISOR,
    WORKERS,
    BenchContext,
    Runner,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    noop,
    noop_batch,
    print_table,
    safe_ratio,
)
from shardflow.pool import ShardedPool

# Contender names (the keys of the report).
BARE = "bare loop"
TPE = "ThreadPoolExecutor(2).submit"
QUEUE = "2 threads over queue.Queue"
SIMPLEQUEUE = "2 threads over queue.SimpleQueue"
POOL_ITEM = "ShardedPool per-item"
POOL_BATCH = "ShardedPool batch_size=256"
POOL_MANY = "ShardedPool submit_many + batch_size=256"
GEN_DRAIN = "generator drained alone"
POOL_MANY_GEN = "ShardedPool submit_many(generator) + batch_size=256"


def run_bare_loop(n: int) -> tuple[int, float]:
    """``for x in range(n): noop(x)`` in the calling thread."""
    fn = noop
    t0 = time.perf_counter()
    for x in range(n):
        fn(x)
    return n, time.perf_counter() - t0


def run_tpe(n: int) -> tuple[int, float]:
    """``ThreadPoolExecutor(2).submit`` per item, on ``n // TPE_DIVISOR`` items, then wait."""
    m = max(1, n // TPE_DIVISOR)
    with ThreadPoolExecutor(WORKERS) as ex:
        # Make the executor start its threads before the clock does (it starts them
        # lazily, on submit), as pool construction is excluded for the other contenders.
        wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
        sub = ex.submit
        fn = noop
        t0 = time.perf_counter()
        futures = [sub(fn, x) for x in range(m)]
        wait_futures(futures)
        dt = time.perf_counter() - t0
    return m, dt


def run_thread_queue(
    q: queue.Queue[Any] | queue.SimpleQueue[Any],
    n: int,
    workers: int = WORKERS,
    fn: Callable[[Any], None] = noop,
    items: Any = None,
) -> tuple[int, float]:
    """``workers`` threads consume ``q`` and call ``fn`` on each item; the main thread puts
    ``items`` (default ``range(n)``), then a sentinel per thread; ``n`` is what is reported
    as moved."""

    def consume() -> None:
        get = q.get
        call = fn  # a local, as in the other contenders' loops
        stop = STOP
        while True:
            x = get()
            if x is stop:
                return
            call(x)

    threads = [threading.Thread(target=consume, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    put = q.put
    t0 = time.perf_counter()
    for x in range(n) if items is None else items:
        put(x)
    for _ in threads:
        put(STOP)
    for t in threads:
        t.join()
    return n, time.perf_counter() - t0


def run_queue(n: int) -> tuple[int, float]:
    """Main thread produces into one ``queue.Queue``; two threads consume."""
    return run_thread_queue(queue.Queue(), n)


def run_simplequeue(n: int) -> tuple[int, float]:
    """Main thread produces into one ``queue.SimpleQueue``; two threads consume."""
    return run_thread_queue(queue.SimpleQueue(), n)


def time_per_item_submits(pool: ShardedPool[int], n: int) -> tuple[int, float]:
    """Time n one-by-one ``submit`` calls plus close + join (construction excluded)."""
    sub = pool.submit
    t0 = time.perf_counter()
    for x in range(n):
        sub(x)
    pool.close()
    pool.join()
    return n, time.perf_counter() - t0


def run_pool_item(n: int) -> tuple[int, float]:
    """``ShardedPool(noop, workers=2)``, one ``submit`` per item, then close + join."""
    return time_per_item_submits(ShardedPool(noop, workers=WORKERS), n)


def run_pool_batch(n: int) -> tuple[int, float]:
    """``ShardedPool(noop_batch, workers=2, batch_size=256)``, one ``submit`` per item."""
    return time_per_item_submits(ShardedPool(noop_batch, workers=WORKERS, batch_size=BATCH), n)


def run_pool_many(n: int) -> tuple[int, float]:
    """``ShardedPool(noop_batch, workers=2, batch_size=256).submit_many(range(n))``."""
    pool: ShardedPool[int] = ShardedPool(noop_batch, workers=WORKERS, batch_size=BATCH)
    t0 = time.perf_counter()
    pool.submit_many(range(n))
    pool.close()
    pool.join()
    return n, time.perf_counter() - t0


def lazy_source(n: int) -> Iterator[int]:
    """The lazy source of the generator contenders: ``(x for x in range(n))``."""
    return (x for x in range(n))


def run_generator_drain(n: int) -> tuple[int, float]:
    """The source's own cost: ``collections.deque(lazy_source(n), maxlen=0)`` (the
    cheapest way to run a generator to its end, each item dropped at once)."""
    gen = lazy_source(n)
    t0 = time.perf_counter()
    collections.deque(gen, maxlen=0)
    return n, time.perf_counter() - t0


def run_pool_many_generator(n: int) -> tuple[int, float]:
    """``ShardedPool(noop_batch, workers=2, batch_size=256).submit_many(lazy_source(n))``."""
    pool: ShardedPool[int] = ShardedPool(noop_batch, workers=WORKERS, batch_size=BATCH)
    gen = lazy_source(n)
    t0 = time.perf_counter()
    pool.submit_many(gen)
    pool.close()
    pool.join()
    return n, time.perf_counter() - t0


#: Every no-op contender, in report order.
CONTENDERS: dict[str, Runner] = {
    BARE: run_bare_loop,
    TPE: run_tpe,
    QUEUE: run_queue,
    SIMPLEQUEUE: run_simplequeue,
    POOL_ITEM: run_pool_item,
    POOL_BATCH: run_pool_batch,
    POOL_MANY: run_pool_many,
    GEN_DRAIN: run_generator_drain,
    POOL_MANY_GEN: run_pool_many_generator,
}


def run_section(ctx: BenchContext) -> SectionResult:
    data, targets = _section_throughput(ctx.items, ctx.repeats, ctx.out)
    return SectionResult("throughput", data, targets)


def _section_throughput(
    items: int, repeats: int, out: TextIO
) -> tuple[dict[str, Any], list[Target]]:
    rates = interleaved(CONTENDERS, lambda _name: items, repeats)
    med = {name: statistics.median(r) for name, r in rates.items()}
    throughput: dict[str, Any] = {}
    rows = [["contender", "items/s", "vs SimpleQueue", "vs TPE", "vs bare loop"]]
    for name in CONTENDERS:
        m = med[name]
        ratios = {
            "vs_simplequeue": safe_ratio(m, med[SIMPLEQUEUE]),
            "vs_tpe": safe_ratio(m, med[TPE]),
            "vs_bare_loop": safe_ratio(m, med[BARE]),
        }
        throughput[name] = {
            "items_per_s": m,
            "samples": rates[name],
            "items": max(1, items // TPE_DIVISOR) if name == TPE else items,
            **ratios,
        }
        rows.append(
            [
                name,
                fmt_rate(m),
                f"{ratios['vs_simplequeue']:.2f}x",
                f"{ratios['vs_tpe']:.1f}x",
                f"{ratios['vs_bare_loop']:.3f}x",
            ]
        )
    gen_ratio = safe_ratio(med[POOL_MANY_GEN], med[GEN_DRAIN])
    gen_rounds = [
        safe_ratio(a, b) for a, b in zip(rates[POOL_MANY_GEN], rates[GEN_DRAIN], strict=True)
    ]
    throughput[POOL_MANY_GEN]["vs_generator_drain"] = gen_ratio
    throughput[POOL_MANY_GEN]["vs_generator_drain_per_round"] = gen_rounds
    print(file=out)
    print_table(rows, out)
    print(
        f"lazy source: submit_many(generator) runs at {gen_ratio:.2f}x the generator drained "
        f"alone (per round: {', '.join(f'{r:.2f}' for r in gen_rounds)}); the pool adds "
        f"{(1 / gen_ratio - 1) * 100 if gen_ratio > 0 else float('inf'):.0f}% to the "
        "source's own cost",
        file=out,
    )
    out.flush()
    item, batch, many = med[POOL_ITEM], med[POOL_BATCH], med[POOL_MANY]
    targets = [
        Target("per-item >= 100x ThreadPoolExecutor", safe_ratio(item, med[TPE]), ">=", 100),
        Target("per-item >= 1.3x SimpleQueue pool", safe_ratio(item, med[SIMPLEQUEUE]), ">=", 1.3),
        Target("per-item >= 0.3x bare loop", safe_ratio(item, med[BARE]), ">=", 0.3),
        Target(
            "batch_size=256 per-item submit >= 2x SimpleQueue pool",
            safe_ratio(batch, med[SIMPLEQUEUE]),
            ">=",
            2,
        ),
        Target(
            "submit_many + batches >= 4x SimpleQueue pool",
            safe_ratio(many, med[SIMPLEQUEUE]),
            ">=",
            4,
        ),
        Target(
            "submit_many(generator) + batches >= 0.8x the generator drained alone",
            safe_ratio(med[POOL_MANY_GEN], med[GEN_DRAIN]),
            ">=",
            0.8,
        ),
    ]
    return throughput, targets
