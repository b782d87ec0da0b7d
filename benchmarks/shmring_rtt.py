#!/usr/bin/env python3
"""Round trip parent -> child -> parent of a small pickled batch over two shared-memory
rings (``shardflow._shmring.ShmRing``), against ``multiprocessing.Pipe`` and
``multiprocessing.Pool(1).apply``, one request in flight (an otherwise idle pair).

    nice python benchmarks/shmring_rtt.py                       # 7 rounds x 2000 trips
    nice python benchmarks/shmring_rtt.py --rounds 9 --trips 5000 --start-method spawn
    python benchmarks/shmring_rtt.py --pickle-paths             # dumps+copy vs Pickler(file)

Each contender has its own child process, started once before the rounds. Round r runs
every contender for ``--trips`` round trips, in an order that rotates from round to round
(interleaved, so machine noise hits every contender alike), and records every round trip
with ``time.perf_counter_ns``; the report gives, per contender, the median over rounds of
the per-round p50 and p99, and the p50 ratio to the Pipe round trip.

Contenders (the child echoes the unpickled batch back, pickled again):

* ``shmring spin Xus``: rings with ``spin_us=X`` on both sides (busy-poll up to X us, then
  futex), one contender per value of ``--spins`` (default: ShmRing's default and 0);
  ``shmring no spin`` (0): every wait that finds nothing parks on the futex and every hop
  is a futex wake-up (the floor of a parked worker);
* ``shmring idle gap``: the parent sleeps ``--gap-us`` (default 300 us) between requests,
  so the child has gone to sleep each time (not timed: only the trip); one contender per
  value of ``--gap-spins`` (default: ShmRing's default and 0). With 0 both hops are futex
  wake-ups; with a spin, the parent's wait for the reply may catch it spinning (one
  wake-up per trip): the floor of a round trip through a parked worker;
* ``Pipe``: ``conn.send(batch)`` / ``conn.recv()``, the child ``send(recv())``; and the
  same with the idle gap;
* ``Pool(1).apply``: ``pool.apply(echo, (batch,))``.

``--pickle-paths`` measures the choice made in ``ShmRing.put_pickled``: ``pickle.dumps``
then one copy into the ring, against pickling straight into a file object (the only way
the stdlib pickler writes elsewhere), per payload, as medians of repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from shardflow._shmring import DEFAULT_SPIN_US, RingClosed, ShmRing

BATCH = list(range(16))  # a small batch: 16 ints, 60 bytes pickled


def echo(x: Any) -> Any:
    return x


def ring_child(tasks: ShmRing, results: ShmRing) -> None:
    try:
        while True:
            results.put_pickled(tasks.get())
    except RingClosed:
        results.close_writer()


def pipe_child(conn: Connection) -> None:
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(x)


class Contender:
    def __init__(self, name: str) -> None:
        self.name = name
        self.p50: list[float] = []
        self.p99: list[float] = []

    def trip(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self, trips: int) -> None:
        samples = [self.trip() for _ in range(trips)]
        samples.sort()
        self.p50.append(samples[len(samples) // 2] / 1000)
        self.p99.append(samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000)

    def close(self) -> None:
        pass


class RingContender(Contender):
    def __init__(self, name: str, ctx: Any, spin_us: float, gap_us: float) -> None:
        super().__init__(name)
        self.tasks = ShmRing.create(1 << 16, spin_us=spin_us)
        self.results = ShmRing.create(1 << 16, spin_us=spin_us)
        self.proc = ctx.Process(target=ring_child, args=(self.tasks, self.results))
        self.proc.start()
        self.results.watch(self.proc.sentinel)
        self.gap = gap_us / 1e6
        self.trip()  # the child is up

    def trip(self) -> int:
        if self.gap:
            time.sleep(self.gap)
        t0 = time.perf_counter_ns()
        self.tasks.put_pickled(BATCH)
        out = self.results.get(timeout=30)
        t1 = time.perf_counter_ns()
        assert out == BATCH
        return t1 - t0

    def close(self) -> None:
        self.tasks.close_writer()
        self.proc.join(30)


class PipeContender(Contender):
    def __init__(self, ctx: Any, gap_us: float = 0) -> None:
        super().__init__(f"Pipe idle gap {gap_us:g}us" if gap_us else "Pipe")
        self.gap = gap_us / 1e6
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=pipe_child, args=(child,))
        self.proc.start()
        child.close()
        self.trip()

    def trip(self) -> int:
        if self.gap:
            time.sleep(self.gap)
        t0 = time.perf_counter_ns()
        self.conn.send(BATCH)
        out = self.conn.recv()
        t1 = time.perf_counter_ns()
        assert out == BATCH
        return t1 - t0

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)


class PoolContender(Contender):
    def __init__(self, ctx: Any) -> None:
        super().__init__("Pool(1).apply")
        self.pool = ctx.Pool(1)
        self.trip()

    def trip(self) -> int:
        t0 = time.perf_counter_ns()
        out = self.pool.apply(echo, (BATCH,))
        t1 = time.perf_counter_ns()
        assert out == BATCH
        return t1 - t0

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def rtt(args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context(args.start_method)
    spins = [float(x) for x in args.spins.split(",")]
    contenders: list[Contender] = [
        RingContender(f"shmring spin {x:g}us" if x else "shmring no spin", ctx, x, 0) for x in spins
    ]
    contenders += [
        RingContender(f"shmring idle gap {args.gap_us:g}us spin {x:g}us", ctx, x, args.gap_us)
        for x in [float(v) for v in args.gap_spins.split(",")]
    ]
    contenders += [
        PipeContender(ctx),
        PipeContender(ctx, args.gap_us),
        PoolContender(ctx),
    ]
    try:
        for r in range(args.rounds):
            k = r % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                c.run(args.trips)
    finally:
        for c in contenders:
            c.close()
    pipe = statistics.median(next(c for c in contenders if c.name == "Pipe").p50)
    print(
        f"round trip of a {len(pickle.dumps(BATCH, 5))}-byte pickled batch, one in flight; "
        f"{args.rounds} rounds x {args.trips} trips, start method {args.start_method}, "
        f"Python {sys.version.split()[0]}"
    )
    print(f"{'contender':28} {'p50 us':>8} {'p99 us':>8} {'p50 / Pipe':>11}   per-round p50")
    for c in contenders:
        p50, p99 = statistics.median(c.p50), statistics.median(c.p99)
        rounds = " ".join(f"{x:.1f}" for x in c.p50)
        print(f"{c.name:28} {p50:8.1f} {p99:8.1f} {p50 / pipe:10.2f}x   {rounds}")


class _Sink:
    """A file object whose ``write`` is a C method (bytearray.extend): the cheapest
    destination the stdlib pickler can write into."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[Any], Any]) -> None:
        self.write = write


def pickle_paths(args: argparse.Namespace) -> None:
    payloads = {
        "16 ints": list(range(16)),
        "1000 ints": list(range(1000)),
        "100 dicts": [{"id": i, "user": f"u{i}", "v": i * 0.5} for i in range(100)],
    }
    ring = ShmRing.create(1 << 20)
    buf = bytearray()
    sink = _Sink(buf.extend)
    print(
        f"{'payload':10} {'dumps ns':>9} {'Pickler(file) ns':>17} {'ratio':>6} "
        f"{'put_pickled+get ns':>19}"
    )
    for name, obj in payloads.items():

        def via_dumps(obj: Any = obj) -> None:
            pickle.dumps(obj, 5)

        def via_file(obj: Any = obj) -> None:
            buf.clear()
            pickle.Pickler(sink, 5).dump(obj)

        def ring_trip(obj: Any = obj) -> None:
            ring.put_pickled(obj)
            ring.get()

        n = 2000
        a, b, c = [], [], []
        for _ in range(args.rounds):  # interleaved
            a.append(min(timeit.repeat(via_dumps, number=n, repeat=3)) / n * 1e9)
            b.append(min(timeit.repeat(via_file, number=n, repeat=3)) / n * 1e9)
            c.append(min(timeit.repeat(ring_trip, number=n, repeat=3)) / n * 1e9)
        ma, mb, mc = statistics.median(a), statistics.median(b), statistics.median(c)
        print(f"{name:10} {ma:9.0f} {mb:17.0f} {mb / ma:5.2f}x {mc:19.0f}")
    ring.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--trips", type=int, default=2000)
    ap.add_argument("--gap-us", type=float, default=300.0)
    ap.add_argument(
        "--spins",
        default=f"{DEFAULT_SPIN_US},0",
        help="comma-separated spin_us values, one ring contender each (0: futex only)",
    )
    ap.add_argument(
        "--gap-spins",
        default=f"{DEFAULT_SPIN_US},0",
        help="comma-separated spin_us values of the idle-gap ring contenders (0: futex only)",
    )
    ap.add_argument(
        "--start-method",
        default="fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
        choices=multiprocessing.get_all_start_methods(),
    )
    ap.add_argument("--pickle-paths", action="store_true", help="only the pickling measurement")
    args = ap.parse_args()
    if args.rounds < 1 or args.trips < 10:
        ap.error("--rounds must be >= 1 and --trips >= 10")
    if args.pickle_paths:
        pickle_paths(args)
    else:
        rtt(args)


if __name__ == "__main__":
    main()
