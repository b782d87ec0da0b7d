"""``shardflow demo``: the main job on a built-in workload, with every item accounted for.

The workload is a synthetic event stream processed the way a real consumer would:

* **events**: ``{"id", "user", "seq", "payload"}``; ``user`` keys follow a zipf law over
  ``USERS`` users (a few users produce most events, as in real traffic), drawn with the
  stdlib (``bisect`` over a precomputed CDF); ``seq`` numbers each user's events; the
  payload is an 8-24 KiB slice (a ``memoryview``, no copy) of a text-like buffer;
* **GIL-free work** per event: ``hashlib.sha256`` and ``zlib.crc32`` of the payload (both
  release the GIL on buffers this large, so workers really run in parallel).
  ``zlib.compress`` would release it too, but it allocates ~256 KiB of state per call and
  the allocator, not the CPU, then limits how well threads scale;
* **Python work** per event: per-user order check and running totals, an output record;
* **a flaky downstream** (``FlakySink``): each write fails with probability
  ``FAILURE_RATE`` (a timeout), and once, half-way through the run, the sink is down for
  ``OUTAGE_SECONDS`` (connection refused). Writes go through ``Retry`` (transient errors
  are retried with backoff and a retry budget), a ``Limiter`` (bounded writes in flight)
  and a ``CircuitBreaker`` (opens on a 50% failure rate, fails fast while the sink is
  down, probes it and closes again);
* **dead letters**: a batch whose write still fails is handed to the pool's
  ``dead_letter`` with its exception and tallied by reason.

The pool routes by ``user`` (``key=``) so each user's events are handled in order, which
the handler checks. At the end the report gives the per-shard counters, throughput,
latency percentiles where the pool measures them, the guards' counters, and the exact
accounting of every event as equations that are checked: the exit status is 1 if one
does not balance.

Example:
    $ shardflow demo                      # 200,000 events, 10-20 s on 2 cores
    $ shardflow demo --seconds 5 --workers 4 --batch-size 64
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import platform
import random
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from shardflow.cli.progress import Progress, from_metrics, want_progress
from shardflow.metrics import PoolMetrics
from shardflow.pool import ShardedPool
from shardflow.resilience.breaker import BreakerState, CircuitBreaker
from shardflow.resilience.limiter import Limiter
from shardflow.resilience.retry import Retry

__all__ = [
    "DEFAULT_EVENTS",
    "DemoConfig",
    "FlakySink",
    "accounting_lines",
    "event_stream",
    "run_demo",
    "shard_table",
]

#: Events of the default run: 10-20 s on a 2-core machine (~60 us of work per event,
#: most of it with the GIL released).
DEFAULT_EVENTS = 200_000
USERS = 10_000
ZIPF_S = 1.1
PAYLOAD_MIN = 8 * 1024  # hashlib releases the GIL from 2 KiB on, zlib.crc32 from 5 KiB
PAYLOAD_MAX = 24 * 1024
BUFFER_BYTES = 1 << 20
#: Probability that one write to the sink fails (times out) outside the outage.
FAILURE_RATE = 0.01
OUTAGE_SECONDS = 0.3
#: Items per ``submit_many`` call of the producer (one C call per chunk).
CHUNK = 1_024
#: Per-shard queue bound: bounds the events in memory, whatever ``--events`` says. Small
#: on purpose: the queue wait the demo reports is mostly this backlog divided by the rate
#: (measured 60k events, 2 runs each: 8,192 gave p50 0.7-1.3 s at 7.9-13.2k events/s; 512
#: gave p50 48-59 ms at 10.2-14.9k events/s), and a larger queue buys no throughput here.
CAPACITY = 512


# --------------------------------------------------------------------------- the stream


def zipf_cdf(n: int = USERS, s: float = ZIPF_S) -> list[float]:
    """Cumulative weights of ``1 / (k + 1) ** s`` for ``k`` in ``range(n)``."""
    return list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))


def _payload_buffer(rng: random.Random) -> bytes:
    """Text-like bytes (words from a small vocabulary): compressible, as logs are."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(2_000)]
    words = rng.choices(vocab, k=BUFFER_BYTES // 4)
    return " ".join(words).encode("ascii")[:BUFFER_BYTES]


def event_stream(seed: int, count: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Chunks (lists of up to ``CHUNK``) of synthetic events; ``count`` events in all, or
    endless with ``count=None``. Deterministic for a given seed."""
    rng = random.Random(seed)
    buf = memoryview(_payload_buffer(rng))
    cdf = zipf_cdf()
    top = cdf[-1]
    last = len(cdf) - 1
    seqs = [0] * len(cdf)
    rand = rng.random
    randint = rng.randint
    span = len(buf) - PAYLOAD_MAX
    ids = itertools.count() if count is None else iter(range(count))
    while True:
        chunk: list[dict[str, Any]] = []
        for i in itertools.islice(ids, CHUNK):
            user = min(bisect.bisect_left(cdf, rand() * top), last)
            seq = seqs[user]
            seqs[user] = seq + 1
            off = randint(0, span)
            size = randint(PAYLOAD_MIN, PAYLOAD_MAX)
            chunk.append({"id": i, "user": user, "seq": seq, "payload": buf[off : off + size]})
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------------------------- downstream


class FlakySink:
    """A simulated downstream service: ``write(records)`` stores them, except that each
    call fails with probability ``failure_rate`` (``TimeoutError``) and every call fails
    while an outage is on (``ConnectionError``). The outage starts once, when
    ``outage_after`` records were written or ``outage_at`` (monotonic seconds) passed,
    whichever is set, and lasts ``outage_seconds``.

    Thread-safe: one lock around the bookkeeping (it stands for a remote service; its cost
    is not shardflow's)."""

    def __init__(
        self,
        *,
        seed: int,
        failure_rate: float = FAILURE_RATE,
        outage_seconds: float = OUTAGE_SECONDS,
        outage_after: int | None = None,
        outage_at: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed ^ 0x5EED)
        self.failure_rate = failure_rate
        self.outage_seconds = outage_seconds
        self._outage_after = outage_after
        self._outage_at = outage_at
        self._down_until: float | None = None
        self.calls = 0
        self.timeouts = 0
        self.refused = 0
        self.written = 0
        self.bytes_in = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        """Store ``records`` or raise ``TimeoutError`` / ``ConnectionError``."""
        now = time.monotonic()
        with self._lock:
            self.calls += 1
            if self._down_until is None and (
                (self._outage_after is not None and self.written >= self._outage_after)
                or (self._outage_at is not None and now >= self._outage_at)
            ):
                self._down_until = now + self.outage_seconds
            if self._down_until is not None and now < self._down_until:
                self.refused += 1
                raise ConnectionError("downstream unavailable (outage)")
            if self._rng.random() < self.failure_rate:
                self.timeouts += 1
                raise TimeoutError("downstream write timed out")
            self.written += len(records)
            self.bytes_in += sum(r["bytes"] for r in records)


class DeadLetters:
    """The pool's ``dead_letter``: tallies dead-lettered items by reason (thread-safe).

    Nothing is kept but counts and one example per reason, so memory stays bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items = 0
        self.by_reason: Counter[str] = Counter()

    def __call__(self, what: Any, exc: BaseException) -> None:
        n = len(what) if isinstance(what, list) else 1
        reason = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.items += n
            self.by_reason[reason] += n


class Worker:
    """The per-event work (see the module docstring). With ``lists=True`` the pool always
    hands a list, whatever the batch size, so one code path serves both."""

    def __init__(self, send: Callable[[list[dict[str, Any]]], None], check_order: bool) -> None:
        self.send = send
        self.check_order = check_order
        self._next_seq: dict[int, int] = {}
        self._totals: dict[int, int] = {}
        self.out_of_order = 0

    def __call__(self, events: list[dict[str, Any]]) -> None:
        next_seq = self._next_seq
        totals = self._totals
        records = []
        for ev in events:
            payload = ev["payload"]
            digest = hashlib.sha256(payload).digest()  # GIL released (> 2 KiB)
            crc = zlib.crc32(payload)  # GIL released (> 5 KiB)
            user = ev["user"]
            # Per-key order: each user's events arrive numbered 0, 1, 2 ... Keyed, ordered
            # pools handle a user's events in one worker, so this check races nobody.
            if ev["seq"] != next_seq.get(user, 0):
                self.out_of_order += 1
            next_seq[user] = ev["seq"] + 1
            totals[user] = totals.get(user, 0) + len(payload)
            records.append(
                {
                    "id": ev["id"],
                    "user": user,
                    "digest": digest[:8].hex(),
                    "crc32": crc,
                    "bytes": len(payload),
                }
            )
        self.send(records)


class Downstream:
    """The sink and its guards: ``send(records)`` is ``retry(limiter(breaker(sink.write)))``
    (outermost first, the order the pool composes its own guards in)."""

    def __init__(
        self, sink: FlakySink, breaker: CircuitBreaker, limiter: Limiter, retry: Retry
    ) -> None:
        self.sink = sink
        self.breaker = breaker
        self.limiter = limiter
        self.retry = retry
        self.send: Callable[[list[dict[str, Any]]], None] = retry(limiter(breaker(sink.write)))
        self._lock = threading.Lock()  # transitions are rare; listeners run in any thread
        self.opened = 0
        breaker.add_listener(self._on_transition)

    def _on_transition(self, _b: CircuitBreaker, _old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            with self._lock:
                self.opened += 1

    @classmethod
    def build(cls, cfg: DemoConfig, count: int | None) -> Downstream:
        """The demo's downstream: the outage half-way through the events (or the time)."""
        sink = FlakySink(
            seed=cfg.seed,
            outage_after=None if count is None else count // 2,
            outage_at=None if cfg.seconds is None else time.monotonic() + cfg.seconds / 2,
        )
        # A 50% failure rate over the last 40 calls opens it: the 1% of timeouts never
        # does, the outage does at once; after 0.1 s one trial call probes the sink.
        breaker = CircuitBreaker(
            max_failures=None,
            failure_rate=0.5,
            window=40,
            minimum_calls=10,
            reset_timeout=0.1,
            name="downstream",
        )
        retry = Retry(
            3, base=0.002, max_delay=0.02, retry_on=(TimeoutError, ConnectionError), budget=0.2
        )
        return cls(sink, breaker, Limiter(max(1, cfg.workers // 2)), retry)


# --------------------------------------------------------------------------- reports


def shard_table(m: PoolMetrics) -> list[str]:
    """The per-shard counters as aligned text lines (header, rule, one row per shard,
    totals)."""
    head = [
        "shard",
        "submitted",
        "processed",
        "failed",
        "dead letters",
        "stolen in",
        "stolen out",
        "high water",
        "batches",
    ]
    rows = [
        [
            str(s.index),
            *(
                f"{v:,}"
                for v in (
                    s.submitted,
                    s.processed,
                    s.failed,
                    s.dead_lettered,
                    s.stolen_in,
                    s.stolen_out,
                    s.high_water,
                    s.batches,
                )
            ),
        ]
        for s in m.shards
    ]
    total = [
        "all",
        *(
            f"{v:,}"
            for v in (
                m.submitted,
                m.processed,
                m.failed,
                m.dead_lettered,
                sum(s.stolen_in for s in m.shards),
                sum(s.stolen_out for s in m.shards),
                max((s.high_water for s in m.shards), default=0),
                m.batches,
            )
        ),
    ]
    table = [head, *rows, total]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = []
    for j, row in enumerate(table):
        if j == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def latency_lines(m: PoolMetrics) -> list[str]:
    """Queue-wait and service-time percentiles (``PoolMetrics.queue_wait`` /
    ``.service_time``, sampled by the core), one line each; none for an empty one."""
    lines = []
    for label, lat in (("queue wait", m.queue_wait), ("service time", m.service_time)):
        if not lat.count:
            continue
        cells = "  ".join(
            f"{name} {_fmt_duration(value)}"
            for name, value in (
                ("p50", lat.p50),
                ("p90", lat.p90),
                ("p99", lat.p99),
                ("p999", lat.p999),
                ("max", lat.max),
            )
        )
        lines.append(f"  {label:<13} {cells}  ({lat.count:,} samples)")
    return lines


def _fmt_duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:7.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:7.2f} ms"
    return f"{seconds:7.2f} s "


@dataclass(frozen=True)
class Check:
    """One accounting equation: ``text`` holds when ``ok``."""

    text: str
    ok: bool


def accounting_lines(checks: list[Check]) -> list[str]:
    """Each equation with its verdict."""
    width = max(len(c.text) for c in checks)
    return [f"  {c.text.ljust(width)}   {'OK' if c.ok else 'MISMATCH'}" for c in checks]


def pool_equation(m: PoolMetrics, label: str, expected: int) -> Check:
    """``label expected = submitted = processed + failed + dead-lettered + dropped +
    returned``."""
    settled = m.processed + m.failed + m.dead_lettered + m.dropped + m.returned
    text = (
        f"{label} {expected:,} = submitted {m.submitted:,} = processed {m.processed:,} "
        f"+ dead-lettered {m.dead_lettered:,} + failed {m.failed:,} + dropped {m.dropped:,} "
        f"+ returned {m.returned:,}"
    )
    return Check(text, expected == m.submitted == settled)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``shardflow demo`` (validated by the CLI): ``events`` or ``seconds``
    bounds the run; ``unordered`` lets keyed events be stolen (gives up per-key order)."""

    events: int | None = DEFAULT_EVENTS
    seconds: float | None = None
    workers: int = 2
    batch_size: int = 1
    seed: int = 1
    unordered: bool = False
    progress: bool | None = None


def run_demo(cfg: DemoConfig, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the demo; print the report to ``out`` and progress to ``err``.

    Returns the exit status: 0 when every accounting equation balances, 1 when one does
    not, 130 after Ctrl-C (the report is still printed, with the items handed back).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    count = None if cfg.seconds is not None else cfg.events
    down = Downstream.build(cfg, count)
    worker = Worker(down.send, check_order=not cfg.unordered)
    dead = DeadLetters()

    bound = f"{count:,} events" if count is not None else f"{cfg.seconds:g} s"
    print(
        f"shardflow demo: {bound}, {cfg.workers} workers, batch_size={cfg.batch_size}, "
        f"key=user ({USERS:,} users, zipf s={ZIPF_S}), "
        f"{'unordered (stealing on)' if cfg.unordered else 'per-user order'}, seed {cfg.seed}",
        file=out,
    )
    print(
        f"per event: sha256 + crc32 of {PAYLOAD_MIN / 1024:g}-{PAYLOAD_MAX / 1024:g} KiB "
        f"(GIL released) + Python bookkeeping; downstream fails {FAILURE_RATE:.0%} of writes "
        f"and is down for {OUTAGE_SECONDS:g} s half-way; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        file=out,
    )
    out.flush()

    pool: ShardedPool[dict[str, Any]] = ShardedPool(
        worker,
        workers=cfg.workers,
        key=_user_key,
        ordered=not cfg.unordered,
        batch_size=cfg.batch_size,
        lists=True,
        capacity=CAPACITY,
        dead_letter=dead,
        name="demo",
    )
    show = want_progress(cfg.progress, err)
    progress = Progress(
        lambda: from_metrics(pool.metrics()),
        total=count,
        duration=cfg.seconds,
        stream=err,
        label="demo",
    )
    generated = 0
    interrupted = False
    t0 = time.perf_counter()
    try:
        if show:
            progress.start()
        deadline = None if cfg.seconds is None else time.monotonic() + cfg.seconds
        for chunk in event_stream(cfg.seed, count):
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                generated += pool.submit_many(chunk)
            except BaseException as exc:
                # Ctrl-C inside submit_many: the exception says how many of the chunk
                # went in; the rest never reached the pool and is not an event of the run.
                generated += getattr(exc, "submitted", 0)
                raise
        pool.close()
        pool.join()
    except KeyboardInterrupt:
        interrupted = True
        # Everything not started is handed back (and counted as returned): the
        # accounting below still covers every event generated.
        pool.shutdown(cancel=True)
    finally:
        progress.stop()
    elapsed = time.perf_counter() - t0
    m = pool.metrics()
    report(cfg, m, elapsed, generated, down, dead, out)
    checks = demo_checks(m, generated, down.sink, dead, worker, cfg)
    print("\nAccounting (every event, exactly once):", file=out)
    for line in accounting_lines(checks):
        print(line, file=out)
    ok = all(c.ok for c in checks)
    if not ok:
        print("error: the accounting does not balance", file=err)
    out.flush()
    if interrupted:
        return 130
    return 0 if ok else 1


def _user_key(ev: dict[str, Any]) -> int:
    user: int = ev["user"]
    return user


def demo_checks(
    m: PoolMetrics,
    generated: int,
    sink: FlakySink,
    dead: DeadLetters,
    worker: Worker,
    cfg: DemoConfig,
) -> list[Check]:
    """The equations the demo checks (independent tallies against the pool's counters)."""
    checks = [
        pool_equation(m, "events", generated),
        Check(
            f"downstream stored {sink.written:,} = processed {m.processed:,}",
            sink.written == m.processed,
        ),
        Check(
            f"dead-letter tally {dead.items:,} = dead-lettered {m.dead_lettered:,}",
            dead.items == m.dead_lettered,
        ),
    ]
    handled = m.processed + m.dead_lettered + m.failed
    if not cfg.unordered:
        checks.append(
            Check(
                f"per-user order: {worker.out_of_order:,} of {handled:,} events out of order",
                worker.out_of_order == 0,
            )
        )
    return checks


def report(
    cfg: DemoConfig,
    m: PoolMetrics,
    elapsed: float,
    generated: int,
    down: Downstream,
    dead: DeadLetters,
    out: TextIO,
) -> None:
    """Print the demo's report (everything but the accounting)."""
    rate = generated / elapsed if elapsed > 0 else 0.0
    print(
        f"\n{generated:,} events in {elapsed:.2f} s: {rate:,.0f} events/s "
        f"({m.batches:,} handler calls)",
        file=out,
    )
    print("\nPer shard:", file=out)
    for line in shard_table(m):
        print("  " + line, file=out)
    if cfg.unordered:
        print("  (unordered: idle workers steal keyed events)", file=out)
    else:
        print("  (keyed and ordered: no stealing, so each user's events stay in order)", file=out)

    lat = latency_lines(m)
    print("\nLatency:", file=out)
    if lat:
        for line in lat:
            print(line, file=out)
        print(
            f"  (queue wait: submit to a worker taking the event; the producer runs up to "
            f"{CAPACITY:,} events per shard ahead, so it is mostly that backlog. Service "
            "time: one handler call)",
            file=out,
        )
    else:
        print("  (no samples: the run was too short)", file=out)

    sink = down.sink
    b = down.breaker.metrics()
    lm = down.limiter.metrics()
    r = down.retry.metrics()
    print("\nDownstream:", file=out)
    print(
        f"  writes {sink.calls:,}: stored {sink.written:,} records, timeouts "
        f"{sink.timeouts:,}, refused during the outage {sink.refused:,}",
        file=out,
    )
    print(
        f"  retry: {r.calls:,} calls, {r.retries:,} retries, gave up {r.gave_up:,}, "
        f"budget exhausted {r.budget_exhausted:,}",
        file=out,
    )
    print(
        f"  breaker: opened {down.opened} times, rejected {b.rejections:,} calls "
        f"(failing fast), {b.failures:,} failures of {b.calls:,} calls, now {b.state.value}",
        file=out,
    )
    print(
        f"  limiter: at most {lm.concurrency} write(s) in flight; {lm.waited:,} writes waited",
        file=out,
    )
    print(f"\nDead letters: {dead.items:,} events", file=out)
    for reason, n in dead.by_reason.most_common():
        print(f"  {n:>10,}  {reason}", file=out)
