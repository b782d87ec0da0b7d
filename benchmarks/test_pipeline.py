"""Three no-op stages: shardflow.Pipeline against what a user writes instead.

Every benchmark moves ``SHARDFLOW_BENCH_ITEMS`` items through three calls of
``f = lambda x: x`` (the bounded-queue threads move a tenth of them: about 1 us per
hand-off), so ``pytest benchmarks/test_pipeline.py --benchmark-only
--benchmark-group-by=group`` shows them side by side in the group ``pipeline-3-stages``.
``python -m shardflow bench --sections pipeline`` runs the same contenders interleaved
round by round, plus the peak-RSS comparison, which is the fairer comparison on a noisy
machine.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardflow.bench.pipeline import (
    QUEUE_DIVISOR,
    run_bare,
    run_boundedqueue,
    run_pipeline,
    run_pipeline_ordered,
    run_simplequeue,
)

GROUP = "pipeline-3-stages"

CONTENDERS = {
    "bare-loop": (run_bare, 1),
    "threads-simplequeue": (run_simplequeue, 1),
    "threads-queue-maxsize": (run_boundedqueue, QUEUE_DIVISOR),
    "pipeline": (run_pipeline, 1),
    "pipeline-ordered": (run_pipeline_ordered, 1),
}


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", list(CONTENDERS))
def test_three_noop_stages(
    benchmark: Any, name: str, items: int, rounds: int, record_rate: Any
) -> None:
    run, divisor = CONTENDERS[name]
    n = max(1, items // divisor)
    moved: list[int] = []

    def once() -> None:
        moved.append(run(n)[0])

    benchmark.pedantic(once, rounds=rounds, iterations=1)
    assert set(moved) == {n}
    record_rate(n)
