"""``ProcessBackend(serializer=...)``: items and values cross with the user's
``(dumps, loads)`` instead of pickle (backends/process.py, _process_worker.py).

The suite needs nothing beyond the standard library (a JSON pair, ``marshal``); the
msgspec and orjson cases run where those are installed (never a dependency).
"""

from __future__ import annotations

import json
import marshal
import sys
import threading
from pathlib import Path
from typing import Any

import proc_handlers as ph
import pytest

import shardflow
from shardflow.backends import ProcessBackend, Serializer
from shardflow.backends.process import WorkerLost

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the process backend is tested on Linux here"
)

try:
    import msgspec
except ImportError:  # pragma: no cover - depends on the environment
    msgspec = None
try:
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

JSON = (ph.json_dumps, ph.json_loads)

SERIALIZERS = [
    pytest.param(JSON, id="json-pair"),
    pytest.param(marshal, id="marshal-module"),
    pytest.param(
        Serializer(msgspec.msgpack.encode, msgspec.msgpack.decode) if msgspec else None,
        id="msgspec",
        marks=pytest.mark.skipif(
            msgspec is None, reason="msgspec is not installed (optional: pip install msgspec)"
        ),
    ),
    pytest.param(
        orjson,
        id="orjson-module",
        marks=pytest.mark.skipif(
            orjson is None, reason="orjson is not installed (optional: pip install orjson)"
        ),
    ),
]


def accounted(pool: shardflow.ShardedPool[Any]) -> Any:
    m = pool.metrics()
    assert m.submitted == m.processed + m.failed + m.dead_lettered + m.dropped + m.returned
    return m


def records(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "a": i, "b": 2 * i, "tag": f"t{i % 7}"} for i in range(n)]


class Collected:
    """on_results / on_error targets (called from the pool's threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[int, Any] = {}
        self.errors: list[tuple[Any, BaseException]] = []

    def results(self, items: list[Any], values: list[Any]) -> None:
        with self.lock:
            for item, value in zip(items, values, strict=True):
                key = item["id"] if isinstance(item, dict) else item
                assert key not in self.values, f"{key} delivered twice"
                self.values[key] = value

    def error(self, item: Any, exc: BaseException) -> None:
        with self.lock:
            self.errors.append((item, exc))


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_dict_records_and_their_values_cross_with_the_serializer(serializer: Any) -> None:
    got = Collected()
    pool: shardflow.ShardedPool[dict[str, Any]] = shardflow.ShardedPool(
        ph.enrich,
        workers=2,
        key=lambda r: r["id"] % 3,
        backend=ProcessBackend(serializer=serializer, ship_batch_size=64),
        on_results=got.results,
        on_error=got.error,
    )
    pool.submit_many(records(1000))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.failed) == (999, 1)
    ((item, exc),) = got.errors
    assert item["id"] == 13 and isinstance(exc, ValueError)
    assert sorted(got.values) == [i for i in range(1000) if i != 13]
    for i, value in got.values.items():
        assert value == {"id": i, "total": 3 * i, "tag": f"T{i % 7}"}


def test_an_item_the_serializer_rejects_fails_alone_when_shipped() -> None:
    got = Collected()
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
        ph.square,
        workers=1,
        backend=ProcessBackend(serializer=JSON),
        on_results=got.results,
        on_error=got.error,
    )
    items: list[Any] = list(range(20))
    items[5] = {5}  # JSON has no sets; pickle would have carried it
    pool.submit_many(items)
    pool.shutdown()
    m = accounted(pool)
    bad = [x for x in range(20) if x % 7 == 3]  # ph.square raises for these
    assert m.failed == 1 + len(bad) and m.processed == 19 - len(bad)
    rejected = [(i, e) for i, e in got.errors if i == {5}]
    ((_, exc),) = rejected
    assert isinstance(exc, TypeError)
    assert "set" in str(exc) and "json_dumps" in str(exc)
    assert sorted(got.values) == [x for x in range(20) if x != 5 and x not in bad]


def test_a_batch_handler_batch_with_a_rejected_item_fails_as_a_whole(tmp_path: Path) -> None:
    failed: list[tuple[Any, BaseException]] = []
    with shardflow.BatchProcessor(
        ph.BatchLog(str(tmp_path)),
        batch_size=10,
        batch_timeout=0.05,
        backend=ProcessBackend(serializer=JSON),
        on_error=lambda item, exc: failed.append((item, exc)),
    ) as bp:
        bp.put_many([*range(10), {10}, *range(11, 20)])
        bp.flush()
        bp.put_many(range(20, 30))
    m = bp.metrics()
    assert m.submitted == m.processed + m.failed
    assert m.failed >= 1 and all(isinstance(e, TypeError) for _, e in failed)
    logged = [
        int(x)
        for f in tmp_path.iterdir()
        for line in f.read_text().splitlines()
        for x in line.split()
    ]
    assert set(range(20, 30)) <= set(logged) and 10 not in logged


def test_a_value_the_serializer_rejects_fails_its_item_only() -> None:
    got = Collected()
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.as_set,
        workers=2,
        backend=ProcessBackend(serializer=JSON),
        on_results=got.results,
        on_error=got.error,
    )
    pool.submit_many(range(100))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.failed) == (90, 10)
    assert sorted(i for i, _ in got.errors) == list(range(0, 100, 10))
    assert all(isinstance(e, TypeError) and "serializer" in str(e) for _, e in got.errors)
    assert got.values == {x: x for x in range(100) if x % 10}


def test_a_loads_that_loses_an_item_fails_the_batch_instead_of_misnaming_items() -> None:
    got = Collected()
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.noop,
        workers=1,
        backend=ProcessBackend(serializer=(ph.json_dumps, ph.drop_last_loads)),
        on_error=got.error,
    )
    pool.submit_many(range(50))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.failed) == (0, 50)
    assert sorted(i for i, _ in got.errors) == list(range(50))
    assert all("round-trip a list" in str(e) for _, e in got.errors)


def test_a_crash_charges_the_item_that_was_running(tmp_path: Path) -> None:
    # The worker decodes the whole list, then runs it item by item with the progress
    # word: the poison item is named exactly, as with pickle.
    dead: list[tuple[Any, BaseException]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.Recorder(str(tmp_path), exit_on=frozenset({77})),
        workers=2,
        key=lambda x: x % 4,
        backend=ProcessBackend(serializer=JSON, max_attempts=2),
        dead_letter=lambda item, exc: dead.append((item, exc)),
    )
    pool.submit_many(range(300))
    pool.shutdown()
    m = accounted(pool)
    assert (m.processed, m.dead_lettered, m.failed) == (299, 1, 0)
    ((item, exc),) = dead
    assert item == 77 and isinstance(exc, WorkerLost) and exc.attempts == 2
    handled = ph.read_records(str(tmp_path))
    assert sorted(int(r[2]) for r in handled) == [x for x in range(300) if x != 77]
    for k in range(4):
        seq = [int(r[2]) for r in handled if int(r[2]) % 4 == k]
        assert seq == sorted(seq)


def test_a_list_handler_value_comes_back_through_the_serializer() -> None:
    got: list[tuple[list[int], Any]] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        ph.total,
        workers=1,
        batch_size=10,
        batch_timeout=0.05,
        lists=True,
        backend=ProcessBackend(serializer=marshal),
        on_results=lambda batch, value: got.append((list(batch), value)),
    )
    pool.submit_many(range(100))
    pool.shutdown()
    assert sorted(x for batch, _ in got for x in batch) == list(range(100))
    assert all(value == sum(batch) for batch, value in got)


def test_the_accepted_forms_normalise_to_a_serializer() -> None:
    # A module with dumps/loads (json's dumps gives str, which travels too), a pair, the
    # named tuple; None is pickle.
    assert ProcessBackend(serializer=json).serializer == Serializer(json.dumps, json.loads)
    assert ProcessBackend(serializer=JSON).serializer == Serializer(*JSON)
    assert ProcessBackend(serializer=Serializer(*JSON)).serializer == Serializer(*JSON)
    assert ProcessBackend().serializer is None
    assert "serializer=" in repr(ProcessBackend(serializer=marshal))


@pytest.mark.parametrize(
    ("serializer", "words"),
    [
        ((ph.json_loads, ph.json_dumps), "(dumps, loads) in that order"),
        ((ph.json_dumps,), "serializer must be None (pickle) or"),
        ((ph.json_dumps, "loads"), "serializer must be None (pickle) or"),
        ("msgspec", "serializer must be None (pickle) or"),
        (42, "serializer must be None (pickle) or"),
    ],
)
def test_a_bad_serializer_is_refused_naming_the_parameter(serializer: Any, words: str) -> None:
    with pytest.raises(TypeError, match="serializer") as info:
        ProcessBackend(serializer=serializer)
    assert words in str(info.value)


def test_a_serializer_that_cannot_reach_the_workers_is_refused(monkeypatch: Any) -> None:
    lock = threading.Lock()

    class Bound:
        def dumps(self, x: Any) -> bytes:
            return ph.json_dumps(x)

        def loads(self, data: bytes) -> Any:
            return ph.json_loads(data)

        def __reduce__(self) -> Any:
            return (type(lock), (lock,))  # never picklable

    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # by reference only
    with pytest.raises(TypeError, match=r"serializer=: .*cannot be pickled"):
        ProcessBackend(serializer=Bound())


def test_an_executor_refuses_a_serializer() -> None:
    with pytest.raises(ValueError, match="only pickle carries"):
        shardflow.Executor(1, backend=ProcessBackend(serializer=JSON))


def test_an_unordered_pipeline_stage_uses_the_serializer_and_an_ordered_one_refuses() -> None:
    source = [r for r in records(200) if r["id"] != 13]  # ph.enrich raises for 13
    pipe = shardflow.Pipeline(source, backend=ProcessBackend(serializer=JSON))
    out = list(pipe.map(ph.enrich, workers=2).map(ph.enrich_total))
    assert sorted(out) == sorted(3 * i for i in range(200) if i != 13)
    ordered = shardflow.Pipeline(records(10), ordered=True)
    with pytest.raises(ValueError, match="ordered pipeline"):
        ordered.map(ph.enrich, backend=ProcessBackend(serializer=JSON))
