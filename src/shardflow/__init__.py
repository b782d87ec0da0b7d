"""shardflow: high-throughput in-process pipelines with a compiled, GIL-free core.

The public API is re-exported here; modules starting with ``_`` are private.
"""

from __future__ import annotations

from shardflow.batching import BatchProcessor
from shardflow.errors import CircuitOpen, Closed, Full, ShardflowError
from shardflow.executor import Executor
from shardflow.metrics import (
    Latency,
    MetricsDelta,
    PoolMetrics,
    RowMetrics,
    ShardMetrics,
    StageRows,
)
from shardflow.pipeline import Pipeline, PipelineReport, StageReport
from shardflow.pool import ARRAY_CAPACITY, DEFAULT_CAPACITY, ShardedPool
from shardflow.resilience.breaker import BreakerMetrics, BreakerState, CircuitBreaker
from shardflow.resilience.limiter import Limiter, LimiterMetrics
from shardflow.resilience.ratelimiter import RateLimiter, RateLimiterMetrics
from shardflow.resilience.retry import Retry, RetryMetrics

__version__ = "0.1.0.dev0"

__all__ = [
    "ARRAY_CAPACITY",
    "DEFAULT_CAPACITY",
    "BatchProcessor",
    "BreakerMetrics",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "Closed",
    "Executor",
    "Full",
    "Latency",
    "Limiter",
    "LimiterMetrics",
    "MetricsDelta",
    "Pipeline",
    "PipelineReport",
    "PoolMetrics",
    "RateLimiter",
    "RateLimiterMetrics",
    "Retry",
    "RetryMetrics",
    "RowMetrics",
    "ShardMetrics",
    "ShardedPool",
    "ShardflowError",
    "StageReport",
    "StageRows",
    "__version__",
]
