"""Pipeline stages whose function runs elsewhere: worker processes or Ray actors.

A thread stage's handler is a closure (``Stage.make_handler``): it applies the function
to a batch, counts, routes errors and hands the outputs on, all in the worker thread. A
closure cannot be shipped to a worker process, and the next stage's ring lives in this
process anyway. So a remote stage is split in two:

* **over there**, a small picklable per-item step (``remote_step``): the user's function,
  wrapped only as far as the stage's kind needs (``filter`` sends back ``bool(pred(x))``,
  ``flat_map`` a list, ``sink`` nothing). The pool ships items in lists (``batch_size``
  items at most: a stage's ``batch_size`` becomes ``ProcessBackend(ship_batch_size=)`` /
  ``RayBackend(batch_size=)`` when the backend is given by name; without one, the
  backend's default: 256 items per message for processes, 1,000 for Ray), and the worker calls
  the step once per item: an item that raises fails alone, and a worker that dies is
  charged to the one item that was running (``WorkerLost`` after ``max_attempts``), as
  for any per-item pool on that backend;
* **here**, the pool's ``on_results(items, values)`` (``RemoteCallbacks.took``), in the
  shard's dispatch thread, does what the closure does: the stage's counters, then one
  ``submit_many`` of the outputs to the next stage (its backpressure blocks that thread,
  so the shard stops shipping and its ring fills up to the source, as with threads); and
  ``on_error(item, exc)`` (``RemoteCallbacks.failed``) routes a failed item (its
  function raised, its worker died, it did not pickle) through ``Stage.route_error``:
  fail fast, dead letter, or the report.

Ordered pipelines move units ``(seq, count, values)``; a remote stage's step then takes
a unit and returns ``(outputs, [(index, exception), ...])`` for its values, so that a
failing value fails alone and the unit keeps its framing. A pipeline with a remote stage
before its reorder buffer uses one-item units (as keyed pipelines do): a unit is what a
worker crash is charged to, and it must be one item.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from itertools import chain, compress
from typing import TYPE_CHECKING, Any

from shardflow.backends import Backend, resolve_backend
from shardflow.backends.thread import ThreadBackend

if TYPE_CHECKING:
    from shardflow._stage import Emit, Stage

__all__ = [
    "FilterStep",
    "FlatMapStep",
    "RemoteCallbacks",
    "SinkStep",
    "UnitStep",
    "remote_step",
    "stage_backend",
]


def stage_backend(backend: str | Backend, batch_size: int | None) -> Backend | None:
    """The backend of a stage: None for threads (the closure handler), else the
    ``Backend`` to give its pool. A name makes the backend with the stage's batch size as
    its per-message item count (its own default when None); a ``Backend`` instance is
    used as it is."""
    if isinstance(backend, str) and backend in ("process", "ray") and batch_size is not None:
        if backend == "process":
            from shardflow.backends.process import ProcessBackend

            return ProcessBackend(ship_batch_size=batch_size)
        from shardflow.backends.ray import RayBackend

        return RayBackend(batch_size=batch_size)
    resolved = resolve_backend(backend)
    if isinstance(resolved, ThreadBackend):
        return None
    return resolved


def remote_batch_size(backend: Backend) -> int:
    """Items per message of a remote stage's backend (``ProcessBackend.ship_batch_size``,
    ``RayBackend.batch_size``; 1 for a backend that has neither)."""
    for attr in ("ship_batch_size", "batch_size"):
        value = getattr(backend, attr, None)
        if isinstance(value, int) and value >= 1:
            return value
    return 1


def check_shippable(backend: Backend, kind: str, fn: Callable[[Any], Any], units: bool) -> None:
    """Refuse, when the stage is built, a function a process backend could not send to its
    workers (Ray sends with cloudpickle, which takes lambdas and closures)."""
    from shardflow.backends.process import ProcessBackend

    if not isinstance(backend, ProcessBackend):
        return
    step = remote_step(kind, fn, units)
    try:
        pickle.loads(pickle.dumps(step, 5))
    except Exception as exc:
        raise TypeError(
            f"fn: a {kind} stage on backend='process' sends its function to each worker "
            f"process by pickle, and {fn!r} cannot be pickled ({type(exc).__name__}: "
            f"{exc}); use a module-level function or a picklable callable object, or "
            "backend='thread'"
        ) from exc


# ---------------------------------------------------------------------- over there


class FilterStep:
    """``bool(pred(x))``: the verdict crosses back, never the predicate's raw value."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], object]) -> None:
        self.fn = fn

    def __call__(self, x: Any) -> bool:
        return bool(self.fn(x))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FilterStep, (self.fn,))


class FlatMapStep:
    """``list(fn(x))``: the expansion is materialized in the item's call, so an error
    raised while iterating it is the item's error (as with threads)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def __call__(self, x: Any) -> list[Any]:
        return list(self.fn(x))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FlatMapStep, (self.fn,))


class SinkStep:
    """``fn(x)``, returning None: a sink's results are not passed on, so not sent back."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], object]) -> None:
        self.fn = fn

    def __call__(self, x: Any) -> None:
        self.fn(x)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SinkStep, (self.fn,))


class UnitStep:
    """An ordered stage's step: takes a unit ``(seq, count, values)`` and returns
    ``(outputs, failures)``: ``outputs`` as the stage passes them on (``map``: the values'
    results; ``flat_map``: their expansions, concatenated; ``filter``: one verdict per
    value, False for a failed one), ``failures`` ``[(index in values, exception)]``, each
    exception one that can be sent back (else a ``RemoteError`` describing it)."""

    __slots__ = ("fn", "kind")

    def __init__(self, kind: str, fn: Callable[[Any], Any]) -> None:
        self.kind = kind
        self.fn = fn

    def __call__(self, unit: tuple[int, int, list[Any]]) -> tuple[list[Any], list[Any]]:
        values = unit[2]
        fn = self.fn
        kind = self.kind
        out: list[Any] = []
        failures: list[tuple[int, BaseException]] = []
        for i, x in enumerate(values):
            try:
                if kind == "map":
                    out.append(fn(x))
                elif kind == "filter":
                    out.append(bool(fn(x)))
                else:  # flat_map
                    out.extend(list(fn(x)))
            except Exception as exc:
                if kind == "filter":
                    out.append(False)
                failures.append((i, _portable(exc)))
        return out, failures

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnitStep, (self.kind, self.fn))


def _portable(exc: BaseException) -> BaseException:
    from shardflow.backends._process_worker import _portable as portable

    return portable(exc)


def remote_step(kind: str, fn: Callable[[Any], Any], units: bool) -> Callable[[Any], Any]:
    """The per-item handler a remote stage's pool ships to its workers."""
    if units:
        return UnitStep(kind, fn)
    if kind == "map":
        return fn  # its values are the outputs: nothing to wrap
    if kind == "filter":
        return FilterStep(fn)
    if kind == "flat_map":
        return FlatMapStep(fn)
    return SinkStep(fn)


# ---------------------------------------------------------------------- here


def _batch_failures() -> tuple[type[BaseException], ...]:
    """Exceptions with which a backend fails a whole shipped list (not one item): the
    pool's ``on_error`` then gets the list. Anything else names one item."""
    from shardflow._shmring import RingError
    from shardflow.backends.process import ShardBroken
    from shardflow.backends.ray import ShardLost

    return (ShardBroken, ShardLost, RingError)


class RemoteCallbacks:
    """``on_results`` and ``on_error`` of a remote stage's pool (see the module doc)."""

    def __init__(
        self,
        stage: Stage,
        emit: Emit,
        fail_fast: bool,
        record: Callable[..., None],
    ) -> None:
        self.stage = stage
        self.emit = emit
        self.fail_fast = fail_fast
        self.record = record
        self.whole = _batch_failures()

    def handler(self) -> Callable[[Any], Any]:
        stage = self.stage
        assert stage.fn is not None
        return remote_step(stage.kind, stage.fn, stage.units)

    # ------------------------------------------------------------ results

    def took(self, items: list[Any], values: list[Any]) -> None:
        """The values of the items that succeeded (failed ones went to ``failed``)."""
        try:
            if self.stage.units:
                self._took_units(items, values)
            else:
                self._took_items(items, values)
        except Exception as exc:  # a bug here: counted, kept, and it stops the pipeline
            stage = self.stage
            with stage.lock:
                stage.received += len(items)
                stage.failed += len(items)
                stage.errors.extend((x, exc) for x in items)
            self.record(exc, stage.name)

    def _took_items(self, items: list[Any], values: list[Any]) -> None:
        stage = self.stage
        kind = stage.kind
        n = len(items)
        if kind == "map":
            flat = values
        elif kind == "filter":
            flat = list(compress(items, values))
        elif kind == "flat_map":
            flat = list(chain.from_iterable(values))
        else:  # sink
            flat = []
        out = len(flat)
        with stage.lock:
            stage.received += n
            if kind == "filter":
                stage.succeeded += out
                stage.filtered += n - out
            else:
                stage.succeeded += n
            stage.emitted += out
        if flat:
            stage.hand_on(self.emit, flat, self.record)

    def _took_units(self, units: list[Any], values: list[Any]) -> None:
        stage = self.stage
        kind = stage.kind
        route = stage.route_error
        moved: list[Any] = []
        n_in = n_fail = n_out = 0
        for unit, (out, failures) in zip(units, values, strict=True):
            seq, count, vals = unit
            for i, exc in failures:
                route(vals[i], exc, self.fail_fast, self.record)
            if kind == "filter":
                out = list(compress(vals, out))
            moved.append((seq, count, out))
            n_in += len(vals)
            n_fail += len(failures)
            n_out += len(out)
        with stage.lock:
            stage.received += n_in
            if kind == "filter":
                stage.succeeded += n_out
                stage.filtered += n_in - n_fail - n_out
            else:
                stage.succeeded += n_in - n_fail
            stage.emitted += n_out
        stage.hand_on(self.emit, moved, self.record)

    # ------------------------------------------------------------ failures

    def failed(self, what: Any, exc: BaseException) -> None:
        """An item failed over there (its function raised, its worker died, it or its
        value did not pickle), or a whole list did (its shard broke or was lost)."""
        stage = self.stage
        batch = what if isinstance(exc, self.whole) and isinstance(what, list) else [what]
        if not stage.units:
            with stage.lock:
                stage.received += len(batch)
            for item in batch:
                stage.route_error(item, exc, self.fail_fast, self.record)
            return
        # A unit failed as a whole: each of its values is that failure, and the unit goes
        # on emptied, so that the reorder buffer does not wait for it.
        emptied: list[Any] = []
        for seq, count, vals in batch:
            with stage.lock:
                stage.received += len(vals)
            for value in vals:
                stage.route_error(value, exc, self.fail_fast, self.record)
            emptied.append((seq, count, []))
        stage.hand_on(self.emit, emptied, self.record)
