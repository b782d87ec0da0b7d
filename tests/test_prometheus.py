"""``shardflow.prometheus``: the exposition, parsed back with prometheus_client's parser."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import shardflow
from shardflow.prometheus import ShardflowCollector, register


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    """Family name -> family, from the text exposition (as a Prometheus server reads it)."""
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam: Any, sample: str | None = None, **labels: str) -> list[Any]:
    return [
        s
        for s in fam.samples
        if (sample is None or s.name == sample)
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_pool_counters_gauges_and_histograms_are_exposed() -> None:
    registry = CollectorRegistry()
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        lambda batch: None, workers=2, batch_size=8, name="jobs"
    )
    ShardflowCollector(pool, registry=registry)
    pool.submit_many(range(1000))
    pool.shutdown()
    m = pool.snapshot()
    fams = scrape(registry)

    processed = fams["shardflow_processed"]
    assert processed.type == "counter"
    by_shard = {s.labels["shard"]: s.value for s in samples(processed, "shardflow_processed_total")}
    assert by_shard == {str(s.index): float(s.processed) for s in m.shards}
    assert sum(by_shard.values()) == 1000
    for fam in ("submitted", "failed", "dropped", "returned", "dead_lettered", "batches", "stolen"):
        assert fams[f"shardflow_{fam}"].type == "counter"
        assert {s.labels["pool"] for s in fams[f"shardflow_{fam}"].samples} == {"jobs"}
    assert fams["shardflow_queue_depth"].type == "gauge"
    assert fams["shardflow_in_flight"].samples[0].value == 0.0
    assert fams["shardflow_workers"].samples[0].value == 0.0  # joined

    st = fams["shardflow_service_time_seconds"]
    assert st.type == "histogram"
    count = samples(st, "shardflow_service_time_seconds_count", pool="jobs")[0].value
    total = samples(st, "shardflow_service_time_seconds_sum", pool="jobs")[0].value
    assert count == m.service_time.count == m.batches
    assert total == pytest.approx(m.service_time.sum)
    buckets = samples(st, "shardflow_service_time_seconds_bucket")
    les = [float(s.labels["le"]) for s in buckets]
    assert les == sorted(les) and les[-1] == math.inf
    values = [s.value for s in buckets]
    assert values == sorted(values) and values[-1] == count
    qw = fams["shardflow_queue_wait_seconds"]
    assert samples(qw, "shardflow_queue_wait_seconds_count")[0].value == m.queue_wait.count


def test_gauges_follow_a_live_pool() -> None:
    import threading

    release = threading.Event()
    entered = threading.Event()

    def handler(item: int) -> None:
        entered.set()
        release.wait(30)

    registry = CollectorRegistry()
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(handler, workers=1, name="live")
    register(pool, registry=registry)
    try:
        pool.submit(0)
        assert entered.wait(30)
        pool.submit_many(range(1, 6))
        fams = scrape(registry)
        assert fams["shardflow_queue_depth"].samples[0].value == 5.0
        assert fams["shardflow_in_flight"].samples[0].value == 1.0
        assert fams["shardflow_workers"].samples[0].value == 1.0
    finally:
        release.set()
        pool.shutdown()


def test_guards_of_a_pool_and_standalone_guards() -> None:
    breaker = shardflow.CircuitBreaker(name="db")
    limiter = shardflow.Limiter(3)
    rl = shardflow.RateLimiter(rate=100.0, burst=10)
    lone = shardflow.CircuitBreaker()
    registry = CollectorRegistry()
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        lambda item: None, workers=1, name="p", breaker=breaker, limiter=limiter, rate_limiter=rl
    )
    ShardflowCollector(pool, lone, shardflow.Limiter(2), registry=registry)
    pool.submit_many(range(5))
    pool.shutdown()
    lone.trip()
    fams = scrape(registry)

    states = {
        (s.labels["pool"], s.labels["name"], s.labels["state"]): s.value
        for s in fams["shardflow_breaker_state"].samples
    }
    assert states[("p", "db", "closed")] == 1.0 and states[("p", "db", "open")] == 0.0
    assert states[("", "breaker-0", "open")] == 1.0
    calls = samples(fams["shardflow_breaker_calls"], "shardflow_breaker_calls_total", name="db")
    assert calls[0].value == 5.0
    conc = {s.labels["pool"]: s.value for s in fams["shardflow_limiter_concurrency"].samples}
    assert conc == {"p": 3.0, "": 2.0}
    assert fams["shardflow_limiter_timeouts"].type == "counter"
    acquired = samples(
        fams["shardflow_rate_limiter_acquired"], "shardflow_rate_limiter_acquired_total"
    )
    assert acquired[0].value == 5.0 and acquired[0].labels == {
        "pool": "p",
        "name": "rate_limiter-0",
    }
    assert fams["shardflow_rate_limiter_rate"].samples[0].value == 100.0


def test_families_of_kinds_not_collected_are_left_out() -> None:
    registry = CollectorRegistry()
    ShardflowCollector(shardflow.Limiter(1), registry=registry)
    names = set(scrape(registry))
    assert "shardflow_limiter_in_use" in names
    assert not any(n.startswith(("shardflow_breaker", "shardflow_processed")) for n in names)


def test_register_defaults_to_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    collector = register(shardflow.Limiter(1))
    try:
        assert (
            REGISTRY.get_sample_value(
                "shardflow_limiter_concurrency", {"pool": "", "name": "limiter-0"}
            )
            == 1.0
        )
    finally:
        REGISTRY.unregister(collector)


@pytest.mark.parametrize("bad", [object(), "pool", None])
def test_bad_objects_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match=r"objects\[0\] must be a ShardedPool, CircuitBreaker"):
        ShardflowCollector(bad)


def test_bad_registry_is_refused() -> None:
    with pytest.raises(TypeError, match="registry must be a prometheus_client CollectorRegistry"):
        ShardflowCollector(shardflow.Limiter(1), registry="default")  # type: ignore[arg-type]


def test_import_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in list(sys.modules):
        if mod == "prometheus_client" or mod.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "shardflow.prometheus", raising=False)
    with pytest.raises(ImportError, match=r"shardflow\[prometheus\]"):
        import shardflow.prometheus  # noqa: F401


def test_a_guard_reachable_twice_is_exported_once() -> None:
    # Passed on its own and attached to two pools: one series set, under the first pool,
    # so that sums over the pool label do not count its calls two or three times.
    breaker = shardflow.CircuitBreaker(name="shared")
    registry = CollectorRegistry()
    pools = [
        shardflow.ShardedPool(lambda item: None, workers=1, name=n, breaker=breaker)
        for n in ("a", "b")
    ]
    ShardflowCollector(breaker, *pools, registry=registry)
    for pool in pools:
        pool.submit_many(range(3))
        pool.shutdown()
    fams = scrape(registry)
    calls = samples(fams["shardflow_breaker_calls"], "shardflow_breaker_calls_total")
    assert [(s.labels, s.value) for s in calls] == [({"pool": "a", "name": "shared"}, 6.0)]
