"""The ``columnar`` bench section (not yet in the registry: the lead registers it) runs
in quick mode, its contenders agree row for row, and it reports every shard count."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("numpy")

from shardflow.bench import columnar
from shardflow.bench.common import BenchContext


def test_contenders_return_the_same_rows_per_shard_in_the_same_order() -> None:
    data = columnar.make_input(30_000)
    for nshards in columnar.SHARDS:
        columnar.check_agree(data, nshards)  # raises AssertionError naming the contender


def test_numpy_routing_is_the_kernels() -> None:
    import numpy as np

    from shardflow import _partition

    keys = columnar.make_input(10_000)["k"]
    for nshards in (2, 16):
        ours = np.asarray(_partition.shard_of(keys, nshards))
        assert np.array_equal(columnar.numpy_shard_ids(keys, nshards), ours)


def test_quick_section_reports_every_contender_and_shard_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(columnar, "QUICK_ROWS", 20_000)
    monkeypatch.setattr(columnar, "E2E_QUICK_ROWS", 30_000)
    out = io.StringIO()
    result = columnar.run_section(BenchContext(items=1000, repeats=1, quick=True, out=out))
    assert result.key == "columnar"
    data = result.data
    assert data["rows"] == 20_000
    for name in columnar.CONTENDERS:
        rates = data["rows_per_s"][name]
        assert sorted(rates) == sorted(str(n) for n in columnar.SHARDS)
        assert all(r > 0 for r in rates.values())
    names = [t.name for t in result.targets]
    assert any("5x numpy argsort" in n for n in names)
    assert any("100M rows/s" in n for n in names)
    text = out.getvalue()
    assert "Columnar partition: 20,000 rows" in text and "load average" in text
    e2e = data["end_to_end"]
    assert e2e["rows"] == 30_000
    assert set(e2e["rows_per_s"]) == {*columnar.E2E_CONTENDERS, columnar.E2E_WITH_BUILD}
    assert all(r > 0 for r in e2e["rows_per_s"].values())
    assert any("pre-built tuples" in n for n in names)
    assert "Columnar end to end: 30,000 rows" in text
