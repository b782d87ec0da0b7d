#!/usr/bin/env python3
"""Soak test: push millions of items through a keyed, batched, stealing ShardedPool and
check that memory and reference counts stay flat (GUIDE.md §2.1 exactly once, §2.3 bounded
memory).

    python benchmarks/soak.py --items 10000000
    python benchmarks/soak.py --items 2000000 --workers 4 --json soak.json

The pool: ``key=hash``, ``ordered=False`` (so keyed items may be stolen), ``batch_size=64``,
``batch_timeout=0.01``. About 1% of handler calls raise; the failed batches go to a dead
letter, and one dead-letter call in ten refuses (raises) so that those batches are counted
as failed and reach ``on_error`` instead: both error routes are exercised.

One item in ``--sentinel-every`` is the same plain object (the sentinel); the rest are
ints. Checks (the script exits 1 if one is missed):

* accounting is exact: ``submitted == processed + failed + dead_lettered`` (no drops, no
  cancel), equal to the number of items pushed and to what the handler saw;
* RSS (from ``/proc/self/statm``) after the run exceeds RSS after the warm-up by less than
  ``--max-drift-mb`` (default 5 MB). Both points are taken after ``flush()`` (queues
  drained) and ``gc.collect()``;
* the sentinel's ``sys.getrefcount`` is back to its baseline once the pool is joined;
* on a debug interpreter, ``sys.gettotalrefcount()`` drifts by less than
  ``--max-totalrefs`` between the warm-up point and the end.

Not a throughput benchmark: the figure it prints is only there to size runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from typing import Any

import shardflow

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CHUNK = 100_000  # items per submit_many call


class Sentinel:
    """A plain, mortal object whose refcount must come back to its baseline."""


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (field 2, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mb(n: float) -> str:
    return f"{n / 2**20:.2f} MB"


def settle() -> None:
    gc.collect()
    gc.collect()


def run(args: argparse.Namespace) -> dict[str, Any]:
    sentinel = Sentinel()
    settle()
    sentinel_base = sys.getrefcount(sentinel)
    debug_build = hasattr(sys, "gettotalrefcount")

    # Per-thread tallies: each key is written by one worker thread only (no lost updates).
    seen: dict[int, int] = {}
    calls = iter(range(1 << 62))  # a C-level counter shared by the workers
    get_ident = threading.get_ident
    fail_every = args.fail_every

    def handler(batch: list[Any]) -> None:
        me = get_ident()
        seen[me] = seen.get(me, 0) + len(batch)
        if next(calls) % fail_every == 0:
            raise ValueError("injected failure")

    dead = {"calls": 0, "items": 0, "refused": 0}
    dead_lock = threading.Lock()

    def dead_letter(batch: list[Any], exc: BaseException) -> None:
        with dead_lock:
            dead["calls"] += 1
            if dead["calls"] % 10 == 0:
                dead["refused"] += 1
                raise RuntimeError("dead letter refuses this one")
            dead["items"] += len(batch)

    errors = {"calls": 0, "items": 0}

    def on_error(batch: list[Any], exc: BaseException) -> None:
        with dead_lock:
            errors["calls"] += 1
            errors["items"] += len(batch)

    # The dead letter's refusals are logged as warnings by the pool; keep them quiet.
    import logging

    logging.getLogger("shardflow").setLevel(logging.CRITICAL)

    every = args.sentinel_every
    pushed = 0
    samples: list[tuple[int, int]] = []  # (items pushed, rss)
    warm: dict[str, int] = {}
    t0 = time.perf_counter()
    pool: shardflow.ShardedPool[Any] = shardflow.ShardedPool(
        handler,
        workers=args.workers,
        key=hash,
        ordered=False,
        batch_size=64,
        batch_timeout=0.01,
        dead_letter=dead_letter,
        on_error=on_error,
        name="soak",
    )
    assert pool.steal, "ordered=False keyed pools steal by default"
    try:
        next_sample = args.sample_every
        while pushed < args.items:
            n = min(CHUNK, args.items - pushed)
            chunk = [sentinel if i % every == 0 else i for i in range(pushed, pushed + n)]
            assert pool.submit_many(chunk) == n
            del chunk
            pushed += n
            if pushed >= next_sample or pushed == args.items:
                next_sample += args.sample_every
                assert pool.flush(120), "flush did not finish within 120 s"
                settle()
                rss = rss_bytes()
                samples.append((pushed, rss))
                if not warm and pushed >= args.warmup:
                    warm["pushed"] = pushed
                    warm["rss"] = rss
                    if debug_build:
                        warm["totalrefs"] = sys.gettotalrefcount()  # type: ignore[attr-defined]
                if args.verbose:
                    print(f"  {pushed:>12,} items  rss {mb(rss)}", flush=True)
        settle()
        end_rss = rss_bytes()
        end_totalrefs = sys.gettotalrefcount() if debug_build else None  # type: ignore[attr-defined]
    finally:
        pool.close()
        joined = pool.join(300)
    elapsed = time.perf_counter() - t0
    m = pool.metrics()
    del pool
    settle()
    sentinel_end = sys.getrefcount(sentinel)

    if not warm:  # fewer items than the warm-up: compare with the first sample
        warm = {"pushed": samples[0][0], "rss": samples[0][1]}
    result: dict[str, Any] = {
        "items": args.items,
        "workers": args.workers,
        "seconds": round(elapsed, 2),
        "items_per_second": round(args.items / elapsed),
        "joined": joined,
        "submitted": m.submitted,
        "processed": m.processed,
        "failed": m.failed,
        "dead_lettered": m.dead_lettered,
        "dropped": m.dropped,
        "returned": m.returned,
        "batches": m.batches,
        "stolen": sum(s.stolen_in for s in m.shards),
        "handler_saw": sum(seen.values()),
        "dead_letter_items": dead["items"],
        "on_error_items": errors["items"],
        "warmup_items": warm["pushed"],
        "rss_warm": warm["rss"],
        "rss_end": end_rss,
        "rss_drift": end_rss - warm["rss"],
        "rss_max": max(r for _, r in samples),
        "sentinel_refs_base": sentinel_base,
        "sentinel_refs_end": sentinel_end,
        "totalrefs_drift": (
            None if end_totalrefs is None else end_totalrefs - warm.get("totalrefs", end_totalrefs)
        ),
    }
    return result


def check(r: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    accounted = r["processed"] + r["failed"] + r["dead_lettered"] + r["dropped"] + r["returned"]
    checks = [
        ("joined", r["joined"], "workers finished"),
        (
            "exact accounting",
            r["submitted"] == r["items"] == accounted == r["handler_saw"]
            and r["dropped"] == 0
            and r["returned"] == 0
            and r["dead_lettered"] == r["dead_letter_items"]
            and r["failed"] == r["on_error_items"],
            f"submitted {r['submitted']:,} = processed {r['processed']:,} + failed "
            f"{r['failed']:,} + dead_lettered {r['dead_lettered']:,}; handler saw "
            f"{r['handler_saw']:,}",
        ),
        (
            "some failures routed",
            r["failed"] > 0 and r["dead_lettered"] > 0,
            f"{(r['failed'] + r['dead_lettered']) / max(1, r['items']):.2%} of items",
        ),
        (
            f"RSS drift < {args.max_drift_mb} MB",
            r["rss_drift"] < args.max_drift_mb * 2**20,
            f"{mb(r['rss_warm'])} after {r['warmup_items']:,} items -> {mb(r['rss_end'])} "
            f"(drift {mb(r['rss_drift'])}, max {mb(r['rss_max'])})",
        ),
        (
            "sentinel refcount restored",
            r["sentinel_refs_end"] == r["sentinel_refs_base"],
            f"{r['sentinel_refs_base']} -> {r['sentinel_refs_end']}",
        ),
    ]
    if r["totalrefs_drift"] is not None:
        checks.append(
            (
                f"total refcount drift < {args.max_totalrefs}",
                abs(r["totalrefs_drift"]) < args.max_totalrefs,
                f"{r['totalrefs_drift']:+,}",
            )
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=10_000_000)
    p.add_argument("--workers", type=int, default=3, choices=range(2, 5), metavar="2..4")
    p.add_argument("--warmup", type=int, default=1_000_000, help="items before the RSS baseline")
    p.add_argument("--sample-every", type=int, default=1_000_000)
    p.add_argument("--fail-every", type=int, default=100, help="one handler call in N raises")
    p.add_argument("--sentinel-every", type=int, default=1000)
    p.add_argument("--max-drift-mb", type=float, default=5.0)
    p.add_argument("--max-totalrefs", type=int, default=1000)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print each RSS sample")
    args = p.parse_args(argv)
    if args.items < 1:
        p.error("--items must be >= 1")

    print(
        f"shardflow soak: {args.items:,} items, workers={args.workers}, key=hash, "
        f"ordered=False (stealing), batch_size=64, batch_timeout=0.01, "
        f"1/{args.fail_every} handler calls fail; Python {sys.version.split()[0]}"
        f"{' (debug build)' if hasattr(sys, 'gettotalrefcount') else ''}",
        flush=True,
    )
    r = run(args)
    print(
        f"{r['seconds']} s ({r['items_per_second']:,} items/s), {r['batches']:,} batches, "
        f"{r['stolen']:,} items stolen"
    )
    checks = check(r, args)
    if r["totalrefs_drift"] is None:
        print("  (sys.gettotalrefcount: not a debug build, skipped)")
    ok = True
    for name, passed, detail in checks:
        ok &= bool(passed)
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"result": r, "checks": {n: bool(c) for n, c, _ in checks}}, f, indent=2)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
