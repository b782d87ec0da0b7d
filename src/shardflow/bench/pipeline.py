"""The pipeline section of ``python -m shardflow bench``: 3 no-op stages, side by side.

Contenders, each moving ``n`` items through three calls of ``f = lambda x: x`` (``identity``
here, the same call) and waiting until the last one is done:

* ``bare loop``: ``for x in range(n): f(f(f(x)))``, the single-thread ceiling under the
  GIL (no concurrency, nothing bounded, nothing to wait for);
* ``3 threads over queue.SimpleQueue``: what a user writes instead, one thread per stage,
  per-item ``get``/``put`` (unbounded queues: memory is not bounded);
* ``3 threads over queue.Queue(maxsize)``: the bounded version (moves ``n //
  QUEUE_DIVISOR`` items, it is slow; reported as items/s);
* ``Pipeline(...).map(f).map(f).map(f).run()``, and the same with ``ordered=True``.

Contenders run interleaved round by round (``shardflow.bench.interleaved``); the report
gives medians and ratios. Peak memory: a fresh interpreter per size runs one pipeline and
reports its peak RSS (``VmHWM``, or ``ru_maxrss`` where /proc is missing), for the pipeline
and for the SimpleQueue threads.

Run alone: ``python -m shardflow bench --sections pipeline``.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, TextIO

from shardflow.bench.common import (
    BenchContext,
    Runner,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    print_table,
    safe_ratio,
)

__all__ = ["pipeline_section", "rss_child"]

#: The bounded-queue contender moves this fraction of the items (about 1 us per hand-off).
QUEUE_DIVISOR = 10
#: maxsize of the bounded queues: the same as a pipeline stage's ring.
QUEUE_MAXSIZE = 8192

BARE = "bare loop f(f(f(x)))"
SIMPLEQ = "3 threads over SimpleQueue"
BOUNDEDQ = f"3 threads over Queue({QUEUE_MAXSIZE})"
PIPE = "Pipeline .map(f) x3 .run()"
PIPE_ORDERED = "Pipeline ordered=True"

STOP = object()


def identity(x: object) -> object:
    """``f = lambda x: x`` of the issue (a def only to keep linters quiet; same call)."""
    return x


def run_bare(n: int) -> tuple[int, float]:
    f = identity
    t0 = time.perf_counter()
    for x in range(n):
        f(f(f(x)))
    return n, time.perf_counter() - t0


def _run_threads(make: Any, n: int) -> tuple[int, float]:
    qs = [make() for _ in range(4)]
    done = [0]

    def stage(q_in: Any, q_out: Any | None) -> None:
        get = q_in.get
        f = identity
        if q_out is None:
            k = 0
            while True:
                x = get()
                if x is STOP:
                    done[0] = k
                    return
                f(x)
                k += 1
        put = q_out.put
        while True:
            x = get()
            if x is STOP:
                put(STOP)
                return
            put(f(x))

    threads = [
        threading.Thread(target=stage, args=(qs[0], qs[1])),
        threading.Thread(target=stage, args=(qs[1], qs[2])),
        threading.Thread(target=stage, args=(qs[2], None)),
    ]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    put = qs[0].put
    for x in range(n):
        put(x)
    put(STOP)
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return done[0], dt


def run_simplequeue(n: int) -> tuple[int, float]:
    return _run_threads(queue.SimpleQueue, n)


def run_boundedqueue(n: int) -> tuple[int, float]:
    return _run_threads(lambda: queue.Queue(maxsize=QUEUE_MAXSIZE), n)


def _run_pipeline(n: int, ordered: bool) -> tuple[int, float]:
    from shardflow.pipeline import Pipeline

    f = identity
    p = Pipeline(range(n), ordered=ordered).map(f).map(f).map(f)
    t0 = time.perf_counter()
    report = p.run()
    dt = time.perf_counter() - t0
    return report.results, dt


def run_pipeline(n: int) -> tuple[int, float]:
    return _run_pipeline(n, False)


def run_pipeline_ordered(n: int) -> tuple[int, float]:
    return _run_pipeline(n, True)


def _peak_rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def rss_child(kind: str, n: int) -> None:
    """In a fresh interpreter: move ``n`` items with ``kind`` ("pipeline" or
    "simplequeue"), print a JSON line with the peak RSS before and after."""
    import shardflow.pipeline  # noqa: F401  (imported before the baseline is taken)

    before = _peak_rss_kb()
    if kind == "pipeline":
        moved, dt = run_pipeline(n)
    elif kind == "simplequeue":
        moved, dt = run_simplequeue(n)
    else:
        raise ValueError(f"kind must be 'pipeline' or 'simplequeue', got {kind!r}")
    print(
        json.dumps(
            {
                "kind": kind,
                "items": n,
                "moved": moved,
                "seconds": dt,
                "peak_before_kb": before,
                "peak_kb": _peak_rss_kb(),
            }
        )
    )


def measure_rss(kind: str, n: int) -> dict[str, Any]:
    code = f"from shardflow.bench.pipeline import rss_child; rss_child({kind!r}, {n})"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def pipeline_section(
    items: int, repeats: int, quick: bool, out: TextIO
) -> tuple[dict[str, Any], list[Any]]:
    """Run the section; returns (report dict, list of ``shardflow.bench.Target``)."""

    runners: dict[str, Runner] = {
        BARE: run_bare,
        SIMPLEQ: run_simplequeue,
        BOUNDEDQ: run_boundedqueue,
        PIPE: run_pipeline,
        PIPE_ORDERED: run_pipeline_ordered,
    }

    def n_for(name: str) -> int:
        return max(1, items // QUEUE_DIVISOR) if name == BOUNDEDQ else items

    print(
        f"\nPipeline: 3 no-op stages, {items:,} items x {repeats} interleaved rounds "
        f"({BOUNDEDQ} moves {n_for(BOUNDEDQ):,}); load average {loadavg()}",
        file=out,
    )
    out.flush()
    rates = interleaved(runners, n_for, repeats)
    med = {name: statistics.median(r) for name, r in rates.items()}
    rows = [["contender", "median", "vs bare loop", "vs SimpleQueue"]]
    for name in runners:
        rows.append(
            [
                name,
                fmt_rate(med[name]),
                f"{safe_ratio(med[name], med[BARE]):.2f}x",
                f"{safe_ratio(med[name], med[SIMPLEQ]):.2f}x",
            ]
        )
    print_table(rows, out)

    sizes = (items // 20, items // 2) if quick else (1_000_000, 10_000_000)
    rss: dict[str, list[dict[str, Any]]] = {"pipeline": [], "simplequeue": []}
    for kind in rss:
        for n in sizes:
            rss[kind].append(measure_rss(kind, n))
    for kind, runs in rss.items():
        cells = ", ".join(
            f"{r['items']:,} items: peak {r['peak_kb'] / 1024:.1f} MB "
            f"(import {r['peak_before_kb'] / 1024:.1f} MB)"
            for r in runs
        )
        print(f"Peak RSS, {kind}: {cells}", file=out)
    growth = (rss["pipeline"][1]["peak_kb"] - rss["pipeline"][0]["peak_kb"]) / 1024
    targets = [
        Target("pipeline 3 no-op stages >= 5M items/s", med[PIPE] / 1e6, ">=", 5, unit="M/s"),
        Target(
            f"pipeline peak RSS {sizes[1]:,} vs {sizes[0]:,} items < 20 MB more",
            growth,
            "<",
            20,
            unit="MB",
        ),
    ]
    report = {
        "items": items,
        "repeats": repeats,
        "rates": rates,
        "medians": med,
        "ratios_vs_bare": {k: safe_ratio(v, med[BARE]) for k, v in med.items()},
        "rss": rss,
        "loadavg_end": loadavg(),
    }
    return report, targets


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def run_section(ctx: BenchContext) -> SectionResult:
    """The ``pipeline`` section of ``shardflow bench``: 3 no-op stages vs a bare loop and
    stage threads over queues."""
    data, targets = pipeline_section(ctx.items, ctx.repeats, ctx.quick, ctx.out)
    return SectionResult("pipeline", data, targets)
