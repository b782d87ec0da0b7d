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
pool burns, and memory (RSS growth through a bounded pool, reference counts after join).
Targets are checked against the measured ratios; nothing is hard-coded.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import platform
import queue
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, TextIO

from shardflow.pool import ShardedPool

__all__ = ["CONTENDERS", "Target", "noop", "noop_batch", "run_bench"]

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


def _run_queue(q: queue.Queue[Any] | queue.SimpleQueue[Any], n: int) -> tuple[int, float]:
    def consume() -> None:
        get = q.get
        fn = noop
        stop = _STOP
        while True:
            x = get()
            if x is stop:
                return
            fn(x)

    threads = [threading.Thread(target=consume, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    put = q.put
    t0 = time.perf_counter()
    for x in range(n):
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


def run_pool_item(n: int) -> tuple[int, float]:
    """``ShardedPool(noop, workers=2)``, one ``submit`` per item, then close + join."""
    pool: ShardedPool[int] = ShardedPool(noop, workers=WORKERS)
    sub = pool.submit
    t0 = time.perf_counter()
    for x in range(n):
        sub(x)
    pool.close()
    pool.join()
    return n, time.perf_counter() - t0


def run_pool_batch(n: int) -> tuple[int, float]:
    """``ShardedPool(noop_batch, workers=2, batch_size=256)``, one ``submit`` per item."""
    pool: ShardedPool[int] = ShardedPool(noop_batch, workers=WORKERS, batch_size=BATCH)
    sub = pool.submit
    t0 = time.perf_counter()
    for x in range(n):
        sub(x)
    pool.close()
    pool.join()
    return n, time.perf_counter() - t0


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


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Target:
    """One acceptance check: ``measured <op> threshold``."""

    name: str
    measured: float
    op: str  # ">=", "<", "=="
    threshold: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        """Whether the measured value meets the threshold."""
        if self.op == ">=":
            return self.measured >= self.threshold
        if self.op == "<":
            return self.measured < self.threshold
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


def run_bench(
    items: int = 1_000_000,
    repeats: int = 5,
    quick: bool = False,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run every benchmark section, print the report to ``out`` and return it as a dict.

    Args:
        items: no-op items per contender per round (ThreadPoolExecutor moves
            ``items // 20``).
        repeats: rounds; each round runs every contender once; the report is the median.
        quick: shrink the GIL, idle and memory sections too (for tests and smoke runs);
            ``items`` and ``repeats`` are used as given.
        out: where the report goes.

    Returns:
        A JSON-able dict: per contender the median items/s, every sample and the ratios;
        the GIL-release, idle and memory sections; and the list of target checks.
    """
    if items < 1:
        raise ValueError(f"items must be >= 1, got {items!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    sha_items = 200 if quick else 4_000
    idle_seconds = 0.2 if quick else 1.0
    mem_items = 200_000 if quick else 5_000_000
    ref_items = 10_000 if quick else 100_000

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
    out.flush()

    # Memory first, on a clean heap: after the throughput runs, arenas freed by them would
    # absorb (and hide) growth. Idle next, while nothing else of ours runs.
    memory = measure_memory(mem_items, ref_items)
    idle = measure_idle(8, idle_seconds)

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

    # GIL-releasing handler.
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
    out.flush()

    print(
        f"(2 plain threads with no queue reach {gil['ceiling_vs_pool1']:.2f}x one pool worker: "
        "the parallelism this machine gives right now)",
        file=out,
    )
    print(
        f"\nIdle: 8 workers for {idle_seconds:g} s burnt {idle['cpu_ms']:.2f} ms CPU "
        f"({idle['cpu_ms_per_s']:.2f} ms per second)",
        file=out,
    )
    print(
        f"Memory: {mem_items:,} items through capacity=1024: RSS "
        f"{memory['rss_before_mb']:.1f} -> {memory['rss_after_mb']:.1f} MB "
        f"({memory['rss_growth_mb']:+.2f} MB); refcount change after {ref_items:,} "
        f"submits: {memory['refcount_leak']}",
        file=out,
    )

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
        Target("sha256: 2 workers >= 1.8x one worker", gil["pool2_vs_pool1"], ">=", 1.8),
        Target("sha256: 2 workers >= 1.0x ThreadPoolExecutor(2)", gil["pool2_vs_tpe"], ">=", 1.0),
        Target("idle 8 workers < 20 ms CPU per second", idle["cpu_ms_per_s"], "<", 20, unit="ms/s"),
        Target(
            f"RSS growth over {mem_items:,} items < 20 MB",
            memory["rss_growth_mb"],
            "<",
            20,
            unit="MB",
        ),
    ]
    for mode, leak in memory["refcount_leak"].items():
        targets.append(Target(f"refcount restored after join ({mode})", leak, "==", 0, unit="refs"))
    print("\nTargets:", file=out)
    _print_targets(targets, out)
    out.flush()

    return {
        "config": {
            "items": items,
            "repeats": repeats,
            "quick": quick,
            "workers": WORKERS,
            "tpe_items": max(1, items // TPE_DIVISOR),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "cpus": os.cpu_count(),
        },
        "throughput": throughput,
        "gil_release": gil,
        "idle": idle,
        "memory": memory,
        "targets": [t.as_dict() for t in targets],
    }
