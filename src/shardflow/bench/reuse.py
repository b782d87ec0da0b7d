"""Section ``reuse``: recycled batch lists (``reuse_batches``), their throughput and how
many lists each mode allocates.
"""

from __future__ import annotations

import gc
import statistics
import struct
import time
import tracemalloc
from typing import Any, TextIO

from shardflow.bench.common import (
    BATCH,
    WORKERS,
    BenchContext,
    Runner,
    SectionResult,
    Target,
    fmt_rate,
    interleaved,
    noop_batch,
    print_table,
    safe_ratio,
)
from shardflow.pool import ShardedPool


def _pool_many_reuse(reuse: bool) -> Runner:
    def run(n: int) -> tuple[int, float]:
        pool: ShardedPool[int] = ShardedPool(
            noop_batch, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
        )
        t0 = time.perf_counter()
        pool.submit_many(range(n))
        pool.close()
        pool.join()
        return n, time.perf_counter() - t0

    run.__doc__ = (
        f"``ShardedPool(noop_batch, workers=2, batch_size=256, reuse_batches={reuse})`` "
        "fed by ``submit_many(range(n))``."
    )
    return run


REUSE_ON = "submit_many + batch_size=256, reuse_batches=True"
REUSE_OFF = "submit_many + batch_size=256, reuse_batches=False"


REUSE_CONTENDERS: dict[str, Runner] = {
    REUSE_ON: _pool_many_reuse(True),
    REUSE_OFF: _pool_many_reuse(False),
}


def count_batch_lists(items: int, reuse: bool) -> dict[str, int]:
    """How many batch lists the workers allocated for ``items`` items (``batch_size=256``,
    2 workers): the handler counts the lists it is given fresh.

    ``PyList_New(n)`` makes a list with room for exactly ``n`` items; a list refilled by
    ``reuse_batches`` keeps the room it had. The handler counts every list whose room
    equals its length, then marks it by growing its room (``append`` + ``pop``), so that
    the same list seen again refilled is not counted. The marking costs a reallocation per
    fresh list, so this run is not timed.
    """
    fresh: list[int] = []
    ptr = struct.calcsize("P")
    empty = [].__sizeof__()

    def handler(b: list[int]) -> None:
        if b.__sizeof__() == empty + ptr * len(b):
            fresh.append(1)
            b.append(0)
            b.pop()

    pool: ShardedPool[int] = ShardedPool(
        handler, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
    )
    pool.submit_many(range(items))
    pool.close()
    pool.join()
    return {"batches": pool.metrics().batches, "lists_allocated": len(fresh)}


def measure_batch_allocations(items: int) -> dict[str, Any]:
    """Allocation evidence for ``reuse_batches``, ``items`` items through each mode.

    Per mode: ``tracemalloc``'s peak traced memory and the change in blocks / bytes it
    still traces at the end (``take_snapshot().statistics('lineno')`` totals), from a start
    with tracing on; and the number of batch lists allocated (``count_batch_lists``).
    tracemalloc sees *live* blocks only: a list allocated and freed per batch leaves no
    trace, so similar tracemalloc figures do not mean similar allocation counts; the list
    count is the direct evidence.
    """
    out: dict[str, Any] = {}
    for reuse in (True, False):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            pool: ShardedPool[int] = ShardedPool(
                noop_batch, workers=WORKERS, batch_size=BATCH, reuse_batches=reuse
            )
            pool.submit_many(range(items))
            pool.close()
            pool.join()
            batches = pool.metrics().batches
            del pool
            gc.collect()
            _, peak = tracemalloc.get_traced_memory()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        b0 = before.statistics("lineno")
        b1 = after.statistics("lineno")
        out[f"reuse_batches={reuse}"] = {
            "items": items,
            "batches": batches,
            "peak_traced_kib": peak / 1024,
            "live_blocks_delta": sum(s.count for s in b1) - sum(s.count for s in b0),
            "live_kib_delta": (sum(s.size for s in b1) - sum(s.size for s in b0)) / 1024,
            **count_batch_lists(items, reuse),
        }
    return out


def run_section(ctx: BenchContext) -> SectionResult:
    alloc_items = 20_000 if ctx.quick else 100_000
    data, targets = _section_reuse(ctx.items, alloc_items, ctx.repeats, ctx.out)
    return SectionResult("batch_reuse", data, targets)


def _section_reuse(
    items: int, alloc_items: int, repeats: int, out: TextIO
) -> tuple[dict[str, Any], list[Target]]:
    rates = interleaved(REUSE_CONTENDERS, lambda _name: items, repeats)
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratio = safe_ratio(med[REUSE_ON], med[REUSE_OFF])
    print(
        f"\nPooled batch lists: ShardedPool(noop_batch, workers=2, batch_size=256), "
        f"submit_many of {items:,} items",
        file=out,
    )
    rows = [["contender", "items/s", "vs reuse_batches=False"]]
    for name in REUSE_CONTENDERS:
        rows.append([name, fmt_rate(med[name]), f"{safe_ratio(med[name], med[REUSE_OFF]):.3f}x"])
    print_table(rows, out)
    alloc = measure_batch_allocations(alloc_items)
    print(f"Allocations over {alloc_items:,} items (tracemalloc sees live blocks only):", file=out)
    rows = [["mode", "batches", "lists allocated", "peak traced", "live blocks +/-"]]
    for mode, a in alloc.items():
        rows.append(
            [
                mode,
                f"{a['batches']:,}",
                f"{a['lists_allocated']:,}",
                f"{a['peak_traced_kib']:,.0f} KiB",
                f"{a['live_blocks_delta']:+,}",
            ]
        )
    print_table(rows, out)
    out.flush()
    reuse = {
        "items": items,
        "contenders": {
            name: {"items_per_s": med[name], "samples": rates[name]} for name in REUSE_CONTENDERS
        },
        "reuse_vs_no_reuse": ratio,
        "allocations": alloc,
    }
    return reuse, [Target("reuse_batches=True >= 1.1x reuse_batches=False", ratio, ">=", 1.1)]
