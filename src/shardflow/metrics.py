"""Snapshots of a pool's counters, as plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolMetrics", "ShardMetrics"]


@dataclass(frozen=True)
class ShardMetrics:
    """Counters of one shard (one worker and its queue).

    ``submitted`` counts items routed to this shard (queued or dropped); the other
    counters count what this shard's worker did. Each field is exact and monotonic, but a
    snapshot taken while the pool runs is not an atomic cut across fields.
    """

    index: int
    submitted: int
    processed: int
    failed: int
    dropped: int
    returned: int
    depth: int  #: items queued right now
    high_water: int  #: deepest queue the worker found when it drained
    batches: int  #: handler calls
    stolen_in: int = 0
    stolen_out: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True)
class PoolMetrics:
    """Totals over all shards plus the per-shard detail.

    Once the pool is joined:
    ``submitted == processed + failed + dead_lettered + dropped + returned``.
    """

    submitted: int
    processed: int
    failed: int
    dropped: int
    returned: int
    depth: int
    batches: int
    shards: tuple[ShardMetrics, ...]
    dead_lettered: int = 0

    @classmethod
    def from_shards(cls, shards: tuple[ShardMetrics, ...]) -> PoolMetrics:
        return cls(
            submitted=sum(s.submitted for s in shards),
            processed=sum(s.processed for s in shards),
            failed=sum(s.failed for s in shards),
            dropped=sum(s.dropped for s in shards),
            returned=sum(s.returned for s in shards),
            depth=sum(s.depth for s in shards),
            batches=sum(s.batches for s in shards),
            shards=shards,
            dead_lettered=sum(s.dead_lettered for s in shards),
        )

    @property
    def unfinished(self) -> int:
        """Items submitted and not yet accounted for (queued or being handled)."""
        return (
            self.submitted
            - self.processed
            - self.failed
            - self.dead_lettered
            - self.dropped
            - self.returned
        )
