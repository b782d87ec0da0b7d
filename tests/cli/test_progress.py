"""The progress display (``shardflow.cli.progress``): fed from pool counters by a polling
thread, plain or rich, shown on terminals only unless asked, never fatal to a run."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import shardflow
from helpers import CHILD_TIMEOUT, WAIT, wait_until
from shardflow.cli.progress import Progress, Snapshot, from_metrics, rich_available, want_progress


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_from_metrics_counts_every_outcome_as_done() -> None:
    gate = threading.Event()

    def handler(x: int) -> None:
        if x % 10 == 0:
            raise ValueError(x)
        gate.wait(WAIT)

    dead: list[object] = []
    pool: shardflow.ShardedPool[int] = shardflow.ShardedPool(
        handler, workers=2, dead_letter=lambda item, exc: dead.append(item)
    )
    pool.submit_many(range(100))
    gate.set()
    pool.shutdown()
    snap = from_metrics(pool.metrics(), extra_done=3, extra_errors=3)
    assert snap == Snapshot(done=103, errors=13, queued=0)


def test_want_progress_follows_the_flag_then_the_terminal() -> None:
    assert want_progress(None, FakeTTY()) is True
    assert want_progress(None, io.StringIO()) is False
    assert want_progress(True, io.StringIO()) is True
    assert want_progress(False, FakeTTY()) is False


def test_plain_progress_redraws_one_line_on_a_terminal() -> None:
    done = [0]
    out = FakeTTY()
    p = Progress(
        lambda: Snapshot(done=done[0], errors=1, queued=5),
        total=10,
        stream=out,
        style="plain",
        label="job",
        interval=0.01,
    )
    with p:
        done[0] = 4
        assert wait_until(lambda: "4/10" in out.getvalue())
        done[0] = 10
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert text.count("\n") == 1  # redrawn in place, one line ended at the end
    final = text.rsplit("\r", 1)[1]
    assert "job" in final and "10/10" in final and "100%" in final
    assert "errors 1" in final and "queued 5" in final
    assert "ETA" not in final


def test_plain_progress_writes_whole_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress(lambda: Snapshot(done=7), stream=out, style="plain", interval=0.01):
        assert wait_until(lambda: out.getvalue().count("\n") >= 2)
    assert "\r" not in out.getvalue()
    # Total unknown: a count and a rate, no bar.
    last = out.getvalue().splitlines()[-1]
    assert "7" in last and "/s" in last and "[" not in last


def test_duration_runs_follow_the_clock() -> None:
    out = io.StringIO()
    p = Progress(lambda: Snapshot(done=3), duration=1000.0, stream=out, style="plain")
    p.start()
    p.stop()
    line = out.getvalue().splitlines()[-1]
    assert "0%" in line and "3 " in line  # elapsed/1000 s of the bar; items counted


def test_a_failing_source_does_not_stop_the_display_or_the_run() -> None:
    calls = [0]

    def source() -> Snapshot:
        calls[0] += 1
        raise RuntimeError("metrics unavailable")

    out = io.StringIO()
    with Progress(source, total=5, stream=out, style="plain", label="x", interval=0.01):
        assert wait_until(lambda: calls[0] >= 3)
    assert "progress source failed: RuntimeError: metrics unavailable" in out.getvalue()
    assert out.getvalue().count("progress source failed") == out.getvalue().count("\n")


def test_stop_is_idempotent_and_start_too() -> None:
    out = io.StringIO()
    p = Progress(lambda: Snapshot(done=1), total=1, stream=out, style="plain")
    assert p.start() is p.start()
    p.stop()
    p.stop()
    assert out.getvalue().count("\n") == 1


@pytest.mark.skipif(not rich_available(), reason="rich (the progress extra) is not installed")
def test_rich_progress_draws_a_bar_on_a_terminal() -> None:
    out = FakeTTY()
    p = Progress(
        lambda: Snapshot(done=50, queued=2), total=50, stream=out, style="auto", label="rows"
    )
    assert p.style == "rich"
    p.start()
    p.stop()
    text = out.getvalue()
    assert "rows" in text and "50/50" in text and "100%" in text


def test_style_rich_without_rich_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    monkeypatch.setitem(sys.modules, "rich", None)
    assert rich_available() is False
    with pytest.raises(ImportError, match=r"shardflow\[progress\]"):
        Progress(lambda: Snapshot(done=0), style="rich")
    # auto falls back to the plain line.
    assert Progress(lambda: Snapshot(done=0), style="auto", stream=FakeTTY()).style == "plain"


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"total": -1}, ValueError, "total"),
        ({"total": 1.5}, TypeError, "total"),
        ({"duration": 0}, ValueError, "duration"),
        ({"style": "fancy"}, ValueError, "style must be one of 'auto', 'rich', 'plain'"),
        ({"interval": 0}, ValueError, "interval"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        Progress(lambda: Snapshot(done=0), **kwargs)  # type: ignore[arg-type]


def test_source_must_be_callable() -> None:
    with pytest.raises(TypeError, match="source must be a callable"):
        Progress(42)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals (pty) are POSIX only")
def test_demo_on_a_terminal_shows_progress_by_default(tmp_path: Path) -> None:
    """End to end: stderr is a pseudo-terminal, no flag given: the bar is drawn (rich
    when installed, else the plain line) and the run ends normally."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardflow", "demo", "--events", "3000", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], CHILD_TIMEOUT)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    err = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "demo" in err and "3,000/3,000" in err and "100%" in err
    assert b"Accounting" in out
