"""ShardedPool(arrays=True).submit_array: numpy tables in, array batches out (issue 15).

Specifications: every row handled once; rows of one key on one shard (the kernel's
hash), in source order, also across calls; batches in the input's form, at most
batch_size rows, full but the last of each shard; unkeyed batches are zero-copy slices
spread over the shards; exact row accounting (processed, failed, dead letters, drops,
hand-backs); bad input refused naming the parameter.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from typing import Any

import pytest

np = pytest.importorskip("numpy")

import shardflow  # noqa: E402
from shardflow import _columnar, _partition  # noqa: E402
from shardflow.metrics import RowMetrics  # noqa: E402


def balanced(r: RowMetrics) -> bool:
    return r.submitted == r.processed + r.failed + r.dead_lettered + r.dropped + r.returned


class Collect:
    """Records (shard thread name, batch) per call; batches are copied so that later
    writes to a reused buffer could not hide a bug."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, batch: Any) -> None:
        if isinstance(batch, dict):
            kept: Any = {name: col.copy() for name, col in batch.items()}
        else:
            kept = batch.copy()
        with self.lock:
            self.calls.append((threading.current_thread().name, kept))


def table(rows: int, keys: int = 97) -> dict[str, Any]:
    seq = np.arange(rows, dtype=np.int64)
    return {
        "k": (seq * 7919) % keys,
        "seq": seq,
        "x": np.linspace(0.0, 1.0, rows),
    }


def test_keyed_rows_reach_one_shard_per_key_in_source_order_across_calls() -> None:
    rec = Collect()
    data = table(50_000)
    second = table(20_000)
    second["seq"] += 50_000
    with shardflow.ShardedPool(rec, workers=3, arrays=True) as pool:
        assert pool.submit_array(data, key="k", batch_size=1000) == 50_000
        assert pool.submit_array(second, key="k", batch_size=1000) == 20_000
    shard_of_key: dict[int, str] = {}
    per_key: dict[int, list[int]] = defaultdict(list)
    for thread, batch in rec.calls:  # calls of one thread are in the order it made them
        assert len(batch["seq"]) <= 1000
        for k, s in zip(batch["k"].tolist(), batch["seq"].tolist(), strict=True):
            assert shard_of_key.setdefault(k, thread) == thread
            per_key[k].append(s)
    seqs = sorted(s for v in per_key.values() for s in v)
    assert seqs == list(range(70_000))  # every row once
    by_thread: dict[str, list[int]] = defaultdict(list)
    for thread, batch in rec.calls:
        by_thread[thread].extend(zip(batch["k"].tolist(), batch["seq"].tolist(), strict=True))
    for rows in by_thread.values():
        last: dict[int, int] = {}
        for k, s in rows:
            assert s > last.get(k, -1), f"key {k} out of order"
            last[k] = s
    r = pool.row_metrics()
    assert (r.submitted, r.processed, r.pending) == (70_000, 70_000, 0)
    assert balanced(r)
    assert pool.metrics().processed == len(rec.calls)  # metrics() counts batches


def test_keyed_routing_is_the_kernel_hash() -> None:
    rec = Collect()
    data = table(5000, keys=50)
    with shardflow.ShardedPool(rec, workers=4, arrays=True, name="kh") as pool:
        pool.submit_array(data, key="k", batch_size=64)
    expected = np.frombuffer(_partition.shard_of(data["k"], 4), dtype=np.uint16)
    want = dict(zip(data["k"].tolist(), expected.tolist(), strict=True))
    threads = {}
    for thread, batch in rec.calls:
        for k in set(batch["k"].tolist()):
            threads.setdefault(want[k], set()).add(thread)
    assert all(len(names) == 1 for names in threads.values())  # one thread per shard
    assert len({n for names in threads.values() for n in names}) == len(threads)


def test_batches_are_full_but_the_last_of_each_shard_even_across_chunks() -> None:
    data = table(10_007)
    keys = data["k"]
    cols, arr, rows, k = _columnar.prepare(data, "k", False)
    out = list(_columnar.keyed_batches(cols, arr, k, rows, 3, 100, chunk_rows=777))
    per_shard: dict[int, list[Any]] = defaultdict(list)
    for shard, n, batch in out:
        assert n == len(batch["seq"])
        per_shard[shard].append(batch)
    ids = np.frombuffer(_partition.shard_of(keys, 3), dtype=np.uint16)
    for shard, batches in per_shard.items():
        assert all(len(b["seq"]) == 100 for b in batches[:-1])
        assert 1 <= len(batches[-1]["seq"]) <= 100
        got = np.concatenate([b["seq"] for b in batches])
        np.testing.assert_array_equal(got, data["seq"][ids == shard])  # source order
        np.testing.assert_array_equal(
            np.concatenate([b["x"] for b in batches]), data["x"][ids == shard]
        )


@pytest.mark.parametrize("form", ["structured", "plain", "dict-2d"])
def test_batches_have_the_input_form(form: str) -> None:
    rec = Collect()
    rows = 3000
    if form == "structured":
        data: Any = np.zeros(rows, dtype=[("k", "i4"), ("seq", "i8"), ("x", "f4")])
        data["k"] = np.arange(rows) % 7
        data["seq"] = np.arange(rows)
        key: Any = "k"
    elif form == "plain":
        data = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
        key = (np.arange(rows) % 7).astype(np.uint8)
    else:
        data = {"k": np.arange(rows) % 7, "v": np.ones((rows, 3), dtype=np.int16)}
        key = "k"
    with shardflow.ShardedPool(rec, workers=2, arrays=True) as pool:
        assert pool.submit_array(data, key=key, batch_size=256) == rows
    batches = [b for _, b in rec.calls]
    if form == "dict-2d":
        assert all(isinstance(b, dict) and list(b) == ["k", "v"] for b in batches)
        assert all(b["v"].shape[1:] == (3,) and b["v"].dtype == np.int16 for b in batches)
        assert sum(len(b["k"]) for b in batches) == rows
    else:
        assert all(type(b) is np.ndarray and b.dtype == data.dtype for b in batches)
        assert all(b.shape[1:] == data.shape[1:] for b in batches)
        merged = np.concatenate(batches)
        assert sorted(map(bytes, merged)) == sorted(map(bytes, data))


def test_bytes_keys_route_alike_whatever_the_width() -> None:
    rec = Collect()
    names = np.array([b"ann", b"bob", b"cy", b"dee"] * 250, dtype="S3")
    wide = names.astype("S8")
    with shardflow.ShardedPool(rec, workers=3, arrays=True) as pool:
        pool.submit_array({"name": names, "i": np.arange(1000)}, key="name", batch_size=50)
        pool.submit_array({"name": wide, "i": np.arange(1000, 2000)}, key="name", batch_size=50)
    where: dict[bytes, set[str]] = defaultdict(set)
    for thread, batch in rec.calls:
        for n in batch["name"].tolist():
            where[n.rstrip(b"\0")].add(thread)
    assert set(where) == {b"ann", b"bob", b"cy", b"dee"}
    assert all(len(t) == 1 for t in where.values())


def test_unkeyed_batches_are_zero_copy_slices_spread_over_shards() -> None:
    got: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    data = table(10_000)
    pool = shardflow.ShardedPool(
        lambda b: got.put((threading.current_thread().name, b)), workers=2, arrays=True
    )
    assert pool.submit_array(data, batch_size=1000) == 10_000
    pool.shutdown()
    calls = [got.get_nowait() for _ in range(got.qsize())]
    assert len(calls) == 10
    assert all(np.shares_memory(b["x"], data["x"]) for _, b in calls)  # views of the input
    assert sorted(int(b["seq"][0]) for _, b in calls) == list(range(0, 10_000, 1000))
    assert len({t for t, _ in calls}) == 2  # both shards got slices
    assert pool.row_metrics().processed == 10_000


def test_empty_table_queues_nothing() -> None:
    with shardflow.ShardedPool(lambda b: None, workers=2, arrays=True) as pool:
        assert pool.submit_array({"k": np.zeros(0, np.int64)}, key="k") == 0
        assert pool.submit_array(np.zeros((0, 3))) == 0
    assert pool.row_metrics().submitted == 0 and pool.metrics().submitted == 0


def test_failing_batches_are_routed_and_counted_in_rows() -> None:
    errors: list[tuple[Any, BaseException]] = []

    def handler(batch: Any) -> None:
        if (batch["k"] == 5).any():
            raise ValueError("key 5")

    data = table(4000, keys=10)
    with shardflow.ShardedPool(
        handler, workers=2, arrays=True, on_error=lambda b, e: errors.append((b, e))
    ) as pool:
        pool.submit_array(data, key="k", batch_size=100)
    r = pool.row_metrics()
    failed_rows = sum(len(b["k"]) for b, _ in errors)
    assert errors and all(isinstance(e, ValueError) for _, e in errors)
    assert r.failed == failed_rows and r.processed == 4000 - failed_rows
    assert balanced(r) and r.pending == 0
    assert pool.metrics().failed == len(errors)


def test_dead_letters_count_rows() -> None:
    dead: queue.Queue[tuple[Any, BaseException]] = queue.Queue()

    def handler(batch: Any) -> None:
        if batch["seq"][0] % 2000 == 0:
            raise RuntimeError("boom")

    with shardflow.ShardedPool(handler, workers=2, arrays=True, dead_letter=dead) as pool:
        pool.submit_array(table(10_000), batch_size=1000)
    r = pool.row_metrics()
    assert r.dead_lettered == 5000 and dead.qsize() == 5
    assert (r.processed, r.failed) == (5000, 0) and balanced(r)


def test_dropped_and_returned_batches_count_rows() -> None:
    gate = threading.Event()
    entered = threading.Event()

    def slow(batch: Any) -> None:
        entered.set()
        gate.wait(10)

    pool = shardflow.ShardedPool(slow, workers=1, arrays=True, capacity=2, on_full="drop")
    data = table(1000)
    pool.submit_array(data, batch_size=100)  # 1 runs, 2 queue, 7 dropped (or so)
    assert entered.wait(10)
    r = pool.row_metrics()
    assert r.dropped > 0 and r.dropped % 100 == 0
    # wait=True: the batches the worker took but did not start come back too.
    opener = threading.Timer(0.2, gate.set)
    opener.start()
    returned = pool.shutdown(wait=True, cancel=True)
    opener.join()
    r = pool.row_metrics()
    assert r.returned == sum(len(b["k"]) for b in returned) > 0
    assert balanced(r) and r.submitted == 1000 and r.pending == 0


def test_block_with_timeout_raises_full_with_rows_submitted() -> None:
    gate = threading.Event()
    pool = shardflow.ShardedPool(lambda b: gate.wait(10), workers=1, arrays=True, capacity=1)
    try:
        with pytest.raises(shardflow.Full) as info:
            pool.submit_array(table(1000), batch_size=100, timeout=0.2)
        assert 100 <= info.value.submitted < 1000  # type: ignore[attr-defined]
        assert pool.row_metrics().submitted == info.value.submitted  # type: ignore[attr-defined]
    finally:
        gate.set()
        pool.shutdown()
    assert balanced(pool.row_metrics())


def test_item_level_submits_are_refused_on_array_pools() -> None:
    with shardflow.ShardedPool(lambda b: None, workers=2, arrays=True) as pool:
        with pytest.raises(TypeError, match="submit_array"):
            pool.submit({"k": np.arange(3)})
        with pytest.raises(TypeError, match="submit_array"):
            pool.submit_many([1, 2])
    with shardflow.ShardedPool(lambda b: None, workers=2) as plain:
        with pytest.raises(TypeError, match="arrays=True"):
            plain.submit_array({"k": np.arange(3)})
        with pytest.raises(TypeError, match="arrays=True"):
            plain.row_metrics()


def test_closed_pool_refuses_arrays() -> None:
    pool = shardflow.ShardedPool(lambda b: None, workers=1, arrays=True)
    pool.close()
    with pytest.raises(shardflow.Closed):
        pool.submit_array({"k": np.arange(3)})
    pool.join()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"key": lambda x: x}, "key= must be None"),
        ({"batch_size": 8}, "batch_size must be 1"),
        ({"lists": True}, "batch_size must be 1"),
        ({"arrays": 1}, "arrays"),
    ],
)
def test_array_pool_construction_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"workers": 1, "arrays": True, **kwargs}
    with pytest.raises((TypeError, ValueError), match=match):
        shardflow.ShardedPool(lambda b: None, **args)


@pytest.mark.parametrize(
    ("data", "kwargs", "exc", "match"),
    [
        ({"a": np.arange(3), "b": np.arange(4)}, {}, ValueError, "ragged"),
        ({"a": np.array([object()] * 3)}, {}, TypeError, r"data\['a'\].*Python objects"),
        (np.array([1, "x"], dtype=object), {}, TypeError, "data has dtype object"),
        ({"a": np.arange(10)[::2]}, {}, ValueError, r"data\['a'\] is not C-contiguous.*copy=True"),
        ({"a": np.arange(3)}, {"key": "b"}, ValueError, r"key 'b' is not a column.*\['a'\]"),
        (np.zeros(3, dtype=[("a", "i8")]), {"key": "b"}, ValueError, "key 'b' is not a field"),
        (np.array(1.0), {}, ValueError, "data must have at least one dimension"),
        (np.float64(1.0), {}, ValueError, "data must have at least one dimension"),
        ({"a": np.array(5)}, {}, ValueError, r"data\['a'\] must have at least one dimension"),
        ({"a": np.arange(3)}, {"key": np.arange(4)}, ValueError, "key must be one key per row"),
        ({"a": np.arange(3.0)}, {"key": "a"}, TypeError, "key must hold integers"),
        ([1, 2, 3], {}, TypeError, "data must be a numpy array"),
        ({}, {}, ValueError, "data has no columns"),
        ({"a": np.arange(3)}, {"batch_size": 0}, ValueError, "batch_size"),
        ({"a": np.arange(3)}, {"key": 3.5}, TypeError, "key must be a column name"),
    ],
)
def test_bad_input_is_refused_naming_the_parameter(
    data: Any, kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(lambda b: None, workers=2, arrays=True)
    with pool, pytest.raises(exc, match=match):
        pool.submit_array(data, **kwargs)
    assert pool.row_metrics().submitted == 0


def test_copy_accepts_strided_columns() -> None:
    rec = Collect()
    base = np.arange(20)
    with shardflow.ShardedPool(rec, workers=2, arrays=True) as pool:
        assert pool.submit_array({"k": base[::2], "v": base[1::2]}, key="k", copy=True) == 10
    rows = sorted(
        (k, v) for _, b in rec.calls for k, v in zip(b["k"].tolist(), b["v"].tolist(), strict=True)
    )
    assert rows == [(2 * i, 2 * i + 1) for i in range(10)]


def test_partition_buffers_are_reused_but_never_under_a_kept_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_columnar, "CHUNK_ROWS", 1000)  # 20 chunks
    data = table(20_000, keys=13)
    kept: list[Any] = []

    def keep_some(batch: Any) -> None:
        if int(batch["seq"][0]) % 3 == 0:
            kept.append(batch)  # no copy: its buffer must not be written again

    with shardflow.ShardedPool(keep_some, workers=2, arrays=True, capacity=2) as pool:
        pool.submit_array(data, key="k", batch_size=128)
    assert kept
    for batch in kept:  # still the rows they were handed with
        np.testing.assert_array_equal(batch["k"], data["k"][batch["seq"]])
        np.testing.assert_array_equal(batch["x"], data["x"][batch["seq"]])
    assert pool.row_metrics().processed == 20_000


def test_buffers_are_taken_again_only_when_no_view_is_left() -> None:
    bufs = _columnar._Buffers([np.zeros(10), np.zeros((10, 2), np.int8)], 10)
    first = bufs.take(10)
    base = [id(v.base) for v in first]  # ids: a reference would keep the set busy
    held = first[0][2:5]  # a batch view still queued somewhere
    del first
    second = bufs.take(7)
    assert all(id(v.base) != b for v, b in zip(second, base, strict=True))  # a new set
    assert second[1].shape == (7, 2) and second[1].dtype == np.int8
    del held, second
    third = bufs.take(10)  # both sets are idle again: the first is reused
    assert [id(v.base) for v in third] == base


def test_batches_larger_than_a_chunk_are_joined_once_in_order() -> None:
    data = table(5000, keys=5)
    cols, arr, rows, k = _columnar.prepare(data, "k", False)
    out = list(_columnar.keyed_batches(cols, arr, k, rows, 2, 1500, chunk_rows=300))
    ids = np.frombuffer(_partition.shard_of(data["k"], 2), dtype=np.uint16)
    for shard in (0, 1):
        mine = [b for s, _, b in out if s == shard]
        assert all(len(b["seq"]) == 1500 for b in mine[:-1])
        np.testing.assert_array_equal(
            np.concatenate([b["seq"] for b in mine]), data["seq"][ids == shard]
        )
    assert sum(n for _, n, _ in out) == 5000
