"""The "process" section of ``python -m shardflow bench``: ``backend="process"`` against
what a user would write instead, side by side in one process run.

* **no-op batches**: no-op items through 2 worker processes, 1,000 items per message:
  ``ShardedPool(noop, workers=2, backend=ProcessBackend(ship_batch_size=1000))`` vs
  ``multiprocessing.Pool(2).imap_unordered(noop, ..., chunksize=1000)``;
* **CPU-bound**: a pure-Python handler of ~75 us per item, default settings (no chunk
  size chosen): serial loop, 2 threads (the thread backend), ``Pool(2).map`` (its own
  default chunking), the process backend, and the machine's control: 2 plain processes
  each looping over half the items (what parallelism the machine gives right now);
* **dict records**: 3-key dicts through one process stage vs the pickle floor (one
  ``pickle.dumps`` + ``pickle.loads`` of the same records, per item); with msgspec
  and/or orjson installed, the same pool with ``ProcessBackend(serializer=...)`` of
  each (msgspec's MessagePack, orjson's JSON) joins the table (neither is a dependency);
* **round trip**: one item at a time through an idle pool (a pause of ``RTT_GAP_S``
  between items, so that every thread and worker has parked): from ``submit(x)`` until
  the caller's thread is woken by ``on_results`` with the handler's return value, vs
  ``Pool(2).apply`` and ``ProcessPoolExecutor(2).submit(...).result()`` of the same
  handler, interleaved in rounds; p50 and p99 of all trips of each contender;
* **Executor**: ``Executor(backend="process")`` against ``ProcessPoolExecutor(2)`` (same
  start method, both started outside the timed region): per-item ``submit`` of a no-op
  until every future is done (the standard executor moves 1/20 of the calls: it is that
  much slower), and ``map`` of no-op calls vs ``ProcessPoolExecutor.map(chunksize=1000)``;
* **start-up**: pool construction until its 2 workers can take work, vs
  ``ProcessPoolExecutor(2)`` with the same start method running its first 2 tasks;
* **idle**: CPU (parent and workers) of an idle process pool over 1 s;
* **pipeline**: a 2-stage ``Pipeline`` with a CPU-bound map stage on processes vs
  threads vs serial (``shardflow.bench.pipeline_process``).

loky and mpire join the no-op and CPU-bound rows where they are installed
(``bench/mp_baselines.py``; never dependencies of shardflow).

Pools are built outside the timed region (start-up is its own row); a timed run ends
when every item was handled (``flush()``, then the ``processed`` counter is checked).
Contenders run interleaved (``common.interleaved``); medians and ratios are reported.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TextIO

from shardflow.backends.process import ProcessBackend, Serializer
from shardflow.bench.common import (
    WORKERS,
    BenchContext,
    Runner,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    noop,
    print_table,
    quantile,
    safe_ratio,
    two_process_control,
)
from shardflow.bench.mp_baselines import make_contenders
from shardflow.bench.pipeline_process import section_rows as pipeline_rows
from shardflow.pool import ShardedPool

__all__ = ["cpu_item", "run_section"]

CPU_LOOP = 1_500  # iterations of cpu_item's loop: ~75 us on these machines (3.11)
RTT_GAP_S = 0.0003  # pause between round trips: longer than every spin (idle pool)

NOOP_POOL = "ShardedPool backend=process, 1,000 per message"
NOOP_MP = "multiprocessing.Pool(2).imap_unordered(chunksize=1000)"
CPU_SERIAL = "serial loop"
CPU_THREADS = "ShardedPool 2 threads"
CPU_MP = "multiprocessing.Pool(2).map (its chunking)"
CPU_POOL = "ShardedPool backend=process (defaults)"
CPU_CONTROL = "control: 2 plain processes, static halves"
EXEC_SUBMIT = 'Executor(backend="process").submit, per item'
PPE_SUBMIT = "ProcessPoolExecutor(2).submit, per item"
EXEC_MAP = 'Executor(backend="process").map (default chunks)'
PPE_MAP = "ProcessPoolExecutor(2).map(chunksize=1000)"
#: ProcessPoolExecutor.submit moves this fraction of the calls (~10k calls/s here).
PPE_DIVISOR = 20
DICT_POOL = "3-key dicts, ShardedPool backend=process"
DICT_FLOOR = "pickle floor: dumps + loads of the same dicts"
DICT_MSGSPEC = "3-key dicts, backend=process, serializer=msgspec.msgpack"
DICT_ORJSON = "3-key dicts, backend=process, serializer=orjson"
RTT_POOL = "ShardedPool backend=process: submit -> on_results"
RTT_MP = "multiprocessing.Pool(2).apply"
RTT_PPE = "ProcessPoolExecutor(2).submit().result()"


def cpu_item(x: int) -> int:
    """A pure-Python handler that burns ~75 us of CPU holding the GIL."""
    s = x
    for i in range(CPU_LOOP):
        s += i * i
    return s


def _serial_half(lo: int, hi: int, stamps: Any = None, slot: int = 0, barrier: Any = None) -> None:
    """Handle items lo..hi-1 in a loop; with ``stamps``, record the loop's start and end
    (time.monotonic, system-wide on Linux) in ``stamps[2 * slot : 2 * slot + 2]``, the
    start after ``barrier`` (both halves start together)."""
    if barrier is not None:
        barrier.wait()
    t0 = time.monotonic()
    for x in range(lo, hi):
        cpu_item(x)
    if stamps is not None:
        stamps[2 * slot] = t0
        stamps[2 * slot + 1] = time.monotonic()


class _Reusable:
    """A process pool kept across rounds (its start-up is measured apart)."""

    def __init__(self, handler: Callable[[Any], object], backend: ProcessBackend) -> None:
        self.pool: ShardedPool[Any] = ShardedPool(handler, workers=WORKERS, backend=backend)

    def run(self, items: list[Any] | range) -> tuple[int, float]:
        base = self.pool.metrics().processed
        t0 = time.perf_counter()
        self.pool.submit_many(items)
        # flush() returns once every shard handed its batches over, and a process shard's
        # hand-over returns when the worker is done with the batch: no polling (which would
        # take CPU from the workers on a 2-core machine).
        self.pool.flush()
        dt = time.perf_counter() - t0
        done = self.pool.metrics().processed - base
        if done != len(items):
            raise RuntimeError(f"process bench: {done} of {len(items)} items handled")
        return len(items), dt

    def close(self) -> None:
        self.pool.shutdown()


def _mp_imap(pool: Any, fn: Callable[[Any], object], chunksize: int) -> Runner:
    def run(n: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        for _ in pool.imap_unordered(fn, range(n), chunksize=chunksize):
            pass
        return n, time.perf_counter() - t0

    return run


def _submit_all(executor: Any) -> Runner:
    """Per-item submit of no-op calls until every future is done."""

    def run(n: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        futures = [executor.submit(noop, i) for i in range(n)]
        _, not_done = wait_futures(futures)
        if not_done:
            raise RuntimeError("process bench: futures left pending")
        return n, time.perf_counter() - t0

    return run


def _map_all(executor: Any, chunksize: int | None) -> Runner:
    def run(n: int) -> tuple[int, float]:
        kwargs = {} if chunksize is None else {"chunksize": chunksize}
        t0 = time.perf_counter()
        for _ in executor.map(noop, range(n), **kwargs):
            pass
        return n, time.perf_counter() - t0

    return run


def _executor_rates(
    ctx: Any, submit_n: int, map_n: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Executor(backend="process") vs ProcessPoolExecutor, both warmed up first."""
    from shardflow.executor import Executor

    ours = Executor(WORKERS, backend=ProcessBackend(mp_context=ctx))
    ppe = ProcessPoolExecutor(WORKERS, mp_context=ctx)
    try:
        for ex in (ours, ppe):
            wait_futures([ex.submit(noop, i) for i in range(100)])
        submit = interleaved(
            {EXEC_SUBMIT: _submit_all(ours), PPE_SUBMIT: _submit_all(ppe)},
            lambda name: submit_n if name == EXEC_SUBMIT else max(1, submit_n // PPE_DIVISOR),
            repeats,
        )
        mapped = interleaved(
            {EXEC_MAP: _map_all(ours, None), PPE_MAP: _map_all(ppe, 1000)},
            lambda _: map_n,
            repeats,
        )
    finally:
        ours.shutdown()
        ppe.shutdown()
    return submit, mapped


def _serial(n: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    _serial_half(0, n)
    return n, time.perf_counter() - t0


def _threads(n: int) -> tuple[int, float]:
    pool: ShardedPool[int] = ShardedPool(cpu_item, workers=WORKERS)
    t0 = time.perf_counter()
    pool.submit_many(range(n))
    pool.shutdown()
    return n, time.perf_counter() - t0


def _records(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "user": f"u{i % 1000}", "amount": i * 0.25} for i in range(n)]


def _pickle_floor(records: list[dict[str, Any]]) -> Runner:
    def run(n: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        pickle.loads(pickle.dumps(records[:n], 5))
        return n, time.perf_counter() - t0

    return run


def _serializers() -> dict[str, Serializer]:
    """The dict-records rows of the serializers installed here (optional: never
    dependencies of shardflow; the section runs without them)."""
    found: dict[str, Serializer] = {}
    try:
        import msgspec

        found[DICT_MSGSPEC] = Serializer(msgspec.msgpack.encode, msgspec.msgpack.decode)
    except ImportError:
        pass
    try:
        import orjson

        found[DICT_ORJSON] = Serializer(orjson.dumps, orjson.loads)
    except ImportError:
        pass
    return found


def _round_trips(ctx: Any, trips: int, rounds: int) -> dict[str, dict[str, float]]:
    """p50/p99 (us) of single-item round trips through idle pools (see the module doc):
    ``rounds`` rounds of ``trips`` trips per contender, the order rotating per round."""
    got = threading.Event()

    def delivered(items: list[Any], values: list[Any]) -> None:
        got.set()

    ours: ShardedPool[Any] = ShardedPool(
        noop, workers=WORKERS, backend=ProcessBackend(mp_context=ctx), on_results=delivered
    )
    mp = ctx.Pool(WORKERS)
    ppe = ProcessPoolExecutor(WORKERS, mp_context=ctx)

    def via_pool(x: int) -> None:
        got.clear()
        ours.submit(x)
        got.wait()

    def via_ppe(x: int) -> None:
        ppe.submit(noop, x).result()

    def via_apply(x: int) -> None:
        mp.apply(noop, (x,))

    contenders: dict[str, Callable[[int], None]] = {
        RTT_POOL: via_pool,
        RTT_MP: via_apply,
        RTT_PPE: via_ppe,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        for fn in contenders.values():  # warm-up: workers started, code paths hot
            for x in range(20):
                fn(x)
        names = list(contenders)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn = contenders[name]
                out = samples[name]
                for x in range(trips):
                    time.sleep(RTT_GAP_S)
                    t0 = time.perf_counter_ns()
                    fn(x)
                    out.append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        ours.shutdown()
        mp.close()
        mp.join()
        ppe.shutdown()
    report = {}
    for name, lat in samples.items():
        lat.sort()
        report[name] = {"p50_us": quantile(lat, 0.50), "p99_us": quantile(lat, 0.99)}
    return report


def _children_cpu(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def _startup(ctx: Any, repeats: int) -> dict[str, float]:
    ours, ppe = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pool: ShardedPool[Any] = ShardedPool(
            noop, workers=WORKERS, backend=ProcessBackend(mp_context=ctx)
        )
        ours.append(time.perf_counter() - t0)
        pool.shutdown()
        t0 = time.perf_counter()
        with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
            wait_futures([ex.submit(noop, i) for i in range(WORKERS)])
            ppe.append(time.perf_counter() - t0)
    return {"shardflow_ms": statistics.median(ours) * 1e3, "ppe_ms": statistics.median(ppe) * 1e3}


def _idle(seconds: float) -> dict[str, float]:
    pool: ShardedPool[Any] = ShardedPool(noop, workers=WORKERS, backend="process")
    pids = pool._runner.worker_pids()  # type: ignore[attr-defined]
    time.sleep(0.1)
    c0, k0 = time.process_time(), _children_cpu(pids)
    time.sleep(seconds)
    c1, k1 = time.process_time(), _children_cpu(pids)
    pool.shutdown()
    return {"seconds": seconds, "parent_cpu_ms": (c1 - c0) * 1e3, "workers_cpu_ms": (k1 - k0) * 1e3}


def _rows(rates: dict[str, list[float]], base: str) -> list[list[str]]:
    rows = [["contender", "items/s", f"vs {base.split(',')[0]}"]]
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name, r in med.items():
        rows.append([name, fmt_rate(r), f"{safe_ratio(r, med[base]):.2f}x"])
    return rows


def section_process(
    items: int, repeats: int, quick: bool, out: TextIO
) -> tuple[dict[str, Any], list[Target]]:
    """Run the section; returns (JSON-able report, targets)."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    noop_n = min(items, 200_000 if quick else 2_000_000)
    cpu_n = 400 if quick else 4_000
    dict_n = min(items, 20_000 if quick else 200_000)
    print(f"\n== process backend ({method}; {WORKERS} workers) ==", file=out)

    ours = _Reusable(noop, ProcessBackend(mp_context=ctx, ship_batch_size=1000))
    # Each table's third-party pools live only while that table runs: idle pools of the
    # other table (worker processes, loky's manager thread, mpire's) would otherwise share
    # the machine with every contender of this one, the 2-process control included.
    others, closers, missing = make_contenders(noop, 1000)
    if missing:
        print(f"({', '.join(missing)} not installed: not compared)", file=out)
    with ctx.Pool(WORKERS) as mp:
        noop_rates = interleaved(
            {NOOP_POOL: lambda n: ours.run(range(n)), NOOP_MP: _mp_imap(mp, noop, 1000), **others},
            lambda _: noop_n,
            repeats,
        )
        ours.close()
        for close in closers:
            close()
        print(f"no-op items ({noop_n:,} per round)", file=out)
        print_table(_rows(noop_rates, NOOP_MP), out)

        cpu_others, cpu_closers, _ = make_contenders(cpu_item, None)

        cpu_pool = _Reusable(cpu_item, ProcessBackend(mp_context=ctx))

        def mp_map(n: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            mp.map(cpu_item, range(n))
            return n, time.perf_counter() - t0

        cpu_rates = interleaved(
            {
                CPU_SERIAL: _serial,
                CPU_THREADS: _threads,
                CPU_MP: mp_map,
                CPU_POOL: lambda n: cpu_pool.run(range(n)),
                CPU_CONTROL: two_process_control(ctx, _serial_half),
                **cpu_others,
            },
            lambda _: cpu_n,
            repeats,
        )
        cpu_pool.close()
        for close in cpu_closers:
            close()
    print(f"\nCPU-bound pure-Python handler (~75 us/item, {cpu_n:,} items per round)", file=out)
    print_table(_rows(cpu_rates, CPU_SERIAL), out)

    records = _records(dict_n)
    dict_pools = {DICT_POOL: _Reusable(noop, ProcessBackend(mp_context=ctx))}
    serializers = _serializers()
    for name, serializer in serializers.items():
        dict_pools[name] = _Reusable(noop, ProcessBackend(mp_context=ctx, serializer=serializer))
    dict_rates = interleaved(
        {
            **{
                name: (lambda n, p=pool: p.run(records[:n]))  # type: ignore[misc]
                for name, pool in dict_pools.items()
            },
            DICT_FLOOR: _pickle_floor(records),
        },
        lambda _: dict_n,
        repeats,
    )
    for pool in dict_pools.values():
        pool.close()
    print(f"\ndict records ({dict_n:,} per round)", file=out)
    absent = [
        lib
        for lib, row in (("msgspec", DICT_MSGSPEC), ("orjson", DICT_ORJSON))
        if row not in serializers
    ]
    if absent:
        print(f"({', '.join(absent)} not installed: no serializer= row for it)", file=out)
    print_table(_rows(dict_rates, DICT_FLOOR), out)

    submit_rates, map_rates = _executor_rates(
        ctx, 10_000 if quick else 100_000, 20_000 if quick else 100_000, repeats
    )
    print(
        f"\nExecutor(backend='process') vs ProcessPoolExecutor: per-item submit of no-op "
        f"calls (PPE moves 1/{PPE_DIVISOR} of them)",
        file=out,
    )
    print_table(_rows(submit_rates, PPE_SUBMIT), out)
    per_round = [
        a / b for a, b in zip(submit_rates[EXEC_SUBMIT], submit_rates[PPE_SUBMIT], strict=True)
    ]
    print(f"per-round ratios: {', '.join(f'{r:.1f}x' for r in per_round)}", file=out)
    print("\nmap of no-op calls", file=out)
    print_table(_rows(map_rates, PPE_MAP), out)

    pipe_data, pipe_targets = pipeline_rows(ctx, quick, repeats, out)

    rtt = _round_trips(ctx, 100 if quick else 1000, 2 if quick else 5)
    print("\nsingle-item round trip, idle pool (us)", file=out)
    rows = [["contender", "p50", "p99"]]
    for name, st in rtt.items():
        rows.append([name, f"{st['p50_us']:.1f}", f"{st['p99_us']:.1f}"])
    print_table(rows, out)

    start = _startup(ctx, 3 if quick else 5)
    idle = _idle(0.3 if quick else 1.0)
    print(
        f"\nstart-up, {WORKERS} workers ({method}): shardflow {start['shardflow_ms']:.1f} ms, "
        f"ProcessPoolExecutor {start['ppe_ms']:.1f} ms; idle over {idle['seconds']} s: "
        f"parent {idle['parent_cpu_ms']:.1f} ms CPU, workers {idle['workers_cpu_ms']:.1f} ms",
        file=out,
    )

    def med(rates: dict[str, list[float]], name: str) -> float:
        return statistics.median(rates[name])

    cpu_vs_serial = safe_ratio(med(cpu_rates, CPU_POOL), med(cpu_rates, CPU_SERIAL))
    data = {
        "start_method": method,
        "noop": {"items": noop_n, "rates": noop_rates},
        "cpu": {"items": cpu_n, "rates": cpu_rates},
        "dicts": {"items": dict_n, "rates": dict_rates},
        "pipeline": pipe_data,
        "startup": start,
        "idle": idle,
        "round_trip": rtt,
        "executor": {"submit": submit_rates, "map": map_rates},
    }
    targets = [
        Target(
            "process no-op 1,000/message >= 2x Pool imap_unordered(chunksize=1000)",
            safe_ratio(med(noop_rates, NOOP_POOL), med(noop_rates, NOOP_MP)),
            ">=",
            2.0,
        ),
        Target("process CPU-bound (defaults) >= 1.8x serial", cpu_vs_serial, ">=", 1.8),
        Target(
            "process CPU-bound >= Pool.map",
            safe_ratio(med(cpu_rates, CPU_POOL), med(cpu_rates, CPU_MP)),
            ">=",
            1.0,
        ),
        Target(
            "process dict records >= 0.9x pickle floor",
            safe_ratio(med(dict_rates, DICT_POOL), med(dict_rates, DICT_FLOOR)),
            ">=",
            0.9,
        ),
        Target(
            "process single-item round trip, idle pool, p50 <= 15 us",
            rtt[RTT_POOL]["p50_us"],
            "<=",
            15.0,
            unit="us",
        ),
        Target(
            "process single-item round trip, idle pool, p99 <= 100 us",
            rtt[RTT_POOL]["p99_us"],
            "<=",
            100.0,
            unit="us",
        ),
        Target(
            'Executor(backend="process").submit >= 20x ProcessPoolExecutor',
            safe_ratio(med(submit_rates, EXEC_SUBMIT), med(submit_rates, PPE_SUBMIT)),
            ">=",
            20.0,
        ),
        Target(
            'Executor(backend="process").map >= ProcessPoolExecutor.map(chunksize=1000)',
            safe_ratio(med(map_rates, EXEC_MAP), med(map_rates, PPE_MAP)),
            ">=",
            1.0,
        ),
        Target(
            "process start-up <= 1.2x ProcessPoolExecutor",
            safe_ratio(start["shardflow_ms"], start["ppe_ms"]),
            "<=",
            1.2,
        ),
        *pipe_targets,
    ]
    return data, targets


def run_section(ctx: BenchContext) -> SectionResult:
    """The ``process`` section of ``shardflow bench``."""
    data, targets = section_process(ctx.items, ctx.repeats, ctx.quick, ctx.out)
    machine = safe_ratio(
        statistics.median(data["cpu"]["rates"][CPU_CONTROL]),
        statistics.median(data["cpu"]["rates"][CPU_SERIAL]),
    )
    return SectionResult(
        "process",
        data,
        targets,
        [f"process: the machine's own 2-process control gave {machine:.2f}x serial this run"],
    )
