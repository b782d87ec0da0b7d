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
    assert BACKENDS["thread"] is ThreadBackend
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
        ("threads", ValueError, ["backend must be one of 'thread'", "'threads'"]),
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

    def wrap(self, handler: Handler) -> Handler:
        self.log.append("wrap")

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
    assert backend.log == ["runner custom 3", "wrap", "start", "join"]
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
