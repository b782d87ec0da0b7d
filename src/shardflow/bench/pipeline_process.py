"""A row of the "process" section of ``shardflow bench``: a 2-stage ``Pipeline`` whose
first stage is a CPU-bound pure-Python map (~50 us per item), on worker processes vs
threads vs a serial loop, side by side in one run.

The pipeline is ``source -> map(pipe_cpu) -> map(pipe_post)``: the CPU-bound stage with
``workers=2`` on ``backend="process"`` (or threads), the cheap second stage on a thread
(where a stage that costs less than its IPC belongs). Contenders:

* **serial**: ``[pipe_post(pipe_cpu(x)) for x in source]``;
* **threads**: the same pipeline with both stages on threads (the GIL serializes them);
* **process**: the CPU-bound stage on 2 worker processes;
* **process, ordered**: the same with ``ordered=True`` (results in source order);
* **both on processes, fused**: the second stage on the same backend too: the stages
  fuse, and an item goes through both in the worker (``Pipeline(fuse=...)``);
* **control**: 2 plain processes each looping ``pipe_cpu`` over half the items (what
  parallelism the machine gives right now; on a loaded machine it is well below 2x).

A pipeline runs once, so each round builds one; its worker processes start before the
source is read, and a round is timed from the source's first item to the last result
(start-up is the process section's own row).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any, TextIO

from shardflow.bench.common import (
    WORKERS,
    Runner,
    Target,
    fmt_rate,
    interleaved,
    print_table,
    safe_ratio,
    two_process_control,
)
from shardflow.pipeline import Pipeline

__all__ = ["pipe_cpu", "pipe_post", "section_rows"]

CPU_LOOP = 1_000  # iterations of pipe_cpu's loop: ~50 us on these machines (3.11)

SERIAL = "serial loop"
THREADS = "Pipeline, CPU stage on 2 threads"
PROCESS = "Pipeline, CPU stage on 2 processes"
PROCESS_ORDERED = "same, ordered=True"
FUSED = "both stages on 2 processes (fused)"
CONTROL = "control: 2 plain processes, static halves"


def pipe_cpu(x: int) -> int:
    """A pure-Python stage function that burns ~50 us of CPU holding the GIL."""
    s = x
    for i in range(CPU_LOOP):
        s += i * i
    return s


def pipe_post(x: int) -> int:
    """The cheap second stage."""
    return x & 0xFFFF


class _Timed:
    """A source that notes when its first item is taken (every stage has started)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.t0 = 0.0

    def __iter__(self) -> Iterator[int]:
        self.t0 = time.perf_counter()
        yield from range(self.n)


def _half(lo: int, hi: int, stamps: Any, slot: int, barrier: Any) -> None:
    barrier.wait()
    stamps[2 * slot] = time.monotonic()
    for x in range(lo, hi):
        pipe_post(pipe_cpu(x))
    stamps[2 * slot + 1] = time.monotonic()


def _serial(n: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    out = [pipe_post(pipe_cpu(x)) for x in range(n)]
    dt = time.perf_counter() - t0
    if len(out) != n:
        raise RuntimeError("pipeline bench: serial loop lost items")
    return n, dt


def _pipeline(backend: Any, ordered: bool, second: Any = "thread") -> Runner:
    def run(n: int) -> tuple[int, float]:
        source = _Timed(n)
        p = (
            Pipeline(source, ordered=ordered)
            .map(pipe_cpu, workers=WORKERS, backend=backend)
            .map(pipe_post, workers=1 if second == "thread" else WORKERS, backend=second)
        )
        report = p.run()
        dt = time.perf_counter() - source.t0
        if report.results != n or not report.balanced:
            raise RuntimeError(f"pipeline bench: {report.results} of {n} results")
        return n, dt

    return run


def section_rows(
    ctx: Any, quick: bool, repeats: int, out: TextIO
) -> tuple[dict[str, Any], list[Target]]:
    """Run the row (``ctx``: the section's multiprocessing context); returns (JSON-able
    data, targets)."""
    from shardflow.backends.process import ProcessBackend

    n = 2_000 if quick else 20_000
    backend = ProcessBackend(mp_context=ctx)
    rates = interleaved(
        {
            SERIAL: _serial,
            THREADS: _pipeline("thread", False),
            PROCESS: _pipeline(backend, False),
            PROCESS_ORDERED: _pipeline(backend, True),
            FUSED: _pipeline(backend, False, backend),
            CONTROL: two_process_control(ctx, _half),
        },
        lambda _: n,
        repeats,
    )
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"\n2-stage Pipeline, CPU-bound map (~50 us/item) then a cheap map ({n:,} items)", file=out
    )
    rows = [["contender", "items/s", "vs serial"]]
    for name, r in med.items():
        rows.append([name, fmt_rate(r), f"{safe_ratio(r, med[SERIAL]):.2f}x"])
    print_table(rows, out)
    targets = [
        Target(
            "pipeline CPU stage on 2 processes >= on 2 threads",
            safe_ratio(med[PROCESS], med[THREADS]),
            ">=",
            1.0,
        ),
        Target(
            "pipeline CPU stage on 2 processes >= 0.9x the 2-process control",
            safe_ratio(med[PROCESS], med[CONTROL]),
            ">=",
            0.9,
        ),
    ]
    return {"items": n, "rates": rates}, targets
