"""``shardflow.Executor`` behaves like ``concurrent.futures.ThreadPoolExecutor``.

Every test here runs against BOTH executors (the ``make`` fixture) and states a behaviour
the standard library documents for ``ThreadPoolExecutor``/``Executor``/``Future``: if the
standard executor did not pass a test, the test would be wrong, not shardflow. Waits are on
events (``WAIT`` bounds them, reached only by a hang), never on timing targets.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from concurrent.futures import Executor as StdExecutor

# The builtin TimeoutError from Python 3.11 on; on 3.10 concurrent.futures has its own.
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures.thread import BrokenThreadPool
from pathlib import Path
from typing import Any

import pytest

import shardflow
from helpers import WAIT, interrupt_when_ready, run_script

EXECUTORS = {"ThreadPoolExecutor": ThreadPoolExecutor, "shardflow.Executor": shardflow.Executor}
#: The standard executor's map() takes ``buffersize`` from Python 3.14 on.
STDLIB_HAS_BUFFERSIZE = sys.version_info >= (3, 14)

Make = Callable[..., StdExecutor]


@pytest.fixture(params=list(EXECUTORS))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make(kind: str) -> Iterator[Make]:
    """``make(*args, **kwargs)`` builds an executor of the parametrized kind; every one is
    shut down (after the test's gates are opened) at teardown."""
    made: list[StdExecutor] = []

    def build(*args: Any, **kwargs: Any) -> StdExecutor:
        ex: StdExecutor = EXECUTORS[kind](*args, **kwargs)
        made.append(ex)
        return ex

    yield build
    for ex in made:
        ex.shutdown(wait=True)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event tasks block on; always opened at teardown so no worker is left stuck."""
    ev = threading.Event()
    yield ev
    ev.set()


def blocker(gate: threading.Event, started: threading.Event) -> Callable[[], str]:
    def run() -> str:
        started.set()
        assert gate.wait(WAIT), "gate never opened"
        return "unblocked"

    return run


def busy_single_worker(make: Make, gate: threading.Event) -> tuple[StdExecutor, Future[str]]:
    """A one-worker executor whose worker is inside a task blocked on ``gate``."""
    ex = make(max_workers=1)
    started = threading.Event()
    running = ex.submit(blocker(gate, started))
    assert started.wait(WAIT)
    return ex, running


def fail(msg: str) -> None:
    raise ValueError(msg)


# --------------------------------------------------------------------------- submit, Future


def test_submit_returns_a_concurrent_futures_future_with_the_result(make: Make) -> None:
    ex = make(max_workers=2)
    f = ex.submit(pow, 2, 10)
    assert isinstance(f, Future)
    assert f.result(timeout=WAIT) == 1024
    assert f.done() and not f.running() and not f.cancelled()
    assert f.exception() is None
    assert ex.submit(dict, a=1).result(WAIT) == {"a": 1}  # keyword arguments pass through


def test_an_exception_is_raised_by_result_and_returned_by_exception(make: Make) -> None:
    ex = make(max_workers=2)
    f = ex.submit(fail, "boom")
    with pytest.raises(ValueError, match="boom"):
        f.result(WAIT)
    exc = f.exception(WAIT)
    assert isinstance(exc, ValueError) and str(exc) == "boom"


def test_a_base_exception_in_a_task_goes_to_its_future(make: Make) -> None:
    def stop() -> None:
        raise SystemExit(3)

    ex = make(max_workers=1)
    f = ex.submit(stop)
    assert isinstance(f.exception(WAIT), SystemExit)
    assert ex.submit(int, "7").result(WAIT) == 7  # the worker goes on


def test_result_and_exception_time_out_on_a_running_task(make: Make, gate: threading.Event) -> None:
    _, running = busy_single_worker(make, gate)
    with pytest.raises(FuturesTimeoutError):
        running.result(timeout=0.01)
    with pytest.raises(FuturesTimeoutError):
        running.exception(timeout=0)
    assert running.running()
    gate.set()
    assert running.result(WAIT) == "unblocked"


def test_many_threads_wait_on_one_future(make: Make, gate: threading.Event) -> None:
    _, running = busy_single_worker(make, gate)
    got: list[str] = []
    waiters = [threading.Thread(target=lambda: got.append(running.result(WAIT))) for _ in range(5)]
    for t in waiters:
        t.start()
    gate.set()
    for t in waiters:
        t.join(WAIT)
    assert got == ["unblocked"] * 5


def test_cancel_a_queued_task(make: Make, gate: threading.Event) -> None:
    ex, running = busy_single_worker(make, gate)
    ran: list[int] = []
    queued = ex.submit(ran.append, 1)
    callbacks: list[Future[Any]] = []
    queued.add_done_callback(callbacks.append)
    assert queued.cancel() is True
    assert queued.cancel() is True  # idempotent
    assert queued.cancelled() and queued.done()
    assert callbacks == [queued]  # called once, by cancel()
    assert running.cancel() is False  # a running task cannot be cancelled
    with pytest.raises(CancelledError):
        queued.result(timeout=0)
    with pytest.raises(CancelledError):
        queued.exception(timeout=0)
    gate.set()
    ex.shutdown(wait=True)
    assert ran == []  # the cancelled call never ran
    assert callbacks == [queued]
    assert running.result() == "unblocked"
    assert running.cancel() is False  # nor a finished one


def test_cancel_wakes_a_thread_waiting_for_the_result(make: Make, gate: threading.Event) -> None:
    ex, _ = busy_single_worker(make, gate)
    queued = ex.submit(int)
    outcome: list[BaseException] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        try:
            queued.result(WAIT)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(WAIT)
    queued.cancel()
    t.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)


def test_done_callbacks_run_in_order_once_and_immediately_when_done(make: Make) -> None:
    ex = make(max_workers=2)
    order: list[str] = []
    done = threading.Event()
    f = ex.submit(pow, 3, 2)
    f.add_done_callback(lambda fut: order.append(f"a{fut.result()}"))
    f.add_done_callback(lambda fut: (order.append("b"), done.set()))
    assert done.wait(WAIT)
    f.add_done_callback(lambda fut: order.append("late"))  # already done: runs now
    assert order == ["a9", "b", "late"]


def test_a_failing_callback_is_logged_and_the_others_still_run(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    ex = make(max_workers=1)
    seen = threading.Event()

    def bad(_: Future[Any]) -> None:
        raise RuntimeError("callback broke")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f = ex.submit(int, "1")
        f.add_done_callback(bad)
        f.add_done_callback(lambda _: seen.set())
        assert seen.wait(WAIT)
        assert f.result() == 1
    assert any("exception calling callback" in r.getMessage() for r in caplog.records)


def test_submit_from_inside_a_task(make: Make) -> None:
    ex = make(max_workers=2)

    def outer() -> int:
        return ex.submit(pow, 2, 5).result(WAIT) + 1

    assert ex.submit(outer).result(WAIT) == 33


# --------------------------------------------------------------------------- wait, as_completed


def test_wait_all_completed_and_as_completed(make: Make) -> None:
    ex = make(max_workers=3)
    fs = [ex.submit(pow, i, 2) for i in range(200)]
    done, not_done = wait(fs, timeout=WAIT, return_when=ALL_COMPLETED)
    assert not_done == set() and done == set(fs)
    assert sorted(f.result() for f in as_completed(fs, timeout=WAIT)) == [i * i for i in range(200)]


def test_as_completed_yields_each_as_it_finishes(make: Make, gate: threading.Event) -> None:
    ex = make(max_workers=2)
    started = threading.Event()
    slow = ex.submit(blocker(gate, started))
    assert started.wait(WAIT)
    quick = ex.submit(pow, 2, 2)
    it = as_completed([slow, quick, quick], timeout=WAIT)  # duplicates come back once
    assert next(it) is quick
    gate.set()
    assert next(it) is slow
    assert list(it) == []


def test_wait_first_completed_and_timeout(make: Make, gate: threading.Event) -> None:
    ex = make(max_workers=2)
    started = threading.Event()
    slow = ex.submit(blocker(gate, started))
    assert started.wait(WAIT)
    done, not_done = wait([slow], timeout=0.01)
    assert done == set() and not_done == {slow}
    quick = ex.submit(pow, 2, 3)
    done, not_done = wait([slow, quick], timeout=WAIT, return_when=FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    with pytest.raises(FuturesTimeoutError):
        list(as_completed([slow], timeout=0.01))
    gate.set()


def test_wait_first_exception(make: Make, gate: threading.Event) -> None:
    ex = make(max_workers=2)
    started = threading.Event()
    slow = ex.submit(blocker(gate, started))
    assert started.wait(WAIT)
    bad = ex.submit(fail, "x")
    done, not_done = wait([slow, bad], timeout=WAIT, return_when=FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    # Called again with the failed future already done: returns at once.
    done, not_done = wait([slow, bad], timeout=WAIT, return_when=FIRST_EXCEPTION)
    assert done == {bad}
    gate.set()


def test_wait_over_futures_of_both_executors(make: Make) -> None:
    ex = make(max_workers=2)
    with ThreadPoolExecutor(2) as std:
        fs = [ex.submit(pow, i, 2) for i in range(50)] + [std.submit(pow, i, 3) for i in range(50)]
        done, not_done = wait(fs, timeout=WAIT)
    assert not not_done and len(done) == 100


def test_wait_sees_a_cancelled_future(make: Make, gate: threading.Event) -> None:
    ex, _ = busy_single_worker(make, gate)
    queued = ex.submit(int)
    assert queued.cancel()
    gate.set()
    done, _ = wait([queued], timeout=WAIT)
    assert done == {queued} and queued.cancelled()


# --------------------------------------------------------------------------- map


def test_map_yields_results_in_input_order(make: Make) -> None:
    ex = make(max_workers=3)
    assert list(ex.map(pow, range(1000), itertools.repeat(2))) == [i * i for i in range(1000)]
    assert list(ex.map(pow, [2, 3, 4], [1, 2])) == [2, 9]  # stops at the shortest input
    assert list(ex.map(pow, [])) == []


def test_map_collects_the_iterables_at_the_call(make: Make) -> None:
    ex = make(max_workers=2)
    taken: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            taken.append(i)
            yield i

    results = ex.map(abs, source())
    assert len(taken) == 100  # before anything was asked of the iterator
    assert list(results) == list(range(100))


def test_map_raises_an_error_when_its_value_is_reached(make: Make) -> None:
    ex = make(max_workers=2)
    results = ex.map(lambda x: 10 // x, [5, 2, 0, 1, 0])
    assert next(results) == 2
    assert next(results) == 5
    with pytest.raises(ZeroDivisionError):
        next(results)
    with pytest.raises(StopIteration):  # the iterator is finished after raising
        next(results)


def test_map_error_waits_for_earlier_values(make: Make, gate: threading.Event) -> None:
    """A later item failing first does not overtake earlier values."""
    ex = make(max_workers=2)
    started = threading.Event()
    slow = blocker(gate, started)

    def task(i: int) -> str:
        if i == 0:
            return slow()
        raise KeyError(i)

    results = ex.map(task, range(50))
    assert started.wait(WAIT)
    gate.set()
    assert next(results) == "unblocked"
    with pytest.raises(KeyError):
        next(results)


def test_map_timeout_counts_from_the_call(make: Make, gate: threading.Event) -> None:
    ex = make(max_workers=1)
    started = threading.Event()
    task = blocker(gate, started)
    ran: list[int] = []

    def item(i: int) -> int:
        if i == 0:
            task()
        ran.append(i)
        return i

    results = ex.map(item, range(20), timeout=0.05)
    assert started.wait(WAIT)
    with pytest.raises(FuturesTimeoutError):
        next(results)
    gate.set()
    ex.shutdown(wait=True)
    # Calls not started when the iterator gave up were cancelled (the one running was not).
    assert 0 in ran and len(ran) < 20


def test_closing_the_map_iterator_cancels_pending_calls(make: Make, gate: threading.Event) -> None:
    ex = make(max_workers=1)
    started = threading.Event()
    task = blocker(gate, started)
    ran: list[int] = []

    def item(i: int) -> int:
        if i == 1:
            task()
        ran.append(i)
        return i

    results = ex.map(item, range(100))
    assert next(results) == 0  # handed out while item 1 still runs
    assert started.wait(WAIT)
    results.close()
    gate.set()
    ex.shutdown(wait=True)
    assert ran[:2] == [0, 1] and len(ran) < 100


def test_map_with_buffersize_reads_its_input_lazily(make: Make, kind: str) -> None:
    if kind == "ThreadPoolExecutor" and not STDLIB_HAS_BUFFERSIZE:
        pytest.skip("ThreadPoolExecutor.map takes buffersize from Python 3.14 on")
    ex = make(max_workers=2)
    taken = 0

    def source() -> Iterator[int]:
        nonlocal taken
        for i in itertools.count():
            taken += 1
            yield i

    results = ex.map(abs, source(), buffersize=4)  # type: ignore[call-arg]
    assert taken <= 4  # an infinite input: only the first buffer was read
    for yielded in range(1, 300):
        assert next(results) == yielded - 1
        # Results in flight (read from the input, not yet handed out) stay bounded.
        assert taken - yielded <= 4
    results.close()


def test_map_with_buffersize_keeps_order_and_errors(make: Make, kind: str) -> None:
    if kind == "ThreadPoolExecutor" and not STDLIB_HAS_BUFFERSIZE:
        pytest.skip("ThreadPoolExecutor.map takes buffersize from Python 3.14 on")
    ex = make(max_workers=3)
    out = list(ex.map(pow, range(100), itertools.repeat(2), buffersize=7))  # type: ignore[call-arg]
    assert out == [i * i for i in range(100)]
    results = ex.map(lambda x: 1 // x, [1, 1, 0, 1], buffersize=2)  # type: ignore[call-arg]
    assert [next(results), next(results)] == [1, 1]
    with pytest.raises(ZeroDivisionError):
        next(results)


@pytest.mark.parametrize(
    ("buffersize", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)]
)
def test_map_refuses_a_bad_buffersize(
    make: Make, kind: str, buffersize: Any, error: type[Exception]
) -> None:
    if kind == "ThreadPoolExecutor" and not STDLIB_HAS_BUFFERSIZE:
        pytest.skip("ThreadPoolExecutor.map takes buffersize from Python 3.14 on")
    ex = make(max_workers=1)
    with pytest.raises(error, match="buffersize"):
        ex.map(abs, [1], buffersize=buffersize)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- shutdown, lifecycle


def test_shutdown_waits_for_queued_and_running_calls(make: Make) -> None:
    ex = make(max_workers=2)
    fs = [ex.submit(pow, i, 2) for i in range(500)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == [i * i for i in range(500)]


def test_submit_and_map_after_shutdown_raise_runtime_error(make: Make) -> None:
    ex = make(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(int)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(abs, [1])
    ex.shutdown()  # idempotent


def test_shutdown_cancel_futures_cancels_what_has_not_started(
    make: Make, gate: threading.Event
) -> None:
    ex, running = busy_single_worker(make, gate)
    ran: list[int] = []
    queued = [ex.submit(ran.append, i) for i in range(20)]
    ex.shutdown(wait=False, cancel_futures=True)
    # Cancelled by the time shutdown returns, while the running call still runs.
    assert all(f.cancelled() for f in queued)
    assert not running.done()
    with pytest.raises(RuntimeError):
        ex.submit(int)
    gate.set()
    assert running.result(WAIT) == "unblocked"
    ex.shutdown(wait=True)
    assert ran == []
    # (Not tested here: wait() on these. The standard executor leaves them CANCELLED, a
    # state wait() does not count as done, so it blocks; see test_executor.py.)


def test_shutdown_cancel_futures_makes_map_raise_cancelled(
    make: Make, gate: threading.Event
) -> None:
    ex = make(max_workers=1)
    started = threading.Event()
    first = blocker(gate, started)
    results = ex.map(lambda i: first() if i == 0 else i, range(10))
    assert started.wait(WAIT)
    ex.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert next(results) == "unblocked"
    with pytest.raises(CancelledError):
        next(results)


def test_context_manager_waits_for_the_calls(make: Make) -> None:
    done: list[int] = []
    with make(max_workers=2) as ex:
        for i in range(100):
            ex.submit(done.append, i)
    assert sorted(done) == list(range(100))


def test_max_workers_must_be_positive(kind: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_workers"):
            EXECUTORS[kind](max_workers=bad)


def test_initializer_runs_in_each_worker_thread_before_its_calls(make: Make) -> None:
    local = threading.local()
    calls: list[tuple[str, int]] = []

    def init(tag: str, n: int) -> None:
        local.tag = (tag, n)
        calls.append((tag, n))

    ex = make(max_workers=2, initializer=init, initargs=("x", 1))
    assert all(r == ("x", 1) for r in ex.map(lambda _: local.tag, range(50)))
    assert 1 <= len(calls) <= 2 and set(calls) == {("x", 1)}


def test_a_failing_initializer_breaks_the_executor(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    def init() -> None:
        raise OSError("no database")

    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        ex = make(max_workers=2, initializer=init)
        f = ex.submit(pow, 2, 2)
        with pytest.raises(BrokenThreadPool):
            f.result(WAIT)
        with pytest.raises(BrokenThreadPool):
            ex.submit(pow, 2, 2)
    assert any("Exception in initializer" in r.getMessage() for r in caplog.records)


def test_thread_name_prefix_names_the_worker_threads(make: Make) -> None:
    ex = make(max_workers=2, thread_name_prefix="crawler")
    name = ex.submit(lambda: threading.current_thread().name).result(WAIT)
    assert name.startswith("crawler")


def test_run_in_executor(make: Make) -> None:
    ex = make(max_workers=2)

    async def main() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        one = await loop.run_in_executor(ex, pow, 2, 8)
        many = await asyncio.gather(*(loop.run_in_executor(ex, abs, -i) for i in range(20)))
        with pytest.raises(ValueError, match="nope"):
            await loop.run_in_executor(ex, fail, "nope")
        return one, list(many)

    one, many = asyncio.run(main())
    assert one == 256 and many == list(range(20))


def test_run_in_executor_cancellation_cancels_a_queued_call(
    make: Make, gate: threading.Event
) -> None:
    ex, _ = busy_single_worker(make, gate)
    ran: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(ex, ran.append, 1)
        await asyncio.sleep(0)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut

    asyncio.run(main())
    gate.set()
    ex.shutdown(wait=True)
    assert ran == []


EXIT_SCRIPT = """
import sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import shardflow

started = threading.Event()

def work(i):
    started.set()
    time.sleep(0.2)  # still running when the main thread ends
    sys.stdout.write("finished %d\\n" % i)  # one write: lines of two threads do not mix
    sys.stdout.flush()

ex = {cls}(max_workers=2)
for i in range(4):
    ex.submit(work, i)
started.wait()
{ending}
print("main done", flush=True)
"""


@pytest.mark.parametrize("ending", ["pass", "ex.shutdown(wait=False)"])
def test_interpreter_exit_waits_for_running_and_queued_calls(
    kind: str, ending: str, tmp_path: Path
) -> None:
    cls = "ThreadPoolExecutor" if kind == "ThreadPoolExecutor" else "shardflow.Executor"
    result = run_script(EXIT_SCRIPT.format(cls=cls, ending=ending), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "main done" in result.stdout
    assert sorted(re.findall(r"finished (\d)", result.stdout)) == ["0", "1", "2", "3"]


def test_submit_during_interpreter_exit_is_refused(kind: str, tmp_path: Path) -> None:
    cls = "ThreadPoolExecutor" if kind == "ThreadPoolExecutor" else "shardflow.Executor"
    result = run_script(
        f"""
        import threading

        go = threading.Event()
        # threading runs these exit hooks in reverse order of registration: registered
        # before the executors' modules are imported, this one runs after theirs.
        threading._register_atexit(go.set)

        from concurrent.futures import ThreadPoolExecutor
        import shardflow

        ex = {cls}(max_workers=1)
        ex.submit(int).result()

        def late():  # a non-daemon thread that submits once the interpreter exits
            go.wait()
            try:
                ex.submit(int)
            except RuntimeError as exc:
                print("refused:", exc, flush=True)

        threading.Thread(target=late).start()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # ("after interpreter shutdown", or "after shutdown" once ThreadPoolExecutor's worker
    # marked its executor shut down: both are the RuntimeError of a refused submit.)
    assert "refused: cannot schedule new futures after" in result.stdout


@pytest.mark.parametrize("wait_in", ["result", "map"])
def test_ctrl_c_interrupts_a_wait_for_a_result(kind: str, wait_in: str, tmp_path: Path) -> None:
    cls = "ThreadPoolExecutor" if kind == "ThreadPoolExecutor" else "shardflow.Executor"
    waiting = "f.result()" if wait_in == "result" else "list(ex.map(gate.wait, [None] * 3))"
    code, out, err = interrupt_when_ready(
        f"""
        import threading
        from concurrent.futures import ThreadPoolExecutor
        import shardflow

        gate = threading.Event()
        ex = {cls}(max_workers=1)
        f = ex.submit(gate.wait)
        print("ready", flush=True)
        try:
            {waiting}
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        finally:
            gate.set()
        """,
        tmp_path,
    )
    assert code == 0, err
    assert "interrupted" in out


def test_a_call_can_wait_for_the_result_of_a_call_submitted_after_it(make: Make) -> None:
    """With an idle worker, a call blocked on ``result()`` of a later call gets it."""
    ex = make(max_workers=2)

    def first(ready: threading.Event, later: dict[str, Future[int]]) -> int:
        assert ready.wait(WAIT)
        return later["f"].result(WAIT) + 1

    for _ in range(20):
        later: dict[str, Future[int]] = {}
        ready = threading.Event()
        a = ex.submit(first, ready, later)
        ex.submit(abs, -1)
        later["f"] = ex.submit(abs, -41)
        ready.set()
        assert a.result(WAIT) == 42
