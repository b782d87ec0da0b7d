"""Section ``sweep``: items/s against the number of workers and against the batch size,
ShardedPool (``submit_many``) vs ``ThreadPoolExecutor.submit`` vs threads over a
``queue.SimpleQueue``; ``shardflow.cli.chart`` draws it for ``bench --chart``.

The batch-size axis also has the lazy-source rows: ``submit_many`` fed by a generator, and
the same generator drained alone (``deque(gen, maxlen=0)``: the source's own cost, which
the pool cannot beat). Its targets are checked per interleaved round, not only on the
medians: ``submit_many(range(n))`` >= 1.5x the SimpleQueue threads at every batch size,
and ``submit_many(generator)`` >= 0.8x the drained generator at batch sizes >= 64.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import platform
import queue
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

from shardflow.bench.common import (
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
)
from shardflow.bench.throughput import lazy_source, run_generator_drain, run_thread_queue
from shardflow.pool import ShardedPool

SWEEP_WORKERS = (1, 2, 4, 8)
SWEEP_BATCHES = (1, 4, 16, 64, 256, 1024)
#: The workers sweep's handler: sha256 of a buffer this big (over 2 KiB, so hashlib
#: releases the GIL and workers can run in parallel; small enough that the cost per item
#: of the pool still shows).
SWEEP_SHA_BYTES = 4 * 1024
SWEEP_POOL = "ShardedPool (submit_many)"
SWEEP_TPE = "ThreadPoolExecutor.submit"
SWEEP_QUEUE = "threads over queue.SimpleQueue"
SWEEP_POOL_GEN = "ShardedPool (submit_many(generator))"
SWEEP_GEN_DRAIN = "generator drained alone"
#: Series of the workers sweep, in legend order.
SWEEP_SERIES = (SWEEP_POOL, SWEEP_TPE, SWEEP_QUEUE)
#: Series of the batch-size sweep: the same, plus the lazy-source pair.
SWEEP_BATCH_SERIES = (*SWEEP_SERIES, SWEEP_POOL_GEN, SWEEP_GEN_DRAIN)
#: No-op items per run of the batch-size sweep (at most ``--items``): runs of 20-50 ms.
#: With 100,000 items a run lasted 2-3 ms, so one late thread wake-up (or one 5 ms switch
#: interval) decided a sample.
SWEEP_NOOP_ITEMS = 1_000_000
#: The lazy-source target applies from this batch size up.
SWEEP_GEN_MIN_BATCH = 64


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
        return run_thread_queue(
            queue.SimpleQueue(), n, workers=workers, fn=_sweep_sha, items=itertools.repeat(buf, n)
        )

    return {SWEEP_POOL: pool, SWEEP_TPE: tpe, SWEEP_QUEUE: threads}


def _sweep_batch_runners(batch: int, tpe_calls: int) -> dict[str, Runner]:
    """No-op items, 2 workers, handed over in batches of ``batch``, three ways: the pool's
    ``batch_size``; lists of ``batch`` items submitted to a ``ThreadPoolExecutor`` (at
    most ``tpe_calls`` submits, a Future each is slow); lists put on a ``SimpleQueue``."""

    def make() -> ShardedPool[int]:
        if batch == 1:
            return ShardedPool(noop, workers=WORKERS)
        return ShardedPool(noop_batch, workers=WORKERS, batch_size=batch)

    def pool(n: int) -> tuple[int, float]:
        p = make()
        t0 = time.perf_counter()
        p.submit_many(range(n))
        p.close()
        p.join()
        return n, time.perf_counter() - t0

    def pool_gen(n: int) -> tuple[int, float]:
        p = make()
        gen = lazy_source(n)
        t0 = time.perf_counter()
        p.submit_many(gen)
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
        return run_thread_queue(queue.SimpleQueue(), n, fn=noop_batch, items=parts)

    return {
        SWEEP_POOL: pool,
        SWEEP_TPE: tpe,
        SWEEP_QUEUE: threads,
        SWEEP_POOL_GEN: pool_gen,
        SWEEP_GEN_DRAIN: run_generator_drain,
    }


def _sweep(
    axis: str,
    values: tuple[int, ...],
    runners: dict[int, dict[str, Runner]],
    n: int,
    repeats: int,
    names: tuple[str, ...] = SWEEP_SERIES,
) -> dict[str, Any]:
    """Interleave every (value, series) contender, round by round; medians per series."""
    flat = {f"{series} {axis}={v}": run for v in values for series, run in runners[v].items()}
    rates = interleaved(flat, lambda _name: n, repeats)
    series: dict[str, list[float]] = {name: [] for name in names}
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for v in values:
        for name in names:
            r = rates[f"{name} {axis}={v}"]
            series[name].append(statistics.median(r))
            samples[name].append(r)
    return {"axis": axis, "values": list(values), "items": n, "series": series, "samples": samples}


def measure_sweep(ctx: BenchContext) -> dict[str, Any]:
    """Throughput (items/s) of ShardedPool against the stdlib thread-pool baselines
    across ``SWEEP_WORKERS`` workers (sha256 of 4 KiB per item, GIL released) and across
    ``SWEEP_BATCHES`` batch sizes (no-op items, 2 workers). Prints two tables; the result
    feeds ``shardflow.cli.chart.write_chart``."""
    out = ctx.out
    buf = os.urandom(SWEEP_SHA_BYTES)
    sha_n = 500 if ctx.quick else 10_000
    noop_n = min(ctx.items, 20_000 if ctx.quick else SWEEP_NOOP_ITEMS)
    # ThreadPoolExecutor makes a Future per submit: at most 5,000 of them per run.
    tpe_calls = max(1, min(noop_n, 100_000) // TPE_DIVISOR)
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
        SWEEP_BATCH_SERIES,
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
        for name in sweep["series"]:
            rows.append([name, *(fmt_rate(x).strip() for x in sweep["series"][name])])
        print_table(rows, out)
    by_batch["per_round"] = _per_round_ratios(by_batch)
    for label, key in (
        ("submit_many(range) / SimpleQueue threads", "pool_vs_simplequeue"),
        ("submit_many(generator) / generator drained alone", "generator_vs_drain"),
    ):
        print(f"{label}, per round:", file=out)
        for v, rounds in zip(by_batch["values"], by_batch["per_round"][key], strict=True):
            print(
                f"  batch_size={v:<5} {' '.join(f'{r:5.2f}' for r in rounds)}  "
                f"(min {min(rounds):.2f}, median {statistics.median(rounds):.2f})",
                file=out,
            )
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "workers": by_workers,
        "batch_size": by_batch,
    }


def _per_round_ratios(by_batch: dict[str, Any]) -> dict[str, list[list[float]]]:
    """Per batch size, the ratio of each interleaved round (same round, same position)."""
    s = by_batch["samples"]

    def ratios(a: str, b: str) -> list[list[float]]:
        return [
            [x / y if y > 0 else float("inf") for x, y in zip(ra, rb, strict=True)]
            for ra, rb in zip(s[a], s[b], strict=True)
        ]

    return {
        "pool_vs_simplequeue": ratios(SWEEP_POOL, SWEEP_QUEUE),
        "generator_vs_drain": ratios(SWEEP_POOL_GEN, SWEEP_GEN_DRAIN),
    }


def sweep_targets(data: dict[str, Any]) -> list[Target]:
    """The batch-size sweep's targets, on the worst round (the issue asks for every round)
    and on the medians."""
    by_batch = data["batch_size"]
    rounds = by_batch["per_round"]
    vs_queue = rounds["pool_vs_simplequeue"]
    gen = [
        r
        for v, r in zip(by_batch["values"], rounds["generator_vs_drain"], strict=True)
        if v >= SWEEP_GEN_MIN_BATCH
    ]
    targets = [
        Target(
            "sweep: submit_many >= 1.5x SimpleQueue threads, every batch size, worst round",
            min(min(r) for r in vs_queue),
            ">=",
            1.5,
        ),
        Target(
            "sweep: submit_many >= 1.5x SimpleQueue threads, every batch size, medians",
            min(statistics.median(r) for r in vs_queue),
            ">=",
            1.5,
        ),
    ]
    if gen:
        targets += [
            Target(
                f"sweep: submit_many(generator) >= 0.8x drained, batch >= "
                f"{SWEEP_GEN_MIN_BATCH}, worst round",
                min(min(r) for r in gen),
                ">=",
                0.8,
            ),
            Target(
                f"sweep: submit_many(generator) >= 0.8x drained, batch >= "
                f"{SWEEP_GEN_MIN_BATCH}, medians",
                min(statistics.median(r) for r in gen),
                ">=",
                0.8,
            ),
        ]
    return targets


def run_section(ctx: BenchContext) -> SectionResult:
    data = measure_sweep(ctx)
    return SectionResult("sweep", data, sweep_targets(data))
