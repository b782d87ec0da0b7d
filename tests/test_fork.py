"""fork() with live shardflow objects (issue 11, GUIDE.md §2.5): the child exits promptly,
can make and use new objects, and an object made before the fork raises a RuntimeError
naming it when used in the child.

Every case runs in a fresh interpreter (``run_script``, with a hard timeout), which forks;
the parent waits for its child with a deadline and kills it (by pid) if it hangs, so a
regression fails in seconds. The scripts filter Python 3.12+'s DeprecationWarning about
fork() in a multi-threaded process explicitly: forking a process with live worker
threads is exactly what is under test (the warning is stderr noise in the scripts, not
pytest's business).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import run_script

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")

#: Shared by the scripts: ``fork_child(fn)`` runs ``fn`` in a forked child that then exits
#: normally (sys.exit: the interpreter's exit hooks run, which is where issue 11 hung) and
#: returns the child's exit code, or "hung" if it did not exit within CHILD_DEADLINE s.
PRELUDE = """
import os, signal, sys, time, traceback, warnings
# 3.12+ warns on fork() with threads alive: that is the situation under test.
warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
import shardflow

CHILD_DEADLINE = 20.0

def fork_child(fn):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.exit(code)
    deadline = time.monotonic() + CHILD_DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.01)

def expect_fork_error(label, kind, call):
    try:
        call()
    except RuntimeError as exc:
        msg = str(exc)
        ok = kind in msg and "fork()" in msg and "parent" in msg
        print(f"{label}: {'fork error' if ok else 'other RuntimeError: ' + msg}", flush=True)
    except BaseException as exc:
        print(f"{label}: unexpected {type(exc).__name__}: {exc}", flush=True)
    else:
        print(f"{label}: no error", flush=True)
"""


def run(body: str, tmp_path: Path) -> list[str]:
    result = run_script(PRELUDE + body, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_a_child_of_a_process_with_a_live_executor_exits_and_uses_new_ones(
    tmp_path: Path,
) -> None:
    lines = run(
        """
import threading
ex = shardflow.Executor(2)
ex.submit(print, "x").result()
gate = threading.Event()
pending = ex.submit(gate.wait, 30)

print("plain exit", fork_child(lambda: None), flush=True)  # the issue's reproduction

def child():
    expect_fork_error("submit", "Executor", lambda: ex.submit(int))
    expect_fork_error("map", "Executor", lambda: list(ex.map(abs, [1])))
    expect_fork_error("shutdown", "Executor", ex.shutdown)
    expect_fork_error("pending result", "Executor", lambda: pending.result(5))
    with shardflow.Executor(2) as fresh:
        print("fresh", fresh.submit(pow, 2, 5).result(), list(fresh.map(abs, [-1, -2])))

print("child exit", fork_child(child), flush=True)
gate.set()
assert pending.result(30) is True
ex.shutdown()
print("parent ok", flush=True)
""",
        tmp_path,
    )
    assert "plain exit 0" in lines
    for label in ("submit", "map", "shutdown", "pending result"):
        assert f"{label}: fork error" in lines, lines
    assert "fresh 32 [1, 2]" in lines
    assert "child exit 0" in lines
    assert "parent ok" in lines


def test_a_busy_executor_survives_process_pools_with_fork_started_repeatedly(
    tmp_path: Path,
) -> None:
    # CPython's test_hang_global_shutdown_lock, smaller: an executor busy resubmitting
    # work while ProcessPoolExecutor(mp_context=fork) starts and stops; each of its
    # forked workers must get through interpreter exit.
    lines = run(
        """
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

stop = False
def resubmit(pool):
    if not stop:
        pool.submit(resubmit, pool)

with shardflow.Executor(1) as ex:
    ex.submit(resubmit, ex)
    ctx = multiprocessing.get_context("fork")
    for i in range(20):
        with ProcessPoolExecutor(1, mp_context=ctx) as workers:
            assert workers.submit(pow, 3, i).result(20) == 3 ** i
    stop = True
print("done", flush=True)
""",
        tmp_path,
    )
    assert "done" in lines


def test_multiprocessing_pool_with_fork_and_live_shardflow_objects(tmp_path: Path) -> None:
    lines = run(
        """
import multiprocessing

ex = shardflow.Executor(2)
pool = shardflow.ShardedPool(lambda item: None, workers=2)
bp = shardflow.BatchProcessor(lambda batch: None, batch_size=4, batch_timeout=0.05)
ex.submit(int).result()

def work(x):
    # In the forked worker: the inherited objects refuse, new ones work.
    try:
        ex.submit(int)
    except RuntimeError as exc:
        assert "Executor" in str(exc) and "fork()" in str(exc), exc
    else:
        raise AssertionError("the inherited executor accepted a call")
    with shardflow.Executor(2) as fresh:
        return sum(fresh.map(abs, range(-x, x)))

with multiprocessing.get_context("fork").Pool(2) as mp:
    got = mp.map(work, range(8))
    mp.close()
    mp.join()
print("results", got, flush=True)
ex.shutdown()
pool.shutdown()
bp.shutdown()
print("parent ok", flush=True)
""",
        tmp_path,
    )
    expected = [sum(abs(i) for i in range(-x, x)) for x in range(8)]
    assert f"results {expected}" in lines
    assert "parent ok" in lines


def test_pools_and_batch_processors_name_themselves_in_the_fork_error(tmp_path: Path) -> None:
    lines = run(
        """
seen = []
pool = shardflow.ShardedPool(seen.append, workers=2)
bp = shardflow.BatchProcessor(seen.extend, batch_size=4, batch_timeout=60)
pool.submit_many(range(10))
bp.put_many(range(3))  # a partial batch waits in the worker

def child():
    expect_fork_error("pool submit", "ShardedPool", lambda: pool.submit(1))
    expect_fork_error("pool join", "ShardedPool", lambda: pool.join(1))
    expect_fork_error("bp put", "BatchProcessor", lambda: bp.put(1))
    expect_fork_error("bp flush", "BatchProcessor", lambda: bp.flush(1))
    with shardflow.ShardedPool(lambda x: None, workers=2) as fresh:
        print("fresh pool", fresh.submit_many(range(100)), flush=True)

print("child exit", fork_child(child), flush=True)
pool.shutdown()
bp.shutdown()
print("parent handled", len(seen), flush=True)
""",
        tmp_path,
    )
    for label in ("pool submit", "pool join", "bp put", "bp flush"):
        assert f"{label}: fork error" in lines, lines
    assert "fresh pool 100" in lines
    assert "child exit 0" in lines
    assert "parent handled 13" in lines


def test_a_pipeline_started_before_fork_refuses_in_the_child(tmp_path: Path) -> None:
    lines = run(
        """
import threading
gate = threading.Event()

def slow(x):
    if x:
        gate.wait(30)  # the parent's stage is busy at the fork
    return x

p = shardflow.Pipeline(range(100), source_chunk=1).map(slow, batch_size=1)
it = iter(p)
assert next(it) == 0  # started: its stage and feeder threads run
unstarted = shardflow.Pipeline(range(5)).map(lambda x: x * 2)

def child():
    expect_fork_error("next", "Pipeline", lambda: next(it))
    expect_fork_error("run", "Pipeline", p.run)
    print("unstarted", sorted(unstarted), flush=True)  # built, not started: runs here
    print("fresh", sorted(shardflow.Pipeline(range(3)).map(lambda x: -x)), flush=True)

print("child exit", fork_child(child), flush=True)
gate.set()
print("parent got", 1 + len(list(it)), flush=True)
""",
        tmp_path,
    )
    assert "next: fork error" in lines, lines
    assert "run: fork error" in lines, lines
    assert "unstarted [0, 2, 4, 6, 8]" in lines
    assert "fresh [-2, -1, 0]" in lines
    assert "child exit 0" in lines
    assert "parent got 100" in lines


def test_a_progress_display_started_before_fork_refuses_in_the_child(tmp_path: Path) -> None:
    lines = run(
        """
import io
from shardflow.cli.progress import Progress, Snapshot

shown = Progress(lambda: Snapshot(done=1), total=10, stream=io.StringIO(), style="plain",
                 interval=0.01).start()

def child():
    expect_fork_error("stop", "Progress", shown.stop)
    expect_fork_error("start", "Progress", shown.start)
    out = io.StringIO()
    with Progress(lambda: Snapshot(done=10), total=10, stream=out, style="plain"):
        pass
    print("fresh", "10/10" in out.getvalue(), flush=True)

print("child exit", fork_child(child), flush=True)
shown.stop()
print("parent ok", flush=True)
""",
        tmp_path,
    )
    assert "stop: fork error" in lines, lines
    assert "start: fork error" in lines, lines
    assert "fresh True" in lines
    assert "child exit 0" in lines
    assert "parent ok" in lines


@pytest.mark.parametrize("fair", [False, True])
def test_a_limiter_made_before_fork_refuses_in_the_child(tmp_path: Path, fair: bool) -> None:
    lines = run(
        f"""
import threading
limiter = shardflow.Limiter(1, fair={fair})
held = threading.Event()
release = threading.Event()

def holder():
    with limiter:
        held.set()
        release.wait(30)

t = threading.Thread(target=holder)
t.start()
assert held.wait(30)

def child():
    # The permit's holder is a parent thread: waiting for it would never end.
    expect_fork_error("acquire", "Limiter", lambda: limiter.acquire(timeout=5))
    expect_fork_error("try_acquire", "Limiter", limiter.try_acquire)
    expect_fork_error("with", "Limiter", lambda: limiter.__enter__())
    expect_fork_error("release", "Limiter", limiter.release)
    fresh = shardflow.Limiter(1, fair={fair})
    with fresh:
        print("fresh in use", fresh.in_use, flush=True)

print("child exit", fork_child(child), flush=True)
release.set()
t.join()
assert limiter.acquire(timeout=5)
limiter.release()
print("parent ok", flush=True)
""",
        tmp_path,
    )
    for label in ("acquire", "try_acquire", "with", "release"):
        assert f"{label}: fork error" in lines, lines
    assert "fresh in use 1" in lines
    assert "child exit 0" in lines
    assert "parent ok" in lines
