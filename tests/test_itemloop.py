"""``shardflow._itemloop``: per-item runs of a Python handler walked by one bytecode loop.

From Python 3.12 on, a worker hands each drained run of items to one call of
``run_items`` instead of calling the handler from C once per item. These tests state that
nothing observable changes: per-item failure routing, counters, sampled service times,
``shutdown(cancel=True)`` handing back what was not started, and nothing lost when the
loop itself fails. They also pin the fast entry of ``submit(item)`` (``_fastcall.h``):
every other way of calling ``submit`` behaves as before.
"""

from __future__ import annotations

import functools
import gc
import sys
import threading
import weakref
from typing import Any

import pytest

import shardflow
import shardflow._worker as core_module
from helpers import WAIT, accounted
from shardflow import ShardedPool

LOOP_VERSIONS = sys.version_info >= (3, 12)


def _handler(item: Any) -> None:
    pass


class _Holder:
    def method(self, item: Any) -> None:
        pass


@pytest.mark.parametrize(
    "handler, expected",
    [
        (_handler, LOOP_VERSIONS),
        (lambda item: None, LOOP_VERSIONS),
        (_Holder().method, LOOP_VERSIONS),
        ([].append, False),  # a builtin: as cheap from C as from bytecode
        (functools.partial(_handler), False),
    ],
    ids=["function", "lambda", "bound-method", "builtin", "partial"],
)
def test_python_functions_get_the_bytecode_loop_other_callables_the_c_loop(
    handler: Any, expected: bool
) -> None:
    with ShardedPool(handler, workers=1) as pool:
        assert (pool.item_loop is not None) is expected


def test_batch_handlers_never_get_the_item_loop() -> None:
    with ShardedPool(_handler, workers=1, batch_size=8) as pool:
        assert pool.item_loop is None
    with ShardedPool(_handler, workers=1, lists=True) as pool:
        assert pool.item_loop is None


def test_each_failure_is_routed_alone_and_the_rest_counted_processed() -> None:
    seen: list[int] = []
    errors: list[tuple[Any, BaseException]] = []

    def handler(item: int) -> None:
        if item % 7 == 3:
            raise ValueError(item)
        seen.append(item)

    with ShardedPool(handler, workers=2, on_error=lambda i, e: errors.append((i, e))) as pool:
        pool.submit_many(range(1000))
    m = pool.metrics()
    failed = [i for i in range(1000) if i % 7 == 3]
    assert sorted(seen) == [i for i in range(1000) if i % 7 != 3]
    assert sorted(i for i, _ in errors) == failed
    assert all(isinstance(e, ValueError) and e.args == (i,) for i, e in errors)
    assert (m.processed, m.failed, m.batches) == (1000 - len(failed), len(failed), 1000)
    assert m.submitted == accounted(m) == 1000


def test_failed_items_go_to_the_dead_letter_with_their_own_exception() -> None:
    dead: list[tuple[Any, BaseException]] = []

    def handler(item: int) -> None:
        if item in (5, 6):
            raise KeyError(item)

    with ShardedPool(handler, workers=1, dead_letter=lambda i, e: dead.append((i, e))) as pool:
        pool.submit_many(range(20))
    assert [(i, e.args) for i, e in dead] == [(5, (5,)), (6, (6,))]
    m = pool.metrics()
    assert (m.processed, m.dead_lettered, m.failed) == (18, 2, 0)


def test_keyboard_interrupt_in_a_handler_is_reraised_by_join_and_the_worker_goes_on() -> None:
    seen: list[int] = []

    def handler(item: int) -> None:
        if item == 2:
            raise KeyboardInterrupt
        seen.append(item)

    pool = ShardedPool(handler, workers=1)
    pool.submit_many(range(10))
    pool.close()
    with pytest.raises(KeyboardInterrupt):
        pool.join()
    assert seen == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert pool.metrics().failed == 1


def test_one_call_in_16_is_timed_as_in_the_c_loop() -> None:
    with ShardedPool(lambda item: None, workers=1) as pool:
        pool.submit_many(range(320))
    m = pool.snapshot()
    assert m.processed == 320
    assert m.service_time.count == 20


def test_shutdown_cancel_mid_run_hands_back_the_rest_of_the_run() -> None:
    entered = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def handler(item: int) -> None:
        seen.append(item)
        if item == 1:
            entered.set()
            release.wait(WAIT)

    pool = ShardedPool(handler, workers=1, capacity=64)
    pool.submit_many(list(range(50)))  # one push: the worker drains it as one run
    assert entered.wait(WAIT)
    stopped = threading.Event()
    stop = pool._stop

    def _stop(hand_back: bool) -> None:
        stop(hand_back)
        stopped.set()

    pool._stop = _stop  # type: ignore[method-assign]
    returned: list[list[Any]] = []
    stopper = threading.Thread(target=lambda: returned.append(pool.shutdown(cancel=True)))
    stopper.start()
    assert stopped.wait(WAIT)
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert seen == [0, 1]
    assert returned == [list(range(2, 50))]
    m = pool.metrics()
    assert (m.processed, m.returned, m.submitted) == (2, 48, 50)


def test_a_failing_loop_loses_nothing_and_runs_nothing_twice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception escaping the loop itself (not the handler: the loop catches those) is
    routed for the item in progress; what the loop did not take runs from C."""
    seen: list[int] = []
    errors: list[tuple[Any, BaseException]] = []

    def broken_loop(handler: Any, items: Any) -> None:
        for k, x in enumerate(items):
            handler(x)
            if k == 2:
                raise RuntimeError("loop broke")  # item x is in progress: its call ended

    def between_items(handler: Any, items: Any) -> None:
        handler(next(items))
        next(items)  # taken, never handed to the handler
        raise MemoryError("between items")

    for loop in (broken_loop, between_items):
        seen.clear()
        errors.clear()
        monkeypatch.setattr(core_module, "_item_loop", loop)
        pool = ShardedPool(
            lambda i: seen.append(i),
            workers=1,
            on_error=lambda i, e: errors.append((i, e)),
        )
        pool.submit_many(list(range(10)))
        pool.close()
        pool.join()
        m = pool.metrics()
        assert m.submitted == accounted(m) == 10
        if pool.item_loop is None:  # 3.11 and older: the C loop, nothing to break
            assert sorted(seen) == list(range(10))
            continue
        if loop is broken_loop:
            assert [i for i, _ in errors] == [2]
            assert sorted(seen) == list(range(10))  # 2 ran, then failed in the loop
            assert (m.processed, m.failed) == (9, 1)
        else:
            # Item 1 was in progress when the loop failed: it gets the exception.
            assert [(i, type(e)) for i, e in errors] == [(1, MemoryError)]
            assert sorted(seen) == [0, *range(2, 10)]
            assert (m.processed, m.failed) == (9, 1)


def test_a_kept_handler_exception_does_not_keep_the_pool_alive() -> None:
    kept: list[BaseException] = []

    def handler(item: int) -> None:
        raise ValueError(item)

    pool = ShardedPool(handler, workers=1, on_error=lambda i, e: kept.append(e))
    pool.submit_many(range(3))
    pool.close()
    pool.join()
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert len(kept) == 3
    assert ref() is None


# --------------------------------------------------------------------------- submit entry


def test_submit_accepts_every_spelling_it_accepted_before() -> None:
    seen: list[Any] = []
    with ShardedPool(seen.append, workers=1) as pool:
        assert pool.submit(1) is True
        assert pool.submit(2, 1.0) is True
        assert pool.submit(3, timeout=None) is True
        assert pool.submit(item=4) is True
        assert pool.submit(item=5, timeout=2) is True
        sub = pool.submit
        assert sub(6) is True
        assert ShardedPool.submit(pool, 7) is True
    assert sorted(seen) == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((), {}, "submit"),
        ((1, 2, 3), {}, "submit"),
        ((1,), {"nope": 2}, "nope"),
        ((1,), {"item": 2}, "item"),
    ],
)
def test_bad_submit_calls_raise_type_error_naming_the_problem(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with ShardedPool(_handler, workers=1) as pool, pytest.raises(TypeError, match=message):
        pool.submit(*args, **kwargs)


def test_submit_keeps_its_docstring_and_refuses_bad_timeouts() -> None:
    assert "Queue ``item``" in (ShardedPool.submit.__doc__ or "")
    with ShardedPool(_handler, workers=1) as pool:
        with pytest.raises(ValueError, match="timeout"):
            pool.submit(1, -1)
        with pytest.raises(TypeError, match="timeout"):
            pool.submit(1, "soon")
    with pytest.raises(shardflow.Closed):
        pool.submit(1)
