"""A handler that releases the GIL: sha256 of a 64 KiB buffer per item.

Under the GIL, more workers only help handlers like this one (hashlib drops the GIL for
buffers over 2 KiB); on a 2-core machine ``workers=2`` should approach twice
``workers=1``. Group ``gil-release-sha256``; construction is in ``setup``, not timed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import pytest

from shardflow import ShardedPool
from shardflow.bench.common import SHA_BUF_SIZE, WORKERS, sha256_handler
from shardflow.bench.gil import run_sha_threads

GROUP = "gil-release-sha256"


@pytest.fixture(scope="module")
def buf() -> bytes:
    """The 64 KiB buffer every item hashes."""
    return os.urandom(SHA_BUF_SIZE)


@pytest.mark.benchmark(group=GROUP)
def test_sha256_bare_loop(
    benchmark: Any, buf: bytes, sha_items: int, rounds: int, record_rate: Any
) -> None:
    """One thread, no pool: the reference."""

    def run() -> None:
        for _ in range(sha_items):
            sha256_handler(buf)

    benchmark.pedantic(run, rounds=rounds, iterations=1)
    record_rate(sha_items)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("workers", [1, 2], ids=lambda w: f"workers={w}")
def test_sha256_sharded_pool(
    benchmark: Any, buf: bytes, sha_items: int, rounds: int, record_rate: Any, workers: int
) -> None:
    """``ShardedPool(sha256_handler, workers=...)``, one submit per item, close + join."""

    def setup() -> tuple[tuple[ShardedPool[bytes]], dict[str, Any]]:
        return (ShardedPool(sha256_handler, workers=workers),), {}

    def run(pool: ShardedPool[bytes]) -> None:
        sub = pool.submit
        for _ in range(sha_items):
            sub(buf)
        pool.close()
        pool.join()

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    record_rate(sha_items)


@pytest.mark.benchmark(group=GROUP)
def test_sha256_thread_pool_executor(
    benchmark: Any, buf: bytes, sha_items: int, rounds: int, record_rate: Any
) -> None:
    """``ThreadPoolExecutor(2).submit`` per item, then wait for every future."""

    def setup() -> tuple[tuple[ThreadPoolExecutor], dict[str, Any]]:
        ex = ThreadPoolExecutor(WORKERS)
        wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
        return (ex,), {}

    def run(ex: ThreadPoolExecutor) -> None:
        futures = [ex.submit(sha256_handler, buf) for _ in range(sha_items)]
        wait_futures(futures)
        ex.shutdown(wait=True)

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    record_rate(sha_items)


@pytest.mark.benchmark(group=GROUP)
def test_sha256_two_plain_threads(
    benchmark: Any, sha_items: int, rounds: int, record_rate: Any
) -> None:
    """Two threads each hashing half the items, no queue: the machine's parallel ceiling."""
    benchmark.pedantic(run_sha_threads, args=(sha_items,), rounds=rounds, iterations=1)
    record_rate(sha_items)
