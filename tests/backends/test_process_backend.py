"""backend="process": the pool's handler in a worker process per shard (backends/process.py).

Behaviour, not timing: per-key order, exact accounting, per-item failures, crashes (a
worker that exits, is SIGKILLed, overruns task_timeout), unpicklable handlers, items and
exceptions, shutdown with cancel, nothing left behind (processes, /dev/shm).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import proc_handlers as ph
import pytest

import shardflow
from helpers import interrupt, wait_until
from shardflow.backends import ProcessBackend
from shardflow.backends.process import RemoteError, WorkerLost

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the process backend is tested on Linux here"
)


def accounted(pool: shardflow.ShardedPool[Any]) -> Any:
    m = pool.metrics()
    assert m.submitted == m.processed + m.failed + m.dead_lettered + m.dropped + m.returned
    return m


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def test_items_run_in_worker_processes_with_per_key_order(tmp_path: Path) -> None:
    before = shm_entries()
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path)), workers=2, key=lambda x: x % 10, backend="process"
    )
    pids = pool._runner.worker_pids()  # type: ignore[attr-defined]
    assert len(pids) == 2 and os.getpid() not in pids
    assert "backend=process(forkserver)" in repr(pool)
    assert pool.submit_many(range(2000)) == 2000
    pool.shutdown()
    m = accounted(pool)
    assert (m.submitted, m.processed, m.failed) == (2000, 2000, 0)
    records = ph.read_records(str(tmp_path))
    assert sorted(int(r[2]) for r in records) == list(range(2000))
    assert {r[1] for r in records} <= set(pids)
    for k in range(10):
        seq = [int(r[2]) for r in records if int(r[2]) % 10 == k]
        assert seq == sorted(seq), f"key {k} out of order"
    for pid in pids:  # workers exited at shutdown
        assert not alive(pid)
    assert shm_entries() <= before


def test_per_item_failures_are_routed_alone_with_their_exceptions(tmp_path: Path) -> None:
    dead: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), fail_on=frozenset({3, 500})),
        workers=2,
        backend="process",
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pool.submit_many(range(1000))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.dead_lettered) == (998, 2)
    assert sorted(i for i, _ in dead) == [3, 500]
    assert all(isinstance(e, ValueError) and str(e) == f"bad item {i!r}" for i, e in dead)


def test_an_exception_that_cannot_be_pickled_comes_back_as_remote_error() -> None:
    errors: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.raise_unsendable,
        workers=1,
        backend="process",
        on_error=lambda item, exc: errors.append((item, exc)),
    )
    pool.submit_many([1, 2])
    pool.shutdown()
    assert [i for i, _ in errors] == [1, 2]
    for _, exc in errors:
        assert isinstance(exc, RemoteError)
        assert "Unsendable: 1/lock" in str(exc) or "Unsendable: 2/lock" in str(exc)
        assert "remote traceback" in str(exc)
    assert accounted(pool).failed == 2


def test_an_item_that_cannot_be_pickled_fails_alone_naming_its_type(tmp_path: Path) -> None:
    errors: list[tuple[Any, BaseException]] = []
    lock = threading.Lock()
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path)),
        workers=1,
        backend="process",
        on_error=lambda item, exc: errors.append((item, exc)),
    )
    pool.submit_many([1, lock, 2])
    pool.shutdown()
    assert len(errors) == 1 and errors[0][0] is lock
    assert isinstance(errors[0][1], TypeError) and "lock" in str(errors[0][1])
    assert sorted(r[2] for r in ph.read_records(str(tmp_path))) == ["1", "2"]
    m = accounted(pool)
    assert (m.processed, m.failed) == (2, 1)


def test_a_handler_that_cannot_be_pickled_is_refused_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # as if it were not installed
    with pytest.raises(TypeError, match=r"cannot be pickled.*module-level function.*cloudpickle"):
        shardflow.ShardedPool(lambda x: None, workers=1, backend="process")


def test_a_handler_neither_pickle_nor_cloudpickle_can_send_is_refused() -> None:
    pytest.importorskip("cloudpickle")
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"by reference .* nor by value with cloudpickle"):
        shardflow.ShardedPool(lambda x: lock, workers=1, backend="process")


def test_lambdas_and_closures_travel_by_value_with_cloudpickle() -> None:
    pytest.importorskip("cloudpickle")
    offset = 1000
    got: list[tuple[int, int]] = []
    with shardflow.ShardedPool(
        lambda x: x + offset,
        workers=2,
        backend="process",
        on_results=lambda xs, vs: got.extend(zip(xs, vs, strict=True)),
    ) as pool:
        pool.submit_many(range(100))
    assert sorted(got) == [(x, x + 1000) for x in range(100)]


def test_a_worker_that_cannot_load_the_handler_fails_the_constructor() -> None:
    with pytest.raises(RuntimeError, match=r"could not load the handler.*cannot be loaded"):
        shardflow.ShardedPool(ph.LoadsOnlyHere(), workers=2, backend="process")


def test_retry_is_refused_rather_than_run_out_of_order() -> None:
    # breaker, limiter and rate_limiter stay in this process (test_driver_guards.py).
    with pytest.raises(ValueError, match="retry= is not supported with backend="):
        shardflow.ShardedPool(ph.noop, workers=1, backend="process", retry=shardflow.Retry(2))


def test_a_poison_item_that_kills_its_worker_is_retried_then_dead_lettered(
    tmp_path: Path,
) -> None:
    dead: list[tuple[Any, BaseException]] = []
    backend = ProcessBackend(max_attempts=3)
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), exit_on=frozenset({77})),
        workers=2,
        key=lambda x: x % 4,
        backend=backend,
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pool.submit_many(range(400))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.dead_lettered, m.failed) == (399, 1, 0)
    ((item, exc),) = dead
    assert item == 77 and isinstance(exc, WorkerLost)
    assert exc.attempts == 3 and exc.exitcode == 7 and "exit code 7" in str(exc)
    records = ph.read_records(str(tmp_path))
    assert sorted(int(r[2]) for r in records) == [x for x in range(400) if x != 77]
    for k in range(4):
        seq = [int(r[2]) for r in records if int(r[2]) % 4 == k]
        assert seq == sorted(seq)


def test_workers_sigkilled_at_random_moments_lose_nothing_and_keep_key_order(
    tmp_path: Path,
) -> None:
    n = 20_000
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path)),
        workers=2,
        key=lambda x: x % 16,
        backend=ProcessBackend(max_attempts=5, max_crashes=1000),
        capacity=1024,
    )
    rng = random.Random(7)
    kills = 0
    chunk = n // 8
    for start in range(0, n, chunk):
        # Up to 2 x 1,024 items are queued when submit_many returns, and a batch is in
        # flight: the kill lands mid-run, at a moment the test does not choose.
        pool.submit_many(range(start, start + chunk))
        time.sleep(rng.uniform(0, 0.01))
        for _ in range(1000):
            pids = pool._runner.worker_pids()  # type: ignore[attr-defined]
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)  # one of this pool's own workers
                break
            except (IndexError, ProcessLookupError):
                # Both being replaced, or the chosen one just died of an earlier kill
                # (a race between listing and killing): pick again.
                time.sleep(0.005)
        kills += 1
    pool.shutdown()
    m = accounted(pool)
    records = ph.read_records(str(tmp_path))
    handled = [int(r[2]) for r in records]
    # Nothing lost; an item running at a kill may have run twice (at-least-once).
    assert kills == 8
    assert set(handled) == set(range(n))
    assert m.submitted == n and m.processed + m.dead_lettered == n
    for k in range(16):
        seq = [x for x in handled if x % 16 == k]
        assert seq == sorted(seq), f"key {k} out of order"


def test_task_timeout_kills_an_overrunning_worker_and_fails_the_item(tmp_path: Path) -> None:
    dead: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), sleep_on=frozenset({5}), sleep=60.0),
        workers=1,
        backend=ProcessBackend(task_timeout=0.3, max_attempts=1),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    t0 = time.monotonic()
    pool.submit_many(range(10))
    pool.shutdown()
    assert time.monotonic() - t0 < 30  # not the 60 s sleep
    ((item, exc),) = dead
    assert item == 5 and isinstance(exc, WorkerLost) and "task_timeout=0.3" in str(exc)
    assert sorted(int(r[2]) for r in ph.read_records(str(tmp_path))) == [
        0,
        1,
        2,
        3,
        4,
        6,
        7,
        8,
        9,
    ]
    accounted(pool)


def test_shutdown_with_cancel_returns_what_did_not_start(tmp_path: Path) -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), sleep_on=frozenset({0}), sleep=0.5),
        workers=1,
        backend="process",
    )
    # More than the window holds (8 batches of 256), so that some are still queued.
    pool.submit_many(range(5000))
    time.sleep(0.1)
    returned = pool.shutdown(cancel=True)
    m = accounted(pool)
    ran = {int(r[2]) for r in ph.read_records(str(tmp_path))}
    assert ran.isdisjoint(returned)
    assert ran | set(returned) == set(range(5000))
    assert m.returned == len(returned) > 0


def test_a_batch_handler_gets_lists_in_the_worker() -> None:
    errors: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.batch_sum,
        workers=1,
        batch_size=10,
        backend="process",
        on_error=lambda batch, exc: errors.append((list(batch), exc)),
    )
    pool.submit_many(range(100))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.failed) == (90, 10)
    ((batch, exc),) = errors
    assert batch == list(range(10, 20)) and str(exc) == "13 in batch"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_start_methods(method: str, tmp_path: Path) -> None:
    backend = ProcessBackend(mp_context=multiprocessing.get_context(method))
    with shardflow.ShardedPool(ph.Recorder(str(tmp_path)), workers=2, backend=backend) as pool:
        pool.submit_many(range(100))
    assert len(ph.read_records(str(tmp_path))) == 100
    assert f"process({method})" in repr(pool)


def test_fork_is_refused_while_other_threads_run() -> None:
    gate = threading.Event()
    t = threading.Thread(target=gate.wait)
    t.start()
    try:
        backend = ProcessBackend(mp_context=multiprocessing.get_context("fork"))
        with pytest.raises(ValueError, match="'fork' mp_context while this process runs"):
            shardflow.ShardedPool(ph.noop, workers=1, backend=backend)
    finally:
        gate.set()
        t.join()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"ring_bytes": 10}, "ring_bytes"),
        ({"task_timeout": -1}, "task_timeout"),
        ({"mp_context": "spawn"}, "mp_context must be a multiprocessing context"),
        ({"window": 0}, "window"),
        ({"window": 1.5}, "window"),
        ({"spin_us": -1}, r"spin_us must be a number of microseconds in \[0, 10000\]"),
        ({"spin_us": 10_001}, "spin_us"),
        ({"spin_us": float("nan")}, "spin_us"),
        ({"spin_us": "20"}, "spin_us must be a number of microseconds.*got str"),
        ({"spin_us": True}, "spin_us"),
    ],
)
def test_bad_backend_arguments_name_the_parameter(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises((TypeError, ValueError), match=words):
        ProcessBackend(**kwargs)


def test_workers_exit_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import shardflow, proc_handlers as ph
        if __name__ == "__main__":
            pool = shardflow.ShardedPool(ph.noop, workers=2, backend="process")
            print(*pool._runner.worker_pids(), flush=True)
            time.sleep(600)
        """
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()  # the parent this test started, by pid
        proc.wait(30)
        deadline = time.monotonic() + 20
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "worker processes outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_interpreter_exit_with_a_live_pool_hands_everything_over(tmp_path: Path) -> None:
    # As with threads: no shutdown() call, yet every queued item is handled at exit, even
    # though multiprocessing's own exit hook would terminate daemonic workers.
    out = tmp_path / "records"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import shardflow, proc_handlers as ph
        if __name__ == "__main__":
            handler = ph.Recorder({str(out)!r}, sleep_on=frozenset(range(0, 400, 50)), sleep=0.02)
            pool = shardflow.ShardedPool(handler, workers=2, backend="process")
            pool.submit_many(range(400))
            print(pool.metrics().unfinished, flush=True)
        """
    )
    path = tmp_path / "exits.py"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) > 0  # items were still pending when exit began
    assert sorted(int(r[2]) for r in ph.read_records(str(out))) == list(range(400))


def test_a_batch_processor_runs_its_batches_in_a_worker_process(tmp_path: Path) -> None:
    with shardflow.BatchProcessor(
        ph.BatchLog(str(tmp_path)), batch_size=50, batch_timeout=0.05, backend="process"
    ) as bp:
        bp.put_many(range(500))
    (log,) = list(tmp_path.iterdir())
    assert int(log.name) != os.getpid()
    batches = [line.split() for line in log.read_text().splitlines()]
    assert all(len(b) <= 50 for b in batches)
    assert [int(x) for b in batches for x in b] == list(range(500))


def test_ctrl_c_interrupts_a_blocked_submit_and_the_workers_stop(tmp_path: Path) -> None:
    out = tmp_path / "records"
    out.mkdir()
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import shardflow, proc_handlers as ph
if __name__ == "__main__":
    slow = ph.Recorder({str(out)!r}, sleep_on=frozenset(range(1000)), sleep=0.05)
    pool = shardflow.ShardedPool(slow, workers=1, capacity=2, backend="process")
    print(*pool._runner.worker_pids(), flush=True)
    pool.submit_many(range(3))
    print("ready", flush=True)
    pool.submit_many(range(3, 1000))
    print("not interrupted", flush=True)
"""
    pids: list[int] = []

    def ready(stdout: Any) -> None:
        pids.extend(int(p) for p in stdout.readline().split())
        assert stdout.readline().strip() == "ready"

    returncode, rest, err = interrupt([sys.executable, "-c", code], tmp_path, ready)
    assert "not interrupted" not in rest
    assert "KeyboardInterrupt" in err, err
    assert returncode != 0
    # What was queued at the interrupt was handled at exit (as with threads), and the
    # worker is gone.
    handled = sorted(int(r[2]) for r in ph.read_records(str(out)))
    assert handled == list(range(len(handled))) and len(handled) >= 3
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids and not any(alive(p) for p in pids)


def test_max_tasks_per_child_recycles_workers_without_losing_anything(tmp_path: Path) -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path)),
        workers=1,
        key=lambda x: 0,
        backend=ProcessBackend(max_tasks_per_child=100, ship_batch_size=50),
    )
    for start in range(0, 1000, 50):  # batches of at most 50: recycled every 100-149 items
        pool.submit_many(range(start, start + 50))
        pool.flush()
    pool.shutdown()
    records = ph.read_records(str(tmp_path))
    assert [int(r[2]) for r in records] == list(range(1000))  # in order, each once
    pids = {r[1] for r in records}
    assert 6 <= len(pids) <= 10
    m = accounted(pool)
    assert (m.processed, m.failed, m.dead_lettered) == (1000, 0, 0)


def test_a_crash_with_batches_in_flight_reruns_them_in_order(tmp_path: Path) -> None:
    # One shard, batches of 10, up to 4 in flight: when item 55 kills its worker, later
    # batches are already in the dead worker's task ring. The suspect is retried alone
    # (and given up); the rest of its batch and every later batch run once, in order.
    dead: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), exit_on=frozenset({55})),
        workers=1,
        backend=ProcessBackend(window=4, ship_batch_size=10, max_attempts=2),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pool.submit_many(range(200))
    assert pool.flush(timeout=60)
    m = accounted(pool)  # flush waited for every batch in flight: all counted
    assert (m.processed, m.dead_lettered, m.failed) == (199, 1, 0)
    pool.shutdown()
    ((item, exc),) = dead
    assert item == 55 and isinstance(exc, WorkerLost) and exc.attempts == 2
    handled = [int(r[2]) for r in ph.read_records(str(tmp_path))]
    assert handled == [x for x in range(200) if x != 55]


def test_a_worker_killed_between_batches_is_replaced_and_blames_no_item(
    tmp_path: Path,
) -> None:
    dead: list[Any] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path)),
        workers=1,
        backend=ProcessBackend(max_attempts=1),
        dead_letter=lambda item, exc: dead.append(item),
    )
    pool.submit_many(range(10))
    assert pool.flush(timeout=60)
    (pid,) = pool._runner.worker_pids()  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGKILL)  # this pool's own idle worker
    deadline = time.monotonic() + 30
    while pool._runner.worker_pids() in ([], [pid]):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the idle worker was not replaced"
        time.sleep(0.01)
    pool.submit_many(range(10, 20))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.dead_lettered, m.failed) == (20, 0, 0) and dead == []
    assert sorted(int(r[2]) for r in ph.read_records(str(tmp_path))) == list(range(20))


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_ending_the_workers_returns_queued_items_and_fails_unfinished_ones(
    method: str, tmp_path: Path
) -> None:
    dead: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), sleep_on=frozenset(range(1000)), sleep=0.01),
        workers=2,
        backend=ProcessBackend(ship_batch_size=5, window=2),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pids = pool._runner.worker_pids()  # type: ignore[attr-defined]
    pool.submit_many(range(400))
    time.sleep(0.3)  # the workers are mid-batch, with a second batch each in flight
    t0 = time.monotonic()
    returned = getattr(pool, method)()
    assert time.monotonic() - t0 < 30  # not the 4 s the queued items would take
    m = accounted(pool)
    ran = [int(r[2]) for r in ph.read_records(str(tmp_path))]
    failed = [item for item, _ in dead]
    assert m.returned == len(returned) > 0 and m.dead_lettered == len(failed) > 0
    assert m.submitted == 400 and m.failed == 0
    assert set(ran) | set(returned) | set(failed) == set(range(400))  # nothing lost
    assert set(returned).isdisjoint(ran) and set(returned).isdisjoint(failed)
    assert m.processed <= len(ran)
    for _, exc in dead:
        assert isinstance(exc, WorkerLost) and exc.attempts == 0 and method in str(exc)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert pool.shutdown() == []  # already shut down: nothing more


def test_ending_workers_needs_the_process_backend() -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(ph.noop, workers=1)
    try:
        with pytest.raises(TypeError, match=r"terminate_workers.*backend='process'"):
            pool.terminate_workers()
        with pytest.raises(TypeError, match=r"kill_workers.*backend='process'"):
            pool.kill_workers()
    finally:
        pool.shutdown()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_collector_breaks_its_shard_instead_of_hanging() -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(ph.noop, workers=1, backend="process")
    runner = pool._runner  # type: ignore[attr-defined]
    real = runner._settle
    calls: list[int] = []

    def settle_once_failing(*args: Any) -> None:
        if not calls:  # a stand-in for a bug in the collector's path
            calls.append(1)
            raise RuntimeError("settle failed")
        real(*args)

    runner._settle = settle_once_failing
    pool.submit_many(range(10))
    assert pool.flush(timeout=30)  # nothing waits forever for a batch nobody collects
    pool.submit_many(range(10, 20))
    pool.shutdown()
    m = accounted(pool)
    assert m.submitted == 20 and m.processed + m.failed == 20 and m.failed > 0


# ---------------------------------------------------------------- the direct ship
# A per-item process pool ships an item into an idle shard's task ring from the submitting
# thread itself (ProcessBackend's direct_ship), without waking the shard's dispatch thread.


def count_direct(pool: shardflow.ShardedPool[Any]) -> list[int]:
    """Wrap the runner's direct-ship counter: the returned list gets one shard index per
    item shipped directly."""
    runner: Any = pool._runner  # type: ignore[attr-defined]
    shipped: list[int] = []
    inner = runner.count_direct
    assert inner is not None, "the pool did not enable the direct ship"

    def counting(index: int) -> None:
        shipped.append(index)
        inner(index)

    runner.count_direct = counting
    return shipped


def test_direct_ships_and_ring_batches_keep_per_key_order(tmp_path: Path) -> None:
    # Bursts after an idle pool: the first item of each burst finds its shard idle and
    # goes directly; it sleeps, so the rest of the burst finds a batch in flight and
    # takes the ring. Per key, the worker must see submission order across both paths.
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), sleep_on=frozenset(range(0, 300, 10)), sleep=0.02),
        workers=2,
        key=lambda x: x % 3,
        backend="process",
    )
    shipped = count_direct(pool)
    for burst in range(30):
        assert pool.flush(timeout=60)  # idle again: nothing queued, nothing in flight
        for x in range(burst * 10, burst * 10 + 10):
            assert pool.submit(x)
    pool.shutdown()
    m = accounted(pool)
    assert (m.submitted, m.processed, m.failed) == (300, 300, 0)
    assert 0 < len(shipped) < 300  # both paths were taken
    records = ph.read_records(str(tmp_path))
    assert sorted(int(r[2]) for r in records) == list(range(300))
    for k in range(3):
        seq = [int(r[2]) for r in records if int(r[2]) % 3 == k]
        assert seq == sorted(seq)


def test_direct_ship_values_reach_on_results() -> None:
    got: list[tuple[list[Any], list[Any]]] = []
    done = threading.Event()

    def on_results(items: list[Any], values: list[Any]) -> None:
        got.append((items, values))
        done.set()

    failed: list[int] = []

    def on_error(item: Any, exc: BaseException) -> None:
        failed.append(item)
        done.set()

    # ph.square raises for x % 7 == 3: those come back as failures, the rest as values.
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.square, workers=2, backend="process", on_results=on_results, on_error=on_error
    )
    shipped = count_direct(pool)
    for x in range(20):
        done.clear()
        pool.submit(x)
        assert done.wait(60)
    pool.shutdown()
    m = accounted(pool)
    assert failed == [3, 10, 17] and m.failed == 3
    ok = [(x, v) for items, values in got for x, v in zip(items, values, strict=True)]
    assert sorted(x for x, _ in ok if x not in failed) == [x for x in range(20) if x % 7 != 3]
    assert all(v == x * x for x, v in ok if x not in failed)
    assert shipped  # one item at a time into an idle pool: the direct path


def test_a_direct_item_that_kills_its_worker_is_retried_then_dead_lettered(
    tmp_path: Path,
) -> None:
    dead: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), exit_on=frozenset({77})),
        workers=1,
        key=lambda x: x,
        backend=ProcessBackend(max_attempts=2),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    shipped = count_direct(pool)
    for x in (76, 77, 78, 79):  # one at a time: each finds the shard idle
        assert pool.submit(x)
        assert pool.flush(timeout=60)
    pool.shutdown()
    m = accounted(pool)
    assert (m.submitted, m.processed, m.dead_lettered, m.failed) == (4, 3, 1, 0)
    ((item, exc),) = dead
    assert item == 77 and isinstance(exc, WorkerLost) and exc.attempts == 2
    assert [int(r[2]) for r in ph.read_records(str(tmp_path))] == [76, 78, 79]
    assert shipped  # the crash path was reached from a direct ship at least once


def test_shutdown_while_a_direct_ship_is_in_flight_loses_nothing(tmp_path: Path) -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), sleep_on=frozenset({1}), sleep=0.3),
        workers=1,
        backend="process",
    )
    shipped = count_direct(pool)
    assert pool.submit(1)
    # In flight (shipped, not finished): not queued, so nothing to return; it completes.
    returned = pool.shutdown(cancel=True)
    m = accounted(pool)
    assert returned == [] or returned == [1]
    ran = [int(r[2]) for r in ph.read_records(str(tmp_path))]
    assert ran == ([] if returned else [1])
    assert m.processed == len(ran) and m.returned == len(returned)
    assert shipped == [0] or returned  # the direct path, unless the lock was busy


def test_submits_racing_close_are_each_run_or_refused(tmp_path: Path) -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path)), workers=2, key=lambda x: x % 5, backend="process"
    )
    accepted: list[int] = []
    refused: list[int] = []
    start = threading.Barrier(4)

    def producer(base: int) -> None:
        start.wait()
        for x in range(base, base + 200):
            try:
                pool.submit(x)
            except shardflow.Closed:
                refused.append(x)
            else:
                accepted.append(x)
            if x % 7 == 0:
                time.sleep(0.0005)  # let the shards go idle now and then (direct ships)

    threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(3)]
    for t in threads:
        t.start()
    start.wait()
    time.sleep(0.02)
    pool.close()
    for t in threads:
        t.join()
    pool.join()
    m = accounted(pool)
    assert m.submitted == len(accepted) and m.processed == len(accepted)
    assert sorted(int(r[2]) for r in ph.read_records(str(tmp_path))) == sorted(accepted)
    assert len(accepted) + len(refused) == 600


_SETTLED = threading.Event()
_PICKLED_AFTER_SETTLE: list[bool] = []


class _WaitsToPickle:
    """Pickles as its int, but only once batch 0 was settled (``_SETTLED``; gives up
    after 30 s): pickling a batch must not hold the lock the collector settles with."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        _PICKLED_AFTER_SETTLE.append(_SETTLED.wait(30))
        return (int, (self.n,))


def test_a_batch_being_pickled_does_not_block_settling_the_batches_in_flight() -> None:
    # The dispatch thread pickles batch 1 while batch 0 runs; batch 1's pickling waits
    # for batch 0's on_results, which the collector calls. With the pickling under the
    # shard's lock, the collector could not settle batch 0: a 30 s stall, then the
    # record below says False.
    _SETTLED.clear()
    _PICKLED_AFTER_SETTLE.clear()
    values: list[tuple[Any, Any]] = []

    def on_results(items: list[Any], vals: list[Any]) -> None:
        values.extend(zip(items, vals, strict=True))
        if any(item == 0 for item in items):
            _SETTLED.set()

    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
        ph.slow_zero,
        workers=1,
        backend=ProcessBackend(ship_batch_size=1),
        on_results=on_results,
    )
    slow = _WaitsToPickle(1)
    pool.submit_many([0, slow, 2])
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.failed) == (3, 0)
    assert _PICKLED_AFTER_SETTLE and all(_PICKLED_AFTER_SETTLE)
    assert sorted((v for _, v in values)) == [0, 1, 2]  # order kept, nothing lost
    assert [item for item, _ in values] == [0, slow, 2]


@pytest.mark.parametrize("spin_us", [0, 20, 2000])
def test_every_spin_window_delivers_every_item_in_key_order(spin_us: int, tmp_path: Path) -> None:
    # 0: every wait parks at once; 2000: waits poll up to 2 ms first. Idle single items
    # (the direct ship) and bursts (the ring path) alike.
    values: list[tuple[int, int]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.square,
        workers=2,
        key=lambda x: x % 5,
        backend=ProcessBackend(spin_us=spin_us),
        on_results=lambda items, got: values.extend(zip(items, got, strict=True)),
        on_error=lambda item, exc: None,
    )
    assert pool.backend.spin_us == spin_us  # type: ignore[attr-defined]
    for x in range(40):
        pool.submit(x)
        assert pool.flush(timeout=60)
    assert pool.submit_many(range(40, 1000)) == 960
    pool.shutdown()
    m = accounted(pool)
    failing = [x for x in range(1000) if x % 7 == 3]  # ph.square raises for those
    assert (m.submitted, m.processed, m.failed) == (1000, 1000 - len(failing), len(failing))
    assert sorted(x for x, _ in values) == [x for x in range(1000) if x % 7 != 3]
    assert all(v == x * x for x, v in values)
    for k in range(5):  # on_results sees each key's items in submission order
        seq = [x for x, _ in values if x % 5 == k]
        assert seq == sorted(seq)


def test_an_idle_pool_stops_polling_and_parks_after_its_spin_window() -> None:
    # A 5 ms spin: after the last item every worker (on its task ring) and every
    # collector thread (on its result ring) must end up parked on the futex, not polling.
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.noop, workers=2, backend=ProcessBackend(spin_us=5000)
    )
    try:
        assert pool.submit_many(range(500)) == 500
        assert pool.flush(timeout=60)
        runner: Any = pool._runner  # type: ignore[attr-defined]
        rings = [r for s in runner.shards for r in (s.worker.tasks, s.worker.results)]
        deadline = time.monotonic() + 60
        while not all(r.reader_parked for r in rings):
            assert time.monotonic() < deadline, [r.reader_parked for r in rings]
            time.sleep(0.005)
        assert pool.submit_many(range(10)) == 10  # parked workers still take work
        assert pool.flush(timeout=60)
    finally:
        pool.shutdown()
    assert accounted(pool).processed == 510


def test_a_dispatch_thread_steals_only_once_its_worker_runs_low(tmp_path: Path) -> None:
    # Stealing among the staging rings stays on for unkeyed (and keyed, unordered) process
    # pools, but a dispatch thread with batches queued at its worker must not take
    # another shard's backlog: it would wait there while the victim's worker runs dry.
    # Key k goes to shard k (hash(k) % 2). Shard 1's worker is held with 3 batches in
    # flight (its window of 4 has room); shard 0's worker is held with a full window and
    # a backlog in its staging ring. Only when shard 1's worker runs low may it steal.
    handler = ph.HoldUntilOpen(str(tmp_path))
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
        handler,
        workers=2,
        key=lambda item: item[0],
        ordered=False,
        backend=ProcessBackend(ship_batch_size=1, window=4),
    )
    try:
        assert pool.steal is True
        shards = pool._runner.shards  # type: ignore[attr-defined]
        # Set-up only: idle shard 0 would (rightly) steal shard 1's held items while they
        # are queued; close its gate until its own first ship reopens it (_regate).
        pool._gate_steal(0, True)
        shards[0].gated = True
        for n in range(3):
            pool.submit((1, n, True))
        assert wait_until(lambda: len(shards[1].inflight) == 3)
        backlog = [(0, n, n == 0) for n in range(200)]
        assert pool.submit_many(backlog) == len(backlog)
        assert wait_until(lambda: len(shards[0].inflight) == 4)
        # Give shard 1 every chance to (wrongly) steal while its worker is busy.
        assert not wait_until(lambda: pool.metrics().shards[1].stolen_in > 0, timeout=0.3)
        (tmp_path / "open-1").touch()  # shard 1's worker runs dry: now it steals
        assert wait_until(lambda: pool.metrics().shards[1].stolen_in >= 150)
        (tmp_path / "open-0").touch()
    finally:
        (tmp_path / "open-0").touch()
        (tmp_path / "open-1").touch()
        pool.shutdown()
    m = accounted(pool)
    assert (m.submitted, m.processed) == (203, 203)
    assert m.shards[1].stolen_in == m.shards[0].stolen_out
    for s in m.shards:
        assert s.submitted + s.stolen_in - s.stolen_out == s.processed
    records = ph.read_records(str(tmp_path))
    assert sorted(item for _, _, item in records) == sorted(
        repr(item) for item in backlog + [(1, n, True) for n in range(3)]
    )  # each exactly once
    pid_1 = next(pid for _, pid, item in records if item == repr((1, 0, True)))
    stolen = [item for _, pid, item in records if pid == pid_1 and item.startswith("(0,")]
    assert len(stolen) == m.shards[1].stolen_in


def test_the_default_window_is_8_batches_for_pools_and_4_for_executors() -> None:
    # An Executor's calls in flight can no longer be cancelled: it keeps the shallower
    # window unless the user asks for one.
    from shardflow.backends.process import DEFAULT_WINDOW, EXECUTOR_WINDOW

    assert (DEFAULT_WINDOW, EXECUTOR_WINDOW) == (8, 4)
    assert ProcessBackend().window is None
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(ph.noop, workers=1, backend="process")
    try:
        assert pool._runner.window == DEFAULT_WINDOW  # type: ignore[attr-defined]
    finally:
        pool.shutdown()
    for backend, window in (("process", EXECUTOR_WINDOW), (ProcessBackend(window=6), 6)):
        with shardflow.Executor(1, backend=backend) as ex:
            assert ex.submit(ph.square, 4).result(timeout=60) == 16
            assert ex._pool._runner.inner.window == window  # type: ignore[attr-defined]
