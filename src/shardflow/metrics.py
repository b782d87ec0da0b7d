"""Snapshots of a pool's counters and latency histograms, as plain frozen dataclasses.

``ShardedPool.snapshot()`` (alias ``metrics()``) returns a :class:`PoolMetrics`; the
difference of two snapshots of one pool, ``later - earlier``, is a :class:`MetricsDelta`
with the counts and rates over the interval.

Latencies are recorded by the compiled core into log-linear histograms (HdrHistogram's
layout, 128 sub-buckets per power of two, 1 ns to ~18 minutes): values below 256 ns have a
bucket each, larger ones share a bucket with values within 1/128 of them. Every recorded
value is represented by its bucket's upper bound (capped at the exact maximum), in
percentiles and in :meth:`Latency.buckets` alike: a reported percentile is never below the
exact order statistic of the recorded values and at most 0.8% above it (the documented
bound is 1%), so latency objectives are never met on paper only.

What is recorded:

* ``queue_wait``: from ``submit`` to a worker taking the item from its queue. Sampled:
  one item in min(64, capacity) carries a submit time (the producer reads the clock once
  per 64 items, not per item), so counts are samples, not items. A worker records what it
  takes from its own queue and what it steals; a single drain reports at most 64 samples
  (drains are at most 4,096 items unless ``batch_size`` is larger).
* ``service_time``: how long the handler ran. Batch handlers (lists): every call. Per-item
  handlers: one call in 16, so that the per-item path does not pay two clock reads per item.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Latency", "MetricsDelta", "PoolMetrics", "RowMetrics", "ShardMetrics", "StageRows"]

_SUB_BITS = 7  # log2 of the sub-buckets per power of two; as SF_HIST_SUB_BITS in _hist.h
_SUB = 1 << _SUB_BITS

#: Upper bounds (seconds) of the coarse buckets that :meth:`Latency.buckets` reports: the
#: 1-2.5-5 series from 1 microsecond to 10 s, then 30 s, 60 s and +Inf (Prometheus ``le``).
COARSE_BOUNDS: tuple[float, ...] = (
    *(float(f"{m}e{e}") for e in range(-6, 1) for m in ("1", "2.5", "5")),
    10.0,
    30.0,
    60.0,
    math.inf,
)

Buckets = tuple[tuple[int, int], ...]  # (bucket index, count) of the non-empty buckets


def bucket_bounds(index: int) -> tuple[int, int]:
    """The values (ns, inclusive) that histogram bucket ``index`` holds (see _hist.h)."""
    if index < 2 * _SUB:
        return index, index
    shift = index // _SUB - 1
    mant = index - shift * _SUB
    return mant << shift, ((mant + 1) << shift) - 1


def _represent_ns(index: int, max_ns: int) -> int:
    # The bucket's upper bound, capped at the exact maximum: never below the true value.
    return min(bucket_bounds(index)[1], max_ns)


@dataclass(frozen=True, repr=False)
class Latency:
    """A latency distribution; every time is in seconds (float).

    ``count`` values were recorded, adding up to ``sum``, the largest being ``max``
    (exact). Percentiles are computed from the histogram: each value is represented by its
    bucket's upper bound capped at ``max``, so a percentile is never below the exact order
    statistic and at most 0.8% above it (documented bound: 1%). An empty distribution
    reports 0.0 everywhere. The percentiles are computed when first read, so taking a
    snapshot costs no percentile arithmetic nobody asks for.

    Example:
        >>> import shardflow
        >>> with shardflow.ShardedPool(lambda batch: None, batch_size=8, workers=1) as pool:
        ...     _ = pool.submit_many(range(100))
        >>> lat = pool.snapshot().service_time
        >>> lat.count > 0 and 0.0 <= lat.p50 <= lat.p99 <= lat.max
        True
    """

    count: int
    sum: float
    max: float
    #: the non-empty buckets as native uint64 pairs (index, count), in index order
    _packed: bytes = field(default=b"", repr=False)
    _max_ns: int = field(default=0, repr=False)
    _sum_ns: int = field(default=0, repr=False)

    @classmethod
    def empty(cls) -> Latency:
        """No values recorded."""
        return _EMPTY

    @classmethod
    def from_histogram(
        cls, sum_ns: int, max_ns: int, buckets: Iterable[tuple[int, int]]
    ) -> Latency:
        """Build from raw histogram data: total ns, maximum ns and (index, count) pairs
        (indices as in ``bucket_bounds``)."""
        bk = sorted((int(i), int(c)) for i, c in buckets if c > 0)
        return cls.from_packed(sum_ns, max_ns, array("Q", chain.from_iterable(bk)).tobytes())

    @classmethod
    def from_packed(cls, sum_ns: int, max_ns: int, packed: bytes) -> Latency:
        """Build from what the compiled core returns: total ns, maximum ns and the
        non-empty buckets as native uint64 (index, count) pairs in index order."""
        count = sum(memoryview(packed).cast("Q")[1::2]) if packed else 0
        if count == 0:
            return _EMPTY
        return cls(
            count=count,
            sum=sum_ns / 1e9,
            max=max_ns / 1e9,
            _packed=packed,
            _max_ns=max_ns,
            _sum_ns=sum_ns,
        )

    @classmethod
    def merge(cls, parts: Iterable[Latency]) -> Latency:
        """One distribution holding every value of ``parts`` (e.g. all shards)."""
        acc: dict[int, int] = {}
        total = 0
        mx = 0
        for p in parts:
            for i, c in p._buckets:
                acc[i] = acc.get(i, 0) + c
            total += p._sum_ns
            mx = max(mx, p._max_ns)
        return cls.from_histogram(total, mx, acc.items())

    @cached_property
    def _buckets(self) -> Buckets:
        words = memoryview(self._packed).cast("Q")
        return tuple(zip(words[::2], words[1::2], strict=True))

    @cached_property
    def p50(self) -> float:
        """Median (seconds)."""
        return self.percentile(50.0)

    @cached_property
    def p90(self) -> float:
        """90th percentile (seconds)."""
        return self.percentile(90.0)

    @cached_property
    def p99(self) -> float:
        """99th percentile (seconds)."""
        return self.percentile(99.0)

    @cached_property
    def p999(self) -> float:
        """99.9th percentile (seconds)."""
        return self.percentile(99.9)

    def __repr__(self) -> str:
        return (
            f"Latency(count={self.count}, p50={self.p50!r}, p90={self.p90!r}, "
            f"p99={self.p99!r}, p999={self.p999!r}, max={self.max!r}, sum={self.sum!r})"
        )

    @property
    def mean(self) -> float:
        """Average (seconds); 0.0 when empty."""
        return self.sum / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (q in [0, 100]) in seconds: the smallest recorded value with
        at least q% of the values at or below it (numpy's ``method="inverted_cdf"``),
        represented by its bucket's upper bound; ``percentile(100) == max``."""
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise TypeError(f"q must be a number in [0, 100], got {type(q).__name__}")
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be a number in [0, 100], got {q!r}")
        if self.count == 0:
            return 0.0
        return _percentile_ns(self._buckets, self.count, self._max_ns, float(q)) / 1e9

    def buckets(self) -> list[tuple[float, int]]:
        """Cumulative counts for the coarse bounds of ``COARSE_BOUNDS``: a list of (upper
        bound in seconds, number of values <= it), the last bound being ``inf`` with
        ``count``; the shape of a Prometheus histogram's ``le`` buckets."""
        out: list[tuple[float, int]] = []
        k = 0
        cum = 0
        bk = self._buckets
        for le in COARSE_BOUNDS:
            le_ns = le * 1e9
            while k < len(bk) and _represent_ns(bk[k][0], self._max_ns) <= le_ns:
                cum += bk[k][1]
                k += 1
            out.append((le, cum))
        return out

    def __sub__(self, earlier: Latency) -> Latency:
        """The values recorded after ``earlier`` (a previous reading of the same
        histograms). ``max`` becomes the largest representative value of the interval."""
        if not isinstance(earlier, Latency):
            return NotImplemented
        acc = dict(self._buckets)
        for i, c in earlier._buckets:
            acc[i] = acc.get(i, 0) - c
        if any(c < 0 for c in acc.values()):
            raise ValueError(
                "earlier has values this Latency lacks: subtract an earlier snapshot of the "
                "same histograms from a later one"
            )
        live = [(i, c) for i, c in acc.items() if c > 0]
        if not live:
            return _EMPTY
        top = max(i for i, _ in live)
        mx = min(self._max_ns, bucket_bounds(top)[1])
        return Latency.from_histogram(max(0, self._sum_ns - earlier._sum_ns), mx, live)


def _percentile_ns(bk: Buckets, count: int, max_ns: int, q: float) -> float:
    if q >= 100.0:
        return float(max_ns)
    r = q * count / 100.0
    # Nearest rank; the epsilon keeps q * count / 100 == 99.00000000000001 at rank 99.
    rank = max(1, math.ceil(r - 1e-9 * max(1.0, r)))
    cum = 0
    for i, c in bk:
        cum += c
        if cum >= rank:
            return float(_represent_ns(i, max_ns))
    return float(max_ns)


_EMPTY = Latency(count=0, sum=0.0, max=0.0)


@dataclass(frozen=True)
class ShardMetrics:
    """Counters of one shard (one worker and its queue).

    ``submitted`` counts items routed to this shard (queued or dropped); the other
    counters count what this shard's worker did. Each field is exact and monotonic, but a
    snapshot taken while the pool runs is not an atomic cut across fields. The latencies
    are what this shard's worker recorded (including items it stole from other shards).
    """

    index: int
    submitted: int
    processed: int
    failed: int
    dropped: int
    returned: int
    depth: int  #: items queued right now
    high_water: int  #: deepest queue the worker found when it drained
    batches: int  #: handler calls
    stolen_in: int = 0
    stolen_out: int = 0
    dead_lettered: int = 0
    queue_wait: Latency = _EMPTY
    service_time: Latency = _EMPTY


#: The counters a :class:`MetricsDelta` holds and ``rate()`` accepts.
DELTA_COUNTERS = (
    "submitted",
    "processed",
    "failed",
    "dropped",
    "returned",
    "batches",
    "dead_lettered",
)

#: One field per counter in ``PoolMetrics.to_numpy()`` rows (all int64), then latencies.
_NUMPY_INT_FIELDS = (
    "index",
    "submitted",
    "processed",
    "failed",
    "dropped",
    "returned",
    "depth",
    "high_water",
    "batches",
    "stolen_in",
    "stolen_out",
    "dead_lettered",
)
_NUMPY_LAT_FIELDS = ("count", "sum", "max", "p50", "p99")


@dataclass(frozen=True)
class PoolMetrics:
    """Totals over all shards plus the per-shard detail, taken at ``taken_at``
    (``time.monotonic()``).

    Once the pool is joined:
    ``submitted == processed + failed + dead_lettered + dropped + returned``.
    ``later - earlier`` (two snapshots of the same pool) is a :class:`MetricsDelta`.

    Example:
        >>> import shardflow
        >>> pool = shardflow.ShardedPool(lambda item: None, workers=2)
        >>> before = pool.snapshot()
        >>> pool.submit_many(range(1000))
        1000
        >>> pool.shutdown()
        []
        >>> delta = pool.snapshot() - before
        >>> delta.processed, delta.rate("processed") > 0
        (1000, True)
    """

    submitted: int
    processed: int
    failed: int
    dropped: int
    returned: int
    depth: int
    batches: int
    shards: tuple[ShardMetrics, ...]
    dead_lettered: int = 0
    pool: str = ""  #: the pool's name
    taken_at: float = 0.0  #: time.monotonic() when the snapshot was taken
    queue_wait: Latency = _EMPTY  #: all shards merged
    service_time: Latency = _EMPTY  #: all shards merged
    #: identifies the pool instance (names may repeat); 0 for hand-made snapshots
    pool_id: int = field(default=0, repr=False)

    @classmethod
    def from_shards(
        cls,
        shards: tuple[ShardMetrics, ...],
        *,
        pool: str = "",
        taken_at: float = 0.0,
        pool_id: int = 0,
        queue_wait: Latency | None = None,
        service_time: Latency | None = None,
    ) -> PoolMetrics:
        """Totals of ``shards``; the latencies merged, unless given (the pool passes the
        merge the compiled core already did)."""
        return cls(
            submitted=sum(s.submitted for s in shards),
            processed=sum(s.processed for s in shards),
            failed=sum(s.failed for s in shards),
            dropped=sum(s.dropped for s in shards),
            returned=sum(s.returned for s in shards),
            depth=sum(s.depth for s in shards),
            batches=sum(s.batches for s in shards),
            shards=shards,
            dead_lettered=sum(s.dead_lettered for s in shards),
            pool=pool,
            taken_at=taken_at,
            queue_wait=(
                Latency.merge(s.queue_wait for s in shards) if queue_wait is None else queue_wait
            ),
            service_time=(
                Latency.merge(s.service_time for s in shards)
                if service_time is None
                else service_time
            ),
            pool_id=pool_id,
        )

    @property
    def unfinished(self) -> int:
        """Items submitted and not yet accounted for (queued or being handled)."""
        return (
            self.submitted
            - self.processed
            - self.failed
            - self.dead_lettered
            - self.dropped
            - self.returned
        )

    def to_numpy(self) -> np.ndarray[Any, Any]:
        """The per-shard counters as a numpy structured array, one row per shard.

        Fields: ``index``, every integer counter of :class:`ShardMetrics` (int64), and
        ``queue_wait_{count,sum,max,p50,p99}`` / ``service_time_...`` (count int64, the
        rest float64 seconds). Needs numpy (``pip install 'shardflow[numpy]'``).

        Example:
            >>> import shardflow
            >>> with shardflow.ShardedPool(lambda item: None, workers=2) as pool:
            ...     _ = pool.submit_many(range(10))
            >>> rows = pool.snapshot().to_numpy()
            >>> int(rows["processed"].sum()), len(rows)
            (10, 2)
        """
        try:
            import numpy as np
        except ImportError as exc:
            raise ImportError(
                "PoolMetrics.to_numpy() needs numpy: pip install 'shardflow[numpy]'"
            ) from exc
        dtype: list[tuple[str, Any]] = [(f, np.int64) for f in _NUMPY_INT_FIELDS]
        for prefix in ("queue_wait", "service_time"):
            for f in _NUMPY_LAT_FIELDS:
                dtype.append((f"{prefix}_{f}", np.int64 if f == "count" else np.float64))
        rows = []
        for s in self.shards:
            row: list[float] = [getattr(s, f) for f in _NUMPY_INT_FIELDS]
            for lat in (s.queue_wait, s.service_time):
                row.extend(getattr(lat, f) for f in _NUMPY_LAT_FIELDS)
            rows.append(tuple(row))
        return np.array(rows, dtype=dtype)

    def __sub__(self, earlier: PoolMetrics) -> MetricsDelta:
        if not isinstance(earlier, PoolMetrics):
            return NotImplemented
        if earlier.pool_id != self.pool_id or earlier.pool != self.pool:
            raise ValueError(
                f"cannot subtract snapshots of different pools ({self.pool!r} - "
                f"{earlier.pool!r}): take both from the same pool"
            )
        if earlier.taken_at > self.taken_at:
            raise ValueError(
                f"wrong order: the snapshot subtracted was taken later ({earlier.taken_at}) "
                f"than this one ({self.taken_at}); compute later - earlier"
            )
        counts = {n: getattr(self, n) - getattr(earlier, n) for n in DELTA_COUNTERS}
        if any(v < 0 for v in counts.values()):
            raise ValueError(
                "counters went backwards between the snapshots: compute later - earlier "
                "with snapshots of the same pool"
            )
        return MetricsDelta(
            pool=self.pool,
            interval=self.taken_at - earlier.taken_at,
            depth=self.depth,
            queue_wait=self.queue_wait - earlier.queue_wait,
            service_time=self.service_time - earlier.service_time,
            **counts,
        )


@dataclass(frozen=True)
class MetricsDelta:
    """What a pool did between two snapshots: ``later - earlier``.

    Counter fields hold the increase over the ``interval`` (seconds); ``depth`` is the
    queue depth at the later snapshot; the latencies hold the values recorded in the
    interval. ``rate(name)`` divides a counter by the interval (0.0 for a zero interval).
    """

    pool: str
    interval: float
    submitted: int
    processed: int
    failed: int
    dropped: int
    returned: int
    batches: int
    dead_lettered: int
    depth: int
    queue_wait: Latency
    service_time: Latency

    def rate(self, name: str) -> float:
        """Per-second rate of counter ``name`` (one of ``DELTA_COUNTERS``)."""
        if name not in DELTA_COUNTERS:
            raise ValueError(f"name must be one of {', '.join(DELTA_COUNTERS)}; got {name!r}")
        value: int = getattr(self, name)
        return value / self.interval if self.interval > 0 else 0.0

    @property
    def processed_per_s(self) -> float:
        """Items handled successfully per second."""
        return self.rate("processed")

    @property
    def submitted_per_s(self) -> float:
        """Items submitted per second."""
        return self.rate("submitted")

    @property
    def failed_per_s(self) -> float:
        """Handler failures per second."""
        return self.rate("failed")

    def as_dict(self) -> dict[str, Any]:
        """Counter fields and interval as a plain dict (latencies left out)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("queue_wait", "service_time")
        }


@dataclass(frozen=True)
class RowMetrics:
    """Row counts of an array pool (``ShardedPool(arrays=True)``, fed by
    ``submit_array``), from ``pool.row_metrics()``. ``metrics()`` counts the pool's items,
    which there are array *batches*; these count their rows. Exact once the pool is
    drained (``flush()``, ``join()``)::

        submitted == processed + failed + dead_lettered + dropped + returned

    and ``pending`` (rows queued or running) is 0 then."""

    submitted: int  #: rows queued by submit_array (dropped rows included)
    processed: int  #: rows of batches the handler returned from
    failed: int  #: rows of batches that failed and went to on_error / the log
    dead_lettered: int  #: rows of batches a dead letter took
    dropped: int  #: rows of batches refused by on_full="drop"
    returned: int  #: rows of batches handed back by shutdown(cancel=True)
    pool: str = ""  #: the pool's name

    @property
    def pending(self) -> int:
        """Rows queued or being handled: ``submitted`` minus every outcome."""
        return self.submitted - (
            self.processed + self.failed + self.dead_lettered + self.dropped + self.returned
        )

    def as_dict(self) -> dict[str, Any]:
        """The counters (and ``pending``) as a plain dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["pending"] = self.pending
        return out


@dataclass(frozen=True)
class StageRows:
    """Row counts of one array stage of a ``Pipeline`` (``map_batches``), from
    ``Pipeline.row_report()``; ``StageReport`` counts the same stage's batches. Exact
    once the pipeline finished::

        received == succeeded + failed

    ``failed`` covers the batches whose function raised, whether they then went to a
    dead letter or stopped the pipeline. ``emitted``: rows of the batches the function
    returned (it may drop or add rows), the next array stage's ``received``."""

    name: str
    received: int
    succeeded: int
    failed: int
    emitted: int

    @property
    def balanced(self) -> bool:
        """``received == succeeded + failed``."""
        return self.received == self.succeeded + self.failed
