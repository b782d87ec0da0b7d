"""Prometheus exposition of shardflow pools, breakers and limiters.

Needs ``prometheus_client`` (``pip install 'shardflow[prometheus]'``). A
:class:`ShardflowCollector` is a custom collector: on every scrape it takes one
``snapshot()`` per pool (no lock, workers are not paused) and reads the guards' counters,
so there is nothing to update from your code.

Families (conventional names and units; ``pool`` is the pool's ``name``):

========================================  =========  ======================================
name                                      type       labels
========================================  =========  ======================================
shardflow_submitted_total                 counter    pool, shard
shardflow_processed_total                 counter    pool, shard
shardflow_failed_total                    counter    pool, shard
shardflow_dead_lettered_total             counter    pool, shard
shardflow_dropped_total                   counter    pool, shard
shardflow_returned_total                  counter    pool, shard
shardflow_batches_total                   counter    pool, shard (handler calls)
shardflow_stolen_total                    counter    pool, shard (items this shard stole)
shardflow_queue_depth                     gauge      pool, shard
shardflow_queue_high_water                gauge      pool, shard
shardflow_in_flight                       gauge      pool (taken by workers, not finished)
shardflow_workers                         gauge      pool (live worker threads)
shardflow_queue_wait_seconds              histogram  pool (submit -> taken; sampled 1/64)
shardflow_service_time_seconds            histogram  pool (handler duration; per-item
                                                     handlers sampled 1/16)
shardflow_breaker_state                   gauge      pool, name, state (1 for the current)
shardflow_breaker_calls_total             counter    pool, name
shardflow_breaker_failures_total          counter    pool, name
shardflow_breaker_slow_calls_total        counter    pool, name
shardflow_breaker_rejections_total        counter    pool, name
shardflow_breaker_failure_rate            gauge      pool, name
shardflow_limiter_concurrency             gauge      pool, name
shardflow_limiter_in_use                  gauge      pool, name
shardflow_limiter_waiting                 gauge      pool, name
shardflow_limiter_timeouts_total          counter    pool, name
shardflow_limiter_waited_total            counter    pool, name
shardflow_rate_limiter_rate               gauge      pool, name (tokens per second)
shardflow_rate_limiter_available_tokens   gauge      pool, name
shardflow_rate_limiter_acquired_total     counter    pool, name
shardflow_rate_limiter_rejected_total     counter    pool, name
========================================  =========  ======================================

Guards (breaker, limiter, rate limiter) attached to a pool are exposed with that pool's
name in ``pool``; guards passed on their own have ``pool=""``. ``name`` is the guard's
``name`` attribute when it has one, else its kind and position (``limiter-0``).
Histogram buckets are the coarse bounds of ``Latency.buckets()`` (1 us to 60 s); the
latency histograms are per pool (merged over shards) to keep the series count small.

Example:
    >>> import shardflow
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from shardflow.prometheus import register
    >>> registry = CollectorRegistry()
    >>> with shardflow.ShardedPool(lambda item: None, workers=2, name="jobs") as pool:
    ...     _ = register(pool, registry=registry)
    ...     _ = pool.submit_many(range(100))
    >>> b'shardflow_processed_total{pool="jobs",shard="0"}' in generate_latest(registry)
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "shardflow.prometheus needs prometheus_client: pip install 'shardflow[prometheus]'"
    ) from exc

from shardflow.metrics import Latency
from shardflow.resilience.breaker import BreakerState, CircuitBreaker
from shardflow.resilience.limiter import Limiter
from shardflow.resilience.ratelimiter import RateLimiter

if TYPE_CHECKING:
    from shardflow.pool import ShardedPool

__all__ = ["ShardflowCollector", "register"]

_SHARD_COUNTERS = (
    # (family name without _total, ShardMetrics field, help)
    ("submitted", "submitted", "Items routed to the shard (queued or dropped)."),
    ("processed", "processed", "Items whose handler call returned."),
    ("failed", "failed", "Items whose handler call raised (not dead-lettered)."),
    ("dead_lettered", "dead_lettered", "Failed items handed to the dead letter."),
    ("dropped", "dropped", 'Items refused by on_full="drop".'),
    ("returned", "returned", "Items handed back by shutdown(cancel=True)."),
    ("batches", "batches", "Handler calls."),
    ("stolen", "stolen_in", "Items this shard's worker stole from other shards."),
)


def _le(bound: float) -> str:
    # prometheus_client's own spelling (floatToGoString): "+Inf", "1e-06", "0.25", "1.0"
    return "+Inf" if math.isinf(bound) else repr(bound)


def _pool_class() -> type[Any]:
    from shardflow.pool import ShardedPool  # late: pool imports this package's modules

    return ShardedPool


class ShardflowCollector(Collector):
    """A ``prometheus_client`` collector for pools and guards.

    Args:
        *objects: ``ShardedPool`` instances (their attached breaker, limiter and rate
            limiter come along), and standalone ``CircuitBreaker``, ``Limiter`` and
            ``RateLimiter`` instances. The collector keeps references to them.
        registry: a ``CollectorRegistry`` to register with now; None registers nowhere
            (use ``register()`` or ``registry.register(collector)``).

    Raises:
        TypeError: for an object of any other type.

    Example:
        >>> import shardflow
        >>> from prometheus_client import CollectorRegistry
        >>> from shardflow.prometheus import ShardflowCollector
        >>> breaker = shardflow.CircuitBreaker(name="db")
        >>> registry = CollectorRegistry()
        >>> _ = ShardflowCollector(breaker, registry=registry)
        >>> registry.get_sample_value(
        ...     "shardflow_breaker_state", {"pool": "", "name": "db", "state": "closed"})
        1.0
    """

    def __init__(self, *objects: Any, registry: CollectorRegistry | None = None) -> None:
        pool_cls = _pool_class()
        accepted = (pool_cls, CircuitBreaker, Limiter, RateLimiter)
        for i, obj in enumerate(objects):
            if not isinstance(obj, accepted):
                raise TypeError(
                    f"objects[{i}] must be a ShardedPool, CircuitBreaker, Limiter or "
                    f"RateLimiter, got {type(obj).__name__}"
                )
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"registry must be a prometheus_client CollectorRegistry or None, got "
                f"{type(registry).__name__}"
            )
        self._objects: tuple[Any, ...] = objects
        if registry is not None:
            registry.register(self)

    def _guards(self) -> Iterator[tuple[str, str, Any]]:
        """(pool label, name label, guard) for every guard, attached or standalone.

        Each guard is exported once, whatever the number of times it is reachable (passed
        on its own and attached to a pool, or shared by two pools): under the first pool
        it is attached to, else with ``pool=""``. Exporting it twice would make sums over
        the ``pool`` label count its calls twice."""
        pool_cls = _pool_class()
        seen: dict[str, int] = {}
        done: set[int] = set()

        def label(obj: Any, kind: str) -> str:
            name = getattr(obj, "name", None)
            if isinstance(name, str) and name:
                return name
            n = seen.get(kind, 0)
            seen[kind] = n + 1
            return f"{kind}-{n}"

        found: list[tuple[str, str, Any]] = []
        for obj in self._objects:
            if isinstance(obj, pool_cls):
                for attr in ("breaker", "limiter", "rate_limiter"):
                    g = getattr(obj, attr, None)
                    if g is not None:
                        found.append((obj.name, attr, g))
        for obj in self._objects:
            if isinstance(obj, CircuitBreaker):
                found.append(("", "breaker", obj))
            elif isinstance(obj, Limiter):
                found.append(("", "limiter", obj))
            elif isinstance(obj, RateLimiter):
                found.append(("", "rate_limiter", obj))
        for pool_label, kind, g in found:
            if id(g) not in done:
                done.add(id(g))
                yield pool_label, label(g, kind), g

    def collect(self) -> Iterator[Metric]:
        """Called by the registry on every scrape."""
        pool_cls = _pool_class()
        pools: list[ShardedPool[Any]] = [o for o in self._objects if isinstance(o, pool_cls)]
        for fam in (*self._collect_pools(pools), *self._collect_guards(list(self._guards()))):
            if fam.samples:  # no HELP/TYPE lines for kinds of objects not collected
                yield fam

    def _collect_pools(self, pools: list[ShardedPool[Any]]) -> Iterator[Metric]:
        shard_labels = ["pool", "shard"]
        counters = {
            fam: CounterMetricFamily(f"shardflow_{fam}", doc, labels=shard_labels)
            for fam, _, doc in _SHARD_COUNTERS
        }
        depth = GaugeMetricFamily(
            "shardflow_queue_depth", "Items queued in the shard now.", labels=shard_labels
        )
        high = GaugeMetricFamily(
            "shardflow_queue_high_water",
            "Deepest queue the shard's worker found when it drained.",
            labels=shard_labels,
        )
        in_flight = GaugeMetricFamily(
            "shardflow_in_flight",
            "Items taken by workers and not finished yet.",
            labels=["pool"],
        )
        workers = GaugeMetricFamily("shardflow_workers", "Live worker threads.", labels=["pool"])
        hists = {
            "queue_wait": HistogramMetricFamily(
                "shardflow_queue_wait_seconds",
                "Time from submit until a worker took the item (sampled: 1 item in 64).",
                labels=["pool"],
            ),
            "service_time": HistogramMetricFamily(
                "shardflow_service_time_seconds",
                "Handler call duration (per-item handlers: 1 call in 16).",
                labels=["pool"],
            ),
        }
        for pool in pools:
            m = pool.snapshot()
            for s in m.shards:
                labels = [m.pool, str(s.index)]
                for fam, field, _ in _SHARD_COUNTERS:
                    counters[fam].add_metric(labels, getattr(s, field))
                depth.add_metric(labels, s.depth)
                high.add_metric(labels, s.high_water)
            in_flight.add_metric([m.pool], max(0, m.unfinished - m.depth))
            workers.add_metric([m.pool], pool.live_workers)
            for attr, hfam in hists.items():
                lat: Latency = getattr(m, attr)
                hfam.add_metric(
                    [m.pool],
                    buckets=[(_le(le), cum) for le, cum in lat.buckets()],
                    sum_value=lat.sum,
                )
        yield from counters.values()
        yield from (depth, high, in_flight, workers)
        yield from hists.values()

    def _collect_guards(self, guards: list[tuple[str, str, Any]]) -> Iterator[Metric]:
        lb = ["pool", "name"]
        b_state = GaugeMetricFamily(
            "shardflow_breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            labels=[*lb, "state"],
        )
        b_counts = {
            f: CounterMetricFamily(f"shardflow_breaker_{f}", doc, labels=lb)
            for f, doc in (
                ("calls", "Outcomes recorded."),
                ("failures", "Failed calls recorded."),
                ("slow_calls", "Slow calls recorded."),
                ("rejections", "Calls refused while open."),
            )
        }
        b_rate = GaugeMetricFamily(
            "shardflow_breaker_failure_rate",
            "Failure rate (0..1) over the window, or over all calls without one.",
            labels=lb,
        )
        l_gauges = {
            f: GaugeMetricFamily(f"shardflow_limiter_{f}", doc, labels=lb)
            for f, doc in (
                ("concurrency", "Permits in total."),
                ("in_use", "Permits held now."),
                ("waiting", "Threads and tasks waiting for a permit now."),
            )
        }
        l_counts = {
            f: CounterMetricFamily(f"shardflow_limiter_{f}", doc, labels=lb)
            for f, doc in (
                ("timeouts", "Acquires that gave up."),
                ("waited", "Acquires that succeeded after waiting."),
            )
        }
        r_rate = GaugeMetricFamily(
            "shardflow_rate_limiter_rate", "Tokens added per second.", labels=lb
        )
        r_avail = GaugeMetricFamily(
            "shardflow_rate_limiter_available_tokens", "Tokens available now.", labels=lb
        )
        r_counts = {
            f: CounterMetricFamily(f"shardflow_rate_limiter_{f}", doc, labels=lb)
            for f, doc in (
                ("acquired", "Tokens handed out."),
                ("rejected", "Acquires refused or timed out."),
            )
        }
        for pool_name, name, g in guards:
            labels = [pool_name, name]
            if isinstance(g, CircuitBreaker):
                bm = g.metrics()
                for st in BreakerState:
                    b_state.add_metric([*labels, st.value], 1.0 if bm.state is st else 0.0)
                for f, fam in b_counts.items():
                    fam.add_metric(labels, getattr(bm, f))
                b_rate.add_metric(labels, bm.failure_rate)
            elif isinstance(g, Limiter):
                lm = g.metrics()
                for f, gfam in l_gauges.items():
                    gfam.add_metric(labels, getattr(lm, f))
                for f, fam in l_counts.items():
                    fam.add_metric(labels, getattr(lm, f))
            else:
                rm = g.metrics()
                r_rate.add_metric(labels, rm.rate)
                r_avail.add_metric(labels, rm.available)
                for f, fam in r_counts.items():
                    fam.add_metric(labels, getattr(rm, f))
        yield b_state
        yield from b_counts.values()
        yield b_rate
        yield from l_gauges.values()
        yield from l_counts.values()
        yield from (r_rate, r_avail)
        yield from r_counts.values()


def register(*objects: Any, registry: CollectorRegistry | None = None) -> ShardflowCollector:
    """Create a ``ShardflowCollector`` for ``objects`` and register it with ``registry``
    (default: ``prometheus_client.REGISTRY``, what ``start_http_server`` serves).
    Returns the collector (``registry.unregister(collector)`` removes it)."""
    return ShardflowCollector(*objects, registry=REGISTRY if registry is None else registry)
