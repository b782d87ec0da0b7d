"""``ShardedPool(on_results=...)``: the handler's return values come back to this process
(the seam's ``deliver``), on every backend: threads, worker processes, Ray actors (a fake
remote here; the real cluster in test_ray_backend.py)."""

from __future__ import annotations

import sys
import threading
from typing import Any

import proc_handlers as ph
import pytest
from test_ray_backend import FakeRayBackend

import shardflow
from shardflow.backends import ProcessBackend
from shardflow.backends.process import WorkerLost

BACKENDS = ["thread", "process", "fake-ray"]


def make_backend(name: str) -> Any:
    if name == "process":
        if sys.platform != "linux":
            pytest.skip("the process backend is tested on Linux here")
        return ProcessBackend(ship_batch_size=50)
    if name == "fake-ray":
        return FakeRayBackend(batch_size=50)
    return name


class Collector:
    """on_results target: records (item, value) pairs and checks one call per shard at a
    time."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Any, Any]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, items: list[Any], values: Any) -> None:
        with self.lock:
            self.calls += 1
            if isinstance(values, list):
                assert len(items) == len(values)
                self.pairs.extend(zip(items, values, strict=True))
            else:
                self.pairs.append((tuple(items), values))


def accounted(pool: shardflow.ShardedPool[Any]) -> Any:
    m = pool.metrics()
    assert m.submitted == m.processed + m.failed + m.dead_lettered + m.dropped + m.returned
    return m


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_item_values_come_back_and_failures_are_routed(backend: str) -> None:
    got = Collector()
    errors: list[tuple[Any, BaseException]] = []
    with shardflow.ShardedPool(
        ph.square,
        workers=2,
        backend=make_backend(backend),
        on_results=got,
        on_error=lambda item, exc: errors.append((item, exc)),
    ) as pool:
        pool.submit_many(range(500))
    bad = {x for x in range(500) if x % 7 == 3}
    assert sorted(got.pairs) == [(x, x * x) for x in range(500) if x not in bad]
    assert sorted(item for item, _ in errors) == sorted(bad)
    assert all(isinstance(exc, ValueError) for _, exc in errors)
    m = accounted(pool)
    assert m.processed == 500 - len(bad) and m.failed == len(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyed_values_arrive_in_submission_order_per_key(backend: str) -> None:
    got = Collector()
    items = [(k, n) for n in range(60) for k in range(5)]
    with shardflow.ShardedPool(
        ph.total,  # sum((k, n)) is just a value; what matters is the order it comes in
        workers=2,
        key=lambda kv: kv[0],
        backend=make_backend(backend),
        on_results=got,
    ) as pool:
        pool.submit_many(items)
    per_key: dict[int, list[int]] = {}
    for (k, n), value in got.pairs:
        assert value == k + n
        per_key.setdefault(k, []).append(n)
    assert per_key == {k: list(range(60)) for k in range(5)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_list_handler_value_comes_back_once_per_batch(backend: str) -> None:
    got = Collector()
    with shardflow.ShardedPool(
        ph.total,
        workers=2,
        batch_size=25,
        backend=make_backend(backend),
        on_results=got,
    ) as pool:
        pool.submit_many(range(1000))
    assert sum(value for _, value in got.pairs) == sum(range(1000))
    assert sorted(x for batch, _ in got.pairs for x in batch) == list(range(1000))
    assert all(value == sum(batch) for batch, value in got.pairs)
    assert accounted(pool).processed == 1000


@pytest.mark.parametrize("backend", ["process", "fake-ray"])
def test_a_value_that_cannot_be_sent_back_fails_its_item_only(backend: str) -> None:
    got = Collector()
    errors: list[tuple[Any, BaseException]] = []
    with shardflow.ShardedPool(
        ph.lock_for_5,
        workers=1,
        backend=make_backend(backend),
        on_results=got,
        on_error=lambda item, exc: errors.append((item, exc)),
    ) as pool:
        pool.submit_many(range(20))
    assert sorted(got.pairs) == [(x, x) for x in range(20) if x != 5]
    assert [item for item, _ in errors] == [5]
    assert isinstance(errors[0][1], TypeError) and "lock" in str(errors[0][1])
    m = accounted(pool)
    assert m.processed == 19 and m.failed == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_results_raising_fails_that_batch_as_a_whole(backend: str) -> None:
    errors: list[tuple[Any, BaseException]] = []
    seen: list[Any] = []

    def picky(items: list[Any], values: Any) -> None:
        if 10 in items:
            raise RuntimeError("cannot take these")
        seen.extend(items)

    with shardflow.ShardedPool(
        ph.total,
        workers=1,
        batch_size=10,
        backend=make_backend(backend),
        on_results=picky,
        on_error=lambda item, exc: errors.append((item, exc)),
    ) as pool:
        pool.submit_many(range(30))
        pool.flush()
    assert len(errors) == 1 and isinstance(errors[0][1], RuntimeError)
    assert 10 in errors[0][0]
    assert sorted(seen + list(errors[0][0])) == list(range(30))
    m = accounted(pool)
    assert m.failed == len(errors[0][0]) and m.processed == 30 - m.failed


@pytest.mark.skipif(sys.platform != "linux", reason="the process backend is tested on Linux")
def test_process_values_survive_a_worker_crash(tmp_path: Any) -> None:
    """The worker dies at item 30 of a run of 50: the values of items 0-29 died with it,
    so those run again (at-least-once) and every value arrives exactly once."""
    got = Collector()
    with shardflow.ShardedPool(
        ph.ExitOnceOn(str(tmp_path), 30),
        workers=1,
        backend=ProcessBackend(ship_batch_size=50),
        on_results=got,
    ) as pool:
        pool.submit_many(range(100))
    assert sorted(got.pairs) == [(x, x + 1) for x in range(100)]
    assert accounted(pool).processed == 100


@pytest.mark.skipif(sys.platform != "linux", reason="the process backend is tested on Linux")
def test_process_item_that_always_kills_its_worker_is_lost_alone(tmp_path: Any) -> None:
    got = Collector()
    errors: list[tuple[Any, BaseException]] = []
    with shardflow.ShardedPool(
        ph.ExitOnceOn(str(tmp_path), 7, times=100),
        workers=1,
        backend=ProcessBackend(ship_batch_size=50, max_attempts=2),
        on_results=got,
        on_error=lambda item, exc: errors.append((item, exc)),
    ) as pool:
        pool.submit_many(range(20))
    assert sorted(got.pairs) == [(x, x + 1) for x in range(20) if x != 7]
    assert [item for item, _ in errors] == [7]
    assert isinstance(errors[0][1], WorkerLost) and errors[0][1].attempts == 2
    m = accounted(pool)
    assert m.processed == 19 and m.failed == 1


def test_on_results_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_results"):
        shardflow.ShardedPool(ph.noop, workers=1, on_results=42)  # type: ignore[arg-type]
