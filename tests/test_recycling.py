"""Recycled batch lists (``reuse_batches``, on by default).

The contract (``ShardedPool`` docstring): a list the batch handler does not keep (no
reference left once it returns) is emptied and refilled for a later batch; a list it keeps
is never reused under it; ``reuse_batches=False`` hands over a fresh list every time. In
every case the handler sees exactly its batch's items, and the pool's references to them
are released once the batch is done (GUIDE.md §3).

"Is this the same list?" cannot be asked with ``id()`` alone once the previous list is
gone, because CPython recycles freed list objects too (its free list). Where that matters,
the tests grow the list the handler receives: a recycled list keeps the grown allocation
(``sys.getsizeof``), a fresh one is allocated for exactly its items.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import WAIT
from shardflow import BatchProcessor, ShardedPool

LONG = 3600.0
BS = 10


class Sentinel:
    """A plain, mortal object whose reference count the tests watch."""


def refs(obj: object) -> int:
    gc.collect()
    return sys.getrefcount(obj)


def expected_batches(n_batches: int, size: int = BS) -> list[list[int]]:
    return [list(range(k * size, (k + 1) * size)) for k in range(n_batches)]


@pytest.fixture
def make_pool() -> Iterator[Callable[..., ShardedPool[Any]]]:
    pools: list[ShardedPool[Any]] = []

    def make(handler: Callable[[Any], object], **kwargs: Any) -> ShardedPool[Any]:
        kwargs.setdefault("workers", 1)
        kwargs.setdefault("batch_size", BS)
        kwargs.setdefault("batch_timeout", LONG)
        pool: ShardedPool[Any] = ShardedPool(handler, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        if not pool.closed:
            pool.shutdown(wait=False, cancel=True)


def run_to_end(pool: ShardedPool[Any], n_items: int) -> None:
    assert pool.submit_many(range(n_items)) == n_items
    pool.close()
    assert pool.join(WAIT)


# --------------------------------------------------------------------------- reuse


def test_a_list_the_handler_does_not_keep_is_reused_with_the_right_items(
    make_pool: Any,
) -> None:
    ids: list[int] = []
    seen: list[list[int]] = []

    def handler(batch: list[int]) -> None:
        ids.append(id(batch))
        seen.append(batch.copy())

    pool = make_pool(handler)
    assert pool.reuse_batches is True
    run_to_end(pool, 50 * BS)
    assert seen == expected_batches(50)
    assert pool.metrics().batches == 50
    assert len(set(ids)) <= 3, f"{len(set(ids))} distinct lists for 50 batches"


def test_a_reused_list_holds_exactly_the_new_batch_never_stale_items(make_pool: Any) -> None:
    # Batches of varying length through one recycled list: a list that held 10 items and
    # now carries 3 must have length 3 and those 3 items.
    seen: list[list[int]] = []
    pool = make_pool(lambda batch: seen.append(batch.copy()))
    sizes = [10, 3, 7, 1, 10, 2, 10, 9, 1, 5, 10, 10, 4]
    expected: list[list[int]] = []
    nxt = 0
    for size in sizes:
        items = list(range(nxt, nxt + size))
        nxt += size
        assert pool.submit_many(items) == size
        assert pool.flush() is True  # a full batch went out already; flush() hands a partial
        expected.append(items)
        assert seen == expected
    pool.close()
    assert pool.join(WAIT)
    assert seen == expected


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no-reuse"])
def test_reuse_batches_false_hands_over_a_fresh_list_every_time(
    make_pool: Any, reuse: bool
) -> None:
    # The handler grows every list it gets to 1000+ slots and does not keep it. With reuse,
    # later batches arrive in that grown list (the positive control: the check can tell);
    # without, every batch is a list allocated for exactly its items.
    junk = [None] * 1000
    grown_size = sys.getsizeof([None] * (1000 + BS))
    sizes: list[tuple[int, int]] = []
    seen: list[list[int]] = []

    def handler(batch: list[int]) -> None:
        seen.append(batch.copy())
        sizes.append((sys.getsizeof(batch), sys.getsizeof([None] * len(batch))))
        batch.extend(junk)

    pool = make_pool(handler, reuse_batches=reuse)
    assert pool.reuse_batches is reuse
    run_to_end(pool, 20 * BS)
    assert seen == expected_batches(20)
    if reuse:
        assert all(size >= grown_size for size, _ in sizes[1:])
    else:
        assert all(size == fresh for size, fresh in sizes), sizes


def test_reuse_batches_false_lists_are_all_distinct_and_kept_intact(make_pool: Any) -> None:
    kept: list[list[int]] = []
    pool = make_pool(kept.append, reuse_batches=False)
    run_to_end(pool, 30 * BS)
    assert len({id(b) for b in kept}) == 30
    assert kept == expected_batches(30)


# --------------------------------------------------------------------------- kept lists


def test_a_list_the_handler_keeps_is_never_reused_under_it(make_pool: Any) -> None:
    kept: list[list[int]] = []
    pool = make_pool(kept.append)
    run_to_end(pool, 50 * BS)
    assert len({id(b) for b in kept}) == 50  # all alive, so all distinct objects
    assert kept == expected_batches(50)  # and none was emptied or refilled later


def test_an_iterator_kept_over_the_list_keeps_it_intact(make_pool: Any) -> None:
    iterators: list[Iterator[int]] = []
    pool = make_pool(lambda batch: iterators.append(iter(batch)))
    run_to_end(pool, 20 * BS)
    assert [list(it) for it in iterators] == expected_batches(20)


def test_lists_kept_now_and_then_stay_intact_while_the_others_are_reused(
    make_pool: Any,
) -> None:
    kept: list[list[int]] = []
    seen: list[list[int]] = []
    ids: list[int] = []

    def handler(batch: list[int]) -> None:
        seen.append(batch.copy())
        ids.append(id(batch))
        if batch[0] // BS % 3 == 0:  # keep every third batch
            kept.append(batch)

    pool = make_pool(handler)
    run_to_end(pool, 60 * BS)
    assert seen == expected_batches(60)
    assert kept == [b for b in expected_batches(60) if b[0] // BS % 3 == 0]
    # Each kept list is an object of its own, and once kept it is never handed over again
    # (before that it may well have carried earlier, unkept batches).
    kept_ids = {id(b) for b in kept}
    assert len(kept_ids) == len(kept)
    for k in range(0, 60, 3):
        assert ids[k] in kept_ids
        assert ids[k] not in ids[k + 1 :], f"the list kept at batch {k} was handed over again"
    # The unkept ones were recycled: far fewer lists than batches.
    assert len(set(ids)) <= len(kept) + 3


def test_a_failed_batch_kept_by_on_error_stays_intact(make_pool: Any) -> None:
    failed: list[list[int]] = []
    seen: list[list[int]] = []

    def handler(batch: list[int]) -> None:
        seen.append(batch.copy())
        if batch[0] // BS % 2:
            raise ValueError("odd batch")

    pool = make_pool(handler, on_error=lambda batch, exc: failed.append(batch))
    run_to_end(pool, 20 * BS)
    assert seen == expected_batches(20)
    assert failed == expected_batches(20)[1::2]
    m = pool.metrics()
    assert (m.processed, m.failed, m.batches) == (10 * BS, 10 * BS, 20)


# --------------------------------------------------------------------------- mutation


def _clear(b: list[Any]) -> None:
    b.clear()


def _append(b: list[Any]) -> None:
    b.append(JUNK)


def _extend(b: list[Any]) -> None:
    b.extend([JUNK] * 5000)


def _sort(b: list[Any]) -> None:
    b.sort(key=id, reverse=True)


def _reverse(b: list[Any]) -> None:
    b.reverse()


def _pop_all(b: list[Any]) -> None:
    while b:
        b.pop()


def _del_slice(b: list[Any]) -> None:
    del b[: len(b) // 2]


def _replace(b: list[Any]) -> None:
    b[:] = [JUNK, JUNK]


def _overwrite(b: list[Any]) -> None:
    for i in range(len(b)):
        b[i] = JUNK


def _insert_front(b: list[Any]) -> None:
    b.insert(0, JUNK)


JUNK = Sentinel()

MUTATIONS = [
    _clear,
    _append,
    _extend,
    _sort,
    _reverse,
    _pop_all,
    _del_slice,
    _replace,
    _overwrite,
    _insert_front,
]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__.lstrip("_"))
@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no-reuse"])
def test_a_handler_that_mutates_its_list_does_not_disturb_later_batches(
    make_pool: Any, mutate: Callable[[list[Any]], None], reuse: bool
) -> None:
    items = [Sentinel() for _ in range(40 * BS)]
    gc.collect()
    item_refs = [sys.getrefcount(x) for x in items]
    junk_refs = sys.getrefcount(JUNK)
    seen: list[list[Any]] = []

    def handler(batch: list[Any]) -> None:
        # `seen` is the enclosing test's list; pyflakes takes its `del` at the end for
        # an unbound name, but the handler only runs before that.
        seen.append(batch.copy())  # noqa: F821
        mutate(batch)

    pool = make_pool(handler, reuse_batches=reuse)
    # In rounds with flushes, so that batch lengths vary (full and partial batches).
    pos = 0
    for size in [BS, 3, BS, BS, 7, 1, BS, 2] * 5:
        chunk = items[pos : pos + size]
        pos += size
        assert pool.submit_many(chunk) == size
        assert pool.flush() is True
    pool.close()
    assert pool.join(WAIT)
    got = [x for b in seen for x in b]
    assert len(got) == pos and all(a is b for a, b in zip(got, items[:pos], strict=True))
    assert all(1 <= len(b) <= BS for b in seen)
    assert pool.metrics().processed == pos
    del got, seen, pool, chunk
    gc.collect()
    assert [sys.getrefcount(x) for x in items] == item_refs
    assert sys.getrefcount(JUNK) == junk_refs


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("fail", [False, True], ids=["ok", "failing"])
def test_item_references_return_to_baseline_with_recycling(workers: int, fail: bool) -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    calls = [0]
    lock = threading.Lock()

    def handler(batch: list[Any]) -> None:
        with lock:
            calls[0] += 1
        if fail and calls[0] % 2:
            raise ValueError("boom")

    pool: ShardedPool[Any] = ShardedPool(
        handler,
        workers=workers,
        batch_size=16,
        batch_timeout=LONG,
        on_error=lambda batch, exc: None,
    )
    assert pool.reuse_batches is True
    for _ in range(1000):
        pool.submit(sentinel)
    pool.submit_many([sentinel] * 2005)
    # flush() returns once every batch was handed over; a recycled list kept as a spare
    # must not hold on to the items of the batch it carried.
    assert pool.flush() is True
    assert refs(sentinel) == baseline
    pool.submit_many([sentinel] * 333)
    pool.close()
    assert pool.join(WAIT)
    m = pool.metrics()
    assert m.processed + m.failed == m.submitted == 3338
    assert refs(sentinel) == baseline
    del pool
    assert refs(sentinel) == baseline


def test_batch_processor_recycles_by_default_and_releases_items() -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    ids: list[int] = []
    n = [0]

    def handler(batch: list[Any]) -> None:
        ids.append(id(batch))
        n[0] += len(batch)
        assert all(x is sentinel for x in batch)

    with BatchProcessor(handler, batch_size=8, batch_timeout=LONG) as bp:
        bp.put_many([sentinel] * 400)
    assert n[0] == 400
    assert len(set(ids)) <= 3
    assert refs(sentinel) == baseline


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_non_bool_reuse_batches_is_refused_naming_the_parameter(value: Any) -> None:
    with pytest.raises(TypeError, match="reuse_batches"):
        ShardedPool(lambda b: None, workers=1, batch_size=4, reuse_batches=value)
    with pytest.raises(TypeError, match="reuse_batches"):
        BatchProcessor(lambda b: None, batch_size=4, batch_timeout=1.0, reuse_batches=value)
