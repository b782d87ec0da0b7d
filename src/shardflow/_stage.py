"""One stage of a ``shardflow.Pipeline``: its batch handler, its counters and its pool.

A stage is a ``ShardedPool`` in list mode. Its handler applies the user's function to a
whole batch and hands the outputs to the next stage with one ``submit_many`` (which blocks,
GIL released, while the next stage is full: that is the backpressure). Nothing here runs
per item except inside compiled ``map_extend`` and ``list``/``compress``/``chain`` calls
over a batch.

Exactly once, also when the function raises: outputs are collected with the compiled
``map_extend(out, fn, items)`` (``shardflow._apply``), which appends ``fn(items[i])`` from
``i = len(out)`` on and keeps what it appended before an exception. So the failing item is
``items[len(out)]``; the loop appends a placeholder and resumes after it. No item is ever
given to ``fn`` twice.

Ordered pipelines move *units* instead of items: a unit ``(seq, count, values)`` stands
for ``count`` consecutive source items starting at index ``seq``; each stage replaces
``values`` with their outputs (fewer when filtered or failed, more after ``flat_map``), in
order, and every unit reaches the pipeline's reorder buffer, which releases the units'
values in ``seq`` order. A unit holds up to a stage batch of items, so ordering costs a
little Python per unit, not per item.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from itertools import chain, compress
from typing import Any

from shardflow._apply import map_extend
from shardflow.backends import Backend
from shardflow.errors import Closed
from shardflow.metrics import PoolMetrics
from shardflow.pool import ShardedPool

__all__ = ["KINDS", "Stage", "apply_each"]

#: Operators a stage can be; ``sink`` ends a pipeline.
KINDS = ("map", "filter", "flat_map", "batch", "sink")

#: Marks a failed item in ``apply_each``'s result (aligned with the inputs).
FAILED: Any = object()

Emit = Callable[[list[Any]], object]
DeadLetter = Callable[[Any, BaseException], object]


def apply_each(
    fn: Callable[[Any], Any], items: list[Any], fail: Callable[[int, BaseException], None]
) -> tuple[list[Any], int]:
    """``[fn(x) for x in items]`` calling ``fn`` exactly once per item; an item whose call
    raises an ``Exception`` gets ``FAILED`` in the result and ``fail(index, exc)`` is
    called. Returns ``(results aligned with items, number of failures)``."""
    out: list[Any] = []
    failures = 0
    while True:
        try:
            map_extend(out, fn, items)
            return out, failures
        except Exception as exc:
            failures += 1
            fail(len(out), exc)
            out.append(FAILED)


def _as_list(fn: Callable[[Any], Iterable[Any]]) -> Callable[[Any], list[Any]]:
    # flat_map: the expansion is materialized inside the call, so an error raised while
    # iterating it is the item's error, attributed to the item, before any output escapes.
    def expand(x: Any) -> list[Any]:
        return list(fn(x))

    return expand


class Stage:
    """A stage's configuration, counters and (once started) pool. Internal to Pipeline."""

    def __init__(
        self,
        kind: str,
        name: str,
        fn: Callable[[Any], Any] | None,
        *,
        workers: int,
        key: Callable[[Any], Hashable] | None,
        capacity: int,
        batch_size: int,
        batch_timeout: float | None,
        dead_letter: DeadLetter | list[Any] | None,
        pool_options: dict[str, Any],
        backend: Backend | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.fn = fn
        self.workers = workers
        self.key = key
        self.capacity = capacity
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.dead_letter = dead_letter
        self.pool_options = pool_options
        #: None: the stage's workers are threads running ``make_handler``'s closure; else
        #: the backend of its worker processes / actors (``shardflow._remote_stage``).
        self.backend = backend
        #: What ``backend=`` the stage was given (a name or the ``Backend`` itself; the
        #: pipeline's default when the stage gave none): stages fuse only with stages
        #: given the same one.
        self.backend_spec: Any = None
        self.pool: ShardedPool[Any] | None = None
        self.units = False  # set by the pipeline: this stage moves (seq, values) units
        # Set by the pipeline for a remote stage of an ordered pipeline whose units hold
        # several items: its pool moves the units' values one by one (``_remote_stage``).
        self.pieces = False
        # Counters, updated once per batch under the lock (several workers may run the
        # handler at once; on free-threaded builds `+=` is not atomic).
        self.lock = threading.Lock()
        self.received = 0
        self.succeeded = 0
        self.emitted = 0
        self.filtered = 0
        self.failed = 0
        self.dead_lettered = 0
        self.unsent = 0
        self.errors: list[tuple[Any, BaseException]] = []
        self.final_metrics: PoolMetrics | None = None

    # ------------------------------------------------------------------ errors

    def route_error(
        self, item: Any, exc: BaseException, fail_fast: bool, record: Callable[..., None]
    ) -> None:
        """An item's function raised: fail fast records it (the pipeline stops its source
        and raises the first one); continue sends it to the dead letter, else keeps it."""
        if fail_fast:
            with self.lock:
                self.failed += 1
                self.errors.append((item, exc))
            record(exc, self.name)
            return
        dl = self.dead_letter
        if dl is None:
            with self.lock:
                self.dead_lettered += 1
                self.errors.append((item, exc))
            return
        try:
            if isinstance(dl, list):
                with self.lock:
                    dl.append((item, exc))
            else:
                dl(item, exc)
        except Exception as refused:
            # The dead letter refused it: a failure, kept in the report, never dropped.
            refused.__context__ = exc
            with self.lock:
                self.failed += 1
                self.errors.append((item, refused))
            return
        with self.lock:
            self.dead_lettered += 1

    def key_failed(self, item: Any, exc: BaseException, record: Callable[..., None]) -> Any:
        """With ``errors="continue"``: this stage's key function raised for ``item`` (a
        unit with ``ordered=True``), so it never entered the pool. It is received here and
        dead-lettered like an item whose function raised. Returns what to submit in its
        place: nothing for an item; for a unit, the unit emptied of its values (the reorder
        buffer waits for every unit; an empty one is routed by its ``seq``)."""
        values = item[2] if self.units else [item]
        with self.lock:
            self.received += len(values)
        for value in values:
            self.route_error(value, exc, False, record)
        return (item[0], item[1], []) if self.units else None

    def skipping_bad_keys(self, submit: Emit, record: Callable[..., None]) -> Emit:
        """``submit`` (this stage's ``submit_many``) for ``errors="continue"``: an item whose
        key function raises goes to ``key_failed`` and the rest still go in (those staged
        before it are submitted again: their key function runs a second time). Other errors
        (``Closed`` when the pipeline stops) propagate; a ``Closed`` carries in ``unsent``
        everything of ``items`` not sent and not accounted for, and ``submitted`` is set
        to ``len(items)`` so that the caller's ``items[submitted + len(unsent):]`` is
        empty."""

        def submit_all(items: list[Any]) -> None:
            total = len(items)
            made: list[Any] = []  # emptied units put in place of refused ones
            while True:
                try:
                    submit(items)
                    return
                except Closed as exc:
                    # Not sent: what submit_many says, and everything after it; minus the
                    # emptied units (their values are accounted for already). `submitted`
                    # is set so that the caller's slice of its own list is empty.
                    unsent = list(getattr(exc, "unsent", ()))
                    unsent += items[getattr(exc, "submitted", 0) + len(unsent) :]
                    exc.unsent = [u for u in unsent if not any(u is m for m in made)]
                    exc.submitted = total
                    raise
                except Exception as exc:
                    # submit_many's `unsent` starts with the item it was routing when the
                    # key function raised, then what it had staged (all from before it).
                    unsent = list(getattr(exc, "unsent", ()))
                    if not unsent:
                        raise
                    rest = unsent[1:] + items[getattr(exc, "submitted", 0) + len(unsent) :]
                    instead = self.key_failed(unsent[0], exc, record)
                    if instead is not None:
                        made.append(instead)
                        rest.insert(0, instead)
                    items = rest
                    if not items:
                        return

        return submit_all

    def count(self, n_in: int, n_fail: int, n_out: int) -> None:
        """Count one handled run: ``n_in`` values in, ``n_fail`` of them failed (routed
        already), ``n_out`` values out (for a filter, the values kept)."""
        with self.lock:
            self.received += n_in
            if self.kind == "filter":
                self.succeeded += n_out
                self.filtered += n_in - n_fail - n_out
            else:
                self.succeeded += n_in - n_fail
            self.emitted += n_out

    # ------------------------------------------------------------------ handlers

    def make_handler(
        self,
        emit: Emit,
        fail_fast: bool,
        record: Callable[..., None],
    ) -> Callable[[list[Any]], None]:
        """The batch handler given to this stage's pool."""
        if self.kind == "batch":
            return self._batch_handler(emit, record)
        assert self.fn is not None
        fn = _as_list(self.fn) if self.kind == "flat_map" else self.fn
        kind = self.kind
        route = self.route_error

        def hand_on(out: list[Any]) -> None:
            self.hand_on(emit, out, record)

        def outputs(items: list[Any]) -> tuple[list[Any], list[Any], int]:
            """(flat outputs, per-item results with FAILED marks, failures) for a list."""

            def fail(i: int, exc: BaseException) -> None:
                route(items[i], exc, fail_fast, record)

            res, nfail = apply_each(fn, items, fail)
            if kind == "map":
                flat = res if not nfail else [r for r in res if r is not FAILED]
            elif kind == "filter":
                if nfail:
                    flat = [
                        x for x, keep in zip(items, res, strict=True) if keep is not FAILED and keep
                    ]
                else:
                    flat = list(compress(items, res))
            elif kind == "flat_map":
                flat = list(chain.from_iterable(r for r in res if r is not FAILED))
            else:  # sink: the function's results are not passed on
                flat = []
            return flat, res, nfail

        if not self.units:

            def handle(batch: list[Any]) -> None:
                n = len(batch)
                flat, _, nfail = outputs(batch)
                self.count(n, nfail, len(flat))
                if flat:
                    hand_on(flat)

            return handle

        def handle_units(batch: list[Any]) -> None:
            # Units (seq, count, values): one pass of the function per unit's values, so
            # the outputs of a unit stay in order and together.
            units: list[Any] = []
            n_in = n_fail = n_out = 0
            for seq, count, values in batch:
                flat, _, nfail = outputs(values)
                units.append((seq, count, flat))
                n_in += len(values)
                n_fail += nfail
                n_out += len(flat)
            self.count(n_in, n_fail, n_out)
            hand_on(units)

        return handle_units

    def hand_on(self, emit: Emit, out: list[Any], record: Callable[..., None]) -> None:
        """Pass outputs to the next stage. If it refuses some (its ``key`` function raised,
        or the pipeline was stopped), they are counted as ``unsent``, kept in ``errors``
        and the error stops the pipeline like a fail-fast error: nothing vanishes."""
        try:
            emit(out)
        except Exception as exc:
            taken = list(getattr(exc, "unsent", ()))
            submitted = getattr(exc, "submitted", 0)
            lost = taken + out[submitted + len(taken) :]
            # Counted in values, as `emitted` is (a unit holds one, or a list of them).
            k = sum(len(u[2]) for u in lost) if self.units else len(lost)
            with self.lock:
                self.emitted -= k
                self.unsent += k
                self.errors.extend((x, exc) for x in lost)
            record(exc, self.name)

    def _batch_handler(
        self, emit: Emit, record: Callable[..., None]
    ) -> Callable[[list[Any]], None]:
        lock = self.lock

        def handle(batch: list[Any]) -> None:
            # A copy: the pool recycles the list it hands us once we return.
            group = list(batch)
            with lock:
                self.received += len(group)
                self.succeeded += len(group)
                self.emitted += 1
            self.hand_on(emit, [group], record)

        return handle

    # ------------------------------------------------------------------ lifecycle

    def start(
        self,
        handler: Callable[[list[Any]], None],
        on_error: Callable[[Any, BaseException], object],
        prefix: str,
        unit: int = 1,
        on_results: Callable[[list[Any], Any], object] | None = None,
        refs: tuple[int, bool, int, int] | None = None,
    ) -> None:
        """Create the pool. ``unit``: items per unit of an ordered pipeline; the pool
        counts units, so its batch size and capacity are the stage's divided by it.
        A remote stage (``backend`` set) gets a per-item ``handler`` shipped to its
        workers and ``on_results`` (``shardflow._remote_stage``); its batch size is the
        backend's per-message item count. ``refs``: a Ray stage handing outputs on by
        reference (``_remote_stage.RefCallbacks``), ``(objects per call, whether its
        items are RefToken parts, values expected per part, the most per part)``: a list
        handler (``StageBatch``) runs on the actors; with parts, the pool counts parts,
        so its batch size is the stage's divided by the expected part size and its
        capacity the stage's divided by the largest part (an upstream batch)."""
        key = self.key
        if key is not None and self.units:
            user_key = key

            def key(unit: Any) -> Hashable:
                # Keyed ordered stages move one-item units: route by that item's key (by
                # the first one after a flat_map; an emptied unit goes anywhere).
                return user_key(unit[2][0]) if unit[2] else unit[0]

        timeout = self.batch_timeout
        if self.kind == "batch" and timeout is None:
            # batch(size) without a timeout waits for full groups; only the end of the
            # stream (close, which flushes) hands over a partial one. ~31 years.
            timeout = 1e9
        batch_size, capacity = self.batch_size, self.capacity
        if self.units and not self.pieces:
            batch_size = max(1, batch_size // unit)
            capacity = max(1, capacity // unit)
        if refs is not None:
            self._start_refs(handler, on_error, prefix, key, on_results, refs)
            return
        if self.backend is not None:
            self._new_pool(
                handler,
                key,
                capacity,
                on_error,
                prefix,
                backend=self.backend,
                on_results=on_results,
            )
            return
        self._new_pool(
            handler,
            key,
            capacity,
            on_error,
            prefix,
            batch_size=batch_size,
            batch_timeout=timeout,
            lists=True,
        )

    def _new_pool(
        self,
        handler: Callable[..., Any],
        key: Callable[[Any], Hashable] | None,
        capacity: int,
        on_error: Callable[[Any, BaseException], object],
        prefix: str,
        **options: Any,
    ) -> None:
        """The stage's pool: what every kind of stage shares, plus ``options``."""
        self.pool = ShardedPool(
            handler,
            workers=self.workers,
            key=key,
            capacity=capacity,
            on_error=on_error,
            name=f"{prefix}-{self.name}",
            **options,
            **self.pool_options,
        )

    def _start_refs(
        self,
        handler: Callable[[list[Any]], Any],
        on_error: Callable[[Any, BaseException], object],
        prefix: str,
        key: Callable[[Any], Hashable] | None,
        on_results: Callable[[list[Any], Any], object] | None,
        refs: tuple[int, bool, int, int],
    ) -> None:
        from shardflow.backends.ray import RayBackend, RefToken

        returns, tokens, per_part, most = refs
        assert isinstance(self.backend, RayBackend)
        batch_size, capacity = self.batch_size, self.capacity
        if tokens:
            # Calls of about batch_size values (parts of the expected size); a ring of
            # parts that holds about `capacity` values even when every part is as large
            # as an upstream batch (all its outputs for one shard).
            batch_size = max(1, batch_size // per_part)
            capacity = max(2 * batch_size, capacity // most)
            if key is not None:
                item_key = key

                def key(x: Any) -> Hashable:
                    # A part was cut on the actor for its shard with the core's rule;
                    # hash(shard) % workers is that shard. Items that came back inline
                    # are routed by their key, to the shard the actor would have picked.
                    return x.shard if type(x) is RefToken else item_key(x)

        self._new_pool(
            handler,
            key,
            capacity,
            on_error,
            prefix,
            batch_size=batch_size,
            lists=True,
            backend=self.backend.for_stage(returns, tokens),
            on_results=on_results,
        )
