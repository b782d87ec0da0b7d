"""Helpers every section of ``shardflow bench`` shares.

The no-op handlers, the ``Runner`` convention (takes a number of items, returns ``(items
moved, seconds)``), ``interleaved`` (each round runs every contender once, in an order
rotated per round, so that no contender always runs right after the same neighbour),
``Target`` (a measured ratio against its threshold, nothing hard-coded), the table
printers, and the ``BenchContext`` / ``SectionResult`` / ``Section`` types of the registry
in ``shardflow.bench``.
"""

from __future__ import annotations

import gc
import hashlib
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

#: A timed run: takes the number of items, returns ``(items actually moved, seconds)``.
Runner = Callable[[int], tuple[int, float]]


BATCH = 256
WORKERS = 2
#: ThreadPoolExecutor moves this fraction of the items (a Future per item is slow).
TPE_DIVISOR = 20
SHA_BUF_SIZE = 64 * 1024


STOP = object()


def noop(x: object) -> None:
    """The per-item handler every no-op contender calls."""


def noop_batch(b: object) -> None:
    """The batch handler (``batch_size > 1``)."""


def sha256_handler(buf: bytes) -> None:
    """A handler that releases the GIL: hashlib drops it for buffers over 2 KiB."""
    hashlib.sha256(buf).digest()


_SHA_BUF: bytes | None = None


def sha_buffer() -> bytes:
    global _SHA_BUF
    if _SHA_BUF is None:
        _SHA_BUF = os.urandom(SHA_BUF_SIZE)
    return _SHA_BUF


def quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted data (numpy's default method)."""
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Target:
    """One acceptance check: ``measured <op> threshold``."""

    name: str
    measured: float
    op: str  # ">=", "<", "<=", "=="
    threshold: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        """Whether the measured value meets the threshold."""
        if self.op == ">=":
            return self.measured >= self.threshold
        if self.op == "<":
            return self.measured < self.threshold
        if self.op == "<=":
            return self.measured <= self.threshold
        if self.op == "==":
            return self.measured == self.threshold
        raise ValueError(f"unknown comparison {self.op!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "measured": self.measured,
            "op": self.op,
            "threshold": self.threshold,
            "unit": self.unit,
            "passed": self.passed,
        }


def interleaved(
    runners: dict[str, Runner], n_for: Callable[[str], int], repeats: int
) -> dict[str, list[float]]:
    """Run every runner once per round, ``repeats`` rounds, rotating the order each round.

    Returns the items/s of every run, per runner name.
    """
    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            moved, dt = runners[name](n_for(name))
            rates[name].append(moved / dt if dt > 0 else float("inf"))
    return rates


def two_process_control(ctx: Any, half: Callable[..., None]) -> Runner:
    """The machine's own parallelism, as a contender: 2 plain processes (of ``ctx``)
    running ``half(lo, hi, stamps, slot, barrier)`` over static halves of ``range(n)``,
    timed from the first loop's start to the last one's end as the children recorded them
    in ``stamps`` (``time.monotonic``, system-wide on Linux; process start-up is not what
    this control is about). ``half`` must be importable by the children."""

    def run(n: int) -> tuple[int, float]:
        stamps = ctx.RawArray("d", 4)
        barrier = ctx.Barrier(2)
        mid = n // 2
        procs = [
            ctx.Process(target=half, args=(0, mid, stamps, 0, barrier)),
            ctx.Process(target=half, args=(mid, n, stamps, 1, barrier)),
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        return n, max(stamps[1], stamps[3]) - min(stamps[0], stamps[2])

    return run


def safe_ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def current_rss_bytes() -> int:
    """Resident set size now (Linux ``/proc/self/statm``); elsewhere the peak RSS."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:8.2f} M/s"
    return f"{x / 1e3:8.1f} k/s"


def print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells), file=out)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_targets(targets: list[Target], out: TextIO) -> None:
    width = max(len(t.name) for t in targets)
    for t in targets:
        verdict = "PASS" if t.passed else "MISS"
        unit = "x" if t.unit == "x" else f" {t.unit}"
        measured = f"{t.measured:.2f}{unit}"
        print(f"  {verdict}  {t.name.ljust(width)}  measured {measured}", file=out)


@dataclass(frozen=True)
class BenchContext:
    """What every section gets: the run's sizes and where to print."""

    items: int  #: no-op items per contender per round
    repeats: int  #: interleaved rounds (medians are reported)
    quick: bool  #: smoke-test sizes
    out: TextIO


@dataclass
class SectionResult:
    """What a section returns: its part of the JSON report under ``key``, its target
    checks and notes (printed after the targets)."""

    key: str
    data: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: A section: measures, prints its own table to ``ctx.out``, returns its result.
Section = Callable[[BenchContext], SectionResult]


def loadavg() -> str:
    """The 1/5/15-minute load averages, or "n/a" where ``os.getloadavg`` is missing."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"
