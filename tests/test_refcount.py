"""Reference counting: the pool owns one reference per queued item and releases it once
the item is handled, failed, dropped, refused or handed back (GUIDE.md §3: INCREF on push,
the consumer owns the reference, DECREF after the handler).

A leaked reference keeps user objects alive forever; a missing one is a use-after-free.
Either shows as ``sys.getrefcount(sentinel)`` not returning to its baseline.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

import pytest

from helpers import WAIT, Gate
from shardflow import Closed, Full, ShardedPool

N = 5000


class Sentinel:
    """A plain, mortal object (small ints and strings may be immortal or interned)."""


def refs(obj: object) -> int:
    gc.collect()
    return sys.getrefcount(obj)


def no_error(item: Any, exc: BaseException) -> None:
    return None  # keeps no reference to the item or the exception


@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("workers", [1, 3])
def test_items_submitted_one_by_one_are_released_after_join(batch_size: int, workers: int) -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    calls = []
    pool: ShardedPool[Any] = ShardedPool(
        lambda item: calls.append(1), workers=workers, batch_size=batch_size
    )
    for _ in range(N):
        pool.submit(sentinel)
    pool.close()
    assert pool.join(WAIT)
    assert pool.metrics().processed == N
    assert refs(sentinel) == baseline


@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("keyed", [False, True])
def test_items_submitted_in_bulk_are_released_after_join(batch_size: int, keyed: bool) -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    pool: ShardedPool[Any] = ShardedPool(
        lambda item: None, workers=2, batch_size=batch_size, key=id if keyed else None
    )
    assert pool.submit_many([sentinel] * N) == N
    assert pool.submit_many(sentinel for _ in range(N)) == N
    pool.shutdown()
    assert refs(sentinel) == baseline


@pytest.mark.parametrize("batch_size", [1, 16])
def test_failed_items_are_released(batch_size: int) -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    counter = iter(range(10**9))

    def handler(item: Any) -> None:
        if next(counter) % 3 == 0:
            raise ValueError("fails")

    pool: ShardedPool[Any] = ShardedPool(
        handler, workers=2, batch_size=batch_size, on_error=no_error
    )
    pool.submit_many([sentinel] * N)
    for _ in range(N):
        pool.submit(sentinel)
    pool.shutdown()
    m = pool.metrics()
    assert m.failed > 0 and m.processed + m.failed == 2 * N
    assert refs(sentinel) == baseline


def test_items_are_released_after_a_fatal_handler_exception_is_reraised() -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    counter = iter(range(10**9))

    def handler(item: Any) -> None:
        if next(counter) == 10:
            raise KeyboardInterrupt

    pool: ShardedPool[Any] = ShardedPool(handler, workers=1, on_error=no_error)
    pool.submit_many([sentinel] * 100)
    pool.close()
    with pytest.raises(KeyboardInterrupt) as info:
        pool.join(WAIT)
    del info  # its traceback reaches the handler's frame, which holds the item
    assert refs(sentinel) == baseline


@pytest.mark.parametrize("wait", [True, False])
def test_items_handed_back_by_cancel_are_released_with_the_returned_list(wait: bool) -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    gate = Gate(block=lambda item: True)
    pool: ShardedPool[Any] = ShardedPool(gate, workers=1, capacity=N * 2)
    pool.submit(sentinel)
    gate.wait_entered()
    pool.submit_many([sentinel] * N)
    if wait:
        threading.Timer(0.05, gate.release.set).start()
    returned = pool.shutdown(wait=wait, cancel=True)
    gate.release.set()
    assert pool.join(WAIT)
    assert len(returned) + pool.metrics().processed == N + 1
    assert all(item is sentinel for item in returned)
    gate.seen.clear()  # the handler recorded the first item
    assert refs(sentinel) == baseline + len(returned)
    del returned
    assert refs(sentinel) == baseline


def test_refused_items_are_not_kept() -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    for on_full in ("drop", "raise", "block"):
        gate = Gate()
        pool: ShardedPool[Any] = ShardedPool(gate, workers=1, capacity=4, on_full=on_full)
        pool.submit("first")
        gate.wait_entered()
        pool.submit_many([sentinel] * 4)
        for _ in range(10):
            try:
                assert pool.submit(sentinel, timeout=0) is False
            except Full:
                pass
        try:
            pool.submit_many([sentinel] * 10, timeout=0)
        except Full as exc:
            assert all(item is sentinel for item in exc.unsent)
            del exc
        assert refs(sentinel) == baseline + 4  # only the 4 queued ones
        gate.release.set()
        pool.close()
        with pytest.raises(Closed):
            pool.submit(sentinel)
        with pytest.raises(Closed):
            pool.submit_many([sentinel] * 10)
        assert pool.join(WAIT)
        gate.seen.clear()
        assert refs(sentinel) == baseline, on_full


def test_items_still_queued_when_the_pool_is_deleted_are_released() -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    gate = Gate()
    pool: ShardedPool[Any] = ShardedPool(gate, workers=1, capacity=64)
    pool.submit("first")
    gate.wait_entered()
    pool.submit_many([sentinel] * 50)
    returned = pool.shutdown(wait=False, cancel=True)
    assert len(returned) == 50
    del returned
    gate.release.set()
    assert pool.join(WAIT)
    del pool
    assert refs(sentinel) == baseline
