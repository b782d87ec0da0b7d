"""Section ``idle``: the CPU an idle pool burns (its workers should be parked)."""

from __future__ import annotations

import time
from typing import Any

from shardflow.bench.common import BenchContext, SectionResult, Target, noop
from shardflow.pool import ShardedPool


def measure_idle(workers: int, seconds: float) -> dict[str, Any]:
    """Process CPU time burnt while a pool of ``workers`` idle workers waits ``seconds``."""
    pool: ShardedPool[int] = ShardedPool(noop, workers=workers)
    try:
        time.sleep(0.05)  # let every worker reach its sleep
        c0 = time.process_time()
        time.sleep(seconds)
        cpu = time.process_time() - c0
    finally:
        pool.close()
        pool.join()
    return {
        "workers": workers,
        "seconds": seconds,
        "cpu_ms": cpu * 1e3,
        "cpu_ms_per_s": cpu * 1e3 / seconds,
    }


def run_section(ctx: BenchContext) -> SectionResult:
    idle_seconds = 0.2 if ctx.quick else 1.0
    idle = measure_idle(8, idle_seconds)
    print(
        f"\nIdle: 8 workers for {idle_seconds:g} s burnt {idle['cpu_ms']:.2f} ms CPU "
        f"({idle['cpu_ms_per_s']:.2f} ms per second)",
        file=ctx.out,
    )
    target = Target(
        "idle 8 workers < 20 ms CPU per second", idle["cpu_ms_per_s"], "<", 20, unit="ms/s"
    )
    return SectionResult("idle", idle, [target])
