"""The "executor" section of ``python -m shardflow bench``: ``shardflow.Executor`` against
``concurrent.futures.ThreadPoolExecutor``, side by side in one process.

Four contenders, interleaved round by round (``common.interleaved``: the order rotates
each round), every one on the same no-op function and the same number of tasks:

* ``submit + wait``: ``futures = [ex.submit(noop, x) for x in range(n)]`` then
  ``concurrent.futures.wait(futures)``, for ``ThreadPoolExecutor(2)`` and
  ``shardflow.Executor(2)``;
* ``map``: ``list(ex.map(noop, range(n)))`` for both.

Executor construction (and starting its threads) is not timed; submitting, running and
waiting for every task is. Targets: submit >= 5x and map >= 10x ThreadPoolExecutor.

Run alone: ``python -m shardflow bench --sections executor``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor as StdExecutor
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TextIO

from shardflow.bench.common import (
    WORKERS,
    BenchContext,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    noop,
    print_table,
    safe_ratio,
)
from shardflow.executor import Executor

__all__ = ["CONTENDERS", "section_executor"]

#: Tasks per contender per round (capped: ThreadPoolExecutor moves ~100k no-op tasks/s).
MAX_TASKS = 100_000

TPE_SUBMIT = "ThreadPoolExecutor(2) submit + wait"
SF_SUBMIT = "shardflow.Executor(2) submit + wait"
TPE_MAP = "ThreadPoolExecutor(2) map"
SF_MAP = "shardflow.Executor(2) map"

Runner = Callable[[int], tuple[int, float]]


def _started(make: Callable[[], StdExecutor]) -> StdExecutor:
    """An executor whose worker threads are up (ThreadPoolExecutor starts them lazily,
    on submit), so that thread start-up is not timed for either."""
    ex = make()
    wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
    return ex


def _submit_runner(make: Callable[[], StdExecutor]) -> Runner:
    def run(n: int) -> tuple[int, float]:
        ex = _started(make)
        try:
            sub = ex.submit
            fn = noop
            t0 = time.perf_counter()
            futures = [sub(fn, x) for x in range(n)]
            wait_futures(futures)
            dt = time.perf_counter() - t0
        finally:
            ex.shutdown(wait=True)
        return n, dt

    return run


def _map_runner(make: Callable[[], StdExecutor]) -> Runner:
    def run(n: int) -> tuple[int, float]:
        ex = _started(make)
        try:
            t0 = time.perf_counter()
            out = list(ex.map(noop, range(n)))
            dt = time.perf_counter() - t0
        finally:
            ex.shutdown(wait=True)
        assert len(out) == n
        return n, dt

    return run


def _tpe() -> StdExecutor:
    return ThreadPoolExecutor(WORKERS)


def _shardflow() -> StdExecutor:
    return Executor(WORKERS)


#: The contenders, in report order.
CONTENDERS: dict[str, Runner] = {
    TPE_SUBMIT: _submit_runner(_tpe),
    SF_SUBMIT: _submit_runner(_shardflow),
    TPE_MAP: _map_runner(_tpe),
    SF_MAP: _map_runner(_shardflow),
}


def section_executor(items: int, repeats: int, out: TextIO) -> tuple[dict[str, Any], list[Target]]:
    """Run the contenders (``min(items, MAX_TASKS)`` tasks each, ``repeats`` rounds),
    print the table and return the JSON-able section and its targets."""
    n = min(items, MAX_TASKS)
    rates = interleaved(CONTENDERS, lambda _name: n, repeats)
    med = {name: statistics.median(r) for name, r in rates.items()}
    submit_ratio = safe_ratio(med[SF_SUBMIT], med[TPE_SUBMIT])
    map_ratio = safe_ratio(med[SF_MAP], med[TPE_MAP])
    print(
        f"\nExecutors: {n:,} no-op tasks per contender per round, {WORKERS} workers",
        file=out,
    )
    rows = [["contender", "tasks/s", "vs ThreadPoolExecutor"]]
    for name in CONTENDERS:
        base = med[TPE_MAP] if "map" in name else med[TPE_SUBMIT]
        rows.append([name, fmt_rate(med[name]), f"{safe_ratio(med[name], base):.2f}x"])
    print_table(rows, out)
    out.flush()
    section = {
        "tasks": n,
        "contenders": {
            name: {"tasks_per_s": med[name], "samples": rates[name]} for name in CONTENDERS
        },
        "submit_vs_tpe": submit_ratio,
        "map_vs_tpe": map_ratio,
    }
    targets = [
        Target("Executor submit + wait >= 5x ThreadPoolExecutor", submit_ratio, ">=", 5),
        Target("Executor map >= 10x ThreadPoolExecutor", map_ratio, ">=", 10),
    ]
    return section, targets


def run_section(ctx: BenchContext) -> SectionResult:
    """The ``executor`` section of ``shardflow bench``: ``shardflow.Executor`` vs
    ``ThreadPoolExecutor``."""
    data, targets = section_executor(ctx.items, ctx.repeats, ctx.out)
    return SectionResult("executor", data, targets)
