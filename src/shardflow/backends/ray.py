"""``RayBackend``: every shard runs in a Ray actor; the pool's core stays in the driver.

Install with ``pip install 'shardflow[ray]'``. ``import shardflow`` never imports Ray:
this module imports it when a pool on a ``RayBackend`` starts.

What runs where:

* **Driver** (the process that made the pool): routing, per-key order, the bounded
  rings and backpressure (``on_full``), size-or-time batching, dead letters, ``on_error``
  and the accounting, all in the compiled core, exactly as with threads. One thread per
  shard ships the shard's batches to its actor, one actor call per batch, keeping up to
  ``window`` batches in flight (default 4: the actor always has the next batches queued
  while the driver reads replies). With a full window the shard's thread waits once for
  the oldest half of it and settles those batches, oldest first (one wake-up per two
  batches by default); a collector thread per shard settles what an idle shard left.
  Outcomes go to the core with ``DEFERRED`` and ``settle`` (``shardflow.backends.base``).
  A full window blocks the shard's thread, so the ring fills and ``submit`` blocks,
  raises or drops as with threads.
  A call crosses as one bytes payload, pickled in the driver with Ray's cloudpickle
  (lambdas, classes registered by value and serializers registered with Ray work as
  usual), and the reply comes back pickled by the actor: Ray's own serializer costs
  about a third of the driver's CPU per call. A batch that holds Ray references
  (``ObjectRef``, actor handles: Ray must track them) or out-of-band buffers (numpy
  arrays, which Ray moves without a copy) is handed to Ray's serializer as it is.
* **Actor** (one per shard; synchronous, single-threaded, ``max_concurrency=1``):
  calls the handler, per item for a per-item handler (the batch is cut by the driver:
  ``batch_size`` items, ``RayBackend(batch_size=...)`` for per-item pools) or once with
  the list for a batch handler. Per-item errors come back structured (index, exception,
  remote traceback), so one bad item never fails its batch; each failed item then goes
  to the dead letter / ``on_error`` alone, in the driver, with its original item.

Failures: Ray's own task retries are off (``max_task_retries=0``, ``max_restarts=0``),
because Ray re-runs retried calls out of order. Each batch carries a sequence number per
shard. When the actor dies (killed, crashed, its node lost), the driver replaces it with
a new actor and re-sends every unacknowledged batch of the shard (at most ``window``),
in sequence order, before any later batch, so per-key order is kept. **The batch that
was running when the actor died may run twice** (delivery is at-least-once for side
effects): its items may have been handled, in part or in full, by the dead actor before
the new one runs them again (batches queued behind it on the dead actor had not
started). Handlers with side effects can make them idempotent with ``current_batch()``,
which gives, inside the handler, the batch's id (stable across re-sends) and its attempt
number. Accounting is exact: a batch is counted once, when its reply arrives, whatever
the attempts. A batch that cannot be delivered within ``restart_timeout`` seconds (no
actor can be started) fails as a whole with ``ShardLost`` (dead letter / ``on_error``),
so nothing is lost silently and nothing hangs.

Shut pools down (``shutdown()``, ``with``): that waits for the batches in flight. At
interpreter exit, a pool that was not shut down is drained into its actors but the
replies of its last batches are not waited for (Ray shuts down at exit too).

Metrics: ``pool.metrics()`` is the same as with threads: a batch's ``service_time`` is
the time its handler ran on the actor (measured there and sent back with the reply), so
the percentiles describe the handler, not Ray; ``RayBackend`` runners' ``stats()`` give
re-sends and replaced actors.

``ShardedPool``, ``BatchProcessor``, ``Pipeline`` stages and ``Executor`` take
``backend=RayBackend(...)`` (an ``Executor``'s futures are completed in this process, see
``shardflow._remote_executor``). Between consecutive pipeline stages on Ray, outputs go
actor to actor as object references: a call may answer with several objects (the reply,
then the outputs cut per shard of the next stage, owned by the driver), and a batch may
hold ``RefToken`` items, sent as call arguments and resolved on the actor (see "object
references" below and ``Pipeline(object_refs=)``); elsewhere a stage's outputs come back
to the driver, which hands them to the next stage.

The handler is sent to each actor once, when it starts (cloudpickle). A ``breaker``,
``limiter`` or ``rate_limiter`` stays in the driver, around the shipping of batches, one
state for all actors (``backends/_guards.py``); ``retry`` is refused (retried in the
driver, an item would run after later items of its key).
"""

from __future__ import annotations

import copy
import importlib
import io
import logging
import os
import pickle
import secrets
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import length_hint
from typing import Any, ClassVar

from shardflow._validate import check_bool, check_int, check_seconds
from shardflow.backends.base import (
    DEFERRED,
    Backend,
    BatchOutcome,
    Deliver,
    Handler,
    ShardRunner,
    deliver_values,
    start_shard_threads,
)

__all__ = [
    "BatchInfo",
    "Forwarded",
    "Parted",
    "RayBackend",
    "RefToken",
    "RemoteError",
    "RemoteTraceback",
    "ShardLost",
    "current_batch",
]

_log = logging.getLogger("shardflow")

#: Items per actor call for per-item pools (a per-item handler still gets one item at a
#: time, on the actor). An actor call costs about a millisecond; 1,000 items spread it.
DEFAULT_BATCH_SIZE = 1000
#: Batches in flight per shard. A full window is drained by half (one wait for the oldest
#: ``window // 2`` replies): with 4, the shard's thread blocks once per two batches while
#: the actor still has two queued, instead of once per batch with 2 (each blocking wait
#: costs a thread wake-up and a GIL hand-off).
DEFAULT_WINDOW = 4
_MIB = 1024 * 1024

# The actor's answer to one batch: (seq, handler_ns) when every item succeeded, else
# (tag, seq, payload..., handler_ns); handler_ns is how long the handler ran (the shard's
# service time, as with threads):
_SOME_FAILED = 0  # payload: [(index, packed exception), ...]
_BATCH_FAILED = 1  # payload: the packed exception a batch handler raised
# With return values wanted (``on_results``), always (_VALUES, seq, failures, values):
# ``values`` pickled here (so that a value that does not pickle fails its item alone).
_VALUES = 2


# ---------------------------------------------------------------------- errors


class RemoteTraceback(Exception):
    """The traceback of an exception raised on an actor, as text; set as the
    ``__cause__`` of the exception the driver re-creates, so logs show where it happened."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(Exception):
    """An exception raised by the handler on an actor that could not be sent back as
    itself (it does not pickle, or does not unpickle): its type name, its message and the
    remote traceback, as text."""

    def __init__(self, type_name: str, message: str, remote_traceback: str, reason: str) -> None:
        super().__init__(type_name, message, remote_traceback, reason)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.message} (raised on a Ray actor; the exception could "
            f"not be sent back as itself: {self.reason})"
        )


class ShardLost(Exception):
    """A batch could not be delivered: its shard's actor died and no new actor could run
    it within ``restart_timeout`` seconds. The batch fails as a whole (dead letter /
    ``on_error``); the last Ray error is the ``__cause__``."""


# ---------------------------------------------------------------------- actor side


@dataclass(frozen=True)
class BatchInfo:
    """What ``current_batch()`` returns inside a handler running on a shard actor.

    ``batch_id`` names the batch stably across re-sends: ``(run, shard, seq)``, where
    ``run`` is unique per pool, ``shard`` is the shard index and ``seq`` counts the
    shard's batches from 1. ``attempt`` is 1 for the first delivery; above 1 the batch is
    a re-send after an actor died, and some of its items may already have been handled
    (by the dead actor). An idempotent sink keys its writes on ``batch_id`` (plus the
    item's index in the batch) or skips work already done when ``attempt > 1``.
    """

    run: str
    shard: int
    seq: int
    attempt: int

    @property
    def batch_id(self) -> tuple[str, int, int]:
        return (self.run, self.shard, self.seq)


_current = threading.local()


def current_batch() -> BatchInfo | None:
    """The batch being handled, inside a handler running on a ``RayBackend`` shard
    actor; None elsewhere (for example with the thread backend)."""
    at: tuple[str, int, int, int] | None = getattr(_current, "at", None)
    return None if at is None else BatchInfo(*at)


def _dumps(obj: object) -> bytes:
    try:
        cloudpickle: Any = importlib.import_module("ray.cloudpickle")
    except ImportError:  # pragma: no cover - the fake remote of the tests, without ray
        return pickle.dumps(obj)
    data: bytes = cloudpickle.dumps(obj)
    return data


def _pack_exception(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """``(pickled or None, type name, message, traceback)``: None when the exception does
    not survive a pickle round trip (then the reason is in the message slot's place)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        message = str(exc)
    except BaseException as bad:
        message = f"<str() failed: {bad!r}>"
    try:
        data = _dumps(exc)
        pickle.loads(data)  # what the driver will do: fail here, where we can say why
    except BaseException as bad:
        return None, name, message, f"{type(bad).__name__}: {bad}\n{tb}"
    return data, name, message, tb


def _unpack_exception(packed: tuple[bytes | None, str, str, str]) -> BaseException:
    data, name, message, tb = packed
    if data is None:
        reason, _, remote_tb = tb.partition("\n")
        return RemoteError(name, message, remote_tb, reason)
    try:
        exc = pickle.loads(data)
    except BaseException as bad:
        return RemoteError(name, message, tb, f"{type(bad).__name__}: {bad}")
    if not isinstance(exc, BaseException):  # pragma: no cover - defensive
        return RemoteError(name, message, tb, f"unpickled a {type(exc).__name__}")
    try:
        exc.remote_traceback = tb  # type: ignore[attr-defined]
        exc.__cause__ = RemoteTraceback(tb)
    except (AttributeError, TypeError):  # pragma: no cover - exotic exception types
        pass
    return exc


def run_batch_here(
    handler: Handler,
    per_item: bool,
    at: tuple[str, int, int, int],
    batch: list[Any],
    collect: bool = False,
) -> tuple[Any, ...]:
    """Run one batch and describe the outcome (what a shard actor does with a call);
    ``at`` is ``(run, shard, seq, attempt)`` (``current_batch()``).

    A per-item handler is called once per item and each failure is kept with its index;
    a batch handler is called once. Nothing raised by the handler escapes: the reply
    says what failed, with the exception (pickled here, or a ``RemoteError`` for one that
    does not pickle) and its traceback. With ``collect``, the reply carries the return
    values too (``_VALUES``).
    """
    _current.at = at
    t0 = time.monotonic_ns()
    try:
        reply = _run(handler, per_item, at[2], batch, collect)
    finally:
        _current.at = None
    return (*reply, time.monotonic_ns() - t0)


def _run(
    handler: Handler, per_item: bool, seq: int, batch: list[Any], collect: bool
) -> tuple[Any, ...]:
    if collect:
        return _run_collecting(handler, per_item, seq, batch)
    if not per_item:
        try:
            handler(batch)
        except BaseException as exc:
            return (_BATCH_FAILED, seq, _pack_exception(exc))
        return (seq,)
    failures = []
    n = len(batch)
    it = iter(batch)
    while True:
        # A bare loop (no per-item bookkeeping); after a failure the iterator says where
        # it stopped, and the loop goes on from the next item.
        try:
            for item in it:
                handler(item)
            break
        except BaseException as exc:
            failures.append((n - length_hint(it) - 1, _pack_exception(exc)))
    if failures:
        return (_SOME_FAILED, seq, failures)
    return (seq,)


def _run_collecting(
    handler: Handler, per_item: bool, seq: int, batch: list[Any]
) -> tuple[Any, ...]:
    if not per_item:
        try:
            value = handler(batch)
        except BaseException as exc:
            return (_BATCH_FAILED, seq, _pack_exception(exc))
        if type(value) is Parted:
            _current.parts = value.parts  # the call's extra return objects
            value = value.meta
        try:
            return (_VALUES, seq, [], pickle.dumps(value, 5))
        except Exception as exc:
            return (_BATCH_FAILED, seq, _pack_exception(_unsendable(value, exc)))
    failures: list[tuple[int, Any]] = []
    values: list[Any] = []
    append = values.append
    for i, item in enumerate(batch):
        try:
            append(handler(item))
        except BaseException as exc:
            failures.append((i, _pack_exception(exc)))
            append(None)
    try:
        data = pickle.dumps(values, 5)
    except Exception:
        for i, value in enumerate(values):
            try:
                pickle.dumps(value, 5)
            except Exception as exc:
                failures.append((i, _pack_exception(_unsendable(value, exc))))
                values[i] = None
        failures.sort(key=lambda f: f[0])
        data = pickle.dumps(values, 5)
    return (_VALUES, seq, failures, data)


def _unsendable(value: Any, why: Exception) -> TypeError:
    return TypeError(
        f"backend='ray' could not send back a result of type {type(value).__qualname__} "
        f"({type(why).__name__}: {why})"
    )


# ---------------------------------------------------------------------- object references
#
# Pipelines hand a stage's outputs to the next Ray stage as object references (see
# ``shardflow._remote_stage``, "Hand-off by object reference"). The pieces here are what
# the backend does for it: an actor call with ``returns > 1`` answers with the usual
# reply (small: counts, failures, timing) plus ``returns - 1`` separate Ray objects (the
# outputs, already partitioned for the next stage's shards, each a pickled list). Those
# objects are return values of a call the driver made, so the driver owns them: they
# outlive the actor that made them, and stay retrievable while the driver holds their
# references (until the next stage acknowledged the batch that carried them). The driver
# only ever holds the references: it passes them as arguments of the next stage's calls
# (``RefToken`` items of that stage's pool), and Ray resolves them on the actor.


class Parted:
    """What a handler running on a shard actor returns to answer with several Ray
    objects: ``meta`` (the reply's value, unpickled by the driver) and ``parts``, one
    ``bytes`` (a pickled list) per extra return object, left in the object store."""

    __slots__ = ("meta", "parts")

    def __init__(self, meta: Any, parts: list[bytes]) -> None:
        self.meta = meta
        self.parts = parts


class Forwarded:
    """The driver's side of a ``Parted`` reply, given to ``on_results``: ``meta`` and the
    references of the parts (``refs``, never fetched), with ``fetch(ref)`` to read a part
    (only when something failed and the items are needed: dead letters, the report)."""

    __slots__ = ("fetch", "meta", "refs")

    def __init__(self, meta: Any, refs: list[Any], fetch: Callable[[Any], list[Any]]) -> None:
        self.meta = meta
        self.refs = refs
        self.fetch = fetch


class RefToken:
    """One part of an upstream stage's outputs, as an item of the next stage's pool: the
    object reference, the shard it was cut for, how many pool items (``n``) and values
    (``values``: items, or the values of ordered units) it holds. It never pickles: a
    shard link sends the reference as an argument of the actor call, and the actor puts
    the part's items where the token was in the batch (``split_refs``/``fill_slots``)."""

    __slots__ = ("fetch", "n", "ref", "shard", "values")

    def __init__(
        self, ref: Any, shard: int, n: int, values: int, fetch: Callable[[Any], list[Any]]
    ) -> None:
        self.ref = ref
        self.shard = shard
        self.n = n
        self.values = values
        self.fetch = fetch

    def read(self) -> list[Any] | None:
        """The part's items, fetched from the object store (failure paths only); None if
        the object is gone (lost with its node)."""
        try:
            return self.fetch(self.ref)
        except Exception:
            return None

    def items(self) -> list[Any]:
        """``read()``, or the token itself in a one-element list if the object is gone."""
        got = self.read()
        return [self] if got is None else got

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a RefToken is sent as an actor call argument, never pickled")

    def __repr__(self) -> str:
        return f"RefToken(shard={self.shard}, n={self.n})"


class _Slot:
    """Where a ``RefToken`` was in a shipped batch: the index of its reference among the
    call's extra arguments."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, (self.i,))


def split_refs(batch: list[Any]) -> tuple[list[Any], list[Any]]:
    """``(batch with every RefToken replaced by a _Slot, the tokens' references)``."""
    out = batch
    refs: list[Any] = []
    for i, x in enumerate(batch):
        if type(x) is RefToken:
            if out is batch:
                out = list(batch)
            out[i] = _Slot(len(refs))
            refs.append(x.ref)
    return out, refs


def fill_slots(batch: list[Any], parts: tuple[Any, ...] | list[Any]) -> list[Any]:
    """On the actor: the batch with each slot replaced by its part's items (Ray resolved
    the references into the pickled lists)."""
    if not parts:
        return batch
    items: list[Any] = []
    for x in batch:
        if type(x) is _Slot:
            items += pickle.loads(parts[x.i])
        else:
            items.append(x)
    return items


_NO_PART = pickle.dumps([], 5)


def take_parts(k: int) -> list[bytes]:
    """The parts a ``Parted`` answer left for this call (``k`` of them; empty lists when
    the handler gave none, e.g. it raised)."""
    got: list[bytes] | None = getattr(_current, "parts", None)
    _current.parts = None
    if got is None or len(got) != k:
        return [_NO_PART] * k
    return got


class _ShardActor:
    """The body of a shard actor (``ray.remote`` is applied when a pool starts)."""

    def __init__(
        self, handler_bytes: bytes, per_item: bool, run: str, shard: int, collect: bool = False
    ) -> None:
        self._handler = pickle.loads(handler_bytes)
        self._per_item = per_item
        self._collect = collect
        self._run = run
        self._shard = shard

    def ping(self) -> int:
        """The actor's process id (tests and tools use it to find the process)."""
        return os.getpid()

    def run(self, call: bytes | tuple[Any, ...], *parts: bytes) -> Any:
        """``call`` is ``(seq, attempt, batch)``, or ``(seq, attempt, batch, returns)``
        for a call answering with ``returns`` objects (the reply, then the parts of a
        ``Parted`` answer); ``parts``: the resolved references of the batch's slots.
        ``call`` comes pickled by the driver into one bytes payload (``_CallPacker``),
        or as Ray serialized it for a batch that holds Ray objects or out-of-band
        buffers. The reply goes back pickled here: Ray moves bytes both ways without its
        own serializer (about a third of the driver's CPU per call, measured)."""
        unpacked: tuple[Any, ...] = (
            pickle.loads(call) if type(call) is bytes else call  # type: ignore[assignment]
        )
        answer = run_call(
            self._handler, self._per_item, (self._run, self._shard), unpacked, parts, self._collect
        )
        if len(unpacked) > 3 and unpacked[3] != 1:
            return (pickle.dumps(answer[0], 5), *answer[1:])
        return pickle.dumps(answer, 5)


def run_call(
    handler: Handler,
    per_item: bool,
    where: tuple[str, int],
    call: tuple[Any, ...],
    parts: tuple[Any, ...] | list[Any],
    collect: bool,
) -> Any:
    """What a shard actor does with one call (``_ShardActor.run``; the tests' fake
    remote too): fill the batch's slots, run it, answer with one or ``returns`` objects."""
    seq, attempt, batch = call[0], call[1], call[2]
    returns = call[3] if len(call) > 3 else 1
    if parts:
        batch = fill_slots(batch, parts)
    reply = run_batch_here(handler, per_item, (*where, seq, attempt), batch, collect)
    if returns == 1:
        return reply
    return (reply, *take_parts(returns - 1))


# ---------------------------------------------------------------------- driver side


class ActorLost(Exception):
    """Raised by a ``Remote`` when the actor died or cannot be reached (the batch may or
    may not have run)."""


class Remote:
    """How the driver talks to shard actors. ``RayRemote`` uses Ray; the tests use a fake
    with the same methods to check the driver logic without a cluster."""

    def create(self, shard: int) -> Any:
        """Start a new actor for ``shard`` and return its handle (may not be ready)."""
        raise NotImplementedError

    def ready(self, actor: Any, timeout: float) -> int:
        """Wait until ``actor`` runs; its process id. Raises ``ActorLost`` if it cannot
        start, ``TimeoutError`` after ``timeout`` seconds."""
        raise NotImplementedError

    def submit(self, actor: Any, seq: int, attempt: int, batch: list[Any]) -> Any:
        """Send ``batch`` to ``actor`` without waiting; a handle for ``result``. Calls to
        one actor run in the order they were submitted."""
        raise NotImplementedError

    def result(self, handle: Any) -> tuple[Any, ...]:
        """Wait for a submitted batch: the reply of ``run_batch_here``. Raises
        ``ActorLost`` if the actor died or cannot be reached (the batch may or may not
        have run)."""
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> None:
        """Block until every one of ``handles`` has its reply or failed: a hint (one
        wait for several replies, whose ``result`` calls then return at once) that
        raises nothing; ``result`` reports the failures. By default nothing."""

    def kill(self, actor: Any) -> None:
        """Stop ``actor`` (dead or alive) without waiting."""
        raise NotImplementedError

    #: Objects each call answers with: 1 (the reply), or 1 + the parts of a ``Parted``
    #: answer (a pipeline stage handing its outputs on by reference). Set by the runner.
    returns: int = 1
    #: Whether batches may hold ``RefToken`` items (sent as call arguments).
    tokens: bool = False

    def parts(self, handle: Any) -> list[Any]:
        """The references of a call's extra return objects (``returns > 1``)."""
        raise NotImplementedError

    def fetch(self, ref: Any) -> list[Any]:
        """The items of a part (a failure path: the driver never reads parts otherwise)."""
        raise NotImplementedError


class _InFlight:
    """One shipped batch, until its outcome is settled."""

    __slots__ = ("attempt", "batch", "error", "first_loss", "handle", "remote_ns", "seq", "t0")

    def __init__(self, seq: int, batch: list[Any]) -> None:
        self.seq = seq
        self.batch = batch
        self.attempt = 1
        self.handle: Any = None  # None: not sent to the current actor (yet)
        self.error: BaseException | None = None  # failed before it could be sent
        self.first_loss = 0.0
        self.t0 = time.monotonic_ns()
        self.remote_ns = -1  # how long the handler ran on the actor, once replied


class _ShardLink:
    """The driver's side of one shard: its actor, its window of batches in flight, their
    sequence numbers and the re-sends.

    The shard's thread (``ship``) sends each batch at once and returns ``DEFERRED`` while
    fewer than ``window`` batches are in flight; with a full window it waits once for the
    oldest ``window // 2`` replies (at least one) and collects them itself (like a
    hand-written ``ray.wait`` loop: no thread hand-off while the shard is busy), settling
    each batch with the core, oldest first. When the shard goes idle,
    the link's collector thread settles what is left (after ``IDLE_COLLECT`` seconds, up
    to 16 times that after a busy spell, so that it does not compete with a busy shard's
    thread); ``wait_settled`` (flush) and
    ``close`` collect at once. One batch is collected at a time (``collecting``), oldest
    first, so the core's counters of the shard see one settle after the other.

    When the actor dies, whoever is collecting replaces it and re-sends every
    unacknowledged batch, in sequence order, before the shard's thread may send another
    one: per-key order holds, and the batch that was running at the crash (and only the
    batches not acknowledged) may run again.
    """

    #: Seconds the collector thread leaves an idle shard's oldest reply to the shard's
    #: own thread before collecting it.
    IDLE_COLLECT = 0.002

    def __init__(
        self,
        remote: Remote,
        shard: int,
        window: int,
        restart_timeout: float,
        settle: Callable[[int, list[Any], object, int], None],
        deliver: Deliver | None = None,
        per_item: bool = True,
    ) -> None:
        self.remote = remote
        self.deliver = deliver
        self.per_item = per_item
        self.shard = shard
        self.window = window
        # Replies collected per wait once the window is full: half of it, so that the
        # actor still has batches queued while the driver reads the others.
        self.group = max(1, window // 2)
        self.restart_timeout = restart_timeout
        self.settle = settle
        self.actor: Any = None
        self.pid: int | None = None
        self.inflight: deque[_InFlight] = deque()
        # One lock guards inflight, actor and the counters; two conditions on it, so
        # that nobody is woken for nothing while the shard is busy (each wake-up is a
        # GIL hand-off, tens of microseconds on this 2-core machine):
        # ``cond`` wakes the collector (something entered an empty window, or closing);
        # ``progress`` wakes ``wait_settled`` callers (a batch settled), only if any wait.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.progress = threading.Condition(self.lock)
        self.progress_waiters = 0
        self.collecting = threading.Lock()  # held while one batch is collected and settled
        self.closing = False
        self.seq = 0  # the last batch shipped
        self.settled = 0  # batches settled (they are settled in sequence order)
        self.resent = 0  # batches sent again after an actor died
        self.replaced = 0  # actors replaced
        self.recovered_at: float | None = None  # monotonic time of the last re-send's reply
        self.collector: threading.Thread | None = None

    # -- the shard's thread

    def ship(self, batch: list[Any]) -> object:
        while True:
            with self.lock:
                inflight = self.inflight
                if len(inflight) < self.window:
                    self.seq += 1
                    entry = _InFlight(self.seq, batch)
                    if self.actor is not None and not self.inflight_lost():
                        try:
                            entry.handle = self.remote.submit(self.actor, entry.seq, 1, batch)
                        except ActorLost:
                            pass  # the next collect replaces the actor and sends it
                        except BaseException as exc:  # e.g. an item that does not pickle
                            entry.error = exc
                    inflight.append(entry)
                    if len(inflight) == 1:
                        self.cond.notify()  # the collector sleeps while nothing is in flight
                    return DEFERRED
                group = [inflight[i] for i in range(min(self.group, len(inflight)))]
            if len(group) > 1:
                # One blocking wait for the group (one wake-up, one GIL hand-off), then
                # each reply is read without blocking.
                handles = [e.handle for e in group if e.handle is not None]
                if handles:
                    self.remote.wait(handles)
            for e in group:
                # Skips an entry another thread (flush, the collector) settled meanwhile.
                self.collect_head(e)

    def inflight_lost(self) -> bool:
        # An unsent entry ahead means the actor is being replaced: keep the order.
        return any(e.handle is None and e.error is None for e in self.inflight)

    # -- collecting (the shard's thread, the collector thread, flush, close)

    def collect_head(self, expect: _InFlight | None = None) -> bool:
        """Wait for the oldest batch's reply and settle it; False if none is in flight
        (or, with ``expect``, if the oldest is not that batch: it was settled already)."""
        with self.collecting:
            with self.lock:
                if not self.inflight:
                    return False
                entry = self.inflight[0]
                if expect is not None and entry is not expect:
                    return False
            outcome = self._outcome_of(entry)
            # The handler's time on the actor, as threads measure it; the round trip when
            # no reply came (the batch failed as a whole on the way).
            service_ns = entry.remote_ns
            if service_ns < 0:
                service_ns = time.monotonic_ns() - entry.t0
            try:
                self.settle(self.shard, entry.batch, outcome, service_ns)
            finally:
                with self.lock:
                    self.inflight.popleft()
                    self.settled += 1
                    if self.progress_waiters:
                        self.progress.notify_all()
            return True

    def collect(self) -> None:
        """The collector thread: settle what an idle shard left in flight."""
        pause = self.IDLE_COLLECT
        while True:
            with self.cond:
                while not self.inflight and not self.closing:
                    self.cond.wait()
                if not self.inflight:
                    return
                head = self.inflight[0]
                if not self.closing:
                    # A busy shard's thread collects its own replies; step in only if the
                    # oldest one is still there after a pause, which grows (to 16x) while
                    # the shard stays busy, so that polling costs little. Nothing wakes
                    # this wait but close() (and a batch entering an empty window).
                    self.cond.wait(pause)
                    if not self.closing and (not self.inflight or self.inflight[0] is not head):
                        pause = min(pause * 2, 16 * self.IDLE_COLLECT)
                        continue
            pause = self.IDLE_COLLECT
            self.collect_head()

    def _outcome_of(self, entry: _InFlight) -> object:
        """Wait for the head batch's reply, replacing the actor and re-sending as needed;
        what ``settle`` takes."""
        delay = 0.01
        while True:
            if entry.error is not None:
                return entry.error
            try:
                if entry.handle is None:
                    raise ActorLost("no actor")
                reply = self.remote.result(entry.handle)
            except ActorLost as lost:
                now = time.monotonic()
                if entry.first_loss == 0.0:
                    entry.first_loss = now
                if now - entry.first_loss >= self.restart_timeout:
                    with self.cond:
                        if self.actor is not None:
                            self.remote.kill(self.actor)
                            self.actor = None
                    gone = ShardLost(
                        f"shard {self.shard}: batch {entry.seq} ({len(entry.batch)} items) "
                        f"could not be delivered within restart_timeout={self.restart_timeout}"
                        f" s after its actor died ({entry.attempt} attempts)"
                    )
                    gone.__cause__ = lost
                    return gone
                if entry.attempt > 1:  # the first re-send goes at once, later ones back off
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                self._replace_and_resend(lost)
                continue
            except Exception as exc:
                # The call failed as a whole without the actor dying: e.g. an item that
                # pickles here but does not unpickle on the actor (RayTaskError).
                return exc
            if entry.attempt > 1:
                self.recovered_at = time.monotonic()
            try:
                return self._decode(reply, entry)
            except BaseException as exc:
                return exc

    def _replace_and_resend(self, lost: BaseException) -> None:
        with self.cond:
            if self.actor is not None:
                self.remote.kill(self.actor)
                self.actor = None
                self.replaced += 1
            pending = [e for e in self.inflight if e.error is None]
            for e in pending:
                e.handle = None
            _log.warning(
                "shardflow ray shard %d: actor lost (%s); re-sending %d unacknowledged "
                "batch(es) from %d on, in order, to a new actor",
                self.shard,
                lost,
                len(pending),
                pending[0].seq if pending else -1,
            )
            try:
                actor = self.remote.create(self.shard)
                self.pid = self.remote.ready(actor, self.restart_timeout)
            except (ActorLost, TimeoutError) as exc:
                _log.warning("shardflow ray shard %d: new actor failed: %s", self.shard, exc)
                return
            self.actor = actor
            for e in pending:
                e.attempt += 1
                self.resent += 1
                try:
                    e.handle = self.remote.submit(actor, e.seq, e.attempt, e.batch)
                except ActorLost:
                    return  # dead again: the next result() call starts over
                except BaseException as exc:
                    e.error = exc

    def _decode(self, reply: tuple[Any, ...], entry: _InFlight) -> BatchOutcome | None:
        entry.remote_ns = reply[-1]
        if len(reply) == 2:  # (seq, handler_ns): every item succeeded
            tag, got_seq = None, reply[0]
        else:
            tag, got_seq = reply[0], reply[1]
        if got_seq != entry.seq:  # pragma: no cover - would be a bug in the actor or in Ray
            raise RuntimeError(f"shard {self.shard}: reply for batch {got_seq}, sent {entry.seq}")
        if tag is None:
            return None
        if tag == _BATCH_FAILED:
            raise _unpack_exception(reply[2])
        if tag == _VALUES:
            return self._deliver(reply, entry)
        failures = reply[2]
        if not failures:
            return None
        return BatchOutcome([(i, _unpack_exception(p)) for i, p in failures])

    def _deliver(self, reply: tuple[Any, ...], entry: _InFlight) -> BatchOutcome | None:
        assert self.deliver is not None
        batch = entry.batch
        failures = [(i, _unpack_exception(p)) for i, p in reply[2]]
        values = pickle.loads(reply[3])
        if self.remote.returns > 1:
            values = Forwarded(values, self.remote.parts(entry.handle), self.remote.fetch)
        if self.per_item:
            deliver_values(self.deliver, batch, values, failures)
        else:
            self.deliver(batch, values)
        return BatchOutcome(failures) if failures else None

    def wait_settled(self, deadline: float | None) -> bool:
        with self.lock:
            target = self.seq
        while True:
            with self.lock:
                if self.settled >= target:
                    return True
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    # The collector thread settles them; a reply wait cannot time out.
                    self.progress_waiters += 1
                    try:
                        self.progress.wait(min(left, self.IDLE_COLLECT))
                    finally:
                        self.progress_waiters -= 1
                    continue
            self.collect_head()

    def close(self) -> None:
        """Let the collector finish what is in flight, then stop it and the actor."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.collector is not None:
            self.collector.join()
        with self.cond:
            if self.actor is not None:
                self.remote.kill(self.actor)
                self.actor = None


class _NeedsRay(Exception):
    """Raised while pickling a call that holds an object only Ray's serializer may
    send (an ``ObjectRef``, an actor handle): the call then goes through Ray as is."""


def _refuse(obj: object) -> Any:
    raise _NeedsRay(type(obj).__name__)


def _call_pickler(ray: Any) -> type:
    """The pickler of ``_CallPacker``: Ray's cloudpickle (lambdas, classes registered by
    value, serializers registered with Ray all work as when Ray pickles the call), except
    that Ray's references refuse (``_NeedsRay``): pickled outside Ray's own serializer an
    ``ObjectRef`` would be pinned for the driver's lifetime instead of borrowed."""
    from collections import ChainMap

    cloudpickle: Any = ray.cloudpickle
    refused: dict[type, Callable[[object], Any]] = {ray.ObjectRef: _refuse}
    for path in (
        "ray.actor.ActorHandle",
        "ray.ObjectRefGenerator",
        "ray.DynamicObjectRefGenerator",
    ):
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
        if isinstance(cls, type):
            refused[cls] = _refuse

    class CallPickler(cloudpickle.Pickler):  # type: ignore[misc]
        # Looked up per pickled object (after reducer_override): Ray's registrations
        # in the cloudpickle table stay visible through the chain.
        dispatch_table: ClassVar[Any] = ChainMap(refused, cloudpickle.Pickler.dispatch_table)

    return CallPickler


class _CallPacker:
    """Pickles calls into one bytes payload each (``pack``), reusing one pickler and
    buffer: building a cloudpickle pickler costs about as much as pickling 1,000 ints.
    Not thread-safe: ``RayRemote`` keeps one per thread."""

    __slots__ = ("buffers", "out", "pickler")

    def __init__(self, pickler_type: type) -> None:
        self.buffers: list[Any] = []
        self.out = io.BytesIO()
        self.pickler = pickler_type(self.out, protocol=5, buffer_callback=self.buffers.append)

    def pack(self, call: tuple[Any, ...]) -> bytes | None:
        """``call`` pickled, or None when Ray should serialize it itself: it holds Ray
        references (``_NeedsRay``), out-of-band buffers (numpy arrays and other
        protocol-5 buffers, which Ray moves without a copy through its object store), or
        something this pickler refuses (Ray then raises its own clear error, or manages
        with its registered serializers)."""
        out = self.out
        pickler = self.pickler
        try:
            pickler.dump(call)
            return None if self.buffers else out.getvalue()
        except Exception:
            return None
        finally:
            # Each call stands alone: no memo, no function globals, nothing kept alive.
            pickler.clear_memo()
            globals_ref = getattr(pickler, "globals_ref", None)
            if globals_ref:
                globals_ref.clear()
            self.buffers.clear()
            out.seek(0)
            out.truncate()


class RayRemote(Remote):
    """Shard actors on a Ray cluster."""

    def __init__(
        self,
        ray: Any,
        backend: RayBackend,
        handler_bytes: bytes,
        per_item: bool,
        collect: bool = False,
    ) -> None:
        self._ray = ray
        self._per_item = per_item
        self._collect = collect
        self._handler_ref = handler_bytes
        self.run = secrets.token_hex(6)
        options: dict[str, Any] = {
            "num_cpus": backend.num_cpus_per_shard,
            "max_concurrency": 1,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        if backend.resources:
            options["resources"] = dict(backend.resources)
        options.update(backend.actor_options)
        self._cls = ray.remote(_ShardActor).options(**options)
        self._pickler_type = _call_pickler(ray)
        self._local = threading.local()  # a _CallPacker per thread that submits
        self._lost: tuple[type[BaseException], ...] = (
            ray.exceptions.RayActorError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
        )

    def create(self, shard: int) -> Any:
        return self._cls.remote(self._handler_ref, self._per_item, self.run, shard, self._collect)

    def ready(self, actor: Any, timeout: float) -> int:
        try:
            pid: int = self._ray.get(actor.ping.remote(), timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"shard actor did not start within {timeout} s (does the cluster have "
                "the CPUs/resources each shard asks for? see num_cpus_per_shard)"
            ) from None
        except self._lost as exc:
            raise ActorLost(str(exc)) from exc
        return pid

    def submit(self, actor: Any, seq: int, attempt: int, batch: list[Any]) -> Any:
        refs: list[Any] = []
        if self.tokens:
            batch, refs = split_refs(batch)
        call: tuple[Any, ...] = (
            (seq, attempt, batch) if self.returns == 1 else (seq, attempt, batch, self.returns)
        )
        try:
            packer: _CallPacker = self._local.packer
        except AttributeError:
            packer = self._local.packer = _CallPacker(self._pickler_type)
        packed = packer.pack(call)
        if packed is not None and len(packed) > _MIB:
            del self._local.packer  # let its buffer go with this payload
        arg = call if packed is None else packed
        try:
            if self.returns == 1:
                return actor.run.remote(arg, *refs)
            # A list of references: the reply, then the parts (owned by this process).
            return actor.run.options(num_returns=self.returns).remote(arg, *refs)
        except self._lost as exc:
            raise ActorLost(f"{type(exc).__name__}") from exc

    def parts(self, handle: Any) -> list[Any]:
        return list(handle[1:])

    def fetch(self, ref: Any) -> list[Any]:
        got: list[Any] = pickle.loads(self._ray.get(ref))
        return got

    def result(self, handle: Any) -> tuple[Any, ...]:
        if type(handle) is list:
            handle = handle[0]
        try:
            data: bytes = self._ray.get(handle)
        except self._lost as exc:
            raise ActorLost(f"{type(exc).__name__}") from exc
        reply: tuple[Any, ...] = pickle.loads(data)
        return reply

    def wait(self, handles: list[Any]) -> None:
        refs = [h[0] if type(h) is list else h for h in handles]
        try:
            self._ray.wait(refs, num_returns=len(refs))
        except Exception:  # e.g. Ray shutting down: result() says what happened
            pass

    def kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:
            pass


class _RayRunner(ShardRunner):
    # Guards pickled into each actor would be one independent copy per shard: the pool
    # keeps breaker/limiter/rate limiter in the driver instead, and refuses retry.
    shares_guards: ClassVar[bool] = False

    def __init__(self, backend: RayBackend, pool_name: str, workers: int) -> None:
        self._backend = backend
        self._pool_name = pool_name
        self._workers = workers
        self._handler: Handler | None = None
        self._deliver: Deliver | None = None
        self._per_item = True
        self._settle: Callable[[int, list[Any], object, int], None] | None = None
        self.links: list[_ShardLink] = []
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._joined = False

    def batch_shape(
        self, batch_size: int, batch_timeout: float | None, lists: bool
    ) -> tuple[int, float | None, bool]:
        if batch_size == 1 and not lists:
            # A per-item pool: ship batches anyway (one call per item would cost ~1 ms
            # each), without waiting for them to fill.
            return self._backend.batch_size, None, True
        return batch_size, batch_timeout, True

    def wrap(self, handler: Handler, *, per_item: bool, deliver: Deliver | None = None) -> Handler:
        self._handler = handler
        self._per_item = per_item
        self._deliver = deliver
        return self._ship

    def attach(self, settle: Callable[[int, list[Any], object, int], None]) -> None:
        self._settle = settle

    def _ship(self, batch: list[Any]) -> object:
        link: _ShardLink = self._local.link
        return link.ship(batch)

    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        assert self._handler is not None and self._settle is not None, "wrap/attach first"
        if self._deliver is None:
            remote = self._backend._make_remote(self._handler, self._per_item)
        else:
            remote = self._backend._make_remote(self._handler, self._per_item, True)
        b = self._backend
        remote.returns = b._returns
        remote.tokens = b._tokens
        self.links = [
            _ShardLink(
                remote, i, b.window, b.restart_timeout, self._settle, self._deliver, self._per_item
            )
            for i in range(self._workers)
        ]
        # Create every actor first, then wait for all: they start in parallel.
        for link in self.links:
            link.actor = remote.create(link.shard)
        for link in self.links:
            try:
                link.pid = remote.ready(link.actor, b.start_timeout)
            except (ActorLost, TimeoutError) as exc:
                raise RuntimeError(
                    f"{self._pool_name}: shard actor {link.shard} could not start: {exc}"
                ) from exc
        for link in self.links:
            link.collector = threading.Thread(
                target=link.collect,
                name=f"{self._pool_name}-ray-collect-{link.shard}",
                daemon=True,
            )
            link.collector.start()

        def serve(i: int) -> None:
            self._local.link = self.links[i]
            run_shard(i)

        try:
            self._threads = start_shard_threads(
                self._workers, serve, lambda i: f"{self._pool_name}-ray-{i}", starting, start_failed
            )
        except BaseException as exc:
            self._threads = getattr(exc, "started", [])
            raise

    def wait_settled(self, timeout: float | None) -> bool:
        deadline = None
        if timeout is not None and timeout < 1e9:
            deadline = time.monotonic() + timeout
        return all(link.wait_settled(deadline) for link in self.links)

    def join(self) -> None:
        for t in self._threads:
            t.join()
        if self._joined:
            return
        self._joined = True
        for link in self.links:
            link.close()

    def after_fork_in_child(self) -> None:
        # The child has neither the shard threads nor a Ray connection of its own.
        self._threads = []
        self.links = []
        self._joined = True

    def stats(self) -> list[dict[str, int | None]]:
        """Per shard: batches sent, batches re-sent, actors replaced, the actor's pid."""
        return [
            {
                "shard": link.shard,
                "batches": link.seq,
                "resent": link.resent,
                "replaced": link.replaced,
                "pid": link.pid,
            }
            for link in self.links
        ]

    def describe(self) -> str:
        return f"ray({self._workers} actors)"


_init_lock = threading.Lock()


class RayBackend(Backend):
    """Shards run in Ray actors, one per shard; see the module docstring
    (``shardflow.backends.ray``) for what runs where and the delivery guarantees.

    Args:
        address: the Ray cluster to connect to (``ray.init(address=...)``, e.g.
            ``"auto"`` or ``"127.0.0.1:6379"``). None: use the Ray instance already
            initialized in this process, or start a small local one bound to 127.0.0.1
            (``num_cpus``, ``object_store_memory``, no dashboard, no usage stats; it sets
            ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and ``RAY_USAGE_STATS_ENABLED=0`` in
            ``os.environ`` unless they are set, which is what keeps Ray on loopback).
        num_cpus_per_shard: the CPUs each shard actor reserves (Ray scheduling); a pool
            of ``workers`` shards needs ``workers * num_cpus_per_shard`` free CPUs.
        batch_size: items per actor call for per-item pools (``batch_size=1``). Pools
            with ``batch_size > 1`` ship their own batches.
        window: batches in flight per shard (sent, reply not yet in); each shard holds
            at most ``window`` batches beyond its ring. When it is full, the shard waits
            for the oldest ``window // 2`` replies at once (at least one), so the actor
            still has batches queued meanwhile; 1 or 2: one reply per wait.
        restart_timeout: seconds a batch may wait for a new actor after its actor died
            before it fails as a whole with ``ShardLost``.
        start_timeout: seconds a pool waits for its actors to start.
        num_cpus, object_store_memory: the local cluster started when ``address`` is
            None and Ray is not initialized (object store in bytes; default 200 MiB).
        resources: custom Ray resources each shard actor asks for (placement).
        actor_options: further ``ray.remote`` options for the shard actors (e.g.
            ``{"runtime_env": ...}``); the ordering options (``max_concurrency=1``, no
            Ray restarts or task retries) should be left alone.
        init_kwargs: further ``ray.init`` keyword arguments.
        log_to_driver: let Ray copy the actors' stdout/stderr to this process.

    Example (a synopsis: it starts a local Ray cluster, which takes seconds)::

        import shardflow
        from shardflow.backends import RayBackend

        def handle(order):
            ...  # runs on a Ray actor

        with shardflow.ShardedPool(handle, workers=2, key=lambda o: o["account"],
                                   backend=RayBackend()) as pool:
            pool.submit_many(orders)
        print(pool.metrics())
    """

    name: ClassVar[str] = "ray"
    #: Set on a pipeline stage's copy (``for_stage``): objects per call, RefToken items.
    _returns: int = 1
    _tokens: bool = False

    def for_stage(self, returns: int, tokens: bool) -> RayBackend:
        """A copy for one pipeline stage that hands its outputs on by reference
        (``returns - 1`` parts per call) and/or gets ``RefToken`` items (internal: see
        ``shardflow._remote_stage``)."""
        clone = copy.copy(self)
        clone._returns = returns
        clone._tokens = tokens
        return clone

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus_per_shard: float = 1.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        window: int = DEFAULT_WINDOW,
        restart_timeout: float = 60.0,
        start_timeout: float = 120.0,
        num_cpus: int | None = 2,
        object_store_memory: int = 200 * _MIB,
        resources: dict[str, float] | None = None,
        actor_options: dict[str, Any] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        log_to_driver: bool = False,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a str or None, got {type(address).__name__}")
        if isinstance(num_cpus_per_shard, bool) or not isinstance(num_cpus_per_shard, (int, float)):
            raise TypeError(f"num_cpus_per_shard must be a number >= 0, got {num_cpus_per_shard!r}")
        if not num_cpus_per_shard >= 0:
            raise ValueError(f"num_cpus_per_shard must be >= 0, got {num_cpus_per_shard!r}")
        check_int("batch_size", batch_size, lo=1, hi=1 << 20)
        check_int("window", window, lo=1, hi=1 << 10)
        check_seconds("restart_timeout", restart_timeout, optional=False)
        check_seconds("start_timeout", start_timeout, optional=False, positive=True)
        if num_cpus is not None:
            check_int("num_cpus", num_cpus, lo=1, hi=1 << 16)
        check_int("object_store_memory", object_store_memory, lo=75 * _MIB, hi=1 << 50)
        check_bool("log_to_driver", log_to_driver)
        for label, value in (
            ("resources", resources),
            ("actor_options", actor_options),
            ("init_kwargs", init_kwargs),
        ):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{label} must be a dict or None, got {type(value).__name__}")
        self.address = address
        self.num_cpus_per_shard = float(num_cpus_per_shard)
        self.batch_size = batch_size
        self.window = window
        self.restart_timeout = float(restart_timeout)
        self.start_timeout = float(start_timeout)
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.resources = dict(resources or {})
        self.actor_options = dict(actor_options or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.log_to_driver = log_to_driver

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        return _RayRunner(self, pool_name, workers)

    def _make_remote(self, handler: Handler, per_item: bool, collect: bool = False) -> Remote:
        """The ``Remote`` a pool's runner uses (the tests override this with a fake)."""
        try:
            handler_bytes = _dumps(handler)
        except Exception as exc:
            raise TypeError(
                f"handler {handler!r} cannot be sent to a Ray actor (it must pickle with "
                f"cloudpickle): {type(exc).__name__}: {exc}"
            ) from exc
        ray = self.ensure_ray()
        return RayRemote(ray, self, handler_bytes, per_item, collect)

    def ensure_ray(self) -> Any:
        """Import Ray and connect (or start the local cluster); returns the module."""
        with _init_lock:
            local = self.address is None and (
                "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
            )
            if local:
                # Keep a cluster we start on loopback: Ray otherwise listens on every
                # interface and advertises the first non-loopback address. These are read
                # when Ray is imported, and by the processes ray.init starts.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                ray: Any = importlib.import_module("ray")
            except ImportError as exc:
                raise ImportError("RayBackend needs Ray: pip install 'shardflow[ray]'") from exc
            if ray.is_initialized():
                return ray
            kwargs: dict[str, Any] = {"log_to_driver": self.log_to_driver}
            if self.address is not None:
                kwargs["address"] = self.address
            else:
                if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
                    # Ray was perhaps imported before the variable was set.
                    constants: Any = importlib.import_module("ray._private.ray_constants")
                    constants.ENABLE_RAY_CLUSTER = False
                kwargs.update(
                    # "local": a new instance, never one found through RAY_ADDRESS or a
                    # `ray start` of someone else on this machine.
                    address="local",
                    num_cpus=self.num_cpus,
                    object_store_memory=self.object_store_memory,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                )
            kwargs.update(self.init_kwargs)
            ray.init(**kwargs)
            return ray

    def __repr__(self) -> str:
        where = "local" if self.address is None else repr(self.address)
        return f"RayBackend({where}, num_cpus_per_shard={self.num_cpus_per_shard})"
