"""Pipeline stages on Ray hand their outputs to the next Ray stage as object references
(``Pipeline(object_refs=True)``, ``shardflow._remote_stage``: "Hand-off by object
reference"). Against the fake remote of test_ray_backend.py (its "references" are the
parts' bytes; ``FakeRemote.fetch`` counts the driver's reads), then on a real local
cluster (bound to 127.0.0.1), with an actor of the downstream stage killed mid-run.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from test_ray_backend import (
    _HAVE_RAY,
    FakeRayBackend,
    _first_occurrence_inversions,
    _lines,
    _read_records,
)

import shardflow
from shardflow import _remote_stage
from shardflow._remote_stage import Route, StageBatch
from shardflow.backends import RayBackend
from shardflow.backends.ray import Parted, current_batch
from test_pipeline import check_accounting


def runner_backend(stage: Any) -> Any:
    return stage.pool._runner._backend


def by_ref(p: shardflow.Pipeline[Any]) -> list[bool]:
    """Per stage: whether its pool's items are RefToken parts."""
    return [
        getattr(s.pool._runner, "_backend", None) is not None and runner_backend(s)._tokens
        for s in p._stages
    ]


def fetched(p: shardflow.Pipeline[Any]) -> int:
    return sum(runner_backend(s).remote.fetched for s in p._stages)


class Seen:
    """A stage-2 function that records ``(key, n, shard, attempt)`` per item."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.rows: list[tuple[Any, int, int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, item: tuple[Any, int]) -> int:
        info = current_batch()
        assert info is not None
        with self.lock:
            self.rows.append((self.key(item), item[1], info.shard, info.attempt))
        return item[1]


def _k7(item: tuple[Any, int]) -> Any:
    return item[0]


# --------------------------------------------------------------------------- the fake


@pytest.mark.parametrize("kind", ["int", "str", "tuple"])
def test_outputs_go_actor_to_actor_routed_as_the_core_routes(kind: str) -> None:
    """Stage 1's outputs reach stage 2 as parts (the driver reads none of them), each
    on the shard ``hash(key) % workers`` the driver's core would pick, per-key order
    kept, every stage counted exactly."""
    make = {"int": lambda x: x % 7, "str": lambda x: f"k{x % 7}", "tuple": lambda x: (x % 7, "a")}
    mk = make[kind]
    seen = Seen(_k7)
    p = (
        shardflow.Pipeline(range(2000), backend=FakeRayBackend(batch_size=50))
        .map(lambda x: (mk(x), x), workers=1)
        .map(seen, workers=3, key=_k7)
    )
    assert sorted(p) == list(range(2000))
    assert p.report is not None
    check_accounting(p.report)
    assert by_ref(p) == [False, True] and fetched(p) == 0
    assert all(shard == hash(k) % 3 for k, _, shard, _ in seen.rows)
    per_key = defaultdict(list)
    for k, n, _, _ in seen.rows:
        per_key[k].append(n)
    assert all(ns == sorted(ns) for ns in per_key.values())
    # The downstream pool counts parts, the report items.
    assert p._stages[1].pool.metrics().processed < 2000


def test_three_ray_stages_chain_by_reference_and_an_unkeyed_stage_takes_whole_parts() -> None:
    b = FakeRayBackend(batch_size=40)
    p = (
        shardflow.Pipeline(range(1000), backend=b)
        .map(lambda x: (x % 5, x), workers=2)
        .flat_map(lambda t: [t, t], workers=3, key=lambda t: t[0])  # parts per shard
        .filter(lambda t: t[1] % 2 == 0, workers=2)  # unkeyed: one part per batch
        .sink(lambda t: None, workers=1, key=lambda t: t[1])
    )
    report = p.run()
    check_accounting(report)
    assert by_ref(p) == [False, True, True, True] and fetched(p) == 0
    assert report.stage("filter-3").received == 2000 and report.results == 1000


def test_strings_whose_hash_differs_on_the_actor_come_back_inline() -> None:
    """Hash seeds differ (the probe does not match): str keys cannot be routed on the
    actor as here, so those batches come back inline and the driver routes them (to the
    same shard, by key); int keys still go by reference."""
    calls = iter(range(10**9))
    seen = Seen(_k7)
    p = (
        shardflow.Pipeline(range(600), backend=FakeRayBackend(batch_size=30))
        .map(lambda x: (f"s{x % 4}" if x < 300 else x % 4, x), workers=1)
        .map(seen, workers=2, key=_k7)
    )
    mp = pytest.MonkeyPatch()
    try:
        # The driver's probe first, then every actor-side check sees another seed.
        mp.setattr(_remote_stage, "hash_probe", lambda: (next(calls), 0))
        got = sorted(p)
    finally:
        mp.undo()
    assert got == list(range(600))
    assert p.report is not None
    check_accounting(p.report)
    assert all(shard == hash(k) % 2 for k, _, shard, _ in seen.rows)
    pool2 = p._stages[1].pool
    # Inline str outputs were submitted as items (300), the int ones as parts (fewer).
    assert 300 < pool2.metrics().processed < 600


def test_failures_in_both_stages_are_dead_lettered_with_their_items() -> None:
    dead1: list[tuple[Any, BaseException]] = []
    dead2: list[tuple[Any, BaseException]] = []

    def first(x: int) -> tuple[int, int]:
        if x % 11 == 0:
            raise ValueError(x)
        return (x % 3, x)

    def second(t: tuple[int, int]) -> int:
        if t[1] % 13 == 0:
            raise KeyError(t[1])
        return t[1]

    p = (
        shardflow.Pipeline(range(1500), errors="continue", backend=FakeRayBackend(batch_size=64))
        .map(first, workers=2, dead_letter=dead1)
        .map(second, workers=2, key=lambda t: t[0], dead_letter=dead2)
    )
    got = sorted(p)
    assert got == [x for x in range(1500) if x % 11 and x % 13]
    assert sorted(x for x, _ in dead1) == [x for x in range(1500) if x % 11 == 0]
    assert sorted(t[1] for t, _ in dead2) == [x for x in range(1500) if x % 13 == 0 and x % 11]
    assert all(isinstance(e, KeyError) for _, e in dead2)
    assert p.report is not None
    check_accounting(p.report)
    assert by_ref(p) == [False, True] and fetched(p) == 0


def test_an_output_that_does_not_pickle_fails_alone() -> None:
    p = (
        shardflow.Pipeline(range(200), errors="continue", backend=FakeRayBackend(batch_size=50))
        .map(lambda x: threading.Lock() if x == 7 else (x % 2, x))
        .map(lambda t: t[1], workers=2, key=lambda t: t[0])
    )
    assert sorted(p) == [x for x in range(200) if x != 7]
    assert p.report is not None
    check_accounting(p.report)
    ((item, exc),) = p.report.stage("map-1").errors
    assert item == 7  # the item the map got, as on the path through the driver
    assert isinstance(exc, TypeError) and "lock" in str(exc)


@pytest.mark.parametrize("side", ["upstream", "downstream"])
def test_an_actor_death_on_either_side_loses_nothing_and_keeps_per_key_order(side: str) -> None:
    killed: set[tuple[int, int]] = set()

    def die(shard: int, seq: int, attempt: int) -> int | None:
        # Shard 0 dies half-way through its 3rd and 7th batches, once each.
        if seq in (3, 7) and attempt == 1 and shard == 0 and (shard, seq) not in killed:
            killed.add((shard, seq))
            return 5
        return None

    seen = Seen(_k7)
    b_up = FakeRayBackend(die=die if side == "upstream" else None, batch_size=40)
    b_down = FakeRayBackend(die=die if side == "downstream" else None, batch_size=40)
    p = (
        shardflow.Pipeline(range(3000))
        .map(lambda x: (x % 9, x), workers=1, backend=b_up)
        .map(seen, workers=2, key=_k7, backend=b_down)
    )
    assert sorted(p) == list(range(3000))
    assert p.report is not None
    check_accounting(p.report)
    assert killed == {(0, 3), (0, 7)}
    assert by_ref(p) == [False, True]
    stats = p._stages[0 if side == "upstream" else 1].pool._runner.stats()
    assert stats[0]["replaced"] == 2 and stats[0]["resent"] >= 2
    records = [(k, n) for k, n, _, _ in seen.rows]
    assert set(records) == {(x % 9, x) for x in range(3000)}  # 0 lost
    assert _first_occurrence_inversions(records) == 0
    again = {(k, n) for k, n, _, attempt in seen.rows if attempt > 1}
    twice = {r for r, c in Counter(records).items() if c > 1}
    assert twice <= again  # only items of re-sent batches ran twice
    assert fetched(p) == 0


def test_refs_in_flight_per_downstream_shard_are_bounded() -> None:
    b = FakeRayBackend(batch_size=20, window=2)
    p = (
        shardflow.Pipeline(range(4000), backend=b)
        .map(lambda x: (x % 4, x), workers=2)
        .map(lambda t: t[1], workers=2, key=lambda t: t[0], capacity=200)
    )
    p.run()
    down = p._stages[1].pool
    remote = runner_backend(p._stages[1]).remote
    # Parts shipped and not yet run, per shard: at most `window` calls of a pool batch.
    assert 0 < remote.max_refs_out <= 2 * down.batch_size
    # The stage's ring holds parts: its capacity is the stage's divided by a part's size.
    assert down.capacity <= 64


def test_a_batch_lost_for_good_downstream_dead_letters_its_items() -> None:
    """The downstream shard cannot be restarted: its batches fail with ShardLost, and
    their items (read back from the parts, only now) go to the dead letter."""
    from shardflow.backends.ray import ShardLost

    dead: list[tuple[Any, BaseException]] = []
    b_down = FakeRayBackend(die=lambda shard, seq, attempt: 0, batch_size=25, restart_timeout=0.2)
    p = (
        shardflow.Pipeline(range(100), errors="continue")
        .map(lambda x: (x % 2, x), backend=FakeRayBackend(batch_size=25))
        .map(lambda t: t[1], workers=2, key=lambda t: t[0], backend=b_down, dead_letter=dead)
    )
    assert list(p) == []
    assert sorted(t[1] for t, _ in dead) == list(range(100))
    assert all(isinstance(e, ShardLost) for _, e in dead)
    assert p.report is not None
    check_accounting(p.report)
    assert fetched(p) > 0


def test_a_part_that_cannot_be_read_back_still_counts_each_of_its_values() -> None:
    """The part's object is gone too (lost with its node): each of its values is dead-
    lettered with the token standing for the item, so the accounting stays exact."""
    from shardflow.backends.ray import RefToken, ShardLost

    dead: list[tuple[Any, BaseException]] = []
    b_down = FakeRayBackend(die=lambda shard, seq, attempt: 0, batch_size=25, restart_timeout=0.2)
    p = (
        shardflow.Pipeline(range(100), errors="continue")
        .map(lambda x: (x % 2, x), backend=FakeRayBackend(batch_size=25))
        .map(lambda t: t[1], workers=2, key=lambda t: t[0], backend=b_down, dead_letter=dead)
    )
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(RefToken, "read", lambda self: None)
        assert list(p) == []
    finally:
        mp.undo()
    assert len(dead) == 100
    assert all(isinstance(x, RefToken) and isinstance(e, ShardLost) for x, e in dead)
    assert p.report is not None
    check_accounting(p.report)


def test_ordered_keyed_pipelines_release_in_source_order() -> None:
    p = (
        shardflow.Pipeline(
            range(1500),
            ordered=True,
            window=300,
            errors="continue",
            backend=FakeRayBackend(batch_size=32),
        )
        .map(lambda x: (x % 5, x), workers=2, key=lambda x: x % 3)
        .filter(lambda t: t[1] % 4, workers=3, key=lambda t: t[0])
        .map(lambda t: t[1] * 2, workers=2, key=lambda t: t[1] % 7)
    )
    assert list(p) == [2 * x for x in range(1500) if x % 4]
    assert p.report is not None
    check_accounting(p.report)
    assert by_ref(p) == [False, True, True] and fetched(p) == 0


@pytest.mark.parametrize(
    "case",
    [
        "object_refs=False",
        "thread stage between",
        "guard upstream",
        "guard downstream",
        "ordered pieces",
    ],
)
def test_where_a_contract_needs_the_driver_outputs_go_through_it(case: str) -> None:
    b = FakeRayBackend(batch_size=16)
    p = shardflow.Pipeline(
        range(300),
        backend=b,
        object_refs=case != "object_refs=False",
        ordered=case == "ordered pieces",
    )
    guard = {"limiter": shardflow.Limiter(4)}
    p.map(lambda x: (x % 3, x), workers=2, **(guard if case == "guard upstream" else {}))
    if case == "thread stage between":
        p.map(lambda t: t, backend="thread")
    if case == "guard downstream":
        p.map(lambda t: t[1], workers=2, **guard)
    elif case == "ordered pieces":
        p.map(lambda t: t[1], workers=3)  # other workers: no fusion; unkeyed: pieces
    else:
        p.map(lambda t: t[1], workers=2, key=lambda t: t[0])
    got = list(p)
    assert (got if case == "ordered pieces" else sorted(got)) == list(range(300))
    assert not any(by_ref(p))
    assert p.report is not None
    check_accounting(p.report)


def test_stage_batch_routes_units_by_the_unit_key_and_the_route_pickles() -> None:
    import pickle

    route = pickle.loads(pickle.dumps(Route(abs, 3, True)))
    step = StageBatch((("map", functools.partial(int.__add__, 1)),), True, route)
    out = step([(0, 1, [5]), (1, 1, [6]), (2, 1, [])])
    assert isinstance(out, Parted)
    counts, failures, inline, sizes = out.meta
    assert counts == [[2, 0, 2]] and failures == [] and inline is None
    parts = [pickle.loads(b) for b in out.parts]
    assert parts[6 % 3] == [(0, 1, [6])] and parts[7 % 3] == [(1, 1, [7])]
    assert (2, 1, []) in parts[2 % 3]  # an emptied unit goes by its seq
    assert sizes == [(len(q), sum(len(u[2]) for u in q)) for q in parts]


# --------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local cluster (2 CPUs, 127.0.0.1: RayBackend's local defaults): the session's,
    when test_ray_backend.py started it already, else one for this module. This
    module's functions travel by value (the actors cannot import tests/)."""
    if not _HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'shardflow[ray]')")
    started = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    ray = RayBackend(num_cpus=2).ensure_ray()
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
        if started:
            ray.shutdown()


def _payload(x: int) -> tuple[int, int, bytes]:
    return (x % 40, x // 40, b"p" * 1000)


def _record(path: str, delay: float, item: tuple[int, int, bytes]) -> None:
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


def _key0(t: tuple[int, int, bytes]) -> int:
    return t[0]


@pytest.mark.skipif(not _HAVE_RAY, reason="ray is not installed (pip install 'shardflow[ray]')")
def test_cluster_downstream_actor_killed_mid_run_loses_nothing_and_keeps_order(
    cluster: Any, tmp_path: Any
) -> None:
    ray = cluster
    path = str(tmp_path / "records")
    n_items = 4000
    backend = RayBackend(batch_size=100, num_cpus_per_shard=0.5)
    p = (
        shardflow.Pipeline(range(n_items), backend=backend)
        .map(_payload, workers=1)
        .sink(functools.partial(_record, path, 0.0003), workers=2, key=_key0)
    )
    done: list[Any] = []
    t = threading.Thread(target=lambda: done.append(p.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while (
        p._stages[1].pool is None or _lines(path) < n_items // 2
    ) and time.monotonic() < deadline:
        time.sleep(0.01)
    runner = p._stages[1].pool._runner
    assert runner._backend._tokens  # the sink gets its items by reference
    ray.kill(runner.links[0].actor)  # an actor this test's pipeline started, mid-run
    t.join(120)
    assert done, "the pipeline did not finish"
    report = done[0]
    check_accounting(report)
    rows = _read_records(path)
    records = [(k, n) for k, n, *_ in rows]
    assert set(records) == {(x % 40, x // 40) for x in range(n_items)}  # 0 lost
    assert _first_occurrence_inversions(records) == 0  # 0 per-key inversions
    assert report.stage("sink-2").received == n_items
    stats = runner.stats()
    assert stats[0]["replaced"] >= 1 and stats[0]["resent"] >= 1
    again = {(k, n) for k, n, _, _, attempt in rows if attempt > 1}
    twice = {r for r, c in Counter(records).items() if c > 1}
    assert twice <= again


def _fail9(t: tuple[int, int, bytes]) -> int:
    if t[1] % 9 == 0:
        raise ValueError(t[1])
    return t[0] * 1000 + t[1]


@pytest.mark.skipif(not _HAVE_RAY, reason="ray is not installed (pip install 'shardflow[ray]')")
def test_cluster_ordered_keyed_pipeline_by_reference(cluster: Any) -> None:
    dead: list[tuple[Any, BaseException]] = []
    backend = RayBackend(batch_size=200, num_cpus_per_shard=0.5)
    p = (
        shardflow.Pipeline(range(3000), ordered=True, errors="continue", backend=backend)
        .map(_payload, workers=1, key=lambda x: x % 2)
        .map(_fail9, workers=2, key=_key0, dead_letter=dead)
    )
    got = list(p)
    assert got == [(x % 40) * 1000 + x // 40 for x in range(3000) if (x // 40) % 9]
    assert sorted(t[0] * 1000 + t[1] for t, _ in dead) == sorted(
        (x % 40) * 1000 + x // 40 for x in range(3000) if (x // 40) % 9 == 0
    )
    assert p.report is not None
    check_accounting(p.report)
    assert by_ref(p) == [False, True]
