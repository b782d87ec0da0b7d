"""Side-by-side benchmarks behind ``python -m shardflow bench``.

Every contender runs in the same process, interleaved round by round (round ``r`` runs
each contender once, in an order rotated per round so that no contender always runs
right after the same neighbour), and the report gives the median per contender and the
ratios between them. That is the method of the engineering guide (section 4): on a
shared, noisy machine absolute figures drift from run to run, ratios measured side by
side drift much less.

Contenders moving no-op items (``noop(x)``; ``noop_batch(list)`` for batch modes):

* ``bare loop``: ``for x in range(n): noop(x)``, the single-thread ceiling under the GIL;
* ``ThreadPoolExecutor(2).submit``: run on ``n // 20`` items (it is slow) and reported
  as items/s, so that its ratios stay comparable;
* two consumer threads over one ``queue.Queue`` and over one ``queue.SimpleQueue`` (the
  main thread produces, a sentinel per consumer stops them);
* ``ShardedPool`` with per-item ``submit``, with ``batch_size=256`` and per-item
  ``submit``, and with ``batch_size=256`` fed by ``submit_many``.

Pool (and executor, and consumer thread) construction is excluded from the timings;
``close()`` + ``join()`` (or waiting for every future, or joining the consumers) is
included, so each timing covers every item being handled.

Extra sections: a handler that releases the GIL (sha256 of 64 KiB), the CPU an idle
pool burns, and memory (RSS growth through a bounded pool, reference counts after join);
work stealing (sha256 items on skewed, uniform and single-shard keys, steal on and off,
with a plain-thread control of the parallelism the machine gives, and what stealing costs
the per-item no-op path); the latency a batch deadline gives a lone item; and recycled
batch lists (``reuse_batches``) with their allocation counts; and a sweep of items/s
against workers and against batch size, ShardedPool vs the stdlib thread pools (drawn by
``shardflow.cli.chart`` for ``bench --chart``). ``SECTIONS`` is the registry: name -> a
``Section`` (``BenchContext -> SectionResult``); ``run_bench(sections=...)`` runs a subset.
The ``ray`` section (last) starts a local Ray cluster and compares a pool on
``RayBackend`` with hand-written Ray code, ``ActorPool`` and Ray's ``multiprocessing.Pool``;
without Ray installed it is skipped with a note.
Targets are checked against the measured ratios; nothing is hard-coded.

Layout: one module per section (``memory``, ``idle``, ``throughput``, ``gil``,
``stealing``, ``latency``, ``reuse``, ``pipeline``, ``executor``, ``sweep``, ``ray``), each with a
``run_section(ctx)``; the shared helpers (the no-op handlers, ``interleaved``, ``Target``,
the table printers) in ``common``. Section modules import ``common`` (and, for shared
contenders, ``throughput`` or ``gil``), never this package, so there is no import circle.
``resilience`` is a standalone comparison (``python -m shardflow.bench.resilience``).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, TextIO

from shardflow.bench import (
    columnar,
    executor,
    gil,
    idle,
    latency,
    memory,
    pipeline,
    process,
    ray,
    reuse,
    stealing,
    sweep,
    throughput,
)
from shardflow.bench.common import (
    TPE_DIVISOR,
    WORKERS,
    BenchContext,
    Section,
    Target,
    loadavg,
    noop,
    noop_batch,
    print_targets,
)
from shardflow.bench.throughput import CONTENDERS

__all__ = ["CONTENDERS", "SECTIONS", "Target", "noop", "noop_batch", "run_bench"]

#: The sections of the report, in the order they run (``run_bench(sections=...)``,
#: ``python -m shardflow bench --sections``). To add one, write a module with a
#: ``run_section(ctx: BenchContext) -> SectionResult`` and register it with one line here.
#: Memory first, on a clean heap: after the throughput runs, arenas freed by them would
#: absorb (and hide) growth. Idle next, while nothing else of ours runs.
SECTIONS: dict[str, Section] = {
    "memory": memory.run_section,
    "idle": idle.run_section,
    "throughput": throughput.run_section,
    "gil": gil.run_section,
    "stealing": stealing.run_section,
    "latency": latency.run_section,
    "reuse": reuse.run_section,
    "pipeline": pipeline.run_section,
    "executor": executor.run_section,
    "process": process.run_section,
    "columnar": columnar.run_section,
    "sweep": sweep.run_section,
    # Starts a local Ray cluster; without Ray installed it is skipped with a note.
    "ray": ray.run_section,
}


def run_bench(
    items: int = 1_000_000,
    repeats: int = 5,
    quick: bool = False,
    out: TextIO = sys.stdout,
    sections: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark sections, print the report to ``out`` and return it as a dict.

    Args:
        items: no-op items per contender per round (ThreadPoolExecutor moves
            ``items // 20``); also the items of the steal-cost and ``reuse_batches``
            comparisons.
        repeats: rounds; each round runs every contender once; the report is the median.
        quick: shrink the GIL, stealing, latency, idle, memory and sweep sections too (for
            tests and smoke runs); ``items`` and ``repeats`` are used as given.
        out: where the report goes.
        sections: which of ``SECTIONS`` to run; None runs them all.

    Returns:
        A JSON-able dict: ``config``, one key per section run (``memory``, ``idle``,
        ``throughput``, ``gil_release``, ``stealing``, ``batch_latency``, ``batch_reuse``,
        ``sweep`` ...) and the list of target checks of those sections.

    Example:
        >>> import io
        >>> report = run_bench(items=1000, repeats=1, quick=True, sections=["throughput"],
        ...                    out=io.StringIO())
        >>> sorted(report["throughput"]) == sorted(CONTENDERS)
        True
    """
    if items < 1:
        raise ValueError(f"items must be >= 1, got {items!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    chosen = tuple(SECTIONS) if sections is None else tuple(sections)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise ValueError(f"sections must be among {', '.join(SECTIONS)}; got {list(chosen)!r}")

    print(
        f"shardflow bench: {items:,} no-op items x {repeats} interleaved rounds, "
        f"{WORKERS} workers; Python {platform.python_version()} "
        f"({platform.python_implementation()}), {os.cpu_count()} CPUs",
        file=out,
    )
    print(
        f"(ThreadPoolExecutor moves {max(1, items // TPE_DIVISOR):,} items per round; "
        "all figures are medians)",
        file=out,
    )
    print(
        f"sections: {', '.join(s for s in SECTIONS if s in chosen)}; "
        f"load average at start: {loadavg()}",
        file=out,
    )
    out.flush()

    report: dict[str, Any] = {
        "config": {
            "items": items,
            "repeats": repeats,
            "quick": quick,
            "workers": WORKERS,
            "tpe_items": max(1, items // TPE_DIVISOR),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "cpus": os.cpu_count(),
            "sections": [s for s in SECTIONS if s in chosen],
            "loadavg_start": loadavg(),
        },
    }
    targets: list[Target] = []
    notes: list[str] = []
    ctx = BenchContext(items=items, repeats=repeats, quick=quick, out=out)
    for name, section in SECTIONS.items():
        if name not in chosen:
            continue
        result = section(ctx)
        report[result.key] = result.data
        targets += result.targets
        notes += result.notes
        out.flush()

    print(f"\nload average at end: {loadavg()}", file=out)
    if targets:
        print("\nTargets:", file=out)
        print_targets(targets, out)
    for note in notes:
        print(f"  note: {note}", file=out)
    out.flush()
    report["config"]["loadavg_end"] = loadavg()
    report["targets"] = [t.as_dict() for t in targets]
    return report
