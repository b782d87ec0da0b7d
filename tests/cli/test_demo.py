"""``shardflow demo``: the main job runs end to end, prints its tables and the checked
accounting, exits 0 when it balances and 1 when it does not, and refuses bad options with
one line and exit status 2. Small runs (a few thousand events) keep these tests short."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import pytest

from helpers import interrupt
from shardflow.cli import demo as _demo
from shardflow.cli.demo import DemoConfig, FlakySink, event_stream, run_demo, zipf_cdf

CHILD_TIMEOUT = 120


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardflow", "demo", *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=cwd,
        check=False,
    )


def accounting(stdout: str) -> list[str]:
    lines = stdout.split("Accounting (every event, exactly once):\n", 1)[1].splitlines()
    return [line for line in lines if line.strip()]


def shard_rows(stdout: str) -> list[list[int]]:
    """The per-shard table's numeric rows (shard index first), without the totals."""
    block = stdout.split("Per shard:\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in block.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit():
            rows.append([int(c.replace(",", "")) for c in cells])
    return rows


def test_demo_runs_and_every_event_is_accounted_for(tmp_path: Path) -> None:
    proc = demo("--events", "20000", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # Not a terminal and no --progress: nothing on stderr at all.
    assert proc.stderr == ""
    assert "20,000 events in" in out and "events/s" in out
    rows = shard_rows(out)
    assert [r[0] for r in rows] == [0, 1]
    # submitted, processed, failed, dead letters per shard add up to the events.
    assert sum(r[1] for r in rows) == 20_000
    assert sum(r[2] + r[3] + r[4] for r in rows) == 20_000
    for header in ("submitted", "processed", "failed", "dead letters", "stolen in", "high water"):
        assert header in out
    # Latency percentiles from the pool's histograms (queue wait is sampled).
    assert re.search(r"queue wait +p50 .* p99 .* max .*\(([\d,]+) samples\)", out)
    assert re.search(r"service time +p50 .* p90 .* p999 .* \(([\d,]+) samples\)", out)
    assert "Downstream:" in out and "breaker: opened" in out and "retry:" in out
    assert "Dead letters:" in out
    lines = accounting(out)
    assert len(lines) == 4
    assert all(line.rstrip().endswith("OK") for line in lines), lines
    assert re.search(r"events 20,000 = submitted 20,000 = processed [\d,]+ \+ dead-lettered", out)
    assert "per-user order: 0 of 20,000 events out of order" in out


def test_demo_for_a_duration_with_batches_and_stealing(tmp_path: Path) -> None:
    proc = demo(
        "--seconds", "1", "--workers", "3", "--batch-size", "16", "--unordered", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 s, 3 workers, batch_size=16" in proc.stdout
    assert "unordered (stealing on)" in proc.stdout
    assert len(shard_rows(proc.stdout)) == 3
    lines = accounting(proc.stdout)
    assert len(lines) == 3  # no order check when order was given up
    assert all(line.rstrip().endswith("OK") for line in lines), lines


def test_progress_flag_draws_on_a_pipe_and_no_progress_silences(tmp_path: Path) -> None:
    shown = demo("--events", "3000", "--progress", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    # Not a terminal: whole lines (no carriage returns), the last one complete.
    assert "\r" not in shown.stderr
    assert re.search(r"demo .*100%.*3,000/3,000", shown.stderr.splitlines()[-1])
    hidden = demo("--events", "3000", "--no-progress", cwd=tmp_path)
    assert hidden.returncode == 0 and hidden.stderr == ""


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["--events", "0"], "--events", "0"),
        (["--events", "many"], "--events", "many"),
        (["--seconds", "0"], "--seconds", "0"),
        (["--seconds", "-2"], "--seconds", "-2"),
        (["--seconds", "nan"], "--seconds", "nan"),
        (["--workers", "0"], "--workers", "0"),
        (["--workers", "99999"], "--workers", "99999"),
        (["--batch-size", "0"], "--batch-size", "0"),
        (["--seed", "x1"], "--seed", "x1"),
        (["--events", "10", "--seconds", "1"], "--seconds", "--events"),
        (["--frobnicate"], "unrecognized", "--frobnicate"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    args: list[str], option: str, value: str, tmp_path: Path
) -> None:
    proc = demo(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardflow demo: error: "), lines[0]
    assert option in lines[0] and value in lines[0]


def test_an_unbalanced_account_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """The equations are checked, not just printed: a sink that loses a record on the
    way makes the demo fail."""
    real_write = FlakySink.write

    def lossy_write(self: FlakySink, records: list[dict[str, Any]]) -> None:
        real_write(self, records)
        if records[0]["id"] == 5:
            self.written -= 1

    monkeypatch.setattr(FlakySink, "write", lossy_write)
    out, err = io.StringIO(), io.StringIO()
    status = run_demo(DemoConfig(events=2_000, workers=2, progress=False), out, err)
    assert status == 1
    assert "MISMATCH" in out.getvalue()
    assert "does not balance" in err.getvalue()


def test_the_stream_is_deterministic_keyed_and_numbered_per_user() -> None:
    first = [e for chunk in event_stream(7, 3_000) for e in chunk]
    again = [e for chunk in event_stream(7, 3_000) for e in chunk]
    assert [(e["user"], e["seq"]) for e in first] == [(e["user"], e["seq"]) for e in again]
    assert len(first) == 3_000 and [e["id"] for e in first] == list(range(3_000))
    seen: dict[int, int] = {}
    for e in first:
        assert e["seq"] == seen.get(e["user"], 0)
        seen[e["user"]] = e["seq"] + 1
        assert _demo.PAYLOAD_MIN <= len(e["payload"]) <= _demo.PAYLOAD_MAX
    # Zipf: the most frequent user is user 0, and it is far above the average.
    counts: dict[int, int] = {}
    for e in first:
        counts[e["user"]] = counts.get(e["user"], 0) + 1
    assert max(counts, key=counts.__getitem__) == 0
    assert counts[0] > 20 * len(first) / len(counts)
    cdf = zipf_cdf(4, 1.0)
    assert cdf == pytest.approx([1, 1.5, 1.5 + 1 / 3, 1.5 + 1 / 3 + 0.25])


def test_flaky_sink_fails_in_its_outage_then_recovers() -> None:
    sink = FlakySink(seed=1, failure_rate=0.0, outage_seconds=60, outage_after=2)
    sink.write([{"bytes": 1}, {"bytes": 1}])
    with pytest.raises(ConnectionError, match="outage"):
        sink.write([{"bytes": 1}])
    assert (sink.written, sink.refused, sink.calls) == (2, 1, 2)
    always = FlakySink(seed=1, failure_rate=1.0)
    with pytest.raises(TimeoutError):
        always.write([{"bytes": 1}])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child there")
def test_ctrl_c_stops_promptly_and_still_accounts_for_every_event(tmp_path: Path) -> None:
    def started(stdout: IO[str]) -> None:
        assert stdout.readline().startswith("shardflow demo: 100,000,000 events")
        stdout.readline()

    # Let it get going for 0.5 s: the pool has taken events once they start being handled.
    code, out, err = interrupt(
        [sys.executable, "-m", "shardflow", "demo", "--events", "100000000", "--no-progress"],
        tmp_path,
        started,
        wait=0.5,
        timeout=CHILD_TIMEOUT,
    )
    assert code == 130, err
    assert "Traceback" not in err
    lines = accounting(out)
    assert all(line.rstrip().endswith("OK") for line in lines), lines
    # Events queued but not started were handed back, and counted as such.
    returned = re.search(r"\+ returned ([\d,]+)", out)
    assert returned is not None and int(returned.group(1).replace(",", "")) > 0


def test_latency_lines_print_the_percentiles_the_pool_measured() -> None:
    lat = SimpleNamespace(p50=2e-6, p90=5e-4, p99=0.0123, p999=0.5, max=1.25, count=1234)
    empty = SimpleNamespace(p50=0.0, p90=0.0, p99=0.0, p999=0.0, max=0.0, count=0)
    lines = _demo.latency_lines(SimpleNamespace(queue_wait=lat, service_time=empty))  # type: ignore[arg-type]
    assert lines == [
        "  queue wait    p50     2.0 us  p90   500.0 us  p99   12.30 ms  p999  500.00 ms  "
        "max    1.25 s   (1,234 samples)"
    ]
