"""Stress: a million items from several producer threads through a keyed pool.

Checks the two contracts that only show under load (GUIDE.md §2.1-2.2): every item is
handled exactly once, and items with the same key from one producer are handled in the
order that producer submitted them. Shards are small, so producers keep finding them full
and sleep, and workers keep running dry and sleep: the park/unpark paths are exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from helpers import (
    KEYS,
    PRODUCERS,
    WAIT,
    accounted,
    in_chunks,
    item_key,
    one_by_one,
    producer_items,
    run_producers,
)
from shardflow import ShardedPool

pytestmark = pytest.mark.slow

TOTAL = 1_000_000


def check_exactly_once_in_order(handled: list[int], per_producer: int) -> None:
    """Every (producer, key) stream arrived complete, each item once, in submission order."""
    assert len(handled) == PRODUCERS * per_producer
    streams: dict[int, list[int]] = {}
    for item in handled:
        streams.setdefault(item & 0xFFFF, []).append(item >> 16)
    assert len(streams) == PRODUCERS * KEYS
    for stream, seqs in streams.items():
        producer, key = stream >> 8, stream & 0xFF
        expected = len(range(key, per_producer, KEYS))
        assert seqs == list(range(expected)), f"producer {producer} key {key}: out of order or lost"


@pytest.mark.parametrize(
    ("workers", "batch_size", "batch_timeout"),
    [(2, 1, None), (4, 64, None), (2, 32, 0.001)],
    ids=["2-workers-single-items", "4-workers-batches", "2-workers-timed-batches"],
)
def test_a_million_keyed_items_from_four_producers_exactly_once_and_in_key_order(
    workers: int, batch_size: int, batch_timeout: float | None
) -> None:
    per_producer = TOTAL // PRODUCERS
    handled: list[int] = []
    handler: Callable[[Any], object] = handled.append if batch_size == 1 else handled.extend
    pool: ShardedPool[int] = ShardedPool(
        handler,
        workers=workers,
        key=item_key,
        capacity=4096,
        batch_size=batch_size,
        batch_timeout=batch_timeout,
    )
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]

    def from_an_iterator(items: list[int]) -> Callable[[], None]:
        def run() -> None:
            assert pool.submit_many(iter(items)) == len(items)

        return run

    # Half the producers submit one by one, half through submit_many.
    run_producers(
        [
            one_by_one(pool, inputs[0]),
            in_chunks(pool, inputs[1]),
            one_by_one(pool, inputs[2]),
            from_an_iterator(inputs[3]),
        ]
    )
    pool.close()
    assert pool.join(WAIT * 4)

    check_exactly_once_in_order(handled, per_producer)
    m = pool.metrics()
    assert m.submitted == m.processed == TOTAL
    assert accounted(m) == m.submitted
    assert m.depth == 0
    assert all(s.high_water <= pool.capacity for s in m.shards)
    if batch_size > 1:
        assert m.batches < TOTAL  # batches really carried several items


@pytest.mark.parametrize("batch_size", [1, 16])
def test_failures_under_load_are_each_routed_once_and_accounted(batch_size: int) -> None:
    per_producer = 50_000
    handled: list[int] = []
    failed: list[int] = []

    def handler(item: Any) -> None:
        items = item if batch_size > 1 else [item]
        if any((x >> 16) % 100 == 7 for x in items):  # about 1 % of items (more per batch)
            raise ValueError("unlucky")
        handled.extend(items)

    def on_error(item: Any, exc: BaseException) -> None:
        assert isinstance(exc, ValueError)
        failed.extend(item if batch_size > 1 else [item])

    pool: ShardedPool[int] = ShardedPool(
        handler, workers=2, key=item_key, capacity=1024, batch_size=batch_size, on_error=on_error
    )
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]
    run_producers([lambda items=items: pool.submit_many(items) for items in inputs])
    pool.close()
    assert pool.join(WAIT * 4)

    everything = sorted(x for items in inputs for x in items)
    assert sorted(handled + failed) == everything  # each item exactly once
    assert set(handled).isdisjoint(failed)
    assert failed, "no item failed: the test did not test failures"
    if batch_size == 1:
        assert sorted(failed) == sorted(x for x in everything if (x >> 16) % 100 == 7)
    m = pool.metrics()
    assert (m.processed, m.failed) == (len(handled), len(failed))
    assert m.submitted == accounted(m) == len(everything)


def test_drops_under_load_are_each_counted_once_and_accounted() -> None:
    per_producer = 50_000
    handled: list[int] = []
    refused = [0] * PRODUCERS
    pool: ShardedPool[int] = ShardedPool(
        handled.append, workers=2, key=item_key, capacity=64, on_full="drop"
    )
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]

    def produce(p: int) -> None:
        submit = pool.submit
        for item in inputs[p]:
            if not submit(item):
                refused[p] += 1

    run_producers([lambda p=p: produce(p) for p in range(PRODUCERS)])
    pool.close()
    assert pool.join(WAIT * 4)

    assert len(set(handled)) == len(handled)
    assert len(handled) + sum(refused) == PRODUCERS * per_producer
    m = pool.metrics()
    assert m.dropped == sum(refused)
    assert m.processed == len(handled)
    assert m.submitted == accounted(m) == PRODUCERS * per_producer
