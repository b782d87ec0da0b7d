"""``shardflow.Executor`` against ``ThreadPoolExecutor``: submit + wait, and map.

The same no-op tasks (``SHARDFLOW_BENCH_ITEMS``, default 100,000) for every contender, in
the groups ``executor-submit`` and ``executor-map``: ``pytest benchmarks/test_executor.py
--benchmark-only --benchmark-group-by=group`` shows each pair side by side. Creating the
executor (and starting its threads) happens in ``setup`` and is not timed; submitting,
running and waiting for every task is. ``python -m shardflow bench --sections executor``
runs the same contenders interleaved round by round, which is the fairer comparison on a
noisy machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor as StdExecutor
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import pytest

from shardflow import Executor
from shardflow.bench.common import WORKERS, noop

EXECUTORS: dict[str, Callable[[], StdExecutor]] = {
    "ThreadPoolExecutor": lambda: ThreadPoolExecutor(WORKERS),
    "shardflow.Executor": lambda: Executor(WORKERS),
}


def _setup(make: Callable[[], StdExecutor]) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def setup() -> tuple[tuple[StdExecutor], dict[str, Any]]:
        ex = make()
        # ThreadPoolExecutor starts its threads on submit: start them before the clock.
        wait_futures([ex.submit(time.sleep, 0.005) for _ in range(WORKERS)])
        return (ex,), {}

    return setup


@pytest.mark.benchmark(group="executor-submit")
@pytest.mark.parametrize("kind", list(EXECUTORS))
def test_submit_and_wait(
    benchmark: Any, items: int, rounds: int, record_rate: Any, kind: str
) -> None:
    """``[ex.submit(noop, x) for x in range(n)]``, then ``wait()`` for all of them."""

    def run(ex: StdExecutor) -> None:
        sub = ex.submit
        fn = noop
        wait_futures([sub(fn, x) for x in range(items)])
        ex.shutdown(wait=True)

    benchmark.pedantic(run, setup=_setup(EXECUTORS[kind]), rounds=rounds, iterations=1)
    record_rate(items)


@pytest.mark.benchmark(group="executor-map")
@pytest.mark.parametrize("kind", list(EXECUTORS))
def test_map(benchmark: Any, items: int, rounds: int, record_rate: Any, kind: str) -> None:
    """``list(ex.map(noop, range(n)))``."""

    def run(ex: StdExecutor) -> None:
        assert len(list(ex.map(noop, range(items)))) == items
        ex.shutdown(wait=True)

    benchmark.pedantic(run, setup=_setup(EXECUTORS[kind]), rounds=rounds, iterations=1)
    record_rate(items)
