"""Third-party process pools as contenders for the ``process`` section: loky and mpire,
each only where it is installed (they are never dependencies of shardflow; ``pip install
loky mpire`` in the bench environment adds them).

Each factory returns ``(runner, close)`` or None when the library does not import:

* ``noop_batches``: no-op items, 1,000 per task (``chunksize=1000``), unordered;
* ``cpu_default``: the CPU-bound handler over ``range(n)`` with the library's default
  chunking (what a user who picks no chunk size gets).

Pools are created once (their start-up is not timed) and kept across rounds, as the
section does for its own contenders.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from shardflow.bench.common import WORKERS, Runner

__all__ = ["CONTENDERS", "make_contenders"]

Made = tuple[Runner, Callable[[], None]]


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _loky(fn: Callable[[Any], object], chunksize: int | None) -> Made | None:
    loky = _import("loky")
    if loky is None:
        return None
    executor = loky.get_reusable_executor(max_workers=WORKERS)
    list(executor.map(fn, range(WORKERS)))  # workers up before the timed rounds

    def run(n: int) -> tuple[int, float]:
        import time

        t0 = time.perf_counter()
        done = 0
        for _ in executor.map(fn, range(n), chunksize=chunksize or 1):
            done += 1
        dt = time.perf_counter() - t0
        if done != n:
            raise RuntimeError(f"loky moved {done} of {n}")
        return n, dt

    return run, lambda: executor.shutdown(wait=True)


def _mpire(fn: Callable[[Any], object], chunksize: int | None) -> Made | None:
    mpire = _import("mpire")
    if mpire is None:
        return None
    pool = mpire.WorkerPool(n_jobs=WORKERS, keep_alive=True, start_method="forkserver")
    pool.map_unordered(fn, range(WORKERS))  # workers up before the timed rounds

    def run(n: int) -> tuple[int, float]:
        import time

        t0 = time.perf_counter()
        done = 0
        kwargs: dict[str, Any] = {} if chunksize is None else {"chunk_size": chunksize}
        for _ in pool.imap_unordered(fn, range(n), **kwargs):
            done += 1
        dt = time.perf_counter() - t0
        if done != n:
            raise RuntimeError(f"mpire moved {done} of {n}")
        return n, dt

    return run, pool.terminate


#: contender name prefix -> factory(fn, chunksize) -> (runner, close) or None
CONTENDERS: dict[str, Callable[[Callable[[Any], object], int | None], Made | None]] = {
    "loky get_reusable_executor(2).map": _loky,
    "mpire WorkerPool(2).imap_unordered": _mpire,
}


def make_contenders(
    fn: Callable[[Any], object], chunksize: int | None
) -> tuple[dict[str, Runner], list[Callable[[], None]], list[str]]:
    """Every installed contender for ``fn`` (``chunksize`` None: the library's default):
    ``(runners by name, closers, names of those not installed)``."""
    runners: dict[str, Runner] = {}
    closers: list[Callable[[], None]] = []
    missing: list[str] = []
    suffix = "(its chunking)" if chunksize is None else f"(chunksize={chunksize})"
    for name, factory in CONTENDERS.items():
        made = factory(fn, chunksize)
        if made is None:
            missing.append(name.split()[0])
            continue
        runner, close = made
        runners[f"{name} {suffix}"] = runner
        closers.append(close)
    return runners, closers, missing
