"""Work stealing in ``ShardedPool``: who may steal, that an idle worker really does, and
that stealing keeps every contract of GUIDE.md §2 (exactly once, per-key order where it
is promised, exact accounting, nothing lost on cancel).

Accounting with stealing: ``submitted`` counts what was routed to a shard, the other
counters what a shard's worker did, so per shard
``submitted + stolen_in - stolen_out == processed + failed + dropped + returned``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
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
    wait_until,
)
from shardflow import Closed, ShardedPool


def produce_mixed(pool: ShardedPool[int], inputs: list[list[int]]) -> None:
    """Half the producers submit one by one, half in chunks through submit_many."""

    run_producers(
        [
            (one_by_one(pool, inputs[p]) if p % 2 else in_chunks(pool, inputs[p], 777))
            for p in range(len(inputs))
        ]
    )


def check_accounting(pool: ShardedPool[Any]) -> None:
    """Totals and per-shard balances, on a joined pool."""
    m = pool.metrics()
    assert m.depth == 0
    assert m.submitted == accounted(m)
    assert sum(s.stolen_in for s in m.shards) == sum(s.stolen_out for s in m.shards)
    for s in m.shards:
        assert s.submitted + s.stolen_in - s.stolen_out == (
            s.processed + s.failed + s.dropped + s.returned
        ), f"shard {s.index} does not balance: {s}"


@pytest.fixture
def make_pool() -> Iterator[Callable[..., ShardedPool[Any]]]:
    pools: list[ShardedPool[Any]] = []

    def make(handler: Callable[[Any], object], **kwargs: Any) -> ShardedPool[Any]:
        pool: ShardedPool[Any] = ShardedPool(handler, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        if not pool.closed:
            pool.shutdown(wait=False, cancel=True)


# --------------------------------------------------------------------------- who may steal


def first(x: Any) -> Any:
    return x


def test_keyed_pools_keep_order_and_do_not_steal_by_default(make_pool: Any) -> None:
    pool = make_pool(lambda x: None, workers=2, key=first)
    assert pool.ordered is True
    assert pool.steal is False


def test_asking_a_keyed_ordered_pool_to_steal_is_refused(make_pool: Any) -> None:
    with pytest.raises(ValueError, match="ordered=False"):
        ShardedPool(lambda x: None, workers=2, key=first, steal=True)
    with pytest.raises(ValueError, match="ordered=False"):
        ShardedPool(lambda x: None, workers=2, key=first, ordered=True, steal=True)


def test_unkeyed_pools_steal_by_default(make_pool: Any) -> None:
    pool = make_pool(lambda x: None, workers=2)
    assert pool.steal is True
    assert "steal=True" in repr(pool)


def test_keyed_unordered_pools_steal_by_default(make_pool: Any) -> None:
    pool = make_pool(lambda x: None, workers=2, key=first, ordered=False)
    assert pool.steal is True
    explicit = make_pool(lambda x: None, workers=2, key=first, ordered=False, steal=True)
    assert explicit.steal is True


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"key": first, "ordered": False}, {"key": first}],
    ids=["unkeyed", "keyed-unordered", "keyed-ordered"],
)
def test_steal_false_turns_stealing_off(make_pool: Any, kwargs: dict[str, Any]) -> None:
    pool = make_pool(lambda x: None, workers=2, steal=False, **kwargs)
    assert pool.steal is False


@pytest.mark.parametrize("name", ["ordered", "steal"])
@pytest.mark.parametrize("value", ["yes", 1, 0])
def test_non_bool_ordered_and_steal_are_refused_naming_the_parameter(name: str, value: Any) -> None:
    with pytest.raises(TypeError, match=name):
        ShardedPool(lambda x: None, workers=1, **{name: value})


# --------------------------------------------------------------------------- stealing happens


class OwnerBlocker:
    """Handler for a 2-worker pool whose items all go to shard 0: the first item worker 0
    handles blocks it until ``release``. Records which thread handled each item."""

    def __init__(self, pool_name: str) -> None:
        self.owner = f"{pool_name}-worker-0"
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.by_thread: dict[str, list[Any]] = {}

    def __call__(self, item: Any) -> None:
        me = threading.current_thread().name
        with self.lock:
            self.by_thread.setdefault(me, []).append(item)
        if me == self.owner and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(WAIT), "never released"

    def handled(self) -> list[Any]:
        with self.lock:
            return [x for items in self.by_thread.values() for x in items]

    def handled_by(self, name: str) -> list[Any]:
        with self.lock:
            return list(self.by_thread.get(name, []))


def block_owner(pool: ShardedPool[Any], handler: OwnerBlocker) -> list[Any]:
    """Feed shard 0 until its own worker is inside the handler, blocked. Returns what was
    submitted on the way."""
    warmup: list[Any] = []
    for i in range(10_000):
        if handler.entered.is_set():
            break
        item = ("warmup", i)
        pool.submit(item)
        warmup.append(item)
        handler.entered.wait(0.001)
    assert handler.entered.wait(WAIT), "worker 0 never took an item of its own shard"
    return warmup


@pytest.mark.parametrize("batch_size", [1, 8])
def test_an_idle_worker_steals_the_backlog_of_a_blocked_one(
    make_pool: Any, batch_size: int
) -> None:
    name = f"thief-{batch_size}"
    blocker = OwnerBlocker(name)
    handler: Callable[[Any], None] = blocker
    if batch_size > 1:

        def handler(batch: list[Any]) -> None:
            for item in batch:
                blocker(item)

    # Every item goes to shard 0 (hash(0) % 2 == 0); only theft can move it to worker 1.
    pool = make_pool(
        handler, workers=2, key=lambda x: 0, ordered=False, batch_size=batch_size, name=name
    )
    assert pool.steal is True
    warmup = block_owner(pool, blocker)
    backlog = [("backlog", i) for i in range(2000)]
    assert pool.submit_many(backlog) == len(backlog)
    # Worker 0 is stuck, so every backlog item that gets handled was stolen by worker 1.
    thief = f"{name}-worker-1"
    assert wait_until(lambda: set(backlog) <= set(blocker.handled_by(thief))), (
        "the idle worker did not take the blocked worker's backlog"
    )
    m = pool.metrics()
    assert m.shards[1].stolen_in >= len(backlog)
    assert m.shards[0].stolen_out == m.shards[1].stolen_in
    assert m.shards[1].submitted == 0  # everything was routed to shard 0
    blocker.release.set()
    pool.close()
    assert pool.join(WAIT)
    handled = blocker.handled()
    assert sorted(handled) == sorted(warmup + backlog)  # each exactly once
    assert {pool.name + "-worker-0", thief} == set(blocker.by_thread)
    check_accounting(pool)


@pytest.mark.parametrize(
    "kwargs",
    [{"steal": False, "ordered": False}, {}],
    ids=["steal=False", "keyed-ordered"],
)
def test_without_stealing_a_blocked_workers_backlog_waits_for_it(
    make_pool: Any, kwargs: dict[str, Any]
) -> None:
    name = "nothief-" + ("off" if kwargs else "ordered")
    blocker = OwnerBlocker(name)
    pool = make_pool(blocker, workers=2, key=lambda x: 0, name=name, **kwargs)
    assert pool.steal is False
    warmup = block_owner(pool, blocker)
    backlog = [("backlog", i) for i in range(500)]
    assert pool.submit_many(backlog) == len(backlog)
    # Worker 1 could take them only by stealing; give it every chance to (wrongly) do so.
    assert not wait_until(lambda: pool.metrics().depth < len(backlog), timeout=0.3)
    blocker.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert blocker.handled_by(f"{name}-worker-1") == []
    assert sorted(blocker.handled()) == sorted(warmup + backlog)
    m = pool.metrics()
    assert all(s.stolen_in == 0 and s.stolen_out == 0 for s in m.shards)
    check_accounting(pool)


# --------------------------------------------------------------------------- stress


@pytest.mark.parametrize("batch_size", [1, 32])
@pytest.mark.parametrize("capacity", [64, None], ids=["cap64", "default-cap"])
@pytest.mark.parametrize(
    ("workers", "keyed"), [(4, False), (3, True)], ids=["unkeyed-4w", "keyed-unordered-3w"]
)
def test_stealing_under_stress_handles_every_item_exactly_once_and_balances(
    workers: int, keyed: bool, capacity: int | None, batch_size: int
) -> None:
    per_producer = 60_000  # 240k items
    handled: list[int] = []
    pool: ShardedPool[int] = ShardedPool(
        handled.append if batch_size == 1 else handled.extend,
        workers=workers,
        key=item_key if keyed else None,
        ordered=False,
        capacity=capacity,
        batch_size=batch_size,
    )
    assert pool.steal is True
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]
    produce_mixed(pool, inputs)
    pool.close()
    assert pool.join(WAIT * 4)
    everything = sorted(x for items in inputs for x in items)
    assert len(handled) == len(everything)
    assert sorted(handled) == everything  # each item exactly once
    m = pool.metrics()
    assert m.submitted == m.processed == len(everything)
    check_accounting(pool)


@pytest.mark.parametrize("batch_size", [1, 32])
@pytest.mark.parametrize("capacity", [64, None], ids=["cap64", "default-cap"])
def test_keyed_ordered_pools_under_stress_keep_per_key_order_and_never_steal(
    capacity: int | None, batch_size: int
) -> None:
    per_producer = 50_000
    handled: list[int] = []
    pool: ShardedPool[int] = ShardedPool(
        handled.append if batch_size == 1 else handled.extend,
        workers=3,
        key=item_key,
        capacity=capacity,
        batch_size=batch_size,
    )
    assert pool.steal is False
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]
    produce_mixed(pool, inputs)
    pool.close()
    assert pool.join(WAIT * 4)
    assert len(handled) == PRODUCERS * per_producer
    streams: dict[int, list[int]] = {}
    for item in handled:
        streams.setdefault(item & 0xFFFF, []).append(item >> 16)
    assert len(streams) == PRODUCERS * KEYS
    for stream, seqs in streams.items():
        producer, key = stream >> 8, stream & 0xFF
        expected = len(range(key, per_producer, KEYS))
        assert seqs == list(range(expected)), f"producer {producer} key {key}: out of order"
    m = pool.metrics()
    assert all(s.stolen_in == 0 and s.stolen_out == 0 for s in m.shards)
    check_accounting(pool)


@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed-unordered"])
def test_failures_with_stealing_are_each_routed_once_and_accounted(
    keyed: bool, batch_size: int
) -> None:
    per_producer = 25_000
    lock = threading.Lock()
    handled: list[int] = []
    failed: list[int] = []

    def handler(item: Any) -> None:
        items = item if batch_size > 1 else [item]
        if any((x >> 16) % 100 == 7 for x in items):  # about 1 % of items (more per batch)
            raise ValueError("unlucky")
        handled.extend(items)

    def on_error(item: Any, exc: BaseException) -> None:
        assert isinstance(exc, ValueError)
        with lock:
            failed.extend(item if batch_size > 1 else [item])

    pool: ShardedPool[int] = ShardedPool(
        handler,
        workers=3,
        key=item_key if keyed else None,
        ordered=False,
        capacity=256,
        batch_size=batch_size,
        on_error=on_error,
    )
    assert pool.steal is True
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]
    produce_mixed(pool, inputs)
    pool.close()
    assert pool.join(WAIT * 4)
    everything = sorted(x for items in inputs for x in items)
    assert sorted(handled + failed) == everything  # each item exactly once
    assert failed, "no item failed: the test did not test failures"
    if batch_size == 1:
        assert sorted(failed) == [x for x in everything if (x >> 16) % 100 == 7]
    m = pool.metrics()
    assert (m.processed, m.failed) == (len(handled), len(failed))
    assert m.submitted == len(everything)
    check_accounting(pool)


@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed-unordered"])
def test_cancel_with_stealing_hands_back_exactly_what_was_not_handled(
    keyed: bool, batch_size: int
) -> None:
    # Producers are still submitting when shutdown(cancel=True) comes; workers are busy
    # stealing from each other. Every item a producer got queued is either handled or
    # handed back, once; what submit_many refused after the shutdown is reported to it.
    per_producer = 40_000
    lock = threading.Lock()
    handled: list[int] = []
    started = threading.Event()

    def handler(item: Any) -> None:
        items = item if batch_size > 1 else [item]
        with lock:
            handled.extend(items)
        started.set()
        sum(range(50))  # a little work per call, so that a backlog builds up

    pool: ShardedPool[int] = ShardedPool(
        handler,
        workers=3,
        key=item_key if keyed else None,
        ordered=False,
        capacity=1024,
        batch_size=batch_size,
    )
    inputs = [producer_items(p, per_producer) for p in range(PRODUCERS)]
    queued: list[list[int]] = [[] for _ in range(PRODUCERS)]

    def produce(p: int) -> None:
        items = inputs[p]
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            it = iter(chunk)
            try:
                n = pool.submit_many(it)
            except Closed as exc:
                rest = set(list(it)) | set(exc.unsent)  # type: ignore[attr-defined]
                done = [x for x in chunk if x not in rest]
                assert len(done) == exc.submitted  # type: ignore[attr-defined]
                queued[p] += done
                return
            assert n == len(chunk)
            queued[p] += chunk

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
    for t in producers:
        t.start()
    assert started.wait(WAIT)
    assert wait_until(lambda: pool.metrics().submitted >= per_producer)
    returned = pool.shutdown(wait=True, cancel=True)
    for t in producers:
        t.join(WAIT)
    assert not any(t.is_alive() for t in producers)

    submitted = sorted(x for q in queued for x in q)
    assert len(handled) + len(returned) == len(submitted)
    assert sorted(handled + returned) == submitted  # each exactly once, nothing invented
    m = pool.metrics()
    assert m.submitted == len(submitted)
    assert m.processed == len(handled)
    assert m.returned == len(returned)
    assert m.processed + m.returned == m.submitted
    check_accounting(pool)
