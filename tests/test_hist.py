"""The latency histograms of the compiled core (ext/shardflow/_hist.h) and ``Latency``.

Known values go through a test hook (``_HistogramHook``) into the same C histogram the
shards use; percentiles are compared with numpy's nearest-rank definition
(``method="inverted_cdf"``) within the documented error: never below, at most 1% above.
The pool tests check what is recorded (counts, sampling) and plausibility (a handler that
sleeps 20 ms has a service p50 of at least 20 ms); no upper bound on time is asserted.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

import shardflow
from helpers import WAIT, Gate
from shardflow._worker import HIST_BUCKETS, HIST_SUB_BITS, _HistogramHook
from shardflow.metrics import COARSE_BOUNDS, Latency, bucket_bounds

REL_ERR = 0.01  # the documented bound
MAX_NS = (1 << 40) - 1


def hist_of(values: list[int]) -> tuple[_HistogramHook, Latency]:
    h = _HistogramHook()
    h.record(values)
    count, sum_ns, max_ns, buckets = h.read()
    assert count == len(values)
    return h, Latency.from_histogram(sum_ns, max_ns, buckets)


def test_python_and_c_agree_on_the_bucket_layout() -> None:
    # Every value lands in a bucket whose bounds (as metrics.py computes them) contain it,
    # exact below 256 ns, and no wider than 1/128 of its lower bound above.
    rng = np.random.default_rng(1)
    values = sorted(
        {0, 1, 255, 256, 257, 1000, 1003, MAX_NS, *(2**e for e in range(41))}
        | {2**e - 1 for e in range(1, 41)}
        | set(rng.integers(0, MAX_NS, 2000).tolist())
    )
    for v in values:
        h = _HistogramHook()
        h.record([v])
        ((idx, c),) = h.read()[3]
        lo, hi = bucket_bounds(idx)
        # values above the range (2**40 ns) land in the last bucket
        assert c == 1 and lo <= min(v, MAX_NS) <= hi, (v, idx, lo, hi)
        assert idx < HIST_BUCKETS
        if v > MAX_NS:
            assert idx == HIST_BUCKETS - 1
        elif v < 2 << HIST_SUB_BITS:
            assert lo == hi == v
        else:
            assert hi - lo + 1 <= lo / (1 << HIST_SUB_BITS)


def test_bucket_bounds_tile_the_range_without_gaps() -> None:
    prev_hi = -1
    for idx in range(HIST_BUCKETS):
        lo, hi = bucket_bounds(idx)
        assert lo == prev_hi + 1 and hi >= lo
        prev_hi = hi
    assert prev_hi == MAX_NS


@pytest.mark.parametrize("dist", ["lognormal", "uniform", "bimodal"])
def test_percentiles_match_numpy_within_the_stated_error(dist: str) -> None:
    rng = np.random.default_rng(42)
    # n makes q * n / 100 a non-integer for every q below, so the nearest rank does not
    # depend on how q / 100 rounds (numpy computes q / 100 * n in floating point)
    n = 49_999
    if dist == "lognormal":  # ~10 us median, long tail
        data = rng.lognormal(mean=math.log(10_000), sigma=1.5, size=n)
    elif dist == "uniform":
        data = rng.uniform(0, 5_000_000, size=n)
    else:  # fast path plus slow outliers
        data = np.concatenate(
            [rng.normal(2_000, 200, size=n - 500), rng.normal(50_000_000, 1_000_000, size=500)]
        )
    values = np.clip(data, 0, None).astype(np.int64)
    _, lat = hist_of(values.tolist())
    assert lat.count == n
    assert lat.sum == pytest.approx(int(values.sum()) / 1e9, rel=1e-12)
    assert lat.max == int(values.max()) / 1e9
    for q in (0, 1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100):
        exact = float(np.percentile(values, q, method="inverted_cdf")) / 1e9
        got = lat.percentile(q)
        assert exact <= got <= exact * (1 + REL_ERR), (q, exact, got)
    assert (lat.p50, lat.p90, lat.p99, lat.p999) == tuple(
        lat.percentile(q) for q in (50, 90, 99, 99.9)
    )


def test_small_values_are_exact() -> None:
    values = list(range(256)) * 3
    _, lat = hist_of(values)
    for q in (1, 33, 50, 90, 100):
        assert lat.percentile(q) * 1e9 == pytest.approx(
            float(np.percentile(values, q, method="inverted_cdf"))
        )


def test_values_beyond_the_range_keep_an_exact_max_and_sum() -> None:
    huge = 5 * 10**12  # ~83 minutes, above the last bucket
    _, lat = hist_of([10, huge])
    assert lat.max == huge / 1e9
    assert lat.sum == pytest.approx((huge + 10) / 1e9)
    assert lat.percentile(100) == lat.max
    assert lat.p50 == 10 / 1e9


def test_empty_latency_reports_zero() -> None:
    lat = Latency.empty()
    assert lat.count == 0 and lat.p99 == 0.0 and lat.percentile(50) == 0.0 and lat.mean == 0.0
    assert lat.buckets()[-1] == (math.inf, 0)
    assert Latency.from_histogram(0, 0, []) == lat


@pytest.mark.parametrize("q", [-0.1, 100.5, math.nan, math.inf])
def test_percentile_refuses_out_of_range_q(q: float) -> None:
    _, lat = hist_of([1, 2, 3])
    with pytest.raises(ValueError, match=r"q must be a number in \[0, 100\]"):
        lat.percentile(q)


@pytest.mark.parametrize("q", ["50", None, True])
def test_percentile_refuses_non_numbers(q: object) -> None:
    _, lat = hist_of([1, 2, 3])
    with pytest.raises(TypeError, match="q must be a number"):
        lat.percentile(q)  # type: ignore[arg-type]


def test_coarse_buckets_are_cumulative_and_consistent_with_percentiles() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=math.log(2_000_000), sigma=2.0, size=20_000).astype(np.int64)
    _, lat = hist_of(values.tolist())
    b = lat.buckets()
    assert [le for le, _ in b] == list(COARSE_BOUNDS)
    counts = [c for _, c in b]
    assert counts == sorted(counts) and counts[-1] == lat.count
    for le, cum in b[:-1]:
        # a value counts under `le` when its representative (bucket upper bound) does, so
        # the count is between the exact counts at le / (1 + err) and at le
        assert (
            int((values <= le * 1e9 / (1 + REL_ERR)).sum())
            <= cum
            <= int((values <= le * 1e9).sum())
        )


def test_merge_and_subtract_are_inverse() -> None:
    _, a = hist_of([100, 2000, 30_000])
    _, b = hist_of([5, 2000, 7_000_000])
    both = Latency.merge([a, b])
    assert both.count == 6 and both.max == b.max
    assert both.sum == pytest.approx(a.sum + b.sum)
    assert (both - a).count == b.count
    assert (both - a).percentile(50) == b.percentile(50)
    assert (both - both).count == 0
    with pytest.raises(ValueError, match="earlier snapshot"):
        a - both


# ---------------------------------------------------------------------- recorded by pools


def test_service_time_of_a_sleeping_batch_handler_is_at_least_its_sleep() -> None:
    calls = []

    def handler(batch: list[int]) -> None:
        calls.append(len(batch))
        time.sleep(0.02)

    with shardflow.ShardedPool(handler, workers=1, batch_size=4) as pool:
        pool.submit_many(range(12))
    st = pool.snapshot().service_time
    assert st.count == len(calls)  # every batch call is timed
    assert st.p50 >= 0.02 and st.percentile(0) >= 0.02 and st.max >= 0.02
    assert st.sum >= 0.02 * len(calls)


def test_per_item_service_time_is_sampled_one_call_in_16() -> None:
    with shardflow.ShardedPool(lambda item: None, workers=1) as pool:
        pool.submit_many(range(160))
    m = pool.snapshot()
    assert m.processed == 160
    assert m.service_time.count == 10
    assert m.shards[0].service_time == m.service_time


def test_per_item_sleeping_handler_p50_is_at_least_its_sleep() -> None:
    with shardflow.ShardedPool(lambda item: time.sleep(0.02), workers=1) as pool:
        pool.submit_many(range(2))  # the first call is the timed one
    st = pool.snapshot().service_time
    assert st.count == 1 and st.p50 >= 0.02


def test_queue_wait_is_sampled_every_64th_item() -> None:
    with shardflow.ShardedPool(lambda item: None, workers=1) as pool:
        pool.submit_many(range(640))
        for i in range(100):
            pool.submit(i)
    # indices 0, 64, ..., 704 carry a stamp, and every one was taken by the worker
    assert pool.snapshot().queue_wait.count == math.ceil(740 / 64)


def test_small_rings_stamp_their_first_slot() -> None:
    # capacity 4 < 64: every 4th index is stamped (and the single stamp slot is reused).
    with shardflow.ShardedPool(lambda item: None, workers=1, capacity=4) as pool:
        pool.submit_many(range(40))
    assert pool.snapshot().queue_wait.count == 10


def test_queue_wait_of_items_held_behind_a_busy_worker_is_at_least_the_hold() -> None:
    gate = Gate(block=lambda item: item == "first")
    with shardflow.ShardedPool(gate, workers=1) as pool:
        pool.submit("first")  # index 0: stamped, taken at once
        gate.wait_entered()
        pool.submit_many(range(128))  # indices 1..128: 64 and 128 are stamped
        held_from = time.monotonic()
        time.sleep(0.03)
        held = time.monotonic() - held_from
        gate.release.set()
    qw = pool.snapshot().queue_wait
    assert qw.count == 3
    assert qw.p50 >= held and qw.max >= held  # 2 of 3 samples waited for the whole hold


def test_stolen_items_are_recorded_once_by_the_thief() -> None:
    # Every stamp is recorded exactly once, whoever takes the item: the total number of
    # queue-wait samples is the number of stamped indices over all rings.
    release = threading.Event()

    def handler(item: int) -> None:
        if item == 0:
            release.wait(WAIT)

    with shardflow.ShardedPool(handler, workers=2, steal=True) as pool:
        pool.submit_many(range(5000))
        release.set()
    m = pool.snapshot()
    assert m.processed == 5000
    stamped = sum(math.ceil(s.submitted / 64) for s in m.shards)
    assert m.queue_wait.count == stamped
    assert sum(s.queue_wait.count for s in m.shards) == stamped


def test_per_shard_latencies_merge_into_the_pool_latency() -> None:
    with shardflow.ShardedPool(lambda b: None, workers=3, batch_size=8, steal=False) as pool:
        pool.submit_many(range(3000))
    m = pool.snapshot()
    assert m.service_time == Latency.merge(s.service_time for s in m.shards)
    assert m.queue_wait == Latency.merge(s.queue_wait for s in m.shards)
    assert m.service_time.count == m.batches
