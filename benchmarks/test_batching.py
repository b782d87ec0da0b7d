"""Batches: the deadline a lone item waits for, and recycled batch lists.

Group ``batch-deadline``: one flush cycle of a ``BatchProcessor(batch_size=1000,
batch_timeout=0.010)``: ``put`` one item and wait until the handler got it, either by the
deadline (about ``batch_timeout``) or by ``flush()`` (as fast as a hand-off goes).

Group ``batch-reuse``: ``ShardedPool(noop_batch, workers=2, batch_size=256)`` fed by
``submit_many``, ``reuse_batches=True`` against ``False``; ``extra_info`` of the first
holds the lists each mode allocated over the same items (``count_batch_lists``).

``python -m shardflow bench --sections latency,reuse`` gives the latency percentiles
(with a plain-thread control) and the interleaved reuse ratio.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shardflow import BatchProcessor, ShardedPool
from shardflow.bench.common import BATCH, WORKERS, noop_batch
from shardflow.bench.latency import LATENCY_BATCH_SIZE, LATENCY_TIMEOUT
from shardflow.bench.reuse import count_batch_lists

GROUP = "batch-deadline"
REUSE_GROUP = "batch-reuse"


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("how", ["deadline", "flush"])
def test_one_flush_cycle(benchmark: Any, rounds: int, how: str) -> None:
    """``put`` one item, then wait until the handler ran (deadline), or ``flush()``."""
    got = threading.Event()

    def handler(batch: list[int]) -> None:
        got.set()

    bp: BatchProcessor[int] = BatchProcessor(
        handler, batch_size=LATENCY_BATCH_SIZE, batch_timeout=LATENCY_TIMEOUT
    )

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        got.clear()
        return (), {}

    def cycle() -> None:
        bp.put(1)
        if how == "flush":
            bp.flush()
        got.wait()

    try:
        benchmark.pedantic(cycle, setup=setup, rounds=max(rounds, 20), iterations=1)
    finally:
        bp.close()
        bp.join()
    benchmark.extra_info["batch_timeout_ms"] = LATENCY_TIMEOUT * 1e3


@pytest.mark.benchmark(group=REUSE_GROUP)
@pytest.mark.parametrize("reuse", [True, False], ids=lambda r: f"reuse_batches={r}")
def test_batch_reuse(
    benchmark: Any, items: int, rounds: int, record_rate: Any, reuse: bool
) -> None:
    """``submit_many(range(n))`` into a ``batch_size=256`` pool, close + join."""

    def setup() -> tuple[tuple[ShardedPool[int]], dict[str, Any]]:
        pool: ShardedPool[int] = ShardedPool(
            noop_batch, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
        )
        return (pool,), {}

    def run(pool: ShardedPool[int]) -> None:
        pool.submit_many(range(items))
        pool.close()
        pool.join()

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    record_rate(items)
    benchmark.extra_info.update(count_batch_lists(items, reuse))
