#!/usr/bin/env python3
"""Single-item round trips through an idle process pool, with context switches per trip.

    python benchmarks/process_rtt.py [TRIPS [ROUNDS [CONTENDERS]]]   # default 1000 5 pool,exec,ring

Each trip sleeps ``GAP_S`` (300 us, as ``shardflow bench``'s ``RTT_GAP_S``: every thread and
worker has parked) and then times one round trip:

* ``pool``: ``ShardedPool(noop, workers=2, backend=ProcessBackend(...), on_results=cb)``:
  ``submit(x)``, then wait for the callback (a ``threading.Event``), as the bench's row;
* ``exec``: ``Executor(2, backend=ProcessBackend(...)).submit(noop, x).result()``;
* ``ring``: the floor: a bare parent/child ping-pong over two ``ShmRing``s (futex park,
  default spin), the child echoing ``[x]``;
* ``ppe``: ``ProcessPoolExecutor(2).submit(noop, x).result()``;
* ``phases``: ``pool`` with a handler that returns the time it ran (``perf_counter_ns``,
  CLOCK_MONOTONIC, one clock for every process on Linux); prints, per trip, the medians
  of when ``submit`` returned, the handler ran (in the worker), ``on_results`` ran (the
  collector thread) and the caller woke, from the start of the trip: where the time goes;
* ``pool:S``, ``exec:S``: ``pool`` / ``exec`` with ``ProcessBackend(spin_us=S)`` (the
  busy-poll of the workers and collectors before they park; default 20 us), e.g.
  ``pool:0,pool:20,pool:500``.

Contenders run interleaved, the order rotating per round; the report gives p50/p99 of all
trips, the per-round p50, and the context switches per trip of the parent's threads and
the contender's workers (``/proc/<pid>/task/*/status``: voluntary + involuntary), which
are far less sensitive to the machine's load than the times. For system calls per trip,
run it under ``strace -f -c`` with 1 and 1001 trips and divide the difference by 1000.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from shardflow import Executor
from shardflow._shmring import DEFAULT_SPIN_US, RingClosed, ShmRing
from shardflow.backends.process import ProcessBackend
from shardflow.bench.common import noop, quantile
from shardflow.pool import ShardedPool

GAP_S = 0.0003


def ring_child(tasks: ShmRing, results: ShmRing) -> None:
    try:
        while True:
            results.put_pickled(tasks.get())
    except RingClosed:
        results.close_writer()


def stamp(x: int) -> int:
    """The ``phases`` handler: when it ran in the worker."""
    return time.perf_counter_ns()


def ctx_switches(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
            except OSError:
                pass
    return total


def main() -> None:
    trips = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    which = sys.argv[3].split(",") if len(sys.argv) > 3 else ["pool", "exec", "ring"]
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    fns: dict[str, Callable[[int], None]] = {}
    pids_of: dict[str, Callable[[], list[int]]] = {}
    closers: list[Callable[[], object]] = []
    for name in which:
        kind, _, spin = name.partition(":")
        if kind not in ("pool", "exec"):
            continue
        backend = ProcessBackend(mp_context=ctx, spin_us=float(spin) if spin else DEFAULT_SPIN_US)
        if kind == "pool":
            got = threading.Event()

            def done(items: list[Any], values: list[Any], got: threading.Event = got) -> None:
                got.set()

            pool: ShardedPool[Any] = ShardedPool(noop, workers=2, backend=backend, on_results=done)

            def via_pool(x: int, pool: ShardedPool[Any] = pool, got: Any = got) -> None:
                got.clear()
                pool.submit(x)
                got.wait()

            fns[name] = via_pool
            pids_of[name] = pool._runner.worker_pids  # type: ignore[attr-defined]
            closers.append(pool.shutdown)
        else:
            ex: Any = Executor(2, backend=backend)

            def via_exec(x: int, ex: Any = ex) -> None:
                ex.submit(noop, x).result()

            fns[name] = via_exec
            pids_of[name] = ex._pool._runner.worker_pids
            closers.append(ex.shutdown)
    phases: list[tuple[int, int, int, int, int]] = []  # start, submitted, handler, cb, woken
    if "phases" in which:
        seen = threading.Event()
        at: list[int] = [0, 0]

        def stamped(items: list[Any], values: list[Any]) -> None:
            at[0], at[1] = time.perf_counter_ns(), values[0]
            seen.set()

        staged: ShardedPool[Any] = ShardedPool(
            stamp, workers=2, backend=ProcessBackend(mp_context=ctx), on_results=stamped
        )

        def via_phases(x: int) -> None:
            seen.clear()
            t0 = time.perf_counter_ns()
            staged.submit(x)
            t1 = time.perf_counter_ns()
            seen.wait()
            phases.append((t0, t1, at[1], at[0], time.perf_counter_ns()))

        fns["phases"] = via_phases
        pids_of["phases"] = staged._runner.worker_pids  # type: ignore[attr-defined]
        closers.append(staged.shutdown)
    if "ring" in which:
        tq, rq = ShmRing.create(1 << 16), ShmRing.create(1 << 16)
        child = ctx.Process(target=ring_child, args=(tq, rq))
        child.start()
        rq.watch(child.sentinel)

        def via_ring(x: int) -> None:
            tq.put_pickled([x])
            rq.get(timeout=30)

        def close_ring() -> None:
            tq.close_writer()
            child.join(10)

        fns["ring"] = via_ring
        pids_of["ring"] = lambda: [child.pid or -1]
        closers.append(close_ring)
    if "ppe" in which:
        from concurrent.futures import ProcessPoolExecutor

        ppe = ProcessPoolExecutor(2, mp_context=ctx)
        fns["ppe"] = lambda x: ppe.submit(noop, x).result()
        closers.append(ppe.shutdown)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    per_round: dict[str, list[float]] = {k: [] for k in fns}
    switches: dict[str, list[float]] = {k: [] for k in fns}
    try:
        for fn in fns.values():
            for x in range(50):  # warm-up
                fn(x)
        names = list(fns)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = fns[name]
                pids = [os.getpid(), *(pids_of[name]() if name in pids_of else [])]
                before = ctx_switches(pids)
                out = []
                for x in range(trips):
                    time.sleep(GAP_S)
                    t0 = time.perf_counter_ns()
                    fn(x)
                    out.append((time.perf_counter_ns() - t0) / 1e3)
                switches[name].append((ctx_switches(pids) - before) / trips)
                samples[name] += out
                out.sort()
                per_round[name].append(quantile(out, 0.5))
    finally:
        for close in closers:
            close()
    print(
        f"{trips} trips x {rounds} rounds, gap {GAP_S * 1e6:.0f} us, {method}; "
        f"load {os.getloadavg()}"
    )
    for name, lat in samples.items():
        lat.sort()
        print(
            f"{name:9} p50 {quantile(lat, 0.5):7.1f} us  p99 {quantile(lat, 0.99):8.1f} us  "
            f"per-round p50 {' '.join(f'{v:.1f}' for v in per_round[name])}  "
            f"ctx-switches/trip {' '.join(f'{v:.2f}' for v in switches[name])}"
        )
    if phases:
        del phases[:50]  # the warm-up
        cols = [sorted((row[k] - row[0]) / 1e3 for row in phases) for k in range(1, 5)]
        print(
            "phases (p50 us from the start of the trip): submit returned "
            f"{quantile(cols[0], 0.5):.1f}, handler ran {quantile(cols[1], 0.5):.1f}, "
            f"on_results ran {quantile(cols[2], 0.5):.1f}, caller woke {quantile(cols[3], 0.5):.1f}"
        )


if __name__ == "__main__":
    main()
