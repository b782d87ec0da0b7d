"""Closed-breaker overhead and uncontended limiter cost, next to what users would pick
instead (pybreaker, threading.Semaphore). Each benchmark round runs LOOP operations so that
the harness's own per-round cost does not drown a ~50 ns operation: divide by LOOP.

Run: ``python -m pytest benchmarks/test_resilience.py -p no:cacheprovider``;
``python -m shardflow.bench.resilience`` prints the side-by-side table with ratios.
"""

from __future__ import annotations

import threading

import pytest

from shardflow.resilience.breaker import CircuitBreaker
from shardflow.resilience.limiter import Limiter

LOOP = 1000


def noop() -> None:
    return None


def loop_call(call, f):
    def run():
        for _ in range(LOOP):
            call(f)

    return run


def test_bare_call(benchmark):
    def run():
        for _ in range(LOOP):
            noop()

    benchmark.group = "breaker (per LOOP=1000 calls)"
    benchmark(run)


def test_shardflow_breaker_call(benchmark):
    breaker = CircuitBreaker(max_failures=5, reset_timeout=30)
    benchmark.group = "breaker (per LOOP=1000 calls)"
    benchmark(loop_call(breaker.call, noop))
    assert breaker.metrics().calls > 0


def test_pybreaker_call(benchmark):
    pybreaker = pytest.importorskip("pybreaker")
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    benchmark.group = "breaker (per LOOP=1000 calls)"
    benchmark(loop_call(breaker.call, noop))


def _with_loop(lock):
    def run():
        for _ in range(LOOP):
            with lock:
                pass

    return run


def _explicit_loop(lock):
    acquire, release = lock.acquire, lock.release

    def run():
        for _ in range(LOOP):
            acquire()
            release()

    return run


@pytest.mark.parametrize("kind", ["Limiter", "Semaphore"])
def test_uncontended_with(benchmark, kind):
    lock = Limiter(4) if kind == "Limiter" else threading.Semaphore(4)
    benchmark.group = "limiter `with` (per LOOP=1000)"
    benchmark(_with_loop(lock))


@pytest.mark.parametrize("kind", ["Limiter", "Semaphore"])
def test_uncontended_acquire_release(benchmark, kind):
    lock = Limiter(4) if kind == "Limiter" else threading.Semaphore(4)
    benchmark.group = "limiter acquire+release (per LOOP=1000)"
    benchmark(_explicit_loop(lock))


def test_bench_resilience_table_runs():
    """The side-by-side script works (small n; its numbers are not asserted)."""
    from shardflow.bench.resilience import bench_resilience

    result = bench_resilience(n=2000, rounds=3, show=False)
    assert set(result) == {"ns", "overhead_ns", "limiter_ns", "ratios"}
    assert "shardflow breaker.call(f)" in result["overhead_ns"]
