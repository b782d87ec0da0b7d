"""``shardflow.Executor`` beyond what it shares with ``ThreadPoolExecutor``.

The standard behaviours are in test_executor_conformance.py (run against both
executors); here: argument checks, exactly-once under concurrency, the future's lock,
``wait()`` on futures cancelled by shutdown, collection of a dropped executor, and the
map chunks' progress publication.
"""

from __future__ import annotations

import gc
import itertools
import sys
import sysconfig
import threading
import weakref
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import pytest

import shardflow
from helpers import WAIT, run_producers, wait_until


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_workers": 0}, ValueError, ["max_workers", "0"]),
        ({"max_workers": 2.0}, TypeError, ["max_workers", "2.0"]),
        ({"max_workers": True}, TypeError, ["max_workers", "True"]),
        ({"thread_name_prefix": None}, TypeError, ["thread_name_prefix", "None"]),
        ({"initializer": 3}, TypeError, ["initializer", "3"]),
        ({"initargs": [1]}, TypeError, ["initargs", "[1]"]),
        ({"capacity": 0}, ValueError, ["capacity", "0"]),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    kwargs: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as info:
        shardflow.Executor(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_it_is_a_thread_pool_executor_and_its_futures_are_futures() -> None:
    with shardflow.Executor(max_workers=2) as ex:
        assert isinstance(ex, ThreadPoolExecutor)
        assert ex.max_workers == 2
        f = ex.submit(abs, -1)
        assert isinstance(f, Future)
        assert f.result(WAIT) == 1
        assert "finished" in repr(f) and "returned int" in repr(f)
        assert "running" in repr(ex)
    assert "shut down" in repr(ex)


def test_every_call_runs_once_with_many_submitting_threads() -> None:
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def record(i: int) -> int:
        with lock:
            counts[i] = counts.get(i, 0) + 1
        return i

    futures: list[Future[int]] = []
    with shardflow.Executor(max_workers=3, capacity=64) as ex:

        def producer(base: int) -> None:
            mine = [ex.submit(record, base + i) for i in range(3000)]
            with lock:
                futures.extend(mine)

        run_producers([lambda b=b: producer(b * 100_000) for b in range(4)])  # type: ignore[misc]
        assert sorted(f.result(WAIT) for f in as_completed(futures, timeout=WAIT)) == sorted(counts)
    assert len(counts) == 12_000 and set(counts.values()) == {1}


def test_wait_returns_for_futures_cancelled_by_shutdown() -> None:
    """Unlike ThreadPoolExecutor (which leaves them CANCELLED, so wait() blocks), the
    futures shutdown(cancel_futures=True) takes back are notified as a worker would."""
    gate = threading.Event()
    ex = shardflow.Executor(max_workers=1)
    started = threading.Event()
    ex.submit(lambda: (started.set(), gate.wait(WAIT)))
    assert started.wait(WAIT)
    queued = [ex.submit(int) for _ in range(10)]
    ex.shutdown(wait=False, cancel_futures=True)
    done, not_done = wait(queued, timeout=WAIT)
    assert done == set(queued) and not not_done
    gate.set()
    ex.shutdown()


def test_concurrent_wait_over_mixed_futures_does_not_deadlock() -> None:
    """wait()/as_completed() take each future's lock in id order; ours are one lock per
    future like the standard ones, so overlapping waits from many threads are safe."""
    with shardflow.Executor(max_workers=2) as ex, ThreadPoolExecutor(2) as std:
        fs: list[Future[int]] = []
        for i in range(200):
            fs.append(ex.submit(abs, i) if i % 2 else std.submit(abs, i))

        def waiter(k: int) -> None:
            part = fs[k::3] + fs[: 50 + k]
            for _ in range(20):
                done, _ = wait(part, timeout=WAIT, return_when=FIRST_EXCEPTION)
                assert len(done) == len(set(part))

        run_producers([lambda k=k: waiter(k) for k in range(4)])  # type: ignore[misc]


def test_the_future_lock_is_reentrant_and_owned() -> None:
    with shardflow.Executor(max_workers=1) as ex:
        f = ex.submit(int)
        f.result(WAIT)
    lock = f._condition
    assert lock.acquire() and lock.acquire(False)
    assert lock._is_owned()
    other: list[bool] = []
    t = threading.Thread(target=lambda: other.append(lock.acquire(True, 0.01)))
    t.start()
    t.join(WAIT)
    assert other == [False]  # held by this thread
    lock.release()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with lock:
        assert lock._is_owned()
    assert not lock._is_owned()


def test_set_result_twice_and_unexpected_states_raise() -> None:
    with shardflow.Executor(max_workers=1) as ex:
        f = ex.submit(int)
        f.result(WAIT)
        from concurrent.futures import InvalidStateError

        with pytest.raises(InvalidStateError):
            f.set_result(1)
        with pytest.raises(InvalidStateError):
            f.set_exception(ValueError())


def test_a_dropped_executor_is_collected_and_its_workers_exit() -> None:
    ex = shardflow.Executor(max_workers=2, thread_name_prefix="dropped-executor")
    assert ex.submit(abs, -3).result(WAIT) == 3
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None

    def workers_alive() -> int:
        return sum(t.name.startswith("dropped-executor") for t in threading.enumerate())

    assert wait_until(lambda: workers_alive() == 0)


def test_map_hands_out_each_result_as_soon_as_it_is_there() -> None:
    """Within one chunk, result i does not wait for item i + 1."""
    gate = threading.Event()
    with shardflow.Executor(max_workers=1) as ex:
        results = ex.map(lambda i: i if i < 5 else gate.wait(WAIT) and i, range(10))
        assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
        gate.set()
        assert list(results) == [5, 6, 7, 8, 9]


def test_map_over_many_items_and_several_iterables() -> None:
    with shardflow.Executor(max_workers=3) as ex:
        n = 50_000
        assert list(ex.map(int.__add__, range(n), itertools.count(1))) == [
            2 * i + 1 for i in range(n)
        ]
        out = list(ex.map(divmod, range(10_000), itertools.repeat(7), buffersize=100))
        assert out == [divmod(i, 7) for i in range(10_000)]


def test_map_after_a_failed_initializer_raises_broken(caplog: pytest.LogCaptureFixture) -> None:
    def init() -> None:
        raise RuntimeError("init failed")

    with shardflow.Executor(max_workers=1, initializer=init) as ex:
        results = ex.map(abs, range(10))
        with pytest.raises(BrokenThreadPool):
            next(results)
        with pytest.raises(BrokenThreadPool):
            ex.map(abs, [1])


def test_shutdown_cancel_futures_cancels_queued_map_chunks() -> None:
    gate = threading.Event()
    started = threading.Event()
    ex = shardflow.Executor(max_workers=1)
    ex.submit(lambda: (started.set(), gate.wait(WAIT)))
    assert started.wait(WAIT)
    results = ex.map(abs, range(100))  # queued behind the blocked call
    ex.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(CancelledError):
        next(results)
    gate.set()
    ex.shutdown()


def test_results_and_exceptions_wake_waiters_in_other_threads() -> None:
    gate = threading.Event()
    with shardflow.Executor(max_workers=2) as ex:
        ok = ex.submit(lambda: gate.wait(WAIT) and "ok")
        bad = ex.submit(lambda: gate.wait(WAIT) and 1 // 0)
        got: list[Any] = []

        def wait_ok() -> None:
            got.append(ok.result(WAIT))

        def wait_bad() -> None:
            got.append(type(bad.exception(WAIT)))

        threads = [threading.Thread(target=f) for f in (wait_ok, wait_bad) * 3]
        for t in threads:
            t.start()
        gate.set()
        for t in threads:
            t.join(WAIT)
    assert sorted(map(str, got)) == sorted(["ok"] * 3 + [str(ZeroDivisionError)] * 3)


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="free-threaded builds only"
)
def test_the_executor_module_keeps_the_gil_off() -> None:
    import shardflow._executor

    with shardflow.Executor(max_workers=2) as ex:
        assert list(ex.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
    assert not sys._is_gil_enabled()  # type: ignore[attr-defined]


def test_no_reference_is_leaked_by_submit_map_or_cancel() -> None:
    """The compiled paths own references by hand: an object passed through every path
    (run, failed, cancelled, map, map with buffersize) gets its count back."""
    sentinel = object()
    start = sys.getrefcount(sentinel)
    gate = threading.Event()

    def echo(x: object) -> object:
        return x

    def boom(x: object) -> object:
        raise ValueError(x)

    ex = shardflow.Executor(max_workers=1)
    started = threading.Event()
    ex.submit(lambda: (started.set(), gate.wait(WAIT)))
    assert started.wait(WAIT)
    cancelled = [ex.submit(echo, sentinel) for _ in range(50)]
    assert all(f.cancel() for f in cancelled[::2])
    gate.set()
    ran = [ex.submit(echo, sentinel) for _ in range(200)]
    failed = [ex.submit(boom, sentinel) for _ in range(50)]
    kw = [ex.submit(dict, x=sentinel) for _ in range(50)]
    wait(cancelled + ran + failed + kw, timeout=WAIT)
    assert list(ex.map(echo, [sentinel] * 500)) == [sentinel] * 500
    assert list(ex.map(echo, [sentinel] * 100, buffersize=8)) == [sentinel] * 100
    del cancelled, ran, failed, kw
    ex.shutdown()

    # Taken back by shutdown(cancel_futures=True) (futures and map chunks).
    gate2 = threading.Event()
    started2 = threading.Event()
    ex2 = shardflow.Executor(max_workers=1)
    ex2.submit(lambda: (started2.set(), gate2.wait(WAIT)))
    assert started2.wait(WAIT)
    queued = [ex2.submit(echo, sentinel) for _ in range(100)]
    chunks = ex2.map(echo, [sentinel] * 100)
    ex2.shutdown(wait=False, cancel_futures=True)
    gate2.set()
    ex2.shutdown()
    assert all(f.cancelled() for f in queued)
    del queued, chunks
    gc.collect()
    assert sys.getrefcount(sentinel) == start


def _collected(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


def test_finished_futures_leave_the_gc_and_cycles_through_them_are_still_collected() -> None:
    """A future that finished with an atomic result leaves the cyclic GC's lists (a
    burst of pending or awaited futures is not visited by every collection); anything
    that can close a cycle through a future keeps it (or puts it back) there, so that
    such a cycle is still collected."""

    class Box:
        pass

    def echo(x: object) -> object:
        return x

    def boom() -> None:
        raise ValueError("boom")

    with shardflow.Executor(max_workers=2) as ex:
        plain = [ex.submit(abs, -i) for i in range(200)]
        wait(plain, timeout=WAIT, return_when=ALL_COMPLETED)
        assert [f.result() for f in plain] == list(range(200))
        assert not any(gc.is_tracked(f) for f in plain)

        # An attribute set on a finished future: tracked again, its cycle collected.
        fut = ex.submit(abs, -1)
        assert fut.result(WAIT) == 1
        fut.me = fut  # type: ignore[attr-defined]
        assert gc.is_tracked(fut)
        ref = weakref.ref(fut)
        del fut
        assert _collected(ref)

        # A result that can reference the future: the future stays tracked.
        fut = ex.submit(echo, [])
        fut.result(WAIT).append(fut)
        assert gc.is_tracked(fut)
        ref = weakref.ref(fut)
        del fut
        assert _collected(ref)

        # A done callback that closes over the future, added while it was pending.
        gate = threading.Event()
        fut = ex.submit(gate.wait, WAIT)
        box = Box()
        box.fut = fut  # type: ignore[attr-defined]
        fut.add_done_callback(lambda f, box=box: None)
        gate.set()
        assert fut.result(WAIT) is True
        assert gc.is_tracked(fut)
        ref = weakref.ref(fut)
        del fut, box
        assert _collected(ref)

        # An exception (its traceback may reach the future): tracked.
        fut = ex.submit(boom)
        assert isinstance(fut.exception(WAIT), ValueError)
        assert gc.is_tracked(fut)

        # A pending call whose arguments reference its future (untracked while queued):
        # once it ran, the call is dropped and nothing is left of the cycle.
        gate = threading.Event()
        holder: list[Any] = []
        fut = ex.submit(lambda h: gate.wait(WAIT), holder)
        holder.append(fut)
        ref = weakref.ref(fut)
        gate.set()
        assert fut.result(WAIT) is True
        del fut, holder
        assert _collected(ref)


def test_a_cancelled_future_holding_a_cycle_is_collected() -> None:
    """A future cancelled while queued still holds its call until a worker drops it: it
    is back in the GC's lists, so a cycle through its arguments is collected."""
    gate = threading.Event()
    started = threading.Event()
    ex = shardflow.Executor(max_workers=1)
    try:
        ex.submit(lambda: (started.set(), gate.wait(WAIT)))
        assert started.wait(WAIT)
        holder: list[Any] = []
        fut = ex.submit(len, holder)
        holder.append(fut)
        assert fut.cancel()
        assert gc.is_tracked(fut)
        ref = weakref.ref(fut)
        del fut, holder
        gate.set()
    finally:
        ex.shutdown()
    assert _collected(ref)
