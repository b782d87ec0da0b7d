"""Progress display for long runs (``shardflow demo``, ``shardflow run``).

The display is fed from the pool's counters, never from a per-item callback: a daemon
thread calls ``source()`` (typically built on ``pool.metrics()``, which sums the per-shard
single-writer counters) a few times per second and redraws. Nothing is added to the
per-item path, so a run with progress on moves items exactly as fast as one without.

Two renderers:

* ``"rich"``: a ``rich`` progress bar (the ``progress`` extra: ``pip install
  'shardflow[progress]'``), used when rich is importable and the stream is a terminal;
* ``"plain"``: no dependency. On a terminal, one line redrawn in place with ``\\r``; in a
  log file or pipe, a new line at most once per second (a carriage return would garble it).

Whether to show anything at all is the caller's choice; the CLI's default is "only when
stderr is a terminal" (``want_progress``).

Example:
    >>> import io, shardflow
    >>> from shardflow.cli.progress import Progress, from_metrics
    >>> pool = shardflow.ShardedPool(lambda x: None, workers=2)
    >>> out = io.StringIO()
    >>> with Progress(lambda: from_metrics(pool.metrics()), total=1000, stream=out,
    ...               style="plain", label="demo"):
    ...     _ = pool.submit_many(range(1000))
    ...     pool.shutdown()
    >>> "1,000/1,000" in out.getvalue()
    True
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from shardflow import _fork
from shardflow._validate import check_choice, check_int, check_seconds
from shardflow.metrics import PoolMetrics

__all__ = ["STYLES", "Progress", "Snapshot", "from_metrics", "rich_available", "want_progress"]

#: Accepted ``style`` values: ``auto`` picks ``rich`` on a terminal when it is installed.
STYLES = ("auto", "rich", "plain")


@dataclass(frozen=True)
class Snapshot:
    """What the display shows: items ``done`` (handled, whatever the outcome), how many of
    those were ``errors`` (failed or dead-lettered) and how many are ``queued``."""

    done: int
    errors: int = 0
    queued: int = 0


def from_metrics(m: PoolMetrics, *, extra_done: int = 0, extra_errors: int = 0) -> Snapshot:
    """A ``Snapshot`` of a pool's counters; ``extra_*`` add items settled outside the pool
    (e.g. malformed input lines that never reached it)."""
    errors = m.failed + m.dead_lettered + extra_errors
    done = m.processed + m.failed + m.dead_lettered + m.dropped + m.returned + extra_done
    return Snapshot(done=done, errors=errors, queued=m.depth)


def rich_available() -> bool:
    """True when the optional ``rich`` package can be imported."""
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


def want_progress(flag: bool | None, stream: TextIO) -> bool:
    """The CLI's rule: ``--progress`` / ``--no-progress`` win; without either, show
    progress only when ``stream`` is a terminal (not in pipes, files, CI logs)."""
    if flag is not None:
        return flag
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:80]


def _fmt_count(n: float) -> str:
    return f"{n:,.0f}"


def _fmt_rate(r: float) -> str:
    if r >= 1e6:
        return f"{r / 1e6:.2f}M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f}k/s"
    return f"{r:.0f}/s"


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


class Progress:
    """Show a run's progress on ``stream`` until ``stop()`` (or the ``with`` block's end).

    Args:
        source: called from the display thread every ``interval`` seconds; returns a
            ``Snapshot`` (``from_metrics(pool.metrics())`` is the usual one). It must be
            safe to call from another thread, as ``pool.metrics()`` is.
        total: items expected, or None when unknown (then a count and a rate are shown).
        duration: for runs bounded by time rather than by count: the bar follows the
            clock over ``duration`` seconds.
        stream: where to draw; default ``sys.stderr``.
        style: ``"auto"``, ``"rich"`` or ``"plain"`` (see the module docstring); ``"rich"``
            without rich installed raises ``ImportError`` naming the extra.
        label: shown before the bar.
        interval: seconds between redraws; default 0.1 on a terminal, 1.0 otherwise.

    ``stop()`` draws a last, final state (taken after the work ended, so it is exact) and
    ends the line. Example: see the module docstring.
    """

    def __init__(
        self,
        source: Callable[[], Snapshot],
        *,
        total: int | None = None,
        duration: float | None = None,
        stream: TextIO | None = None,
        style: str = "auto",
        label: str = "",
        interval: float | None = None,
    ) -> None:
        if not callable(source):
            raise TypeError(f"source must be a callable returning a Snapshot, got {source!r}")
        if total is not None:
            check_int("total", total, lo=0)
        check_seconds("duration", duration, positive=True)
        check_choice("style", style, STYLES)
        check_seconds("interval", interval, positive=True)
        self.source = source
        self.total = total
        self.duration = duration
        self.stream: TextIO = sys.stderr if stream is None else stream
        self.label = label
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty is not None and isatty())
        if style == "auto":
            style = "rich" if self._tty and rich_available() else "plain"
        elif style == "rich" and not rich_available():
            raise ImportError(
                "style='rich' needs the rich package: pip install 'shardflow[progress]'"
            )
        self.style = style
        self.interval = interval if interval is not None else (0.1 if self._tty else 1.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fork_gen = _fork.generation  # the display thread's process (see _fork)
        self._t0 = 0.0
        self._rich: Any = None
        self._task: Any = None
        self._width = 0  # length of the last plain line drawn in place
        self._failed: Exception | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Progress:
        """Start the display thread (idempotent); returns self. A display started before
        ``fork()`` raises ``RuntimeError`` in the child (its thread is not there)."""
        self._check_fork()
        if self._thread is not None:
            return self
        self._fork_gen = _fork.generation
        self._t0 = time.monotonic()
        if self.style == "rich":
            self._start_rich()
        self._thread = threading.Thread(target=self._run, name="shardflow-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, draw the final state and end the line (idempotent)."""
        self._check_fork()
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._draw(final=True)
        if self._rich is not None:
            self._rich.stop()

    def _check_fork(self) -> None:
        if self._thread is not None and self._fork_gen != _fork.generation:
            raise _fork.fork_error("Progress display")

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        # The first draw waits one interval: very short runs then print only the final line.
        while not self._stop.wait(self.interval):
            self._draw(final=False)

    # ------------------------------------------------------------------ drawing

    def _fraction(self, snap: Snapshot, elapsed: float) -> float | None:
        if self.duration is not None:
            return min(1.0, elapsed / self.duration)
        if self.total:
            return min(1.0, snap.done / self.total)
        return None

    def _info(self, snap: Snapshot, elapsed: float) -> str:
        rate = snap.done / elapsed if elapsed > 0 else 0.0
        parts = [_fmt_rate(rate)]
        if snap.errors:
            parts.append(f"errors {_fmt_count(snap.errors)}")
        parts.append(f"queued {_fmt_count(snap.queued)}")
        return "  ".join(parts)

    def _draw(self, *, final: bool) -> None:
        try:
            snap = self.source()
        except Exception as exc:  # a display must never take the run down
            if self._failed is None:
                self._failed = exc
                self.label = f"{self.label} (progress source failed: {_short(exc)})"
            snap = Snapshot(done=0)
        elapsed = time.monotonic() - self._t0
        if self._rich is not None:
            self._draw_rich(snap, elapsed, final)
        else:
            self._draw_plain(snap, elapsed, final)

    def _plain_line(self, snap: Snapshot, elapsed: float, final: bool) -> str:
        frac = self._fraction(snap, elapsed)
        count = _fmt_count(snap.done)
        if self.total is not None and self.duration is None:
            count += f"/{_fmt_count(self.total)}"
        head = f"{self.label}  " if self.label else ""
        if frac is not None:
            width = 20
            filled = int(frac * width)
            bar = "[" + "#" * filled + "-" * (width - filled) + f"] {frac:4.0%}  "
        else:
            bar = ""
        tail = f"  {_fmt_seconds(elapsed)}"
        if not final and frac is not None and frac > 0:
            tail += f", ETA {_fmt_seconds(elapsed / frac - elapsed)}"
        return f"{head}{bar}{count}  {self._info(snap, elapsed)}{tail}"

    def _draw_plain(self, snap: Snapshot, elapsed: float, final: bool) -> None:
        line = self._plain_line(snap, elapsed, final)
        try:
            if self._tty:
                columns = shutil.get_terminal_size((100, 24)).columns
                line = line[: max(10, columns - 1)]
                pad = " " * max(0, self._width - len(line))
                self._width = len(line)
                self.stream.write("\r" + line + pad + ("\n" if final else ""))
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream (a pipe whose reader left): stop drawing, keep running.
            self._stop.set()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        console = Console(file=self.stream)
        self._rich = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[info]}"),
            TextColumn("{task.fields[clock]}"),
            console=console,
            auto_refresh=False,  # our thread redraws; no second thread
            transient=False,
        )
        total = self.duration if self.duration is not None else self.total
        self._task = self._rich.add_task(
            self.label or "shardflow", total=total, count="", info="", clock=""
        )
        self._rich.start()

    def _draw_rich(self, snap: Snapshot, elapsed: float, final: bool) -> None:
        count = _fmt_count(snap.done)
        if self.total is not None and self.duration is None:
            count += f"/{_fmt_count(self.total)}"
        frac = self._fraction(snap, elapsed)
        clock = _fmt_seconds(elapsed)
        if not final and frac:
            clock += f", ETA {_fmt_seconds(elapsed / frac - elapsed)}"
        completed = elapsed if self.duration is not None else snap.done
        if final and self.duration is not None:
            completed = self.duration
        self._rich.update(
            self._task,
            completed=completed,
            count=count,
            info=self._info(snap, elapsed),
            clock=clock,
        )
        self._rich.refresh()
