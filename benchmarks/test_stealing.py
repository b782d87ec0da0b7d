"""Work stealing: sha256 of 64 KiB per item (releases the GIL), keyed, ``ordered=False``.

Group ``work-stealing``: zipf-skewed keys (s=1.2 over 1,000 keys, fixed seed) with
``steal=True`` and ``steal=False``, uniform keys with ``steal=True``, every item on one
shard with ``steal=True`` and ``steal=False``, and the plain-thread control (two threads
with a static split, one thread): the parallelism the machine gives. A round is one
``shardflow.bench.StealRun`` call: build the pool, ``submit_many`` every item, wait until
the handler finished the last one with the pool still open (``close()`` wakes idle
workers, which would hide a missing thief wake-up), then close and join. pytest-benchmark
times the whole call (construction and a 5 ms settle included); ``extra_info`` holds
StealRun's own submit-to-last-item timings (``handled_s``) and ``sum(stolen_in)``.

Group ``steal-cost-per-item``: ``ShardedPool(noop, workers=2)`` with per-item submits,
unkeyed, ``steal=True`` against ``steal=False``: what stealing costs the GIL-bound path.

``python -m shardflow bench --sections stealing`` runs the same contenders interleaved.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from shardflow import ShardedPool
from shardflow.bench.common import noop
from shardflow.bench.gil import run_sha_threads
from shardflow.bench.stealing import (
    StealRun,
    _key_identity,
    _key_zero,
    run_sha_one_thread,
    uniform_keys,
    zipf_keys,
)

GROUP = "work-stealing"
COST_GROUP = "steal-cost-per-item"

CASES = {
    "zipf-steal": (zipf_keys, _key_identity, True),
    "zipf-no-steal": (zipf_keys, _key_identity, False),
    "uniform-steal": (uniform_keys, _key_identity, True),
    "one-shard-steal": (uniform_keys, _key_zero, True),
    "one-shard-no-steal": (uniform_keys, _key_zero, False),
}


@pytest.fixture(scope="session")
def steal_items() -> int:
    """sha256 items per round (``SHARDFLOW_BENCH_STEAL_ITEMS``, default 3,000)."""
    value = int(os.environ.get("SHARDFLOW_BENCH_STEAL_ITEMS", 3_000))
    if value < 1:
        raise pytest.UsageError(f"SHARDFLOW_BENCH_STEAL_ITEMS must be >= 1, got {value}")
    return value


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("case", list(CASES))
def test_stealing(
    benchmark: Any, steal_items: int, rounds: int, record_rate: Any, case: str
) -> None:
    """One ``StealRun`` per round (it builds, times and closes its own pool)."""
    keys, key, steal = CASES[case]
    run = StealRun(keys, key, steal=steal)
    # StealRun builds its pool itself and times only submit_many -> last item handled;
    # pytest-benchmark times the whole call, so report StealRun's own timings too.
    timings: list[float] = []

    def one() -> None:
        _, dt = run(steal_items)
        timings.append(dt)

    benchmark.pedantic(one, rounds=rounds, iterations=1)
    record_rate(steal_items)
    benchmark.extra_info["stolen_in"] = run.stolen
    benchmark.extra_info["submitted_per_shard"] = run.split[0] if run.split else None
    benchmark.extra_info["handled_s"] = timings


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("threads", [1, 2], ids=lambda t: f"control-{t}-plain-threads")
def test_stealing_control(
    benchmark: Any, steal_items: int, rounds: int, record_rate: Any, threads: int
) -> None:
    """The same hashing over plain threads (no queue): the machine's parallelism."""
    fn = run_sha_threads if threads == 2 else run_sha_one_thread
    benchmark.pedantic(fn, args=(steal_items,), rounds=rounds, iterations=1)
    record_rate(steal_items)


@pytest.mark.benchmark(group=COST_GROUP)
@pytest.mark.parametrize("steal", [True, False], ids=lambda s: f"steal={s}")
def test_per_item_steal_cost(
    benchmark: Any, items: int, rounds: int, record_rate: Any, steal: bool
) -> None:
    """``ShardedPool(noop, workers=2, steal=...)``, per-item submits, close + join."""

    def setup() -> tuple[tuple[ShardedPool[int]], dict[str, Any]]:
        return (ShardedPool(noop, workers=2, steal=steal),), {}

    def run(pool: ShardedPool[int]) -> None:
        sub = pool.submit
        for x in range(items):
            sub(x)
        pool.close()
        pool.join()

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    record_rate(items)
