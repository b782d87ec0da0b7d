"""Micro-benchmarks of the resilience primitives against what a user would pick instead.

``bench_resilience()`` measures, in one process and interleaving the contenders round by
round (so that frequency scaling and noise hit all of them alike), the median cost per
call of:

* ``f()`` bare, ``CircuitBreaker.call(f)`` (closed state) and ``pybreaker``'s
  ``CircuitBreaker.call(f)`` when pybreaker is installed: the overhead is the difference
  to the bare call;
* ``Limiter`` vs ``threading.Semaphore``, uncontended, via ``with`` and via explicit
  ``acquire()``/``release()``.

Run: ``python -c "from shardflow.bench.resilience import bench_resilience; bench_resilience()"``
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["bench_resilience"]


def _noop() -> None:
    return None


def _timer(body: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter_ns()
    body(n)
    return (time.perf_counter_ns() - t0) / n


def _contenders() -> dict[str, Callable[[int], None]]:
    from shardflow.resilience.breaker import CircuitBreaker
    from shardflow.resilience.limiter import Limiter

    f = _noop
    breaker = CircuitBreaker(max_failures=5, reset_timeout=30)
    limiter = Limiter(4)
    sem = threading.Semaphore(4)
    out: dict[str, Callable[[int], None]] = {}

    def bare(n: int) -> None:
        for _ in range(n):
            f()

    def shardflow_call(n: int) -> None:
        call = breaker.call
        for _ in range(n):
            call(f)

    out["f() bare"] = bare
    out["shardflow breaker.call(f)"] = shardflow_call

    try:
        import pybreaker
    except ImportError:
        pass
    else:
        pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

        def pybreaker_call(n: int) -> None:
            call = pyb.call
            for _ in range(n):
                call(f)

        out["pybreaker .call(f)"] = pybreaker_call

    def lim_with(n: int) -> None:
        lim = limiter
        for _ in range(n):
            with lim:
                pass

    def sem_with(n: int) -> None:
        s = sem
        for _ in range(n):
            with s:
                pass

    def lim_explicit(n: int) -> None:
        acquire, release = limiter.acquire, limiter.release
        for _ in range(n):
            acquire()
            release()

    def sem_explicit(n: int) -> None:
        acquire, release = sem.acquire, sem.release
        for _ in range(n):
            acquire()
            release()

    def empty_loop(n: int) -> None:
        for _ in range(n):
            pass

    out["empty loop"] = empty_loop
    out["Limiter with"] = lim_with
    out["Semaphore with"] = sem_with
    out["Limiter acquire+release"] = lim_explicit
    out["Semaphore acquire+release"] = sem_explicit
    return out


def bench_resilience(n: int = 200_000, rounds: int = 9, *, show: bool = True) -> dict[str, Any]:
    """Measure and return ``{"ns": {name: median ns per call}, "overhead_ns": {...},
    "ratios": {...}}``; print a table when ``show``."""
    contenders = _contenders()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for body in contenders.values():  # warm-up
        body(n // 10)
    for _ in range(rounds):
        for name, body in contenders.items():
            samples[name].append(_timer(body, n))
    med = {name: statistics.median(v) for name, v in samples.items()}
    bare = med["f() bare"]
    overhead = {
        name: med[name] - bare
        for name in ("shardflow breaker.call(f)", "pybreaker .call(f)")
        if name in med
    }
    loop = med["empty loop"]
    limiter_ns = {
        name: med[name] - loop
        for name in (
            "Limiter with",
            "Semaphore with",
            "Limiter acquire+release",
            "Semaphore acquire+release",
        )
    }
    ratios: dict[str, float] = {
        "Semaphore/Limiter (with)": limiter_ns["Semaphore with"] / limiter_ns["Limiter with"],
        "Semaphore/Limiter (acquire+release)": limiter_ns["Semaphore acquire+release"]
        / limiter_ns["Limiter acquire+release"],
    }
    if "pybreaker .call(f)" in overhead:
        ratios["pybreaker/shardflow breaker overhead"] = (
            overhead["pybreaker .call(f)"] / overhead["shardflow breaker.call(f)"]
        )
    result = {"ns": med, "overhead_ns": overhead, "limiter_ns": limiter_ns, "ratios": ratios}
    if show:
        print(f"median of {rounds} rounds x {n} calls, contenders interleaved")
        print(f"{'contender':38} {'ns/call':>9}")
        for name, v in med.items():
            print(f"{name:38} {v:9.1f}")
        print("breaker overhead over bare f() (ns/call):")
        for name, v in overhead.items():
            print(f"  {name:36} {v:9.1f}")
        print("limiter cost over an empty loop (ns/pair):")
        for name, v in limiter_ns.items():
            print(f"  {name:36} {v:9.1f}")
        if "pybreaker .call(f)" not in med:
            print("(pybreaker not installed: skipped; pip install pybreaker)")
        for name, v in ratios.items():
            print(f"{name:38} {v:9.1f}x")
    return result


if __name__ == "__main__":
    bench_resilience()
