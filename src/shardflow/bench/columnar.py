"""Section ``columnar``: partition 10M rows (an int64 key and two float64 columns) into
2, 4, 8 and 16 shards, the compiled kernel against the numpy code a user writes today.

Contenders, interleaved round by round (the order rotates each round), every one on the
same arrays and the same hash (splitmix64's finalizer, vectorised in numpy for the numpy
contenders, so that only the partitioning differs), every one ending with one array per
shard per column:

* ``numpy argsort``: the issue's baseline, ``order = np.argsort(shard_ids, kind="stable")``
  on the ``uint64`` shard ids, ``col[order]`` for every column, ``np.split`` at the
  ``cumsum(bincount)`` bounds;
* ``numpy argsort (uint16 ids)``: the same, with the ids cast to ``uint16`` first, which
  numpy sorts with a radix sort (a tuned user; reported, not a target);
* ``kernel``: ``shardflow._columnar.partition(dict, "k", n)``, the helper the pool will
  use: new output arrays (``np.empty``) every call, per-shard dicts of views;
* ``kernel (reused outputs)``: ``shardflow._partition.partition`` into output buffers
  allocated once (the pooled-buffer path; no page faults on the outputs).

Each timing covers hashing, partitioning and splitting. rows/s is on one core: every
contender is single-threaded (the kernel releases the GIL, so other threads run
meanwhile); the wall-clock medians are the figures, a second table counts this thread's
CPU time (page faults on new outputs included), which other load on the machine disturbs
less. Targets are checked on the wall-clock medians. Then the peak
RSS of one call of each contender over the input (Linux: VmHWM reset through
``/proc/self/clear_refs`` before the call), against the input size.

numpy is needed (the ``numpy`` extra); without it the section reports that and measures
nothing. On machines that set OPENBLAS_CORETYPE, unset it in the benchmark command only
(numpy's sort and take do not use BLAS, but the rest of the report may).

End to end (the second part): the same table through an array pool
(``ShardedPool(arrays=True).submit_array(data, key="k", batch_size=65_536)``, 2 workers,
a handler summing column ``a``) against the same rows as Python tuples through
``submit_many`` (a keyed pool, ``key=itemgetter(0)``, ``batch_size=65_536``, a handler
summing field 1 of its batch). Each timing covers submitting and ``flush()`` (every row
handled); pools are made before and shut down after. Building the tuples from the arrays
is not timed (it favours the baseline; its rate is reported apart). The array pool on
``backend="process"`` is measured too (batches pickled with protocol 5 into the
shared-memory ring), and the peak RSS of one ``submit_array`` run over the input.

Run alone: ``python -m shardflow bench --sections columnar``, or
``python -m shardflow.bench.columnar [--rows N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from shardflow.bench.common import (
    BenchContext,
    SectionResult,
    Target,
    current_rss_bytes,
    fmt_rate,
    loadavg,
    print_table,
    safe_ratio,
)

__all__ = [
    "CONTENDERS",
    "E2E_CONTENDERS",
    "SHARDS",
    "run_section",
    "section_columnar",
    "section_end_to_end",
    "sum_a",
]

ROWS = 10_000_000
QUICK_ROWS = 200_000
#: --quick rows of the end-to-end part: at 200,000 rows a run is a few batches and
#: milliseconds, all start-up and wake-up latency.
E2E_QUICK_ROWS = 1_000_000
SHARDS = (2, 4, 8, 16)

NP_ARGSORT = "numpy argsort"
NP_RADIX = "numpy argsort (uint16 ids)"
KERNEL = "kernel"
KERNEL_REUSE = "kernel (reused outputs)"
CONTENDERS = (NP_ARGSORT, NP_RADIX, KERNEL, KERNEL_REUSE)

E2E_BATCH = 65_536
E2E_WORKERS = 2
E2E_ARRAYS = "submit_array (threads)"
E2E_PROCESS = "submit_array (process)"
E2E_TUPLES = "submit_many tuples"
E2E_CONTENDERS = (E2E_ARRAYS, E2E_PROCESS, E2E_TUPLES)
#: Derived from the E2E_TUPLES runs: the same plus building the tuples from the arrays.
E2E_WITH_BUILD = "arrays -> tuples -> submit_many"

#: Per contender: (arrays, nshards) -> per-shard pieces (kept alive until timed).
Partitioner = Callable[[dict[str, Any], int], object]


def make_input(rows: int) -> dict[str, Any]:
    """The table: ``k`` int64 keys (about a million distinct, scrambled), ``a`` and ``b``
    float64. Built in place, so that building it leaves no temporaries in the RSS peak."""
    import numpy as np

    k = np.arange(rows, dtype=np.int64)
    k *= 2654435761
    k %= 1_000_003
    a = np.empty(rows)
    b = np.empty(rows)
    rng = np.random.default_rng(15)
    rng.random(out=a)
    rng.random(out=b)
    return {"k": k, "a": a, "b": b}


def numpy_shard_ids(keys: Any, nshards: int) -> Any:
    """The kernel's routing, vectorised: splitmix64's finalizer, then the high 32 bits of
    the hash times nshards, shifted down 32 (uint64 ids)."""
    import numpy as np

    u = np.uint64
    h = keys.astype(np.uint64)  # the bit pattern of the int64 keys; a new array
    h ^= h >> u(30)
    h *= u(0xBF58476D1CE4E5B9)
    h ^= h >> u(27)
    h *= u(0x94D049BB133111EB)
    h ^= h >> u(31)
    h >>= u(32)
    h *= u(nshards)
    h >>= u(32)
    return h


def _numpy_partition(radix: bool) -> Partitioner:
    def run(data: dict[str, Any], nshards: int) -> object:
        import numpy as np

        ids = numpy_shard_ids(data["k"], nshards)
        if radix:
            ids = ids.astype(np.uint16)
        order = np.argsort(ids, kind="stable")
        bounds = np.cumsum(np.bincount(ids, minlength=nshards))[:-1]
        return {name: np.split(col[order], bounds) for name, col in data.items()}

    return run


def _kernel(data: dict[str, Any], nshards: int) -> object:
    from shardflow import _columnar

    return _columnar.partition(data, "k", nshards)


def _kernel_reuse() -> Partitioner:
    outs: dict[int, list[Any]] = {}

    def run(data: dict[str, Any], nshards: int) -> object:
        import numpy as np

        from shardflow import _partition

        cols = list(data.values())
        bufs = outs.get(id(data))
        if bufs is None or len(bufs[0]) != len(cols[0]):
            outs.clear()
            bufs = outs[id(data)] = [np.empty_like(c) for c in cols]
        offsets, _, _ = _partition.partition(data["k"], nshards, cols, bufs)
        bounds = np.frombuffer(offsets, dtype=np.int64).tolist()
        return [
            {name: out[bounds[s] : bounds[s + 1]] for name, out in zip(data, bufs, strict=True)}
            for s in range(nshards)
        ]

    return run


def partitioners() -> dict[str, Partitioner]:
    """A fresh set of contenders (the reusing one owns its output buffers)."""
    return {
        NP_ARGSORT: _numpy_partition(radix=False),
        NP_RADIX: _numpy_partition(radix=True),
        KERNEL: _kernel,
        KERNEL_REUSE: _kernel_reuse(),
    }


def check_agree(data: dict[str, Any], nshards: int) -> None:
    """Every contender returns the same rows per shard, in the same order."""
    import numpy as np

    ref: Any = _numpy_partition(radix=False)(data, nshards)
    for name, fn in partitioners().items():
        got: Any = fn(data, nshards)
        for s in range(nshards):
            for col in data:
                mine = got[col][s] if isinstance(got, dict) else got[s][col]
                if not np.array_equal(mine, ref[col][s]):
                    raise AssertionError(f"{name}: shard {s} column {col} differs")


def _hwm_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_rss_over_input(fn: Partitioner, data: dict[str, Any], nshards: int) -> float | None:
    """Peak RSS during one call of ``fn`` minus the RSS before it (bytes), or None where
    the peak cannot be reset (not Linux)."""
    import gc

    gc.collect()
    if not _hwm_reset():
        return None
    before = current_rss_bytes()
    result = fn(data, nshards)
    try:
        peak = _hwm_bytes()
    except OSError:
        return None
    del result
    return float(max(0, peak - before))


def section_columnar(rows: int, repeats: int, out: Any) -> tuple[dict[str, Any], list[Target]]:
    """Measure, print the table, return the JSON-able section and its targets."""
    data = make_input(rows)
    input_bytes = sum(c.nbytes for c in data.values())
    for nshards in SHARDS:
        check_agree({k: v[:20_000] for k, v in data.items()}, nshards)
    fns = partitioners()
    rates: dict[tuple[str, int], list[float]] = {
        (name, ns): [] for ns in SHARDS for name in CONTENDERS
    }
    cpu_rates: dict[tuple[str, int], list[float]] = {key: [] for key in rates}
    for r in range(repeats):
        for nshards in SHARDS:
            names = list(CONTENDERS)
            k = (r + nshards) % len(names)
            for name in names[k:] + names[:k]:
                import gc

                gc.collect()
                c0 = time.thread_time()
                t0 = time.perf_counter()
                result = fns[name](data, nshards)
                dt = time.perf_counter() - t0
                cpu = time.thread_time() - c0
                del result
                rates[(name, nshards)].append(rows / dt if dt > 0 else float("inf"))
                cpu_rates[(name, nshards)].append(rows / cpu if cpu > 0 else float("inf"))
    med = {key: statistics.median(v) for key, v in rates.items()}
    cpu_med = {key: statistics.median(v) for key, v in cpu_rates.items()}

    print(
        f"\nColumnar partition: {rows:,} rows (int64 key + 2 float64), {repeats} interleaved "
        f"rounds, medians; input {input_bytes / 2**20:.0f} MiB; load average {loadavg()}",
        file=out,
    )
    table = [["shards", *CONTENDERS, "kernel vs argsort", "kernel vs uint16 argsort"]]
    for ns in SHARDS:
        table.append(
            [
                str(ns),
                *(fmt_rate(med[(name, ns)]).replace("/s", " rows/s") for name in CONTENDERS),
                f"{safe_ratio(med[(KERNEL, ns)], med[(NP_ARGSORT, ns)]):.1f}x",
                f"{safe_ratio(med[(KERNEL, ns)], med[(NP_RADIX, ns)]):.1f}x",
            ]
        )
    print_table(table, out)
    print(
        "The same, counting this thread's CPU time instead of the wall clock (less "
        "sensitive to other load on a shared machine):",
        file=out,
    )
    table = [["shards", *CONTENDERS, "kernel vs argsort", "kernel vs uint16 argsort"]]
    for ns in SHARDS:
        table.append(
            [
                str(ns),
                *(fmt_rate(cpu_med[(name, ns)]).replace("/s", " rows/s") for name in CONTENDERS),
                f"{safe_ratio(cpu_med[(KERNEL, ns)], cpu_med[(NP_ARGSORT, ns)]):.1f}x",
                f"{safe_ratio(cpu_med[(KERNEL, ns)], cpu_med[(NP_RADIX, ns)]):.1f}x",
            ]
        )
    print_table(table, out)

    peaks: dict[str, float | None] = {}
    fns = partitioners()
    fns[KERNEL_REUSE](data, max(SHARDS))  # its pooled outputs exist before the call
    for name in CONTENDERS:
        peaks[name] = peak_rss_over_input(fns[name], data, max(SHARDS))
    print(f"Peak RSS over the input ({max(SHARDS)} shards, one call):", file=out)
    for name, peak in peaks.items():
        shown = (
            "n/a (needs /proc/self/clear_refs)"
            if peak is None
            else f"{peak / 2**20:8.0f} MiB = {peak / input_bytes:.2f}x the input"
        )
        print(f"  {name:<28} {shown}", file=out)
    out.flush()

    worst_vs_argsort = min(safe_ratio(med[(KERNEL, ns)], med[(NP_ARGSORT, ns)]) for ns in SHARDS)
    worst_rate = min(med[(KERNEL, ns)] for ns in SHARDS)
    section = {
        "rows": rows,
        "repeats": repeats,
        "input_bytes": input_bytes,
        "shards": list(SHARDS),
        "rows_per_s": {name: {str(ns): med[(name, ns)] for ns in SHARDS} for name in CONTENDERS},
        "samples": {name: {str(ns): rates[(name, ns)] for ns in SHARDS} for name in CONTENDERS},
        "cpu_rows_per_s": {
            name: {str(ns): cpu_med[(name, ns)] for ns in SHARDS} for name in CONTENDERS
        },
        "kernel_vs_argsort": {
            str(ns): safe_ratio(med[(KERNEL, ns)], med[(NP_ARGSORT, ns)]) for ns in SHARDS
        },
        "kernel_vs_uint16_argsort": {
            str(ns): safe_ratio(med[(KERNEL, ns)], med[(NP_RADIX, ns)]) for ns in SHARDS
        },
        "peak_rss_over_input_bytes": peaks,
        "loadavg": loadavg(),
    }
    targets = [
        Target(
            "columnar partition >= 5x numpy argsort (worst of 2-16 shards)",
            worst_vs_argsort,
            ">=",
            5,
        ),
        Target(
            "columnar partition >= 100M rows/s on one core (worst of 2-16 shards)",
            worst_rate / 1e6,
            ">=",
            100,
            unit="M rows/s",
        ),
    ]
    kernel_peak = peaks[KERNEL]
    if kernel_peak is not None:
        # the partitioned copy is the size of the input; the ids and tables add 2 bytes a row
        targets.append(
            Target(
                "columnar peak RSS over the input <= 1.1x the input size",
                kernel_peak / input_bytes,
                "<=",
                1.1,
                unit="x input",
            )
        )
    return section, targets


def sum_a(batch: Any) -> None:
    """The array pools' handler: sum column ``a`` (module level: the process backend
    pickles it by reference)."""
    batch["a"].sum()


class _ArraySum:
    """Thread handler keeping the sums, to check both contenders saw the same rows."""

    def __init__(self) -> None:
        self.sums: list[float] = []

    def __call__(self, batch: Any) -> None:
        self.sums.append(float(batch["a"].sum()))


class _TupleSum:
    def __init__(self) -> None:
        self.sums: list[float] = []

    def __call__(self, batch: list[tuple[int, float, float]]) -> None:
        from operator import itemgetter

        self.sums.append(sum(map(itemgetter(1), batch)))


def _build_tuples(data: dict[str, Any]) -> list[tuple[int, float, float]]:
    """The rows as Python tuples, the way a user holding the arrays makes them."""
    return list(zip(data["k"].tolist(), data["a"].tolist(), data["b"].tolist(), strict=True))


def _time_e2e(name: str, data: dict[str, Any]) -> tuple[float, float, int, float]:
    """One timed run of contender ``name``: (seconds, sum of column a, rows accounted,
    seconds spent building the tuples first: 0 for the array pools)."""
    from operator import itemgetter

    import shardflow

    if name == E2E_TUPLES:
        t0 = time.perf_counter()
        tuples = _build_tuples(data)
        build = time.perf_counter() - t0
        tsum = _TupleSum()
        tpool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
            tsum, workers=E2E_WORKERS, key=itemgetter(0), batch_size=E2E_BATCH
        )
        try:
            t0 = time.perf_counter()
            tpool.submit_many(tuples)
            tpool.flush()
            dt = time.perf_counter() - t0
        finally:
            tpool.shutdown()
        del tuples
        return dt, sum(tsum.sums), tpool.metrics().processed, build
    asum = _ArraySum()
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
        sum_a if name == E2E_PROCESS else asum,
        workers=E2E_WORKERS,
        arrays=True,
        backend="process" if name == E2E_PROCESS else "thread",
    )
    try:
        # Warm-up outside the timing: worker processes import numpy on their first batch.
        pool.submit_array({c: v[:1024] for c, v in data.items()}, key="k")
        pool.flush()
        warm_sum = sum(asum.sums)
        t0 = time.perf_counter()
        pool.submit_array(data, key="k", batch_size=E2E_BATCH)
        pool.flush()
        dt = time.perf_counter() - t0
    finally:
        pool.shutdown()
    rows = pool.row_metrics()
    if rows.submitted != rows.processed + rows.failed + rows.dead_lettered + rows.dropped:
        raise AssertionError(f"{name}: rows not accounted for: {rows}")
    total = sum(asum.sums) - warm_sum if name == E2E_ARRAYS else float("nan")
    return dt, total, rows.processed - 1024, 0.0


def _e2e_peak_rss(data: dict[str, Any]) -> float | None:
    """Peak RSS of one submit_array run (thread pool) over the RSS before it."""

    def run(d: dict[str, Any], _n: int) -> object:
        import shardflow

        pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
            sum_a, workers=E2E_WORKERS, arrays=True
        )
        with pool:
            pool.submit_array(d, key="k", batch_size=E2E_BATCH)
        return None

    return peak_rss_over_input(run, data, E2E_WORKERS)


def section_end_to_end(
    rows: int, repeats: int, out: Any, data: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[Target]]:
    """The end-to-end measurement: array pool vs tuples through submit_many."""
    if data is None:
        data = make_input(rows)
    input_bytes = sum(c.nbytes for c in data.values())
    samples: dict[str, list[float]] = {name: [] for name in (*E2E_CONTENDERS, E2E_WITH_BUILD)}
    build_samples: list[float] = []
    sums: dict[str, float] = {}
    for r in range(repeats):
        k = r % len(E2E_CONTENDERS)
        for name in E2E_CONTENDERS[k:] + E2E_CONTENDERS[:k]:
            import gc

            gc.collect()
            dt, total, handled, build = _time_e2e(name, data)
            if handled != rows:
                raise AssertionError(f"{name}: {handled} rows handled of {rows}")
            samples[name].append(rows / dt if dt > 0 else float("inf"))
            if name == E2E_TUPLES:
                build_samples.append(rows / build if build > 0 else float("inf"))
                samples[E2E_WITH_BUILD].append(rows / (dt + build) if dt + build > 0 else 0.0)
            if name != E2E_PROCESS:
                sums[name] = total
    if abs(sums[E2E_ARRAYS] - sums[E2E_TUPLES]) > 1e-6 * max(1.0, abs(sums[E2E_TUPLES])):
        raise AssertionError(f"the contenders summed different values: {sums}")
    med = {name: statistics.median(v) for name, v in samples.items()}
    build_rate = statistics.median(build_samples)
    peak = _e2e_peak_rss(data)
    ratio = safe_ratio(med[E2E_ARRAYS], med[E2E_TUPLES])
    ratio_built = safe_ratio(med[E2E_ARRAYS], med[E2E_WITH_BUILD])
    print(
        f"\nColumnar end to end: {rows:,} rows keyed into {E2E_WORKERS} workers, batches of "
        f"{E2E_BATCH:,} rows, a handler summing a column; {repeats} interleaved rounds, "
        f"medians; load average {loadavg()}",
        file=out,
    )
    table = [["contender", "rows/s", "vs tuples", "vs arrays->tuples"]]
    for name in (*E2E_CONTENDERS, E2E_WITH_BUILD):
        table.append(
            [
                name,
                fmt_rate(med[name]).replace("/s", " rows/s"),
                f"{safe_ratio(med[name], med[E2E_TUPLES]):.1f}x",
                f"{safe_ratio(med[name], med[E2E_WITH_BUILD]):.1f}x",
            ]
        )
    print_table(table, out)
    print(
        f"  ({E2E_TUPLES!r} gets the tuples built beforehand; building them from the arrays "
        f"runs at {fmt_rate(build_rate).strip()} and is counted in {E2E_WITH_BUILD!r})",
        file=out,
    )
    shown = (
        "n/a (needs /proc/self/clear_refs)"
        if peak is None
        else f"{peak / 2**20:.0f} MiB = {peak / input_bytes:.2f}x the input "
        f"({input_bytes / 2**20:.0f} MiB)"
    )
    print(f"  peak RSS of one submit_array run over the RSS before it: {shown}", file=out)
    out.flush()
    section = {
        "rows": rows,
        "repeats": repeats,
        "batch_rows": E2E_BATCH,
        "workers": E2E_WORKERS,
        "rows_per_s": med,
        "samples": samples,
        "arrays_vs_tuples": ratio,
        "arrays_vs_arrays_to_tuples": ratio_built,
        "process_vs_tuples": safe_ratio(med[E2E_PROCESS], med[E2E_TUPLES]),
        "tuple_build_rows_per_s": build_rate,
        "peak_rss_over_input_bytes": peak,
        "input_bytes": input_bytes,
        "loadavg": loadavg(),
    }
    targets = [
        Target(
            "columnar end to end: submit_array >= 20x submit_many of pre-built tuples",
            ratio,
            ">=",
            20,
        ),
        Target(
            "columnar end to end: submit_array >= 20x arrays -> tuples -> submit_many",
            ratio_built,
            ">=",
            20,
        ),
    ]
    return section, targets


def run_section(ctx: BenchContext) -> SectionResult:
    """The ``columnar`` section of ``shardflow bench``."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("\nColumnar partition: skipped (numpy is not installed)", file=ctx.out)
        return SectionResult("columnar", {"skipped": "numpy is not installed"})
    rows = QUICK_ROWS if ctx.quick else ROWS
    data, targets = section_columnar(rows, ctx.repeats, ctx.out)
    e2e_rows = E2E_QUICK_ROWS if ctx.quick else ROWS
    e2e, e2e_targets = section_end_to_end(e2e_rows, ctx.repeats, ctx.out)
    data["end_to_end"] = e2e
    return SectionResult("columnar", data, targets + e2e_targets)


def main(argv: list[str] | None = None) -> int:
    """``python -m shardflow.bench.columnar``: this section alone."""
    from shardflow.bench.common import print_targets

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=ROWS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--part",
        choices=("all", "partition", "end-to-end"),
        default="all",
        help="measure only the partition kernel or only the end-to-end pools",
    )
    args = p.parse_args(argv)
    targets: list[Target] = []
    if args.part in ("all", "partition"):
        targets += section_columnar(args.rows, args.repeats, sys.stdout)[1]
    if args.part in ("all", "end-to-end"):
        targets += section_end_to_end(args.rows, args.repeats, sys.stdout)[1]
    print("\nTargets:")
    print_targets(targets, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
