"""``python -m shardflow bench``: the command runs, prints its table, writes its JSON, and
refuses bad options the argparse way. No timing is asserted: figures depend on the machine.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardflow.bench import SECTIONS, run_bench
from shardflow.bench.common import BenchContext, SectionResult, Target
from shardflow.bench.reuse import REUSE_CONTENDERS
from shardflow.bench.stealing import STEAL_COST_CONTENDERS, steal_contenders
from shardflow.bench.sweep import (
    SWEEP_BATCH_SERIES,
    SWEEP_BATCHES,
    SWEEP_SERIES,
    SWEEP_WORKERS,
)
from shardflow.bench.throughput import CONTENDERS

RATIOS = ("vs_simplequeue", "vs_tpe", "vs_bare_loop")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_quick_bench_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    chart = tmp_path / "bench.png"
    # A hang guard, not a timing check: the quick run takes ~30 s alone, more on a busy machine.
    proc = _run("bench", "--quick", "--json", str(out), "--chart", str(chart), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"wrote {out}" in proc.stdout and f"wrote {chart}" in proc.stdout

    # The table: a header naming the ratio columns and one row per contender.
    assert "items/s" in proc.stdout
    assert "vs SimpleQueue" in proc.stdout
    assert "vs TPE" in proc.stdout
    assert "vs bare loop" in proc.stdout
    for name in CONTENDERS:
        assert name in proc.stdout
    assert "Targets:" in proc.stdout
    assert "PASS" in proc.stdout or "MISS" in proc.stdout

    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["config"]["quick"] is True
    assert set(report["throughput"]) == set(CONTENDERS)
    for name, row in report["throughput"].items():
        assert row["items_per_s"] > 0, name
        assert len(row["samples"]) == report["config"]["repeats"]
        for ratio in RATIOS:
            assert row[ratio] > 0, (name, ratio)
    # Each baseline compared with itself is 1.0 by construction.
    assert report["throughput"]["bare loop"]["vs_bare_loop"] == pytest.approx(1.0)
    assert report["throughput"]["2 threads over queue.SimpleQueue"][
        "vs_simplequeue"
    ] == pytest.approx(1.0)

    assert {"pool2_vs_pool1", "pool2_vs_tpe"} <= set(report["gil_release"])
    assert report["idle"]["workers"] == 8
    assert "rss_growth_mb" in report["memory"]

    # The stealing, batch-latency and batch-reuse sections.
    stealing = report["stealing"]
    assert set(stealing["contenders"]) == set(steal_contenders())
    for name, row in stealing["contenders"].items():
        assert row["items_per_s"] > 0, name
        assert len(row["samples"]) == report["config"]["repeats"]
    for name in ("zipf keys, steal=True", "one shard, steal=False"):
        assert len(stealing["contenders"][name]["stolen_in"]) == report["config"]["repeats"]
    assert stealing["contenders"]["one shard, steal=False"]["busiest_shard_share"] == 1.0
    for ratio in (
        "parallelism_2_threads_vs_1",
        "zipf_steal_vs_no_steal",
        "zipf_steal_vs_uniform",
        "one_shard_steal_vs_no_steal",
    ):
        assert stealing[ratio] > 0, ratio
    assert set(stealing["per_item_cost"]["contenders"]) == set(STEAL_COST_CONTENDERS)
    assert stealing["per_item_cost"]["steal_vs_no_steal"] > 0
    assert "Work stealing" in proc.stdout

    latency = report["batch_latency"]
    assert latency["items"] == len(latency["delays_ms"]) > 0
    assert latency["max_batch"] >= 1
    for key in ("p50_ms", "p99_ms", "max_ms"):
        assert latency[key] > 0, key
        assert latency["control_simplequeue_thread"][key] > 0, key
    assert "Batch deadline latency" in proc.stdout

    reuse = report["batch_reuse"]
    assert set(reuse["contenders"]) == set(REUSE_CONTENDERS)
    assert reuse["reuse_vs_no_reuse"] > 0
    assert set(reuse["allocations"]) == {"reuse_batches=True", "reuse_batches=False"}
    for mode, alloc in reuse["allocations"].items():
        assert alloc["batches"] > 0, mode
        assert alloc["lists_allocated"] >= 1, mode
        assert "peak_traced_kib" in alloc
    # Without reuse every batch gets a new list (a count, not a timing).
    off = reuse["allocations"]["reuse_batches=False"]
    assert off["lists_allocated"] == off["batches"]
    assert "Pooled batch lists" in proc.stdout

    # The sweep: items/s per series at every point of both axes, and its chart.
    sweep = report["sweep"]
    assert sweep["workers"]["values"] == list(SWEEP_WORKERS)
    assert sweep["batch_size"]["values"] == list(SWEEP_BATCHES)
    for axis, names in (("workers", SWEEP_SERIES), ("batch_size", SWEEP_BATCH_SERIES)):
        assert set(sweep[axis]["series"]) == set(names)
        for name, ys in sweep[axis]["series"].items():
            assert len(ys) == len(sweep[axis]["values"]), (axis, name)
            assert all(y > 0 for y in ys), (axis, name)
    assert "Sweep over workers" in proc.stdout and "Sweep over batch size" in proc.stdout
    # Per-round ratios: one per round for every batch size (the targets use the worst).
    for key in ("pool_vs_simplequeue", "generator_vs_drain"):
        per_round = sweep["batch_size"]["per_round"][key]
        assert len(per_round) == len(SWEEP_BATCHES)
        assert all(len(r) == report["config"]["repeats"] and min(r) > 0 for r in per_round)
    assert (
        report["throughput"]["ShardedPool submit_many(generator) + batch_size=256"][
            "vs_generator_drain"
        ]
        > 0
    )
    _check_png(chart)

    targets = report["targets"]
    assert len(targets) >= 14
    for t in targets:
        assert set(t) >= {"name", "measured", "op", "threshold", "passed"}
        assert isinstance(t["passed"], bool)
        # Printed with the same verdict as in the JSON.
        verdict = "PASS" if t["passed"] else "MISS"
        assert any(verdict in line and t["name"] in line for line in proc.stdout.splitlines())


def test_negative_items_is_an_argparse_error() -> None:
    proc = _run("bench", "--items", "-5", timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "--items" in errors[0]
    assert "-5" in errors[0]


def test_sections_selects_what_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run("bench", "--quick", "--sections", "latency,reuse", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["config"]["sections"] == ["latency", "reuse"]
    assert {"batch_latency", "batch_reuse"} <= set(report)
    assert not {"throughput", "gil_release", "stealing", "memory", "idle"} & set(report)


def test_unknown_section_is_an_argparse_error() -> None:
    proc = _run("bench", "--sections", "stealing,nope", timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert "--sections" in errors[0]
    assert "nope" in errors[0]


def test_missing_command_is_an_argparse_error() -> None:
    proc = _run(timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr


def _check_png(path: Path) -> None:
    """A real, non-trivial PNG: signature, and a size matplotlib reads back."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert width > 800 and height > 400


def test_chart_needs_the_sweep_section(tmp_path: Path) -> None:
    proc = _run("bench", "--quick", "--sections", "latency", "--chart", str(tmp_path / "c.png"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    errors = proc.stderr.splitlines()
    assert len(errors) == 1 and "--chart" in errors[0] and "sweep" in errors[0]
    assert not (tmp_path / "c.png").exists()


def test_chart_without_matplotlib_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    # A matplotlib package that cannot be imported, first on the path.
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "shardflow", "bench", "--chart", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""  # refused before the (long) benchmark started
    errors = proc.stderr.splitlines()
    assert len(errors) == 1
    assert "pip install 'shardflow[plot]'" in errors[0]


def test_a_registered_section_runs_and_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry other sections plug into: one entry in SECTIONS."""

    def mine(ctx: BenchContext) -> SectionResult:
        print("my section ran", file=ctx.out)
        return SectionResult(
            "mine", {"items": ctx.items}, [Target("mine works", 2.0, ">=", 1)], ["a note"]
        )

    monkeypatch.setitem(SECTIONS, "mine", mine)
    out = io.StringIO()
    report = run_bench(items=10, repeats=1, quick=True, out=out, sections=["mine"])
    assert report["mine"] == {"items": 10}
    assert report["config"]["sections"] == ["mine"]
    assert report["targets"][0]["passed"] is True
    text = out.getvalue()
    assert "my section ran" in text and "PASS  mine works" in text and "note: a note" in text


def test_help_names_every_registered_section() -> None:
    # The help text is written out (so that --help does not import the benchmarks); it
    # must not fall behind the registry.
    from shardflow.bench import SECTIONS

    proc = _run("bench", "--help", timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert f"among {', '.join(SECTIONS)} (default: all)" in text
