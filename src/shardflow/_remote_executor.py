"""``Executor(backend="process")`` and ``Executor(backend="ray")``: a
``concurrent.futures`` executor whose calls run in worker processes or Ray actors.

``shardflow.Executor(..., backend=...)`` returns a ``RemoteExecutor`` for any backend but
threads; the thread executor (``shardflow.executor``) is a separate, tuned path. This one
is a ``ShardedPool`` of the chosen backend and three small pieces around it:

* **The pool item is the future**, carrying its call ``(fn, args, kwargs)``, made and
  pushed by the thread executor's compiled ``submit``. Only the call crosses the process
  boundary: the executor's runner (``_Shipper``, around the backend's own) takes each
  call off its future as a plain tuple (which pickles several times faster than an object
  with ``__reduce__``) and keeps the future in a registry keyed by the tuple's identity.
  The backend ships whatever is queued in one message (``ProcessBackend.ship_batch_size``
  calls, one Ray call per ``RayBackend.batch_size``), the worker calls ``_call`` per
  tuple, and the return values come back with the batch.
* **Futures are completed in batches**, in the shard's dispatch thread, by
  ``on_results`` (one call per run of tasks, values in task order) and ``on_error``
  (failed calls, one by one): no message, queue or lock per task besides the future's
  own. A future becomes *running* when a dispatch thread takes its call (as
  ``ProcessPoolExecutor`` marks a call running when it moves it to its call queue); a
  future cancelled before that is not run (its tuple is empty). The pool does not steal:
  a dispatch thread takes a batch ahead of its window, and a stolen one would wait there
  behind a long call while its own worker idles.
* **``map`` ships chunks**: one task per chunk of ``chunksize`` argument tuples, run by
  ``_run_chunk`` in the worker; the results come back as one list per chunk and are
  yielded in input order.

Worker deaths are the backend's business (see ``shardflow.backends.process``): the call
that was running when a worker died is retried in a fresh worker, then failed alone with
``WorkerLost`` (``ProcessBackend(max_attempts=...)``); every other call completes. That is
the difference with ``ProcessPoolExecutor``, which fails every pending call with
``BrokenProcessPool`` and refuses new ones.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import _base
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from shardflow._executor import Halt, pop_futures, set_results, take_call, take_calls
from shardflow._executor import submit as _compiled_submit
from shardflow._fork import fork_error
from shardflow.backends import Backend, resolve_backend
from shardflow.backends._process_worker import _portable
from shardflow.backends.base import BatchOutcome, Deliver, Handler, Settle, ShardRunner
from shardflow.pool import ShardedPool

__all__ = ["RemoteExecutor"]

T = TypeVar("T")
P = ParamSpec("P")

LOGGER = _base.LOGGER
_names = itertools.count()

#: ``map`` without ``chunksize``: aim at this many chunks per worker (load spread) ...
MAP_CHUNKS_PER_WORKER = 4
#: ... with at most this many calls per chunk (one message, one result list).
MAP_CHUNK_MAX = 1024
#: ``map`` without ``buffersize``: chunks submitted and not yet yielded, per worker.
MAP_WINDOW_PER_WORKER = 4

_CANCELLED_CALL: tuple[Any, ...] = ()


def _future_type() -> type:
    # The thread executor's future: a concurrent.futures.Future whose state and lock are
    # compiled (cheaper to create and complete), and which carries its call until it is
    # taken (``take_call``); imported here to share it.
    from shardflow.executor import _Future

    return _Future


def _isolate(dumps: Callable[[Any], bytes], call: tuple[Any, ...]) -> tuple[Any, ...]:
    """``call`` pickled on its own (Ray serializes a batch as one argument, so one call
    that does not pickle would fail its whole batch): a call that does not pickle
    becomes one that raises the TypeError saying so, in the worker."""
    try:
        data = dumps(call)
    except Exception as exc:
        return (_raise_type_error, (_describe_unpicklable(call[0], exc),), None)
    return (_run_pickled, (data,), None)


def _run_pickled(data: bytes) -> Any:
    fn, args, kwargs = pickle.loads(data)
    return fn(*args, **kwargs) if kwargs else fn(*args)


def _describe_unpicklable(fn: Any, exc: BaseException) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return (
        f"cannot send the call {name}(...) to a worker: the function or its arguments "
        f"cannot be pickled ({type(exc).__name__}: {exc})"
    )


def _raise_type_error(message: str) -> None:
    raise TypeError(message)


class _Shipper(ShardRunner):
    """The executor's runner: the backend's own runner, fed call tuples instead of the
    pool's items (the futures, each carrying its call, as the thread executor's do).

    The pool's shard loop hands a batch of futures to ``run``: each is marked running (or
    skipped, if it was cancelled: its call becomes ``()``), its call taken off it as a
    tuple ``(fn, args, kwargs)`` and registered in ``registry`` by the tuple's identity,
    and the backend's runner ships the tuples (a plain tuple pickles several times faster
    than an object with ``__reduce__``). Values (``deliver``) and failures name the call
    tuples when a runner reports them later (``settle``: Ray's window); ``registry`` maps
    them back to their futures. Failures reported at once (a ``BatchOutcome``) name the
    futures (the core's batch); ``run`` drops their tuples from the registry itself."""

    #: The executor's pool has no guards to share.
    shares_guards: ClassVar[bool] = False

    def __init__(
        self,
        inner: ShardRunner,
        registry: dict[int, Any],
        isolate: Callable[[Any], bytes] | None,
    ) -> None:
        self.inner = inner
        self.registry = registry
        self.isolate = isolate
        self.deliver: Callable[[list[Any], list[Any]], object] | None = None

    def batch_shape(
        self, batch_size: int, batch_timeout: float | None, lists: bool
    ) -> tuple[int, float | None, bool]:
        return self.inner.batch_shape(batch_size, batch_timeout, lists)

    def wrap(self, handler: Handler, *, per_item: bool, deliver: Deliver | None = None) -> Handler:
        assert per_item and deliver is not None, "the executor's pool: per-item, with values"
        self.deliver = deliver
        inner = self.inner.wrap(handler, per_item=True, deliver=self._deliver)
        registry = self.registry
        isolate = self.isolate

        def run(batch: list[Any]) -> Any:
            calls: list[tuple[Any, ...]]
            if isolate is None:
                # Compiled: the loop below without its three Python calls per future.
                calls = take_calls(batch, registry, _CANCELLED_CALL)
            else:
                calls = []
                append = calls.append
                for fut in batch:
                    taken = take_call(fut) if fut.set_running_or_notify_cancel() else None
                    if taken is not None:
                        call = _isolate(isolate, taken)
                        registry[id(call)] = fut
                    else:  # cancelled before it could start: not run
                        take_call(fut)
                        call = _CANCELLED_CALL
                    append(call)
            try:
                outcome = inner(calls)
            except BaseException:
                for call in calls:
                    registry.pop(id(call), None)
                raise
            if type(outcome) is BatchOutcome:
                # Reported now, by index into the core's batch (the futures): the tuples
                # leave the registry here; a call that did not pickle is named.
                failures = []
                for index, exc in outcome.failures:
                    call = calls[index]
                    registry.pop(id(call), None)
                    if isinstance(exc, TypeError) and call:
                        exc = _explain_unpicklable(call, exc)
                    failures.append((index, exc))
                return BatchOutcome(failures)
            return outcome

        return run

    def _deliver(self, calls: list[Any], values: list[Any]) -> None:
        futures = pop_futures(self.registry, calls)
        assert self.deliver is not None
        self.deliver(futures, values)

    def future_of(self, item: Any) -> Any:
        """The future of an item the pool reports failed: a future (the core's batch), or
        a call tuple from a runner that settles later (taken out of the registry)."""
        if type(item) is tuple:
            return self.registry.pop(id(item), None)
        return item

    def attach(self, settle: Settle) -> None:
        self.inner.attach(settle)

    def wait_settled(self, timeout: float | None) -> bool:
        return self.inner.wait_settled(timeout)

    def start(
        self,
        run_shard: Callable[[int], None],
        starting: Callable[[], None],
        start_failed: Callable[[], None],
    ) -> None:
        self.inner.start(run_shard, starting, start_failed)

    def join(self) -> None:
        self.inner.join()

    def after_fork_in_child(self) -> None:
        self.inner.after_fork_in_child()

    def describe(self) -> str:
        return self.inner.describe()

    def __getattr__(self, name: str) -> Any:
        # end_workers, worker_pids, stats ...: the backend runner's own extras.
        return getattr(self.__dict__["inner"], name)


class _ShipperBackend(Backend):
    """The backend the executor's pool is given: the user's, with ``_Shipper`` around
    each runner it makes."""

    name: ClassVar[str] = "executor"

    def __init__(
        self,
        inner: Backend,
        registry: dict[int, Any],
        isolate: Callable[[Any], bytes] | None,
        state: _State,
    ) -> None:
        self.inner = inner
        self.registry = registry
        self.isolate = isolate
        self.state = state

    def runner(self, *, pool_name: str, workers: int) -> ShardRunner:
        inner = self.inner.runner(pool_name=pool_name, workers=workers)
        if self.inner.name == "process" and getattr(self.inner, "window", 0) is None:
            from shardflow.backends.process import EXECUTOR_WINDOW

            # Calls of the batches in flight can no longer be cancelled: keep it shallow.
            inner.window = EXECUTOR_WINDOW  # type: ignore[attr-defined]
        self.state.shipper = shipper = _Shipper(inner, self.registry, self.isolate)
        return shipper

    def __repr__(self) -> str:
        return repr(self.inner)


# ---------------------------------------------------------------- worker side


def _call(call: tuple[Any, ...]) -> Any:
    """The pool's handler: run one call ``(fn, args, kwargs)`` (in the worker process or
    actor); ``()`` is a call cancelled before it was shipped."""
    if not call:
        return None
    fn, args, kwargs = call
    try:
        if kwargs is None:
            return fn(*args)
        return fn(*args, **kwargs)
    except Exception as exc:
        _keep_traceback(exc)
        raise
    except BaseException as exc:
        # SystemExit & co. belong to the call's future, as with ProcessPoolExecutor; the
        # pool would treat them as fatal (re-raised by join()), so they travel wrapped.
        raise _NotAnException(exc) from None


_TRACEBACK = "_shardflow_remote_traceback"


def _keep_traceback(exc: BaseException) -> None:
    """Store the traceback as text in the exception's ``__dict__``, which pickling keeps
    (the traceback itself does not travel); the parent turns it into the ``__cause__``
    ``ProcessPoolExecutor`` gives (``_remote_traceback``)."""
    try:
        exc.__dict__[_TRACEBACK] = "".join(traceback.format_exception(exc))
    except Exception:  # an exception class without a __dict__ (or a broken __str__)
        pass


def _remote_traceback(exc: BaseException) -> None:
    """Parent side of ``_keep_traceback``: the text becomes ``exc.__cause__`` (a
    ``concurrent.futures.process._RemoteTraceback``, as the standard executor sets)."""
    try:
        text = exc.__dict__.pop(_TRACEBACK, None)
    except Exception:
        return
    if text is not None and exc.__cause__ is None:
        # typeshed says TracebackType; the standard executor passes this text.
        exc.__cause__ = _RemoteTraceback(f'\n"""\n{text}"""')  # type: ignore[arg-type]


class _NotAnException(Exception):
    """Carries a ``BaseException`` that is not an ``Exception`` raised by a call."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class InitializerFailed(Exception):
    """Raised for every call of a worker whose ``initializer`` raised (the executor then
    breaks: ``BrokenProcessPool``); carries the initializer's error as text."""


class _Initialized:
    """The handler when an ``initializer`` is given: runs it once per worker (process or
    actor), before that worker's first call, as ``ProcessPoolExecutor`` does.

    Each worker unpickles its own copy (``__reduce__``). The lock matters only where one
    copy serves several threads (a remote that runs in this process, as the tests' fake
    actors do): no call runs before the initializer has finished, or its failure is
    known."""

    __slots__ = ("failed", "initargs", "initializer", "lock", "ready")

    def __init__(self, initializer: Callable[..., object], initargs: tuple[Any, ...]) -> None:
        self.initializer = initializer
        self.initargs = initargs
        self.ready = False
        self.failed: str | None = None
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        # A fresh copy in each worker: the initializer runs there, once.
        return (_Initialized, (self.initializer, self.initargs))

    def __repr__(self) -> str:
        # Named by the error of a backend that cannot send it to its workers.
        return f"the initializer {self.initializer!r} with initargs {self.initargs!r}"

    def __call__(self, call: tuple[Any, ...]) -> Any:
        if not self.ready:
            with self.lock:
                if not self.ready:
                    self._initialize()
        if self.failed is not None:
            raise InitializerFailed(self.failed)
        return _call(call)

    def _initialize(self) -> None:
        try:
            self.initializer(*self.initargs)
        except BaseException as exc:
            LOGGER.critical("Exception in initializer:", exc_info=True)
            self.failed = (
                f"the initializer {self.initializer!r} raised in worker process "
                f"{os.getpid()}: {''.join(traceback.format_exception_only(type(exc), exc)).strip()}"
            )
        finally:
            self.ready = True  # after ``failed``: a call that sees it sees the outcome


class _ChunkFailed:
    """What ``_run_chunk`` returns when a call raised: the results before it and the
    exception (made picklable), so that ``map`` yields those results, then raises."""

    __slots__ = ("error", "results")

    def __init__(self, results: list[Any], error: BaseException) -> None:
        self.results = results
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ChunkFailed, (self.results, self.error))


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any] | _ChunkFailed:
    """One ``map`` chunk, in the worker: ``[fn(*args) for args in chunk]``, stopping at the
    first call that raises."""
    results: list[Any] = []
    append = results.append
    try:
        for args in chunk:
            append(fn(*args))
    except BaseException as exc:
        _keep_traceback(exc)
        # An exception that does not pickle comes back as the process backend's
        # RemoteError (type, message and remote traceback as text).
        return _ChunkFailed(results, _portable(exc))
    return results


class _State:
    """What the pool's callbacks need of the executor (they hold this, not the executor,
    so that an executor dropped without ``shutdown()`` can be collected): the ``Halt``
    (shut down / broken / forked flags, read by the compiled submit) and the runner."""

    __slots__ = ("halt", "shipper")

    def __init__(self, halt: Halt) -> None:
        self.halt = halt
        self.shipper: _Shipper | None = None


def _make_callbacks(
    state: _State,
) -> tuple[Callable[[list[Any], list[Any]], None], Callable[[Any, BaseException], None]]:
    """``on_results`` (futures from ``_Shipper``: None for a call cancelled before it was
    shipped) and ``on_error`` (futures or call tuples) for the executor's pool."""

    # Compiled: set_result of each future (None skipped), as one loop.
    on_results = set_results

    def on_error(item: Any, exc: BaseException) -> None:
        # A list: a batch that failed as a whole (every call in it failed with exc).
        shipper = state.shipper
        assert shipper is not None
        for one in item if isinstance(item, list) else (item,):
            if type(one) is tuple and not one:
                continue  # a call cancelled before it was shipped
            fut = shipper.future_of(one)
            if fut is None or fut.done():
                continue
            if not fut.running() and not fut.set_running_or_notify_cancel():
                continue  # failed without being shipped, and cancelled meanwhile
            error = exc
            if type(one) is tuple and isinstance(exc, TypeError):
                error = _explain_unpicklable(one, exc)  # reported later (settle)
            fut.set_exception(_translate(state, error))

    return on_results, on_error


def _translate(state: _State, exc: BaseException) -> BaseException:
    """The exception a call's future gets for ``exc`` (what the pool reports)."""
    if isinstance(exc, _NotAnException):
        exc = exc.error
    elif isinstance(exc, InitializerFailed):
        if state.halt.broken is None:
            state.halt.set_broken(str(exc))
        error: BaseException = BrokenProcessPool(
            f"A process initializer failed, the process pool is not usable anymore ({exc})"
        )
        error.__cause__ = exc
        return error
    elif type(exc).__name__ == "ShardBroken":
        error = BrokenProcessPool(str(exc))
        error.__cause__ = exc
        return error
    _remote_traceback(exc)
    return exc


def _explain_unpicklable(call: tuple[Any, ...], exc: TypeError) -> BaseException:
    """The process backend fails an item that does not pickle with a TypeError naming the
    item's type (here always a tuple): name the call instead. Any other TypeError (the
    call's own) is left alone."""
    if "could not pickle an item" not in str(exc):
        return exc
    try:
        pickle.dumps(call, 5)
    except Exception as why:
        error = TypeError(_describe_unpicklable(call[0], why))
        error.__cause__ = why
        return error
    return exc


def _refuse(halt: Halt) -> None:
    """Raise what a submit refused by ``halt``'s executor raises."""
    if halt.forked:
        raise fork_error("Executor")
    broken = halt.broken
    if broken is not None:
        raise BrokenProcessPool(
            f"A process initializer failed, the process pool is not usable anymore ({broken})"
        )
    if halt.shutdown:
        raise RuntimeError("cannot schedule new futures after shutdown")
    from shardflow import executor

    if executor._interpreter_shutdown:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)
    return count() or 1


def _make_backend(
    backend: str | Backend,
    mp_context: Any,
    max_tasks_per_child: int | None,
) -> Backend:
    if isinstance(backend, str) and backend == "process":
        from shardflow.backends.process import ProcessBackend

        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError(
                    f"max_tasks_per_child must be an int >= 1 or None, got {max_tasks_per_child!r}"
                )
            if max_tasks_per_child < 1:
                raise ValueError(f"max_tasks_per_child must be >= 1, got {max_tasks_per_child!r}")
            if mp_context is not None and mp_context.get_start_method() == "fork":
                # The standard library's rule and message.
                raise ValueError(
                    "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                    "start method; supply a different mp_context."
                )
        return ProcessBackend(mp_context=mp_context, max_tasks_per_child=max_tasks_per_child)
    resolved = resolve_backend(backend)
    serializer = getattr(resolved, "serializer", None)
    if serializer is not None:
        raise ValueError(
            f"backend: an Executor cannot use a ProcessBackend with serializer= "
            f"({serializer!r}): it ships calls (functions and their arguments), "
            "which only pickle carries; serializer= is for ShardedPool, BatchProcessor "
            "and Pipeline stages whose items are plain data"
        )
    for name, value in (("mp_context", mp_context), ("max_tasks_per_child", max_tasks_per_child)):
        if value is not None:
            what = (
                "configure the ProcessBackend you pass"
                if resolved.name == "process"
                else ("it applies to backend='process' only")
            )
            raise ValueError(f"{name}= is not accepted with backend={resolved!r}: {what}")
    return resolved


class RemoteExecutor(_base.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in worker processes
    (``backend="process"`` or a ``ProcessBackend``) or Ray actors (``backend="ray"`` or a
    ``RayBackend``), as ``ProcessPoolExecutor`` documents: ``submit``, ``map`` (with
    ``chunksize``, ``buffersize``, ``timeout``), ``shutdown(wait, cancel_futures)``, the
    context manager, ``initializer``/``initargs`` run once per worker (one that raises
    breaks the executor: ``BrokenProcessPool``), ``max_tasks_per_child``, ``mp_context``,
    ``terminate_workers()``/``kill_workers()``. Made by ``shardflow.Executor(...,
    backend=...)``.

    Args:
        max_workers: worker processes (or actors); default the CPU count.
        backend: ``"process"``, ``"ray"`` or a ``shardflow.backends.Backend``.
        mp_context, max_tasks_per_child: as ``ProcessPoolExecutor`` takes them, for
            ``backend="process"`` (with a ``ProcessBackend`` instance, configure it).
        initializer, initargs: ``initializer(*initargs)`` once in each worker, before
            its first call.
        capacity: per-worker queue bound (calls), default ``shardflow.DEFAULT_CAPACITY``;
            ``submit`` waits while the worker's queue is full.
        name: names the pool and its dispatch threads (``thread_name_prefix``).

    What differs from ``ProcessPoolExecutor``: a worker that dies fails only the call it
    was running (``WorkerLost``, after ``ProcessBackend.max_attempts`` runs of it; that
    call may run more than once) and the executor goes on, where the standard one breaks;
    a call is *running* once its worker's dispatch thread took it, in a batch with the
    calls queued with it (the batches in the backend's window and one more per worker
    cannot be cancelled); calls go round-robin to per-worker queues and stay there; a
    call or result that cannot be pickled fails its own future (``TypeError``).

    Example (a call that kills its worker fails alone)::

        with shardflow.Executor(2, backend="process") as ex:
            crash = ex.submit(os._exit, 1)
            assert ex.submit(math.factorial, 5).result() == 120
            assert isinstance(crash.exception(), WorkerLost)
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        backend: str | Backend = "process",
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        capacity: int | None = None,
        name: str = "",
    ) -> None:
        from shardflow._validate import check_callable, check_int, check_str

        if max_workers is None:
            max_workers = _default_workers()
        elif type(max_workers) is int and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")  # the stdlib's words
        check_int("max_workers", max_workers, lo=1, hi=4096)
        check_callable("initializer", initializer, optional=True)
        if not isinstance(initargs, tuple):
            raise TypeError(
                f"initargs must be a tuple, got {initargs!r} ({type(initargs).__name__})"
            )
        check_str("thread_name_prefix", name, optional=False)
        resolved = _make_backend(backend, mp_context, max_tasks_per_child)
        self._max_workers = max_workers
        # The compiled submit of the thread executor (shardflow._executor.submit) reads
        # these: the Halt's flags, its push (the pool's submit) and future type.
        self._halt = halt = Halt()
        halt.future_type = _future_type()
        halt.refuse = functools.partial(_refuse, halt)  # no reference to self
        self._state = state = _State(halt)
        isolate: Callable[[Any], bytes] | None = None
        if resolved.name == "ray":
            # Ray pickles a batch as one argument: a call that does not pickle would fail
            # its whole batch. Each call is pickled on its own (with Ray's cloudpickle).
            from shardflow.backends.ray import _dumps

            isolate = _dumps
        registry: dict[int, Any] = {}
        handler: Callable[[Any], Any] = _call
        if initializer is not None:
            handler = _Initialized(initializer, initargs)
        on_results, on_error = _make_callbacks(state)
        self._pool: ShardedPool[Any] = ShardedPool(
            handler,
            workers=max_workers,
            capacity=capacity,
            backend=_ShipperBackend(resolved, registry, isolate, state),
            on_results=on_results,
            on_error=on_error,
            # No stealing: a dispatch thread takes a batch ahead of its window (and marks
            # its calls running); a stolen batch would wait there behind a long call
            # while the worker it came from sits idle.
            steal=False,
            name=name or f"Executor-{next(_names)}",
        )
        self._pool._fork_owner = "Executor"
        self._backend = resolved
        halt.push = self._pool.submit
        # The thread executor's hooks: a forked child marks the Halt (its submits and
        # pending futures then raise instead of waiting forever), and interpreter exit
        # closes the pool and waits for the queued calls, as ProcessPoolExecutor does.
        from shardflow import executor as thread_executor

        thread_executor._register(self._pool, halt)
        self._shutdown_lock = threading.Lock()
        weakref.finalize(self, _close_pool, self._pool)

    # ------------------------------------------------------------ properties

    @property
    def max_workers(self) -> int:
        """The number of workers (processes or actors)."""
        return self._max_workers

    @property
    def backend(self) -> Backend:
        """The backend the calls run on."""
        return self._backend

    @property
    def _broken(self) -> str | bool:
        """False, or the message once an initializer failed (``ProcessPoolExecutor``
        exposes the same attribute)."""
        return self._halt.broken or False

    def metrics(self) -> Any:
        """The pool's metrics (``shardflow.PoolMetrics``): a submitted call is counted
        once as processed (it returned), failed (it raised, or could not be sent) or
        returned (cancelled by ``shutdown(cancel_futures=True)`` while queued)."""
        return self._pool.metrics()

    # ------------------------------------------------------------ submit / map

    if TYPE_CHECKING:

        def submit(
            self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
        ) -> _base.Future[T]:
            """Schedule ``fn(*args, **kwargs)`` on a worker; returns its ``Future``."""
            ...

    else:
        # Compiled (shardflow._executor.submit, shared with the thread executor): checks
        # the Halt, makes the future with the call attached and pushes it to the pool.
        # ``fn``, the arguments and the result travel by pickle: a call that cannot be
        # pickled fails its future with ``TypeError`` (it is never sent), as does a
        # result that cannot be pickled. Raises ``RuntimeError`` after ``shutdown()``
        # and ``BrokenProcessPool`` once an initializer failed. Blocks (without holding
        # the GIL) while the chosen worker's queue is full (``capacity`` calls).
        submit = _compiled_submit

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``map(fn, *iterables)`` run on the workers; results come in input order.

        The calls go in chunks of ``chunksize`` argument tuples, one message (and one
        result list) per chunk. ``chunksize=None`` (the default) picks it: about
        ``MAP_CHUNKS_PER_WORKER`` chunks per worker, at most ``MAP_CHUNK_MAX`` calls
        each (1 with ``buffersize``). The iterables are collected now unless
        ``buffersize`` is given: then at most ``buffersize`` chunks are submitted and not
        yet yielded, and the input is read as results are yielded (as Python 3.14's
        ``ProcessPoolExecutor.map`` does). Without ``buffersize`` the chunks are submitted
        as results are taken too, ``MAP_WINDOW_PER_WORKER`` per worker ahead (so that
        results stream back while later chunks run); the input is read at once. An
        exception raised by ``fn`` is raised when its value would be yielded (the
        results before it in its chunk are yielded first). ``timeout`` counts from this
        call. Pending chunks are cancelled (or never submitted) when the iterator is
        closed or raises.
        """
        if chunksize is not None:
            if isinstance(chunksize, bool) or not isinstance(chunksize, int):
                raise TypeError(f"chunksize must be an int >= 1 or None, got {chunksize!r}")
            if chunksize < 1:
                raise ValueError("chunksize must be >= 1.")  # the stdlib's words
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        zipped = zip(*iterables, strict=False)
        if buffersize is None:
            args = list(zipped)
            if chunksize is None:
                per = self._max_workers * MAP_CHUNKS_PER_WORKER
                chunksize = min(MAP_CHUNK_MAX, max(1, -(-len(args) // per)))
            # All of the input is read now (as documented), but the chunks go out as the
            # results are taken, at most MAP_WINDOW_PER_WORKER per worker ahead: a
            # worker's batch then holds a few chunks, not all of them, and results come
            # back (and are yielded) while the next chunks run.
            source: Iterator[list[tuple[Any, ...]]] = (
                args[i : i + chunksize] for i in range(0, len(args), chunksize)
            )
            window = self._max_workers * MAP_WINDOW_PER_WORKER
        else:
            source = _batched(zipped, chunksize or 1)
            window = buffersize
        futures = deque(self._submit_chunk(fn, c) for c in itertools.islice(source, window))
        refill = _Refill(weakref.ref(self), fn, source)
        return _map_results(futures, end_time, refill)

    def _submit_chunk(self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> Any:
        return self.submit(_run_chunk, fn, chunk)

    # ------------------------------------------------------------ shutdown

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with ``cancel_futures`` cancel every call still queued (calls
        already shipped to a worker run); with ``wait`` return once every call is done
        and the workers have exited. Idempotent."""
        pool = self._pool
        if self._halt.forked:
            raise fork_error("Executor")
        with self._shutdown_lock:
            self._halt.set_shutdown(False)
            if cancel_futures and not pool.closed:
                for i in range(pool.workers):
                    for fut in pool._take_queued(i):
                        _cancel(fut)
            if not pool.closed:
                pool.close()
        if wait:
            pool.join()

    def terminate_workers(self) -> None:
        """Stop the worker processes now (SIGTERM), as Python 3.14's
        ``ProcessPoolExecutor.terminate_workers`` does, and shut the executor down: the
        calls still queued are cancelled, those shipped that had not finished fail with
        ``WorkerLost`` (``ShardedPool.terminate_workers``). ``backend="process"`` only
        (``TypeError`` otherwise)."""
        self._end_workers(self._pool.terminate_workers)

    def kill_workers(self) -> None:
        """``terminate_workers`` with SIGKILL (the workers cannot catch it)."""
        self._end_workers(self._pool.kill_workers)

    def _end_workers(self, end: Callable[[], list[Any]]) -> None:
        if self._halt.forked:
            raise fork_error("Executor")
        if getattr(self._pool._runner, "end_workers", None) is None:
            end()  # raises the pool's TypeError (this backend has no worker processes)
        with self._shutdown_lock:
            self._halt.set_shutdown(False)
            for fut in end():  # the futures still queued, taken back
                _cancel(fut)

    def __enter__(self) -> RemoteExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "shut down" if self._halt.shutdown else "running"
        return (
            f"<shardflow.Executor {self._pool.name!r} {state} max_workers={self._max_workers} "
            f"backend={self._pool._runner.describe()}>"
        )


def _cancel(fut: Any) -> None:
    """Cancel a call taken back from the queue (it never reaches a worker)."""
    take_call(fut)
    fut.cancel()
    # On to CANCELLED_AND_NOTIFIED, so that wait()/as_completed() callers see it.
    fut.set_running_or_notify_cancel()


def _close_pool(pool: ShardedPool[Any]) -> None:
    """An executor dropped without shutdown(): its pool finishes the queued calls, then
    its workers exit (joined by a daemon thread: this may run in any thread)."""
    try:
        pool._check_fork()
    except RuntimeError:
        return
    if not pool.closed:
        pool.close()
        threading.Thread(target=pool.join, name=f"{pool.name}-finalizer", daemon=True).start()


def _batched(iterable: Iterator[tuple[Any, ...]], n: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(iterable, n))
        if not chunk:
            return
        yield chunk


class _Refill:
    """The lazy input side of ``map(..., buffersize=n)``: one chunk in per chunk out."""

    __slots__ = ("executor", "fn", "source")

    def __init__(
        self,
        executor: weakref.ref[RemoteExecutor],
        fn: Callable[..., Any],
        source: Iterator[list[tuple[Any, ...]]],
    ) -> None:
        self.executor = executor
        self.fn = fn
        self.source: Iterator[list[tuple[Any, ...]]] | None = source

    def next(self) -> Any:
        if self.source is None:
            return None
        executor = self.executor()
        chunk = next(self.source, None) if executor is not None else None
        if chunk is None:
            self.source = None
            return None
        return executor._submit_chunk(self.fn, chunk)  # type: ignore[union-attr]


def _result(fut: Any, end_time: float | None) -> Any:
    try:
        if end_time is None:
            return fut.result()
        return fut.result(end_time - time.monotonic())
    finally:
        fut.cancel()  # the standard _result_or_cancel: a no-op once done


def _map_results(
    futures: deque[Any], end_time: float | None, refill: _Refill | None
) -> Iterator[Any]:
    """Yield the results of the chunk futures in order (a generator: ``map`` has already
    submitted what it submits eagerly before this runs)."""
    try:
        while futures:
            fut = futures[0]
            if refill is not None:
                # As the standard map: the next input goes before this result comes out.
                more = refill.next()
                if more is not None:
                    futures.append(more)
            out = _result(fut, end_time)
            futures.popleft()
            del fut
            if type(out) is _ChunkFailed:
                yield from out.results
                error = out.error
                del out
                _remote_traceback(error)
                try:
                    raise error
                finally:
                    del error
            yield from out
            del out
    finally:
        for fut in futures:
            fut.cancel()
        if refill is not None:
            refill.source = None
