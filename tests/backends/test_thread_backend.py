"""The backend seam (shardflow/backends): names, the thread backend, and the order in
which a pool drives a runner (base.py's contract)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import shardflow
from shardflow.backends import (
    BACKENDS,
    Backend,
    BatchOutcome,
    ShardRunner,
    ThreadBackend,
    resolve_backend,
)
from shardflow.backends.base import Handler


def test_thread_is_the_default_and_a_registered_name() -> None:
    pool = shardflow.ShardedPool(lambda x: None, workers=2)
    try:
        assert isinstance(pool.backend, ThreadBackend)
        assert "backend=" not in repr(pool)  # the default says nothing
    finally:
        pool.shutdown()
    assert BACKENDS["thread"] == "shardflow.backends.thread:ThreadBackend"
    assert isinstance(resolve_backend("thread"), ThreadBackend)


def test_a_backend_instance_is_used_as_given() -> None:
    backend = ThreadBackend()
    seen: list[int] = []
    with shardflow.ShardedPool(seen.append, workers=2, backend=backend) as pool:
        assert pool.backend is backend
        pool.submit_many(range(100))
    assert sorted(seen) == list(range(100))


@pytest.mark.parametrize(
    ("value", "exc", "words"),
    [
        ("threads", ValueError, ["backend must be one of 'thread', 'process', 'ray'", "'threads'"]),
        ("", ValueError, ["backend must be one of", "''"]),
        (3, TypeError, ["backend must be a str", "int 3"]),
        (ThreadBackend, TypeError, ["the class ThreadBackend", "pass ThreadBackend()"]),
    ],
)
def test_a_bad_backend_is_refused_naming_the_parameter(
    value: Any, exc: type[Exception], words: list[str]
) -> None:
    with pytest.raises(exc) as info:
        shardflow.ShardedPool(print, workers=1, backend=value)
    for word in words:
        assert word in str(info.value)


class _Recording(ShardRunner):
    """Runs shards in threads like the thread backend, and records the calls it gets."""

    def __init__(self, log: list[str], workers: int) -> None:
        self.log = log
        self.workers = workers
        self.threads: list[threading.Thread] = []

    def wrap(self, handler: Handler, *, per_item: bool) -> Handler:
        self.log.append(f"wrap per_item={per_item}")

        def wrapped(item: Any) -> object:
            return handler(item * 10)

        return wrapped

    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        self.log.append("start")
        for i in range(self.workers):
            starting()
            t = threading.Thread(target=run_shard, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def join(self) -> None:
        self.log.append("join")
        for t in self.threads:
            t.join()

    def describe(self) -> str:
        return "recording"


class _RecordingBackend(Backend):
    name = "recording"

    def __init__(self) -> None:
        self.log: list[str] = []

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        self.log.append(f"runner {pool_name} {workers}")
        return _Recording(self.log, workers)


def test_a_custom_backend_is_driven_in_the_documented_order() -> None:
    backend = _RecordingBackend()
    seen: list[int] = []
    lock = threading.Lock()

    def handle(x: int) -> None:
        with lock:
            seen.append(x)

    pool = shardflow.ShardedPool(handle, workers=3, name="custom", backend=backend)
    assert "backend=recording" in repr(pool)
    assert pool.submit_many(range(50)) == 50
    pool.shutdown()
    # The runner's wrap() is what the shard loops call.
    assert sorted(seen) == [x * 10 for x in range(50)]
    assert backend.log == ["runner custom 3", "wrap per_item=True", "start", "join"]
    m = pool.metrics()
    assert (m.submitted, m.processed) == (50, 50)


class _FailingStart(_Recording):
    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        # One shard starts, the second fails to: the runner reports it as the contract says.
        starting()
        t = threading.Thread(target=run_shard, args=(0,), daemon=True)
        t.start()
        self.threads.append(t)
        starting()
        start_failed()
        raise RuntimeError("cannot start shard 1")


class _FailingBackend(_RecordingBackend):
    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        return _FailingStart(self.log, workers)


def test_a_runner_that_cannot_start_fails_the_constructor_without_hanging() -> None:
    backend = _FailingBackend()
    with pytest.raises(RuntimeError, match="cannot start shard 1"):
        shardflow.ShardedPool(print, workers=2, backend=backend)
    # The pool shut itself down and joined the runner (which waited for shard 0's loop).
    assert backend.log[-1] == "join"


class _Shipping(_Recording):
    """A runner that ships lists even for per-item pools and runs the handler per item
    "over there", reporting per-item failures with a BatchOutcome (as remote backends do)."""

    def __init__(self, log: list[str], workers: int, bad_outcome: bool = False) -> None:
        super().__init__(log, workers)
        self.bad_outcome = bad_outcome

    def batch_shape(
        self, batch_size: int, batch_timeout: float | None, lists: bool
    ) -> tuple[int, float | None, bool]:
        return 64, None, True

    def wrap(self, handler: Handler, *, per_item: bool) -> Handler:
        assert per_item

        def run_batch(batch: list[Any]) -> object:
            self.log.append(f"batch {len(batch)}")
            if self.bad_outcome:
                return BatchOutcome([(len(batch), ValueError("past the end"))])
            failures = []
            for i, item in enumerate(batch):
                try:
                    handler(item)
                except Exception as exc:
                    failures.append((i, exc))
            return BatchOutcome(failures) if failures else None

        return run_batch


class _ShippingBackend(_RecordingBackend):
    def __init__(self, bad_outcome: bool = False) -> None:
        super().__init__()
        self.bad_outcome = bad_outcome

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        return _Shipping(self.log, workers, self.bad_outcome)


def test_per_item_failures_inside_a_shipped_batch_are_routed_one_by_one() -> None:
    backend = _ShippingBackend()
    done: list[int] = []
    dead: list[tuple[Any, BaseException]] = []

    def handle(x: int) -> None:
        if x % 7 == 0:
            raise ValueError(f"bad {x}")
        done.append(x)

    pool = shardflow.ShardedPool(
        handle, workers=2, backend=backend, dead_letter=lambda i, e: dead.append((i, e))
    )
    pool.submit_many(range(1000))
    pool.shutdown()
    bad = [x for x in range(1000) if x % 7 == 0]
    assert sorted(done) == [x for x in range(1000) if x % 7]
    # Each failed item reached the dead letter alone, with its own exception.
    assert sorted(i for i, _ in dead) == bad
    assert all(str(e) == f"bad {i}" for i, e in dead)
    m = pool.metrics()
    assert (m.submitted, m.processed, m.dead_lettered, m.failed) == (
        1000,
        1000 - len(bad),
        len(bad),
        0,
    )
    assert any(entry.startswith("batch ") and entry != "batch 1" for entry in backend.log)


def test_an_outcome_that_does_not_fit_its_batch_fails_the_batch_with_a_clear_error() -> None:
    backend = _ShippingBackend(bad_outcome=True)
    errors: list[tuple[Any, BaseException]] = []
    pool = shardflow.ShardedPool(
        lambda x: None, workers=1, backend=backend, on_error=lambda w, e: errors.append((w, e))
    )
    pool.submit_many(range(10))
    pool.shutdown()
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (10, 0, 10)
    assert sorted(x for batch, _ in errors for x in batch) == list(range(10))
    assert all("does not fit its batch" in str(e) for _, e in errors)
