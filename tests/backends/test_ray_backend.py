"""The Ray backend (shardflow/backends/ray.py).

Most tests check the driver logic (sequence numbers, re-sends after an actor died,
per-item errors, exact accounting) against a fake remote that runs "actors" in this
process, so they need no cluster. A few run on a real local Ray cluster (session-scoped,
bound to 127.0.0.1); they are skipped only when Ray is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shardflow
from shardflow.backends import BACKENDS, RayBackend, resolve_backend
from shardflow.backends.base import Handler
from shardflow.backends.ray import (
    ActorLost,
    BatchInfo,
    Remote,
    RemoteError,
    ShardLost,
    current_batch,
    fill_slots,
    run_batch_here,
    split_refs,
    take_parts,
)

# ---------------------------------------------------------------------- a fake remote


class _FakeActor:
    def __init__(self, shard: int, incarnation: int) -> None:
        self.shard = shard
        self.incarnation = incarnation
        self.alive = True


class FakeRemote(Remote):
    """Actors in this process. ``die(shard, seq, attempt)`` may return a number of items
    after which the actor running that batch dies (the items before it were handled: the
    at-least-once case), or None to let the batch run. ``cannot_start`` makes every new
    actor fail to start (a cluster that lost all its capacity)."""

    def __init__(
        self,
        handler: Handler,
        per_item: bool,
        die: Callable[[int, int, int], int | None] | None = None,
        collect: bool = False,
    ) -> None:
        self.handler = handler
        self.per_item = per_item
        self.collect = collect
        self.die = die
        self.cannot_start = False
        self.created = 0
        self.killed = 0
        self.calls: list[tuple[int, int, int]] = []  # (shard, seq, attempt)
        self.outstanding: defaultdict[int, int] = defaultdict(int)  # sent, not collected
        self.max_outstanding = 0
        self.waits: list[int] = []  # handles per wait() call (a full window's group)
        self.refs_out: defaultdict[int, int] = defaultdict(int)  # references sent, not run
        self.max_refs_out = 0
        self.fetched = 0  # parts read back by the driver (failure paths only)
        self.lock = threading.Lock()

    def create(self, shard: int) -> Any:
        with self.lock:
            self.created += 1
            return _FakeActor(shard, self.created)

    def ready(self, actor: Any, timeout: float) -> int:
        if self.cannot_start:
            actor.alive = False
            raise ActorLost("cannot start")
        return 1000 + actor.incarnation

    def submit(self, actor: Any, seq: int, attempt: int, batch: list[Any]) -> Any:
        if not actor.alive:
            raise ActorLost("dead actor")
        refs: list[Any] = []
        if self.tokens:
            batch, refs = split_refs(batch)
        with self.lock:
            self.outstanding[actor.shard] += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding[actor.shard])
            self.refs_out[actor.shard] += len(refs)
            self.max_refs_out = max(self.max_refs_out, self.refs_out[actor.shard])
        # (actor, seq, attempt, batch, refs, parts made by the call once it ran)
        return [actor, seq, attempt, list(batch), refs, None]

    def parts(self, handle: Any) -> list[Any]:
        return handle[5]

    def fetch(self, ref: Any) -> list[Any]:
        with self.lock:
            self.fetched += 1
        got: list[Any] = pickle.loads(ref.data)
        return got

    def result(self, handle: Any) -> int | tuple[Any, ...]:
        # The fake runs a batch when its result is asked for: oldest first, as an actor
        # runs the calls of one submitter.
        actor, seq, attempt, batch, refs = handle[:5]
        with self.lock:
            self.outstanding[actor.shard] -= 1
            self.refs_out[actor.shard] -= len(refs)
        if not actor.alive:
            raise ActorLost("dead actor")
        if refs:
            # What Ray does with the references passed as arguments: resolve them on the
            # actor (the parts must still exist: the driver holds them until acked).
            batch = fill_slots(batch, [r.data for r in refs])
        with self.lock:
            self.calls.append((actor.shard, seq, attempt))
        info = ("fake", actor.shard, seq, attempt)
        after = self.die(actor.shard, seq, attempt) if self.die else None
        if after is not None:
            # Handle the first `after` items, then die: the reply never comes.
            if after:
                run_batch_here(self.handler, self.per_item, info, batch[:after], self.collect)
            actor.alive = False
            raise ActorLost("killed mid-batch")
        if any(isinstance(x, str) and x == "cannot unpickle" for x in batch):
            raise RuntimeError("the actor could not unpickle its arguments")
        reply = run_batch_here(self.handler, self.per_item, info, batch, self.collect)
        if self.returns > 1:
            handle[5] = [_FakeRef(p) for p in take_parts(self.returns - 1)]
        return pickle.loads(pickle.dumps(reply))  # what crosses the wire

    def wait(self, handles: list[Any]) -> None:
        # The fake runs a batch when its result is asked for: nothing to wait for here.
        with self.lock:
            self.waits.append(len(handles))

    def kill(self, actor: Any) -> None:
        with self.lock:
            self.killed += 1
        actor.alive = False


class _FakeRef:
    """A Ray object reference of the fake: the part's bytes, which only an actor reads
    (``FakeRemote.fetch`` counts the driver's reads)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeRayBackend(RayBackend):
    """A RayBackend whose actors are FakeRemote's."""

    def __init__(self, die: Callable[[int, int, int], int | None] | None = None, **kw: Any):
        super().__init__(**kw)
        self.die = die
        self.remote: FakeRemote | None = None

    def _make_remote(self, handler: Handler, per_item: bool, collect: bool = False) -> Remote:
        self.remote = FakeRemote(handler, per_item, self.die, collect)
        return self.remote


def _first_occurrence_inversions(records: list[tuple[int, int]]) -> int:
    """Per key, count values whose first occurrence comes after a larger value's first
    occurrence (re-runs of a batch repeat values; repeats are not inversions)."""
    seen: set[tuple[int, int]] = set()
    last: dict[int, int] = {}
    inversions = 0
    for key, n in records:
        if (key, n) in seen:
            continue
        seen.add((key, n))
        if n < last.get(key, -1):
            inversions += 1
        last[key] = max(n, last.get(key, -1))
    return inversions


# ---------------------------------------------------------------------- no cluster


def test_ray_is_registered_and_importing_shardflow_does_not_import_ray() -> None:
    assert BACKENDS["ray"] == "shardflow.backends.ray:RayBackend"
    assert isinstance(resolve_backend("ray"), RayBackend)
    code = (
        "import sys, shardflow, shardflow.backends\n"
        "shardflow.backends.resolve_backend('ray')\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"num_cpus_per_shard": -1}, ValueError, ["num_cpus_per_shard", ">= 0"]),
        ({"num_cpus_per_shard": "1"}, TypeError, ["num_cpus_per_shard", "number"]),
        ({"batch_size": 0}, ValueError, ["batch_size"]),
        ({"restart_timeout": -1}, ValueError, ["restart_timeout"]),
        ({"address": 6379}, TypeError, ["address must be a str"]),
        ({"object_store_memory": 10}, ValueError, ["object_store_memory"]),
        ({"actor_options": []}, TypeError, ["actor_options must be a dict"]),
    ],
)
def test_bad_arguments_name_the_parameter(
    kwargs: dict[str, Any], exc: type[Exception], words: list[str]
) -> None:
    with pytest.raises(exc) as info:
        RayBackend(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_a_handler_that_cannot_be_sent_fails_the_constructor_clearly() -> None:
    lock = threading.Lock()

    def handle(x: int) -> None:
        with lock:
            pass

    with pytest.raises(TypeError, match="cannot be sent to a Ray actor"):
        shardflow.ShardedPool(handle, workers=1, backend=RayBackend())


def test_the_reply_carries_the_handlers_own_time_for_service_time() -> None:
    """service_time is the handler's time on the actor (as threads measure it): the reply
    ends with it, and the pool records it."""
    reply = run_batch_here(lambda b: time.sleep(0.02), False, ("r", 0, 5, 1), [1, 2])
    assert reply[0] == 5 and len(reply) == 2 and reply[-1] >= 20_000_000
    backend = FakeRayBackend(batch_size=10)
    with shardflow.ShardedPool(
        lambda batch: time.sleep(0.01), workers=1, batch_size=10, backend=backend
    ) as pool:
        pool.submit_many(range(30))
    m = pool.metrics()
    assert m.service_time.count == m.batches == 3
    assert m.service_time.percentile(0) >= 0.01  # a bucket's upper bound: >= the value


def test_per_item_pools_ship_batches_and_call_the_handler_per_item() -> None:
    seen: list[int] = []
    backend = FakeRayBackend(batch_size=64)
    with shardflow.ShardedPool(seen.append, workers=1, backend=backend) as pool:
        pool.submit_many(range(1000))
    assert seen == list(range(1000))  # one shard: submission order
    assert backend.remote is not None
    assert len(backend.remote.calls) < 1000  # batches, not items
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (1000, 1000, 0)
    assert "backend=ray(1 actors)" in repr(pool)


def test_keyed_order_nothing_lost_and_exact_accounting_across_simulated_deaths() -> None:
    records: list[tuple[int, int]] = []
    lock = threading.Lock()

    def handle(item: tuple[int, int]) -> None:
        with lock:
            records.append(item)

    # Shard 0's actor dies in the middle of its batches 3 and 7 (after 5 items), shard
    # 1's on batch 4 before running anything; each time on the first attempt only.
    deaths = {(0, 3): 5, (0, 7): 5, (1, 4): 0}

    def die(shard: int, seq: int, attempt: int) -> int | None:
        return deaths.get((shard, seq)) if attempt == 1 else None

    backend = FakeRayBackend(die, batch_size=32)
    n_keys, per_key = 20, 200
    items = [(k, n) for n in range(per_key) for k in range(n_keys)]
    pool = shardflow.ShardedPool(handle, workers=2, key=lambda it: it[0], backend=backend)
    # Feed slowly enough that batches are small and numerous.
    for i in range(0, len(items), 50):
        pool.submit_many(items[i : i + 50])
        time.sleep(0.001)
    pool.shutdown()
    assert set(records) == set(items)  # nothing lost
    assert _first_occurrence_inversions(records) == 0  # per-key order kept
    m = pool.metrics()
    # Exact: each batch counted once, re-sends or not.
    assert (m.submitted, m.processed, m.failed, m.dead_lettered) == (len(items), len(items), 0, 0)
    stats = pool._runner.stats()  # type: ignore[attr-defined]
    assert [s["replaced"] for s in stats] == [2, 1]
    # Every unacknowledged batch was re-sent: the one that died and those behind it in
    # the window (at most `window` per death).
    assert all(s["replaced"] <= s["resent"] <= backend.window * s["replaced"] for s in stats)
    # Only the items the dying actors handled before dying ran twice.
    assert len(records) == len(items) + 5 + 5
    assert backend.remote is not None
    # Re-sends carry the same sequence number, attempt 2, before any later batch.
    calls0 = [(seq, att) for shard, seq, att in backend.remote.calls if shard == 0]
    assert calls0[calls0.index((3, 1)) + 1] == (3, 2)
    assert calls0[calls0.index((7, 1)) + 1] == (7, 2)
    assert [seq for seq, _ in calls0] == sorted(seq for seq, _ in calls0)


@pytest.mark.parametrize("window", [1, 3])
def test_at_most_window_batches_are_in_flight_per_shard(window: int) -> None:
    backend = FakeRayBackend(window=window, batch_size=10)
    seen: list[int] = []
    with shardflow.ShardedPool(seen.append, workers=2, backend=backend) as pool:
        for i in range(0, 5000, 100):
            pool.submit_many(range(i, i + 100))
    assert sorted(seen) == list(range(5000))
    assert backend.remote is not None
    assert 1 <= backend.remote.max_outstanding <= window
    assert pool.metrics().processed == 5000


@pytest.mark.parametrize(("window", "group"), [(2, 1), (4, 2), (5, 2), (8, 4)])
def test_a_full_window_is_collected_by_half_with_one_wait(window: int, group: int) -> None:
    # The shard's thread waits once for the oldest window // 2 replies, then settles them
    # oldest first; per-key order, the bound on batches in flight and the counts hold.
    backend = FakeRayBackend(window=window, batch_size=10)
    seen: list[tuple[int, int]] = []
    items = [(k, n) for n in range(300) for k in range(7)]
    with shardflow.ShardedPool(
        seen.append, workers=2, key=lambda it: it[0], backend=backend
    ) as pool:
        pool.submit_many(items)
    assert sorted(seen) == sorted(items)
    assert _first_occurrence_inversions(seen) == 0
    assert backend.remote is not None
    assert 1 <= backend.remote.max_outstanding <= window
    if group == 1:
        assert backend.remote.waits == []  # one reply per collect: nothing to group
    else:
        assert backend.remote.waits and set(backend.remote.waits) == {group}
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (len(items), len(items), 0)


def test_collect_head_skips_a_batch_another_thread_settled() -> None:
    # ship() snapshots the group, then collects each entry only while it is still the
    # oldest: flush or the collector thread may have settled it in between.
    from shardflow.backends.ray import _ShardLink

    remote = FakeRemote(lambda x: None, True, None, False)
    settled: list[list[Any]] = []
    link = _ShardLink(remote, 0, 4, 1.0, lambda shard, batch, outcome, ns: settled.append(batch))
    link.actor = remote.create(0)
    link.ship([1])
    link.ship([2])
    first, second = list(link.inflight)
    assert link.collect_head(second) is False and settled == []
    assert link.collect_head(first) is True and settled == [[1]]
    assert link.collect_head(first) is False  # settled already
    assert link.collect_head(second) is True and settled == [[1], [2]]
    assert link.collect_head() is False  # nothing in flight


def test_current_batch_gives_the_batch_id_and_attempt_inside_the_handler() -> None:
    infos: list[BatchInfo | None] = []

    def handle(batch: list[int]) -> None:
        infos.append(current_batch())

    def die(shard: int, seq: int, attempt: int) -> int | None:
        return 0 if (seq, attempt) == (2, 1) else None

    backend = FakeRayBackend(die)
    pool = shardflow.ShardedPool(handle, workers=1, batch_size=10, backend=backend)
    pool.submit_many(range(10))
    pool.flush()
    pool.submit_many(range(10))
    pool.shutdown()
    assert current_batch() is None  # outside a handler
    got = [(i.shard, i.seq, i.attempt) for i in infos if i is not None]
    # Batch 2 died before running anything (die after 0 items) and ran once more.
    assert got == [(0, 1, 1), (0, 2, 2)]
    assert infos[1] is not None and infos[1].batch_id == ("fake", 0, 2)


class _Unpicklable(Exception):
    def __init__(self, code: int, detail: str) -> None:  # args != (code, detail)
        super().__init__(f"code {code}: {detail}")


def test_per_item_errors_come_back_one_by_one_with_remote_tracebacks() -> None:
    dead: list[tuple[Any, BaseException]] = []

    def handle(x: int) -> None:
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        if x % 10 == 7:
            raise _Unpicklable(x, "no pickle")

    pool = shardflow.ShardedPool(
        handle,
        workers=2,
        backend=FakeRayBackend(batch_size=25),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pool.submit_many(range(200))
    pool.shutdown()
    m = pool.metrics()
    assert (m.submitted, m.processed, m.dead_lettered, m.failed) == (200, 160, 40, 0)
    by_item = dict(dead)
    for x in range(3, 200, 10):
        exc = by_item[x]
        assert type(exc) is ValueError and str(exc) == f"bad {x}"
        assert "in handle" in exc.remote_traceback  # type: ignore[attr-defined]
        assert "in handle" in str(exc.__cause__)
    for x in range(7, 200, 10):
        exc = by_item[x]
        # The exception does not survive pickling: a clear stand-in for it, per item.
        assert isinstance(exc, RemoteError)
        assert exc.type_name.endswith("_Unpicklable")
        assert f"code {x}: no pickle" in str(exc)
        assert "could not be sent back" in str(exc)
        assert "in handle" in exc.remote_traceback


def test_a_call_that_fails_without_the_actor_dying_fails_only_its_batch() -> None:
    errors: list[tuple[Any, BaseException]] = []
    seen: list[Any] = []
    pool = shardflow.ShardedPool(
        seen.extend,
        workers=1,
        batch_size=5,
        backend=FakeRayBackend(),
        on_error=lambda what, exc: errors.append((what, exc)),
    )
    pool.submit_many([1, 2, 3, 4, 5, "cannot unpickle", 7, 8, 9, 10, 11, 12, 13, 14, 15])
    pool.shutdown()
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (15, 10, 5)
    assert [list(w) for w, _ in errors] == [["cannot unpickle", 7, 8, 9, 10]]
    assert seen == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]


def test_a_batch_handler_that_raises_fails_its_batch_as_a_whole() -> None:
    errors: list[tuple[Any, BaseException]] = []

    def handle(batch: list[int]) -> None:
        if 13 in batch:
            raise RuntimeError("batch refused")

    pool = shardflow.ShardedPool(
        handle,
        workers=1,
        batch_size=10,
        backend=FakeRayBackend(),
        on_error=lambda what, exc: errors.append((what, exc)),
    )
    pool.submit_many(range(30))
    pool.shutdown()
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (30, 20, 10)
    assert [(sorted(w), str(e)) for w, e in errors] == [(list(range(10, 20)), "batch refused")]


def test_a_batch_that_cannot_be_delivered_fails_with_shard_lost_instead_of_hanging() -> None:
    dead: list[tuple[Any, BaseException]] = []

    def die(shard: int, seq: int, attempt: int) -> int | None:
        return 0 if seq == 2 else None

    backend = FakeRayBackend(die, restart_timeout=0.2)
    pool = shardflow.ShardedPool(
        lambda batch: None,
        workers=1,
        batch_size=5,
        backend=backend,
        dead_letter=lambda what, exc: dead.append((what, exc)),
    )
    pool.submit_many(range(5))
    pool.flush()
    assert backend.remote is not None
    backend.remote.cannot_start = True
    pool.submit_many(range(5, 10))
    pool.shutdown()
    m = pool.metrics()
    assert (m.submitted, m.processed, m.dead_lettered) == (10, 5, 5)
    [(what, exc)] = dead
    assert list(what) == [5, 6, 7, 8, 9]
    assert isinstance(exc, ShardLost) and "restart_timeout=0.2" in str(exc)


def test_join_stops_the_actors() -> None:
    backend = FakeRayBackend()
    pool = shardflow.ShardedPool(lambda x: None, workers=3, backend=backend)
    pool.submit_many(range(10))
    pool.shutdown()
    assert backend.remote is not None
    assert (backend.remote.created, backend.remote.killed) == (3, 3)
    pool.join()  # idempotent
    assert backend.remote.killed == 3


def test_batch_processor_takes_a_backend() -> None:
    got: list[list[int]] = []
    backend = FakeRayBackend()
    with shardflow.BatchProcessor(
        got.append, batch_size=4, batch_timeout=0.05, backend=backend
    ) as bp:
        bp.put_many(range(10))
    assert sorted(x for b in got for x in b) == list(range(10))
    assert backend.remote is not None and backend.remote.created == 1


# ---------------------------------------------------------------------- a real cluster

_HAVE_RAY = importlib.util.find_spec("ray") is not None
ray: Any = None  # imported by the fixture, after RayBackend set the loopback variables


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster for the session: 2 CPUs, 200 MiB object store, no
    dashboard, no usage stats, bound to 127.0.0.1 (RayBackend's local defaults)."""
    global ray
    if not _HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'shardflow[ray]')")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # pragma: no cover
        pytest.skip("ray is already initialized in this process: not ours to use")
    ray = RayBackend(num_cpus=2).ensure_ray()
    # Handlers defined in this module travel by value (the actors cannot import tests/).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


def _append_record(path: str, delay: float, item: tuple[int, int]) -> None:
    """Record (key, n, pid, seq, attempt) with one unbuffered append: it survives a kill."""
    info = current_batch()
    assert info is not None
    line = f"{item[0]} {item[1]} {os.getpid()} {info.seq} {info.attempt}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    if delay:
        time.sleep(delay)


def _read_records(path: str) -> list[tuple[int, int, int, int, int]]:
    with open(path) as f:
        rows = [tuple(int(v) for v in line.split()) for line in f]
    return rows  # type: ignore[return-value]


def _lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def test_cluster_keyed_run_keeps_per_key_order(ray_cluster: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "records")
    handler = functools.partial(_append_record, path, 0.0)
    items = [(k, n) for n in range(300) for k in range(10)]
    with shardflow.ShardedPool(
        handler, workers=2, key=lambda it: it[0], backend=RayBackend(batch_size=100)
    ) as pool:
        pool.submit_many(items)
    rows = _read_records(path)
    assert sorted((k, n) for k, n, *_ in rows) == sorted(items)  # each once, none lost
    per_key: dict[int, list[int]] = defaultdict(list)
    for k, n, *_ in rows:
        per_key[k].append(n)
    assert all(ns == sorted(ns) for ns in per_key.values())
    # Two actors (two processes), not this one.
    pids = {pid for _, _, pid, _, _ in rows}
    assert len(pids) == 2 and os.getpid() not in pids
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed) == (3000, 3000, 0)
    assert len(m.shards) == 2 and all(s.service_time.count > 0 for s in m.shards)


def test_cluster_per_item_errors_and_unpicklable_exceptions(ray_cluster: Any) -> None:
    dead: list[tuple[Any, BaseException]] = []
    pool = shardflow.ShardedPool(
        _raise_some,
        workers=1,
        backend=RayBackend(batch_size=50),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pool.submit_many(range(100))
    pool.shutdown()
    m = pool.metrics()
    assert (m.processed, m.dead_lettered) == (80, 20)
    kinds = {type(e).__name__ for _, e in dead}
    assert kinds == {"KeyError", "RemoteError"}
    for _, exc in dead:
        tb = exc.remote_traceback  # type: ignore[attr-defined]
        assert "_raise_some" in tb


def test_cluster_return_values_come_back_with_on_results(ray_cluster: Any) -> None:
    pairs: list[tuple[int, Any]] = []
    failed: list[Any] = []
    pool = shardflow.ShardedPool(
        _square_or_lock,
        workers=2,
        backend=RayBackend(batch_size=50),
        on_results=lambda items, values: pairs.extend(zip(items, values, strict=True)),
        on_error=lambda item, exc: failed.append((item, type(exc).__name__)),
    )
    pool.submit_many(range(300))
    pool.shutdown()
    assert sorted(pairs) == [(x, x * x) for x in range(300) if x != 3]
    assert failed == [(3, "TypeError")]  # its value (a lock) cannot be sent back
    m = pool.metrics()
    assert (m.processed, m.failed) == (299, 1)


class _Box:
    """Defined in this module: its instances travel by value (cloudpickle), as Ray sends
    them, only because the fixture registers the module."""

    def __init__(self, n: int) -> None:
        self.n = n


def _open_item(item: tuple[str, Any]) -> tuple[str, Any]:
    import ray as ray_on_actor

    kind, value = item
    if kind == "ref":
        return kind, ray_on_actor.get(value)
    if kind == "fn":
        return kind, value(2)
    if kind == "box":
        return kind, value.n
    if kind == "array":
        return kind, int(value.sum())
    return kind, value


def test_cluster_items_of_every_kind_reach_the_actors(ray_cluster: Any) -> None:
    """Batches cross as one pickled payload, or through Ray's serializer when they hold
    Ray references (borrowed, not pinned) or out-of-band buffers: the handler sees the
    same items either way."""
    numpy = pytest.importorskip("numpy")
    items: list[tuple[str, Any]] = []
    for i in range(40):
        items += [("int", i), ("fn", lambda x, i=i: x + i), ("box", _Box(i))]
        if i % 4 == 0:
            items.append(("ref", ray_cluster.put(i * 10)))
        if i % 5 == 0:
            items.append(("array", numpy.arange(i)))
    got: list[tuple[str, Any]] = []
    pool = shardflow.ShardedPool(
        _open_item,
        workers=2,
        backend=RayBackend(batch_size=7),
        on_results=lambda _items, values: got.extend(values),
    )
    pool.submit_many(items)
    pool.shutdown()
    want = [("int", i) for i in range(40)] + [("fn", i + 2) for i in range(40)]
    want += [("box", i) for i in range(40)] + [("ref", i * 10) for i in range(0, 40, 4)]
    want += [("array", sum(range(i))) for i in range(0, 40, 5)]
    assert sorted(got) == sorted(want)
    m = pool.metrics()
    assert (m.processed, m.failed, m.dead_lettered) == (len(items), 0, 0)


def test_cluster_calls_are_packed_unless_ray_must_serialize_them(ray_cluster: Any) -> None:
    from shardflow.backends.ray import _call_pickler, _CallPacker

    packer = _CallPacker(_call_pickler(ray_cluster))
    call = (3, 1, list(range(100)))
    for _ in range(2):  # the pickler is reused: each payload stands alone
        data = packer.pack(call)
        assert data is not None and pickle.loads(data) == call
    big = (7, 1, [b"x" * (3 << 20), 1])
    data = packer.pack(big)
    assert data is not None and pickle.loads(data) == big
    fn_call = (4, 2, [lambda x: x * 3])
    data = packer.pack(fn_call)
    assert data is not None and pickle.loads(data)[2][0](5) == 15
    # Something that does not pickle: Ray gets the call and reports the error.
    assert packer.pack((5, 1, [threading.Lock()])) is None
    # Ray references go through Ray's serializer (borrowed by the actor, not pinned).
    assert packer.pack((5, 1, [1, ray_cluster.put(1)])) is None
    numpy = pytest.importorskip("numpy")
    assert packer.pack((6, 1, [numpy.arange(4)])) is None  # out-of-band: Ray, zero-copy
    assert packer.pack(call) is not None


def _square_or_lock(x: int) -> Any:
    return threading.Lock() if x == 3 else x * x


def _raise_some(x: int) -> None:
    if x % 10 == 1:
        raise KeyError(x)
    if x % 10 == 2:
        raise _Unpicklable(x, "remote")


def test_cluster_actor_killed_mid_run_loses_nothing_and_keeps_order(
    ray_cluster: Any, tmp_path: Any
) -> None:
    path = str(tmp_path / "records")
    handler = functools.partial(_append_record, path, 0.0005)
    n_keys, per_key = 40, 100
    items = [(k, n) for n in range(per_key) for k in range(n_keys)]
    pool = shardflow.ShardedPool(
        handler, workers=2, key=lambda it: it[0], backend=RayBackend(batch_size=50)
    )
    pool.submit_many(items)
    runner = pool._runner  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while _lines(path) < len(items) // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    victim = runner.links[0].actor
    ray.kill(victim)  # the actor this test's pool started, mid-batch
    pool.shutdown()
    rows = _read_records(path)
    records = [(k, n) for k, n, *_ in rows]
    assert set(records) == set(items)  # 0 lost
    assert _first_occurrence_inversions(records) == 0  # 0 per-key inversions
    m = pool.metrics()
    assert (m.submitted, m.processed, m.failed, m.dead_lettered) == (4000, 4000, 0, 0)
    stats = runner.stats()
    assert stats[0]["replaced"] >= 1 and stats[0]["resent"] >= 1
    # Only re-sent batches (attempt > 1 somewhere) may hold items that ran twice.
    again = {(k, n) for k, n, _, _, attempt in rows if attempt > 1}
    twice = {r for r, count in Counter(records).items() if count > 1}
    assert twice <= again


@pytest.mark.skipif(not _HAVE_RAY, reason="ray is not installed (pip install 'shardflow[ray]')")
def test_cluster_node_removed_mid_run_loses_nothing_and_keeps_order() -> None:
    # Its own 3-node cluster (head + 2 worker nodes, all on 127.0.0.1), in a fresh
    # interpreter: this process may hold the session's cluster. The node running shard
    # 0's actor is removed half-way (the run's own node, started by it).
    from shardflow.bench.ray import NODE_LOSS_CODE

    proc = subprocess.run(
        [sys.executable, "-c", NODE_LOSS_CODE, "100000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["lost"] == 0
    assert result["inversions"] == 0
    assert result["exact"] is True
    assert result["replaced"] >= 1 and result["resent"] >= 1, result


def test_metrics_and_the_prometheus_collector_look_as_with_threads() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from shardflow.prometheus import ShardflowCollector

    dead: list[Any] = []

    def handle(x: int) -> None:
        if x % 100 == 0:
            raise ValueError(x)

    pool = shardflow.ShardedPool(
        handle,
        workers=2,
        name="rayjobs",
        backend=FakeRayBackend(batch_size=50),
        dead_letter=lambda item, exc: dead.append(item),
    )
    registry = prometheus_client.CollectorRegistry()
    ShardflowCollector(pool, registry=registry)
    pool.submit_many(range(1000))
    pool.shutdown()
    m = pool.metrics()
    assert (m.processed, m.dead_lettered) == (990, 10)
    assert [s.index for s in m.shards] == [0, 1]
    # One service-time sample per batch (the remote call), per shard.
    assert sum(s.service_time.count for s in m.shards) == m.batches
    assert m.service_time.percentile(50) > 0
    processed = sum(
        registry.get_sample_value("shardflow_processed_total", {"pool": "rayjobs", "shard": s}) or 0
        for s in ("0", "1")
    )
    assert processed == 990


# ---------------------------------------------------------------------- array pools


def _record_batch(path: str, batch: Any) -> None:
    """One JSON line per array batch (its form, keys and sequence numbers); a batch
    whose first sequence number is a multiple of 5 raises (the input is fixed, and so
    are its batches: the same ones fail every run)."""
    if int(batch["seq"][0]) % 5 == 0:
        raise ValueError("bad batch")
    line = json.dumps(
        {
            "type": type(batch).__name__,
            "dtypes": [str(batch["k"].dtype), str(batch["seq"].dtype)],
            "k": batch["k"].tolist(),
            "seq": batch["seq"].tolist(),
            "pid": os.getpid(),
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _array_table(rows: int) -> dict[str, Any]:
    np = pytest.importorskip("numpy")
    seq = np.arange(rows, dtype=np.int64)
    return {"k": (seq * 7919) % 29, "seq": seq}


def _check_array_run(pool: Any, records: list[dict[str, Any]], rows: int) -> None:
    per_key: defaultdict[int, list[int]] = defaultdict(list)
    for r in records:  # one writer per shard, whose lines are in its order
        for k, s in zip(r["k"], r["seq"], strict=True):
            per_key[k].append(s)
    assert all(s == sorted(s) for s in per_key.values())
    handled = sum(len(r["seq"]) for r in records)
    m = pool.row_metrics()
    assert (m.submitted, m.processed, m.pending) == (rows, handled, 0)
    assert m.failed == rows - handled > 0  # the batches that raised


def test_array_pools_count_rows_through_deferred_batches(tmp_path: Any) -> None:
    path = str(tmp_path / "batches")
    errors: list[Any] = []
    with shardflow.ShardedPool(
        functools.partial(_record_batch, path),
        workers=2,
        arrays=True,
        backend=FakeRayBackend(),
        on_error=lambda b, e: errors.append(b),
    ) as pool:
        assert pool.submit_array(_array_table(5000), key="k", batch_size=100) == 5000
    with open(path) as f:
        records = [json.loads(line) for line in f]
    _check_array_run(pool, records, 5000)
    assert all(isinstance(b, dict) for b in errors)  # the failed batches, as batches


def test_cluster_array_batches_survive_with_order_and_rows(ray_cluster: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "batches")
    with shardflow.ShardedPool(
        functools.partial(_record_batch, path),
        workers=2,
        arrays=True,
        backend=RayBackend(),
        on_error=lambda b, e: None,
    ) as pool:
        assert pool.submit_array(_array_table(20_000), key="k", batch_size=512) == 20_000
    with open(path) as f:
        records = [json.loads(line) for line in f]
    assert {r["type"] for r in records} == {"dict"}
    assert {tuple(r["dtypes"]) for r in records} == {("int64", "int64")}
    assert len({r["pid"] for r in records}) == 2 and os.getpid() not in {r["pid"] for r in records}
    _check_array_run(pool, records, 20_000)


def _fail7(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"bad item {x}")
    return x


@pytest.mark.parametrize("fuse", [True, False])
def test_cluster_pipeline_stages_on_actors(ray_cluster: Any, fuse: bool) -> None:
    """Pipeline stages on Ray actors (fused into one actor loop, or each on its own
    actors), ordered, with per-item errors dead-lettered in the driver."""
    dead: list[tuple[Any, BaseException]] = []
    backend = RayBackend(batch_size=100, num_cpus_per_shard=0.5)
    p = (
        shardflow.Pipeline(range(3000), ordered=True, errors="continue", backend=backend, fuse=fuse)
        .map(_fail7, workers=2, dead_letter=dead)
        .flat_map(str, workers=2)
        .map(int, backend="thread")
    )
    got = list(p)
    assert got == [int(c) for x in range(3000) if x % 7 for c in str(x)]
    assert sorted(x for x, _ in dead) == [x for x in range(3000) if x % 7 == 0]
    assert all(isinstance(e, ValueError) for _, e in dead)
    assert p.report is not None and p.report.balanced
    assert (p._stages[0].pool is p._stages[1].pool) == fuse


# ---------------------------------------------------------------- Executor on the cluster


def test_cluster_executor(ray_cluster: Any, tmp_path: Any) -> None:
    """Executor(backend=RayBackend()) (more in test_executor_backends.py): results,
    per-call errors, a call or result that cannot be pickled fails alone, map in order,
    the initializer runs in the actors."""
    from concurrent.futures import wait

    import exec_tasks as tasks

    wait_s = tasks.WAIT
    ray_cluster.cloudpickle.register_pickle_by_value(tasks)  # the actors cannot import tests/
    try:
        with shardflow.Executor(
            2, backend=RayBackend(), initializer=tasks.record_init, initargs=(str(tmp_path), "ray")
        ) as ex:
            assert ex.submit(tasks.add, 1, 2, c=3).result(wait_s) == 6
            futs = [ex.submit(tasks.fail_on, i, 5) for i in range(20)]
            futs.append(ex.submit(tasks.add, threading.Lock()))
            futs.append(ex.submit(tasks.return_lock))
            futs.append(ex.submit(lambda: 42))  # cloudpickle sends it by value
            futs.append(ex.submit(tasks.pid))
            wait(futs, wait_s)
            assert [f.result() for f in futs[:5]] == [0, 1, 2, 3, 4]
            assert isinstance(futs[5].exception(), ValueError)
            unsent, unreturned = futs[20].exception(), futs[21].exception()
            assert isinstance(unsent, TypeError) and "cannot send the call add" in str(unsent)
            assert isinstance(unreturned, TypeError) and "lock" in str(unreturned)
            assert futs[22].result() == 42
            actor_pid = futs[23].result()
            assert actor_pid != os.getpid()
            assert list(tmp_path.glob(f"init-{actor_pid}-*"))  # the initializer ran there
            assert list(ex.map(tasks.square, range(100), chunksize=7)) == [
                i * i for i in range(100)
            ]
        m = ex.metrics()
        assert m.failed == 3 and m.processed == m.submitted - 3
    finally:
        ray_cluster.cloudpickle.unregister_pickle_by_value(tasks)
