"""``ProcessBackend``: every shard runs its handler in a worker process of its own.

Under the GIL a Python handler gets no speed-up from threads; in a worker process per
shard it does. The pool itself stays in the caller's process, unchanged: routing, per-key
order, the bounded rings, size-or-time batching, accounting and metrics. What crosses the
process boundary is "run this batch over there" (``_process_worker`` has the protocol):

* per shard, a task ring and a result ring in shared memory (``shardflow._shmring``:
  memfd-backed, nothing in /dev/shm even after SIGKILL; waits park on a futex with a
  timeout that doubles as a liveness check of the peer);
* a parent thread per shard (its dispatch thread) runs the compiled shard loop and, for
  each batch, pickles it once (before taking the shard's lock, which the collector needs
  to settle batches) into the task ring and returns at once (``DEFERRED``):
  up to ``window`` batches (default 8; 4 for an ``Executor``) are in flight per shard, so
  the worker starts the
  next batch as soon as it finished one while the parent pickles the ones after it. A
  full window is refilled once half of it came back. Per-item pools are shipped in lists
  of up to ``ship_batch_size`` items (whatever is queued, no waiting), and the worker calls
  the handler once per item (a compiled loop, ``shardflow._procloop``);
* in a stealing pool (unkeyed, or ``ordered=False``) a dispatch thread steals from the
  other shards' staging rings only while its own worker is down to its last batch
  (``_ProcessRunner._regate``): what it stole earlier would wait behind its worker's
  queued batches, out of reach of any other thief, while the victim's worker ran dry;
* an item submitted to an idle shard (staging ring empty, nothing in flight) is shipped
  by the submitting thread itself, as a batch of one (``_ProcessRunner.direct_ship``: a
  per-item pool without driver guards), so an idle round trip does not pay for waking
  the dispatch thread; the dispatch thread stays the owner otherwise, and every ship
  holds the shard's lock (one producer on the task ring);
* a second parent thread per shard (its collector) is the only reader of the result ring:
  it settles each batch when its DONE record comes back (failures came as FAILED records
  before it), hands the values to ``on_results`` first, and does everything that replaces
  the worker. It waits on the result ring even with nothing in flight (in park slices of
  ``_IDLE_CHECK``), so that the worker's DONE wakes it directly;
* every wait on a ring (a worker's for its next batch, a collector's for a result) polls
  for up to ``ProcessBackend(spin_us=)`` (adaptive), then parks on the ring's futex: an
  idle pool is parked and costs no CPU;
* a shard's batches run in the order they were shipped, one after the other, so per-key
  order holds, across crashes too.

Nothing is lost when a worker dies (SIGKILL, a segfault in the handler, ``os._exit``,
out of memory, or ``task_timeout`` running out): shared progress words say which batch
and which item was running. The items before it ran (their failures were reported as they
happened); the suspect item is retried alone in a fresh worker, up to ``max_attempts``
runs in all, then failed with ``WorkerLost`` (dead letter, ``on_error``); the items after
it, then every later batch that was in flight, run in the replacement worker, in order,
before anything new is shipped. A worker that dies before its next batch started, or
between batches, blames no item. **The suspect item may therefore run more than once**:
side effects of a handler that crashes its worker are at-least-once. After
``max_crashes`` worker deaths within ``crash_window`` seconds a shard is marked broken:
its batches fail with ``ShardBroken`` (counted, routed; nothing hangs).

``ShardedPool.terminate_workers()`` / ``kill_workers()`` end the workers at once (SIGTERM
/ SIGKILL, as ``ProcessPoolExecutor`` in Python 3.14) without replacing them and shut
the pool down: queued items are returned, unfinished items of the batches in flight fail
with ``WorkerLost`` (``attempts`` 0).

What differs from threads, and why:
* the handler is pickled once per worker: by reference (a module-level function or a
  picklable callable), or by value with cloudpickle when installed (lambdas, closures);
  ``ShardedPool`` raises ``TypeError`` at construction otherwise. Items and exceptions
  cross by pickle: an item that cannot be pickled fails (``TypeError`` naming its type)
  and is routed like a handler failure; an exception that cannot be pickled comes back as
  ``RemoteError`` with its text and traceback. ``ProcessBackend(serializer=...)`` sends
  the items of each batch and the values for ``on_results`` with the user's
  ``(dumps, loads)`` instead (msgspec, orjson: faster for plain-data records; see
  ``Serializer`` for what it cannot carry);
* a breaker, limiter or rate limiter is not copied into the workers: the pool keeps it in
  this process around the shipping of batches (``backends/_guards.py``: the breaker admits
  each item when its batch is shipped and records each outcome; one limiter permit per
  batch in flight; rate tokens taken before shipping, batches capped at the burst). A
  retry is refused (retried here, an item would run after later items of its key);
* the handler's return values are sent back only when the pool asks (``on_results``), in
  the DONE record of their batch; after a crash, the items before the suspect run again
  for their values;
* ``service_time`` covers a batch from its shipping to its outcome: pickling, IPC and
  the wait behind the batches ahead of it in the window included;
* default start method: ``forkserver`` where available (``spawn`` elsewhere): never a
  bare ``fork`` of a process whose shardflow threads are running. Pass ``mp_context`` to
  choose; a ``fork`` context is refused while other threads run.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.context
import multiprocessing.util  # its exit hook must be registered before ours (_drain_at_exit)
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from shardflow._shmring import (
    DEFAULT_SPIN_US,
    PeerDead,
    RingClosed,
    RingError,
    RingTimeout,
    ShmRing,
)
from shardflow.backends import _process_worker as wire
from shardflow.backends.base import (
    DEFERRED,
    Backend,
    BatchOutcome,
    Deliver,
    Handler,
    Settle,
    ShardRunner,
    deliver_values,
    start_shard_threads,
)
from shardflow.errors import ShardflowError

__all__ = ["ProcessBackend", "RemoteError", "Serializer", "ShardBroken", "WorkerLost"]

RemoteError = wire.RemoteError

_MAX_SPIN_US = 10_000  # a longer busy-poll is a busy worker, not a wait
_SLICE = 0.05  # seconds between liveness checks while waiting on a worker
_UNKEYED = (1 << 64) - 1  # direct_ship's tail for an unkeyed pool: no order to keep
_JOIN_TIMEOUT = 5.0  # seconds a worker gets to exit after "no more batches"
_IDLE_CHECK = 1.0  # seconds between health checks of a worker with nothing in flight

#: Batches in flight per shard of a pool (``ProcessBackend(window=None)``). A full window
#: is refilled once half of it came back, so the dispatch thread blocks once per
#: ``window // 2`` batches: no-op items shipped 1,000 per message ran at 12-14M/s with 4
#: and 17-18M/s with 8 in A/B runs (benchmarks/README.md), CPU-bound items at the same
#: rate (the dispatch thread's stealing is gated: depth no longer unbalances workers).
DEFAULT_WINDOW = 8
#: An Executor's default instead: the calls of the batches in flight are running and can
#: no longer be cancelled, so it keeps the shallower window.
EXECUTOR_WINDOW = 4


class WorkerLost(ShardflowError):
    """The worker process died (or overran ``task_timeout``) while handling this item,
    ``attempts`` times in a row; ``exitcode`` is the last death's (``-N``: signal N)."""

    def __init__(self, message: str, *, pid: int, exitcode: int | None, attempts: int) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (_worker_lost, (str(self), self.pid, self.exitcode, self.attempts))


def _worker_lost(message: str, pid: int, exitcode: int | None, attempts: int) -> WorkerLost:
    return WorkerLost(message, pid=pid, exitcode=exitcode, attempts=attempts)


class ShardBroken(ShardflowError):
    """A shard whose worker kept dying (``max_crashes`` deaths within ``crash_window``
    seconds) takes no more batches; its items fail with this error."""


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Unpicklable(Exception):
    """Internal: a batch did not pickle (nothing was sent)."""


class _Crash(Exception):
    """Internal: the worker died while batch ``seq`` ran; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _dumps_handler(handler: Any, what: str = "the handler") -> bytes:
    """The handler as the workers will load it: by reference (plain pickle) when it can
    be, else by value with cloudpickle when that is installed (lambdas, closures);
    ``TypeError`` saying what to do otherwise. Checked here, at construction, so that a
    handler that cannot travel never makes a worker hang or crash-loop."""
    try:
        data = pickle.dumps(handler, 5)
        pickle.loads(data)
        return data
    except Exception as exc:
        first = exc
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError:
        raise TypeError(
            f"backend='process' sends {what} to each worker process by pickle, and "
            f"{handler!r} cannot be pickled ({type(first).__name__}: {first}); use a "
            "module-level function or a picklable callable object, or install cloudpickle "
            "(pip install 'shardflow[cloudpickle]') to send lambdas and closures by value"
        ) from first
    try:
        by_value: bytes = cloudpickle.dumps(handler, 5)
        pickle.loads(by_value)
    except Exception as exc:
        raise TypeError(
            f"backend='process' could not send {handler!r} to the worker processes, by "
            f"reference ({type(first).__name__}: {first}) nor by value with cloudpickle "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return by_value


class Serializer(NamedTuple):
    """How ``ProcessBackend(serializer=...)`` encodes the items of each shipped batch and
    the values that come back (``on_results``), instead of pickle.

    ``dumps(list_of_items)`` returns bytes (or str) and ``loads`` turns that back into a
    list of as many items; both are called once per batch with the whole list (a C
    encoder such as msgspec or orjson then runs one call per batch). Both travel to the
    worker processes by pickle: module-level functions or builtins (by reference), or
    lambdas and closures with cloudpickle installed. A plain ``(dumps, loads)`` tuple, or
    any object with ``dumps`` and ``loads`` attributes (the ``marshal``, ``orjson`` or
    ``json`` module itself), is accepted too.

    Use it for records of plain data (dicts, lists, str, numbers, None), where a C encoder
    beats pickle. It carries only what its ``dumps`` encodes: an item it rejects (for
    JSON: a set, bytes, a datetime, your own class) fails alone when its batch is shipped
    (``TypeError`` naming the item's type and the serializer; counted and routed like a
    handler failure, never lost), a value it rejects fails its item, and what it changes
    on the way (tuples into lists, JSON's int keys into str) the handler and
    ``on_results`` see changed. A ``loads`` that gives back another number of items fails
    every item of the batch (``RuntimeError``) rather than charge a value or a crash to
    the wrong item. The handler, exceptions and the protocol's records still travel by
    pickle. ``Executor`` (its items are calls) and ordered pipelines (values with their
    place in the order) refuse a backend with a serializer.

    Example (msgspec's MessagePack)::

        Serializer(msgspec.msgpack.encode, msgspec.msgpack.decode)
    """

    dumps: Callable[[Any], Any]
    loads: Callable[[Any], Any]


def _make_serializer(serializer: object) -> tuple[Serializer, bytes] | None:
    """``serializer=`` checked and normalised (None: pickle): the pair and its pickle for
    the workers. ``TypeError`` naming the parameter for anything that is not a pair of
    callables that round-trips a list, or that cannot be sent to a worker process."""
    if serializer is None:
        return None
    accepted = (
        "a (dumps, loads) pair of callables, a shardflow.backends.Serializer, or an "
        "object with dumps and loads attributes (such as the marshal or orjson module)"
    )
    pair: tuple[Any, ...]
    if isinstance(serializer, tuple):
        pair = serializer
    elif callable(getattr(serializer, "dumps", None)) and callable(
        getattr(serializer, "loads", None)
    ):
        pair = (serializer.dumps, serializer.loads)  # type: ignore[attr-defined]
    else:
        raise TypeError(f"serializer must be None (pickle) or {accepted}, got {serializer!r}")
    if len(pair) != 2 or not all(callable(f) for f in pair):
        raise TypeError(f"serializer must be None (pickle) or {accepted}, got {serializer!r}")
    dumps, loads = pair
    try:
        back = loads(dumps([]))
        if list(back) != []:
            raise ValueError(f"got {back!r}")
    except Exception as exc:
        raise TypeError(
            f"serializer=: loads(dumps([])) must give back an empty list (the pair encodes "
            f"each batch as a list; is it (dumps, loads) in that order?), but it failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        data = _dumps_handler(pair, "the serializer's (dumps, loads)")
    except TypeError as exc:
        raise TypeError(f"serializer=: {exc}") from exc
    return Serializer(dumps, loads), data


class _Worker:
    """One live worker process and its rings (replaced whole after a crash)."""

    def __init__(self, runner: _ProcessRunner, shard: int) -> None:
        ctx = runner.ctx
        self.tasks = ShmRing.create(runner.ring_bytes, spin_us=runner.spin_us)
        self.results = ShmRing.create(runner.ring_bytes, spin_us=runner.spin_us)
        self.progress = ctx.RawArray("q", 2)  # [index, seq]: see _process_worker
        self.mark = memoryview(self.progress).cast("B").cast("q")
        self.mark[0] = -1
        self.mark[1] = 0
        death_r, self.death_w = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=wire.main,
            args=(
                self.tasks,
                self.results,
                runner.handler_pickle,
                runner.per_item,
                runner.deliver is not None,
                self.progress,
                death_r,
                runner.serializer_pickle,
            ),
            name=f"{runner.pool_name}-worker-{shard}",
            daemon=True,
        )
        self.process.start()
        death_r.close()
        self.tasks.watch(self.process.sentinel)
        self.results.watch(self.process.sentinel)

    def await_ready(self, runner: _ProcessRunner, shard: int) -> None:
        """Wait for the worker to load the handler; a worker that cannot (an import that
        fails there, a crash at start) makes the pool's constructor raise, instead of a
        crash loop that would fail every item."""
        where = f"{runner.pool_name} shard {shard}: the worker process (pid {self.pid})"
        try:
            msg = self.results.get(timeout=runner.start_timeout)
        except PeerDead:
            self.process.join(1.0)
            code = self.process.exitcode
            self.release()
            raise RuntimeError(
                f"{where} died while starting ({_describe_exit(code)}); its stderr says why"
            ) from None
        except RingTimeout:
            self.kill()
            self.release()
            raise RuntimeError(
                f"{where} did not load the handler within {runner.start_timeout} s"
            ) from None
        _, _, failure = msg
        if failure is not None:
            self.process.join(_JOIN_TIMEOUT)
            self.kill()
            self.release()
            raise RuntimeError(f"{where} could not load the handler: {failure}") from failure
        # From now on the collector is the only reader; it waits on this ring even with
        # nothing in flight (see _collect), in park slices this long (this handle only:
        # the worker's copy keeps the default).
        self.results.check_interval = _IDLE_CHECK

    @property
    def pid(self) -> int:
        return self.process.pid or -1

    def stop(self, timeout: float) -> None:
        """Ask the worker to exit, then make sure it did; frees the rings."""
        if self.process.is_alive():
            try:
                self.tasks.put_pickled(None, timeout=timeout)
            except (RingTimeout, PeerDead, RingClosed):
                pass
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.release()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()

    def release(self) -> None:
        self.death_w.close()
        self.mark.release()
        self.tasks.close()
        self.results.close()
        self.process.close()


class _Shard:
    """The parent's state of one shard: its worker, the batches in flight (the window),
    the batch counter, crash history.

    ``cond`` guards ``inflight``, ``hold``, ``closing`` and the worker swap: the dispatch
    thread ships under it, the collector thread pops under it (and notifies). ``hold``
    stops shipping while the collector replaces the worker (a crash: the batches in
    flight are re-run first, in order; or ``max_tasks_per_child``). ``settling``
    serializes the shard's settle calls (the core's counters take one writer at a time)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: _Worker | None = None
        self.seq = 0
        self.handled = 0  # items the current worker ran (max_tasks_per_child)
        self.deaths: list[float] = []
        self.broken: str | None = None
        self.cond = threading.Condition(threading.Lock())
        self.inflight: deque[_Run] = deque()
        self.hold = False
        self.closing = False
        self.settling = threading.Lock()
        self.collector: threading.Thread | None = None
        self.kill_reason: str | None = None  # why the collector killed the worker
        # Items of the shard's staging ring that reached _run_batch (shipped, or settled
        # there): equal to the ring's tail index once nothing is between the two, which
        # is when a keyed item may be shipped directly (direct_ship).
        self.from_ring = 0
        # The core's steal gate of this shard is closed (see _ProcessRunner._regate).
        self.gated = False


class _Run:
    """One batch on its way through a worker: what is left to run (``payload``, with
    ``offsets`` mapping payload positions to batch indexes once items were taken out),
    and what came back."""

    __slots__ = (
        "batch",
        "error",
        "failures",
        "offsets",
        "payload",
        "reported",
        "sent",
        "seq",
        "start",
        "suspect",
        "t0",
        "tries",
        "value",
        "value_set",
        "values",
    )

    def __init__(
        self,
        batch: list[Any],
        failures: list[tuple[int, BaseException]],
        values: list[Any] | None,
    ) -> None:
        self.batch = batch
        self.payload = batch
        self.offsets: list[int] | None = None  # None: payload position == batch index
        self.start = 0  # payload[start:] has not run yet
        self.failures = failures
        self.values = values  # per-item values by batch index, when wanted
        self.value: Any = None  # a list handler's value, when wanted
        self.value_set = False
        self.error: BaseException | None = None  # the batch failed as a whole
        self.seq = 0  # the sequence number of the chunk in flight
        self.sent = 0  # its items: payload[start:start + sent]
        self.reported = 0  # len(failures) when it was sent
        self.tries: dict[int, int] = {}  # batch index -> runs that ended in a crash
        self.suspect = -1  # payload position to run alone next (after a crash), or -1
        self.t0 = time.monotonic_ns()

    def index(self, pos: int) -> int:
        return pos if self.offsets is None else self.offsets[pos]

    def drop(self, pos: int) -> None:
        """Take payload position ``pos`` out (it failed for good)."""
        if self.offsets is None:
            self.offsets = list(range(len(self.payload)))
        self.payload = self.payload[:pos] + self.payload[pos + 1 :]
        del self.offsets[pos]

    def drop_unpicklable(self, serializer: Serializer | None) -> bool:
        """Take out the items that do not pickle (or that the serializer's ``dumps``
        rejects), failing each with a ``TypeError``; False if every item passed alone."""
        payload, offsets = [], []
        for pos, item in enumerate(self.payload):
            try:
                if serializer is None:
                    pickle.dumps(item, 5)
                else:
                    pickle.dumps(serializer.dumps([item]), 5)
            except Exception as exc:
                verb, how = (
                    ("pickle", "")
                    if serializer is None
                    else ("encode", f" with serializer {wire._name(serializer.dumps)}")
                )
                self.failures.append(
                    (
                        self.index(pos),
                        TypeError(
                            f"backend='process' could not {verb} an item of type "
                            f"{type(item).__qualname__}{how} ({type(exc).__name__}: {exc})"
                        ),
                    )
                )
            else:
                payload.append(item)
                offsets.append(self.index(pos))
        dropped = len(payload) < len(self.payload)
        self.payload, self.offsets = payload, offsets
        return dropped


class _ProcessRunner(ShardRunner):
    shares_guards: ClassVar[bool] = False

    def __init__(self, backend: ProcessBackend, pool_name: str, workers: int) -> None:
        # typeshed's BaseContext lacks Process; every concrete context has it.
        self.ctx: Any = backend.mp_context
        self.pool_name = pool_name
        self.workers = workers
        self.ring_bytes = backend.ring_bytes
        self.spin_us = backend.spin_us
        self.ship_batch_size = backend.ship_batch_size
        self.max_attempts = backend.max_attempts
        self.task_timeout = backend.task_timeout
        self.max_crashes = backend.max_crashes
        self.crash_window = backend.crash_window
        self.start_timeout = backend.start_timeout
        self.max_tasks_per_child = backend.max_tasks_per_child
        self.window: int = DEFAULT_WINDOW if backend.window is None else backend.window
        self.serializer: Serializer | None = backend.serializer
        self.serializer_pickle = backend.serializer_pickle
        self._settle: Settle | None = None
        self.handler_pickle = b""
        self.per_item = True
        self.deliver: Deliver | None = None
        self.shards = [_Shard(i) for i in range(workers)]
        self.threads: list[threading.Thread] = []
        self.local = threading.local()
        self.joined = False
        self.join_lock = threading.RLock()
        self.ending: str | None = None  # set by end_workers(): no more recovery
        # The core's _count_direct, set by the pool when it enables direct_ship.
        self.count_direct: Callable[[int], None] | None = None
        # The core's _gate_steal, set by the pool when it steals (see _regate).
        self.gate_steal: Callable[[int, bool], None] | None = None

    # ------------------------------------------------------------ set-up (seam order)

    def batch_shape(
        self, batch_size: int, batch_timeout: float | None, lists: bool
    ) -> tuple[int, float | None, bool]:
        if batch_size == 1 and not lists:
            # One message per run of queued items; no waiting for more (batch_timeout None).
            return self.ship_batch_size, None, True
        return batch_size, batch_timeout, lists

    def wrap(self, handler: Handler, *, per_item: bool, deliver: Deliver | None = None) -> Handler:
        self.handler_pickle = _dumps_handler(handler)
        self.per_item = per_item
        self.deliver = deliver
        return self._run_batch

    def attach(self, settle: Settle) -> None:
        self._settle = settle

    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        if self.ctx.get_start_method() == "fork" and threading.active_count() > 1:
            raise ValueError(
                "backend='process' with a 'fork' mp_context while this process runs other "
                f"threads ({threading.active_count()}): a forked worker could inherit a lock "
                "held by one of them; use the default (forkserver) or 'spawn'"
            )
        # All workers first, started together (their start is the slow part), then each
        # one's handshake; a worker that fails it fails the constructor.
        for shard in self.shards:
            shard.worker = _Worker(self, shard.index)
        for shard in self.shards:
            worker = shard.worker
            assert worker is not None
            try:
                worker.await_ready(self, shard.index)
            except BaseException:
                shard.worker = None  # released by await_ready; the others by join()
                raise

        for shard in self.shards:
            shard.collector = threading.Thread(
                target=self._collect_guarded,
                args=(shard,),
                name=f"{self.pool_name}-collect-{shard.index}",
                daemon=True,
            )
            shard.collector.start()

        def serve(i: int) -> None:
            self.local.shard = self.shards[i]
            run_shard(i)

        try:
            self.threads = start_shard_threads(
                self.workers,
                serve,
                lambda i: f"{self.pool_name}-dispatch-{i}",
                starting,
                start_failed,
            )
        except BaseException as exc:
            self.threads = getattr(exc, "started", [])
            raise

    # ------------------------------------------------------------ the dispatch thread

    def _run_batch(self, batch: list[Any]) -> object:
        """Called by shard ``i``'s loop, in its dispatch thread: ship ``batch`` to the
        worker and return ``DEFERRED`` (its collector thread settles it); with a full
        window, first wait for the oldest batch in flight to be settled."""
        shard: _Shard = self.local.shard
        values = [None] * len(batch) if self.deliver is not None and self.per_item else None
        run = _Run(batch, [], values)
        failed = self._ship(shard, run)
        if failed is not None or not run.payload:
            # Nothing in flight for this batch: settle it here (its failures are known).
            if failed is not None:
                self._fail_unfinished(run, failed)
            self._settle_run(shard, run)
        with shard.cond:
            shard.from_ring += len(batch)  # after the ship: see direct_ship
        return DEFERRED

    # ------------------------------------------------------------ the direct ship

    def direct_ship(self, index: int, item: Any, tail: int) -> bool:
        """Ship ``item`` from the submitting thread (``PoolCore._set_direct``; only for
        per-item pools without driver guards): when shard ``index`` has nothing in flight
        and its staging ring is empty, waking its dispatch thread only for it to pickle
        one record costs a thread wake-up and a GIL hand-off per round trip (measured:
        a quarter to a third of an idle round trip on the 2-core VM). Returns True when
        the item is in flight (settled by the collector, as any batch), False to leave it
        to the ring path, which then handles it exactly as before.

        Contracts, and what keeps each:

        * one producer on the task ring: every ship (the dispatch thread's ``_ship``, this
          one) holds ``shard.cond``; recovery ships while ``hold`` is set, and this path
          refuses then (and with the worker gone, broken, ending or the pool closing:
          ``join`` sets ``closing`` under the same lock before it stops the worker);
        * per-key order: for a keyed pool the core passes the ring's tail index read
          before this call, and the item goes directly only if every item pushed before
          it reached ``_run_batch`` and was shipped (``from_ring``, counted after each
          ship): the dispatch thread holds none, so nothing of its key is left behind;
          items pushed later are shipped after it (the same lock, the same ring);
        * window accounting: only into an empty window (no batch in flight), as a run of
          one item with the next sequence number, so crash recovery charges it like any
          batch (the progress words name its seq);
        * exactness: nothing is written unless it fits at once (``timeout=0``); any
          failure (a full or closed ring, an item that does not pickle) leaves it to the
          ring path, which reports it as usual; the core counts the item as submitted
          (``_count_direct``) before the lock is released, so before the collector can
          settle it;
        * never blocks: a busy lock (the collector or the dispatch thread holds it) means
          the ring path."""
        shard = self.shards[index]
        count = self.count_direct
        if count is None or shard.inflight or not shard.cond.acquire(False):
            return False
        try:
            worker = shard.worker
            if (
                shard.inflight
                or shard.hold
                or shard.closing
                or worker is None
                or shard.broken is not None
                or self.ending is not None
                or (tail != _UNKEYED and tail != shard.from_ring)
            ):
                return False
            seq = shard.seq + 1
            run = _Run([item], [], [None] if self.deliver is not None else None)
            try:
                worker.tasks.put(self._encode(seq, run.payload), timeout=0)
            except Exception:
                return False  # nothing was written: the ring path reports what it is
            shard.seq = seq
            run.seq = seq
            run.sent = 1
            shard.inflight.append(run)
            count(index)
            return True
        finally:
            shard.cond.release()

    def _regate(self, shard: _Shard) -> None:
        """Under ``shard.cond``, after the window changed: in a stealing pool, let the
        shard's dispatch thread steal only while its worker runs low (at most one batch
        in flight), as a thread worker steals only when idle. With more in flight the
        dispatch thread's loop finds its own ring empty as soon as it shipped, and what it
        stole would wait behind its worker's queued batches, out of reach of other
        thieves, while the victim's worker runs dry (``_sched.h``, "Gated thieves").
        The core is told only on a change: closing costs a store, opening also a notify
        (the dispatch thread may sleep on its own ring: it is woken to steal)."""
        gate = self.gate_steal
        if gate is not None and shard.gated != (len(shard.inflight) > 1):
            shard.gated = not shard.gated
            gate(shard.index, shard.gated)

    def _encode(self, seq: int, items: list[Any]) -> bytes:
        """Batch ``seq``'s task record (``_process_worker`` has the protocol): pickled, or
        with a serializer, its ``dumps`` of the list inside. Raises what they raise."""
        serializer = self.serializer
        if serializer is None:
            return pickle.dumps((seq, items), 5)
        return pickle.dumps((seq, serializer.dumps(items), len(items)), 5)

    def _ship(self, shard: _Shard, run: _Run) -> BaseException | None:
        """Put ``run`` in the shard's window (the task ring), in order; returns the error
        that failed it as a whole instead, if any. Items that do not pickle (or that the
        serializer rejects) are failed alone and left out (the rest is shipped).

        The batch is encoded before the shard's lock is taken: pickling a big batch takes
        a while, and the collector needs the lock to settle each batch that comes back
        (and the ``on_results`` it calls) meanwhile. The record carries the sequence
        number it expects to get; if another ship took numbers in between (a recovery by
        the collector while ``hold`` is set, or ``direct_ship`` of an unkeyed pool), the
        batch is encoded again."""
        data = b""
        seq = -1
        while True:
            if seq != shard.seq + 1:  # a hint read without the lock; checked under it
                seq = shard.seq + 1
                try:
                    data = self._encode(seq, run.payload)
                except Exception as exc:
                    # Slow path, rare: find the items that do not encode; they fail alone.
                    if not run.drop_unpicklable(self.serializer):
                        return TypeError(
                            f"backend='process' could not send a batch of {len(run.payload)} "
                            f"item(s), though each one encodes alone ({type(exc).__name__}: "
                            f"{exc})"
                        )
                    if not self.per_item and run.failures:
                        return run.failures[0][1]
                    if not run.payload:
                        return None
                    seq = -1
                    continue
            with shard.cond:
                while True:
                    if self.ending is not None:
                        return WorkerLost(
                            f"{self.pool_name} shard {shard.index}: the worker processes "
                            f"were ended by {self.ending}() before this batch could be sent",
                            pid=-1,
                            exitcode=None,
                            attempts=0,
                        )
                    if shard.broken is not None:
                        return ShardBroken(shard.broken)
                    if shard.hold or shard.worker is None:
                        shard.cond.wait()
                        continue
                    if len(shard.inflight) >= self.window:
                        # Full: wait until half of it is free (the collector notifies then).
                        while (
                            len(shard.inflight) > self.window // 2
                            and not shard.hold
                            and self.ending is None
                        ):
                            shard.cond.wait()
                        continue
                    if shard.seq + 1 != seq:
                        break  # a recovery took sequence numbers: encode again, unlocked
                    try:
                        shard.worker.tasks.put(data, timeout=_SLICE)
                    except (RingTimeout, PeerDead):
                        # The task ring is full (or its reader died: the collector will
                        # see it): let the collector take the lock meanwhile, then retry.
                        shard.cond.wait(_SLICE)
                        continue
                    except RingError as exc:  # e.g. RecordTooLarge: nothing was written
                        return exc
                    shard.seq = seq
                    run.seq = seq
                    run.sent = len(run.payload)
                    run.reported = len(run.failures)
                    run.t0 = time.monotonic_ns()
                    shard.inflight.append(run)
                    self._regate(shard)
                    return None

    # ------------------------------------------------------------ the collector thread

    def _collect_guarded(self, shard: _Shard) -> None:
        """``_collect``; if it fails (a bug, or an error escaping a callback), the shard is
        marked broken and what it had in flight is failed, so that nothing waits forever
        (flush, join) for batches nobody collects."""
        try:
            self._collect(shard)
        except BaseException as exc:
            with shard.cond:
                shard.broken = (
                    f"{self.pool_name} shard {shard.index}: its collector thread failed "
                    f"({type(exc).__name__}: {exc}); the shard takes no more items"
                )
                runs = list(shard.inflight)
            for run in runs:
                try:
                    self._fail_unfinished(run, ShardBroken(shard.broken))
                    self._settle_run(shard, run)
                except BaseException:  # pragma: no cover - already failing; keep going
                    pass
            with shard.cond:
                shard.inflight.clear()
                self._regate(shard)
                shard.hold = False
                shard.cond.notify_all()
            raise

    def _collect(self, shard: _Shard) -> None:
        """Shard ``shard``'s collector thread: the only reader of the worker's result
        ring. Settles each batch when its DONE record comes back, in order; replaces the
        worker when it dies (re-running what the crash interrupted, then every later
        batch in flight, in order, before anything new is shipped), when it overruns
        ``task_timeout`` and when it reached ``max_tasks_per_child``."""
        tracked: _Run | None = None
        seen_index: tuple[int, int] = (-3, -1)
        overrun_at = 0.0
        # With nothing in flight the collector still waits on the result ring, not on
        # shard.cond: the worker's DONE record then wakes it directly (one futex wake-up)
        # instead of a notify from the dispatch thread at every ship into an empty window
        # (a second thread wake-up per round trip, and a GIL hand-off). The long wait
        # parks in slices of _IDLE_CHECK (the ring's check_interval, set in _Worker), so
        # an idle pool costs one wake-up per second per shard, in which the ring checks
        # the worker's sentinel (a death between batches is PeerDead, below). A batch
        # shipped during that wait is picked up when its DONE comes; with task_timeout
        # the wait is shorter, so that an overrun is noticed in time.
        idle_wait = _IDLE_CHECK
        if self.task_timeout is not None:
            idle_wait = min(_IDLE_CHECK, max(_SLICE, self.task_timeout / 2))
        while True:
            worker = shard.worker
            if worker is None:  # broken: nothing more comes back
                with shard.cond:
                    while not shard.closing:
                        shard.cond.wait()
                return
            with shard.cond:
                idle = not shard.inflight
            try:
                msg = worker.results.get(timeout=idle_wait if idle else _SLICE)
            except RingTimeout:
                with shard.cond:
                    head = shard.inflight[0] if shard.inflight else None
                if head is not None and self.task_timeout is not None:
                    now = time.monotonic()
                    index = (worker.mark[0], worker.mark[1])
                    if head is not tracked or index != seen_index:
                        # A new batch or a new item started: its own deadline.
                        tracked, seen_index = head, index
                        overrun_at = now + self.task_timeout
                    elif now >= overrun_at:
                        shard.kill_reason = (
                            f"overran task_timeout={self.task_timeout} s and was killed"
                        )
                        worker.kill()  # the next get() reports PeerDead
                continue
            except RingClosed:  # PeerDead included: every record it sent was read
                if shard.closing and worker.results.reader_closed:
                    return  # join() closed the ring once nothing was in flight
                if self.ending is not None:
                    self._abandon(shard, worker)
                    continue
                self._recover(shard, worker)
                tracked = None
                continue
            mseq, kind, *rest = msg
            with shard.cond:
                head = shard.inflight[0] if shard.inflight else None
            if head is None or mseq != head.seq:  # pragma: no cover - a stale record
                continue
            if kind == wire.FAILED:
                self._failed(head, rest[0], rest[1])
                continue
            if kind != wire.DONE:  # pragma: no cover - not sent after READY
                continue
            self._done(head, rest)
            head.start += head.sent
            self._settle_run(shard, head)
            with shard.cond:
                shard.inflight.popleft()
                self._regate(shard)
                # A dispatch thread that found the window full waits until half of it
                # is free (wait_settled and join until it is empty): one wake-up per
                # window/2 batches instead of one per batch.
                if len(shard.inflight) <= self.window // 2:
                    shard.cond.notify_all()
            if self.max_tasks_per_child is not None:
                shard.handled += head.sent
                if shard.handled >= self.max_tasks_per_child:
                    self._recycle(shard)

    def _failed(self, run: _Run, index: int, raised: BaseException) -> None:
        """A FAILED record of ``run``'s chunk in flight."""
        if index < 0:
            self._fail_chunk(run, raised)
        else:
            run.failures.append((run.index(run.start + index), raised))

    def _fail_chunk(self, run: _Run, exc: BaseException) -> None:
        """The chunk in flight failed as a whole: a list handler raised (the batch fails),
        or, for a per-item handler, its items could not be decoded or their values not
        sent back: each item of the chunk fails alone (routed one by one, as handler
        failures are), except those already reported failed."""
        if not self.per_item:
            run.error = exc
            return
        already = {index for index, _ in run.failures[run.reported :]}
        for k in range(run.sent):
            index = run.index(run.start + k)
            if index not in already:
                run.failures.append((index, exc))

    def _done(self, run: _Run, rest: list[Any]) -> None:
        """The DONE record of ``run``'s chunk in flight: keep the values it carries."""
        got = rest[1] if len(rest) > 1 else None
        if got is not None and self.serializer is not None:
            try:
                got = self.serializer.loads(got)
            except Exception as exc:
                # The values cannot be had: the chunk fails as a whole (its items ran).
                error = RuntimeError(
                    f"serializer=: could not decode the values of {run.sent} item(s) with "
                    f"{wire._name(self.serializer.loads)} ({type(exc).__name__}: {exc})"
                )
                error.__cause__ = exc
                self._fail_chunk(run, error)
                return
            if run.values is not None and type(got) is not list:
                got = list(got) if isinstance(got, tuple) else got
            if run.values is not None and (not isinstance(got, list) or len(got) != run.sent):
                self._fail_chunk(
                    run,
                    RuntimeError(
                        f"serializer=: the values of {run.sent} item(s) decoded into a "
                        f"{type(got).__qualname__} of another length; the pair must "
                        "round-trip a list"
                    ),
                )
                return
        if run.values is not None and got is not None:
            if run.offsets is None and run.start + len(got) <= len(run.values):
                # Payload position == batch index: one slice store, not a call per item.
                run.values[run.start : run.start + len(got)] = got
            else:
                for k, value in enumerate(got):
                    run.values[run.index(run.start + k)] = value
        elif self.deliver is not None and not self.per_item and run.error is None:
            run.value = got
            run.value_set = True

    def _fail_unfinished(self, run: _Run, exc: BaseException) -> None:
        """Fail what did not run of ``run`` with ``exc``: item by item for a per-item
        handler (each routed alone, as handler failures are), the batch otherwise."""
        if run.start >= len(run.payload) or run.error is not None:
            return
        if self.per_item:
            run.failures.extend((run.index(pos), exc) for pos in range(run.start, len(run.payload)))
        else:
            run.error = exc
        run.start = len(run.payload)

    def _settle_run(self, shard: _Shard, run: _Run) -> None:
        """Deliver ``run``'s values (``on_results``), then report its outcome to the core."""
        failures = run.failures
        outcome: object = None
        if run.error is not None:
            outcome = run.error
        elif failures and not self.per_item:
            outcome = failures[0][1]
        else:
            try:
                if self.deliver is not None:
                    if self.per_item:
                        assert run.values is not None
                        deliver_values(self.deliver, run.batch, run.values, failures)
                    elif run.value_set:
                        self.deliver(run.batch, run.value)
                outcome = BatchOutcome(failures) if failures else None
            except BaseException as exc:  # on_results raised: the batch fails as a whole
                outcome = exc
        assert self._settle is not None
        with shard.settling:
            self._settle(shard.index, run.batch, outcome, time.monotonic_ns() - run.t0)

    def _recover(self, shard: _Shard, worker: _Worker) -> None:
        """The worker died (or was killed): replace it, then run what the crash
        interrupted and every later batch in flight, in order, each to its end (settled),
        with nothing new shipped meanwhile."""
        with shard.cond:
            shard.hold = True
            runs = list(shard.inflight)
        try:
            reason = shard.kill_reason or self._how(worker)
            shard.kill_reason = None
            at, at_seq = int(worker.mark[0]), int(worker.mark[1])
            if not runs:
                # It died between batches: nothing to re-run, but it counts as a death.
                self._replace(shard)
            else:
                self._after_crash(shard, runs[0], at, at_seq, reason)
            for run in runs:
                self._drive(shard, run)
                self._settle_run(shard, run)
                with shard.cond:
                    shard.inflight.popleft()
                    self._regate(shard)
                    shard.cond.notify_all()
        finally:
            with shard.cond:
                shard.hold = False
                shard.cond.notify_all()

    def end_workers(self, sig: int, what: str) -> None:
        """``terminate_workers()`` / ``kill_workers()``: send ``sig`` to every worker now,
        with no replacement; the collectors fail what was in flight (``_abandon``)."""
        self.ending = what
        for shard in self.shards:
            with shard.cond:
                worker = shard.worker
                shard.cond.notify_all()  # a dispatch thread waiting for room gives up
            if worker is not None and worker.process.is_alive():
                try:
                    os.kill(worker.pid, sig)  # this pool's own worker, by pid
                except ProcessLookupError:
                    pass

    def _abandon(self, shard: _Shard, worker: _Worker) -> None:
        """After ``end_workers``: the worker is gone and is not replaced. What ran of the
        head batch (the progress words; without values wanted) counts as run; every other
        item in flight fails with ``WorkerLost`` (``attempts`` 0: it is not a crash)."""
        with shard.cond:
            shard.hold = True
            runs = list(shard.inflight)
        try:
            at, at_seq = int(worker.mark[0]), int(worker.mark[1])
            with shard.cond:
                shard.worker = None  # first: worker_pids() never lists a pid already reaped
            worker.kill()
            pid, exitcode = worker.pid, worker.process.exitcode
            worker.release()
            for k, run in enumerate(runs):
                if k == 0 and at_seq == run.seq and self.deliver is None:
                    if at == -2:
                        run.start += run.sent  # every item ran; only DONE was lost
                    elif self.per_item and 0 <= at < run.sent:
                        run.start += at  # those before it ran (failures came back)
                lost = WorkerLost(
                    f"{self.pool_name} shard {shard.index}: the worker process (pid "
                    f"{pid}, {_describe_exit(exitcode)}) was ended by {self.ending}() "
                    "before this item finished",
                    pid=pid,
                    exitcode=exitcode,
                    attempts=0,
                )
                self._fail_unfinished(run, lost)
                self._settle_run(shard, run)
                with shard.cond:
                    shard.inflight.popleft()
                    self._regate(shard)
                    shard.cond.notify_all()
        finally:
            with shard.cond:
                shard.hold = False
                shard.cond.notify_all()

    def _recycle(self, shard: _Shard) -> None:
        """``max_tasks_per_child``: once nothing is in flight, replace the worker with a
        clean stop (not a crash); nothing is shipped meanwhile."""
        with shard.cond:
            if shard.inflight:
                # Later batches are in the old worker's ring: stop shipping and recycle
                # once they are back (checked again after each of them).
                shard.hold = True
                return
            shard.hold = True
        try:
            old = shard.worker
            assert old is not None
            shard.handled = 0
            with shard.cond:
                shard.worker = None
            old.stop(_JOIN_TIMEOUT)
            try:
                fresh = _Worker(self, shard.index)
                fresh.await_ready(self, shard.index)
            except RuntimeError as exc:
                with shard.cond:
                    shard.worker = None
                    shard.broken = f"{exc}; the shard takes no more items"
            else:
                with shard.cond:
                    shard.worker = fresh
        finally:
            with shard.cond:
                shard.hold = False
                shard.cond.notify_all()

    # ------------------------------------------------------------ crash recovery

    def _after_crash(self, shard: _Shard, run: _Run, at: int, at_seq: int, reason: str) -> None:
        """The worker died while ``run``'s chunk in flight was its next or current batch;
        the progress words said item ``at`` of batch ``at_seq`` (see ``_process_worker``).
        Replace the worker and set ``run`` up for ``_drive``: if nothing of the chunk
        started, it runs again as it is (nobody is blamed); if every item ran, only the
        DONE record was lost (with values wanted the chunk runs again for them);
        otherwise the items before the suspect ran (with values wanted, they run again:
        their values died with the worker), the suspect runs alone next, or fails with
        ``WorkerLost`` after ``max_attempts``."""
        pid, exitcode = self._replace(shard)
        if at_seq != run.seq or at == -1 or at >= run.sent:
            del run.failures[run.reported :]  # none came back for a chunk that never ran
            return
        if at == -2:
            if self.deliver is not None:
                del run.failures[run.reported :]  # it runs again: re-reported
            else:
                run.start += run.sent  # done: its failures came back before the DONE
            return
        pos = run.start + at
        if self.deliver is not None and self.per_item:
            del run.failures[run.reported :]  # the items before pos run again: re-reported
        else:
            run.start = pos  # those before the suspect ran (failures came back)
        index = run.index(pos)
        run.tries[index] = attempts = run.tries.get(index, 0) + 1
        run.suspect = pos
        if attempts >= self.max_attempts:
            lost = WorkerLost(
                f"{self.pool_name} shard {shard.index}: the worker process (pid "
                f"{pid}) {reason} while handling this item, {attempts} "
                "time(s); given up",
                pid=pid,
                exitcode=exitcode,
                attempts=attempts,
            )
            if not self.per_item:
                run.error = lost
                run.start = len(run.payload)
                return
            run.failures.append((index, lost))
            run.drop(pos)
            run.suspect = -1

    def _drive(self, shard: _Shard, run: _Run) -> None:
        """Run what is left of ``run`` in the (replacement) worker, one chunk at a time,
        waiting for each (the collector thread, during recovery), through further
        crashes."""
        while run.start < len(run.payload) and run.error is None:
            start = run.start
            if shard.broken is not None:
                for pos in range(start, len(run.payload)):
                    run.failures.append((run.index(pos), ShardBroken(shard.broken)))
                break
            # After a crash the suspect runs alone; with values wanted, the items before it
            # first (their values died with the worker). Otherwise everything left at once.
            suspect = run.suspect
            if suspect == start and self.per_item:
                chunk = run.payload[start : start + 1]
            elif start < suspect:
                chunk = run.payload[start:suspect]
            else:
                chunk = run.payload if start == 0 else run.payload[start:]
            run.reported = len(run.failures)
            try:
                self._send(shard, chunk, run)
                run.start += len(chunk)
                if run.start > run.suspect:
                    run.suspect = -1
            except _Unpicklable as why:  # pragma: no cover - the payload was checked when shipped
                if not run.drop_unpicklable(self.serializer):
                    self._fail_unfinished(
                        run, TypeError(f"could not send the batch: {why.__cause__}")
                    )
                    return
                if not self.per_item and run.failures:
                    return
            except _Crash as crash:
                worker = shard.worker
                assert worker is not None
                at, at_seq = int(worker.mark[0]), int(worker.mark[1])
                self._after_crash(shard, run, at, at_seq, crash.reason)

    def _send(self, shard: _Shard, items: list[Any], run: _Run) -> None:
        """Run ``items`` (``run.payload[run.start:run.start + len(items)]``) in the worker
        and wait for them (recovery only: nothing else is in flight); failures and values
        are recorded by batch index. Raises _Crash if the worker dies meanwhile."""
        worker = shard.worker
        assert worker is not None
        shard.seq += 1
        seq = shard.seq
        run.seq = seq
        run.sent = len(items)
        try:
            data = self._encode(seq, items)
        except Exception as exc:  # nothing was written
            raise _Unpicklable() from exc
        try:
            worker.tasks.put(data)
        except PeerDead:
            raise _Crash(self._how(worker)) from None
        overrun_at = None if self.task_timeout is None else time.monotonic() + self.task_timeout
        seen_index = -2
        while True:
            try:
                msg = worker.results.get(timeout=_SLICE)
            except RingTimeout:
                if overrun_at is not None:
                    now = time.monotonic()
                    index = worker.mark[0]
                    if index != seen_index:  # a new item started: its own deadline
                        seen_index = index
                        overrun_at = now + self.task_timeout  # type: ignore[operator]
                    elif now >= overrun_at:
                        worker.kill()
                        raise _Crash(
                            f"overran task_timeout={self.task_timeout} s and was killed"
                        ) from None
                continue
            except PeerDead:
                raise _Crash(self._how(worker)) from None
            mseq, kind, *rest = msg
            if mseq != seq:  # pragma: no cover - a stale record
                continue
            if kind == wire.FAILED:
                self._failed(run, rest[0], rest[1])
            elif kind == wire.DONE:
                self._done(run, rest)
                return

    def _how(self, worker: _Worker) -> str:
        worker.process.join(1.0)
        return _describe_exit(worker.process.exitcode)

    def _replace(self, shard: _Shard) -> tuple[int, int | None]:
        """Start a fresh worker (new rings) after a death; returns the dead one's pid and
        exit code. Marks the shard broken after too many deaths in the window."""
        old = shard.worker
        assert old is not None
        with shard.cond:
            shard.worker = None  # first: worker_pids() never lists a pid already reaped
        old.kill()
        pid, exitcode = old.pid, old.process.exitcode
        old.release()
        shard.handled = 0
        fresh: _Worker | None = None
        broken: str | None = None
        now = time.monotonic()
        shard.deaths = [t for t in shard.deaths if now - t < self.crash_window] + [now]
        if self.ending is not None:
            broken = f"{self.pool_name} shard {shard.index}: workers ended by {self.ending}()"
        elif len(shard.deaths) >= self.max_crashes:
            broken = (
                f"{self.pool_name} shard {shard.index}: its worker process died "
                f"{len(shard.deaths)} times within {self.crash_window} s (last: pid {pid}, "
                f"{_describe_exit(exitcode)}); the shard takes no more items"
            )
        else:
            try:
                fresh = _Worker(self, shard.index)
                fresh.await_ready(self, shard.index)
            except RuntimeError as exc:
                fresh = None
                broken = f"{exc}; the shard takes no more items"
        with shard.cond:
            shard.worker = fresh
            if broken is not None:
                shard.broken = broken
            shard.cond.notify_all()
        return pid, exitcode

    # ------------------------------------------------------------ teardown

    def wait_settled(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for shard in self.shards:
            with shard.cond:
                while shard.inflight:
                    if deadline is None:
                        shard.cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    shard.cond.wait(left)
        return True

    def join(self) -> None:
        # One join at a time, and a second caller waits for the first to finish (the exit
        # drain and an executor's finalizer thread may both join): returning early would
        # let multiprocessing's exit hook terminate workers with batches in flight.
        with self.join_lock:
            if self.joined:
                return
            self.joined = True
            self._join()

    def _join(self) -> None:
        for t in self.threads:
            t.join()
        # The shard loops are done: let each collector settle what is in flight, then
        # close its ring (it returns) and stop the worker.
        for shard in self.shards:
            with shard.cond:
                shard.closing = True
                shard.cond.notify_all()
                while shard.inflight or shard.hold:
                    shard.cond.wait()
                worker = shard.worker
                if worker is not None:
                    worker.results.close_peer()  # the collector's get() returns
            if shard.collector is not None:
                shard.collector.join()
            if shard.worker is not None:
                shard.worker.stop(_JOIN_TIMEOUT)
                shard.worker = None

    def after_fork_in_child(self) -> None:
        # The dispatch threads do not exist here and the workers belong to the parent.
        self.threads = []
        self.shards = []
        self.joined = True

    def describe(self) -> str:
        return f"process({self.ctx.get_start_method()})"

    def worker_pids(self) -> list[int]:
        """The pids of the workers (any thread may call it, also during a restart); one of
        them may have just died, its replacement not started yet."""
        pids = []
        for shard in self.shards:
            with shard.cond:
                worker = shard.worker
                if worker is not None:
                    pids.append(worker.pid)
        return pids


class ProcessBackend(Backend):
    """Shards run their handler in worker processes (one per shard) fed through
    shared-memory rings; see the module documentation for what differs from threads.

    Args:
        mp_context: a ``multiprocessing`` context (as ``ProcessPoolExecutor`` takes);
            default ``forkserver`` where available, else ``spawn``.
        ship_batch_size: with a per-item handler, the most items one message carries.
        ring_bytes: size of each shard's task and result ring; a batch that pickles to
            more than this fails (``RecordTooLarge``).
        max_attempts: runs of an item whose worker keeps dying before it fails with
            ``WorkerLost`` (1: never retried).
        task_timeout: seconds one item (a batch, for batch handlers) may run; a worker
            that overruns it is killed and the item treated as a crash. None: no limit.
        max_crashes, crash_window: a shard whose worker dies ``max_crashes`` times within
            ``crash_window`` seconds is marked broken (``ShardBroken``).
        start_timeout: seconds a new worker gets to load the handler; a worker that fails
            to start makes the pool's constructor raise ``RuntimeError``.
        max_tasks_per_child: replace a worker once it handled this many items (checked
            between batches: against memory growth in the handler). None: never.
        window: batches in flight per shard (shipped, outcome not yet back). More than
            one lets the parent pickle and ship the next batches while the worker runs
            one, so that the worker does not wait for the parent; a full window is
            refilled once half of it came back (fewer thread wake-ups). Each shard holds
            at most ``window`` batches beyond its ring (and its task ring at most
            ``ring_bytes`` of them). 1: one batch at a time. None (the default):
            ``DEFAULT_WINDOW`` (8) for pools; 4 for an ``Executor``, whose calls in
            flight can no longer be cancelled (up to ``window`` x ``ship_batch_size``
            per worker). In a stealing pool a shard's dispatch thread steals only while
            at most one batch is in flight: deeper windows do not unbalance the workers.
        serializer: None (pickle, the default) or a ``Serializer(dumps, loads)`` (a
            ``(dumps, loads)`` tuple, or an object with ``dumps``/``loads`` such as the
            ``orjson`` or ``marshal`` module): encodes the items of each shipped batch,
            as one list per batch, and the values sent back for ``on_results``. For
            records of plain data (dicts, lists, str, numbers) a C encoder such as
            msgspec or orjson is faster than pickle. It carries only what it can encode:
            an item it rejects fails alone at shipping (``TypeError``, counted and
            routed like an unpicklable item), a value it rejects fails its item; what
            it changes on the way (a tuple that comes back as a list, int keys as str
            with JSON) the handler and ``on_results`` see changed. Exceptions, the
            handler and the control records still travel by pickle. Checked here:
            callables, ``loads(dumps([]))`` gives an empty list, and the pair can be
            sent to the workers (``TypeError`` otherwise).
        spin_us: how long (microseconds, 0 to 10,000) a worker waiting for its next
            batch, and a collector thread waiting for a result, busy-poll their ring
            (without the GIL) before they park on its futex. Adaptive below that: a wait
            whose poll found nothing halves the next ones, down to none (``_shmring.h``),
            so an idle pool parks at once and costs no CPU; 0 parks at once always.
            Default 20, the ring's own. Longer polls buy no latency on a busy machine:
            on the shared 2-core VM, 0, 20 and 200 us gave the same idle round trip and
            the same throughput within noise (``benchmarks/README.md``), because a
            poll only helps when the next batch comes within it and a CPU is free for
            the poller.

    Example (a module-level handler; a pool of 2 worker processes)::

        pool = shardflow.ShardedPool(mymodule.handle, workers=2, backend="process")
    """

    name: ClassVar[str] = "process"

    def __init__(
        self,
        *,
        mp_context: multiprocessing.context.BaseContext | None = None,
        ship_batch_size: int = 256,
        ring_bytes: int = 8 << 20,
        max_attempts: int = 3,
        task_timeout: float | None = None,
        max_crashes: int = 10,
        crash_window: float = 10.0,
        start_timeout: float = 60.0,
        max_tasks_per_child: int | None = None,
        window: int | None = None,
        serializer: Serializer | tuple[Callable[[Any], Any], Callable[[Any], Any]] | Any = None,
        spin_us: float = DEFAULT_SPIN_US,
    ) -> None:
        from shardflow._validate import check_int, check_seconds

        if mp_context is None:
            method = (
                "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            )
            mp_context = multiprocessing.get_context(method)
        elif not isinstance(mp_context, multiprocessing.context.BaseContext):
            raise TypeError(
                "mp_context must be a multiprocessing context (multiprocessing."
                f"get_context('spawn'|'forkserver'|'fork')), got {mp_context!r}"
            )
        check_int("ship_batch_size", ship_batch_size, lo=1, hi=1 << 20)
        check_int("ring_bytes", ring_bytes, lo=1 << 16, hi=1 << 34)
        check_int("max_attempts", max_attempts, lo=1, hi=1000)
        check_seconds("task_timeout", task_timeout)
        check_int("max_crashes", max_crashes, lo=1, hi=1 << 20)
        check_seconds("crash_window", crash_window)
        check_seconds("start_timeout", start_timeout)
        if max_tasks_per_child is not None:
            check_int("max_tasks_per_child", max_tasks_per_child, lo=1, hi=1 << 62)
        if window is not None:
            check_int("window", window, lo=1, hi=1 << 10)
        if isinstance(spin_us, bool) or not isinstance(spin_us, (int, float)):
            raise TypeError(
                f"spin_us must be a number of microseconds in [0, {_MAX_SPIN_US}], "
                f"got {type(spin_us).__name__}"
            )
        if not 0 <= spin_us <= _MAX_SPIN_US:  # NaN fails too
            raise ValueError(
                f"spin_us must be a number of microseconds in [0, {_MAX_SPIN_US}], got {spin_us!r}"
            )
        made = _make_serializer(serializer)
        self.mp_context = mp_context
        self.ship_batch_size = ship_batch_size
        self.ring_bytes = ring_bytes
        self.max_attempts = max_attempts
        self.task_timeout = task_timeout
        self.max_crashes = max_crashes
        self.crash_window = crash_window
        self.start_timeout = start_timeout
        self.max_tasks_per_child = max_tasks_per_child
        self.window = window
        self.spin_us = spin_us
        #: The ``Serializer`` of items and values, or None (pickle).
        self.serializer: Serializer | None = None if made is None else made[0]
        self.serializer_pickle = b"" if made is None else made[1]

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        return _ProcessRunner(self, pool_name, workers)

    def __repr__(self) -> str:
        return (
            f"ProcessBackend(start_method={self.mp_context.get_start_method()!r}, "
            f"max_attempts={self.max_attempts}, task_timeout={self.task_timeout}"
            + ("" if self.spin_us == DEFAULT_SPIN_US else f", spin_us={self.spin_us:g}")
            + ("" if self.serializer is None else f", serializer={self.serializer!r}")
            + ")"
        )


def _drain_at_exit() -> None:
    """Interpreter exit with live process pools: hand every queued item over (as threads
    do), then stop the workers, all before ``multiprocessing``'s own exit hook runs, which
    would terminate the (daemonic) workers and the forkserver under the pools' feet.
    atexit runs hooks last-registered-first, and this one is registered after
    ``multiprocessing.util`` registered its own (imported above for that reason: it is
    otherwise imported only when the first process starts)."""
    from shardflow import pool as pool_module

    pool_module._at_exit()
    for pool in list(pool_module._live):
        runner = getattr(pool, "_runner", None)
        if _runs_processes(runner) and pool._exit_wait:
            runner.join()  # type: ignore[union-attr]


def _runs_processes(runner: object) -> bool:
    """Is ``runner`` a process runner, or a runner around one (``Executor(backend=
    "process")``'s ``_Shipper``, whose ``inner`` is the backend's runner)?"""
    for _ in range(8):  # wrappers do not nest deeply; never loop on a cycle
        if isinstance(runner, _ProcessRunner):
            return True
        runner = vars(runner).get("inner") if hasattr(runner, "__dict__") else None
        if runner is None:
            return False
    return False


atexit.register(_drain_at_exit)
