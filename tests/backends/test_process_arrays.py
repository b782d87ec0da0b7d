"""Array pools (ShardedPool(arrays=True).submit_array) on backend="process": numpy
batches cross to the worker processes by pickle (protocol 5) and survive with their
form and dtypes; per-key order and the row accounting hold as with threads."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import proc_handlers as ph
import pytest

import shardflow
from shardflow.backends import ProcessBackend

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the process backend is tested on Linux here"
)


def table(rows: int, keys: int = 31) -> dict[str, Any]:
    seq = np.arange(rows, dtype=np.int64)
    return {"k": (seq * 7919) % keys, "seq": seq, "x": np.ones(rows, dtype=np.float32)}


def test_array_batches_survive_the_trip_with_per_key_order(tmp_path: Path) -> None:
    pool = shardflow.ShardedPool(
        ph.ArrayRecorder(str(tmp_path)), workers=2, arrays=True, backend="process"
    )
    assert pool.submit_array(table(20_000), key="k", batch_size=512) == 20_000
    second = table(5000)
    second["seq"] += 20_000
    assert pool.submit_array(second, key="k", batch_size=512) == 5000
    pool.shutdown()
    records = ph.read_array_records(str(tmp_path))
    assert {r["form"] for r in records} == {"dict"}
    assert all(r["dtypes"] == {"k": "int64", "seq": "int64", "x": "float32"} for r in records)
    assert all(len(r["k"]) <= 512 for r in records)
    per_key: dict[int, list[int]] = defaultdict(list)
    for r in records:  # one file per worker, lines in the order that worker wrote them
        for k, s in zip(r["k"], r["seq"], strict=True):
            per_key[k].append(s)
    assert sorted(s for v in per_key.values() for s in v) == list(range(25_000))
    for k, seqs in per_key.items():
        assert seqs == sorted(seqs), f"key {k} out of order"
    assert sum(r["xsum"] for r in records) == 25_000.0
    rows = pool.row_metrics()
    assert (rows.submitted, rows.processed, rows.pending) == (25_000, 25_000, 0)


def test_structured_batches_and_failures_counted_in_rows(tmp_path: Path) -> None:
    errors: list[Any] = []
    data = np.zeros(3000, dtype=[("k", "<i4"), ("seq", "<i8"), ("x", "<f8")])
    data["k"] = np.arange(3000) % 10
    data["seq"] = np.arange(3000)
    data["x"] = 2.0
    pool = shardflow.ShardedPool(
        ph.ArrayRecorder(str(tmp_path), fail_key=3),
        workers=2,
        arrays=True,
        backend="process",
        on_error=lambda b, e: errors.append((b, e)),
    )
    pool.submit_array(data, key="k", batch_size=100)
    pool.shutdown()
    records = ph.read_array_records(str(tmp_path))
    assert {r["form"] for r in records} == {"array"} and {r["type"] for r in records} == {"ndarray"}
    failed_rows = sum(len(b) for b, _ in errors)
    assert errors and all(isinstance(e, ValueError) for _, e in errors)
    assert all(b.dtype == data.dtype for b, _ in errors)  # routed batches are the arrays
    assert sum(len(r["k"]) for r in records) == 3000 - failed_rows
    rows = pool.row_metrics()
    assert (rows.processed, rows.failed, rows.pending) == (3000 - failed_rows, failed_rows, 0)


def test_a_batch_larger_than_half_the_ring_is_refused_up_front() -> None:
    pool = shardflow.ShardedPool(
        ph.noop, workers=1, arrays=True, backend=ProcessBackend(ring_bytes=1 << 16)
    )
    try:
        with pytest.raises(ValueError, match="batch_size"):
            pool.submit_array({"x": np.zeros(100_000)}, batch_size=65536)
        assert pool.submit_array({"x": np.zeros(10_000)}, batch_size=1024) == 10_000
    finally:
        pool.shutdown()
    assert pool.row_metrics().processed == 10_000


def test_results_come_back_and_driver_guards_see_batches() -> None:
    import operator

    got: list[float] = []
    pool = shardflow.ShardedPool(
        operator.itemgetter("x"),  # returns the column: it comes back pickled
        workers=2,
        arrays=True,
        backend="process",
        breaker=shardflow.CircuitBreaker(),
        on_results=lambda items, values: got.extend(float(v.sum()) for v in values),
    )
    try:
        assert pool.submit_array(table(10_000), key="k", batch_size=1000) == 10_000
    finally:
        pool.shutdown()
    assert sum(got) == 10_000.0
    rows = pool.row_metrics()
    assert (rows.processed, rows.pending) == (10_000, 0)
