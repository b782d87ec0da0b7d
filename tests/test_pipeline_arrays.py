"""Pipeline.from_array / map_batches: array stages (issue 15). Batches flow as items, one
per handler call; results are yielded as arrays or concatenated; rows are counted per
stage and balance; bad input and bad stage outputs are refused clearly."""

from __future__ import annotations

import threading
from typing import Any

import pytest

np = pytest.importorskip("numpy")

import shardflow  # noqa: E402


def test_map_batches_in_order_concatenates_to_the_numpy_result() -> None:
    x = np.arange(100_000, dtype=np.float64)
    data = {"x": x, "k": np.arange(100_000) % 7}
    p = shardflow.Pipeline.from_array(data, batch_size=4096, ordered=True)
    p.map_batches(lambda b: {"y": b["x"] * 2.0, "k": b["k"]}, workers=2)
    p.map_batches(lambda b: {name: col[b["k"] != 3] for name, col in b.items()})
    out = p.concat()
    keep = data["k"] != 3
    np.testing.assert_array_equal(out["y"], x[keep] * 2.0)
    np.testing.assert_array_equal(out["k"], data["k"][keep])
    rows = p.row_report()
    assert list(rows) == ["source", "map_batches-1", "map_batches-2"]
    assert rows["source"].emitted == 100_000
    assert rows["map_batches-1"].received == rows["map_batches-1"].emitted == 100_000
    assert rows["map_batches-2"].received == 100_000
    assert rows["map_batches-2"].emitted == int(keep.sum())
    assert all(r.balanced for r in rows.values())
    assert p.report is not None and p.report.stages[0].received == 25  # batches


def test_iteration_yields_array_batches_of_at_most_batch_size_rows() -> None:
    data = np.zeros(1000, dtype=[("a", "i4"), ("b", "f8")])
    data["a"] = np.arange(1000)
    p = shardflow.Pipeline.from_array(data, batch_size=128).map_batches(lambda b: b)
    batches = list(p)
    assert all(type(b) is np.ndarray and b.dtype == data.dtype for b in batches)
    assert all(len(b) <= 128 for b in batches) and len(batches) == 8
    assert sorted(int(v) for b in batches for v in b["a"]) == list(range(1000))


def test_source_batches_are_zero_copy_views() -> None:
    data = {"x": np.arange(1000)}
    seen: list[bool] = []
    lock = threading.Lock()

    def check(b: Any) -> Any:
        with lock:
            seen.append(np.shares_memory(b["x"], data["x"]))
        return b

    shardflow.Pipeline.from_array(data, batch_size=100).map_batches(check).run()
    assert seen == [True] * 10


def test_failing_batches_count_their_rows_and_go_to_the_dead_letter() -> None:
    dead: list[Any] = []

    def fn(b: Any) -> Any:
        if b["x"][0] == 300:
            raise ValueError("bad batch")
        return b

    p = shardflow.Pipeline.from_array({"x": np.arange(1000)}, batch_size=100, errors="continue")
    out = p.map_batches(fn, dead_letter=dead).concat()
    assert len(out["x"]) == 900 and 300 not in out["x"]
    assert len(dead) == 1 and isinstance(dead[0][1], ValueError)
    assert dead[0][0]["x"][0] == 300
    r = p.row_report()["map_batches-1"]
    assert (r.received, r.succeeded, r.failed, r.emitted) == (1000, 900, 100, 900)
    assert p.report is not None and p.report.stages[0].dead_lettered == 1


def test_a_stage_returning_no_batch_fails_that_batch_fail_fast() -> None:
    p = shardflow.Pipeline.from_array({"x": np.arange(10)}, batch_size=5)
    p.map_batches(lambda b: b["x"].sum())
    with pytest.raises(TypeError, match="map_batches fn must return an array batch"):
        p.run()
    r = p.row_report()["map_batches-1"]
    assert r.failed >= 5 and r.balanced


def test_ragged_stage_output_is_refused() -> None:
    p = shardflow.Pipeline.from_array({"x": np.arange(10)}, batch_size=10)
    p.map_batches(lambda b: {"a": np.arange(3), "b": np.arange(4)})
    with pytest.raises(TypeError, match="map_batches"):
        p.run()


def test_empty_result_concatenates_to_none() -> None:
    p = shardflow.Pipeline.from_array({"x": np.zeros(0)}).map_batches(lambda b: b)
    assert p.concat() is None
    assert p.row_report()["source"].emitted == 0


@pytest.mark.parametrize(
    ("data", "kwargs", "exc", "match"),
    [
        ({"a": np.arange(3), "b": np.arange(2)}, {}, ValueError, "ragged"),
        ({"a": np.array([None] * 3)}, {}, TypeError, "Python objects"),
        ({"a": np.arange(6)[::2]}, {}, ValueError, "copy=True"),
        (np.array(3), {}, ValueError, "at least one dimension"),
        ({"a": np.arange(3)}, {"batch_size": 0}, ValueError, "batch_size"),
        ("abc", {}, TypeError, "data must be a numpy array"),
    ],
)
def test_from_array_refuses_bad_input(
    data: Any, kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        shardflow.Pipeline.from_array(data, **kwargs)


def test_map_batches_validates_its_arguments() -> None:
    p = shardflow.Pipeline.from_array({"x": np.arange(3)})
    with pytest.raises(TypeError, match="fn"):
        p.map_batches(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        p.map_batches(lambda b: b, workers=0)
