"""``Pipeline``: stages of sharded pools connected by bounded rings.

``Pipeline(source).map(f).filter(p).flat_map(g).batch(100).sink(h)`` builds a chain of
stages; each stage is a ``ShardedPool`` whose handler applies its function to a batch and
hands the outputs to the next stage with one ``submit_many``. A full stage blocks the one
before it (GIL released), up to the source: backpressure runs end to end, and the items
in flight are bounded by the stages' capacities (``Pipeline.max_in_flight()``), however
fast the source is.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice, pairwise
from typing import Any, Generic, Literal, TypeVar, cast

from shardflow import _aio, _fork
from shardflow._array_stage import ArraySource, RowCounter
from shardflow._array_stage import concat as concat_batches
from shardflow._columnar import DEFAULT_BATCH_ROWS
from shardflow._remote_stage import (
    ChainCallbacks,
    RefCallbacks,
    RemoteCallbacks,
    Route,
    check_shippable,
    remote_batch_size,
    stage_backend,
)
from shardflow._stage import DeadLetter, Stage
from shardflow._validate import (
    check_bool,
    check_callable,
    check_choice,
    check_instance,
    check_int,
    check_seconds,
    check_str,
)
from shardflow._worker import WORKER_DRAIN
from shardflow.backends import Backend, resolve_backend
from shardflow.errors import Closed
from shardflow.metrics import PoolMetrics, StageRows
from shardflow.pool import ARRAY_CAPACITY, MAX_CAPACITY
from shardflow.resilience.breaker import CircuitBreaker
from shardflow.resilience.guard import dead_letter_target, guard
from shardflow.resilience.limiter import Limiter
from shardflow.resilience.ratelimiter import RateLimiter
from shardflow.resilience.retry import Retry

__all__ = [
    "DEFAULT_STAGE_BATCH",
    "DEFAULT_STAGE_CAPACITY",
    "Pipeline",
    "PipelineReport",
    "StageReport",
]

T = TypeVar("T")
U = TypeVar("U")

#: Per-shard ring capacity of a stage when neither the stage nor the pipeline gives one.
#: Smaller than ShardedPool's default: a pipeline holds several rings, and its memory bound
#: is their sum.
DEFAULT_STAGE_CAPACITY = 8192
#: Items a stage's handler gets per call. Large, because the stage's per-batch Python
#: (counters, one submit_many) is paid once per batch; under the GIL that is what decides
#: the throughput of cheap functions.
DEFAULT_STAGE_BATCH = 512
#: Items the source hands to the first stage per ``submit_many`` (and how often the
#: feeding loop looks at the stop flag).
SOURCE_CHUNK = 1024
#: Batches the result channel holds (iteration): the iterator's share of the bound.
CHANNEL_BATCHES = 8
#: The reorder window (batches) of ``Pipeline.from_array(ordered=True)`` by default.
ARRAY_WINDOW = 64
#: Blocking waits of the pipeline itself (window, channel) wake this often (s) to look at
#: the stop flag; Ctrl-C interrupts them at once anyway.
POLL = 0.05

_END: Any = object()
_ERRORS = ("fail_fast", "continue")


@dataclass(frozen=True)
class StageReport:
    """What one stage did. Exact once the pipeline finished:

    ``received == succeeded + filtered + failed + dead_lettered``

    ``emitted`` counts what the stage passed on: equal to ``succeeded`` for ``map`` and
    ``filter``; for ``flat_map`` the sum of the expansions of the ``succeeded`` items (0
    to many each); for ``batch`` the number of groups, holding ``succeeded`` items in
    all; 0 for ``sink``. Each stage's ``emitted`` is the next stage's ``received`` (for
    ``batch``, the groups are the next stage's items).

    ``failed``: items whose function raised with ``errors="fail_fast"``, or whose dead
    letter refused them. ``dead_lettered``: with ``errors="continue"``, items handed to
    the stage's dead letter, or kept in ``errors`` when the stage has none. ``errors``
    holds ``(item, exception)`` for every failed item and every dead-lettered item kept
    in the report.

    A stage's ``key`` function that raises for an item: with ``errors="continue"`` the
    item is that stage's error like any other (``received``, then dead-lettered); with
    ``"fail_fast"`` the item never enters the stage and is counted as ``unsent`` by the
    stage before (``unsent``: outputs the next stage refused; they are in ``errors`` too,
    with ``ordered=True`` as the ``(seq, count, values)`` runs that were refused, and
    not in ``emitted``), and the error stops the pipeline.
    """

    name: str
    kind: str
    received: int
    succeeded: int
    emitted: int
    filtered: int
    failed: int
    dead_lettered: int
    errors: tuple[tuple[Any, BaseException], ...]
    metrics: PoolMetrics
    unsent: int = 0

    @property
    def balanced(self) -> bool:
        """``received == succeeded + filtered + failed + dead_lettered``."""
        return self.received == self.succeeded + self.filtered + self.failed + self.dead_lettered


@dataclass(frozen=True)
class PipelineReport:
    """What a pipeline run did: the source, every stage, and the results.

    ``source_items`` is how many items the source yielded (all of them reach the first
    stage: ``stages[0].received == source_items``); ``source_error`` is the exception the
    source raised, if any. ``results`` counts the items the last non-sink stage passed on
    (to the sink, to the iterator, or, for ``run()`` without a sink, counted and
    dropped). ``stopped_early`` is True when a fail-fast error stopped the source.
    ``source_unsent``: items the first stage refused because its ``key`` function raised
    with ``errors="fail_fast"`` (that error is raised);
    ``stages[0].received == source_items - source_unsent``.
    """

    source_items: int
    source_error: BaseException | None
    stages: tuple[StageReport, ...]
    results: int
    elapsed: float
    stopped_early: bool
    source_unsent: int = 0

    def stage(self, name: str) -> StageReport:
        """The report of the stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def balanced(self) -> bool:
        """Every stage balanced, and each stage received what the one before emitted."""
        upstream = self.source_items - self.source_unsent
        for s in self.stages:
            if not s.balanced or s.received != upstream:
                return False
            upstream = s.emitted
        return True


class Pipeline(Generic[T]):
    """Stages of sharded worker pools, connected by bounded rings, fed by an iterable.

    Build it with ``map``, ``filter``, ``flat_map``, ``batch`` and optionally ``sink``
    (each returns the pipeline), then either ``run()`` it to the end, which returns a
    ``PipelineReport``, or iterate over it (``for`` or ``async for``) to get the results.
    A pipeline runs once.

    Every stage is a ``ShardedPool`` (``workers`` threads, one bounded ring each); its
    handler applies the stage's function to a batch and hands the outputs to the next
    stage with one ``submit_many``, which waits while the next stage is full. So the
    source is read only as fast as the slowest stage goes, and at most
    ``max_in_flight()`` items are inside the pipeline at once.

    Args:
        source: any iterable; it is read from one thread (the caller's for ``run()``, a
            feeder thread when iterating).
        ordered: yield (and sink) results in source order. Runs of consecutive items
            (units of up to the smallest stage ``batch_size``; of one item when a stage
            has a ``key``) carry their source index through the stages, and a reorder
            buffer releases them in order; the source may not run more than ``window``
            items ahead of the oldest unfinished one. Default: completion order. Within a
            stage with a ``key``, items of one key keep their order either way, as in
            ``ShardedPool``.
        window: the reorder window of ``ordered=True`` (items); default 8192.
        errors: ``"fail_fast"`` (default): the first exception raised by a stage's
            function (or by the source) stops the source, lets what is already inside
            drain, and is raised, with its traceback, from ``run()`` or the iterator; it
            carries the report as ``pipeline_report``. ``"continue"``: a failing item
            (its function, or its stage's ``key`` function, raised) goes to its stage's
            dead letter (a callable ``(item, exc)``, a list, or a queue with
            ``put_nowait``), else is kept in the report; the pipeline goes on.
        capacity: default per-shard ring capacity of the stages.
        source_chunk: items read from the source per hand-off to the first stage
            (default 1024). A chunk is handed over once it is full or the source ends,
            so for a source that yields slowly (a socket, a queue) pass a small value,
            down to 1, to let each item in as soon as it is yielded.
        name: prefix of the stages' thread names.
        backend: where the ``map``/``filter``/``flat_map``/``sink`` stages run their
            function unless a stage says otherwise: ``"thread"`` (default), ``"process"``,
            ``"ray"`` or a ``shardflow.backends.Backend`` (see "Stages on worker
            processes or Ray" below). ``batch()`` always runs in this process.
        fuse: run consecutive remote stages in one worker loop where they can share it
            (default True): stages given the same ``backend`` (the same name, or the
            same ``Backend`` object) and the same ``workers``, each after the first
            without a ``key``, none with a ``breaker``/``limiter``/``rate_limiter``.
            An item then goes through all of them in the worker, with no pickling or
            IPC between them; each stage keeps its own counters, dead letter and errors
            in the report, and they share one pool (the same ``metrics()``). ``False``:
            every stage has its own workers.
        object_refs: between consecutive Ray stages that do not fuse, move the outputs
            actor to actor as Ray object references (default True): the first stage's
            actors cut their outputs per shard of the next stage (routing by its key on
            the actor, as this process would) and keep them in the object store; this
            process gets counts, failures and references, and passes the references to
            the next stage's actors, never reading the data (see "Hand-off by object
            reference" in ``shardflow._remote_stage``). Contracts hold as through this
            process: per-key order, exact accounting and dead letters (a failed item
            travels back with its error), backpressure (the next stage's ring holds
            parts: its pool ``metrics()`` count parts, not items; the ``StageReport``
            counts items), re-sends after an actor death on either side, ``ordered``.
            Used only where it can keep them; these go through this process as before:
            stages of an ordered pipeline whose units hold several items (unkeyed:
            their values move one by one), a stage after the reorder buffer, a stage
            with a ``breaker``/``limiter``/``rate_limiter`` on either side (it
            admits items here, one by one),
            anything next to a thread or process stage, and, batch by batch, outputs
            whose next-stage key cannot be routed on the actor exactly as here (the
            key raised, or hashes differ between processes: ``str``/``bytes`` keys
            when the actors' ``PYTHONHASHSEED`` is not the driver's, ``None``,
            objects with their own ``__hash__``; Ray's workers inherit the driver's
            environment when ``RayBackend`` starts the local cluster, so running the
            driver with ``PYTHONHASHSEED`` set lets ``str`` keys through; on a cluster,
            set it for the actors too, ``actor_options={"runtime_env": {"env_vars":
            ...}}``). A stage on this path runs its
            function over a batch on the actor, so an actor death charges the batch
            (re-sent, then ``ShardLost``), as for any Ray pool. ``False``: always
            through this process.

    Stage arguments (``map``, ``filter``, ``flat_map``, ``sink``): ``workers`` (default
    1: under the GIL more workers help only functions that release it), ``key``,
    ``capacity``, ``batch_size`` (items per handler call; default 512, and on a remote
    stage the backend's per-message default), ``batch_timeout``, the guards
    ``breaker``, ``limiter``, ``rate_limiter``, ``retry`` (applied per item, as in
    ``ShardedPool``), ``dead_letter``, ``name`` and ``backend`` (None: the pipeline's).

    Stages on worker processes or Ray: with ``backend="process"`` (or ``"ray"``, or a
    ``Backend``) the stage's ``workers`` are worker processes (Ray actors) and its
    function runs there, one call per item, while everything else stays in this process:
    the stage's ring and routing (``key`` keeps per-key order), its counters, error
    routing (``errors``, ``dead_letter``, the report) and the hand-off to the next stage,
    done by the stage's dispatch threads as each shipped list of items comes back
    (``ShardedPool(on_results=...)``). A stage behaves as on threads: exact accounting,
    ``ordered=True``, backpressure, fail fast and Ctrl-C. What differs: the function must
    travel (for processes: by reference, a module-level function, or by value with
    cloudpickle when installed; checked when the stage is added: ``TypeError``); items
    and outputs cross by pickle (an item or output that does not pickle fails alone,
    ``TypeError``; with ``backend=ProcessBackend(serializer=...)`` they cross with that
    serializer instead, e.g. msgspec for plain-data records: unordered pipelines only
    (``ValueError`` otherwise), and such a stage is never fused); ``breaker``,
    ``limiter`` and ``rate_limiter`` stay in this process
    around the shipping of the stage's lists (one state for all its workers, as
    ``ShardedPool`` does) and ``retry`` is refused (``ValueError``: retried here, an item
    would run after later items of its key); ``batch_size`` is the most items per message
    (default: the backend's, 256 for processes; a ``Backend`` instance keeps its own
    ``ship_batch_size``/``batch_size``; a message must fit ``ProcessBackend.ring_bytes``)
    and ``batch_timeout`` is not used (a message carries what is queued). A worker
    process that dies is charged to the item it was running, which is retried alone and
    then fails with ``WorkerLost`` (``ProcessBackend(max_attempts=)``); **that item may
    run more than once**, the others run once (on Ray, the batch running when an actor
    died may run twice). With ``ordered=True``, a remote stage moves the values of its
    units one by one and regroups them (``shardflow._remote_stage``), so that a crash is
    charged to one item while the other stages keep their runs. Outputs travel through
    this process between stages, except between fused stages (``fuse``), where they
    stay in the worker, and between consecutive Ray stages (``object_refs``), where
    they go actor to actor as object references; in a fused run of stages, a worker
    that dies is charged to the item the first stage got. Use remote stages for functions
    that cost well above the ~1-2 us per item that crossing to a worker costs.

    Ctrl-C (``KeyboardInterrupt``) during ``run()`` or iteration stops the pipeline at
    once: the source is no longer read, queued items are dropped, and the exception
    propagates. ``metrics()`` gives each stage's ``PoolMetrics``.

    Example:
        >>> import shardflow
        >>> p = shardflow.Pipeline(range(10)).map(lambda x: x * x).filter(lambda x: x % 2)
        >>> sorted(p)
        [1, 9, 25, 49, 81]
        >>> p.report.stage("filter-2").filtered
        5
    """

    def __init__(
        self,
        source: Iterable[T],
        *,
        ordered: bool = False,
        window: int | None = None,
        errors: Literal["fail_fast", "continue"] = "fail_fast",
        capacity: int | None = None,
        source_chunk: int = SOURCE_CHUNK,
        name: str | None = None,
        backend: str | Backend = "thread",
        fuse: bool = True,
        object_refs: bool = True,
    ) -> None:
        if not isinstance(source, Iterable):
            raise TypeError(f"source must be an iterable, got {source!r} ({type(source).__name__})")
        check_bool("ordered", ordered)
        if window is None:
            window = 8192
        check_int("window", window, lo=1, hi=MAX_CAPACITY)
        check_choice("errors", errors, _ERRORS)
        if capacity is None:
            capacity = DEFAULT_STAGE_CAPACITY
        check_int("capacity", capacity, lo=1, hi=MAX_CAPACITY)
        check_int("source_chunk", source_chunk, lo=1, hi=1 << 20)
        check_str("name", name)
        resolve_backend(backend)  # refused here, with the usual message, if unknown
        check_bool("fuse", fuse)
        check_bool("object_refs", object_refs)
        #: Hand outputs between consecutive unfused Ray stages as object references.
        self.object_refs = object_refs
        #: Run consecutive remote stages that can share their workers in one worker loop.
        self.fuse = fuse
        self._source: Iterable[Any] = source
        #: The default ``backend`` of the ``map``/``filter``/``flat_map``/``sink`` stages.
        self.backend: str | Backend = backend
        self.source_chunk = source_chunk
        self.ordered = ordered
        self.window = window
        self.errors: str = errors
        self.capacity = capacity
        self.name = name or "Pipeline"
        self._stages: list[Stage] = []
        self._started = False
        self._fork_gen = _fork.generation  # fork detection (see _fork); set again by _begin
        self._has_sink = False
        #: The report of the finished run (also after iteration); None before.
        self.report: PipelineReport | None = None
        # Run state.
        self._stop = threading.Event()
        self._aborted = False
        self._err_lock = threading.Lock()
        self._first_error: BaseException | None = None
        self._source_items = 0
        self._source_unsent = 0
        self._source_error: BaseException | None = None
        self._results = 0
        self._results_lock = threading.Lock()
        self._t0 = 0.0
        # Ordered mode: the reorder buffer and the window the source waits on.
        self._order = threading.Condition()
        self._pending: dict[int, Any] = {}
        self._unit = 1
        self._released = 0
        self._final: Callable[[list[Any]], object] = self._count_results

    # ------------------------------------------------------------------ building

    def _add(
        self,
        kind: str,
        fn: Callable[[Any], Any] | None,
        *,
        workers: int,
        key: Callable[[Any], Hashable] | None,
        capacity: int | None,
        batch_size: int | None,
        batch_timeout: float | None,
        breaker: CircuitBreaker | None = None,
        limiter: Limiter | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: Retry | None = None,
        dead_letter: DeadLetter | list[Any] | Any | None = None,
        name: str | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        if self._started:
            raise RuntimeError(f"{self.name}: cannot add a stage to a pipeline that started")
        if self._has_sink:
            raise ValueError(f"{self.name}: sink() ends the pipeline; no stage can follow it")
        if self.ordered and kind != "sink" and self._stages and self._stages[-1].kind == "batch":
            # Groups are cut in order from the reorder buffer; a stage after them would
            # need a second one.
            raise ValueError(
                f"{self.name}: with ordered=True only sink() can follow batch(); "
                "use ordered=False, or group the ordered results yourself"
            )
        if fn is not None:
            check_callable("fn", fn)
        check_int("workers", workers, lo=1, hi=4096)
        check_callable("key", key, optional=True)
        if capacity is None:
            capacity = self.capacity
        check_int("capacity", capacity, lo=1, hi=MAX_CAPACITY)
        if batch_size is not None:
            check_int("batch_size", batch_size, lo=1, hi=1 << 20)
        check_seconds("batch_timeout", batch_timeout)
        check_instance("breaker", breaker, CircuitBreaker)
        check_instance("limiter", limiter, Limiter)
        check_instance("rate_limiter", rate_limiter, RateLimiter)
        check_instance("retry", retry, Retry)
        check_str("name", name)
        dl: DeadLetter | list[Any] | None
        if dead_letter is None or isinstance(dead_letter, list):
            dl = dead_letter
        else:
            dl = dead_letter_target(dead_letter)
        if name is None:
            name = f"{kind}-{len(self._stages) + 1}"
        if any(s.name == name for s in self._stages):
            raise ValueError(f"name must be unique among the stages, got {name!r} twice")
        remote = None
        spec = self.backend if backend is None else backend
        if kind != "batch":
            remote = stage_backend(spec, batch_size)
        if batch_size is None:
            batch_size = DEFAULT_STAGE_BATCH if remote is None else remote_batch_size(remote)
        pool_options: dict[str, Any] = {}
        if remote is not None:
            assert fn is not None
            if retry is not None:
                raise ValueError(
                    f"retry= is not supported on a stage with backend={remote.name!r}: "
                    "retried in this process, an item would run again after later items "
                    "of its key; retry inside fn (shardflow.Retry(...).call(fn, item)), "
                    "or use backend='thread'"
                )
            check_shippable(remote, kind, fn, False)
            serializer = getattr(remote, "serializer", None)
            if self.ordered and serializer is not None:
                raise ValueError(
                    f"backend: a stage of an ordered pipeline cannot use a ProcessBackend "
                    f"with serializer= ({serializer!r}): it moves each value with "
                    "its place in the source order, which only pickle carries; use "
                    "ordered=False, or a ProcessBackend without serializer="
                )
            # The other guards stay in this process, in the stage's pool, around the
            # shipping of its lists (one state for all the workers): see ShardedPool.
            pool_options = {
                k: v
                for k, v in (
                    ("breaker", breaker),
                    ("limiter", limiter),
                    ("rate_limiter", rate_limiter),
                )
                if v is not None
            }
        elif fn is not None:
            fn = guard(fn, breaker=breaker, limiter=limiter, rate_limiter=rate_limiter, retry=retry)
        self._stages.append(
            Stage(
                kind,
                name,
                fn,
                workers=workers,
                key=key,
                capacity=capacity,
                batch_size=batch_size,
                batch_timeout=batch_timeout,
                dead_letter=dl,
                pool_options=pool_options,
                backend=remote,
            )
        )
        self._stages[-1].backend_spec = spec

    def map(
        self,
        fn: Callable[[T], U],
        *,
        workers: int = 1,
        key: Callable[[T], Hashable] | None = None,
        capacity: int | None = None,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        breaker: CircuitBreaker | None = None,
        limiter: Limiter | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: Retry | None = None,
        dead_letter: DeadLetter | list[Any] | Any | None = None,
        name: str | None = None,
        backend: str | Backend | None = None,
    ) -> Pipeline[U]:
        """Add a stage that passes on ``fn(item)`` for every item.

        Example:
            >>> import shardflow
            >>> list(shardflow.Pipeline([1, 2, 3]).map(str, name="as-text"))
            ['1', '2', '3']
        """
        self._add(
            "map",
            fn,
            workers=workers,
            key=key,
            capacity=capacity,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            breaker=breaker,
            limiter=limiter,
            rate_limiter=rate_limiter,
            retry=retry,
            dead_letter=dead_letter,
            name=name,
            backend=backend,
        )
        return cast("Pipeline[U]", self)

    def filter(
        self,
        pred: Callable[[T], object],
        *,
        workers: int = 1,
        key: Callable[[T], Hashable] | None = None,
        capacity: int | None = None,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        dead_letter: DeadLetter | list[Any] | Any | None = None,
        name: str | None = None,
        backend: str | Backend | None = None,
    ) -> Pipeline[T]:
        """Add a stage that passes on the items for which ``pred(item)`` is true; the
        others count as ``filtered``.

        Example:
            >>> import shardflow
            >>> sorted(shardflow.Pipeline(range(6)).filter(lambda x: x % 3 == 0))
            [0, 3]
        """
        self._add(
            "filter",
            pred,
            workers=workers,
            key=key,
            capacity=capacity,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            dead_letter=dead_letter,
            name=name,
            backend=backend,
        )
        return self

    def flat_map(
        self,
        fn: Callable[[T], Iterable[U]],
        *,
        workers: int = 1,
        key: Callable[[T], Hashable] | None = None,
        capacity: int | None = None,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        breaker: CircuitBreaker | None = None,
        limiter: Limiter | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: Retry | None = None,
        dead_letter: DeadLetter | list[Any] | Any | None = None,
        name: str | None = None,
        backend: str | Backend | None = None,
    ) -> Pipeline[U]:
        """Add a stage that passes on every element of ``fn(item)`` (zero or more per
        item). The iterable is consumed inside the item's call, so an exception raised
        while iterating it fails that item and none of its elements are passed on.

        Example:
            >>> import shardflow
            >>> sorted(shardflow.Pipeline([1, 2]).flat_map(lambda x: [x] * x))
            [1, 2, 2]
        """
        self._add(
            "flat_map",
            fn,
            workers=workers,
            key=key,
            capacity=capacity,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            breaker=breaker,
            limiter=limiter,
            rate_limiter=rate_limiter,
            retry=retry,
            dead_letter=dead_letter,
            name=name,
            backend=backend,
        )
        return cast("Pipeline[U]", self)

    def batch(
        self,
        size: int,
        timeout: float | None = None,
        *,
        capacity: int | None = None,
        name: str | None = None,
    ) -> Pipeline[list[T]]:
        """Add a stage that groups items into lists of ``size`` (the last one may be
        shorter). With ``timeout`` a partial group is passed on once its first item has
        waited that long (seconds); without, only the end of the stream cuts one short.
        One worker. With ``ordered=True`` the groups are cut in source order; only
        ``sink()`` may follow then.

        Example:
            >>> import shardflow
            >>> list(shardflow.Pipeline(range(5)).batch(2))
            [[0, 1], [2, 3], [4]]
        """
        check_int("size", size, lo=1, hi=1 << 20)
        check_seconds("timeout", timeout, positive=True)
        self._add(
            "batch",
            None,
            workers=1,
            key=None,
            capacity=capacity,
            batch_size=size,
            batch_timeout=timeout,
            name=name,
        )
        return cast("Pipeline[list[T]]", self)

    def sink(
        self,
        fn: Callable[[T], object],
        *,
        workers: int = 1,
        key: Callable[[T], Hashable] | None = None,
        capacity: int | None = None,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        breaker: CircuitBreaker | None = None,
        limiter: Limiter | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: Retry | None = None,
        dead_letter: DeadLetter | list[Any] | Any | None = None,
        name: str | None = None,
        backend: str | Backend | None = None,
    ) -> Pipeline[T]:
        """End the pipeline with a stage that calls ``fn(item)`` for every item and passes
        nothing on; ``run()`` it. With ``ordered=True`` and one worker, ``fn`` sees the
        items in source order.

        Example:
            >>> import shardflow
            >>> seen = []
            >>> shardflow.Pipeline(range(3)).sink(seen.append).run().results
            3
            >>> seen
            [0, 1, 2]
        """
        self._add(
            "sink",
            fn,
            workers=workers,
            key=key,
            capacity=capacity,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            breaker=breaker,
            limiter=limiter,
            rate_limiter=rate_limiter,
            retry=retry,
            dead_letter=dead_letter,
            name=name,
            backend=backend,
        )
        self._has_sink = True
        return self

    # ------------------------------------------------------------------ arrays

    #: Set by from_array / map_batches (class defaults: other pipelines have none).
    _array_source: ArraySource | None = None
    _array_stages: tuple[RowCounter, ...] = ()

    @classmethod
    def from_array(
        cls,
        data: Any,
        *,
        batch_size: int = DEFAULT_BATCH_ROWS,
        copy: bool = False,
        ordered: bool = False,
        window: int | None = None,
        errors: Literal["fail_fast", "continue"] = "fail_fast",
        capacity: int | None = None,
        name: str | None = None,
    ) -> Pipeline[Any]:
        """A pipeline whose items are array batches of ``data``: zero-copy slices of
        ``batch_size`` rows, in order, handed to the first stage one by one.

        ``data`` is a numpy array (plain or structured; rows are the first axis) or a
        dict of numpy arrays with as many rows each (as ``ShardedPool.submit_array``
        takes; the same errors for bad input). Add ``map_batches`` stages (and any other:
        their items are the batches); iterate for the result batches, or ``concat()``
        them into one table. ``row_report()`` counts rows. The source is unkeyed (for
        rows routed by key, use ``ShardedPool(arrays=True).submit_array``). ``ordered``,
        ``window``, ``errors``, ``capacity`` and ``name`` are ``Pipeline``'s; ``window``
        and ``capacity`` count batches here (defaults 64 and ``ARRAY_CAPACITY``, 16).

        Example:
            >>> import numpy as np, shardflow
            >>> p = shardflow.Pipeline.from_array({"x": np.arange(10.0)}, batch_size=4,
            ...                                   ordered=True)
            >>> p.map_batches(lambda b: {"y": b["x"] * 2}).concat()["y"].tolist()[:4]
            [0.0, 2.0, 4.0, 6.0]
            >>> p.row_report()["source"].emitted
            10
        """
        check_int("batch_size", batch_size, lo=1, hi=1 << 24)
        check_bool("copy", copy)
        source = ArraySource(data, batch_size, copy)
        pipeline: Pipeline[Any] = cls(
            source,
            ordered=ordered,
            window=ARRAY_WINDOW if window is None else window,
            errors=errors,
            capacity=ARRAY_CAPACITY if capacity is None else capacity,
            source_chunk=1,  # a batch is thousands of rows: hand each over at once
            name=name,
        )
        pipeline._array_source = source
        return pipeline

    def map_batches(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int = 1,
        capacity: int | None = None,
        dead_letter: DeadLetter | list[Any] | Any | None = None,
        name: str | None = None,
    ) -> Pipeline[Any]:
        """Add a stage that passes on ``fn(batch)`` for every array batch: ``fn`` takes
        a batch (a dict of arrays, or an array) and returns one (any rows, any columns).
        A batch whose ``fn`` raises, or returns something else (``TypeError``), fails as
        a whole (routed as the pipeline's ``errors`` says: a dead letter gets the batch).
        ``workers > 1`` helps functions that release the GIL (most numpy work on large
        arrays does). ``capacity``: batches queued per worker, default
        ``ARRAY_CAPACITY`` (16). Rows are counted in ``row_report()``.

        Example:
            >>> import numpy as np, shardflow
            >>> p = shardflow.Pipeline.from_array(np.arange(6), batch_size=2)
            >>> sorted(p.map_batches(lambda b: b[b % 2 == 0]).concat().tolist())
            [0, 2, 4]
        """
        check_callable("fn", fn)
        if name is None:
            name = f"map_batches-{len(self._stages) + 1}"
        check_str("name", name)
        counter = RowCounter(name)
        self._add(
            "map",
            counter.wrap(fn),
            workers=workers,
            key=None,
            capacity=ARRAY_CAPACITY if capacity is None else capacity,
            batch_size=1,
            batch_timeout=None,
            dead_letter=dead_letter,
            name=name,
            backend="thread",  # its row counter counts in this process
        )
        self._array_stages = (*self._array_stages, counter)
        return self

    def concat(self) -> Any:
        """Run the pipeline and concatenate the array batches it yields into one table
        of their form (a dict of arrays, or an array); None when no batch came out. With
        ``ordered=False`` the rows come in completion order. The report is in
        ``self.report`` afterwards, as after iterating."""
        return concat_batches(list(self))

    def row_report(self) -> dict[str, StageRows]:
        """Row counts: ``"source"`` (``emitted``: the rows ``from_array`` handed to the
        first stage) and every ``map_batches`` stage by name (see ``StageRows``), in
        order. Exact once the pipeline finished; a stage's ``received`` equals the
        ``emitted`` of the array stage (or source) before it when nothing failed between
        them."""
        out: dict[str, StageRows] = {}
        source = self._array_source
        if source is not None:
            out["source"] = StageRows("source", source.rows, source.rows, 0, source.rows)
        for counter in self._array_stages:
            out[counter.name] = counter.snapshot()
        return out

    # ------------------------------------------------------------------ inspection

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' names, in order."""
        return tuple(s.name for s in self._stages)

    def max_in_flight(self) -> int:
        """An upper bound on the items inside the pipeline at any moment (source items
        taken and not yet through the last stage, counted per stage). Per stage and
        worker: its ring (capacity rounded up to a power of two), its private drain
        buffer and batch, and one batch of outputs being handed on; plus the source's
        chunk, the result channel (iteration) and, ordered, the reorder window. A
        ``flat_map`` multiplies what follows it by its expansion."""
        largest = max([s.batch_size for s in self._stages] + [self.source_chunk])
        tail = self._tail_start()
        if self.ordered:
            # Before the reorder buffer the window bounds everything; a release hands on
            # up to a window's worth of items at once.
            largest = max(largest, self.window)
        total = self.source_chunk + CHANNEL_BATCHES * largest
        for i, s in enumerate(self._stages):
            if self.ordered and i < tail:
                continue
            ring = 1
            while ring < s.capacity:
                ring <<= 1
            # A remote stage may have several shipped lists in flight per shard (its
            # backend's window), each of up to batch_size items.
            shipped = getattr(s.backend, "window", 1) if s.backend is not None else 1
            if shipped is None:  # ProcessBackend(window=None): the pools' default
                from shardflow.backends.process import DEFAULT_WINDOW

                shipped = DEFAULT_WINDOW
            total += s.workers * (ring + WORKER_DRAIN + (1 + shipped) * s.batch_size)
        if self.ordered:
            total += self.window
        return total

    def _tail_start(self) -> int:
        """Index of the first stage that takes plain values in order: the sink, and with
        ordered=True a batch() right before it (or at the end)."""
        stages = self._stages
        tail = len(stages)
        if tail and stages[tail - 1].kind == "sink":
            tail -= 1
        if self.ordered and tail and stages[tail - 1].kind == "batch":
            tail -= 1
        return tail

    def metrics(self) -> dict[str, PoolMetrics]:
        """Each started stage's ``PoolMetrics`` (see ``ShardedPool.metrics()``), by stage
        name, in order; empty before the pipeline starts. With ``ordered=True`` the pools
        of the stages before the reorder buffer move units (runs of items), and count
        those; ``StageReport`` counts items."""
        out: dict[str, PoolMetrics] = {}
        for s in self._stages:
            if s.pool is not None:
                out[s.name] = s.pool.metrics()
            elif s.final_metrics is not None:
                out[s.name] = s.final_metrics
        return out

    def __repr__(self) -> str:
        chain_ = " -> ".join(self.stage_names) or "(no stages)"
        return f"<Pipeline {self.name!r} {chain_} ordered={self.ordered} errors={self.errors!r}>"

    # ------------------------------------------------------------------ running

    def run(self) -> PipelineReport:
        """Drive the pipeline to the end in this thread; return the report.

        Results of the last stage go to the sink, or are counted and dropped when there
        is none (iterate instead to get them). With ``errors="fail_fast"`` the first
        error is raised here once what was inside has drained. Ctrl-C stops the
        pipeline and raises ``KeyboardInterrupt``.
        """
        self._begin(self._count_results)
        try:
            self._feed()
            self._drain()
        except BaseException:
            self._abort()
            raise
        return self._finish()

    def __iter__(self) -> Iterator[T]:
        """Run the pipeline (the source is read by a feeder thread) and yield the results
        as they come out of the last stage. Leaving the loop early stops the pipeline.
        The report is in ``self.report`` afterwards."""
        return self._iterate()

    def __aiter__(self) -> AsyncIterator[T]:
        """``async for``: as ``for``, but every wait for results runs in a worker thread
        (``asyncio.to_thread``), so the event loop is never blocked."""
        return self._aiterate()

    def _iterate(self) -> Iterator[T]:
        chan = self._open_channel()
        done = False
        try:
            while True:
                got = self._next_batch(chan)
                if got is _END:
                    break
                yield from got
            done = True
        finally:
            if not done:
                self._abort()
        self._close_channel()
        self._finish()

    async def _aiterate(self) -> AsyncIterator[T]:
        chan = self._open_channel()
        done = False
        try:
            while True:
                try:
                    got = chan.get_nowait()
                except queue.Empty:
                    got = await _aio.to_thread(self._next_batch, chan)
                if got is _END:
                    break
                for item in got:
                    yield item
            done = True
        finally:
            if not done:
                self._abort()
        await _aio.to_thread(self._close_channel)
        self._finish()

    # ------------------------------------------------------------------ internals

    def _begin(self, final: Callable[[list[Any]], object]) -> None:
        self._check_fork()
        if self._started:
            raise RuntimeError(f"{self.name}: a pipeline runs once; build a new one")
        self._started = True
        self._fork_gen = _fork.generation
        self._t0 = time.perf_counter()
        stages = self._stages
        # The tail takes plain values: the sink, and with ordered=True a batch() right
        # before it (or at the end), which must see values in order to cut groups in
        # order. Ordered: the stages before the tail move (seq, value) units into the
        # reorder buffer, which releases values in order to the tail / the channel / the
        # counter, from one thread at a time (single producer, one-worker FIFO stages).
        tail = self._tail_start()
        self._tail = tail
        body = stages[:tail]
        if self.ordered:
            for s in body:
                s.units = True
        # Items per unit: a stage batch (so a unit is one handler call's worth), or 1 when
        # a stage routes by key (a unit goes to one shard, and keys differ per item).
        unit = 1
        if self.ordered and body and not any(st.key is not None for st in body):
            unit = max(1, min([self.source_chunk, self.window] + [st.batch_size for st in body]))
        self._unit = unit
        for s in body:
            # A remote stage moves its units' values one by one (a worker that dies is
            # charged with one item, never a run of them): see shardflow._remote_stage.
            s.pieces = s.units and s.backend is not None and unit > 1
        fail_fast = self.errors == "fail_fast"
        self._chains = self._fused_chains() if self.fuse else {}
        self._refs = self._ref_handoffs(tail) if self.object_refs else {}
        try:
            self._start_stages(final, tail, unit, fail_fast)
        except BaseException:
            # A stage that could not start (a worker process that failed to load its
            # function ...): stop the ones already started, then raise.
            self._abort()
            raise

    def _start_stages(
        self, final: Callable[[list[Any]], object], tail: int, unit: int, fail_fast: bool
    ) -> None:
        stages = self._stages
        chains = self._chains
        members = {id(m) for chain in chains.values() for m in chain[1:]}
        # Start from the end, so that each handler knows where its outputs go.
        emit: Callable[[list[Any]], object] = final
        for i, s in reversed(list(enumerate(stages))):
            if i == tail - 1:
                self._final = emit
                if self.ordered:
                    emit = self._reorder
            if id(s) in members:
                continue  # runs in the pool of its chain's first stage
            to = _discard if s.kind == "sink" else emit
            if i in self._refs:
                chain = chains.get(i, [s])
                route, tokens, per_part, most = self._refs[i]
                to = _discard if chain[-1].kind == "sink" else emit
                by_ref = RefCallbacks(chain, to, fail_fast, self._record, route)
                returns = 1 if route is None else route.parts + 1
                s.start(
                    by_ref.handler(),
                    by_ref.failed,
                    self.name,
                    unit,
                    on_results=by_ref.took,
                    refs=(returns, tokens, per_part, most),
                )
                for m in chain[1:]:
                    m.pool = s.pool
            elif i in chains:
                chain = chains[i]
                to = _discard if chain[-1].kind == "sink" else emit
                remote: RemoteCallbacks = ChainCallbacks(chain, to, fail_fast, self._record)
                s.start(remote.handler(), remote.failed, self.name, unit, on_results=remote.took)
                for m in chain[1:]:
                    m.pool = s.pool
            elif s.backend is None:
                s.start(
                    s.make_handler(to, fail_fast, self._record),
                    self._internal_error(s),
                    self.name,
                    unit,
                )
            else:
                remote = RemoteCallbacks(s, to, fail_fast, self._record)
                s.start(remote.handler(), remote.failed, self.name, unit, on_results=remote.took)
            assert s.pool is not None
            s.pool._fork_owner = "Pipeline"  # named by the error a forked child gets
            emit = s.pool.submit_many
            if s.pieces:
                emit = remote.submit(emit)
            if s.key is not None and not fail_fast:
                # continue: an item whose key function raises is this stage's error.
                emit = s.skipping_bad_keys(emit, self._record)
        if tail == 0:
            self._final = emit
        self._entry = emit

    def _ref_handoffs(self, tail: int) -> dict[int, tuple[Route | None, bool, int, int]]:
        """Where outputs move actor to actor (``object_refs``): for the first stage of
        every run of stages (a fused chain or one stage) on either side of such a
        hand-off, ``(route to the next run or None, whether its items are parts, values
        expected per part, the most values a part holds before a flat_map)``. A hand-off
        joins two consecutive runs of Ray stages, neither moving pieces (ordered units
        of several items) nor having guards, and, when ordered, before the reorder
        buffer."""
        from shardflow.backends.ray import RayBackend

        chains = self._chains
        runs: list[tuple[int, list[Stage]]] = []
        i = 0
        stages = self._stages
        while i < len(stages):
            run = chains.get(i, [stages[i]])
            runs.append((i, run))
            i += len(run)

        def on_ray(run: list[Stage]) -> bool:
            return all(isinstance(st.backend, RayBackend) and not st.pieces for st in run)

        out: dict[int, tuple[Route | None, bool, int, int]] = {}
        for (a, up), (b, down) in pairwise(runs):
            if not (on_ray(up) and on_ray(down)) or up[-1].kind == "sink":
                continue
            if any(st.pool_options for st in up + down) or up[0].units != down[0].units:
                # A guard admits items in this process (per item on the path through
                # it); a stage on this path ships whole lists, which it would admit.
                continue
            if self.ordered and b >= tail:
                continue
            head = down[0]
            route = Route(head.key, head.workers, head.units)
            _, tokens_in, per_in, most_in = out.get(a, (None, False, 1, 1))
            out[a] = (route, tokens_in, per_in, most_in)
            per_part = max(1, up[0].batch_size // route.parts)
            out[b] = (None, True, per_part, up[0].batch_size)
        return out

    def _fused_chains(self) -> dict[int, list[Stage]]:
        """Runs of consecutive stages that fuse (index of the first -> the run): remote
        stages given the same ``backend`` (the same name, or the same ``Backend``) with
        the same ``workers``, every stage after the first without a ``key`` (it follows
        the first stage's routing), none with a guard, on the same side of the reorder
        buffer, and not moving whole units (a keyed ordered pipeline)."""

        def fusable(a: Stage, b: Stage) -> bool:
            same = a.backend_spec is b.backend_spec or (
                isinstance(a.backend_spec, str) and a.backend_spec == b.backend_spec
            )
            return (
                same
                and a.backend is not None
                and b.backend is not None
                and a.kind != "sink"
                and b.key is None
                and not a.pool_options  # guards admit one stage's items, in this process
                and not b.pool_options
                and a.workers == b.workers
                # A fused run sends back its framing (outputs, failures): pickle only.
                and getattr(a.backend, "serializer", None) is None
                and a.units == b.units
                and a.pieces == b.pieces
                and (a.pieces or not a.units)
            )

        stages = self._stages
        chains: dict[int, list[Stage]] = {}
        i = 0
        while i < len(stages):
            j = i
            while j + 1 < len(stages) and fusable(stages[j], stages[j + 1]):
                j += 1
            if j > i:
                chains[i] = stages[i : j + 1]
            i = j + 1
        return chains

    def _feed(self) -> None:
        """Read the source into the first stage, in chunks, until it ends or the pipeline
        stops (a fail-fast error, Ctrl-C)."""
        target = self._entry
        units = self.ordered and any(s.units for s in self._stages)
        unit = self._unit
        window = self.window
        order = self._order
        stop = self._stop
        seq = 0
        source = self._source
        # range, list and tuple sources are cut by slicing: a chunk is built in C, without
        # an islice step per item (the same items, in the same order, as iterating; a
        # list is read by position, as its iterator does).
        sliced = type(source) in (range, list, tuple)
        pos = 0
        it: Iterator[Any] = iter(())
        if not sliced:
            try:
                it = iter(source)
            except Exception as exc:
                self._source_failed(exc)
                return
        while not stop.is_set():
            n = self.source_chunk
            if units:
                # The window: at most `window` items ahead of the oldest unreleased one.
                # Read without the lock (one int, written by the reorder buffer): the
                # buffer may hold the lock while it waits for room in the sink.
                room = window - (seq - self._released)
                if room <= 0:
                    with order:
                        room = window - (seq - self._released)
                        while room <= 0 and not stop.is_set():
                            order.wait(POLL)
                            room = window - (seq - self._released)
                if room <= 0:
                    break
                n = min(n, room)
            chunk: list[Any] = []
            failed = False
            if sliced:
                part = source[pos : pos + n]  # type: ignore[index]
                chunk = part if type(part) is list else list(part)
                pos += len(chunk)
            else:
                try:
                    chunk.extend(islice(it, n))
                except Exception as exc:
                    # What the source yielded before it raised still goes through.
                    self._source_failed(exc)
                    failed = True
            if not chunk:
                break
            self._source_items += len(chunk)
            got = len(chunk)
            if units:
                # (seq, count, values): `unit` consecutive items per unit.
                chunk = [
                    (seq + i, len(part), part)
                    for i in range(0, got, unit)
                    for part in (chunk[i : i + unit],)
                ]
                seq += got
            try:
                target(chunk)
            except Exception as exc:
                if self._aborted:
                    raise
                # The first stage's key function raised: what it refused is counted as
                # unsent, and the error stops the pipeline (see StageReport.unsent).
                taken = list(getattr(exc, "unsent", ()))
                lost = taken + chunk[getattr(exc, "submitted", 0) + len(taken) :]
                self._source_unsent += sum(u[1] for u in lost) if units else len(lost)
                self._record(exc, "source")
                break
            if failed or got < n:
                break

    def _drain(self) -> None:
        """The source ended: close each stage once the one before it finished, in order,
        so that every item already inside is handled."""
        for i, s in enumerate(self._stages):
            if i == self._tail and self.ordered:
                self._release_leftovers()
            assert s.pool is not None
            s.pool.close()
            s.pool.join()
        if self.ordered and self._tail == len(self._stages):
            self._release_leftovers()

    def _release_leftovers(self) -> None:
        # Every unit reaches the buffer unless a stage could not hand it on (an error,
        # recorded); release what is left in seq order so that nothing stays behind.
        with self._order:
            pend = self._pending
            out: list[Any] = []
            for seq in sorted(pend):
                out += pend.pop(seq)[2]
            if out:
                self._final(out)

    def _reorder(self, units: list[Any]) -> None:
        """Take the units the last stage finished; release the values of every unit now
        complete, in seq order. Called by that stage's workers."""
        with self._order:
            pend = self._pending
            for u in units:
                pend[u[0]] = u
            nxt = self._released
            out: list[Any] = []
            while nxt in pend:
                u = pend.pop(nxt)
                out += u[2]
                nxt += u[1]
            if nxt == self._released:
                return
            self._released = nxt
            self._order.notify_all()
            # Under the lock, so that releases reach the next step in order.
            if out:
                self._final(out)

    def _count_results(self, values: list[Any]) -> None:
        with self._results_lock:
            self._results += len(values)

    def _record(self, exc: BaseException, where: str) -> None:
        """A fail-fast error: remember the first, stop the source."""
        with self._err_lock:
            if self._first_error is None:
                self._first_error = exc
        # No notify of the window condition here: this runs in stage handlers, and the
        # reorder buffer may hold that lock while it waits for room in the sink (whose
        # handler may be the caller). The source sees the flag within POLL seconds.
        self._stop.set()

    def _source_failed(self, exc: BaseException) -> None:
        self._source_error = exc
        if self.errors == "fail_fast":
            self._record(exc, "source")

    def _internal_error(self, stage: Stage) -> Callable[[Any, BaseException], None]:
        """on_error of a stage's pool: the handler itself raised (the next stage refused
        the outputs, or a bug). After an abort that is expected and ignored; otherwise the
        batch counts as failed and the error is raised like a fail-fast error."""

        def on_error(batch: Any, exc: BaseException) -> None:
            if self._aborted:
                return
            with stage.lock:
                stage.failed += len(batch) if isinstance(batch, list) else 1
                stage.errors.append((batch, exc))
            self._record(exc, stage.name)

        return on_error

    def _abort(self) -> None:
        """Stop everything now (Ctrl-C, an iterator left early): stop reading the source,
        drop what is queued, wake every wait. Workers finish the call they are in."""
        self._aborted = True
        self._stop.set()
        remote = []
        for s in self._stages:
            if s.pool is not None:
                try:
                    s.pool.shutdown(wait=False, cancel=True)
                except Exception:
                    pass
                if s.backend is not None:
                    remote.append(s.pool)
        if remote:
            # Threads end by themselves once their call returns; worker processes and
            # actors are released by join(), which must not hold up the caller (a
            # function may still be running over there): a reaper thread does it.
            threading.Thread(
                target=_reap, args=(remote,), name=f"{self.name}-reaper", daemon=True
            ).start()

    def _finish(self) -> PipelineReport:
        stages = []
        for s in self._stages:
            assert s.pool is not None
            m = s.pool.metrics()
            s.final_metrics = m
            with s.lock:
                stages.append(
                    StageReport(
                        name=s.name,
                        kind=s.kind,
                        received=s.received,
                        succeeded=s.succeeded,
                        emitted=s.emitted,
                        filtered=s.filtered,
                        failed=s.failed,
                        dead_lettered=s.dead_lettered,
                        errors=tuple(s.errors),
                        metrics=m,
                        unsent=s.unsent,
                    )
                )
        last = [s for s in stages if s.kind != "sink"]
        if self._has_sink:
            results = stages[-1].received
        elif last:
            results = last[-1].emitted
        else:
            results = self._source_items
        report = PipelineReport(
            source_items=self._source_items,
            source_error=self._source_error,
            stages=tuple(stages),
            results=results,
            elapsed=time.perf_counter() - self._t0,
            stopped_early=self._first_error is not None,
            source_unsent=self._source_unsent,
        )
        self.report = report
        err = self._first_error
        if err is not None:
            try:
                err.pipeline_report = report  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise err
        return report

    # ------------------------------------------------------------------ iteration

    def _open_channel(self) -> queue.Queue[Any]:
        if self._has_sink:
            raise ValueError(
                f"{self.name}: a pipeline that ends with sink() has no results to iterate; "
                "call run()"
            )
        # Bounded in batches: each put is one list of results, so the per-item cost of
        # the hand-off to the caller's thread is a fraction of one queue operation.
        chan: queue.Queue[Any] = queue.Queue(maxsize=CHANNEL_BATCHES)

        def put(values: list[Any]) -> None:
            # The results go to the counter too, then to the caller; waits poll the abort
            # flag so that a consumer that left never leaves a worker blocked here.
            while not self._aborted:
                try:
                    chan.put(values, timeout=POLL)
                    return
                except queue.Full:
                    continue

        self._begin(put)
        self._feeder = threading.Thread(
            target=self._feed_all, args=(chan,), name=f"{self.name}-source", daemon=True
        )
        self._feeder.start()
        return chan

    def _feed_all(self, chan: queue.Queue[Any]) -> None:
        """The feeder thread of an iterated pipeline: source, drain, end marker."""
        try:
            self._feed()
            self._drain()
        except Closed:
            if not self._aborted:
                raise
        except BaseException as exc:
            if not self._aborted:
                # Unexpected (the source's own errors are handled in _feed): raise it
                # from the iterator and stop the stages, which were not drained.
                self._record(exc, "feeder")
                self._abort()
        finally:
            while not self._aborted:
                try:
                    chan.put(_END, timeout=POLL)
                    break
                except queue.Full:
                    continue

    def _next_batch(self, chan: queue.Queue[Any]) -> Any:
        """The next list of results, or _END; waits in slices (Ctrl-C works, an abort
        ends the wait). In a forked child the stages and the feeder thread of a pipeline
        started before the fork do not exist: that raises rather than waits forever."""
        self._check_fork()
        while True:
            try:
                return chan.get(timeout=POLL)
            except queue.Empty:
                if self._aborted:
                    return _END

    def _check_fork(self) -> None:
        """Raise ``RuntimeError`` when this pipeline was started in a parent process
        before ``fork()`` (one built but not started runs in the child as usual)."""
        if self._started and self._fork_gen != _fork.generation:
            raise _fork.fork_error("Pipeline")

    def _close_channel(self) -> None:
        self._feeder.join()


def _reap(pools: list[Any]) -> None:
    """Release the workers of stopped remote stages (see ``Pipeline._abort``)."""
    for pool in pools:
        try:
            pool.join()
        except BaseException:  # already reported, or nothing left to report to
            pass


def _discard(values: list[Any]) -> None:
    """Where a sink's (empty) outputs go."""
