"""Shared settings of the pytest-benchmark suite.

These files are not collected by the normal test run (``testpaths = ["tests"]``); run them
explicitly, see ``benchmarks/README.md``. Sizes come from the environment so that a quick
look and a careful measurement use the same files:

``SHARDFLOW_BENCH_ITEMS``   no-op items per round (default 100,000, for every contender,
                            ThreadPoolExecutor included, so the times compare directly)
``SHARDFLOW_BENCH_ROUNDS``  rounds per benchmark (default 5)
``SHARDFLOW_BENCH_SHA_ITEMS``  sha256 items per round (default 2,000)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


def _env_int(name: str, default: int) -> int:
    value = int(os.environ.get(name, default))
    if value < 1:
        raise pytest.UsageError(f"{name} must be an integer >= 1, got {value}")
    return value


@pytest.fixture(scope="session")
def items() -> int:
    """No-op items moved per benchmark round."""
    return _env_int("SHARDFLOW_BENCH_ITEMS", 100_000)


@pytest.fixture(scope="session")
def rounds() -> int:
    """Rounds per benchmark (pytest-benchmark reports min/median/mean over them)."""
    return _env_int("SHARDFLOW_BENCH_ROUNDS", 5)


@pytest.fixture(scope="session")
def sha_items() -> int:
    """sha256 items (64 KiB each) per round of the GIL-release benchmarks."""
    return _env_int("SHARDFLOW_BENCH_SHA_ITEMS", 2_000)


@pytest.fixture
def record_rate(benchmark: Any) -> Callable[[int], None]:
    """``record_rate(n)`` after a benchmark ran: store ``n`` and the median items/s in its
    ``extra_info`` (shown by ``--benchmark-json`` and ``--benchmark-columns``).

    Nothing is recorded when benchmarks are disabled (``--benchmark-disable``).
    """

    def record(n: int) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:
            return
        median = stats.stats.median
        benchmark.extra_info["items"] = n
        benchmark.extra_info["items_per_s_median"] = n / median if median > 0 else None

    return record
