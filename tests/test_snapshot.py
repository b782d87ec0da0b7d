"""``ShardedPool.snapshot()``: plain dataclasses, numpy rows, and ``later - earlier``."""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pytest

import shardflow
from shardflow.metrics import DELTA_COUNTERS, Latency, MetricsDelta, PoolMetrics, ShardMetrics


def run_pool(n: int, **kwargs: object) -> shardflow.ShardedPool[int]:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(lambda item: None, **kwargs)  # type: ignore[arg-type]
    pool.submit_many(range(n))
    pool.shutdown()
    return pool


def test_snapshot_is_plain_frozen_dataclasses_with_latencies() -> None:
    before = time.monotonic()
    pool = run_pool(1000, workers=2, name="snap")
    m = pool.snapshot()
    assert before <= m.taken_at <= time.monotonic()
    assert isinstance(m, PoolMetrics) and dataclasses.is_dataclass(m)
    assert m.pool == "snap" and m.processed == 1000 and m.unfinished == 0
    assert all(isinstance(s, ShardMetrics) for s in m.shards)
    assert isinstance(m.queue_wait, Latency) and isinstance(m.service_time, Latency)
    assert m.queue_wait.count > 0 and m.service_time.count > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.processed = 0  # type: ignore[misc]


def test_metrics_is_snapshot() -> None:
    pool = run_pool(100, workers=2)
    a, b = pool.metrics(), pool.snapshot()
    assert type(a) is PoolMetrics
    assert dataclasses.replace(a, taken_at=0.0) == dataclasses.replace(b, taken_at=0.0)


def test_later_minus_earlier_gives_interval_counts_and_rates() -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        lambda b: None, workers=2, batch_size=10
    )
    first = pool.snapshot()
    pool.submit_many(range(500))
    pool.flush()
    second = pool.snapshot()
    pool.submit_many(range(300))
    pool.shutdown()
    third = pool.snapshot()

    d = third - second
    assert isinstance(d, MetricsDelta)
    assert d.pool == pool.name
    assert d.interval == third.taken_at - second.taken_at > 0
    assert (d.submitted, d.processed, d.failed, d.dropped) == (300, 300, 0, 0)
    assert d.batches == third.batches - second.batches
    assert d.rate("processed") == pytest.approx(300 / d.interval)
    assert d.processed_per_s == d.rate("processed")
    assert d.submitted_per_s == d.rate("submitted") and d.failed_per_s == 0.0
    assert d.service_time.count == d.batches  # batch calls are all timed
    assert (second - first).processed == 500
    assert (third - first).processed == (third - second).processed + (second - first).processed
    assert set(d.as_dict()) >= {"interval", "pool", *DELTA_COUNTERS}


def test_a_snapshot_minus_itself_is_zero() -> None:
    m = run_pool(10, workers=1).snapshot()
    d = m - m
    assert d.interval == 0.0 and d.processed == 0 and d.rate("processed") == 0.0
    assert d.queue_wait.count == 0 and d.service_time.count == 0


def test_snapshots_of_different_pools_are_refused() -> None:
    a = run_pool(10, workers=1, name="same")
    b = run_pool(10, workers=1, name="same")  # same name, another pool
    with pytest.raises(ValueError, match="different pools"):
        b.snapshot() - a.snapshot()


def test_wrong_order_is_refused() -> None:
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(lambda item: None, workers=1)
    early = pool.snapshot()
    pool.submit_many(range(10))
    pool.shutdown()
    late = pool.snapshot()
    with pytest.raises(ValueError, match="later - earlier"):
        early - late


def test_only_snapshots_subtract() -> None:
    m = run_pool(1, workers=1).snapshot()
    with pytest.raises(TypeError):
        m - 1  # type: ignore[operator]


def test_rate_refuses_unknown_names() -> None:
    m = run_pool(1, workers=1).snapshot()
    with pytest.raises(ValueError, match=r"name must be one of submitted, .*got 'depth'"):
        (m - m).rate("depth")


def test_to_numpy_has_one_row_per_shard_and_a_field_per_counter() -> None:
    pool = run_pool(999, workers=3)
    m = pool.snapshot()
    rows = m.to_numpy()
    assert isinstance(rows, np.ndarray) and rows.shape == (3,)
    assert rows["index"].tolist() == [0, 1, 2]
    for f in ("submitted", "processed", "failed", "dropped", "returned", "batches"):
        assert int(rows[f].sum()) == getattr(m, f)
        assert rows[f].tolist() == [getattr(s, f) for s in m.shards]
    assert rows["queue_wait_count"].tolist() == [s.queue_wait.count for s in m.shards]
    assert rows["service_time_p99"].tolist() == [s.service_time.p99 for s in m.shards]
    assert rows.dtype["service_time_p99"] == np.float64


def test_to_numpy_without_numpy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    m = run_pool(1, workers=1).snapshot()
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImportError, match=r"shardflow\[numpy\]"):
        m.to_numpy()


def test_idle_pool_snapshot_is_all_zero() -> None:
    with shardflow.ShardedPool(lambda item: None, workers=2) as pool:
        m = pool.snapshot()
        assert m.submitted == 0 and m.queue_wait == Latency.empty()
        assert m.service_time.count == 0 and m.service_time.p99 == 0.0
