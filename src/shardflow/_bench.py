"""Side-by-side benchmarks behind ``python -m shardflow bench``.

Every contender runs in the same process, interleaved round by round (round ``r`` runs
each contender once, in an order rotated per round so that no contender always runs
right after the same neighbour), and the report gives the median per contender and the
ratios between them. That is the method of the engineering guide (section 4): on a
shared, noisy machine absolute figures drift from run to run, ratios measured side by
side drift much less.

Contenders moving no-op items (``noop(x)``; ``noop_batch(list)`` for batch modes):

* ``bare loop``: ``for x in range(n): noop(x)``, the single-thread ceiling under the GIL;
* ``ThreadPoolExecutor(2).submit``: run on ``n // 20`` items (it is slow) and reported
  as items/s, so that its ratios stay comparable;
* two consumer threads over one ``queue.Queue`` and over one ``queue.SimpleQueue`` (the
  main thread produces, a sentinel per consumer stops them);
* ``ShardedPool`` with per-item ``submit``, with ``batch_size=256`` and per-item
  ``submit``, and with ``batch_size=256`` fed by ``submit_many``.

Pool (and executor, and consumer thread) construction is excluded from the timings;
``close()`` + ``join()`` (or waiting for every future, or joining the consumers) is
included, so each timing covers every item being handled.

Extra sections: a handler that releases the GIL (sha256 of 64 KiB), the CPU an idle
pool burns, and memory (RSS growth through a bounded pool, reference counts after join);
work stealing (sha256 items on skewed, uniform and single-shard keys, steal on and off,
with a plain-thread control of the parallelism the machine gives, and what stealing costs
the per-item no-op path); the latency a batch deadline gives a lone item; and recycled
batch lists (``reuse_batches``) with their allocation counts; and a sweep of items/s
against workers and against batch size, ShardedPool vs the stdlib thread pools (drawn by
``shardflow._chart`` for ``bench --chart``). ``SECTIONS`` is the registry: name -> a
``Section`` (``BenchContext -> SectionResult``); ``run_bench(sections=...)`` runs a subset.
Targets are checked against the measured ratios; nothing is hard-coded.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import platform
import queue
import random
import resource
import statistics
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, TextIO

from shardflow.batching import BatchProcessor
from shardflow.pool import ShardedPool

__all__ = ["CONTENDERS", "SECTIONS", "Target", "noop", "noop_batch", "run_bench"]

#: A timed run: takes the number of items, returns ``(items actually moved, seconds)``.
Runner = Callable[[int], tuple[int, float]]

BATCH = 256
WORKERS = 2
#: ThreadPoolExecutor moves this fraction of the items (a Future per item is slow).
TPE_DIVISOR = 20
SHA_BUF_SIZE = 64 * 1024

# Contender names (the keys of the report).
BARE = "bare loop"
TPE = "ThreadPoolExecutor(2).submit"
QUEUE = "2 threads over queue.Queue"
SIMPLEQUEUE = "2 threads over queue.SimpleQueue"
POOL_ITEM = "ShardedPool per-item"
POOL_BATCH = "ShardedPool batch_size=256"
POOL_MANY = "ShardedPool submit_many + batch_size=256"

_STOP = object()


def noop(x: object) -> None:
    """The per-item handler every no-op contender calls."""


def noop_batch(b: object) -> None:
    """The batch handler (``batch_size > 1``)."""


def sha256_handler(buf: bytes) -> None:
    """A handler that releases the GIL: hashlib drops it for buffers over 2 KiB."""
    hashlib.sha256(buf).digest()


# --------------------------------------------------------------------------- contenders


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


def _run_queue(
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
        stop = _STOP
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
        put(_STOP)
    for t in threads:
        t.join()
    return n, time.perf_counter() - t0


def run_queue(n: int) -> tuple[int, float]:
    """Main thread produces into one ``queue.Queue``; two threads consume."""
    return _run_queue(queue.Queue(), n)


def run_simplequeue(n: int) -> tuple[int, float]:
    """Main thread produces into one ``queue.SimpleQueue``; two threads consume."""
    return _run_queue(queue.SimpleQueue(), n)


def _time_per_item_submits(pool: ShardedPool[int], n: int) -> tuple[int, float]:
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
    return _time_per_item_submits(ShardedPool(noop, workers=WORKERS), n)


def run_pool_batch(n: int) -> tuple[int, float]:
    """``ShardedPool(noop_batch, workers=2, batch_size=256)``, one ``submit`` per item."""
    return _time_per_item_submits(ShardedPool(noop_batch, workers=WORKERS, batch_size=BATCH), n)


def run_pool_many(n: int) -> tuple[int, float]:
    """``ShardedPool(noop_batch, workers=2, batch_size=256).submit_many(range(n))``."""
    pool: ShardedPool[int] = ShardedPool(noop_batch, workers=WORKERS, batch_size=BATCH)
    t0 = time.perf_counter()
    pool.submit_many(range(n))
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
}


# --------------------------------------------------------------------------- GIL release


def _sha_pool(workers: int) -> Runner:
    def run(n: int) -> tuple[int, float]:
        buf = _sha_buffer()
        pool: ShardedPool[bytes] = ShardedPool(sha256_handler, workers=workers)
        sub = pool.submit
        t0 = time.perf_counter()
        for _ in range(n):
            sub(buf)
        pool.close()
        pool.join()
        return n, time.perf_counter() - t0

    run.__doc__ = f"sha256 of 64 KiB per item through ShardedPool(workers={workers})."
    return run


def run_sha_tpe(n: int) -> tuple[int, float]:
    """sha256 of 64 KiB per item through ``ThreadPoolExecutor(2).submit``."""
    buf = _sha_buffer()
    with ThreadPoolExecutor(WORKERS) as ex:
        wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
        sub = ex.submit
        t0 = time.perf_counter()
        futures = [sub(sha256_handler, buf) for _ in range(n)]
        wait_futures(futures)
        dt = time.perf_counter() - t0
    return n, dt


def run_sha_bare(n: int) -> tuple[int, float]:
    """sha256 of 64 KiB per item in the calling thread (reference, no target)."""
    buf = _sha_buffer()
    t0 = time.perf_counter()
    for _ in range(n):
        sha256_handler(buf)
    return n, time.perf_counter() - t0


def run_sha_threads(n: int) -> tuple[int, float]:
    """sha256 of 64 KiB per item in two plain threads, each given half the items up front:
    no queue at all, so this is the machine's parallel ceiling for the other contenders."""
    buf = _sha_buffer()
    counts = [n // WORKERS + (1 if i < n % WORKERS else 0) for i in range(WORKERS)]
    go = threading.Event()

    def work(k: int) -> None:
        go.wait()
        for _ in range(k):
            sha256_handler(buf)

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in counts]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    return n, time.perf_counter() - t0


_SHA_BUF: bytes | None = None


def _sha_buffer() -> bytes:
    global _SHA_BUF
    if _SHA_BUF is None:
        _SHA_BUF = os.urandom(SHA_BUF_SIZE)
    return _SHA_BUF


SHA_BARE = "sha256 bare loop"
SHA_POOL1 = "sha256 ShardedPool workers=1"
SHA_POOL2 = "sha256 ShardedPool workers=2"
SHA_TPE = "sha256 ThreadPoolExecutor(2)"
SHA_THREADS = "sha256 2 plain threads, static split"

#: Contenders of the GIL-releasing section, in report order.
SHA_CONTENDERS: dict[str, Runner] = {
    SHA_BARE: run_sha_bare,
    SHA_POOL1: _sha_pool(1),
    SHA_POOL2: _sha_pool(2),
    SHA_TPE: run_sha_tpe,
    SHA_THREADS: run_sha_threads,
}


# --------------------------------------------------------------------------- work stealing

STEAL_ITEMS = 3_000
ZIPF_KEYS = 1_000
ZIPF_S = 1.2
ZIPF_SEED = 12_345


def zipf_keys(n: int, seed: int = ZIPF_SEED) -> list[int]:
    """``n`` keys in ``range(1000)``, key ``k`` drawn with weight ``1 / (k + 1) ** 1.2``."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** ZIPF_S for k in range(ZIPF_KEYS)]
    return rng.choices(range(ZIPF_KEYS), weights=weights, k=n)


def uniform_keys(n: int, seed: int = ZIPF_SEED) -> list[int]:
    """``n`` keys drawn uniformly from ``range(1000)``."""
    rng = random.Random(seed)
    return rng.choices(range(ZIPF_KEYS), k=n)


def _key_identity(x: int) -> int:
    return x


def _key_zero(x: int) -> int:
    return 0


@dataclass
class StealRun:
    """A stealing contender: ``run(n)`` is a ``Runner``; every run appends the pool's
    ``sum(stolen_in)`` and its per-shard ``submitted`` to ``stolen`` and ``split``."""

    keys: Callable[[int], list[int]]
    key: Callable[[int], Hashable]
    steal: bool
    close_first: bool = False
    stolen: list[int] = field(default_factory=list)
    split: list[list[int]] = field(default_factory=list)

    def __call__(self, n: int) -> tuple[int, float]:
        """sha256 of 64 KiB per item, keyed, ``ordered=False``; ``submit_many`` of every
        item at once.

        The clock stops when the handler finished the last item while the pool is still
        open (close + join come after, untimed): ``close()`` wakes every idle worker,
        which would hide whether a producer wakes an idle thief by itself. With
        ``close_first`` the pool is closed right after ``submit_many`` and close + join are
        timed, as in the other sections.
        """
        buf = _sha_buffer()
        items = self.keys(n)
        done = threading.Event()
        count = itertools.count(1).__next__  # atomic under the GIL
        total = len(items)

        def handler(_item: int) -> None:
            hashlib.sha256(buf).digest()
            if count() == total:
                done.set()

        pool: ShardedPool[int] = ShardedPool(
            handler, workers=WORKERS, key=self.key, ordered=False, steal=self.steal
        )
        time.sleep(0.005)  # let both workers park
        t0 = time.perf_counter()
        pool.submit_many(items)
        if self.close_first:
            pool.close()
            pool.join()
            dt = time.perf_counter() - t0
        else:
            done.wait()
            dt = time.perf_counter() - t0
            pool.close()
            pool.join()
        m = pool.metrics()
        self.stolen.append(sum(s.stolen_in for s in m.shards))
        self.split.append([s.submitted for s in m.shards])
        return total, dt


def run_sha_one_thread(n: int) -> tuple[int, float]:
    """sha256 of 64 KiB per item in one plain thread (started before the clock)."""
    buf = _sha_buffer()
    go = threading.Event()

    def work() -> None:
        go.wait()
        for _ in range(n):
            sha256_handler(buf)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t0 = time.perf_counter()
    go.set()
    t.join()
    return n, time.perf_counter() - t0


STEAL_ZIPF = "zipf keys, steal=True"
STEAL_ZIPF_OFF = "zipf keys, steal=False"
STEAL_UNIFORM = "uniform keys, steal=True"
STEAL_ONE = "one shard, steal=True"
STEAL_ONE_OFF = "one shard, steal=False"
STEAL_ONE_CLOSED = "one shard, steal=True, close() right after"
STEAL_THREADS2 = "control: 2 plain threads, static split"
STEAL_THREADS1 = "control: 1 plain thread"


def steal_contenders() -> dict[str, Runner]:
    """Fresh contenders of the work-stealing section (each keeps its own stolen counts)."""
    return {
        STEAL_ZIPF: StealRun(zipf_keys, _key_identity, steal=True),
        STEAL_ZIPF_OFF: StealRun(zipf_keys, _key_identity, steal=False),
        STEAL_UNIFORM: StealRun(uniform_keys, _key_identity, steal=True),
        STEAL_ONE: StealRun(uniform_keys, _key_zero, steal=True),
        STEAL_ONE_OFF: StealRun(uniform_keys, _key_zero, steal=False),
        STEAL_ONE_CLOSED: StealRun(uniform_keys, _key_zero, steal=True, close_first=True),
        STEAL_THREADS2: run_sha_threads,
        STEAL_THREADS1: run_sha_one_thread,
    }


def _pool_item_steal(steal: bool) -> Runner:
    def run(n: int) -> tuple[int, float]:
        return _time_per_item_submits(ShardedPool(noop, workers=WORKERS, steal=steal), n)

    run.__doc__ = f"``ShardedPool(noop, workers=2, steal={steal})``, per-item submits."
    return run


ITEM_STEAL = "ShardedPool per-item, steal=True"
ITEM_NO_STEAL = "ShardedPool per-item, steal=False"

#: What stealing costs the GIL-bound per-item path (no-op handler, unkeyed).
STEAL_COST_CONTENDERS: dict[str, Runner] = {
    ITEM_STEAL: _pool_item_steal(True),
    ITEM_NO_STEAL: _pool_item_steal(False),
}


# --------------------------------------------------------------------------- batches

LATENCY_BATCH_SIZE = 1000
LATENCY_TIMEOUT = 0.010
LATENCY_INTERVAL = 0.050


def _stdlib_batcher(
    q: queue.SimpleQueue[Any],
    batch_size: int,
    batch_timeout: float,
    handler: Callable[[list[Any]], None],
) -> None:
    """What a user would write instead: one thread, ``SimpleQueue.get(timeout=...)`` until
    the batch is full or ``batch_timeout`` passed since its first item was taken."""
    get = q.get
    while True:
        first = get()
        if first is _STOP:
            return
        batch = [first]
        deadline = time.perf_counter() + batch_timeout
        stop = False
        while len(batch) < batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                x = get(timeout=remaining)
            except queue.Empty:
                break
            if x is _STOP:
                stop = True
                break
            batch.append(x)
        handler(batch)
        if stop:
            return


def _latency_stats(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "p50_ms": _quantile(ordered, 0.50),
        "p99_ms": _quantile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "min_ms": ordered[0] if ordered else float("nan"),
    }


def measure_batch_latency(
    items: int,
    batch_size: int = LATENCY_BATCH_SIZE,
    batch_timeout: float = LATENCY_TIMEOUT,
    interval: float = LATENCY_INTERVAL,
) -> dict[str, Any]:
    """A ``BatchProcessor(batch_size=1000, batch_timeout=0.010)`` fed one item every
    ``interval`` seconds: no batch ever fills, so each item waits for its batch's
    deadline. The item is its ``put`` time; the handler notes ``perf_counter()`` on entry.
    Returns the delays (handler start - put) in ms, with p50/p99/max.

    Control, on the same schedule shifted by half an interval (so that the two deadlines
    never compete for the GIL): a plain thread batching from a ``SimpleQueue`` with
    ``get(timeout=...)``. It shows what the machine's scheduler and timers allow right now.
    """
    delays: list[float] = []
    sizes: list[int] = []
    control: list[float] = []

    def handler(batch: list[float]) -> None:
        now = time.perf_counter()
        sizes.append(len(batch))
        delays.extend((now - t) * 1e3 for t in batch)

    def control_handler(batch: list[float]) -> None:
        now = time.perf_counter()
        control.extend((now - t) * 1e3 for t in batch)

    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    th = threading.Thread(
        target=_stdlib_batcher, args=(q, batch_size, batch_timeout, control_handler), daemon=True
    )
    th.start()
    bp: BatchProcessor[float] = BatchProcessor(
        handler, batch_size=batch_size, batch_timeout=batch_timeout
    )
    try:
        time.sleep(0.02)
        put = bp.put
        cput = q.put
        start = time.perf_counter()
        for i in range(2 * items):
            # An absolute schedule, so that a late wake-up does not shift the later puts.
            delay = start + i * interval / 2 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            (put if i % 2 == 0 else cput)(time.perf_counter())
        # close() flushes: let the last item's deadline pass first.
        time.sleep(interval)
    finally:
        bp.close()
        bp.join()
        q.put(_STOP)
        th.join()
    return {
        "items": items,
        "batch_size": batch_size,
        "batch_timeout_ms": batch_timeout * 1e3,
        "interval_ms": interval * 1e3,
        "batches": len(sizes),
        "max_batch": max(sizes) if sizes else 0,
        **_latency_stats(delays),
        "delays_ms": delays,
        "control_simplequeue_thread": {**_latency_stats(control), "delays_ms": control},
    }


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted data (numpy's default method)."""
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _pool_many_reuse(reuse: bool) -> Runner:
    def run(n: int) -> tuple[int, float]:
        pool: ShardedPool[int] = ShardedPool(
            noop_batch, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
        )
        t0 = time.perf_counter()
        pool.submit_many(range(n))
        pool.close()
        pool.join()
        return n, time.perf_counter() - t0

    run.__doc__ = (
        f"``ShardedPool(noop_batch, workers=2, batch_size=256, reuse_batches={reuse})`` "
        "fed by ``submit_many(range(n))``."
    )
    return run


REUSE_ON = "submit_many + batch_size=256, reuse_batches=True"
REUSE_OFF = "submit_many + batch_size=256, reuse_batches=False"

REUSE_CONTENDERS: dict[str, Runner] = {
    REUSE_ON: _pool_many_reuse(True),
    REUSE_OFF: _pool_many_reuse(False),
}


def count_batch_lists(items: int, reuse: bool) -> dict[str, int]:
    """How many batch lists the workers allocated for ``items`` items (``batch_size=256``,
    2 workers): the handler counts the lists it is given fresh.

    ``PyList_New(n)`` makes a list with room for exactly ``n`` items; a list refilled by
    ``reuse_batches`` keeps the room it had. The handler counts every list whose room
    equals its length, then marks it by growing its room (``append`` + ``pop``), so that
    the same list seen again refilled is not counted. The marking costs a reallocation per
    fresh list, so this run is not timed.
    """
    fresh: list[int] = []
    ptr = struct.calcsize("P")
    empty = [].__sizeof__()

    def handler(b: list[int]) -> None:
        if b.__sizeof__() == empty + ptr * len(b):
            fresh.append(1)
            b.append(0)
            b.pop()

    pool: ShardedPool[int] = ShardedPool(
        handler, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
    )
    pool.submit_many(range(items))
    pool.close()
    pool.join()
    return {"batches": pool.metrics().batches, "lists_allocated": len(fresh)}


def measure_batch_allocations(items: int) -> dict[str, Any]:
    """Allocation evidence for ``reuse_batches``, ``items`` items through each mode.

    Per mode: ``tracemalloc``'s peak traced memory and the change in blocks / bytes it
    still traces at the end (``take_snapshot().statistics('lineno')`` totals), from a start
    with tracing on; and the number of batch lists allocated (``count_batch_lists``).
    tracemalloc sees *live* blocks only: a list allocated and freed per batch leaves no
    trace, so similar tracemalloc figures do not mean similar allocation counts; the list
    count is the direct evidence.
    """
    out: dict[str, Any] = {}
    for reuse in (True, False):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            pool: ShardedPool[int] = ShardedPool(
                noop_batch, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
            )
            pool.submit_many(range(items))
            pool.close()
            pool.join()
            batches = pool.metrics().batches
            del pool
            gc.collect()
            _, peak = tracemalloc.get_traced_memory()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        b0 = before.statistics("lineno")
        b1 = after.statistics("lineno")
        out[f"reuse_batches={reuse}"] = {
            "items": items,
            "batches": batches,
            "peak_traced_kib": peak / 1024,
            "live_blocks_delta": sum(s.count for s in b1) - sum(s.count for s in b0),
            "live_kib_delta": (sum(s.size for s in b1) - sum(s.size for s in b0)) / 1024,
            **count_batch_lists(items, reuse),
        }
    return out


# --------------------------------------------------------------------------- sweep

SWEEP_WORKERS = (1, 2, 4, 8)
SWEEP_BATCHES = (1, 4, 16, 64, 256, 1024)
#: The workers sweep's handler: sha256 of a buffer this big (over 2 KiB, so hashlib
#: releases the GIL and workers can run in parallel; small enough that the cost per item
#: of the pool still shows).
SWEEP_SHA_BYTES = 4 * 1024
SWEEP_POOL = "ShardedPool (submit_many)"
SWEEP_TPE = "ThreadPoolExecutor.submit"
SWEEP_QUEUE = "threads over queue.SimpleQueue"
#: Series of both sweeps, in legend order.
SWEEP_SERIES = (SWEEP_POOL, SWEEP_TPE, SWEEP_QUEUE)


def _sweep_sha(buf: bytes) -> None:
    hashlib.sha256(buf).digest()


def _sweep_workers_runners(workers: int, buf: bytes) -> dict[str, Runner]:
    """sha256 of ``SWEEP_SHA_BYTES`` per item with ``workers`` threads, three ways."""

    def pool(n: int) -> tuple[int, float]:
        p: ShardedPool[bytes] = ShardedPool(_sweep_sha, workers=workers)
        items = [buf] * n
        t0 = time.perf_counter()
        p.submit_many(items)
        p.close()
        p.join()
        return n, time.perf_counter() - t0

    def tpe(n: int) -> tuple[int, float]:
        with ThreadPoolExecutor(workers) as ex:
            wait_futures([ex.submit(time.sleep, 0.005) for _ in range(workers)])
            sub = ex.submit
            t0 = time.perf_counter()
            wait_futures([sub(_sweep_sha, buf) for _ in range(n)])
            return n, time.perf_counter() - t0

    def threads(n: int) -> tuple[int, float]:
        return _run_queue(
            queue.SimpleQueue(), n, workers=workers, fn=_sweep_sha, items=itertools.repeat(buf, n)
        )

    return {SWEEP_POOL: pool, SWEEP_TPE: tpe, SWEEP_QUEUE: threads}


def _sweep_batch_runners(batch: int, tpe_calls: int) -> dict[str, Runner]:
    """No-op items, 2 workers, handed over in batches of ``batch``, three ways: the pool's
    ``batch_size``; lists of ``batch`` items submitted to a ``ThreadPoolExecutor`` (at
    most ``tpe_calls`` submits, a Future each is slow); lists put on a ``SimpleQueue``."""

    def pool(n: int) -> tuple[int, float]:
        if batch == 1:
            p: ShardedPool[int] = ShardedPool(noop, workers=WORKERS)
        else:
            p = ShardedPool(noop_batch, workers=WORKERS, batch_size=batch)
        t0 = time.perf_counter()
        p.submit_many(range(n))
        p.close()
        p.join()
        return n, time.perf_counter() - t0

    def chunks(n: int) -> list[range]:
        return [range(i, min(i + batch, n)) for i in range(0, n, batch)]

    def tpe(n: int) -> tuple[int, float]:
        m = min(n, max(1, tpe_calls) * batch)
        parts = chunks(m)
        with ThreadPoolExecutor(WORKERS) as ex:
            wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
            sub = ex.submit
            t0 = time.perf_counter()
            wait_futures([sub(noop_batch, list(part)) for part in parts])
            return m, time.perf_counter() - t0

    def threads(n: int) -> tuple[int, float]:
        parts = (list(part) for part in chunks(n))
        return _run_queue(queue.SimpleQueue(), n, fn=noop_batch, items=parts)

    return {SWEEP_POOL: pool, SWEEP_TPE: tpe, SWEEP_QUEUE: threads}


def _sweep(
    axis: str, values: tuple[int, ...], runners: dict[int, dict[str, Runner]], n: int, repeats: int
) -> dict[str, Any]:
    """Interleave every (value, series) contender, round by round; medians per series."""
    flat = {f"{series} {axis}={v}": run for v in values for series, run in runners[v].items()}
    rates = interleaved(flat, lambda _name: n, repeats)
    series: dict[str, list[float]] = {name: [] for name in SWEEP_SERIES}
    samples: dict[str, list[list[float]]] = {name: [] for name in SWEEP_SERIES}
    for v in values:
        for name in SWEEP_SERIES:
            r = rates[f"{name} {axis}={v}"]
            series[name].append(statistics.median(r))
            samples[name].append(r)
    return {"axis": axis, "values": list(values), "items": n, "series": series, "samples": samples}


def measure_sweep(ctx: BenchContext) -> dict[str, Any]:
    """Throughput (items/s) of ShardedPool against the stdlib thread-pool baselines
    across ``SWEEP_WORKERS`` workers (sha256 of 4 KiB per item, GIL released) and across
    ``SWEEP_BATCHES`` batch sizes (no-op items, 2 workers). Prints two tables; the result
    feeds ``shardflow._chart.write_chart``."""
    out = ctx.out
    buf = os.urandom(SWEEP_SHA_BYTES)
    sha_n = 500 if ctx.quick else 10_000
    noop_n = min(ctx.items, 20_000 if ctx.quick else 100_000)
    tpe_calls = max(1, noop_n // TPE_DIVISOR)
    by_workers = _sweep(
        "workers",
        SWEEP_WORKERS,
        {w: _sweep_workers_runners(w, buf) for w in SWEEP_WORKERS},
        sha_n,
        ctx.repeats,
    )
    by_workers["handler"] = f"sha256 of {SWEEP_SHA_BYTES // 1024} KiB (GIL released)"
    by_batch = _sweep(
        "batch_size",
        SWEEP_BATCHES,
        {b: _sweep_batch_runners(b, tpe_calls) for b in SWEEP_BATCHES},
        noop_n,
        ctx.repeats,
    )
    by_batch["handler"] = f"no-op, {WORKERS} workers"
    by_batch["tpe_max_submits"] = tpe_calls
    for sweep, title in (
        (by_workers, f"Sweep over workers: {by_workers['handler']}, {sha_n:,} items"),
        (
            by_batch,
            f"Sweep over batch size: {by_batch['handler']}, {noop_n:,} items "
            f"(ThreadPoolExecutor: at most {tpe_calls:,} submits of one list each)",
        ),
    ):
        print(f"\n{title}; items/s", file=out)
        rows = [[sweep["axis"], *(str(v) for v in sweep["values"])]]
        for name in SWEEP_SERIES:
            rows.append([name, *(_fmt_rate(x).strip() for x in sweep["series"][name])])
        _table(rows, out)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "workers": by_workers,
        "batch_size": by_batch,
    }


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Target:
    """One acceptance check: ``measured <op> threshold``."""

    name: str
    measured: float
    op: str  # ">=", "<", "<=", "=="
    threshold: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        """Whether the measured value meets the threshold."""
        if self.op == ">=":
            return self.measured >= self.threshold
        if self.op == "<":
            return self.measured < self.threshold
        if self.op == "<=":
            return self.measured <= self.threshold
        if self.op == "==":
            return self.measured == self.threshold
        raise ValueError(f"unknown comparison {self.op!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "measured": self.measured,
            "op": self.op,
            "threshold": self.threshold,
            "unit": self.unit,
            "passed": self.passed,
        }


def interleaved(
    runners: dict[str, Runner], n_for: Callable[[str], int], repeats: int
) -> dict[str, list[float]]:
    """Run every runner once per round, ``repeats`` rounds, rotating the order each round.

    Returns the items/s of every run, per runner name.
    """
    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            moved, dt = runners[name](n_for(name))
            rates[name].append(moved / dt if dt > 0 else float("inf"))
    return rates


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc/self/statm``); elsewhere the peak RSS."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def measure_idle(workers: int, seconds: float) -> dict[str, Any]:
    """Process CPU time burnt while a pool of ``workers`` idle workers waits ``seconds``."""
    pool: ShardedPool[int] = ShardedPool(noop, workers=workers)
    try:
        time.sleep(0.05)  # let every worker reach its sleep
        c0 = time.process_time()
        time.sleep(seconds)
        cpu = time.process_time() - c0
    finally:
        pool.close()
        pool.join()
    return {
        "workers": workers,
        "seconds": seconds,
        "cpu_ms": cpu * 1e3,
        "cpu_ms_per_s": cpu * 1e3 / seconds,
    }


def measure_memory(items: int, refcount_items: int) -> dict[str, Any]:
    """RSS growth moving ``items`` through a ``capacity=1024`` pool, and whether an object
    submitted ``refcount_items`` times gets its reference count back after join."""
    gc.collect()
    rss0 = current_rss_bytes()
    pool: ShardedPool[int] = ShardedPool(noop, workers=WORKERS, capacity=1024)
    moved = pool.submit_many(x for x in range(items))
    pool.close()
    pool.join()
    gc.collect()
    rss1 = current_rss_bytes()
    del pool

    refcounts: dict[str, int] = {}
    for mode, handler, batch in (("per-item", noop, 1), ("batch_size=256", noop_batch, BATCH)):
        sentinel = object()
        start = sys.getrefcount(sentinel)
        rpool: ShardedPool[object] = ShardedPool(
            handler, workers=WORKERS, capacity=1024, batch_size=batch
        )
        half = refcount_items // 2
        sub = rpool.submit
        for _ in range(half):
            sub(sentinel)
        rpool.submit_many(itertools.repeat(sentinel, refcount_items - half))
        rpool.close()
        rpool.join()
        refcounts[mode] = sys.getrefcount(sentinel) - start
        del rpool
    return {
        "items": items,
        "moved": moved,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "rss_growth_mb": (rss1 - rss0) / 2**20,
        "refcount_items": refcount_items,
        "refcount_leak": refcounts,
    }


# --------------------------------------------------------------------------- report


def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:8.2f} M/s"
    return f"{x / 1e3:8.1f} k/s"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells), file=out)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _print_targets(targets: list[Target], out: TextIO) -> None:
    width = max(len(t.name) for t in targets)
    for t in targets:
        verdict = "PASS" if t.passed else "MISS"
        unit = "x" if t.unit == "x" else f" {t.unit}"
        measured = f"{t.measured:.2f}{unit}"
        print(f"  {verdict}  {t.name.ljust(width)}  measured {measured}", file=out)


@dataclass(frozen=True)
class BenchContext:
    """What every section gets: the run's sizes and where to print."""

    items: int  #: no-op items per contender per round
    repeats: int  #: interleaved rounds (medians are reported)
    quick: bool  #: smoke-test sizes
    out: TextIO


@dataclass
class SectionResult:
    """What a section returns: its part of the JSON report under ``key``, its target
    checks and notes (printed after the targets)."""

    key: str
    data: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: A section: measures, prints its own table to ``ctx.out``, returns its result.
Section = Callable[[BenchContext], SectionResult]


def _run_memory(ctx: BenchContext) -> SectionResult:
    mem_items = 200_000 if ctx.quick else 5_000_000
    ref_items = 10_000 if ctx.quick else 100_000
    memory = measure_memory(mem_items, ref_items)
    print(
        f"\nMemory: {mem_items:,} items through capacity=1024: RSS "
        f"{memory['rss_before_mb']:.1f} -> {memory['rss_after_mb']:.1f} MB "
        f"({memory['rss_growth_mb']:+.2f} MB); refcount change after {ref_items:,} "
        f"submits: {memory['refcount_leak']}",
        file=ctx.out,
    )
    targets = [
        Target(
            f"RSS growth over {mem_items:,} items < 20 MB",
            memory["rss_growth_mb"],
            "<",
            20,
            unit="MB",
        )
    ]
    for mode, leak in memory["refcount_leak"].items():
        targets.append(Target(f"refcount restored after join ({mode})", leak, "==", 0, unit="refs"))
    return SectionResult("memory", memory, targets)


def _run_idle(ctx: BenchContext) -> SectionResult:
    idle_seconds = 0.2 if ctx.quick else 1.0
    idle = measure_idle(8, idle_seconds)
    print(
        f"\nIdle: 8 workers for {idle_seconds:g} s burnt {idle['cpu_ms']:.2f} ms CPU "
        f"({idle['cpu_ms_per_s']:.2f} ms per second)",
        file=ctx.out,
    )
    target = Target(
        "idle 8 workers < 20 ms CPU per second", idle["cpu_ms_per_s"], "<", 20, unit="ms/s"
    )
    return SectionResult("idle", idle, [target])


def _run_throughput(ctx: BenchContext) -> SectionResult:
    data, targets = _section_throughput(ctx.items, ctx.repeats, ctx.out)
    return SectionResult("throughput", data, targets)


def _run_gil(ctx: BenchContext) -> SectionResult:
    data, targets = _section_gil(200 if ctx.quick else 4_000, ctx.repeats, ctx.out)
    return SectionResult("gil_release", data, targets)


def _run_stealing(ctx: BenchContext) -> SectionResult:
    steal_items = 300 if ctx.quick else STEAL_ITEMS
    data, targets = _section_stealing(steal_items, ctx.items, ctx.repeats, ctx.out)
    return SectionResult("stealing", data, targets, list(data["notes"]))


def _run_latency(ctx: BenchContext) -> SectionResult:
    data, targets = _section_latency(10 if ctx.quick else 80, ctx.out)
    return SectionResult("batch_latency", data, targets)


def _run_reuse(ctx: BenchContext) -> SectionResult:
    alloc_items = 20_000 if ctx.quick else 100_000
    data, targets = _section_reuse(ctx.items, alloc_items, ctx.repeats, ctx.out)
    return SectionResult("batch_reuse", data, targets)


def _run_pipeline(ctx: BenchContext) -> SectionResult:
    # 3 no-op stages vs a bare loop and stage threads over queues (_bench_pipeline).
    from shardflow._bench_pipeline import pipeline_section

    data, targets = pipeline_section(ctx.items, ctx.repeats, ctx.quick, ctx.out)
    return SectionResult("pipeline", data, targets)


def _run_executor(ctx: BenchContext) -> SectionResult:
    # shardflow.Executor vs ThreadPoolExecutor, see _bench_executor
    from shardflow._bench_executor import section_executor

    data, targets = section_executor(ctx.items, ctx.repeats, ctx.out)
    return SectionResult("executor", data, targets)


def _run_sweep(ctx: BenchContext) -> SectionResult:
    return SectionResult("sweep", measure_sweep(ctx))


#: The sections of the report, in the order they run (``run_bench(sections=...)``,
#: ``python -m shardflow bench --sections``). To add one, write a ``Section`` and
#: register it with one line: ``SECTIONS["name"] = run_my_section``.
#: Memory first, on a clean heap: after the throughput runs, arenas freed by them would
#: absorb (and hide) growth. Idle next, while nothing else of ours runs.
SECTIONS: dict[str, Section] = {
    "memory": _run_memory,
    "idle": _run_idle,
    "throughput": _run_throughput,
    "gil": _run_gil,
    "stealing": _run_stealing,
    "latency": _run_latency,
    "reuse": _run_reuse,
    "pipeline": _run_pipeline,
    "executor": _run_executor,
    "sweep": _run_sweep,
}


def run_bench(
    items: int = 1_000_000,
    repeats: int = 5,
    quick: bool = False,
    out: TextIO = sys.stdout,
    sections: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark sections, print the report to ``out`` and return it as a dict.

    Args:
        items: no-op items per contender per round (ThreadPoolExecutor moves
            ``items // 20``); also the items of the steal-cost and ``reuse_batches``
            comparisons.
        repeats: rounds; each round runs every contender once; the report is the median.
        quick: shrink the GIL, stealing, latency, idle, memory and sweep sections too (for
            tests and smoke runs); ``items`` and ``repeats`` are used as given.
        out: where the report goes.
        sections: which of ``SECTIONS`` to run; None runs them all.

    Returns:
        A JSON-able dict: ``config``, one key per section run (``memory``, ``idle``,
        ``throughput``, ``gil_release``, ``stealing``, ``batch_latency``, ``batch_reuse``,
        ``sweep`` ...) and the list of target checks of those sections.

    Example:
        >>> import io
        >>> report = run_bench(items=1000, repeats=1, quick=True, sections=["throughput"],
        ...                    out=io.StringIO())
        >>> sorted(report["throughput"]) == sorted(CONTENDERS)
        True
    """
    if items < 1:
        raise ValueError(f"items must be >= 1, got {items!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    chosen = tuple(SECTIONS) if sections is None else tuple(sections)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise ValueError(f"sections must be among {', '.join(SECTIONS)}; got {list(chosen)!r}")

    print(
        f"shardflow bench: {items:,} no-op items x {repeats} interleaved rounds, "
        f"{WORKERS} workers; Python {platform.python_version()} "
        f"({platform.python_implementation()}), {os.cpu_count()} CPUs",
        file=out,
    )
    print(
        f"(ThreadPoolExecutor moves {max(1, items // TPE_DIVISOR):,} items per round; "
        "all figures are medians)",
        file=out,
    )
    print(
        f"sections: {', '.join(s for s in SECTIONS if s in chosen)}; "
        f"load average at start: {_loadavg()}",
        file=out,
    )
    out.flush()

    report: dict[str, Any] = {
        "config": {
            "items": items,
            "repeats": repeats,
            "quick": quick,
            "workers": WORKERS,
            "tpe_items": max(1, items // TPE_DIVISOR),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "cpus": os.cpu_count(),
            "sections": [s for s in SECTIONS if s in chosen],
            "loadavg_start": _loadavg(),
        },
    }
    targets: list[Target] = []
    notes: list[str] = []
    ctx = BenchContext(items=items, repeats=repeats, quick=quick, out=out)
    for name, section in SECTIONS.items():
        if name not in chosen:
            continue
        result = section(ctx)
        report[result.key] = result.data
        targets += result.targets
        notes += result.notes
        out.flush()

    print(f"\nload average at end: {_loadavg()}", file=out)
    if targets:
        print("\nTargets:", file=out)
        _print_targets(targets, out)
    for note in notes:
        print(f"  note: {note}", file=out)
    out.flush()
    report["config"]["loadavg_end"] = _loadavg()
    report["targets"] = [t.as_dict() for t in targets]
    return report


def _loadavg() -> str:
    """The 1/5/15-minute load averages, or "n/a" where ``os.getloadavg`` is missing."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


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
            "vs_simplequeue": _ratio(m, med[SIMPLEQUEUE]),
            "vs_tpe": _ratio(m, med[TPE]),
            "vs_bare_loop": _ratio(m, med[BARE]),
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
                _fmt_rate(m),
                f"{ratios['vs_simplequeue']:.2f}x",
                f"{ratios['vs_tpe']:.1f}x",
                f"{ratios['vs_bare_loop']:.3f}x",
            ]
        )
    print(file=out)
    _table(rows, out)
    out.flush()
    item, batch, many = med[POOL_ITEM], med[POOL_BATCH], med[POOL_MANY]
    targets = [
        Target("per-item >= 100x ThreadPoolExecutor", _ratio(item, med[TPE]), ">=", 100),
        Target("per-item >= 1.3x SimpleQueue pool", _ratio(item, med[SIMPLEQUEUE]), ">=", 1.3),
        Target("per-item >= 0.3x bare loop", _ratio(item, med[BARE]), ">=", 0.3),
        Target(
            "batch_size=256 per-item submit >= 2x SimpleQueue pool",
            _ratio(batch, med[SIMPLEQUEUE]),
            ">=",
            2,
        ),
        Target(
            "submit_many + batches >= 4x SimpleQueue pool",
            _ratio(many, med[SIMPLEQUEUE]),
            ">=",
            4,
        ),
    ]
    return throughput, targets


def _section_gil(sha_items: int, repeats: int, out: TextIO) -> tuple[dict[str, Any], list[Target]]:
    sha_rates = interleaved(SHA_CONTENDERS, lambda _name: sha_items, repeats)
    sha_med = {name: statistics.median(r) for name, r in sha_rates.items()}
    gil: dict[str, Any] = {
        "items": sha_items,
        "buffer_bytes": SHA_BUF_SIZE,
        "contenders": {
            name: {"items_per_s": sha_med[name], "samples": sha_rates[name]}
            for name in SHA_CONTENDERS
        },
        "pool2_vs_pool1": _ratio(sha_med[SHA_POOL2], sha_med[SHA_POOL1]),
        "pool2_vs_tpe": _ratio(sha_med[SHA_POOL2], sha_med[SHA_TPE]),
        # What the machine allows: two threads with no queue against one pool worker.
        "ceiling_vs_pool1": _ratio(sha_med[SHA_THREADS], sha_med[SHA_POOL1]),
    }
    print(f"\nGIL-releasing handler: sha256 of 64 KiB, {sha_items:,} items", file=out)
    rows = [["contender", "items/s", "vs workers=1"]]
    for name in SHA_CONTENDERS:
        rows.append(
            [
                name,
                _fmt_rate(sha_med[name]),
                f"{_ratio(sha_med[name], sha_med[SHA_POOL1]):.2f}x",
            ]
        )
    _table(rows, out)
    print(
        f"(2 plain threads with no queue reach {gil['ceiling_vs_pool1']:.2f}x one pool worker: "
        "the parallelism this machine gives right now)",
        file=out,
    )
    out.flush()
    targets = [
        Target("sha256: 2 workers >= 1.8x one worker", gil["pool2_vs_pool1"], ">=", 1.8),
        Target("sha256: 2 workers >= 1.0x ThreadPoolExecutor(2)", gil["pool2_vs_tpe"], ">=", 1.0),
    ]
    return gil, targets


def _section_stealing(
    steal_items: int, items: int, repeats: int, out: TextIO
) -> tuple[dict[str, Any], list[Target]]:
    runners = steal_contenders()
    rates = interleaved(runners, lambda _name: steal_items, repeats)
    med = {name: statistics.median(r) for name, r in rates.items()}
    parallelism = _ratio(med[STEAL_THREADS2], med[STEAL_THREADS1])
    contenders: dict[str, Any] = {}
    rows = [["contender", "items/s", "vs no steal", "vs 1 thread", "stolen_in", "busiest shard"]]
    for name in runners:
        runner = runners[name]
        row: dict[str, Any] = {"items_per_s": med[name], "samples": rates[name]}
        stolen = busiest = "-"
        if isinstance(runner, StealRun):
            row["stolen_in"] = runner.stolen
            row["stolen_in_median"] = statistics.median(runner.stolen)
            split = runner.split[0]
            row["submitted_per_shard"] = split
            row["busiest_shard_share"] = max(split) / max(1, sum(split))
            stolen = f"{row['stolen_in_median']:,.0f}"
            busiest = f"{row['busiest_shard_share']:.0%}"
        base = {
            STEAL_ZIPF: STEAL_ZIPF_OFF,
            STEAL_ONE: STEAL_ONE_OFF,
            STEAL_ONE_CLOSED: STEAL_ONE_OFF,
        }.get(name)
        vs_off = f"{_ratio(med[name], med[base]):.2f}x" if base else "-"
        contenders[name] = row
        rows.append(
            [
                name,
                _fmt_rate(med[name]),
                vs_off,
                f"{_ratio(med[name], med[STEAL_THREADS1]):.2f}x",
                stolen,
                busiest,
            ]
        )
    print(
        f"\nWork stealing: sha256 of 64 KiB per item, {steal_items:,} items by submit_many, "
        f"{WORKERS} workers, key=..., ordered=False; clock stops when the last item was "
        "handled, pool still open (except the close() row)",
        file=out,
    )
    _table(rows, out)
    zipf_share = contenders[STEAL_ZIPF_OFF]["busiest_shard_share"]
    # Without stealing the busiest shard's worker handles `share` of the items alone; with
    # ideal stealing each of the 2 workers handles half. With parallelism P <= 2 both take
    # at least 1/P of the single-thread time.
    p = min(max(parallelism, 1.0), float(WORKERS))

    def bound(share: float) -> float:
        return max(share, 1 / p) / (1 / p)

    print(
        f"(control: 2 plain threads reach {parallelism:.2f}x one thread: the parallelism this "
        f"machine gives right now. Best steal/no-steal ratio at that parallelism: zipf "
        f"{bound(zipf_share):.2f}x (busiest shard {zipf_share:.0%} of the items), one shard "
        f"{bound(1.0):.2f}x; with 2 free cores: zipf {2 * zipf_share:.2f}x, one shard 2.00x)",
        file=out,
    )
    out.flush()

    cost_rates = interleaved(STEAL_COST_CONTENDERS, lambda _name: items, repeats)
    cost_med = {name: statistics.median(r) for name, r in cost_rates.items()}
    cost_ratio = _ratio(cost_med[ITEM_STEAL], cost_med[ITEM_NO_STEAL])
    print(
        f"\nWhat stealing costs the GIL-bound path: ShardedPool(noop, workers=2), {items:,} "
        "per-item submits, unkeyed",
        file=out,
    )
    rows = [["contender", "items/s", "vs steal=False"]]
    for name in STEAL_COST_CONTENDERS:
        cost_vs_off = _ratio(cost_med[name], cost_med[ITEM_NO_STEAL])
        rows.append([name, _fmt_rate(cost_med[name]), f"{cost_vs_off:.3f}x"])
    _table(rows, out)
    out.flush()

    zipf_ratio = _ratio(med[STEAL_ZIPF], med[STEAL_ZIPF_OFF])
    zipf_vs_uniform = _ratio(med[STEAL_ZIPF], med[STEAL_UNIFORM])
    one_ratio = _ratio(med[STEAL_ONE], med[STEAL_ONE_OFF])
    notes = []
    if 2 * zipf_share < 1.6:
        notes.append(
            f"zipf keys put {zipf_share:.0%} of the items on the busiest of {WORKERS} shards, "
            f"so even perfect stealing on 2 free cores gains at most {2 * zipf_share:.2f}x: "
            "the 1.6x target cannot be met with this key distribution"
        )
    if parallelism < 1.6:
        notes.append(
            f"2 plain threads reached only {parallelism:.2f}x one thread: the machine, not "
            "the pool, caps every steal ratio here"
        )
    if contenders[STEAL_ONE]["stolen_in_median"] == 0:
        notes.append(
            "one shard, steal=True stole nothing while the pool stayed open (the idle worker "
            "was never woken to steal)"
            + (
                f"; closed right after submit_many it stole "
                f"{contenders[STEAL_ONE_CLOSED]['stolen_in_median']:,.0f} items"
                if contenders[STEAL_ONE_CLOSED]["stolen_in_median"]
                else ""
            )
        )
    stealing: dict[str, Any] = {
        "items": steal_items,
        "buffer_bytes": SHA_BUF_SIZE,
        "zipf": {"keys": ZIPF_KEYS, "s": ZIPF_S, "seed": ZIPF_SEED},
        "contenders": contenders,
        "parallelism_2_threads_vs_1": parallelism,
        "zipf_steal_vs_no_steal": zipf_ratio,
        "zipf_steal_vs_uniform": zipf_vs_uniform,
        "one_shard_steal_vs_no_steal": one_ratio,
        "zipf_busiest_shard_share": zipf_share,
        "bound_zipf_2_free_cores": 2 * zipf_share,
        "bound_zipf_measured_parallelism": bound(zipf_share),
        "bound_one_shard_measured_parallelism": bound(1.0),
        "per_item_cost": {
            "items": items,
            "contenders": {
                name: {"items_per_s": cost_med[name], "samples": cost_rates[name]}
                for name in STEAL_COST_CONTENDERS
            },
            "steal_vs_no_steal": cost_ratio,
        },
        "notes": notes,
    }
    targets = [
        Target("stealing: zipf keys, steal >= 1.6x no steal", zipf_ratio, ">=", 1.6),
        Target("stealing: zipf + steal >= 0.9x uniform keys", zipf_vs_uniform, ">=", 0.9),
        Target("stealing: one shard, steal >= 1.8x no steal", one_ratio, ">=", 1.8),
    ]
    return stealing, targets


def _section_latency(latency_items: int, out: TextIO) -> tuple[dict[str, Any], list[Target]]:
    lat = measure_batch_latency(latency_items)
    print(
        f"\nBatch deadline latency: BatchProcessor(batch_size={lat['batch_size']}, "
        f"batch_timeout={lat['batch_timeout_ms'] / 1e3:g}), one put every "
        f"{lat['interval_ms']:g} ms, {latency_items} items ({lat['batches']} batches, "
        f"largest {lat['max_batch']}); handler start - put time:",
        file=out,
    )
    ctl = lat["control_simplequeue_thread"]
    for label, st in (("BatchProcessor", lat), ("control: thread + SimpleQueue.get(timeout)", ctl)):
        print(
            f"  {label:<42}  p50 {st['p50_ms']:6.2f} ms  p99 {st['p99_ms']:6.2f} ms  "
            f"max {st['max_ms']:6.2f} ms  min {st['min_ms']:6.2f} ms",
            file=out,
        )
    out.flush()
    limit = lat["batch_timeout_ms"] + 2
    return lat, [
        Target(
            f"batch deadline: p99 <= batch_timeout + 2 ms = {limit:g} ms",
            lat["p99_ms"],
            "<=",
            limit,
            unit="ms",
        )
    ]


def _section_reuse(
    items: int, alloc_items: int, repeats: int, out: TextIO
) -> tuple[dict[str, Any], list[Target]]:
    rates = interleaved(REUSE_CONTENDERS, lambda _name: items, repeats)
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratio = _ratio(med[REUSE_ON], med[REUSE_OFF])
    print(
        f"\nPooled batch lists: ShardedPool(noop_batch, workers=2, batch_size=256), "
        f"submit_many of {items:,} items",
        file=out,
    )
    rows = [["contender", "items/s", "vs reuse_batches=False"]]
    for name in REUSE_CONTENDERS:
        rows.append([name, _fmt_rate(med[name]), f"{_ratio(med[name], med[REUSE_OFF]):.3f}x"])
    _table(rows, out)
    alloc = measure_batch_allocations(alloc_items)
    print(f"Allocations over {alloc_items:,} items (tracemalloc sees live blocks only):", file=out)
    rows = [["mode", "batches", "lists allocated", "peak traced", "live blocks +/-"]]
    for mode, a in alloc.items():
        rows.append(
            [
                mode,
                f"{a['batches']:,}",
                f"{a['lists_allocated']:,}",
                f"{a['peak_traced_kib']:,.0f} KiB",
                f"{a['live_blocks_delta']:+,}",
            ]
        )
    _table(rows, out)
    out.flush()
    reuse = {
        "items": items,
        "contenders": {
            name: {"items_per_s": med[name], "samples": rates[name]} for name in REUSE_CONTENDERS
        },
        "reuse_vs_no_reuse": ratio,
        "allocations": alloc,
    }
    return reuse, [Target("reuse_batches=True >= 1.1x reuse_batches=False", ratio, ">=", 1.1)]
