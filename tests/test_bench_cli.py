"""``python -m shardflow bench``: the command runs, prints its table, writes its JSON, and
refuses bad options the argparse way. No timing is asserted: figures depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardflow._bench import CONTENDERS

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
    proc = _run("bench", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

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
    targets = report["targets"]
    assert len(targets) >= 9
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


def test_missing_command_is_an_argparse_error() -> None:
    proc = _run(timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr
