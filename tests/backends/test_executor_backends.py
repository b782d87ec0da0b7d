"""``shardflow.Executor(backend=...)``: the ``concurrent.futures`` executor on worker
processes (``backend="process"``) and Ray actors (a fake remote here), behaving as
``ProcessPoolExecutor`` documents; the thread executor runs the same behaviour tests.

Calls are module-level functions of ``exec_tasks`` (worker processes import them); gates
are files (see ``exec_tasks.gated``). Executors that a test does not shut down are shared
by the module (a worker process starts in ~0.1-0.5 s)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import (
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    InvalidStateError,
    ProcessPoolExecutor,
    as_completed,
    wait,
)
from concurrent.futures import Executor as StdExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import exec_tasks as tasks
import pytest
from test_ray_backend import FakeRayBackend

import shardflow
from helpers import run_script
from shardflow._remote_executor import MAP_WINDOW_PER_WORKER, RemoteExecutor
from shardflow.backends import ProcessBackend, RayBackend
from shardflow.backends.process import WorkerLost

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the process backend is tested on Linux here"
)

WAIT = tasks.WAIT
BACKENDS = ["thread", "process", "fake-ray"]
#: Where a call submitted while every worker is busy stays queued in this process (so
#: that cancelling it is meaningful): threads, and worker processes with a window of one
#: batch in flight ("process-w1"; by default up to 4 batches per worker are shipped, and
#: a shipped call is running). Fake actors run their window's calls unpickled.
QUEUED_CANCEL = ["thread", "process-w1"]


def make(kind: str, workers: int = 2, **kwargs: Any) -> StdExecutor:
    if kind == "thread":
        return shardflow.Executor(workers, **kwargs)
    if kind == "fake-ray":
        return shardflow.Executor(workers, backend=FakeRayBackend(batch_size=50), **kwargs)
    if kind == "process-w1":
        return shardflow.Executor(workers, backend=ProcessBackend(window=1), **kwargs)
    return shardflow.Executor(workers, backend=kind, **kwargs)


_shared: dict[str, StdExecutor] = {}


@pytest.fixture(scope="module", autouse=True)
def _shutdown_shared() -> Iterator[None]:
    yield
    for ex in _shared.values():
        ex.shutdown(wait=True)
    _shared.clear()


def shared(kind: str) -> StdExecutor:
    """One running executor of ``kind`` for the whole module (tests do not shut it down)."""
    if kind not in _shared:
        _shared[kind] = make(kind)
    return _shared[kind]


def block_workers(ex: Any, gate: str, *, values: bool = False) -> list[Any]:
    """Occupy both workers with a gated call each (``r0``, ``r1``; their values 0 and 1
    with ``values``), one after the other: a call submitted while the other worker is
    idle could otherwise be taken (stolen) by the worker already running the first."""
    running = []
    for i in range(2):
        running.append(ex.submit(tasks.gated, gate, f"r{i}", i if values else None))
        tasks.wait_started(gate, f"r{i}")
    return running


def accounted(ex: Any) -> Any:
    """The pool's metrics, once every call handed over is done (flush), with the
    accounting identity checked."""
    if not ex._pool.closed:
        assert ex._pool.flush(WAIT)
    m = ex.metrics() if hasattr(ex, "metrics") else ex._pool.metrics()
    assert m.submitted == m.processed + m.failed + m.dead_lettered + m.dropped + m.returned
    return m


# ---------------------------------------------------------------- construction


def test_backend_picks_the_implementation() -> None:
    ex = shared("process")
    assert isinstance(ex, RemoteExecutor) and isinstance(ex, StdExecutor)
    assert not isinstance(ex, shardflow.Executor)  # no ThreadPoolExecutor in disguise
    assert isinstance(ex.backend, ProcessBackend)
    assert "process" in repr(ex)
    assert isinstance(shared("thread"), shardflow.Executor)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backend": "nope"}, ValueError, "backend must be one of"),
        ({"backend": 3}, TypeError, "backend must be"),
        ({"mp_context": multiprocessing.get_context("spawn")}, ValueError, "mp_context"),
        ({"max_tasks_per_child": 3}, ValueError, "max_tasks_per_child"),
        ({"backend": "process", "max_tasks_per_child": 0}, ValueError, ">= 1"),
        ({"backend": "process", "max_tasks_per_child": "2"}, TypeError, "max_tasks_per_child"),
        (
            {
                "backend": "process",
                "max_tasks_per_child": 2,
                "mp_context": multiprocessing.get_context("fork"),
            },
            ValueError,
            "incompatible with the 'fork'",
        ),
        ({"backend": "process", "mp_context": "spawn"}, TypeError, "mp_context"),
        ({"backend": ProcessBackend(), "max_tasks_per_child": 2}, ValueError, "ProcessBackend"),
        (
            {"backend": RayBackend(), "mp_context": multiprocessing.get_context()},
            ValueError,
            "process",
        ),
        ({"backend": "process", "initializer": 5}, TypeError, "initializer"),
        ({"backend": "process", "initargs": [1]}, TypeError, "initargs"),
    ],
)
def test_bad_arguments_are_refused_naming_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        shardflow.Executor(1, **kwargs)


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_max_workers_must_be_positive(kind: str) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(kind, workers=0)


# ---------------------------------------------------------------- submit and futures


@pytest.mark.parametrize("kind", BACKENDS)
def test_submit_returns_a_future_with_the_result(kind: str) -> None:
    ex = shared(kind)
    fut = ex.submit(tasks.add, 1, 2, c=4)
    assert isinstance(fut, Future)
    assert fut.result(WAIT) == 7
    assert fut.done() and not fut.running() and not fut.cancelled()


@pytest.mark.parametrize("kind", BACKENDS)
def test_an_exception_goes_to_its_future_and_the_others_complete(kind: str) -> None:
    ex = shared(kind)
    futs = [ex.submit(tasks.fail_on, i, 13) for i in range(40)]
    done, _ = wait(futs, WAIT)
    assert len(done) == 40
    for i, fut in enumerate(futs):
        if i == 13:
            with pytest.raises(ValueError, match="bad item 13"):
                fut.result()
            exc = fut.exception()
            assert isinstance(exc, ValueError)
            if kind != "thread":  # the worker's traceback, as ProcessPoolExecutor gives it
                assert "in fail_on" in str(exc.__cause__), exc.__cause__
        else:
            assert fut.result() == i


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_base_exception_in_a_call_goes_to_its_future(kind: str) -> None:
    fut = shared(kind).submit(tasks.raise_system_exit)
    assert isinstance(fut.exception(WAIT), SystemExit)


@pytest.mark.parametrize("kind", BACKENDS)
def test_wait_and_as_completed_see_every_future(kind: str) -> None:
    ex = shared(kind)
    futs = [ex.submit(tasks.square, i) for i in range(300)]
    assert sorted(f.result() for f in as_completed(futs, WAIT)) == [i * i for i in range(300)]
    futs.append(ex.submit(tasks.fail_on, 1, 1))
    done, not_done = wait(futs, WAIT, return_when=FIRST_EXCEPTION)
    assert futs[-1] in done and not not_done


@pytest.mark.parametrize("kind", BACKENDS)
def test_finished_futures_leave_the_gc_unless_they_may_be_in_a_cycle(kind: str) -> None:
    """Futures completed in batches (collector, on_results) with atomic results leave
    the cyclic GC's lists; one with a container result or an exception stays there."""
    ex = shared(kind)
    futs = [ex.submit(tasks.square, i) for i in range(300)]
    wait(futs, WAIT)
    assert [f.result() for f in futs] == [i * i for i in range(300)]
    assert not any(gc.is_tracked(f) for f in futs)
    listed = ex.submit(list, (1, 2))
    failed = ex.submit(tasks.fail_on, 1, 1)
    assert listed.result(WAIT) == [1, 2] and failed.exception(WAIT) is not None
    assert gc.is_tracked(listed) and gc.is_tracked(failed)


@pytest.mark.parametrize("kind", BACKENDS)
def test_run_in_executor(kind: str) -> None:
    ex = shared(kind)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(ex, tasks.square, i) for i in range(5)))
        )

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("kind", QUEUED_CANCEL)
def test_a_queued_call_can_be_cancelled_a_running_one_cannot(kind: str, tmp_path: Path) -> None:
    """A call is running once a worker's dispatch thread took it (its batch may wait
    for room in the window, as the standard executor's call queue holds a few calls
    ahead): only calls behind those can be cancelled, and a cancelled call never runs."""
    ex = shared(kind)
    gate = str(tmp_path)
    running = block_workers(ex, gate, values=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    queued = [ex.submit(tasks.touch, str(marks), i) for i in range(2000)]
    cancelled = {i for i, f in enumerate(queued) if i % 2 == 0 and f.cancel()}
    assert cancelled  # what the dispatch threads had not taken
    assert not any(f.cancel() for f in running)
    assert all(f.running() for f in running)
    tasks.open_gate(gate)
    assert [f.result(WAIT) for f in running] == [0, 1]
    wait(queued, WAIT)  # cancelled futures are notified: wait() sees them done
    for i, fut in enumerate(queued):
        if i in cancelled:
            with pytest.raises(CancelledError):
                fut.result(0)
        else:
            assert fut.result(0) is None
    assert {int(p.name) for p in marks.iterdir()} == set(range(2000)) - cancelled


# ---------------------------------------------------------------- map


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("chunksize", [None, 1, 7, 5000])
def test_map_yields_results_in_input_order(kind: str, chunksize: int | None) -> None:
    ex = shared(kind)
    kwargs = {} if kind == "thread" or chunksize is None else {"chunksize": chunksize}
    assert list(ex.map(tasks.add, range(1000), range(1000), **kwargs)) == [
        2 * i for i in range(1000)
    ]
    assert list(ex.map(tasks.square, [])) == []


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_map_raises_the_error_where_its_value_would_be_with_the_values_before_it(kind: str) -> None:
    ex = shared(kind)
    it = ex.map(tasks.fail_on, range(100), [37] * 100, chunksize=10)
    got = []
    with pytest.raises(ValueError, match="bad item 37"):
        for value in it:
            got.append(value)
    assert got == list(range(37))


@pytest.mark.parametrize("kind", BACKENDS)
def test_map_timeout_counts_from_the_call(kind: str, tmp_path: Path) -> None:
    ex = shared(kind)
    gate = str(tmp_path)
    it = ex.map(tasks.gated, [gate] * 2, ["a", "b"], timeout=0.2)
    try:
        with pytest.raises(FuturesTimeoutError):
            next(it)
    finally:
        tasks.open_gate(gate)
    tasks.wait_started(gate, "a")  # "b" may have been cancelled (not started yet)


@pytest.mark.parametrize("kind", BACKENDS)
def test_map_without_buffersize_reads_its_input_at_the_call(kind: str) -> None:
    ex = shared(kind)
    read: list[int] = []

    def source() -> Iterator[int]:
        for i in range(5000):
            read.append(i)
            yield i

    it = ex.map(tasks.square, source())
    assert len(read) == 5000  # before the first result is asked for
    assert list(it) == [i * i for i in range(5000)]


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_map_with_buffersize_reads_its_input_lazily(kind: str) -> None:
    ex = shared(kind)
    read: list[int] = []

    def source() -> Iterator[int]:
        for i in range(100):
            read.append(i)
            yield i

    it = ex.map(tasks.square, source(), chunksize=5, buffersize=2)
    assert len(read) <= 2 * 5 + 1  # two chunks in flight (and the one read that ends a chunk)
    assert next(it) == 0
    assert len(read) <= 3 * 5 + 1
    assert list(it) == [i * i for i in range(1, 100)]


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_map_refuses_bad_chunksize_and_buffersize(kind: str) -> None:
    ex = shared(kind)
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(tasks.square, range(3), chunksize=0)
    with pytest.raises(TypeError, match="chunksize"):
        ex.map(tasks.square, range(3), chunksize=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffersize"):
        ex.map(tasks.square, range(3), buffersize=0)


@pytest.mark.parametrize("kind", QUEUED_CANCEL)
def test_a_map_iterator_that_raises_cancels_the_pending_chunks(kind: str, tmp_path: Path) -> None:
    ex = shared(kind)
    gate = str(tmp_path)
    running = block_workers(ex, gate)
    marks = tmp_path / "marks"
    marks.mkdir()
    chunks = {} if kind == "thread" else {"chunksize": 5}
    it = ex.map(tasks.touch, [str(marks)] * 500, range(500), timeout=0.05, **chunks)
    with pytest.raises(FuturesTimeoutError):
        next(it)  # the workers are busy; the iterator raises and cancels what is pending
    tasks.open_gate(gate)
    wait(running, WAIT)
    assert ex._pool.flush(WAIT)  # type: ignore[attr-defined]
    ran = len(list(marks.iterdir()))
    if kind == "thread":
        assert ran == 0
    else:  # at most the chunks submitted (the window, and the one sent before the wait)
        assert ran <= (2 * MAP_WINDOW_PER_WORKER + 1) * 5 < 500
    accounted(ex)


# ---------------------------------------------------------------- shutdown


@pytest.mark.parametrize("kind", BACKENDS)
def test_context_manager_waits_and_submit_after_shutdown_raises(kind: str) -> None:
    with make(kind) as ex:
        futs = [ex.submit(tasks.square, i) for i in range(100)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [i * i for i in range(100)]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(tasks.square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(tasks.square, range(3))
    ex.shutdown()  # idempotent


@pytest.mark.parametrize("kind", QUEUED_CANCEL)
def test_shutdown_cancel_futures_cancels_what_is_queued(kind: str, tmp_path: Path) -> None:
    ex = make(kind)
    gate = str(tmp_path)
    running = block_workers(ex, gate, values=True)
    queued = [ex.submit(tasks.square, i) for i in range(2000)]
    ex.shutdown(wait=False, cancel_futures=True)
    cancelled = [f.cancelled() for f in queued]
    assert any(cancelled)  # all but what the dispatch threads had taken
    if kind != "thread":
        # A dispatch thread waiting for room in its window holds one batch at most; the
        # rest stays in its ring, where cancel_futures reaches it.
        assert cancelled.count(False) <= ex._pool.workers * ex._pool.batch_size
    tasks.open_gate(gate)
    ex.shutdown(wait=True)
    assert [f.result() for f in running] == [0, 1]
    done, _ = wait(queued, 0)
    assert len(done) == 2000
    for i, (fut, was_cancelled) in enumerate(zip(queued, cancelled, strict=True)):
        if not was_cancelled:
            assert fut.result() == i * i
    if kind != "thread":
        m = accounted(ex)
        assert m.returned == sum(cancelled) and m.processed == 2 + 2000 - sum(cancelled)


# ---------------------------------------------------------------- initializer


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_the_initializer_runs_once_per_worker_before_its_calls(kind: str, tmp_path: Path) -> None:
    with make(kind, initializer=tasks.record_init, initargs=(str(tmp_path), "ready")) as ex:
        got = [f.result(WAIT) for f in [ex.submit(tasks.initialized_with) for _ in range(200)]]
    assert all(tags and tags[-1] == "ready" for _, tags in got)
    runs = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("init-"))
    if kind == "process":
        pids = {pid for pid, _ in got}
        # once per worker process, in each process that ran calls
        assert {int(name.split("-")[1]) for name in runs} >= pids
        assert all(name.endswith("-1") for name in runs)
        assert len(runs) <= 2
    else:  # fake actors run in this process: once per actor
        assert 1 <= len(runs) <= 2


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_a_failing_initializer_breaks_the_executor(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ex = make(kind, initializer=tasks.failing_init)
    try:
        futs = [ex.submit(tasks.square, i) for i in range(5)]
        for fut in futs:
            exc = fut.exception(WAIT)
            assert isinstance(exc, BrokenProcessPool), exc
            assert "initializer says no" in str(exc)
        assert ex._broken  # type: ignore[attr-defined]
        with pytest.raises(BrokenProcessPool):
            ex.submit(tasks.square, 1)
    finally:
        ex.shutdown()


# ---------------------------------------------------------------- what cannot travel


def test_an_initializer_that_cannot_be_pickled_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"initializer .*record_init.* with initargs"):
        shardflow.Executor(
            1, backend="process", initializer=tasks.record_init, initargs=(threading.Lock(), "x")
        )


def test_a_call_that_cannot_be_pickled_fails_its_future_only() -> None:
    # (Fake actors take calls unpickled; the Ray case is test_cluster_executor below.)
    ex = shared("process")
    lock = threading.Lock()
    futs = [ex.submit(tasks.square, i) for i in range(10)]
    bad_fn = ex.submit(lambda: 1)
    bad_arg = ex.submit(tasks.add, lock)
    futs += [ex.submit(tasks.square, i) for i in range(10, 20)]
    for fut, what in ((bad_fn, "<lambda>"), (bad_arg, "add")):
        exc = fut.exception(WAIT)
        assert isinstance(exc, TypeError), exc
        assert "cannot send the call" in str(exc) and what in str(exc) and "pickle" in str(exc)
    assert [f.result(WAIT) for f in futs] == [i * i for i in range(20)]


def test_a_result_that_cannot_be_pickled_fails_its_future_only() -> None:
    ex = shared("process")
    bad = ex.submit(tasks.return_lock)
    good = ex.submit(tasks.square, 4)
    exc = bad.exception(WAIT)
    assert isinstance(exc, TypeError) and "lock" in str(exc)
    assert good.result(WAIT) == 16


# ---------------------------------------------------------------- worker crashes


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_worker_crash_fails_only_the_call_that_crashed_it(how: str) -> None:
    """ProcessPoolExecutor fails every pending call with BrokenProcessPool and refuses new
    ones; here the crashing call fails alone (WorkerLost, after max_attempts runs) and
    everything else completes, on a replacement worker."""
    ex = shardflow.Executor(2, backend=ProcessBackend(max_attempts=2))
    try:
        before = [ex.submit(tasks.slow_square, i, 0.001) for i in range(30)]
        crash = ex.submit(tasks.die, how)
        after = [ex.submit(tasks.square, i) for i in range(30, 300)]
        exc = crash.exception(WAIT)
        assert isinstance(exc, WorkerLost), exc
        assert exc.attempts == 2
        assert [f.result(WAIT) for f in before + after] == [i * i for i in range(300)]
        assert ex.submit(tasks.square, 5).result(WAIT) == 25  # still usable
        m = accounted(ex)
        assert m.failed == 1 and m.processed == 301
    finally:
        ex.shutdown()


def test_process_pool_executor_breaks_where_shardflow_does_not() -> None:
    """The baseline the test above improves on (kept to show the difference is real)."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as ppe:
        crash = ppe.submit(tasks.die, "exit")
        with pytest.raises(BrokenProcessPool):
            crash.result(WAIT)
        with pytest.raises(BrokenProcessPool):
            ppe.submit(tasks.square, 1)


def test_max_tasks_per_child_replaces_workers() -> None:
    with shardflow.Executor(1, backend="process", max_tasks_per_child=3) as ex:
        pids = [ex.submit(tasks.pid).result(WAIT) for _ in range(7)]
    assert len(set(pids)) == 3  # 3 + 3 + 1 calls
    assert os.getpid() not in pids


def test_mp_context_is_used() -> None:
    ctx = multiprocessing.get_context("spawn")
    with shardflow.Executor(1, backend="process", mp_context=ctx) as ex:
        assert ex.backend.mp_context is ctx  # type: ignore[attr-defined]
        assert "spawn" in repr(ex)
        assert ex.submit(tasks.square, 3).result(WAIT) == 9


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_end_running_calls_and_cancel_queued(
    method: str, tmp_path: Path
) -> None:
    ex = make("process-w1")
    gate = str(tmp_path)
    running = block_workers(ex, gate)
    queued = [ex.submit(tasks.square, i) for i in range(2000)]
    getattr(ex, method)()
    for fut in running:
        assert isinstance(fut.exception(WAIT), (BrokenProcessPool, WorkerLost))
    # Queued: cancelled; taken by a dispatch thread but not sent: failed. None ran.
    assert any(f.cancelled() for f in queued)
    for fut in queued:
        if not fut.cancelled():
            assert isinstance(fut.exception(WAIT), (BrokenProcessPool, WorkerLost))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)
    accounted(ex)


def test_terminate_workers_needs_the_process_backend() -> None:
    ex = make("fake-ray")
    try:
        with pytest.raises(TypeError, match="process"):
            ex.terminate_workers()  # type: ignore[attr-defined]
    finally:
        ex.shutdown()


# ---------------------------------------------------------------- accounting


@pytest.mark.parametrize("kind", ["process", "fake-ray"])
def test_every_call_is_counted_once(kind: str) -> None:
    ex = make(kind)
    try:
        futs = [ex.submit(tasks.fail_on, i, 7) for i in range(100)]
        mapped = list(ex.map(tasks.square, range(100), chunksize=10))
        wait(futs, WAIT)
    finally:
        ex.shutdown()
    assert mapped == [i * i for i in range(100)]
    m = accounted(ex)
    assert m.submitted == 100 + 10  # 100 calls and 10 map chunks
    assert m.failed == 1 and m.processed == 109


def test_a_forked_child_gets_a_clear_error_from_an_inherited_executor(tmp_path: Path) -> None:
    script = f"""
import os, sys, warnings
warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
sys.path.insert(0, {str(Path(tasks.__file__).parent)!r})
import exec_tasks, shardflow

if __name__ == "__main__":
    gate = {str(tmp_path)!r}
    ex = shardflow.Executor(1, backend="process")
    pending = ex.submit(exec_tasks.gated, gate, "r")
    exec_tasks.wait_started(gate, "r")
    pid = os.fork()
    if pid == 0:
        for label, call in (("submit", lambda: ex.submit(exec_tasks.square, 2)),
                            ("result", lambda: pending.result(5))):
            try:
                call()
            except RuntimeError as exc:
                print(label, "fork error" if "Executor" in str(exc) and "fork" in str(exc)
                      else "other: " + str(exc), flush=True)
            else:
                print(label, "no error", flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    exec_tasks.open_gate(gate)
    print("parent", pending.result(30), ex.submit(exec_tasks.square, 3).result(30), flush=True)
    ex.shutdown()
"""
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "submit fork error" in lines and "result fork error" in lines, lines
    assert "parent None 9" in lines, lines


def test_interpreter_exit_runs_every_call_of_an_executor_not_shut_down(tmp_path: Path) -> None:
    # As the thread Executor and ProcessPoolExecutor do: no shutdown(), yet every queued
    # call runs at exit, and the worker processes are stopped (joined), not left to
    # multiprocessing's exit hook, which would terminate them with calls in flight.
    out = tmp_path / "records"
    out.mkdir()
    script = f"""
    import sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    import shardflow, proc_handlers as ph
    if __name__ == "__main__":
        ex = shardflow.Executor(2, backend="process")
        rec = ph.Recorder({str(out)!r}, sleep_on=frozenset(range(0, 300, 30)), sleep=0.05)
        futures = [ex.submit(rec, i) for i in range(300)]
        print(sum(not f.done() for f in futures), flush=True)
    """
    result = run_script(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(result.stdout.strip()) > 0  # calls were still pending when exit began
    import proc_handlers as ph

    handled = ph.read_records(str(out))
    assert sorted(int(r[2]) for r in handled) == list(range(300))
    for pid in {r[1] for r in handled}:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[:1]
        ), f"worker {pid} outlived its parent"


def test_the_compiled_batch_helpers_of_the_process_executor() -> None:
    """take_calls / pop_futures / set_results (shardflow._executor): the calls of a batch
    in order, a cancelled future's call not run, futures found back by call identity,
    results set in order; a length mismatch is refused before anything is set."""
    from shardflow._executor import pop_futures, set_results, take_calls
    from shardflow.executor import _Future

    futs = [_Future() for _ in range(3)]
    assert futs[1].cancel()
    registry: dict[int, Any] = {}
    cancelled = ()
    calls = take_calls(futs, registry, cancelled)
    # Futures made by hand carry no call: (None, None, None), registered; the cancelled
    # one is not run and is now CANCELLED_AND_NOTIFIED.
    assert calls[0] == (None, None, None) and calls[1] is cancelled
    assert futs[0].running() and futs[1].cancelled() and len(registry) == 2
    found = pop_futures(registry, calls)
    assert found == [futs[0], None, futs[2]] and not registry
    with pytest.raises(ValueError, match="3 futures and 2 values"):
        set_results(found, [1, 2])
    assert not futs[0].done()
    set_results(found, ["a", "ignored", "c"])
    assert futs[0].result(0) == "a" and futs[2].result(0) == "c"
    with pytest.raises(InvalidStateError):
        set_results([futs[0]], ["again"])
