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

Ordered pipelines move units ``(seq, count, values)`` (runs of consecutive source
items). A pool item is what a worker crash is charged to, and it must be one item, not a
run of them. So a remote stage of an ordered pipeline moves **pieces**: its entry
(``RemoteCallbacks.submit``) cuts each unit into one ``Piece`` per value, which pickles as
the bare value (the worker never sees the framing) while the parent's copy keeps its
unit's ``Frame`` and its index there; as the pieces come back (values, failures, in any
order, from any shard) the frame fills up, and once every piece of it is back the unit
goes on, its outputs in order, with its ``(seq, count)``. The other stages and the
reorder buffer keep their large units. (A keyed ordered pipeline already moves one-item
units; there a remote stage's step takes the unit and returns ``(outputs, [(index,
exception), ...])`` for its values, so that a failing value fails alone.)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from itertools import chain, compress
from operator import length_hint
from typing import TYPE_CHECKING, Any

from shardflow._stage import FAILED
from shardflow.backends import Backend, resolve_backend
from shardflow.backends.thread import ThreadBackend

if TYPE_CHECKING:
    from shardflow._stage import Emit, Stage

__all__ = [
    "ChainCallbacks",
    "ChainStep",
    "FilterStep",
    "FlatMapStep",
    "Frame",
    "Piece",
    "PieceStep",
    "RefCallbacks",
    "RemoteCallbacks",
    "Route",
    "SinkStep",
    "StageBatch",
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
    """Refuse, when the stage is added, a function a process backend could not send to
    its workers (as the backend sends it: by reference, else by value with cloudpickle
    when installed). Ray sends with cloudpickle, which takes lambdas and closures."""
    from shardflow.backends.process import ProcessBackend, _dumps_handler

    if not isinstance(backend, ProcessBackend):
        return
    try:
        _dumps_handler(remote_step(kind, fn, units))
    except TypeError as exc:
        raise TypeError(
            f"fn: a {kind} stage on backend='process' must send its function to each "
            f"worker process: {exc}"
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


class Piece:
    """One value of a unit, on its way through a remote stage of an ordered pipeline. It
    pickles as the bare value: a worker gets exactly what an unordered pipeline sends;
    this process keeps the frame and the index."""

    __slots__ = ("frame", "k", "v")

    def __init__(self, frame: Frame, k: int, v: Any) -> None:
        self.frame = frame
        self.k = k
        self.v = v

    def __reduce__(self) -> tuple[Any, ...]:
        return (_bare, (self.v,))


def _bare(v: Any) -> Any:
    return v


class Frame:
    """A unit whose values are out as pieces: ``outs[k]`` is piece ``k``'s value once it
    came back (``FAILED`` while out, and for a piece that failed); ``left`` counts the
    pieces not back yet."""

    __slots__ = ("count", "failed", "left", "outs", "refused", "seq", "vals")

    def __init__(self, seq: int, count: int, vals: list[Any]) -> None:
        self.seq = seq
        self.count = count
        self.vals = vals
        self.outs: list[Any] = [FAILED] * len(vals)
        self.left = len(vals)
        self.failed = 0
        self.refused = 0


class PieceStep:
    """The step of a remote stage of an ordered pipeline: the kind's step applied to a
    piece's value (a bare value after pickling; a backend that hands the objects over
    without pickling them passes the ``Piece`` itself)."""

    __slots__ = ("step",)

    def __init__(self, step: Callable[[Any], Any]) -> None:
        self.step = step

    def __call__(self, x: Any) -> Any:
        if type(x) is Piece:
            x = x.v
        return self.step(x)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PieceStep, (self.step,))


class ChainStep:
    """The step of fused stages (consecutive remote stages run in one worker loop): an
    item goes through every stage's operation in turn, in the worker; nothing crosses
    between them. Returns ``(outputs, emitted)`` or ``(outputs, emitted, failures)``:
    the last stage's outputs, how many outputs each stage passed on, and ``(stage index,
    item, exception)`` for items that failed in a later stage (the first stage's
    failure is the call's: it raises, and the pool routes it as for a single stage).
    The common case, where every stage took one item and passed one on (a final sink
    none) and nothing failed, returns just the outputs list (``plain``), cheaper to
    send back and to count."""

    __slots__ = ("ops", "plain")

    def __init__(self, ops: tuple[tuple[str, Callable[[Any], Any]], ...]) -> None:
        self.ops = ops
        self.plain = [1] * len(ops)
        if ops[-1][0] == "sink":
            self.plain[-1] = 0

    def __call__(self, x: Any) -> Any:
        if type(x) is Piece:
            x = x.v
        items = [x]
        emitted: list[int] = []
        failures: list[tuple[int, Any, BaseException]] | None = None
        for j, (kind, fn) in enumerate(self.ops):
            nxt: list[Any] = []
            for y in items:
                if j == 0:
                    _apply(kind, fn, y, nxt)  # raises: the item's failure
                    continue
                try:
                    _apply(kind, fn, y, nxt)
                except Exception as exc:
                    if failures is None:
                        failures = []
                    failures.append((j, y, _portable(exc)))
            emitted.append(len(nxt))
            items = nxt
        if failures is None:
            if emitted == self.plain:
                return items
            return items, emitted
        return items, emitted, failures

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChainStep, (self.ops,))


def _apply(kind: str, fn: Callable[[Any], Any], y: Any, out: list[Any]) -> None:
    if kind == "map":
        out.append(fn(y))
    elif kind == "filter":
        if fn(y):
            out.append(y)
    elif kind == "flat_map":
        out.extend(list(fn(y)))
    else:  # sink
        fn(y)


def _portable(exc: BaseException) -> BaseException:
    from shardflow.backends._process_worker import _portable as portable

    return portable(exc)


def remote_step(
    kind: str, fn: Callable[[Any], Any], units: bool, pieces: bool = False
) -> Callable[[Any], Any]:
    """The per-item handler a remote stage's pool ships to its workers."""
    if pieces:
        return PieceStep(remote_step(kind, fn, False))
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


#: Marks, in a frame, a piece the pool refused (counted as ``unsent`` by the stage before).
_REFUSED: Any = object()


def _gone(out: Any) -> bool:
    return out is FAILED or out is _REFUSED


def _batch_failures() -> tuple[type[BaseException], ...]:
    """Exceptions with which a backend fails a whole shipped list (not one item): the
    pool's ``on_error`` then gets the list. Anything else names one item."""
    from shardflow._shmring import RingError
    from shardflow.backends.process import ShardBroken
    from shardflow.backends.ray import ShardLost

    return (ShardBroken, ShardLost, RingError)


def fail_values(
    stage: Stage,
    values: list[Any],
    exc: BaseException,
    fail_fast: bool,
    record: Callable[..., None],
) -> None:
    """Count ``values`` as received by ``stage`` and route each as failed with ``exc``
    (to the dead letters, or the pipeline's error with ``fail_fast``)."""
    with stage.lock:
        stage.received += len(values)
    for value in values:
        stage.route_error(value, exc, fail_fast, record)


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
        return remote_step(stage.kind, stage.fn, stage.units, stage.pieces)

    # ------------------------------------------------------------ pieces (ordered)

    def submit(self, pool_submit: Emit) -> Emit:
        """The entry of a stage that moves pieces: cut units into pieces and submit them.
        A unit without values goes straight on. If the pool refuses pieces (the pipeline
        was stopped), the refused values are reported as ``unsent`` units with
        ``submitted`` covering the whole list (as ``Stage.skipping_bad_keys`` does), and
        the frames they belonged to wait only for the pieces that went in."""
        stage = self.stage

        def submit_units(units: list[Any]) -> None:
            pieces: list[Piece] = []
            empty: list[Any] = []
            for seq, count, vals in units:
                if not vals:
                    empty.append((seq, count, vals))
                    continue
                frame = Frame(seq, count, vals)
                pieces += [Piece(frame, k, v) for k, v in enumerate(vals)]
            if empty:
                stage.hand_on(self.emit, empty, self.record)
            if not pieces:
                return
            try:
                pool_submit(pieces)
            except Exception as exc:
                taken = list(getattr(exc, "unsent", ()))
                lost: list[Piece] = taken + pieces[getattr(exc, "submitted", 0) + len(taken) :]
                exc.unsent = self._refused(lost)  # type: ignore[attr-defined]
                exc.submitted = len(units)  # type: ignore[attr-defined]
                raise

        return submit_units

    def _refused(self, lost: list[Piece]) -> list[Any]:
        """Pieces the pool did not take: taken out of their frames (a frame left with
        nothing out goes on now), returned as ``(seq, count, values)`` runs."""
        out: list[Any] = []
        done: list[Frame] = []
        with self.stage.lock:
            for piece in lost:
                frame = piece.frame
                frame.outs[piece.k] = _REFUSED
                frame.refused += 1
                frame.left -= 1
                if frame.left == 0:
                    done.append(frame)
                out.append((frame.seq, 0, [piece.v]))
        self._finish(done)
        return out

    def _took_pieces(self, pieces: list[Piece], values: list[Any]) -> None:
        done: list[Frame] = []
        with self.stage.lock:
            for piece, value in zip(pieces, values, strict=True):
                frame = piece.frame
                frame.outs[piece.k] = value
                frame.left -= 1
                if frame.left == 0:
                    done.append(frame)
        self._finish(done)

    def _failed_pieces(self, pieces: list[Piece], exc: BaseException) -> None:
        stage = self.stage
        for piece in pieces:
            stage.route_error(piece.v, exc, self.fail_fast, self.record)
        done: list[Frame] = []
        with stage.lock:
            for piece in pieces:
                frame = piece.frame
                frame.failed += 1
                frame.left -= 1
                if frame.left == 0:
                    done.append(frame)
        self._finish(done)

    def _finish(self, frames: list[Frame]) -> None:
        """Frames whose pieces are all back: count them and pass their units on."""
        if not frames:
            return
        stage = self.stage
        kind = stage.kind
        moved: list[Any] = []
        n_in = n_fail = n_out = 0
        for frame in frames:
            outs = frame.outs
            n = len(outs)
            refused, failed = frame.refused, frame.failed
            if kind == "map":
                flat = outs if not (failed or refused) else [o for o in outs if not _gone(o)]
            elif kind == "filter":
                flat = [v for v, o in zip(frame.vals, outs, strict=True) if o is True]
            else:  # flat_map
                flat = list(chain.from_iterable(o for o in outs if not _gone(o)))
            moved.append((frame.seq, frame.count, flat))
            n_in += n - refused
            n_fail += failed
            n_out += len(flat)
        stage.count(n_in, n_fail, n_out)
        stage.hand_on(self.emit, moved, self.record)

    # ------------------------------------------------------------ results

    def took(self, items: list[Any], values: list[Any]) -> None:
        """The values of the items that succeeded (failed ones went to ``failed``)."""
        try:
            if self.stage.pieces:
                self._took_pieces(items, values)
            elif self.stage.units:
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
        stage.count(n, 0, len(flat))
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
        stage.count(n_in, n_fail, n_out)
        stage.hand_on(self.emit, moved, self.record)

    # ------------------------------------------------------------ failures

    def failed(self, what: Any, exc: BaseException) -> None:
        """An item failed over there (its function raised, its worker died, it or its
        value did not pickle), or a whole list did (its shard broke or was lost)."""
        stage = self.stage
        batch = what if isinstance(exc, self.whole) and isinstance(what, list) else [what]
        if stage.pieces:
            self._failed_pieces(batch, exc)
            return
        if not stage.units:
            fail_values(stage, batch, exc, self.fail_fast, self.record)
            return
        # A unit failed as a whole: each of its values is that failure, and the unit goes
        # on emptied, so that the reorder buffer does not wait for it.
        emptied: list[Any] = []
        for seq, count, vals in batch:
            fail_values(stage, vals, exc, self.fail_fast, self.record)
            emptied.append((seq, count, []))
        stage.hand_on(self.emit, emptied, self.record)


class ChainCallbacks(RemoteCallbacks):
    """``on_results``/``on_error`` of fused stages (``ChainStep``): one pool, the counters
    and error routing of every stage of the chain, outputs handed on by the last one.
    The first stage is ``stage`` (its pool, its failures: the items that failed or whose
    worker died); ``chain`` holds them all."""

    def __init__(
        self,
        chain: list[Stage],
        emit: Emit,
        fail_fast: bool,
        record: Callable[..., None],
    ) -> None:
        super().__init__(chain[0], emit, fail_fast, record)
        self.chain = chain
        self.last = chain[-1]

    def handler(self) -> Callable[[Any], Any]:
        ops = []
        for st in self.chain:
            assert st.fn is not None
            ops.append((st.kind, st.fn))
        return ChainStep(tuple(ops))

    def took(self, items: list[Any], values: list[Any]) -> None:
        try:
            plain = 0
            outs: list[Any] = []
            rest: list[Any] = []
            for value in values:
                if type(value) is list:
                    plain += 1
                    outs.append(value)
                else:
                    rest.append(value)
                    outs.append(value[0])
            self._count(plain, rest)
            if self.stage.pieces:
                self._took_pieces(items, outs)
            else:
                flat = list(chain.from_iterable(outs))
                if flat:
                    self.last.hand_on(self.emit, flat, self.record)
        except Exception as exc:  # a bug here: counted, kept, and it stops the pipeline
            stage = self.stage
            with stage.lock:
                stage.errors.extend((x, exc) for x in items)
            self.record(exc, stage.name)

    def _count(self, plain: int, values: list[Any]) -> None:
        """Every stage's counters for ``plain`` results (each stage took one item and
        passed one on) and the other ``values``; routes the later stages' failures."""
        k = len(self.chain)
        received = [0] * k
        emitted = [plain] * k
        if self.last.kind == "sink":
            emitted[-1] = 0
        failed = [0] * k
        received[0] = plain + len(values)
        for value in values:
            counts = value[1]
            for j in range(k):
                emitted[j] += counts[j]
            if len(value) > 2:
                for j, item, exc in value[2]:
                    failed[j] += 1
                    self.chain[j].route_error(item, exc, self.fail_fast, self.record)
        for j in range(1, k):
            received[j] = emitted[j - 1]
        for j, st in enumerate(self.chain):
            st.count(received[j], failed[j], emitted[j])

    def failed(self, what: Any, exc: BaseException) -> None:
        stage = self.stage
        batch = what if isinstance(exc, self.whole) and isinstance(what, list) else [what]
        with stage.lock:
            stage.received += len(batch)
        if stage.pieces:
            self._failed_pieces(batch, exc)
            return
        for item in batch:
            stage.route_error(item, exc, self.fail_fast, self.record)

    def _finish(self, frames: list[Frame]) -> None:
        """Frames whose pieces are all back (counted as they came): pass them on."""
        if not frames:
            return
        moved = [
            (f.seq, f.count, list(chain.from_iterable(o for o in f.outs if not _gone(o))))
            for f in frames
        ]
        self.last.hand_on(self.emit, moved, self.record)


# ---------------------------------------------------------------------- hand-off by reference
#
# Consecutive Ray stages that do not fuse (the next one routes by its own key, has other
# ``workers``, or ``fuse=False``) would bring every output to this process, which would
# unpickle it, route it and pickle it again for the next stage's actors. Instead (see
# ``Pipeline(object_refs=)``), each such stage runs a whole batch on its actor as the
# stage does here (``StageBatch``: its function, error capture, counting, the
# ``filter``/``flat_map`` shaping) and answers with
#
# * a small reply, which this process reads: per stage ``(received, failed, emitted)``,
#   the failures ``(stage index, item, exception)`` (the item travels only then: its dead
#   letter needs it), the handler's time (the shard's service time, as usual);
# * one Ray object per shard of the next stage: its outputs, routed on the actor by the
#   next stage's key with the core's rule (``hash(key) % workers``, ``Route``); this
#   process owns those objects (return values of its calls) but never reads them.
#
# ``RefCallbacks.took`` counts and routes errors as ``RemoteCallbacks`` does, then
# submits one ``RefToken`` per non-empty part to the next stage's pool, routed to the
# part's shard: that stage's rings, backpressure, sequence numbers and re-sends work on
# tokens as on items, and the next actor gets the references as call arguments (Ray
# resolves them there). Per-key order holds (a key's items go to one shard, in the order
# their tokens were submitted, which is the order of the batches that made them), an
# actor death on either side re-sends unacknowledged batches in order (the driver holds
# a token's reference until the batch carrying it settled, so the part stays
# retrievable), and ``ordered=True`` pipelines whose units move one by one (a keyed
# ordered pipeline) carry their ``(seq, count, values)`` units through parts unchanged.
#
# Ray returns small objects (under ~100 KiB) to their owner with the reply and sends them
# inline in the calls that take them: a small part then passes through this process's
# memory as bytes, still never unpickled; large parts stay in the object store.
#
# A batch whose outputs cannot be routed on the actor exactly as this process would
# route them (a key that raises, or whose hash is not the same in every process: ``str``
# and ``bytes`` when the actors' ``PYTHONHASHSEED`` differs from the driver's, ``None``,
# objects with their own ``__hash__``) sends its outputs back inline instead: this
# process submits them as items (the next stage's pool routes them by key, to the same
# shard), so nothing is lost and per-key order holds either way.


#: Types whose ``hash()`` is the same in every process (``str``/``bytes`` only when the
#: actor's hash seed is the driver's, checked with ``hash_probe``).
_SEED_FREE = (int, bool, float)


def hash_probe() -> tuple[int, int]:
    """Hashes of a ``str`` and a ``bytes``: equal in two processes iff they hash
    strings alike (same ``PYTHONHASHSEED``, or both unrandomized)."""
    return (hash("shardflow-route"), hash(b"shardflow-route"))


def _routable(k: Any, strings: bool) -> bool:
    t = type(k)
    if t in _SEED_FREE:
        return bool(k == k)  # NaN hashes by identity
    if t is str or t is bytes:
        return strings
    if t is tuple:
        return all(_routable(e, strings) for e in k)
    return False


class Route:
    """How an upstream actor cuts its outputs for the next stage: that stage's ``key``
    (None: unkeyed, one part, spread over shards by this process), its ``workers`` and
    whether outputs are ordered units; ``probe`` is this process's ``hash_probe()``."""

    __slots__ = ("_strings", "key", "probe", "units", "workers")

    def __init__(
        self,
        key: Callable[[Any], Any] | None,
        workers: int,
        units: bool,
        probe: tuple[int, int] | None = None,
    ) -> None:
        self.key = key
        self.workers = workers
        self.units = units
        self.probe = hash_probe() if probe is None else probe
        self._strings: bool | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Route, (self.key, self.workers, self.units, self.probe))

    @property
    def parts(self) -> int:
        return 1 if self.key is None else self.workers

    def cut(self, outs: list[Any]) -> list[list[Any]] | None:
        """``outs`` split per shard of the next stage, or None if one cannot be routed
        here exactly as the driver's core would (then the batch goes back inline)."""
        key = self.key
        if key is None:
            return [outs]
        if self._strings is None:
            self._strings = hash_probe() == self.probe
        strings = self._strings
        n = self.workers
        parts: list[list[Any]] = [[] for _ in range(n)]
        units = self.units
        for o in outs:
            try:
                # The unit key of Stage.start: the first value's key, or seq when empty.
                k = (key(o[2][0]) if o[2] else o[0]) if units else key(o)
            except Exception:
                return None  # the driver routes it and reports the error as usual
            if not _routable(k, strings):
                return None
            parts[hash(k) % n].append(o)  # the core's rule (non-negative, as there)
        return parts


def _run_op(
    kind: str,
    fn: Callable[[Any], Any],
    items: list[Any],
    j: int,
    failures: list[Any],
    bad: list[int] | None = None,
) -> list[Any]:
    """One stage's operation over a list, each item once; a failing item is recorded as
    ``(j, item, exception)`` (its index in ``bad`` if given) and the loop goes on."""
    out: list[Any] = []
    append = out.append
    n = len(items)
    it = iter(items)
    while True:
        try:
            if kind == "map":
                for y in it:
                    append(fn(y))
            elif kind == "filter":
                for y in it:
                    if fn(y):
                        append(y)
            elif kind == "flat_map":
                for y in it:
                    out += list(fn(y))
            else:  # sink
                for y in it:
                    fn(y)
            return out
        except Exception as exc:
            i = n - length_hint(it) - 1
            failures.append((j, items[i], _portable(exc)))
            if bad is not None:
                bad.append(i)


def _pickles(v: Any) -> bool:
    try:
        pickle.dumps(v, 5)
    except Exception:
        return False
    return True


def _dump(
    values: list[Any],
    units: bool,
    j: int,
    failures: list[Any],
    counts: list[list[int]],
    source: Callable[[Any], Any] | None = None,
) -> bytes:
    """Pickle a list of outputs; an output that does not pickle is taken out and fails
    alone (``TypeError``, charged to stage ``j``: one failure, one output fewer). The
    failure names the item the stage got for it (``source(value)``: a ``map``'s input,
    as a failure on the way back names it elsewhere), or, when that does not pickle
    either, the output's ``repr``."""
    try:
        return pickle.dumps(values, 5)
    except Exception:
        pass
    from shardflow.backends.ray import _unsendable

    def sendable(v: Any) -> bool:
        try:
            pickle.dumps(v, 5)
        except Exception as why:
            item = source(v) if source is not None else v
            if not _pickles(item):
                item = f"<unsendable output: {v!r:.200}>"
            failures.append((j, item, _unsendable(v, why)))
            counts[j][1] += 1
            counts[j][2] -= 1
            return False
        return True

    if units:
        values[:] = [(s, c, [v for v in vals if sendable(v)]) for s, c, vals in values]
    else:
        values[:] = [v for v in values if sendable(v)]
    return pickle.dumps(values, 5)


def _map_sources(kind: str, items: list[Any], outs: list[Any], bad: list[int]) -> Any:
    """For the last stage's outputs: output -> the item that made it (a ``map``: the
    k-th item that did not fail), else None (the output is named by itself)."""
    if kind != "map":
        return None
    failed = set(bad)
    ok = [x for i, x in enumerate(items) if i not in failed]
    by_id = {id(o): x for o, x in zip(outs, ok, strict=True)}
    return lambda v: by_id.get(id(v), v)


class StageBatch:
    """Runs on a shard actor: a batch through one stage (or a fused run of them), as the
    stage does in this process. Returns ``(counts, failures, inline, sizes)``: per stage
    ``[received, failed, emitted]`` in values; ``(stage index, item, exception)`` per
    failed item; the outputs pickled (``inline``), or, with a ``Route``, None and a
    ``Parted`` answer whose parts hold the outputs per shard of the next stage
    (``sizes``: ``(pool items, values)`` per part). Never raises for an item."""

    __slots__ = ("ops", "route", "units")

    def __init__(
        self, ops: tuple[tuple[str, Callable[[Any], Any]], ...], units: bool, route: Route | None
    ) -> None:
        self.ops = ops
        self.units = units
        self.route = route

    def __reduce__(self) -> tuple[Any, ...]:
        return (StageBatch, (self.ops, self.units, self.route))

    def __call__(self, batch: list[Any]) -> Any:
        from shardflow.backends.ray import Parted

        failures: list[Any] = []
        counts = [[0, 0, 0] for _ in self.ops]
        if self.units:
            kind, fn = self.ops[0]
            outs: list[Any] = []
            c = counts[0]
            for seq, count, vals in batch:
                out = _run_op(kind, fn, vals, 0, failures)
                outs.append((seq, count, out))
                c[0] += len(vals)
                c[2] += len(out)
            c[1] = len(failures)
        else:
            outs = batch
            last_in: list[Any] = outs
            bad: list[int] = []
            for j, (kind, fn) in enumerate(self.ops):
                before = len(failures)
                counts[j][0] = len(outs)
                last_in = outs
                outs = _run_op(kind, fn, outs, j, failures, bad if j == len(self.ops) - 1 else None)
                counts[j][1] = len(failures) - before
                counts[j][2] = len(outs)
        last = len(self.ops) - 1
        source = None
        route = self.route

        def dump(values: list[Any]) -> bytes:
            nonlocal source
            try:
                return pickle.dumps(values, 5)
            except Exception:
                if source is None and not self.units:
                    source = _map_sources(self.ops[-1][0], last_in, outs, bad)
                return _dump(values, self.units, last, failures, counts, source)

        cut = None if route is None or self.ops[-1][0] == "sink" else route.cut(outs)
        if cut is None:
            inline = dump(outs) if outs else None
            meta = (counts, failures, inline, None)
            if route is None:
                return meta
            return Parted(meta, [_NO_PART] * route.parts)
        parts: list[bytes] = []
        sizes: list[tuple[int, int]] = []
        for part in cut:
            parts.append(dump(part))
            n_values = sum(len(u[2]) for u in part) if self.units else len(part)
            sizes.append((len(part), n_values))
        return Parted((counts, failures, None, sizes), parts)


_NO_PART = pickle.dumps([], 5)


class RefCallbacks:
    """``on_results``/``on_error`` of a stage (or a fused run of stages, ``chain``) whose
    pool runs ``StageBatch`` on Ray actors: its items are the source's or a thread
    stage's (plain), or the ``RefToken`` parts of the stage before it, and its outputs
    come back inline (``route`` None) or go on as ``RefToken`` parts of the next stage."""

    def __init__(
        self,
        chain: list[Stage],
        emit: Emit,
        fail_fast: bool,
        record: Callable[..., None],
        route: Route | None,
    ) -> None:
        self.chain = chain
        self.stage = chain[0]
        self.last = chain[-1]
        self.emit = emit
        self.fail_fast = fail_fast
        self.record = record
        self.route = route

    def handler(self) -> StageBatch:
        ops = []
        for st in self.chain:
            assert st.fn is not None
            ops.append((st.kind, st.fn))
        return StageBatch(tuple(ops), self.stage.units, self.route)

    def took(self, items: list[Any], value: Any) -> None:
        """A batch's reply: count every stage, route the failures, hand the outputs on."""
        from shardflow.backends.ray import Forwarded, RefToken

        try:
            refs: list[Any] | None = None
            fetch: Any = None
            if type(value) is Forwarded:
                value, refs, fetch = value.meta, value.refs, value.fetch
            counts, failures, inline, sizes = value
            ff, record = self.fail_fast, self.record
            for j, item, exc in failures:
                self.chain[j].route_error(item, exc, ff, record)
            for st, (n_in, n_fail, n_out) in zip(self.chain, counts, strict=True):
                st.count(n_in, n_fail, n_out)
            if self.last.kind == "sink":
                return
            if inline is not None:
                outs = pickle.loads(inline)
                if outs:
                    self.last.hand_on(self.emit, outs, record)
            elif sizes is not None and refs is not None:
                tokens = [RefToken(refs[j], j, n, v, fetch) for j, (n, v) in enumerate(sizes) if n]
                if tokens:
                    self._hand_on_tokens(tokens)
        except Exception as exc:  # a bug here: kept, and it stops the pipeline
            with self.stage.lock:
                self.stage.errors.extend((x, exc) for x in items)
            self.record(exc, self.stage.name)

    def _hand_on_tokens(self, tokens: list[Any]) -> None:
        """``Stage.hand_on`` for parts: what the next stage refuses (the pipeline was
        stopped) is counted as ``unsent``, in values, and kept in ``errors`` with its
        items (read from the object store, only now)."""
        try:
            self.emit(tokens)
        except Exception as exc:
            taken = list(getattr(exc, "unsent", ()))
            lost = taken + tokens[getattr(exc, "submitted", 0) + len(taken) :]
            k = sum(t.values for t in lost)
            kept: list[Any] = []
            for t in lost:
                kept += t.items()
            last = self.last
            with last.lock:
                last.emitted -= k
                last.unsent += k
                last.errors.extend((x, exc) for x in kept)
            self.record(exc, last.name)

    def failed(self, what: Any, exc: BaseException) -> None:
        """A batch failed as a whole (its shard was lost for ``restart_timeout``, or the
        call failed on the way): each of its values is that failure of the first stage
        (parts are read back to name them); ordered units go on emptied. A part that
        cannot be read back (its object was lost with its node) fails each of its
        values with the token standing for the item; with ordered units, whose places
        in the order are then unknown, that also stops the pipeline (its error is
        raised), rather than leave the reorder buffer waiting for them."""
        from shardflow.backends.ray import RefToken

        stage = self.stage
        batch = what if isinstance(what, list) else [what]
        flat: list[Any] = []
        for x in batch:
            got = x.read() if type(x) is RefToken else [x]
            if got is not None:
                flat += got
                continue
            with stage.lock:
                stage.received += x.values
            for _ in range(x.values):
                stage.route_error(x, exc, self.fail_fast, self.record)
            if stage.units:
                lost = RuntimeError(
                    f"{stage.name}: a part of {x.n} ordered units could not be read back "
                    "after its batch failed; their place in the order is unknown"
                )
                lost.__cause__ = exc
                self.record(lost, stage.name)
        if not stage.units:
            fail_values(stage, flat, exc, self.fail_fast, self.record)
            return
        emptied: list[Any] = []
        for seq, count, vals in flat:
            fail_values(stage, vals, exc, self.fail_fast, self.record)
            emptied.append((seq, count, []))
        if emptied and self.last.kind != "sink":
            self.last.hand_on(self.emit, emptied, self.record)
