"""Section ``memory``: RSS growth moving items through a bounded pool, and reference
counts after join (nothing leaked per item).
"""

from __future__ import annotations

import gc
import itertools
import sys
from typing import Any

from shardflow.bench.common import (
    BATCH,
    WORKERS,
    BenchContext,
    SectionResult,
    Target,
    current_rss_bytes,
    noop,
    noop_batch,
)
from shardflow.pool import ShardedPool


def measure_memory(items: int, refcount_items: int) -> dict[str, Any]:
    """RSS growth moving ``items`` through a ``capacity=1024`` pool, and whether an object
    submitted ``refcount_items`` times gets its reference count back after join."""
    gc.collect()
    rss0 = current_rss_bytes()
    pool: ShardedPool[int] = ShardedPool(noop, workers=WORKERS, capacity=1024)
    moved = pool.submit_many(x for x in range(items))
    pool.close()
    pool.join()
    gc.collect()
    rss1 = current_rss_bytes()
    del pool

    refcounts: dict[str, int] = {}
    for mode, handler, batch in (("per-item", noop, 1), ("batch_size=256", noop_batch, BATCH)):
        sentinel = object()
        start = sys.getrefcount(sentinel)
        rpool: ShardedPool[object] = ShardedPool(
            handler, workers=WORKERS, capacity=1024, batch_size=batch
        )
        half = refcount_items // 2
        sub = rpool.submit
        for _ in range(half):
            sub(sentinel)
        rpool.submit_many(itertools.repeat(sentinel, refcount_items - half))
        rpool.close()
        rpool.join()
        refcounts[mode] = sys.getrefcount(sentinel) - start
        del rpool
    return {
        "items": items,
        "moved": moved,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "rss_growth_mb": (rss1 - rss0) / 2**20,
        "refcount_items": refcount_items,
        "refcount_leak": refcounts,
    }


def run_section(ctx: BenchContext) -> SectionResult:
    mem_items = 200_000 if ctx.quick else 5_000_000
    ref_items = 10_000 if ctx.quick else 100_000
    memory = measure_memory(mem_items, ref_items)
    print(
        f"\nMemory: {mem_items:,} items through capacity=1024: RSS "
        f"{memory['rss_before_mb']:.1f} -> {memory['rss_after_mb']:.1f} MB "
        f"({memory['rss_growth_mb']:+.2f} MB); refcount change after {ref_items:,} "
        f"submits: {memory['refcount_leak']}",
        file=ctx.out,
    )
    targets = [
        Target(
            f"RSS growth over {mem_items:,} items < 20 MB",
            memory["rss_growth_mb"],
            "<",
            20,
            unit="MB",
        )
    ]
    for mode, leak in memory["refcount_leak"].items():
        targets.append(Target(f"refcount restored after join ({mode})", leak, "==", 0, unit="refs"))
    return SectionResult("memory", memory, targets)
