"""``shardflow.BatchProcessor`` (and ``ShardedPool.flush``): batch boundaries, the batch
deadline, flushing, lifecycle, metrics and argument checks.

Each test states one contract from the ``BatchProcessor`` / ``ShardedPool.flush``
docstrings or from GUIDE.md §2. Waits have generous upper bounds (``WAIT``); nothing
asserts that something happens *fast*, only that it happens, or that it happens *before*
something else that is orders of magnitude later.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import WAIT, accounted, wait_until
from shardflow import BatchProcessor, Closed, ShardedPool

LONG = 3600.0  # a batch_timeout that never fires during a test


@pytest.fixture
def make_bp() -> Iterator[Callable[..., BatchProcessor[Any]]]:
    made: list[BatchProcessor[Any]] = []

    def make(handler: Callable[[list[Any]], object], **kwargs: Any) -> BatchProcessor[Any]:
        bp: BatchProcessor[Any] = BatchProcessor(handler, **kwargs)
        made.append(bp)
        return bp

    yield make
    for bp in made:  # never leave a worker thread behind a failed test
        if not bp.closed:
            bp.shutdown(wait=False, cancel=True)


class Recorder:
    """A batch handler that copies each batch (so recycling cannot change what it saw) and
    notes when each arrived."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Any]) -> None:
        assert type(batch) is list
        with self.lock:
            self.batches.append(list(batch))
            self.times.append(time.monotonic())

    def items(self) -> list[Any]:
        with self.lock:
            return [x for b in self.batches for x in b]

    def count(self) -> int:
        with self.lock:
            return sum(len(b) for b in self.batches)


# --------------------------------------------------------------------------- boundaries


@pytest.mark.parametrize("how", ["put", "put_many"])
def test_full_batches_are_exactly_batch_size_and_close_hands_over_the_rest(
    make_bp: Any, how: str
) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=100, batch_timeout=LONG)
    if how == "put":
        for i in range(1000):
            assert bp.put(i) is True
    else:
        assert bp.put_many(range(1000)) == 1000
    bp.close()
    assert bp.join(WAIT)
    # The deadline is an hour away: the only hand-overs are full batches, in order.
    assert rec.batches == [list(range(k, k + 100)) for k in range(0, 1000, 100)]
    m = bp.metrics()
    assert (m.batches, m.processed, m.submitted) == (10, 1000, 1000)


def test_a_partial_batch_is_kept_until_full_close_or_deadline(make_bp: Any) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=100, batch_timeout=LONG)
    assert bp.put_many(range(250)) == 250
    assert wait_until(lambda: rec.count() == 200)
    assert rec.batches == [list(range(100)), list(range(100, 200))]
    bp.close()
    assert bp.join(WAIT)
    assert rec.batches[2:] == [list(range(200, 250))]


def test_batch_size_one_still_hands_over_lists(make_bp: Any) -> None:
    # The handler of a BatchProcessor is documented as "called with a list of items" for
    # every batch_size >= 1; batch_size=1 gives lists of one item, not bare items.
    got: list[Any] = []
    bp = make_bp(got.append, batch_size=1, batch_timeout=0.05)
    bp.put("a")
    bp.put("b")
    bp.close()
    assert bp.join(WAIT)
    assert got == [["a"], ["b"]]


# --------------------------------------------------------------------------- the deadline


def test_a_partial_batch_is_handed_over_by_its_deadline_without_more_items(
    make_bp: Any,
) -> None:
    rec = Recorder()
    arrived = threading.Event()

    def handler(batch: list[Any]) -> None:
        rec(batch)
        arrived.set()

    bp = make_bp(handler, batch_size=100, batch_timeout=0.05)
    a, b, c = object(), object(), object()
    assert bp.put_many([a, b, c]) == 3
    # Neither more items, nor flush(), nor close(): only the deadline can hand it over.
    assert arrived.wait(WAIT), "a partial batch was never handed over by batch_timeout"
    assert rec.batches == [[a, b, c]]
    assert bp.metrics().batches == 1


def test_the_deadline_counts_from_the_first_item_not_from_the_latest_put(
    make_bp: Any,
) -> None:
    # A put every 0.05 s for 3 s into batches that never fill. Deadline 0.2 s from the
    # batch's first item: a batch is handed over every ~0.2 s while the puts go on (~15
    # during the loop). A timer restarted by each put would never expire during the loop
    # (puts are 4x closer than the timeout) and would hand everything over at the end.
    rec = Recorder()
    bp = make_bp(rec, batch_size=1_000_000, batch_timeout=0.2)
    start = time.monotonic()
    bp.put(0)
    i = 1
    while time.monotonic() - start < 3.0:
        time.sleep(0.05)
        bp.put(i)
        i += 1
    during_loop = len(rec.batches)
    last = i - 1
    bp.close()
    assert bp.join(WAIT)
    assert rec.items() == list(range(i))  # nothing lost, nothing twice, in order
    # Generous: a correct implementation hands over ~15 batches here; a restarting timer
    # would need three put gaps of > 0.2 s (4x the interval) to reach 3.
    assert during_loop >= 3, f"only {during_loop} batches while puts kept coming"
    first = rec.batches[0]
    assert 0 in first and last not in first
    assert rec.times[0] - start < 2.0, "the first batch waited far beyond its deadline"


# --------------------------------------------------------------------------- flush


def test_flush_hands_over_the_partial_batch_now_including_items_put_just_before(
    make_bp: Any,
) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=100, batch_timeout=LONG)
    expected: list[int] = []
    for r in range(30):
        items = list(range(r * 10, r * 10 + 1 + r % 7))
        if r % 2:
            assert bp.put_many(items) == len(items)
        else:
            for x in items:
                bp.put(x)
        expected += items
        assert bp.flush() is True
        # flush() returns once the handler has been called with everything put before it.
        assert rec.items() == expected, f"round {r}"
    assert all(1 <= len(b) <= 100 for b in rec.batches)
    assert bp.metrics().batches == len(rec.batches)


def test_flush_with_nothing_buffered_returns_true_and_calls_nobody(make_bp: Any) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=10, batch_timeout=LONG)
    assert bp.flush() is True
    assert bp.flush(timeout=WAIT) is True
    assert rec.batches == []
    assert bp.metrics().batches == 0


def test_flush_returns_false_when_its_timeout_runs_out(make_bp: Any) -> None:
    release = threading.Event()
    entered = threading.Event()
    rec = Recorder()

    def handler(batch: list[Any]) -> None:
        rec(batch)
        if "block" in batch:
            entered.set()
            release.wait(WAIT)

    bp = make_bp(handler, batch_size=2, batch_timeout=LONG)
    try:
        bp.put_many(["block", "x"])  # a full batch: the handler runs and blocks
        assert entered.wait(WAIT)
        bp.put("y")  # queued behind the blocked handler
        assert bp.flush(timeout=0.05) is False  # the worker cannot hand "y" over yet
    finally:
        release.set()
    assert bp.flush(timeout=WAIT) is True
    assert rec.batches == [["block", "x"], ["y"]]


def test_flush_after_close_raises_closed(make_bp: Any) -> None:
    bp = make_bp(lambda b: None, batch_size=10, batch_timeout=LONG)
    bp.close()
    with pytest.raises(Closed, match="flush"):
        bp.flush()
    with pytest.raises(Closed):
        bp.put(1)
    assert bp.join(WAIT)
    with pytest.raises(Closed):
        bp.flush()


@pytest.mark.parametrize("steal", [False, True], ids=["no-steal", "steal"])
def test_sharded_pool_flush_hands_over_the_partial_batches_of_every_shard(steal: bool) -> None:
    rec = Recorder()
    # steal=False: with key=None each worker keeps its own items, so both shards hold a
    # partial batch. steal=True: a worker may hold items of the other shard; flush() must
    # still hand over every item submitted before it.
    pool: ShardedPool[int] = ShardedPool(
        rec, workers=2, batch_size=50, batch_timeout=LONG, steal=steal
    )
    try:
        expected: list[int] = []
        for r in range(40):
            items = list(range(r * 100, r * 100 + 3 + r))
            assert pool.submit_many(items) == len(items)
            expected += items
            assert pool.flush() is True
            assert sorted(rec.items()) == sorted(expected), f"round {r}"
        m = pool.metrics()
        assert m.processed == len(expected)
        if not steal:
            assert all(s.processed > 0 and s.batches > 0 for s in m.shards)
            assert all(s.stolen_in == 0 for s in m.shards)
    finally:
        pool.shutdown(wait=True)


def test_flush_hands_over_a_backlog_larger_than_one_gil_hold() -> None:
    go = threading.Event()
    count = 0

    def handler(x: int) -> None:
        nonlocal count
        if x == 0:
            go.wait(WAIT)
        count += 1

    n = 200_000  # > 2 * MAX_ITEMS_PER_HOLD: the drain that is running absorbs one hold
    pool: ShardedPool[int] = ShardedPool(handler, workers=1, capacity=1 << 18)
    try:
        assert pool.submit_many(range(n)) == n
        result: dict[str, Any] = {}

        def flusher() -> None:
            result["ok"] = pool.flush()
            result["handled"] = count

        t = threading.Thread(target=flusher)
        t.start()
        time.sleep(0.1)  # the request is made while the worker is busy on item 0
        go.set()
        t.join(WAIT)
        assert result == {"ok": True, "handled": n}
    finally:
        go.set()
        pool.shutdown(wait=True)


class SlowStartPool(ShardedPool[Any]):
    """A pool whose worker threads take a while to get going, as on a loaded machine
    where a new thread may not run for a long time after ``Thread.start()`` returns."""

    def _run_worker(self, index: int) -> None:
        time.sleep(0.2)
        super()._run_worker(index)


@pytest.mark.parametrize("workers", [1, 2])
def test_flush_right_after_construction_waits_for_workers_that_start_late(workers: int) -> None:
    rec = Recorder()
    pool = SlowStartPool(rec, workers=workers, batch_size=10, batch_timeout=LONG)
    try:
        assert pool.submit_many([1, 2, 3]) == 3
        # Requested before any worker ran: each must still hand over what it holds and
        # acknowledge, however late it starts (a generous bound, not a speed check).
        assert pool.flush(timeout=5) is True, "flush() was never acknowledged"
        assert sorted(rec.items()) == [1, 2, 3]
    finally:
        pool.shutdown(wait=True)


def test_sharded_pool_flush_reaches_both_shards_in_one_call() -> None:
    rec = Recorder()
    pool: ShardedPool[int] = ShardedPool(
        rec, workers=2, key=lambda x: x % 2, batch_size=100, batch_timeout=LONG
    )
    try:
        assert pool.submit_many(range(10)) == 10  # 5 per shard, far from a full batch
        assert pool.flush() is True
        assert sorted(map(sorted, rec.batches)) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
        assert [s.batches for s in pool.metrics().shards] == [1, 1]
    finally:
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------- lifecycle


def test_close_flushes_what_is_left(make_bp: Any) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=100, batch_timeout=LONG)
    bp.put_many(["a", "b", "c"])
    bp.close()
    assert bp.closed
    assert bp.join(WAIT)
    assert rec.batches == [["a", "b", "c"]]


def test_context_manager_closes_and_waits(make_bp: Any) -> None:
    rec = Recorder()
    with make_bp(rec, batch_size=100, batch_timeout=LONG) as bp:
        assert bp.put_many(range(150)) == 150
    assert bp.closed
    assert rec.items() == list(range(150))
    assert [len(b) for b in rec.batches] == [100, 50]


def test_context_manager_hands_everything_over_when_the_block_raises(make_bp: Any) -> None:
    rec = Recorder()
    with pytest.raises(KeyError), make_bp(rec, batch_size=100, batch_timeout=LONG) as bp:
        bp.put_many(range(7))
        raise KeyError("boom")
    assert bp.closed
    assert rec.items() == list(range(7))


def test_shutdown_cancel_returns_what_was_not_handed_over(make_bp: Any) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=100, batch_timeout=LONG)
    bp.put_many(range(42))
    assert wait_until(lambda: bp.metrics().depth == 0)  # the worker holds them as a batch
    returned = bp.shutdown(cancel=True)
    assert sorted(returned + rec.items()) == list(range(42))
    m = bp.metrics()
    assert accounted(m) == m.submitted == 42


# --------------------------------------------------------------------------- counts & metrics


def test_put_returns_true_and_put_many_returns_counts(make_bp: Any) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=8, batch_timeout=LONG)
    assert bp.put("x") is True
    assert bp.put_many([]) == 0
    assert bp.put_many(range(20)) == 20
    assert bp.put_many(i for i in range(5)) == 5
    assert bp.put_many(iter([1, 2, 3])) == 3
    bp.close()
    assert bp.join(WAIT)
    assert rec.count() == 29


def test_metrics_batches_counts_handler_calls(make_bp: Any) -> None:
    rec = Recorder()
    bp = make_bp(rec, batch_size=10, batch_timeout=LONG)
    bp.put_many(range(35))
    assert bp.flush() is True
    bp.put_many(range(4))
    bp.close()
    assert bp.join(WAIT)
    m = bp.metrics()
    assert m.batches == len(rec.batches) == 5  # 10, 10, 10, 5 (flush), 4 (close)
    assert [len(b) for b in rec.batches] == [10, 10, 10, 5, 4]
    assert m.processed == m.submitted == 39
    assert accounted(m) == m.submitted


def test_a_failing_batch_is_routed_to_on_error_whole_and_the_worker_goes_on(
    make_bp: Any,
) -> None:
    errors: list[tuple[list[Any], BaseException]] = []
    rec = Recorder()

    def handler(batch: list[Any]) -> None:
        if "bad" in batch:
            raise ValueError("bad batch")
        rec(batch)

    bp = make_bp(
        handler,
        batch_size=3,
        batch_timeout=LONG,
        on_error=lambda batch, exc: errors.append((list(batch), exc)),
    )
    bp.put_many([1, "bad", 2, 3, 4, 5])
    bp.close()
    assert bp.join(WAIT)
    assert [b for b, _ in errors] == [[1, "bad", 2]]
    assert isinstance(errors[0][1], ValueError)
    assert rec.batches == [[3, 4, 5]]
    m = bp.metrics()
    assert (m.failed, m.processed, m.batches) == (3, 3, 2)


def test_properties_and_repr(make_bp: Any) -> None:
    bp = make_bp(lambda b: None, batch_size=7, batch_timeout=0.5, name="bp-props")
    assert (bp.batch_size, bp.batch_timeout, bp.closed) == (7, 0.5, False)
    assert "bp-props" in repr(bp) and "running" in repr(bp)
    bp.close()
    assert "closed" in repr(bp)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("value", "exc"),
    [(0, ValueError), (-1, ValueError), ("3", TypeError), (2.0, TypeError), (True, TypeError)],
)
def test_bad_batch_size_is_refused_naming_the_parameter(value: Any, exc: type) -> None:
    with pytest.raises(exc, match="batch_size"):
        BatchProcessor(lambda b: None, batch_size=value, batch_timeout=1.0)


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (None, TypeError),
        (0, ValueError),
        (0.0, ValueError),
        (-1, ValueError),
        ("x", TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (False, TypeError),
    ],
)
def test_bad_batch_timeout_is_refused_naming_the_parameter(value: Any, exc: type) -> None:
    with pytest.raises(exc, match="batch_timeout"):
        BatchProcessor(lambda b: None, batch_size=10, batch_timeout=value)


def test_bad_flush_timeout_is_refused_naming_the_parameter(make_bp: Any) -> None:
    bp = make_bp(lambda b: None, batch_size=10, batch_timeout=LONG)
    with pytest.raises(ValueError, match="timeout"):
        bp.flush(timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        bp.flush(timeout="1")
