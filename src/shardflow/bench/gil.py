"""Section ``gil``: a handler that releases the GIL (sha256 of 64 KiB buffers), where more
workers do help: ShardedPool with 1 and 2 workers against a bare loop,
``ThreadPoolExecutor(2)`` and two plain threads splitting the work statically.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TextIO

from shardflow.bench.common import (
    SHA_BUF_SIZE,
    WORKERS,
    BenchContext,
    Runner,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    print_table,
    safe_ratio,
    sha256_handler,
    sha_buffer,
)
from shardflow.pool import ShardedPool


def _sha_pool(workers: int) -> Runner:
    def run(n: int) -> tuple[int, float]:
        buf = sha_buffer()
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
    buf = sha_buffer()
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
    buf = sha_buffer()
    t0 = time.perf_counter()
    for _ in range(n):
        sha256_handler(buf)
    return n, time.perf_counter() - t0


def run_sha_threads(n: int) -> tuple[int, float]:
    """sha256 of 64 KiB per item in two plain threads, each given half the items up front:
    no queue at all, so this is the machine's parallel ceiling for the other contenders."""
    buf = sha_buffer()
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


def run_section(ctx: BenchContext) -> SectionResult:
    data, targets = _section_gil(200 if ctx.quick else 4_000, ctx.repeats, ctx.out)
    return SectionResult("gil_release", data, targets)


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
        "pool2_vs_pool1": safe_ratio(sha_med[SHA_POOL2], sha_med[SHA_POOL1]),
        "pool2_vs_tpe": safe_ratio(sha_med[SHA_POOL2], sha_med[SHA_TPE]),
        # What the machine allows: two threads with no queue against one pool worker.
        "ceiling_vs_pool1": safe_ratio(sha_med[SHA_THREADS], sha_med[SHA_POOL1]),
    }
    print(f"\nGIL-releasing handler: sha256 of 64 KiB, {sha_items:,} items", file=out)
    rows = [["contender", "items/s", "vs workers=1"]]
    for name in SHA_CONTENDERS:
        rows.append(
            [
                name,
                fmt_rate(sha_med[name]),
                f"{safe_ratio(sha_med[name], sha_med[SHA_POOL1]):.2f}x",
            ]
        )
    print_table(rows, out)
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
