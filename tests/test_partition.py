"""The columnar partition kernel (shardflow._partition) and its numpy helper
(shardflow._columnar): exact against a numpy reference, stable, every item width, edge
sizes, and clear errors for bad input."""

from __future__ import annotations

import array
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy")

from shardflow import _columnar, _partition  # noqa: E402
from shardflow._partition import MAX_SHARDS  # noqa: E402

U64 = np.uint64


def mix64(x: Any) -> Any:
    """splitmix64's finalizer, vectorised (the kernel's hash of an integer key)."""
    x = np.asarray(x).astype(np.int64).view(U64).copy()
    x ^= x >> U64(30)
    x *= U64(0xBF58476D1CE4E5B9)
    x ^= x >> U64(27)
    x *= U64(0x94D049BB133111EB)
    x ^= x >> U64(31)
    return x


def ref_shards(keys: Any, nshards: int) -> Any:
    """The reference routing: high 32 bits of the mix times nshards, shifted down 32."""
    return ((mix64(keys) >> U64(32)) * U64(nshards)) >> U64(32)


def ref_offsets(ids: Any, nshards: int) -> Any:
    counts = np.bincount(ids.astype(np.int64), minlength=nshards)
    return np.concatenate([[0], np.cumsum(counts)])


def check_partition(keys: Any, nshards: int, columns: list[Any], ids: Any = None) -> None:
    """partition() == the numpy user code: a stable argsort of the shard ids, then take."""
    if ids is None:
        ids = ref_shards(keys, nshards)
    order_ref = np.argsort(ids, kind="stable")
    offsets, order, outs = _partition.partition(keys, nshards, columns, order=True)
    assert np.array_equal(np.asarray(offsets), ref_offsets(ids, nshards))
    assert np.array_equal(np.asarray(order), order_ref)
    assert len(outs) == len(columns)
    for col, out in zip(columns, outs, strict=True):
        got = np.frombuffer(out, dtype=col.dtype).reshape(col.shape)
        # compared as bytes: random bit patterns include NaNs
        assert got.tobytes() == col[order_ref].tobytes()


# ------------------------------------------------------------------ shard_of


@pytest.mark.parametrize("nshards", [1, 2, 3, 7, 16, 1000, MAX_SHARDS])
def test_shard_of_matches_the_reference_mix(nshards: int) -> None:
    keys = np.random.default_rng(nshards).integers(-(2**62), 2**62, 50_000, dtype=np.int64)
    got = np.asarray(_partition.shard_of(keys, nshards))
    assert got.dtype == np.uint16
    assert np.array_equal(got, ref_shards(keys, nshards))
    assert got.max() < nshards


@pytest.mark.parametrize(
    "dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
)
def test_integer_keys_route_by_value_whatever_their_width(dtype: str) -> None:
    info = np.iinfo(dtype)
    values = np.arange(max(info.min, -300), min(info.max, 300) + 1)
    keys = values.astype(dtype)
    ref = np.asarray(_partition.shard_of(values.astype(np.int64), 16))
    assert np.array_equal(np.asarray(_partition.shard_of(keys, 16)), ref)


def test_sequential_keys_spread_evenly() -> None:
    ids = np.asarray(_partition.shard_of(np.arange(160_000, dtype=np.int64), 16))
    counts = np.bincount(ids, minlength=16)
    assert counts.min() > 9_000 and counts.max() < 11_000


def test_bytes_keys_ignore_padding_and_spread() -> None:
    words = [b"", b"a", b"ab", b"abcdefgh", b"abcdefghi", b"x" * 15]
    narrow = np.array(words, dtype="S16")
    wide = np.array(words, dtype="S32")
    assert np.array_equal(
        np.asarray(_partition.shard_of(narrow, 1000)), np.asarray(_partition.shard_of(wide, 1000))
    )
    keys = np.array([f"user-{i}".encode() for i in range(20_000)], dtype="S12")
    got = np.asarray(_partition.shard_of(keys, 4))
    assert np.array_equal(got, ref_bytes_shards(keys, 4))
    assert np.bincount(got, minlength=4).min() > 4_500
    assert np.array_equal(
        np.asarray(_partition.shard_of(narrow, 999)), ref_bytes_shards(narrow, 999)
    )
    # the partition with bytes keys is stable and exact like any other
    check_partition(keys, 7, [keys, np.arange(20_000)], ids=ref_bytes_shards(keys, 7))


def ref_bytes_shards(keys: Any, nshards: int) -> Any:
    """The bytes hash of _partition.h, in Python: 8-byte little-endian words folded
    through the mix, length first, trailing NULs dropped."""
    mask = (1 << 64) - 1
    golden = 0x9E3779B97F4A7C15

    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    out = []
    for key in keys.tolist():  # numpy strips the trailing NULs
        h = golden ^ len(key)
        for i in range(0, len(key), 8):
            h = (mix(h ^ int.from_bytes(key[i : i + 8], "little")) + golden) & mask
        out.append(((mix(h) >> 32) * nshards) >> 32)
    return np.array(out, dtype=np.uint64)


def test_strided_keys_are_read_in_place() -> None:
    rec = np.zeros(1000, dtype=[("k", "<i8"), ("v", "<f8")])
    rec["k"] = np.arange(1000) * 7
    got = np.asarray(_partition.shard_of(rec["k"], 5))
    assert np.array_equal(got, ref_shards(np.arange(1000) * 7, 5))
    backwards = np.arange(1000, dtype=np.int64)[::-1]
    assert np.array_equal(np.asarray(_partition.shard_of(backwards, 5)), ref_shards(backwards, 5))


def test_no_numpy_needed_array_array_and_bytes_work() -> None:
    keys = array.array("q", range(100))
    col = array.array("d", (float(i) for i in range(100)))
    offsets, order, outs = _partition.partition(keys, 3, [col], order=True)
    assert isinstance(offsets, memoryview) and offsets.format == "q"
    assert len(offsets) == 4 and offsets[3] == 100
    assert isinstance(outs[0], bytearray)
    moved = array.array("d", bytes(outs[0]))
    assert [int(x) for x in moved] == list(order)


# ------------------------------------------------------------------ partition


@pytest.mark.parametrize("nshards", [1, 2, 4, 8, 16, 4096, 4097, MAX_SHARDS])
@pytest.mark.parametrize("rows", [0, 1, 5, 1023, 1024, 1027, 20_011, 4 * 2 * 8192 + 7])
def test_partition_is_exact_and_stable(rows: int, nshards: int) -> None:
    rng = np.random.default_rng(rows * 31 + nshards)
    keys = rng.integers(-40, 40, rows, dtype=np.int64)  # many repeats: order matters
    check_partition(keys, nshards, [keys, rng.random(rows), rng.random(rows)])


def test_rows_of_one_key_keep_their_source_order() -> None:
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 50, 30_000, dtype=np.int64)
    seq = np.arange(30_000, dtype=np.int64)
    _, _, (k_out, s_out) = _partition.partition(keys, 4, [keys, seq])
    k_out = np.frombuffer(k_out, dtype=np.int64)
    s_out = np.frombuffer(s_out, dtype=np.int64)
    for key in range(50):
        mine = s_out[k_out == key]
        assert len(mine) == (keys == key).sum()
        assert np.all(np.diff(mine) > 0)


WIDTH_DTYPES = [
    np.dtype("u1"),
    np.dtype("i2"),
    np.dtype("f4"),
    np.dtype("f8"),
    np.dtype("i8"),
    np.dtype("c16"),  # 16 bytes
    np.dtype("S3"),  # an odd width: the generic copy
    np.dtype([("a", "<i4"), ("b", "<f8"), ("c", "S5")]),  # a packed 17-byte record
    np.dtype([("x", "<f8"), ("y", "<f8")], align=True),  # a 16-byte record
]


@pytest.mark.parametrize("dtype", WIDTH_DTYPES, ids=str)
def test_every_item_width_is_moved_exactly(dtype: Any) -> None:
    rows = 5000
    raw = np.random.default_rng(3).integers(0, 256, rows * dtype.itemsize, dtype=np.uint8)
    col = raw.view(dtype)
    keys = np.arange(rows, dtype=np.int64) % 97
    check_partition(keys, 6, [col])


def test_field_names_with_a_capital_o_are_not_taken_for_objects() -> None:
    rec = np.zeros(100, dtype=[("Open", "<f8"), ("Obj", "<i4")])
    rec["Open"] = np.arange(100)
    check_partition(np.arange(100, dtype=np.int64), 3, [rec])
    with pytest.raises(TypeError, match=r"columns\[0\] holds Python objects"):
        _partition.partition(np.arange(2), 2, [np.zeros(2, dtype=[("Open", "O")])])


def test_two_dimensional_columns_move_whole_rows() -> None:
    rows = 3000
    col = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5)
    check_partition(np.arange(rows, dtype=np.int32), 3, [col])


def test_caller_provided_outputs_are_filled_in_place() -> None:
    keys = np.arange(10_000, dtype=np.int64)
    vals = keys * 0.5
    outs = [np.empty_like(keys), np.empty_like(vals)]
    order = np.empty(10_000, dtype=np.int64)
    _, got_order, got = _partition.partition(keys, 4, [keys, vals], outs, order=order)
    assert got[0] is outs[0] and got[1] is outs[1] and got_order is order
    ref = np.argsort(ref_shards(keys, 4), kind="stable")
    assert np.array_equal(order, ref)
    assert np.array_equal(outs[1], vals[ref])
    # a reused output is overwritten, nothing stale survives
    _partition.partition(keys[::-1].copy(), 4, [vals], [outs[1]])
    assert np.array_equal(np.sort(outs[1]), np.sort(vals))


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300),
    nshards=st.integers(1, 70),
)
def test_property_partition_is_a_stable_permutation(keys: list[int], nshards: int) -> None:
    k = np.array(keys, dtype=np.int64)
    check_partition(k, nshards, [k, np.arange(len(keys), dtype=np.int16)])


# ------------------------------------------------------------------ bad input


def test_bad_nshards() -> None:
    keys = np.arange(3, dtype=np.int64)
    for bad in (0, -1, MAX_SHARDS + 1):
        with pytest.raises(ValueError, match=r"nshards must be between 1 and 65536"):
            _partition.partition(keys, bad)
    for bad_type in (2.0, "2", True, None):
        with pytest.raises(TypeError, match="nshards must be an int"):
            _partition.shard_of(keys, bad_type)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (np.arange(4, dtype=np.float64), r"keys must be integers .* got buffer format 'd'"),
        (np.array([True, False]), "keys must be integers"),
        (np.arange(4, dtype=">i8"), "keys must be in native byte order"),
        (np.arange(4, dtype=np.int64).reshape(2, 2), "keys must be one-dimensional"),
        (np.array([1, "a"], dtype=object), "keys holds Python objects"),
        ([1, 2, 3], "keys must support the buffer protocol"),
        (np.int64(3), "keys must have at least one dimension"),
    ],
)
def test_bad_keys(keys: Any, match: str) -> None:
    if sys.byteorder == "big" and "byte order" in match:
        pytest.skip("big-endian keys are native here")
    with pytest.raises((TypeError, ValueError), match=match):
        _partition.partition(keys, 2)


def test_bad_columns() -> None:
    keys = np.arange(6, dtype=np.int64)
    with pytest.raises(ValueError, match=r"columns\[1\] has 5 rows but keys has 6"):
        _partition.partition(keys, 2, [np.zeros(6), np.zeros(5)])
    with pytest.raises(ValueError, match=r"columns\[0\] is not C-contiguous"):
        _partition.partition(keys, 2, [np.zeros(12)[::2]])
    with pytest.raises(TypeError, match=r"columns\[0\] holds Python objects"):
        _partition.partition(keys, 2, [np.array([None] * 6)])
    with pytest.raises(TypeError, match="columns must be a sequence"):
        _partition.partition(keys, 2, np.zeros(6))
    with pytest.raises(TypeError, match=r"columns\[0\] must support the buffer protocol"):
        _partition.partition(keys, 2, [list(range(6))])


def test_bad_outputs() -> None:
    keys = np.arange(6, dtype=np.int64)
    col = np.zeros(6)
    with pytest.raises(ValueError, match=r"outs must have one entry per column \(1\), got 2"):
        _partition.partition(keys, 2, [col], [None, None])
    with pytest.raises(ValueError, match=r"outs\[0\] must be a writable C-contiguous buffer of 48"):
        _partition.partition(keys, 2, [col], [np.empty(5)])
    with pytest.raises(ValueError, match=r"outs\[0\] must be a writable"):
        _partition.partition(keys, 2, [col], [bytes(48)])
    with pytest.raises(ValueError, match=r"outs\[0\] overlaps columns\[0\]"):
        _partition.partition(keys, 2, [col], [col])
    with pytest.raises(ValueError, match=r"outs\[0\] overlaps keys"):
        _partition.partition(keys, 2, [keys.copy()], [keys])
    shared = np.empty(6)
    with pytest.raises(ValueError, match=r"outs\[1\] overlaps outs\[0\]"):
        _partition.partition(keys, 2, [col, col.copy()], [shared, shared])
    with pytest.raises(ValueError, match="order must be True, False or a writable"):
        _partition.partition(keys, 2, [col], order=np.empty(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"order overlaps keys"):
        _partition.partition(keys, 2, order=keys)


# ------------------------------------------------------------------ _columnar


def test_columnar_partition_of_a_dict_gives_per_shard_views() -> None:
    rng = np.random.default_rng(11)
    n = 10_000
    data = {"id": rng.integers(0, 300, n), "x": rng.random(n), "y": rng.random(n)}
    shards = _columnar.partition(data, "id", 4)
    assert len(shards) == 4
    ref_ids = ref_shards(data["id"], 4)
    base = None
    for s, batch in enumerate(shards):
        assert isinstance(batch, dict) and list(batch) == ["id", "x", "y"]
        mask = ref_ids == s
        for name in data:
            assert np.array_equal(batch[name], data[name][mask])  # stable
        base = batch["x"].base if base is None else base
        assert batch["x"].base is base  # a view of one partitioned buffer
    assert sum(len(b["id"]) for b in shards) == n


def test_columnar_partition_of_arrays() -> None:
    rec = np.zeros(500, dtype=[("k", "<u4"), ("v", "<f8")])
    rec["k"] = np.arange(500) % 13
    rec["v"] = np.arange(500)
    shards = _columnar.partition(rec, "k", 3)
    ref = ref_shards(rec["k"], 3)
    for s, batch in enumerate(shards):
        assert batch.dtype == rec.dtype
        assert np.array_equal(batch, rec[ref == s])
    plain = np.arange(40, dtype=np.float64).reshape(20, 2)
    keys = np.arange(20, dtype=np.int64)
    by_key = _columnar.partition(plain, keys, 2)
    assert np.array_equal(by_key[1], plain[ref_shards(keys, 2) == 1])
    bykey_list = _columnar.partition(plain, list(range(20)), 2)
    assert np.array_equal(bykey_list[0], by_key[0])


def test_columnar_copy_option() -> None:
    data = {"k": np.arange(20)[::2], "v": np.arange(10.0)}
    with pytest.raises(ValueError, match=r"data\['k'\] is not C-contiguous.*copy=True"):
        _columnar.partition(data, "k", 2)
    shards = _columnar.partition(data, "k", 2, copy=True)
    assert sorted(np.concatenate([b["k"] for b in shards]).tolist()) == list(range(0, 20, 2))
    be = np.arange(10, dtype=">i4")
    with pytest.raises(ValueError, match="non-native byte order"):
        _columnar.partition(np.arange(10.0), be, 2)
    got = _columnar.partition(np.arange(10.0), be, 2, copy=True)
    assert np.array_equal(got[0], np.arange(10.0)[ref_shards(np.arange(10), 2) == 0])


def test_columnar_bad_input() -> None:
    ok = np.arange(4.0)
    with pytest.raises(ValueError, match="ragged"):
        _columnar.partition({"a": np.arange(3), "b": np.arange(4)}, "a", 2)
    with pytest.raises(TypeError, match="holding Python objects"):
        _columnar.partition({"a": np.arange(3), "b": np.array([None] * 3)}, "a", 2)
    with pytest.raises(ValueError, match="key 'z' is not a column; the columns are"):
        _columnar.partition({"a": np.arange(3)}, "z", 2)
    with pytest.raises(ValueError, match="key 'z' is not a field"):
        _columnar.partition(np.zeros(3, dtype=[("a", "i8")]), "z", 2)
    with pytest.raises(ValueError, match="data is a plain array"):
        _columnar.partition(ok, "a", 2)
    with pytest.raises(ValueError, match=r"1-D array of 4 keys, got shape \(3,\)"):
        _columnar.partition(ok, np.arange(3), 2)
    with pytest.raises(TypeError, match=r"key must hold integers .* got dtype float64"):
        _columnar.partition(ok, ok, 2)
    with pytest.raises(TypeError, match="key must be a column name"):
        _columnar.partition(ok, 3, 2)
    with pytest.raises(TypeError, match="data must be a numpy array"):
        _columnar.partition([1, 2], np.arange(2), 2)
    with pytest.raises(ValueError, match="data has no columns"):
        _columnar.split({}, 2)
    with pytest.raises(ValueError, match="nshards must be between"):
        _columnar.partition(ok, np.arange(4), 0)
    with pytest.raises(ValueError, match="nparts must be >= 1"):
        _columnar.split(ok, 0)
    with pytest.raises(TypeError, match="rows must be an int"):
        _columnar.batches(ok, 2.0)  # type: ignore[arg-type]


def test_columnar_split_and_batches_are_zero_copy() -> None:
    data = {"a": np.arange(10), "b": np.arange(10.0)}
    parts = _columnar.split(data, 3)
    assert [len(p["a"]) for p in parts] == [4, 3, 3]
    assert all(np.shares_memory(p["a"], data["a"]) for p in parts)
    assert np.array_equal(np.concatenate([p["b"] for p in parts]), data["b"])
    arr = np.arange(7)
    chunks = _columnar.batches(arr, 3)
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(np.shares_memory(c, arr) for c in chunks)
    assert _columnar.batches(np.arange(0), 3) == []
    assert [len(p) for p in _columnar.split(np.arange(2), 4)] == [1, 1, 0, 0]


def test_columnar_empty_input() -> None:
    shards = _columnar.partition({"k": np.arange(0), "v": np.zeros(0)}, "k", 3)
    assert len(shards) == 3 and all(len(b["v"]) == 0 for b in shards)
