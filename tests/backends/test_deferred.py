"""The seam's deferred outcomes (base.py: ``DEFERRED``, ``attach(settle)``,
``wait_settled``): a runner keeps batches in flight and reports their outcomes later,
from a thread of its own, and the core's accounting stays exact."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import shardflow
from shardflow.backends import DEFERRED, Backend, BatchOutcome, ShardRunner
from shardflow.backends.base import Handler, Settle


class _Deferring(ShardRunner):
    """Ships every batch to a settler thread per shard (the "remote side"), which runs
    the handler per item after ``delay`` seconds and settles the batch."""

    def __init__(self, workers: int, delay: float) -> None:
        self.workers = workers
        self.delay = delay
        self.settle: Settle | None = None
        self.handler: Handler | None = None
        self.queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(workers)]
        self.threads: list[threading.Thread] = []
        self.settlers: list[threading.Thread] = []
        self.local = threading.local()
        self.sent = 0
        self.done = 0
        self.cond = threading.Condition()

    def batch_shape(
        self, batch_size: int, batch_timeout: float | None, lists: bool
    ) -> tuple[int, float | None, bool]:
        return 16, None, True

    def wrap(self, handler: Handler, *, per_item: bool) -> Handler:
        self.handler = handler

        def ship(batch: list[Any]) -> object:
            with self.cond:
                self.sent += 1
            self.queues[self.local.shard].put((batch, time.monotonic_ns()))
            return DEFERRED

        return ship

    def attach(self, settle: Settle) -> None:
        self.settle = settle

    def _settler(self, shard: int) -> None:
        assert self.settle is not None and self.handler is not None
        while True:
            job = self.queues[shard].get()
            if job is None:
                return
            batch, t0 = job
            time.sleep(self.delay)
            failures = []
            for i, item in enumerate(batch):
                try:
                    self.handler(item)
                except Exception as exc:
                    failures.append((i, exc))
            outcome: object = BatchOutcome(failures) if failures else None
            if any(item == "whole" for item in batch):
                outcome = RuntimeError("whole batch failed")
            if any(item == "nonsense" for item in batch):
                outcome = 42
            self.settle(shard, batch, outcome, time.monotonic_ns() - t0)
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        for i in range(self.workers):
            s = threading.Thread(target=self._settler, args=(i,), daemon=True)
            s.start()
            self.settlers.append(s)

            def serve(i: int = i) -> None:
                self.local.shard = i
                run_shard(i)

            starting()
            t = threading.Thread(target=serve, daemon=True)
            t.start()
            self.threads.append(t)

    def wait_settled(self, timeout: float | None) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.done == self.sent, timeout)

    def join(self) -> None:
        for t in self.threads:
            t.join()
        for q in self.queues:
            q.put(None)
        for s in self.settlers:
            s.join()
        self.settlers = []

    def describe(self) -> str:
        return "deferring"


class _DeferringBackend(Backend):
    name = "deferring"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runner_: _Deferring | None = None

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        self.runner_ = _Deferring(workers, self.delay)
        return self.runner_


def test_deferred_batches_are_counted_once_when_settled() -> None:
    dead: list[tuple[Any, BaseException]] = []
    errors: list[tuple[Any, BaseException]] = []

    def handle(x: Any) -> None:
        if isinstance(x, int) and x % 9 == 0:
            raise ValueError(x)

    items: list[Any] = list(range(1000))
    pool = shardflow.ShardedPool(
        handle,
        workers=2,
        backend=_DeferringBackend(),
        dead_letter=lambda item, exc: dead.append((item, exc)),
        on_error=lambda what, exc: errors.append((what, exc)),
    )
    pool.submit_many(items)
    pool.shutdown()  # join() waits for the settles
    m = pool.metrics()
    bad = [x for x in items if x % 9 == 0]
    assert sorted(i for i, _ in dead) == bad
    assert (m.submitted, m.processed, m.dead_lettered, m.failed) == (
        1000,
        1000 - len(bad),
        len(bad),
        0,
    )
    # The runner timed each batch; the core recorded it once per settle.
    assert m.service_time.count == m.batches


def test_a_whole_batch_failure_and_a_nonsense_outcome_are_routed_as_batch_failures() -> None:
    errors: list[tuple[Any, BaseException]] = []
    pool = shardflow.ShardedPool(
        lambda x: None,
        workers=1,
        backend=_DeferringBackend(),
        on_error=lambda what, exc: errors.append((what, exc)),
    )
    pool.submit_many(["whole"] * 3)
    pool.flush()
    pool.submit_many(["nonsense"] * 2)
    pool.shutdown()
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (5, 0, 5)
    assert str(errors[0][1]) == "whole batch failed"
    assert "settled a batch with 42" in str(errors[-1][1])


def test_flush_waits_for_deferred_outcomes() -> None:
    backend = _DeferringBackend(delay=0.05)
    pool = shardflow.ShardedPool(lambda x: None, workers=2, backend=backend)
    try:
        pool.submit_many(range(100))
        assert pool.flush()
        assert pool.metrics().processed == 100  # settled before flush returned
        pool.submit_many(range(100))
        assert pool.flush(timeout=0.001) is False  # the settles take 50 ms each
    finally:
        pool.shutdown()
    assert pool.metrics().processed == 200


def test_settle_refuses_a_shard_index_out_of_range() -> None:
    pool = shardflow.ShardedPool(lambda x: None, workers=2)
    try:
        with pytest.raises(IndexError, match="shard index 2 out of range"):
            pool._settle(2, [1], None, 0)
    finally:
        pool.shutdown()


def test_deferred_repr_names_it() -> None:
    assert repr(DEFERRED) == "shardflow.backends.DEFERRED"
