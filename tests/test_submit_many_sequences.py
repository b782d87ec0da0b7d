"""``submit_many`` of an exact list or tuple without a key function takes a fast path (runs
copied from the item array, one push per run): the same contracts as for any iterable."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import WAIT, Gate, accounted, wait_until
from shardflow import Closed, Full, ShardedPool


class Token:
    """A distinct object per item, so that reference counts can be checked."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __repr__(self) -> str:
        return f"Token({self.i})"


class ListSubclass(list[Any]):
    """Not an exact list: goes through the iterator path."""


SEQUENCES: list[Callable[[list[Any]], Any]] = [list, tuple, ListSubclass]


@pytest.fixture
def pools() -> Iterator[list[ShardedPool[Any]]]:
    made: list[ShardedPool[Any]] = []
    yield made
    for pool in made:
        if not pool.closed:
            pool.shutdown(wait=False, cancel=True)


def blocked(pools: list[ShardedPool[Any]], **kwargs: Any) -> tuple[ShardedPool[Any], Gate]:
    """One worker, 4 slots, its handler stuck on ``"first"``."""
    gate = Gate(lambda item: item == "first")
    pool: ShardedPool[Any] = ShardedPool(gate, workers=1, capacity=4, **kwargs)
    pools.append(pool)
    pool.submit("first")
    gate.wait_entered()
    return pool, gate


def assert_prefix_accounting(exc: Any, items: list[Any], handled: list[Any]) -> None:
    """From a sequence, what was taken is a prefix: queued items first, then unsent."""
    k = exc.submitted
    assert handled == items[:k]
    assert exc.unsent == items[k : k + len(exc.unsent)]


@pytest.mark.parametrize("make_seq", SEQUENCES)
@pytest.mark.parametrize("workers", [1, 3])
def test_every_item_of_a_sequence_is_handled_once_and_shards_share_them(
    pools: list[ShardedPool[Any]], make_seq: Callable[[list[Any]], Any], workers: int
) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def handle(x: int) -> None:
        with lock:
            seen.append(x)

    pool: ShardedPool[Any] = ShardedPool(handle, workers=workers)
    pools.append(pool)
    assert pool.submit_many(make_seq(list(range(5000)))) == 5000
    assert pool.submit_many(make_seq([])) == 0
    pool.close()
    assert pool.join(WAIT)
    assert sorted(seen) == list(range(5000))
    m = pool.metrics()
    assert all(s.submitted > 0 for s in m.shards)
    assert accounted(m) == m.submitted == 5000


def _noop(x: Any) -> None:
    pass


@pytest.mark.parametrize(
    "make_items",
    [list, tuple, ListSubclass, lambda r: r, lambda r: iter(list(r))],
    ids=["list", "tuple", "list-subclass", "range", "list-iterator"],
)
@pytest.mark.parametrize(
    ("workers", "n", "split"),
    [
        (2, 4000, [2000, 2000]),
        (3, 1000, [332, 334, 334]),
        (2, 100, [50, 50]),
        (2, 10, [0, 10]),  # runs of at least 32: a small call is not cut up
        (1, 700, [700]),
    ],
)
def test_unkeyed_items_are_split_evenly_across_the_shards(
    pools: list[ShardedPool[Any]],
    make_items: Callable[[range], Any],
    workers: int,
    n: int,
    split: list[int],
) -> None:
    # Runs of one size (32 to 256), so that no shard gets an extra full run: a process
    # pool cannot rebalance what it shipped. Sized by len() or the length hint (a
    # generator has none: runs of 256).
    pool: ShardedPool[Any] = ShardedPool(_noop, workers=workers, steal=False)
    pools.append(pool)
    assert pool.submit_many(make_items(range(n))) == n
    pool.close()
    assert pool.join(WAIT)
    assert sorted(s.submitted for s in pool.metrics().shards) == split


@pytest.mark.parametrize("make_seq", SEQUENCES)
def test_one_worker_handles_a_sequence_in_order(
    pools: list[ShardedPool[Any]], make_seq: Callable[[list[Any]], Any]
) -> None:
    seen: list[int] = []
    pool: ShardedPool[Any] = ShardedPool(seen.extend, workers=1, batch_size=64)
    pools.append(pool)
    assert pool.submit_many(make_seq(list(range(3000)))) == 3000
    pool.close()
    assert pool.join(WAIT)
    assert seen == list(range(3000))


@pytest.mark.parametrize("make_seq", SEQUENCES)
def test_full_from_a_sequence_carries_submitted_and_unsent(
    pools: list[ShardedPool[Any]], make_seq: Callable[[list[Any]], Any]
) -> None:
    pool, gate = blocked(pools, on_full="raise")
    items = [f"item-{i}" for i in range(10)]
    with pytest.raises(Full) as info:
        pool.submit_many(make_seq(items))
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert info.value.submitted == 4
    assert_prefix_accounting(info.value, items, gate.seen[1:])


@pytest.mark.parametrize("make_seq", SEQUENCES)
def test_timeout_from_a_sequence_carries_submitted_and_unsent(
    pools: list[ShardedPool[Any]], make_seq: Callable[[list[Any]], Any]
) -> None:
    pool, gate = blocked(pools, on_full="block")
    items = [f"item-{i}" for i in range(10)]
    with pytest.raises(Full) as info:
        pool.submit_many(make_seq(items), timeout=0.05)
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert_prefix_accounting(info.value, items, gate.seen[1:])


@pytest.mark.parametrize("make_seq", SEQUENCES)
def test_drop_from_a_sequence_counts_only_what_was_queued(
    pools: list[ShardedPool[Any]], make_seq: Callable[[list[Any]], Any]
) -> None:
    pool, gate = blocked(pools, on_full="drop")
    items = [f"item-{i}" for i in range(10)]
    assert pool.submit_many(make_seq(items)) == 4
    gate.release.set()
    pool.close()
    assert pool.join(WAIT)
    assert gate.seen[1:] == items[:4]
    m = pool.metrics()
    assert m.dropped == 6
    assert accounted(m) == m.submitted == 11


@pytest.mark.parametrize("make_seq", SEQUENCES)
def test_closed_from_a_sequence_returns_everything_as_unsent(
    pools: list[ShardedPool[Any]], make_seq: Callable[[list[Any]], Any]
) -> None:
    pool: ShardedPool[Any] = ShardedPool(lambda x: None, workers=2)
    pools.append(pool)
    pool.close()
    items = list(range(300))
    with pytest.raises(Closed) as info:
        pool.submit_many(make_seq(items))
    assert info.value.submitted == 0
    # The fast path takes one run (SUBMIT_CHUNK items) before it finds the pool closed.
    assert_prefix_accounting(info.value, items, [])
    assert info.value.unsent


def test_closed_while_blocked_on_a_list_carries_submitted_and_unsent(
    pools: list[ShardedPool[Any]],
) -> None:
    pool, gate = blocked(pools, on_full="block")
    items = [f"item-{i}" for i in range(10)]
    raised: list[BaseException] = []

    def submit() -> None:
        try:
            pool.submit_many(items)
        except BaseException as exc:
            raised.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    assert wait_until(lambda: pool.metrics().depth == 4)
    pool.close()
    submitter.join(WAIT)
    assert not submitter.is_alive()
    gate.release.set()
    assert pool.join(WAIT)
    assert len(raised) == 1 and isinstance(raised[0], Closed)
    assert_prefix_accounting(raised[0], items, gate.seen[1:])


def test_a_list_changed_while_submit_many_waits_is_read_consistently(
    pools: list[ShardedPool[Any]],
) -> None:
    # Runs are copied (and their items referenced) under the GIL, so a list emptied by
    # another thread while submit_many waits for room neither loses nor duplicates an
    # item, and every reference is given back.
    pool, gate = blocked(pools, on_full="block")
    tokens = [Token(i) for i in range(600)]
    before = [sys.getrefcount(t) for t in tokens]
    items = list(tokens)
    done: list[int] = []
    submitter = threading.Thread(target=lambda: done.append(pool.submit_many(items)))
    submitter.start()
    assert wait_until(lambda: pool.metrics().depth == 4)
    del items[:]  # while the submitter is blocked on its first run
    gate.release.set()
    submitter.join(WAIT)
    assert not submitter.is_alive()
    pool.close()
    assert pool.join(WAIT)
    handled = gate.seen[1:]
    # The first run (256 items) was taken before the list was emptied; nothing after it.
    assert done == [len(handled)] and handled == tokens[: len(handled)]
    assert 0 < len(handled) < len(tokens)
    del handled, gate.seen[:]
    assert [sys.getrefcount(t) for t in tokens] == before


def test_sequence_items_keep_their_reference_counts(pools: list[ShardedPool[Any]]) -> None:
    tokens = [Token(i) for i in range(1000)]
    before = [sys.getrefcount(t) for t in tokens]
    pool: ShardedPool[Any] = ShardedPool(lambda x: None, workers=2)
    pools.append(pool)
    assert pool.submit_many(tokens) == 1000
    assert pool.submit_many(tuple(tokens)) == 1000
    pool.close()
    assert pool.join(WAIT)
    assert [sys.getrefcount(t) for t in tokens] == before


def test_a_keyed_pool_still_calls_the_key_for_every_item_of_a_list(
    pools: list[ShardedPool[Any]],
) -> None:
    keys: list[int] = []

    def key(x: int) -> int:
        keys.append(x)
        return x

    pool: ShardedPool[Any] = ShardedPool(lambda x: None, workers=1, key=key)
    pools.append(pool)
    assert pool.submit_many(list(range(100))) == 100
    pool.close()
    assert pool.join(WAIT)
    assert keys == list(range(100))
