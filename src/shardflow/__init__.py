"""shardflow: high-throughput in-process pipelines with a compiled, GIL-free core.

The public API is re-exported here; modules starting with ``_`` are private.
"""

from __future__ import annotations

from shardflow.batching import BatchProcessor
from shardflow.errors import Closed, Full, ShardflowError
from shardflow.metrics import PoolMetrics, ShardMetrics
from shardflow.pool import DEFAULT_CAPACITY, ShardedPool

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_CAPACITY",
    "BatchProcessor",
    "Closed",
    "Full",
    "PoolMetrics",
    "ShardMetrics",
    "ShardedPool",
    "ShardflowError",
    "__version__",
]
