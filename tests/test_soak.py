"""Soak, scaled down (GUIDE.md §2.1 exactly once, §2.3 bounded memory): about a million
items through a keyed, batched, stealing pool whose handler fails now and then.

``benchmarks/soak.py`` is the full-size version (10M items, tight RSS target). Here the
RSS bound is deliberately generous (20 MB) so that it catches a per-item leak (a million
leaked ints or lists is tens of MB) without ever flaking on allocator noise.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from typing import Any

import pytest

from helpers import WAIT
from shardflow import ShardedPool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)"),
]

PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_BOUND = 20 * 2**20


class Sentinel:
    """A plain, mortal object (small ints and strings may be immortal or interned)."""


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def refs(obj: object) -> int:
    gc.collect()
    return sys.getrefcount(obj)


class Tally:
    """What the handler and the error routes saw, written without lost updates: handler
    counts are per worker thread, the routes take a lock."""

    def __init__(self, fail_every: int) -> None:
        self.fail_every = fail_every
        self.calls = iter(range(1 << 62))
        self.seen: dict[int, int] = {}
        self.lock = threading.Lock()
        self.dead_calls = 0
        self.dead_items = 0
        self.error_items = 0

    def handler(self, batch: Any) -> None:
        me = threading.get_ident()
        n = len(batch) if isinstance(batch, list) else 1
        self.seen[me] = self.seen.get(me, 0) + n
        if next(self.calls) % self.fail_every == 0:
            raise ValueError("injected failure")

    def dead_letter(self, batch: Any, exc: BaseException) -> None:
        with self.lock:
            self.dead_calls += 1
            if self.dead_calls % 10 == 0:  # refuse one in ten: those count as failed
                raise RuntimeError("dead letter refuses")
            self.dead_items += len(batch) if isinstance(batch, list) else 1

    def on_error(self, batch: Any, exc: BaseException) -> None:
        with self.lock:
            self.error_items += len(batch) if isinstance(batch, list) else 1


@pytest.fixture(autouse=True)
def quiet_refusals(caplog: pytest.LogCaptureFixture) -> None:
    # A refused dead letter is logged as a warning per batch; capturing thousands of
    # records would itself grow memory. caplog restores the level afterwards.
    caplog.set_level(logging.CRITICAL, logger="shardflow")


def run_soak(pool_kwargs: dict[str, Any], items: int, chunk: int, per_item: bool) -> None:
    sentinel = Sentinel()
    baseline = refs(sentinel)
    tally = Tally(fail_every=100)
    warm_rss = None
    pushed = 0
    pool: ShardedPool[Any] = ShardedPool(
        tally.handler, dead_letter=tally.dead_letter, on_error=tally.on_error, **pool_kwargs
    )
    try:
        while pushed < items:
            n = min(chunk, items - pushed)
            batch = [sentinel if i % 997 == 0 else i for i in range(pushed, pushed + n)]
            if per_item:
                submit = pool.submit
                for item in batch:
                    submit(item)
            else:
                assert pool.submit_many(batch) == n
            del batch
            pushed += n
            if warm_rss is None and pushed >= items // 5:
                assert pool.flush(WAIT)
                warm_rss = rss()
        assert pool.flush(WAIT)
        end_rss = rss()
    finally:
        pool.close()
        joined = pool.join(WAIT * 4)
    assert joined
    m = pool.metrics()
    del pool

    assert m.submitted == items
    assert m.dropped == m.returned == 0
    assert m.processed + m.failed + m.dead_lettered == items
    assert sum(tally.seen.values()) == items  # each item reached the handler exactly once
    assert m.dead_lettered == tally.dead_items > 0
    assert m.failed == tally.error_items > 0
    assert refs(sentinel) == baseline
    assert warm_rss is not None
    assert end_rss - warm_rss < RSS_BOUND, (warm_rss, end_rss)


def test_a_million_keyed_items_through_a_batched_stealing_pool_leave_no_trace() -> None:
    run_soak(
        dict(workers=2, key=hash, ordered=False, batch_size=64, batch_timeout=0.01),
        items=1_000_000,
        chunk=50_000,
        per_item=False,
    )


def test_per_item_submits_to_an_unbatched_pool_leave_no_trace() -> None:
    run_soak(
        dict(workers=2, key=hash, ordered=False, capacity=1024),
        items=500_000,
        chunk=20_000,
        per_item=True,
    )
