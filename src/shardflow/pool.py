"""``ShardedPool``: a worker per shard, a bounded lock-free queue per worker.

The hot paths (``submit``, ``submit_many`` and the shard loop) are compiled, in
``shardflow._worker``; this module adds validation, lifecycle and the process-level
hooks (fork, interpreter exit). Where the shard loops run (threads today) is the
backend's business: ``shardflow.backends``.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, Literal, TypeVar

from shardflow import _aio, _columnar
from shardflow._columnar import DEFAULT_BATCH_ROWS, RowLedger, rows_of
from shardflow._validate import (
    check_bool,
    check_callable,
    check_choice,
    check_instance,
    check_int,
    check_seconds,
    check_str,
)
from shardflow._worker import ON_FULL_BLOCK, ON_FULL_DROP, ON_FULL_RAISE, PoolCore
from shardflow.backends import Backend, resolve_backend
from shardflow.backends._guards import DriverGuards
from shardflow.backends.base import COLLECT_RUN
from shardflow.errors import Closed, Full
from shardflow.metrics import Latency, PoolMetrics, RowMetrics, ShardMetrics
from shardflow.resilience.breaker import CircuitBreaker
from shardflow.resilience.guard import dead_letter_target, guard
from shardflow.resilience.limiter import Limiter
from shardflow.resilience.ratelimiter import RateLimiter
from shardflow.resilience.retry import Retry

__all__ = ["ARRAY_CAPACITY", "DEFAULT_CAPACITY", "MAX_CAPACITY", "ShardedPool"]

T = TypeVar("T")

#: Per-shard queue bound when ``capacity=None``. Under the GIL throughput is set by how
#: many items move per thread hand-off, and a hand-off happens when a producer fills a
#: shard, so larger rings help per-item submits until the ring stops fitting in cache. The
#: issue's prototype measured 0.73x / 1.24x / 1.49x the SimpleQueue pool at 1,024 / 8,192 /
#: 65,536 slots; on our noisy 2-core machines 8,192 vs 65,536 vs 262,144 slots came out
#: within noise of each other (ratios 0.9-1.1x either way, several runs). 65,536 slots cost
#: 512 KiB of pointers per shard, touched only as the ring fills (calloc'd pages).
DEFAULT_CAPACITY = 65536
#: Per-shard queue bound, in batches, of an array pool (``arrays=True``) when
#: ``capacity=None``: with the default 65,536-row batches a queued batch is ~1.5 MiB for
#: three 8-byte columns, so 16 keep every worker busy while bounding what is queued.
ARRAY_CAPACITY = 16
MAX_CAPACITY = 1 << 30

# asubmit's back-off while a shard is full: short at first (a worker frees room within
# microseconds when it is draining), capped so that a long wait costs ~500 wake-ups/s.
_ASUBMIT_FIRST_DELAY = 50e-6
_ASUBMIT_MAX_DELAY = 2e-3
_ASUBMIT_FOREVER = 1e9  # seconds; longer timeouts (and inf) mean "no limit"

_ON_FULL = {"block": ON_FULL_BLOCK, "raise": ON_FULL_RAISE, "drop": ON_FULL_DROP}
_names = itertools.count(1)
_pool_ids = itertools.count(1)
_live: weakref.WeakSet[ShardedPool[Any]] = weakref.WeakSet()
_live_lock = threading.Lock()


class ShardedPool(PoolCore, Generic[T]):
    """A pool of worker threads, each draining its own bounded queue (shard).

    ``handler(item)`` is called once for every submitted item (``handler(list_of_items)``
    when ``batch_size > 1``). Items are routed round-robin, or by ``key``: an item goes to
    shard ``hash(key(item)) % workers`` and items with the same key are handled in the
    order one thread submitted them.

    Args:
        handler: called by the workers with one item, or a list of items when
            ``batch_size > 1``. Its return value is ignored.
        workers: number of shards and worker threads; default ``os.cpu_count()``.
        key: ``key(item)`` gives a hashable routing key; None routes round-robin.
        capacity: per-shard queue bound, rounded up to a power of two; default
            ``DEFAULT_CAPACITY``. Memory per slot is one pointer.
        batch_size: with ``> 1`` the handler gets lists of up to this many items.
        batch_timeout: with batches, how long (seconds) a partial batch may wait for more
            items, counted from its first item. None: hand over what is queued without
            waiting (batches are then as full as the backlog allows).
        on_full: what ``submit`` does when the shard is full: ``"block"`` waits (GIL
            released, Ctrl-C works), ``"raise"`` raises ``shardflow.Full``, ``"drop"``
            drops the item, counts it and returns False.
        on_error: ``on_error(item_or_batch, exc)`` for handler exceptions; None logs them
            to the ``"shardflow"`` logger. Either way they are counted and the worker
            goes on.
        name: prefix of the worker threads' names.
        ordered: with a ``key``, keep items of one key in submission order (default).
            ``ordered=False`` gives that up so that keyed items may be stolen too.
        steal: let an idle worker take half of a loaded shard's queue (steal-half). The
            default is True wherever it is safe: for pools without ``key`` (no order is
            promised) and for ``ordered=False``. Keyed, ordered pools never steal, because
            a stolen item could overtake an earlier item of the same key; asking for
            ``steal=True`` there raises ``ValueError``.
        reuse_batches: recycle the lists handed to a batch handler. A list the handler
            does not keep (no reference left once it returns) is emptied and refilled for
            the next batch; a list it keeps is left alone. Pass False for handlers that
            rely on the list's identity after returning.
        lists: hand the handler lists even with ``batch_size=1`` (batch handlers that
            should not care how big batches are).
        breaker, limiter, rate_limiter, retry: guards for a downstream service, composed
            around ``handler`` once (outermost first: retry, rate limiter, limiter,
            breaker). Each retry attempt takes a token and a permit and is seen by the
            breaker; an open breaker's ``CircuitOpen`` is never retried. With a backend
            that runs the handler elsewhere (process, Ray) the first three stay in this
            process around the shipping of batches (see the README) and retry is refused.
        dead_letter: where an item (or batch) goes when it still fails after its retries
            or is refused by an open breaker, together with its exception: a callable
            ``dead_letter(item, exc)`` or a bounded queue (anything with ``put_nowait``)
            that receives ``(item, exc)`` tuples. Such items count as ``dead_lettered``;
            if the dead letter refuses one (a full queue), it counts as ``failed`` and goes
            to ``on_error``/logging instead. Accounting stays exact:
            ``submitted == processed + failed + dead_lettered + dropped + returned``.
        backend: where the shard loops run: ``"thread"`` (the default: daemon threads of
            this process) or a ``shardflow.backends.Backend``.
        on_results: ``on_results(items, values)`` receives the handler's return values in
            this process, whatever the backend (from worker processes and Ray actors too):
            with a per-item handler, ``values[i]`` is what ``handler(items[i])`` returned,
            for runs of up to a few dozen items (failed items are routed as usual and left
            out of both lists); with a list handler, ``on_results(batch, value)`` gets what
            the call returned. Called in the shard's dispatch thread, once per batch, one
            call at a time per shard; an exception it raises fails that batch as a whole.
            With it, a per-item handler's items are handed over in lists (the metrics count
            those lists as batches).
        arrays: a pool of numpy array batches, fed by ``submit_array`` (see there): the
            handler gets one batch (a dict of arrays, or an array) per call, ``capacity``
            counts batches (default ``ARRAY_CAPACITY``), rows are counted
            (``row_metrics()``), and item-level ``submit``/``submit_many`` are refused
            (``TypeError``: rows reach their shard by the partition kernel's hash, which
            ``key=`` callables do not share). Needs ``key=None``, ``batch_size=1`` and
            ``lists=False``: rows per batch are ``submit_array``'s ``batch_size``.

    Exceptions that are not ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) raised
    by the handler are counted and routed like the others, the worker goes on, and the
    first one is re-raised in the caller by the next ``join()`` / ``shutdown()`` (or the
    ``with`` block's exit), so that a handler can still stop the program.

    Lifecycle: ``close()`` refuses new items and lets workers drain; ``join()`` waits;
    ``shutdown(cancel=True)`` hands back what was not started; the context manager closes
    and joins. At interpreter exit live pools are closed and drained, as
    ``ThreadPoolExecutor`` does, except those shut down with ``wait=False``. A pool
    inherited through ``fork()`` raises ``RuntimeError`` in the child.

    Under the GIL, more workers speed up handlers that release it (I/O, hashing large
    buffers, numpy, compiled code); pure-Python handlers are serialized by the GIL
    whatever the pool, and shardflow's gain there is the low cost per item.

    Example:
        >>> import shardflow
        >>> seen = []
        >>> with shardflow.ShardedPool(seen.append, workers=2, key=lambda x: x % 10) as pool:
        ...     pool.submit_many(range(1000))
        1000
        >>> len(seen)
        1000
    """

    def __init__(
        self,
        handler: Callable[[Any], object],
        *,
        workers: int | None = None,
        key: Callable[[T], Hashable] | None = None,
        capacity: int | None = None,
        batch_size: int = 1,
        batch_timeout: float | None = None,
        on_full: Literal["block", "raise", "drop"] = "block",
        on_error: Callable[[Any, BaseException], object] | None = None,
        name: str | None = None,
        ordered: bool = True,
        steal: bool | None = None,
        reuse_batches: bool = True,
        lists: bool = False,
        breaker: CircuitBreaker | None = None,
        limiter: Limiter | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: Retry | None = None,
        dead_letter: Callable[[Any, BaseException], object] | Any | None = None,
        backend: str | Backend = "thread",
        on_results: Callable[[list[Any], Any], object] | None = None,
        arrays: bool = False,
    ) -> None:
        check_callable("handler", handler)
        if workers is None:
            workers = os.cpu_count() or 1
        check_int("workers", workers, lo=1, hi=4096)
        check_callable("key", key, optional=True)
        check_bool("arrays", arrays)
        if arrays:
            _check_array_pool(key, batch_size, lists)
        if capacity is None:
            capacity = ARRAY_CAPACITY if arrays else DEFAULT_CAPACITY
        check_int("capacity", capacity, lo=1, hi=MAX_CAPACITY)
        check_int("batch_size", batch_size, lo=1, hi=1 << 20)
        check_seconds("batch_timeout", batch_timeout)
        check_choice("on_full", on_full, _ON_FULL)
        check_callable("on_error", on_error, optional=True)
        check_callable("on_results", on_results, optional=True)
        check_str("name", name)
        check_bool("ordered", ordered)
        check_bool("steal", steal, optional=True)
        check_bool("reuse_batches", reuse_batches)
        check_bool("lists", lists)
        check_instance("breaker", breaker, CircuitBreaker)
        check_instance("limiter", limiter, Limiter)
        check_instance("rate_limiter", rate_limiter, RateLimiter)
        check_instance("retry", retry, Retry)
        dead_letter_fn = None if dead_letter is None else dead_letter_target(dead_letter)
        resolved_backend = resolve_backend(backend)
        # An array pool keeps the order of keyed submit_array rows unless ordered=False.
        keeps_order = (key is not None or arrays) and ordered
        if steal is None:
            steal = not keeps_order
        elif steal and keeps_order:
            raise ValueError(
                "steal=True would let a stolen item overtake an earlier item of the same key; "
                "pass ordered=False to allow stealing keyed items, or leave steal=None"
            )

        name = name or f"ShardedPool-{next(_names)}"
        runner = resolved_backend.runner(pool_name=name, workers=workers)
        per_item = batch_size == 1 and not lists
        driver_guards: DriverGuards | None = None
        if not runner.shares_guards:
            # The handler runs elsewhere (one copy per worker): guards stay here, around
            # the shipping of each batch (backends/_guards.py). A retry cannot: it would
            # run an item again after later items of its key.
            if retry is not None:
                raise ValueError(
                    f"retry= is not supported with backend={runner.describe()!r}: retried "
                    "here, an item would run again after later items of its key; retry "
                    "inside the handler (shardflow.Retry(...).call(fn, item)), or use the "
                    "thread backend"
                )
            if breaker is not None or limiter is not None or rate_limiter is not None:
                driver_guards = DriverGuards(
                    per_item=per_item,
                    breaker=breaker,
                    limiter=limiter,
                    rate_limiter=rate_limiter,
                )
        batch_size, batch_timeout, lists = runner.batch_shape(batch_size, batch_timeout, lists)
        if on_results is not None and not lists:
            # Values are collected per list: whatever is queued, without waiting.
            batch_size, batch_timeout, lists = COLLECT_RUN, None, True
        if driver_guards is not None:
            guarded = handler
            most = driver_guards.max_ship
            if most is not None:
                batch_size = min(batch_size, most)
        else:
            guarded = guard(
                handler, breaker=breaker, limiter=limiter, rate_limiter=rate_limiter, retry=retry
            )
        # ``deliver`` only when wanted: runners written before it keep working without it.
        wrapped = (
            runner.wrap(guarded, per_item=per_item)
            if on_results is None
            else runner.wrap(guarded, per_item=per_item, deliver=on_results)
        )
        if driver_guards is not None:
            wrapped = driver_guards.wrap(wrapped)
        settle: Callable[[int, list[Any], object, int], None] = self._settle
        core_key: Callable[[Any], Hashable] | None = key
        self._rows: RowLedger | None = None
        if arrays:
            # One array batch per message for runners that ship lists: a batch is already
            # thousands of rows, and several would not fit a process ring (ring_bytes).
            batch_size = 1
            ledger = self._rows = RowLedger()
            # Outermost on the way in, innermost on the way back (after the driver guards
            # mapped a shipped sub-list's outcome back to the pool's batch): the ledger
            # counts the outcomes the core counts.
            wrapped = ledger.wrap_handler(wrapped, lists)
            settle = ledger.wrap_settle(settle)
            if dead_letter_fn is not None:
                dead_letter_fn = ledger.wrap_dead_letter(dead_letter_fn)
            core_key = _refuse_items  # submit_array pushes to a shard by index, never routes
        self.arrays: bool = arrays
        self._next_slice_shard = 0
        self._core_init(
            wrapped,
            workers,
            core_key,
            capacity,
            batch_size,
            batch_timeout,
            _ON_FULL[on_full],
            on_error,
            steal,
            reuse_batches,
            dead_letter_fn,
            lists,
            # Handlers that ship batches elsewhere may wait for room in a window: what
            # has not been shipped stays in the ring, where cancel/take-back reach it.
            not runner.shares_guards,
        )
        runner.attach(settle if driver_guards is None else driver_guards.wrap_settle(settle))
        # A runner that keeps batches in flight elsewhere gates its shard's stealing
        # (the process backend: only while its worker runs low; _sched.h, "Gated
        # thieves").
        if steal and hasattr(runner, "gate_steal"):
            runner.gate_steal = self._gate_steal
        # A runner that can ship one item from the submitting thread (the process backend:
        # one record into an idle worker's task ring, no dispatch-thread wake-up) gets
        # the items of an idle shard directly; only for per-item handlers without driver
        # guards (those admit and count per shipped batch, in the dispatch thread) and
        # without arrays. Looked up on the type: the executor's runner wraps the process
        # runner and its items (futures) need its own hand-over, so it has none.
        direct = getattr(type(runner), "direct_ship", None)
        if direct is not None and per_item and driver_guards is None and not arrays:
            runner.count_direct = self._count_direct  # type: ignore[attr-defined]
            self._set_direct(runner.direct_ship)  # type: ignore[attr-defined]
        self.breaker = breaker
        self.limiter = limiter
        self.rate_limiter = rate_limiter
        self.retry = retry
        self.on_results = on_results
        self.ordered: bool = ordered
        self.name: str = name
        self.backend: Backend = resolved_backend
        self._runner = runner
        self._pool_id = next(_pool_ids)  # tells snapshots of same-named pools apart
        self.on_full: str = on_full
        self.batch_timeout: float | None = batch_timeout
        self._lifecycle = threading.Lock()
        self._closed = False
        self._exit_wait = True
        #: What the fork error calls this pool: the object the user holds (a
        #: BatchProcessor, Executor or Pipeline built on it says so).
        self._fork_owner = "ShardedPool"
        with _live_lock:
            _live.add(self)
        self._start_workers()

    def _start_workers(self) -> None:
        try:
            self._runner.start(self._run_worker, self._worker_starting, self._worker_start_failed)
        except BaseException:
            self.shutdown(wait=True)
            raise

    # submit(item, timeout=None) -> bool and submit_many(iterable, timeout=None) -> int
    # are inherited from the compiled core.

    async def asubmit(self, item: T, timeout: float | None = None) -> bool:
        """``submit`` for asyncio: wait for room in the shard without blocking the loop.

        Tries a non-blocking submit; while the shard is full (``on_full="block"``) it
        backs off with ``await asyncio.sleep``, from 50 us doubling to 2 ms, and tries
        again. An item is therefore queued by exactly one attempt, and only between two
        awaits: if the task is cancelled (or ``timeout`` runs out: ``Full``, carrying
        ``unsent=[item]``) the item was not submitted, never half-submitted or submitted
        twice. Returns True when queued; with ``on_full="drop"`` or ``"raise"`` it does
        what ``submit`` does at once. Raises ``Closed`` after ``close()``.

        Example:
            >>> import asyncio, shardflow
            >>> seen = []
            >>> pool = shardflow.ShardedPool(seen.append, workers=1)
            >>> asyncio.run(pool.asubmit("hello"))
            True
            >>> _ = pool.shutdown()
            >>> seen
            ['hello']
        """
        check_seconds("timeout", timeout, allow_inf=True)
        deadline = None
        if timeout is not None and timeout < _ASUBMIT_FOREVER:
            deadline = time.monotonic() + timeout
        delay = _ASUBMIT_FIRST_DELAY
        while True:
            try:
                return self.submit(item, 0)
            except Full as exc:
                if self.on_full != "block":
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    exc.args = (f"shard stayed full ({self.capacity} items) for {timeout} s",)
                    raise
            await _aio.sleep(delay)
            delay = min(delay * 2, _ASUBMIT_MAX_DELAY)

    def submit_array(
        self,
        data: Any,
        key: Any = None,
        *,
        batch_size: int = DEFAULT_BATCH_ROWS,
        copy: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Queue the rows of a numpy table as array batches (a pool made with
        ``arrays=True``); returns how many rows were queued (dropped rows not counted).

        ``data`` is a numpy array (plain or structured; rows are the first axis) or a dict
        of numpy arrays with as many rows each. The handler gets batches of at most
        ``batch_size`` rows in the same form: a dict of arrays for a dict, an array for an
        array (``batch["price"]`` reads a column either way).

        Keyed (``key`` names a column / field, or is an array of one key per row:
        integers or fixed-width bytes ``'S'``): the compiled kernel hashes the keys and
        partitions the rows by shard with the GIL released (a stable counting-sort
        scatter, ``CHUNK_ROWS`` rows per pass, so the partition buffers alive at once are
        bounded by the pool's ``capacity``, never a second copy of a large input). Rows of
        one key reach one shard and are handled in source order, also relative to later
        ``submit_array`` calls (unless the pool was made with ``ordered=False``). The key
        hash is the kernel's (splitmix64 of the integer value; bytes without trailing
        NULs), not Python's ``hash``: that is why array pools refuse ``key=`` callables
        and item-level submits. Every batch but the last of each shard holds
        ``batch_size`` rows; a batch never spans two calls (no deadline: each call hands
        over its tail at once).

        Unkeyed: consecutive zero-copy slices of ``batch_size`` rows, spread round-robin
        over the shards (views of ``data``: do not change it while they are queued).

        With the thread backend batches are views (of ``data``, or of a partition
        buffer); other backends send each batch as one message (``"process"``: pickled
        with protocol 5 into the shard's ring, so it must fit in half of ``ring_bytes``,
        checked here; ``"ray"``: one actor call). Guards (breaker, limiters) and
        ``on_results`` see one batch as one item.

        Args:
            data: the table (see above).
            key: None (unkeyed), a column/field name, or an array of keys.
            batch_size: rows per batch, 1 to 2**24.
            copy: copy non-contiguous columns instead of refusing them.
            timeout: seconds to wait, in all, for room in full shards
                (``on_full="block"``); ``Full`` afterwards.

        Returns:
            Rows queued. ``row_metrics()`` counts them, and their outcomes.

        Raises:
            TypeError: ``data`` is not a numpy array or dict of them, object dtypes, keys
                that are neither integers nor bytes, a pool without ``arrays=True``.
            ValueError: ragged columns, 0-d arrays, non-contiguous columns without
                ``copy``, a key column that does not exist, keys of the wrong length.
            Full, Closed: as ``submit``; the exception carries ``submitted`` (rows queued
                before it).

        Example:
            >>> import numpy as np, shardflow
            >>> sums = []
            >>> pool = shardflow.ShardedPool(lambda b: sums.append(b["x"].sum()),
            ...                              workers=2, arrays=True)
            >>> pool.submit_array({"k": np.arange(10) % 3, "x": np.ones(10)}, key="k")
            10
            >>> _ = pool.shutdown()
            >>> float(sum(sums)), pool.row_metrics().processed
            (10.0, 10)
        """
        if not self.arrays:
            raise TypeError(
                f"{self.name}: submit_array() needs a pool made with arrays=True (its "
                "handler then takes array batches)"
            )
        check_int("batch_size", batch_size, lo=1, hi=1 << 24)
        check_bool("copy", copy)
        check_seconds("timeout", timeout, allow_inf=True)
        self._check_fork()
        if self._closed:
            raise Closed(f"{self.name}: submit_array() after close() or shutdown()")
        cols, arr, rows, keys = _columnar.prepare(data, key, copy)
        self._check_ship_size(_columnar.row_bytes(cols, arr) * min(batch_size, max(rows, 1)))
        deadline = None
        if timeout is not None and timeout < _ASUBMIT_FOREVER:
            deadline = time.monotonic() + timeout
        ledger = self._rows
        assert ledger is not None
        queued = 0
        try:
            if keys is None:
                shard = self._next_slice_shard
                for n, batch in _columnar.slice_batches(cols, arr, rows, batch_size):
                    queued += self._push_batch(shard, n, batch, deadline, timeout)
                    shard = (shard + 1) % self.workers
                self._next_slice_shard = shard
            else:
                for shard, n, batch in _columnar.keyed_batches(
                    cols, arr, keys, rows, self.workers, batch_size
                ):
                    queued += self._push_batch(shard, n, batch, deadline, timeout)
        except BaseException as exc:
            try:
                exc.submitted = queued  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise
        return queued

    def _push_batch(
        self, shard: int, rows: int, batch: Any, deadline: float | None, timeout: float | None
    ) -> int:
        """Queue one array batch on ``shard``: its rows queued (0 if dropped)."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ok = self._submit_to(shard, batch, left)
        except Full as exc:
            exc.args = (f"shard {shard} stayed full ({self.capacity} batches) for {timeout} s",)
            raise
        ledger = self._rows
        assert ledger is not None
        ledger.add("submitted", rows)
        if not ok:
            ledger.add("dropped", rows)
            return 0
        return rows

    def _check_ship_size(self, batch_bytes: int) -> None:
        ring_bytes = getattr(self._runner, "ring_bytes", None)
        # Half the ring: a record also carries its header and pickle framing.
        if isinstance(ring_bytes, int) and batch_bytes > ring_bytes // 2:
            raise ValueError(
                f"batch_size: a batch of these rows takes {batch_bytes} bytes, more than half "
                f"the process backend's ring ({ring_bytes} bytes); pass a smaller batch_size "
                "or ProcessBackend(ring_bytes=...)"
            )

    def row_metrics(self) -> RowMetrics:
        """Row counts of an array pool (see ``RowMetrics``); ``metrics()`` counts its
        batches. Exact once drained (``flush()``/``join()``)."""
        ledger = self._rows
        if ledger is None:
            raise TypeError(f"{self.name}: row_metrics() is for pools made with arrays=True")
        with ledger._lock:
            return RowMetrics(
                submitted=ledger.submitted,
                processed=ledger.processed,
                failed=ledger.failed_any - ledger.dead_lettered,
                dead_lettered=ledger.dead_lettered,
                dropped=ledger.dropped,
                returned=ledger.returned,
                pool=self.name,
            )

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``shutdown()`` was called."""
        return self._closed

    def close(self) -> None:
        """Refuse new items (``submit`` raises ``Closed``); workers finish what is queued.
        Idempotent."""
        self._check_fork()
        with self._lifecycle:
            self._closed = True
            self._close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker has finished; returns False if ``timeout`` ran out.

        Only meaningful after ``close()``/``shutdown()`` (before, workers never finish and
        this raises ``RuntimeError``). The wait releases the GIL and is interrupted by
        Ctrl-C. Re-raises the first ``KeyboardInterrupt``/``SystemExit`` a handler raised.
        """
        self._check_fork()
        if not self._closed:
            raise RuntimeError(
                f"{self.name}: join() before close() would wait forever; call close() or "
                "shutdown() first"
            )
        check_seconds("timeout", timeout, allow_inf=True)
        if not self._wait_workers(timeout):
            return False
        self._runner.join()
        fatal = self._take_fatal()
        if fatal is not None:
            raise fatal
        return True

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> list[Any]:
        """Stop the pool.

        ``cancel=False``: close, and with ``wait`` join (queued items are all handled).
        ``cancel=True``: stop taking items and return every item that was not started, in
        a list (nothing is lost: each item is either handled once or returned once). With
        ``wait=True`` workers stop after the handler call in progress; with
        ``wait=False`` items a worker already took from its queue are still handled and
        the list holds what was still queued.

        If a handler raised ``KeyboardInterrupt``/``SystemExit`` it is re-raised here
        (with ``wait``); the returned items are then on the exception as ``returned``.
        """
        self._check_fork()
        with self._lifecycle:
            self._closed = True
            if cancel:
                self._stop(wait)
            else:
                self._close()
            if not wait:
                self._exit_wait = False
        returned: list[Any] = []
        if wait:
            self._wait_workers(None)
            self._runner.join()
        if cancel:
            returned = self._take_leftovers()
            if self._rows is not None and returned:
                self._rows.add("returned", rows_of(returned))
        if wait:
            fatal = self._take_fatal()
            if fatal is not None:
                # Exception instances take attributes; typeshed does not declare this one.
                fatal.returned = returned  # type: ignore[attr-defined]
                raise fatal
        return returned

    def terminate_workers(self) -> list[Any]:
        """``backend="process"`` only: end every worker process now with SIGTERM (as
        ``ProcessPoolExecutor.terminate_workers()`` does in Python 3.14), without
        replacing it, then ``shutdown(cancel=True)``.

        Nothing is lost, and nothing is counted twice: the items still queued are
        returned (the list, as ``shutdown(cancel=True)`` returns them); the items of the
        batches the workers held that had not finished fail with ``WorkerLost``
        (``attempts == 0``), routed like any failure (``on_error``, dead letter); those
        that finished before count as processed. A handler that catches SIGTERM keeps
        its worker alive until its batches are done (``kill_workers`` cannot be caught).
        Raises ``TypeError`` for other backends (threads cannot be ended from outside).

        Example::

            pool = shardflow.ShardedPool(mymodule.handle, workers=2, backend="process")
            pool.submit_many(items)
            not_started = pool.terminate_workers()
        """
        return self._end_workers(signal.SIGTERM, "terminate_workers")

    def kill_workers(self) -> list[Any]:
        """``terminate_workers()`` with SIGKILL (as ``ProcessPoolExecutor.kill_workers()``
        in Python 3.14): the workers cannot catch it. Same accounting: queued items are
        returned, unfinished items of the batches in flight fail with ``WorkerLost``."""
        return self._end_workers(signal.SIGKILL, "kill_workers")

    def _end_workers(self, sig: int, what: str) -> list[Any]:
        end = getattr(self._runner, "end_workers", None)
        if end is None:
            raise TypeError(
                f"{self.name}: {what}() ends worker processes, and this pool's shards run on "
                f"{self._runner.describe()}; it needs backend='process'"
            )
        self._check_fork()
        with self._lifecycle:
            # Stop the shard loops first (queued items stay to be returned), then end the
            # workers: nothing new is shipped to a worker that is going away.
            self._closed = True
            self._stop(True)
        end(sig, what)
        return self.shutdown(cancel=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Hand every partial batch to the handler now, without waiting for it to fill or
        for its deadline; items submitted before the call are included. Waits until each
        worker did (returns False if ``timeout`` ran out). Raises ``Closed`` after
        ``close()`` (closing flushes anyway). In stealing pools, items stolen while a
        flush is under way are handed over before it returns too (see ``_sched.h``). With a
        backend that keeps batches in flight elsewhere (``RayBackend``), it also waits for
        their outcomes (they are then counted in ``metrics()``)."""
        self._check_fork()
        if self._closed:
            raise Closed(f"{self.name}: flush() after close(); closing already flushes")
        check_seconds("timeout", timeout, allow_inf=True)
        deadline = None
        if timeout is not None and timeout < _ASUBMIT_FOREVER:
            deadline = time.monotonic() + timeout
        if not self._flush(timeout):
            return False
        # A backend with batches in flight (DEFERRED) waits for their outcomes too.
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._runner.wait_settled(left)

    def snapshot(self) -> PoolMetrics:
        """A snapshot of the counters and latency histograms: totals, merged latencies
        (``queue_wait``, ``service_time``) and one ``ShardMetrics`` per shard, stamped
        with ``taken_at`` (``time.monotonic()``). ``later - earlier`` gives a
        ``MetricsDelta`` (counts and rates over the interval). Cheap enough to poll: no
        lock, no pause of the workers (each field is exact, the set is not an atomic cut).
        """
        taken_at = time.monotonic()
        per_shard, (qw_all, st_all) = self._shard_latencies()
        shards = tuple(
            ShardMetrics(
                i,
                *row,
                queue_wait=Latency.from_packed(*qw),
                service_time=Latency.from_packed(*st),
            )
            for i, (row, (qw, st)) in enumerate(zip(self._shard_stats(), per_shard, strict=True))
        )
        return PoolMetrics.from_shards(
            shards,
            pool=self.name,
            taken_at=taken_at,
            pool_id=self._pool_id,
            queue_wait=Latency.from_packed(*qw_all),
            service_time=Latency.from_packed(*st_all),
        )

    def metrics(self) -> PoolMetrics:
        """The same as ``snapshot()``."""
        return self.snapshot()

    def __enter__(self) -> ShardedPool[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Like ThreadPoolExecutor: whatever happened in the block, what was submitted is
        # handled (nothing is lost). A second Ctrl-C interrupts the wait.
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        where = self._runner.describe()
        return (
            f"<ShardedPool {self.name!r} {state} workers={self.workers} "
            f"capacity={self.capacity} batch_size={self.batch_size} steal={self.steal}"
            + ("" if where == "thread" else f" backend={where}")
            + ">"
        )


def _check_array_pool(key: Any, batch_size: int, lists: bool) -> None:
    if key is not None:
        raise ValueError(
            "key= must be None with arrays=True: an array pool routes rows by the key "
            "column given to submit_array(data, key=...), hashed by the partition kernel "
            "(not by Python's hash, which a key= callable would use for item-level submits)"
        )
    if batch_size != 1 or lists:
        raise ValueError(
            "batch_size must be 1 and lists False with arrays=True: the handler gets one "
            "array batch per call; rows per batch are submit_array(batch_size=...)"
        )


def _refuse_items(item: object) -> Hashable:
    """The core's key function of an array pool: item-level submits are refused."""
    raise TypeError(
        "this pool was made with arrays=True: queue rows with submit_array(); submit() and "
        "submit_many() are refused (rows reach their shard by the partition kernel's hash)"
    )


def _after_fork_in_child() -> None:
    for pool in list(_live):
        pool._mark_forked()
        pool._runner.after_fork_in_child()
    # The parent's lock may have been held by another thread at fork time.
    global _live_lock
    _live_lock = threading.Lock()


def _at_exit() -> None:
    for pool in list(_live):
        if not pool._exit_wait:
            continue
        try:
            pool._check_fork()
        except RuntimeError:
            continue
        pool._close()
        pool._closed = True
        pool._wait_workers(None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
