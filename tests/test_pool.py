"""``shardflow.ShardedPool``: routing, batching, back-pressure, errors, lifecycle, metrics.

Each test states one contract from the ``ShardedPool`` docstrings or from GUIDE.md §2.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shardflow
from helpers import WAIT, Gate, accounted, wait_until
from shardflow import DEFAULT_CAPACITY, Closed, Full, ShardedPool


@pytest.fixture
def gates() -> Iterator[Callable[..., Gate]]:
    made: list[Gate] = []

    def make(block: Callable[[Any], bool] = lambda item: True) -> Gate:
        gate = Gate(block)
        made.append(gate)
        return gate

    yield make
    for gate in made:  # never leave a worker blocked behind a failed test
        gate.release.set()


@pytest.fixture
def make_pool(gates: Any) -> Iterator[Callable[..., ShardedPool[Any]]]:
    pools: list[ShardedPool[Any]] = []

    def make(handler: Callable[[Any], object], **kwargs: Any) -> ShardedPool[Any]:
        pool: ShardedPool[Any] = ShardedPool(handler, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        if not pool.closed:
            pool.shutdown(wait=False, cancel=True)


def blocked_pool(make_pool: Any, gate: Gate, **kwargs: Any) -> ShardedPool[Any]:
    """One worker, 4 slots, its handler stuck on item ``"first"``: the next 4 submits fill
    the shard."""
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("capacity", 4)
    pool = make_pool(gate, **kwargs)
    pool.submit("first")
    gate.wait_entered()
    return pool


def signal_after_stop(pool: ShardedPool[Any]) -> threading.Event:
    """An event set once ``shutdown(cancel=True)`` has told the workers to stop."""
    stopped = threading.Event()
    original = pool._stop

    def _stop(hand_back: bool) -> None:
        original(hand_back)
        stopped.set()

    pool._stop = _stop  # type: ignore[method-assign]
    return stopped


# --------------------------------------------------------------------------- routing


def test_submit_returns_true_and_every_item_is_handled_once(make_pool: Any) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=3)
    assert all(pool.submit(i) is True for i in range(1000))
    pool.close()
    assert pool.join(WAIT)
    assert sorted(seen) == list(range(1000))


def test_without_key_items_are_routed_round_robin(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=4)
    for i in range(400):
        pool.submit(i)
    assert [s.submitted for s in pool.metrics().shards] == [100, 100, 100, 100]
    pool.close()
    assert pool.join(WAIT)


def test_submit_many_without_key_spreads_chunks_over_all_shards(make_pool: Any) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=4)
    assert pool.submit_many(range(20_000)) == 20_000
    pool.close()
    assert pool.join(WAIT)
    assert all(s.submitted > 0 for s in pool.metrics().shards)
    assert sorted(seen) == list(range(20_000))


@pytest.mark.parametrize("workers", [1, 3, 4])
def test_keyed_item_goes_to_shard_hash_of_key_modulo_workers(make_pool: Any, workers: int) -> None:
    keys = ["alpha", "beta", "gamma", -1, -7, 0, 12345678901234567890, (1, 2), 3.5]
    items = [(k, n) for n in range(5) for k in keys]
    pool = make_pool(lambda item: None, workers=workers, key=lambda item: item[0])
    for item in items:
        pool.submit(item)
    expected = Counter(hash(k) % workers for k, _ in items)
    assert [s.submitted for s in pool.metrics().shards] == [expected[i] for i in range(workers)]
    pool.close()
    assert pool.join(WAIT)


def test_submit_many_with_key_routes_like_submit(make_pool: Any) -> None:
    items = [f"key-{i % 13}" for i in range(2000)]
    pool = make_pool(lambda item: None, workers=4, key=lambda item: item)
    assert pool.submit_many(items) == 2000
    expected = Counter(hash(k) % 4 for k in items)
    assert [s.submitted for s in pool.metrics().shards] == [expected[i] for i in range(4)]
    pool.close()
    assert pool.join(WAIT)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_items_with_the_same_key_are_handled_in_submission_order(
    make_pool: Any, batch_size: int
) -> None:
    per_key: dict[int, list[int]] = defaultdict(list)

    def record(item: Any) -> None:
        for key, seq in item if batch_size > 1 else [item]:
            per_key[key].append(seq)

    pool = make_pool(record, workers=4, key=lambda item: item[0], batch_size=batch_size)
    for seq in range(500):
        for key in range(10):
            pool.submit((key, seq))
    pool.submit_many((key, seq) for seq in range(500, 1000) for key in range(10))
    pool.close()
    assert pool.join(WAIT)
    assert dict(per_key) == {key: list(range(1000)) for key in range(10)}


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("batch_size", [2, 16, 100])
def test_batches_are_lists_of_at_most_batch_size_with_every_item_once(
    make_pool: Any, batch_size: int
) -> None:
    batches: list[list[int]] = []
    pool = make_pool(batches.append, workers=2, batch_size=batch_size)
    pool.submit_many(range(3000))
    for i in range(3000, 3100):
        pool.submit(i)
    pool.close()
    assert pool.join(WAIT)
    assert all(type(b) is list and 1 <= len(b) <= batch_size for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(3100))
    m = pool.metrics()
    assert m.batches == len(batches)
    assert m.processed == 3100


def test_batch_timeout_flushes_a_partial_batch_without_more_items(make_pool: Any) -> None:
    batches: list[list[int]] = []
    got_all = threading.Event()

    def handler(batch: list[int]) -> None:
        batches.append(batch)
        if sum(len(b) for b in batches) == 3:
            got_all.set()

    pool = make_pool(handler, workers=1, batch_size=100, batch_timeout=0.05)
    for i in range(3):
        pool.submit(i)
    # Neither more items nor close(): only the timeout can hand the batch over.
    assert got_all.wait(10), "a partial batch was never flushed by batch_timeout"
    assert [i for b in batches for i in b] == [0, 1, 2]
    pool.close()
    assert pool.join(WAIT)


def test_batch_timeout_none_hands_partial_batches_over_without_waiting(make_pool: Any) -> None:
    batches: list[list[int]] = []
    got_all = threading.Event()

    def handler(batch: list[int]) -> None:
        batches.append(batch)
        if sum(len(b) for b in batches) == 3:
            got_all.set()

    pool = make_pool(handler, workers=1, batch_size=100, batch_timeout=None)
    for i in range(3):
        pool.submit(i)
    assert got_all.wait(10), "a partial batch was held back although batch_timeout=None"
    assert [i for b in batches for i in b] == [0, 1, 2]
    pool.close()
    assert pool.join(WAIT)


def test_close_flushes_a_partial_batch_at_once_despite_a_long_batch_timeout(
    make_pool: Any,
) -> None:
    batches: list[list[int]] = []
    pool = make_pool(batches.append, workers=1, batch_size=100, batch_timeout=3600)
    for i in range(3):
        pool.submit(i)
    pool.close()
    assert pool.join(WAIT)  # not after 3600 s
    assert [i for b in batches for i in b] == [0, 1, 2]


# --------------------------------------------------------------------------- full shards


def test_on_full_raise_raises_full_when_the_shard_is_full(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="raise")
    assert pool.capacity == 4
    for i in range(4):
        assert pool.submit(i) is True
    with pytest.raises(Full, match="full"):
        pool.submit(4)
    assert issubclass(Full, shardflow.ShardflowError)
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen == ["first", 0, 1, 2, 3]
    m = pool.metrics()
    assert (m.submitted, m.processed, m.dropped) == (5, 5, 0)


def test_on_full_drop_returns_false_and_counts_the_drop(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="drop")
    assert [pool.submit(i) for i in range(6)] == [True] * 4 + [False] * 2
    m = pool.metrics()
    assert m.dropped == 2
    assert m.submitted == 7  # routed to the shard: queued or dropped
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen == ["first", 0, 1, 2, 3]
    m = pool.metrics()
    assert (m.processed, m.dropped, m.submitted) == (5, 2, 7)
    assert m.submitted == accounted(m)


def test_submit_many_with_on_full_drop_counts_only_queued_items(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="drop")
    assert pool.submit_many(range(10)) == 4
    assert pool.metrics().dropped == 6
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen == ["first", 0, 1, 2, 3]
    m = pool.metrics()
    assert m.submitted == accounted(m) == 11


def test_blocking_submit_with_timeout_raises_full(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="block")
    pool.submit_many(range(4))
    with pytest.raises(Full):
        pool.submit(4, timeout=0.1)
    with pytest.raises(Full):
        pool.submit(4, timeout=0)
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen == ["first", 0, 1, 2, 3]


def test_blocking_submit_proceeds_once_the_worker_makes_room(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="block")
    pool.submit_many(range(4))
    result: list[bool] = []
    submitter = threading.Thread(target=lambda: result.append(pool.submit(4)))
    submitter.start()
    submitter.join(0.2)
    assert submitter.is_alive(), "submit on a full shard with on_full='block' did not block"
    gate.release.set()
    submitter.join(WAIT)
    assert not submitter.is_alive()
    assert result == [True]
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen == ["first", 0, 1, 2, 3, 4]


def test_blocked_submit_raises_closed_when_the_pool_is_closed(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="block")
    pool.submit_many(range(4))
    raised: list[BaseException] = []

    def submit() -> None:
        try:
            pool.submit(4)
        except BaseException as exc:
            raised.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    submitter.join(0.1)
    pool.close()
    submitter.join(WAIT)
    assert not submitter.is_alive(), "close() did not wake a blocked submit"
    assert len(raised) == 1 and isinstance(raised[0], Closed)
    gate.release.set()
    assert pool.join(WAIT)
    assert gate.seen == ["first", 0, 1, 2, 3]


# --------------------------------------------------------------------------- submit_many


@pytest.mark.parametrize("as_generator", [False, True])
def test_submit_many_returns_the_count_for_lists_and_generators(
    make_pool: Any, as_generator: bool
) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=2)
    items = (i for i in range(5000)) if as_generator else list(range(5000))
    assert pool.submit_many(items) == 5000
    assert pool.submit_many([]) == 0
    pool.close()
    assert pool.join(WAIT)
    assert sorted(seen) == list(range(5000))


class ResumingIterator:
    """An iterator that raises StopIteration itself, once, and would then yield again."""

    def __init__(self, n: int) -> None:
        self.i = 0
        self.n = n
        self.stopped = False

    def __iter__(self) -> ResumingIterator:
        return self

    def __next__(self) -> int:
        if self.i == self.n and not self.stopped:
            self.stopped = True
            raise StopIteration
        self.i += 1
        return self.i - 1


def test_submit_many_stops_at_the_first_stopiteration(make_pool: Any) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=1)
    source = ResumingIterator(1000)
    assert pool.submit_many(source) == 1000
    assert source.i == 1000  # nothing taken after the iterator said it was done
    pool.close()
    assert pool.join(WAIT)
    assert seen == list(range(1000))  # one worker: submission order


@pytest.mark.parametrize("source", ["list", "range", "generator", "keyed generator"])
@pytest.mark.parametrize("batch_size", [1, 256])
def test_submit_many_of_many_items_handles_each_once_in_order(
    make_pool: Any, source: str, batch_size: int
) -> None:
    """Enough items that submit_many hands the GIL to waiting workers on the way (a
    backlog of 8,192 per shard): every item is handled once, each key in order."""
    n = 60_000
    seen: list[int] = []
    lock = threading.Lock()

    def handle(x: Any) -> None:
        with lock:
            seen.extend(x if isinstance(x, list) else [x])

    keyed = source == "keyed generator"
    pool = make_pool(
        handle, workers=2, batch_size=batch_size, key=(lambda x: x % 7) if keyed else None
    )
    items: Any = {"list": lambda: list(range(n)), "range": lambda: range(n)}.get(
        source, lambda: (i for i in range(n))
    )()
    assert pool.submit_many(items) == n
    pool.close()
    assert pool.join(WAIT)
    assert sorted(seen) == list(range(n))
    if keyed:
        for k in range(7):
            mine = [x for x in seen if x % 7 == k]
            assert mine == sorted(mine)
    m = pool.metrics()
    assert m.submitted == m.processed == n


class CountingIterable:
    """Yields ``range(n)`` and remembers how many items were taken from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.taken += 1
            yield i


def assert_submit_many_accounts(exc: Any, source: CountingIterable, handled: list[Any]) -> None:
    """submitted + unsent + never taken == everything, and what was queued got handled."""
    assert isinstance(exc.submitted, int)
    assert isinstance(exc.unsent, list)
    never_taken = source.n - source.taken
    assert exc.submitted + len(exc.unsent) + never_taken == source.n, (
        f"submitted={exc.submitted} unsent={len(exc.unsent)} never_taken={never_taken} "
        f"of {source.n}: {source.n - exc.submitted - len(exc.unsent) - never_taken} items "
        "unaccounted for"
    )
    assert set(exc.unsent).isdisjoint(handled)
    assert len(handled) == exc.submitted
    assert sorted(handled) + sorted(exc.unsent) == list(range(source.taken))


def test_submit_many_full_carries_submitted_and_unsent(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="raise")
    source = CountingIterable(10)
    with pytest.raises(Full) as info:
        pool.submit_many(source)
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert_submit_many_accounts(info.value, source, gate.seen[1:])


def test_submit_many_timeout_full_carries_submitted_and_unsent(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="block")
    source = CountingIterable(10)
    with pytest.raises(Full) as info:
        pool.submit_many(source, timeout=0.1)
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert_submit_many_accounts(info.value, source, gate.seen[1:])


def test_submit_many_full_on_an_already_full_shard_returns_everything_as_unsent(
    make_pool: Any, gates: Any
) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="raise")
    pool.submit_many(["a", "b", "c", "d"])
    with pytest.raises(Full) as info:
        pool.submit_many(range(10))
    assert info.value.submitted == 0
    assert info.value.unsent == list(range(10))


def test_submit_many_after_close_raises_closed_with_everything_unsent(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=2)
    pool.close()
    source = CountingIterable(10)
    with pytest.raises(Closed) as info:
        pool.submit_many(source)
    assert_submit_many_accounts(info.value, source, [])


def test_submit_many_closed_while_blocked_carries_submitted_and_unsent(
    make_pool: Any, gates: Any
) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, on_full="block")
    source = CountingIterable(10)
    raised: list[BaseException] = []

    def submit() -> None:
        try:
            pool.submit_many(source)
        except BaseException as exc:
            raised.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    assert wait_until(lambda: pool.metrics().depth == 4)  # blocked on the full shard
    pool.close()
    submitter.join(WAIT)
    assert not submitter.is_alive()
    gate.release.set()
    assert pool.join(WAIT)
    assert len(raised) == 1 and isinstance(raised[0], Closed)
    assert_submit_many_accounts(raised[0], source, gate.seen[1:])


def test_submit_many_error_from_the_iterable_carries_submitted_and_unsent(
    make_pool: Any,
) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=1)

    def items() -> Iterator[int]:
        yield from range(300)
        raise ValueError("source broke")

    with pytest.raises(ValueError, match="source broke") as info:
        pool.submit_many(items())
    pool.close()
    assert pool.join(WAIT)
    exc: Any = info.value
    assert exc.submitted + len(exc.unsent) == 300
    assert sorted(seen) == list(range(exc.submitted))
    assert sorted(exc.unsent) == list(range(exc.submitted, 300))


# --------------------------------------------------------------------------- lifecycle


def test_submit_after_close_raises_closed_a_runtime_error(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=1)
    pool.close()
    assert pool.closed
    assert issubclass(Closed, RuntimeError)
    with pytest.raises(Closed, match="closed"):
        pool.submit(1)
    with pytest.raises(RuntimeError):
        pool.submit(1)
    assert pool.join(WAIT)


def test_submit_after_shutdown_raises_closed(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=1)
    pool.shutdown()
    with pytest.raises(Closed):
        pool.submit(1)


def test_close_is_idempotent(make_pool: Any) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=2)
    pool.submit_many(range(100))
    pool.close()
    pool.close()
    assert pool.join(WAIT)
    pool.close()
    assert pool.join(WAIT)
    assert sorted(seen) == list(range(100))


def test_join_before_close_raises_runtime_error(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=1)
    with pytest.raises(RuntimeError, match="close"):
        pool.join()
    with pytest.raises(RuntimeError, match="close"):
        pool.join(timeout=0.01)


def test_join_with_timeout_is_false_while_a_handler_blocks_then_true(
    make_pool: Any, gates: Any
) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate)
    pool.close()
    assert pool.join(timeout=0.05) is False
    assert pool.join(timeout=0) is False
    gate.release.set()
    assert pool.join(timeout=WAIT) is True
    assert pool.join() is True


def test_shutdown_cancel_returns_unstarted_items_and_finishes_the_running_one(
    make_pool: Any, gates: Any
) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, capacity=64)
    pool.submit_many(range(50))
    stopped = signal_after_stop(pool)
    returned: list[list[Any]] = []
    stopper = threading.Thread(target=lambda: returned.append(pool.shutdown(cancel=True)))
    stopper.start()
    assert stopped.wait(WAIT)
    assert stopper.is_alive()  # wait=True: waits for the handler in progress
    gate.release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    (back,) = returned
    assert gate.seen == ["first"]
    assert back == list(range(50))
    m = pool.metrics()
    assert (m.processed, m.returned, m.submitted) == (1, 50, 51)
    assert m.submitted == accounted(m)
    assert m.depth == 0


def test_shutdown_cancel_with_many_busy_workers_loses_nothing_and_runs_nothing_twice(
    make_pool: Any,
) -> None:
    handled: list[int] = []
    lock = threading.Lock()
    started = threading.Event()

    def handler(item: int) -> None:
        started.set()
        with lock:
            handled.append(item)

    pool = make_pool(handler, workers=4, capacity=1024)
    total = pool.submit_many(range(4000))
    assert started.wait(WAIT)
    returned = pool.shutdown(cancel=True)
    m = pool.metrics()
    assert len(handled) + len(returned) == total == m.submitted
    assert sorted(handled + returned) == list(range(total))
    assert (m.processed, m.returned) == (len(handled), len(returned))


def test_shutdown_no_wait_cancel_returns_queued_items_and_runs_the_taken_one(
    make_pool: Any, gates: Any
) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate, capacity=64)
    pool.submit_many(range(50))
    returned = pool.shutdown(wait=False, cancel=True)
    assert returned == list(range(50))
    assert pool.closed
    gate.release.set()
    assert pool.join(WAIT)
    assert gate.seen == ["first"]
    m = pool.metrics()
    assert (m.processed, m.returned, m.submitted) == (1, 50, 51)


def test_shutdown_no_wait_cancel_under_load_loses_nothing_and_runs_nothing_twice(
    make_pool: Any,
) -> None:
    handled: list[int] = []
    pool = make_pool(handled.append, workers=2, capacity=4096)
    total = pool.submit_many(range(8000))
    returned = pool.shutdown(wait=False, cancel=True)
    assert pool.join(WAIT)
    assert sorted(handled + returned) == list(range(total))
    m = pool.metrics()
    assert (m.processed, m.returned, m.submitted) == (len(handled), len(returned), total)


def test_shutdown_without_cancel_drains_everything_and_returns_nothing(make_pool: Any) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=2)
    pool.submit_many(range(1000))
    assert pool.shutdown() == []
    assert sorted(seen) == list(range(1000))
    assert pool.shutdown() == []  # idempotent


def test_context_manager_drains_every_item(make_pool: Any) -> None:
    seen: list[int] = []
    with make_pool(seen.append, workers=2) as pool:
        pool.submit_many(range(1000))
    assert pool.closed
    assert sorted(seen) == list(range(1000))


def test_context_manager_drains_every_item_when_the_block_raises(make_pool: Any) -> None:
    seen: list[int] = []
    with (
        pytest.raises(ZeroDivisionError),
        make_pool(seen.append, workers=2, batch_size=10, batch_timeout=3600) as pool,
    ):
        pool.submit_many(range(1005))
        1 / 0  # noqa: B018 - the block raises, on purpose
    assert pool.closed
    assert sorted(i for b in seen for i in b) == list(range(1005))


# --------------------------------------------------------------------------- errors


def test_handler_exceptions_go_to_on_error_and_the_worker_goes_on(make_pool: Any) -> None:
    errors: list[tuple[Any, BaseException]] = []
    handled: list[int] = []

    def handler(item: int) -> None:
        if item % 10 == 0:
            raise ValueError(f"bad {item}")
        handled.append(item)

    pool = make_pool(handler, workers=1, on_error=lambda item, exc: errors.append((item, exc)))
    pool.submit_many(range(100))
    pool.close()
    assert pool.join(WAIT)
    assert [item for item, _ in errors] == list(range(0, 100, 10))
    assert all(isinstance(exc, ValueError) and str(exc) == f"bad {item}" for item, exc in errors)
    assert all(exc.__traceback__ is not None for _, exc in errors)
    assert handled == [i for i in range(100) if i % 10]
    m = pool.metrics()
    assert (m.failed, m.processed) == (10, 90)


def test_failed_batch_is_passed_whole_to_on_error_and_counted_per_item(make_pool: Any) -> None:
    errors: list[Any] = []

    def handler(batch: list[int]) -> None:
        if 0 in batch:
            raise ValueError("batch with zero")

    pool = make_pool(
        handler, workers=1, batch_size=8, on_error=lambda b, exc: errors.append(list(b))
    )
    for i in range(40):
        pool.submit(i)
    pool.close()
    assert pool.join(WAIT)
    assert len(errors) == 1 and 0 in errors[0]
    m = pool.metrics()
    assert m.failed == len(errors[0])
    assert m.processed + m.failed == 40


def test_handler_exceptions_are_logged_when_on_error_is_none(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(item: int) -> None:
        if item == 3:
            raise KeyError("three")

    with caplog.at_level(logging.ERROR, logger="shardflow"):
        pool = make_pool(handler, workers=1)
        pool.submit_many(range(10))
        pool.close()
        assert pool.join(WAIT)
    records = [r for r in caplog.records if r.name == "shardflow"]
    assert len(records) == 1
    (record,) = records
    assert record.levelno == logging.ERROR
    assert "3" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    m = pool.metrics()
    assert (m.failed, m.processed) == (1, 9)


def test_an_on_error_that_raises_does_not_kill_the_worker(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[int] = []

    def handler(item: int) -> None:
        if item % 2:
            raise ValueError(item)
        handled.append(item)

    def on_error(item: Any, exc: BaseException) -> None:
        raise RuntimeError("on_error is broken too")

    with caplog.at_level(logging.ERROR, logger="shardflow"):
        pool = make_pool(handler, workers=1, on_error=on_error)
        pool.submit_many(range(20))
        pool.close()
        assert pool.join(WAIT)
    assert handled == list(range(0, 20, 2))
    assert pool.metrics().failed == 10
    assert any("on_error" in r.getMessage() for r in caplog.records if r.name == "shardflow")


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_handler_exception_is_counted_worker_goes_on_and_join_reraises(
    make_pool: Any, fatal: type[BaseException]
) -> None:
    handled: list[int] = []
    routed: list[Any] = []

    def handler(item: int) -> None:
        if item == 5:
            raise fatal()
        handled.append(item)

    pool = make_pool(handler, workers=1, on_error=lambda item, exc: routed.append((item, exc)))
    pool.submit_many(range(20))
    pool.close()
    with pytest.raises(fatal):
        pool.join(WAIT)
    assert handled == [i for i in range(20) if i != 5]  # the worker went on
    assert len(routed) == 1 and routed[0][0] == 5 and isinstance(routed[0][1], fatal)
    m = pool.metrics()
    assert (m.failed, m.processed) == (1, 19)
    assert pool.join(WAIT) is True  # raised once, then cleared


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_shutdown_reraises_a_fatal_handler_exception(
    make_pool: Any, fatal: type[BaseException]
) -> None:
    def handler(item: int) -> None:
        if item == 0:
            raise fatal()

    pool = make_pool(handler, workers=1, on_error=lambda item, exc: None)
    pool.submit_many(range(10))
    with pytest.raises(fatal):
        pool.shutdown()
    m = pool.metrics()
    assert (m.failed, m.processed) == (1, 9)


def test_shutdown_cancel_reraises_fatal_with_the_returned_items_on_it(
    make_pool: Any, gates: Any
) -> None:
    gate = gates()

    def handler(item: Any) -> None:
        gate(item)
        if item == "first":
            raise KeyboardInterrupt

    pool = make_pool(handler, workers=1, capacity=8, on_error=lambda item, exc: None)
    pool.submit("first")
    gate.wait_entered()
    pool.submit_many(range(5))
    stopped = signal_after_stop(pool)
    raised: list[BaseException] = []

    def stop() -> None:
        try:
            pool.shutdown(cancel=True)
        except BaseException as exc:
            raised.append(exc)

    stopper = threading.Thread(target=stop)
    stopper.start()
    assert stopped.wait(WAIT)
    gate.release.set()
    stopper.join(WAIT)
    assert len(raised) == 1 and isinstance(raised[0], KeyboardInterrupt)
    assert raised[0].returned == list(range(5))  # type: ignore[attr-defined]


def test_context_manager_exit_reraises_a_fatal_handler_exception(make_pool: Any) -> None:
    seen: list[int] = []

    def handler(item: int) -> None:
        seen.append(item)
        if item == 1:
            raise SystemExit(3)

    with (
        pytest.raises(SystemExit) as info,
        make_pool(handler, workers=1, on_error=lambda item, exc: None) as pool,
    ):
        pool.submit_many(range(5))
    assert info.value.code == 3
    assert seen == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- metrics & repr


def test_metrics_totals_are_sums_of_shards_and_account_for_every_item(make_pool: Any) -> None:
    calls = Counter[str]()
    lock = threading.Lock()

    def handler(batch: list[int]) -> None:
        with lock:
            calls["n"] += 1
        if any(i % 97 == 0 for i in batch):
            raise ValueError("fails")

    pool = make_pool(handler, workers=3, batch_size=5, capacity=100, on_error=lambda b, e: None)
    for i in range(3000):
        pool.submit(i)
    pool.submit_many(range(3000, 6000))
    pool.close()
    assert pool.join(WAIT)
    m = pool.metrics()
    assert isinstance(m, shardflow.PoolMetrics)
    assert all(isinstance(s, shardflow.ShardMetrics) for s in m.shards)
    assert [s.index for s in m.shards] == [0, 1, 2]
    for field in ("submitted", "processed", "failed", "dropped", "returned", "depth", "batches"):
        assert getattr(m, field) == sum(getattr(s, field) for s in m.shards), field
    assert m.submitted == 6000
    assert m.submitted == accounted(m)
    assert m.unfinished == 0
    assert m.failed > 0
    assert m.depth == 0
    assert m.batches == calls["n"]
    assert sum(s.stolen_in for s in m.shards) == sum(s.stolen_out for s in m.shards)
    for s in m.shards:
        # With stealing a shard's worker also handles items routed to other shards.
        assert (
            s.submitted + s.stolen_in - s.stolen_out
            == s.processed + s.failed + s.dropped + s.returned
        )
        # A shard whose items were all stolen may never have been drained by its owner.
        assert 0 <= s.high_water <= pool.capacity
        assert s.depth == 0
    assert max(s.high_water for s in m.shards) > 0


def test_metrics_report_queued_items_as_depth(make_pool: Any, gates: Any) -> None:
    gate = gates()
    pool = blocked_pool(make_pool, gate)
    pool.submit_many(range(3))
    m = pool.metrics()
    assert m.depth == 3
    assert m.submitted == 4
    assert m.unfinished == 4
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert pool.metrics().depth == 0


def test_batches_counts_handler_calls_for_single_items(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=2)
    pool.submit_many(range(123))
    pool.close()
    assert pool.join(WAIT)
    assert pool.metrics().batches == 123


def test_repr_names_the_pool_its_state_and_its_shape(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=2, capacity=5, batch_size=3, name="orders")
    assert repr(pool) == (
        "<ShardedPool 'orders' running workers=2 capacity=8 batch_size=3 steal=True>"
    )
    pool.close()
    assert "closed" in repr(pool)
    assert pool.join(WAIT)


def test_unnamed_pools_get_distinct_names(make_pool: Any) -> None:
    a = make_pool(lambda item: None, workers=1)
    b = make_pool(lambda item: None, workers=1)
    assert a.name != b.name
    assert a.name.startswith("ShardedPool-")
    a.shutdown()
    b.shutdown()


def test_worker_threads_are_named_after_the_pool(make_pool: Any) -> None:
    names: list[str] = []
    pool = make_pool(
        lambda item: names.append(threading.current_thread().name), workers=1, name="x"
    )
    pool.submit(1)
    pool.shutdown()
    assert names == ["x-worker-0"]


@pytest.mark.parametrize(("requested", "rounded"), [(1, 1), (3, 4), (5, 8), (1000, 1024)])
def test_capacity_is_rounded_up_to_a_power_of_two(
    make_pool: Any, requested: int, rounded: int
) -> None:
    pool = make_pool(lambda item: None, workers=1, capacity=requested)
    assert pool.capacity == rounded
    pool.shutdown()


def test_default_capacity_and_workers(make_pool: Any) -> None:
    import os

    pool = make_pool(lambda item: None)
    assert pool.capacity == DEFAULT_CAPACITY
    assert pool.workers == (os.cpu_count() or 1)
    assert pool.batch_size == 1
    pool.shutdown()


# --------------------------------------------------------------------------- key errors


def test_a_key_function_error_propagates_from_submit_and_queues_nothing(make_pool: Any) -> None:
    pool = make_pool(lambda item: None, workers=2, key=lambda item: item["k"])
    with pytest.raises(TypeError):
        pool.submit(5)  # int is not subscriptable
    with pytest.raises(TypeError, match="unhashable"):
        pool.submit({"k": []})
    assert pool.metrics().submitted == 0
    pool.close()
    assert pool.join(WAIT)


def test_a_key_function_error_in_submit_many_carries_submitted_and_unsent(
    make_pool: Any,
) -> None:
    seen: list[int] = []
    pool = make_pool(seen.append, workers=2, key=lambda item: 1 // (item - 700))
    source = CountingIterable(1000)
    with pytest.raises(ZeroDivisionError) as info:
        pool.submit_many(source)
    pool.close()
    assert pool.join(WAIT)
    # Item 700 was taken from the iterable and not queued: it belongs in ``unsent``.
    assert_submit_many_accounts(info.value, source, seen)
    assert 700 in info.value.unsent  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- idle


def test_an_idle_pool_sleeps_instead_of_spinning(make_pool: Any) -> None:
    import resource

    pool = make_pool(lambda item: None, workers=2)
    pool.submit_many(range(10_000))  # let the workers run, then run dry
    assert wait_until(lambda: pool.metrics().processed == 10_000)
    pool_threads = [t for t in threading.enumerate() if t.name.startswith(pool.name)]
    assert len(pool_threads) == 2
    before = resource.getrusage(resource.RUSAGE_SELF)
    threading.Event().wait(1.0)  # one second of idleness
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Two spinning workers would burn ~2 s of CPU here; sleeping ones burn ~0.
    assert cpu < 0.5, f"idle pool used {cpu:.2f} s of CPU in 1 s"
    pool.close()
    assert pool.join(WAIT)


def test_per_item_submits_fill_a_ring_across_its_stamped_indices_in_order(
    make_pool: Any, gates: Any
) -> None:
    # submit(item) takes a fast push for most indices and the general one for every 64th
    # (a queue-wait stamp is due) and for a full ring: both keep order and accounting.
    gate = gates()
    pool = blocked_pool(make_pool, gate, capacity=256, on_full="raise")
    assert all(pool.submit(i) is True for i in range(256))
    with pytest.raises(Full) as full:
        pool.submit(256)
    assert (full.value.submitted, full.value.unsent) == (0, [256])
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen == ["first", *range(256)]
    m = pool.metrics()
    assert m.submitted == m.processed == accounted(m) == 257
    assert m.shards[0].queue_wait.count >= 4  # one stamp per 64 indices


def test_a_refused_submit_hands_the_item_back_on_the_exception(make_pool: Any) -> None:
    # Full and Closed from submit() carry what submit_many's carry: nothing queued, and the
    # item itself, so a caller can treat both paths alike.
    gate = threading.Event()
    pool = make_pool(lambda item: gate.wait(), workers=1, capacity=1, on_full="raise")
    pool.submit("busy")
    # the worker took "busy" and is now blocked in the handler
    assert wait_until(lambda: pool.metrics().depth == 0)
    pool.submit("queued")
    with pytest.raises(shardflow.Full) as full:
        pool.submit("refused")
    assert (full.value.submitted, full.value.unsent) == (0, ["refused"])
    gate.set()
    pool.close()
    with pytest.raises(shardflow.Closed) as closed:
        pool.submit("late")
    assert (closed.value.submitted, closed.value.unsent) == (0, ["late"])
