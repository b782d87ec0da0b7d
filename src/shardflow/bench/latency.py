"""Section ``latency``: the delay a batch deadline (``batch_timeout``) gives a lone item,
against a stdlib batcher thread doing the same with ``queue.get(timeout=...)``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from shardflow.batching import BatchProcessor
from shardflow.bench.common import STOP, BenchContext, SectionResult, Target, quantile

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
        if first is STOP:
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
            if x is STOP:
                stop = True
                break
            batch.append(x)
        handler(batch)
        if stop:
            return


def _latency_stats(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {
        "p50_ms": quantile(ordered, 0.50),
        "p99_ms": quantile(ordered, 0.99),
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
        q.put(STOP)
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


def run_section(ctx: BenchContext) -> SectionResult:
    data, targets = _section_latency(10 if ctx.quick else 80, ctx.out)
    return SectionResult("batch_latency", data, targets)


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
