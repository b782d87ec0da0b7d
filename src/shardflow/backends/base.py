"""The seam between a pool and the place its shards run.

A pool (``ShardedPool``, and everything built on it: ``BatchProcessor``, ``Executor``,
``Pipeline`` stages) splits into two halves:

* the **front**, always in the caller's process, compiled in ``shardflow._worker``:
  routing (key -> shard), per-key order, the bounded per-shard rings, size-or-time
  batching, stealing, flush, accounting and metrics; and
* the **runners**, one per shard, that drain a shard and call the handler. Where they run
  is the backend's business: threads of this process (``ThreadBackend``), or, in the
  backends to come, a parent-side loop per shard that ships each batch to a worker
  process or a Ray actor and brings the outcomes back ("run this batch over there").

A ``Backend`` is configuration that many pools may share (a cluster address, a start
method ...); ``Backend.runner(...)`` makes the per-pool ``ShardRunner`` that owns the
threads, processes or actors of one pool. The pool drives it in this order, and only
this order:

0. ``batch_shape(batch_size, batch_timeout, lists)`` once: how the shard loops hand work
   over. The default keeps the user's choice; a runner that ships work elsewhere can ask
   for lists even for a per-item handler (one message per batch), and then calls the
   handler per item on its side.
1. ``wrap(handler, per_item=...)`` once, before the core exists: the callable the shard
   loops will invoke (the handler itself for threads; a proxy to the remote side
   otherwise). ``per_item`` says whether ``handler`` takes one item (True) or a list.
   Guards (breaker, limiter, rate limiter, retry) are already composed around
   ``handler``. With lists, the wrapped callable reports the outcome of the batch: it
   returns normally when every item succeeded, raises when the batch as a whole failed,
   or returns a ``BatchOutcome`` listing ``(index, exception)`` for the items that failed
   (each is then routed alone; the rest count as processed).
   A runner that keeps several batches of a shard in flight (a window) returns
   ``DEFERRED`` instead: the batch was shipped, its outcome comes later. It then reports
   that outcome exactly once with the ``settle`` callable it got from ``attach``:
   ``settle(shard, batch, outcome, service_ns)``, ``outcome`` being None, a
   ``BatchOutcome`` or the exception that failed the whole batch. The settles of one
   shard never run concurrently (one thread, or several serialized by a lock: the
   shard's counters take one writer at a time), and all come before the runner's
   ``join()`` returns. Per-key order is the runner's business: it must run a shard's
   batches in the order it got them.
   ``wrap(handler, per_item=..., deliver=fn)``: the pool wants the handler's return
   values (``ShardedPool(on_results=...)``; how the ``Executor`` and pipeline stages get
   results back from worker processes and actors). The runner then calls
   ``fn(items, values)`` in this process, exactly once per batch whose handler ran, before
   that batch's outcome is reported (returned or settled), from the thread that reports
   it: with a per-item handler, ``values[i]`` is what ``handler(items[i])`` returned and
   the items that failed are left out of both lists (they are in the outcome); with a
   list handler, ``fn(batch, value)`` gets the one value the call returned (not called
   when the call failed). An exception raised by ``fn`` fails the batch as a whole.
   ``collect_values`` (below) does this for runners that call the handler in this process.
   A runner that ships work elsewhere sends the values back; a value that cannot be sent
   fails its item (``TypeError`` naming its type), never the batch. With a per-item
   handler and ``deliver``, the pool hands the shard loops lists (see
   ``COLLECT_RUN``), as it does for runners that ship work.
1b. ``attach(settle)`` once, right after ``wrap``: the core's ``settle`` (runners that
   never return ``DEFERRED`` ignore it).
2. ``start(run_shard)`` once: arrange for ``run_shard(i)`` to be called exactly once for
   every shard ``i`` in ``range(workers)``, each in its own thread of control, and return
   without waiting. ``run_shard`` is the compiled shard loop: it returns when the shard is
   closed and drained (or stopped); the core counts it out itself. ``start`` must call
   ``starting()`` before each shard's thread starts and, if that start fails,
   ``start_failed()`` and re-raise (so that ``join`` never waits for a shard that never
   ran).
   ``wait_settled(timeout)`` after each ``flush()`` of the pool: wait until every batch
   handed over so far is settled (True), or ``timeout`` ran out (False).
3. ``join()``, after the core reported every shard loop finished: settle what is still
   in flight, then release what the runner holds (join threads, stop worker processes,
   free actors). Idempotent.
4. ``after_fork_in_child()`` in a forked child, where the runner's threads do not exist:
   forget them without waiting (the pool itself refuses further use in the child).

Contracts 1-8 of the engineering guide hold whatever the runner: nothing lost, nothing
run twice (except, for remote backends, the one batch that was running when a worker
died, which the backend documents), per-key order, bounded memory.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from shardflow._worker import DEFERRED, BatchOutcome

__all__ = [
    "COLLECT_RUN",
    "DEFERRED",
    "Backend",
    "BatchOutcome",
    "Deliver",
    "Handler",
    "Settle",
    "ShardRunner",
    "collect_values",
    "deliver_values",
    "start_shard_threads",
]

Handler = Callable[[Any], object]
#: ``settle(shard, batch, outcome, service_ns)``: see the module doc.
Settle = Callable[[int, list[Any], object, int], None]
#: ``deliver(items, values)``: the handler's return values (see ``wrap`` in the module doc).
Deliver = Callable[[list[Any], Any], object]
#: With a per-item handler whose values are wanted, the most items the shard loop hands
#: over in one list (whatever is queued, without waiting): one ``deliver`` call per list.
COLLECT_RUN = 64


class ShardRunner(abc.ABC):
    """Runs one pool's shard loops; made by ``Backend.runner`` (see the module doc for
    the order in which a pool calls these methods)."""

    #: Whether a breaker, limiter, rate limiter or retry composed around the handler stays
    #: one object shared by every shard. False for runners that copy the handler elsewhere
    #: (a worker process each): the pool then keeps breaker, limiter and rate limiter in
    #: this process around the runner's shipping (``_guards.DriverGuards``) and refuses
    #: retry, rather than silently splitting their state.
    shares_guards: ClassVar[bool] = True

    def batch_shape(
        self, batch_size: int, batch_timeout: float | None, lists: bool
    ) -> tuple[int, float | None, bool]:
        """How shard loops hand work to ``wrap``'s callable: ``(batch_size, batch_timeout,
        lists)`` for the core. By default what the user asked for."""
        return batch_size, batch_timeout, lists

    def wrap(self, handler: Handler, *, per_item: bool, deliver: Deliver | None = None) -> Handler:
        """The callable the shard loops call with an item or a batch; by default
        ``handler`` itself (the shard loop runs in this process), or, with ``deliver``,
        ``collect_values(handler, per_item, deliver)``."""
        if deliver is None:
            return handler
        return collect_values(handler, per_item, deliver)

    def attach(self, settle: Settle) -> None:  # noqa: B027 - optional hook
        """Receive the core's ``settle``; only runners returning ``DEFERRED`` need it."""

    def wait_settled(self, timeout: float | None) -> bool:
        """Wait until every batch handed over so far is settled; True by default (a
        runner that never defers has nothing in flight once the handler returned)."""
        return True

    @abc.abstractmethod
    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        """Start one thread of control per shard calling ``run_shard(i)``; return at once."""

    @abc.abstractmethod
    def join(self) -> None:
        """Release the runner's resources once every shard loop has returned."""

    def after_fork_in_child(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Forget resources that do not exist in a forked child (without waiting)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description for ``repr(pool)``, e.g. ``"thread"``."""


class Backend(abc.ABC):
    """Where a pool's shards run. Pass one as ``ShardedPool(..., backend=...)``, or its
    name (``"thread"``)."""

    #: The name accepted by ``backend=`` for this backend's default configuration.
    name: ClassVar[str]

    @abc.abstractmethod
    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        """A new runner for one pool of ``workers`` shards named ``pool_name``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def start_shard_threads(
    workers: int,
    target: Callable[[int], None],
    name: Callable[[int], str],
    starting: Callable[[], None],
    start_failed: Callable[[], None],
) -> list[threading.Thread]:
    """Start one daemon thread per shard running ``target(i)``, as ``ShardRunner.start``
    must: ``starting()`` before each start, ``start_failed()`` and re-raise if one fails
    (the threads already started are in the exception's ``started`` attribute)."""
    threads: list[threading.Thread] = []
    for i in range(workers):
        t = threading.Thread(target=target, args=(i,), name=name(i), daemon=True)
        starting()
        try:
            t.start()
        except BaseException as exc:
            start_failed()
            exc.started = threads  # type: ignore[attr-defined]
            raise
        threads.append(t)
    return threads


def deliver_values(
    deliver: Deliver,
    items: list[Any],
    values: list[Any],
    failures: list[tuple[int, BaseException]] | None,
) -> None:
    """Hand a per-item batch's values to ``deliver``, leaving out the failed items
    (``failures``: ``(index, exception)`` pairs, or None/empty when none failed)."""
    if not failures:
        if items:
            deliver(items, values)
        return
    failed = {i for i, _ in failures}
    kept = [i for i in range(len(items)) if i not in failed]
    if kept:
        deliver([items[i] for i in kept], [values[i] for i in kept])


def collect_values(handler: Handler, per_item: bool, deliver: Deliver) -> Handler:
    """The list handler that runs ``handler`` here and hands its return values to
    ``deliver`` (``wrap``'s contract): per item, failures go back as a ``BatchOutcome``."""
    if not per_item:

        def run_batch(batch: list[Any]) -> None:
            value = handler(batch)
            deliver(batch, value)

        return run_batch

    def run_items(batch: list[Any]) -> BatchOutcome | None:
        values: list[Any] = []
        append = values.append
        failures: list[tuple[int, BaseException]] | None = None
        for i, item in enumerate(batch):
            try:
                append(handler(item))
            except BaseException as exc:  # routed one by one by the core, as with threads
                if failures is None:
                    failures = []
                failures.append((i, exc))
                append(None)
        deliver_values(deliver, batch, values, failures)
        return BatchOutcome(failures) if failures else None

    return run_items
