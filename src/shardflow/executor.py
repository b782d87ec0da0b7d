"""``shardflow.Executor``: a ``concurrent.futures`` executor on top of ``ShardedPool``.

It behaves like ``concurrent.futures.ThreadPoolExecutor`` as the standard library
documents it (``submit``/``map``/``shutdown``, ``initializer``, ``BrokenThreadPool``,
``wait``/``as_completed``, ``loop.run_in_executor``, interpreter exit) and is much cheaper
per task, for three reasons:

* Tasks travel through the pool's compiled per-worker rings, and a worker hands a whole
  run of queued tasks to one call of the compiled loop (``_executor.run_tasks``), so
  there is no per-task queue lock, semaphore or wake-up. ``submit`` is one C call too.
* The futures are a ``concurrent.futures.Future`` subclass (``_Future``) whose state and
  ``_condition`` (a reentrant lock, not a ``threading.Condition``) are C fields of
  ``_executor.FutureCore``; the future itself carries its call through the queue, so a
  task allocates the future and the arguments tuple and nothing else. Threads that wait
  in ``result()`` register a lock of their own, the way ``wait()``/``as_completed()``
  register their waiters; completing a future nobody waits for takes no such lock.
* ``map`` makes no future per item: it cuts the items into chunks (``_executor.Chunk``),
  one pool task per chunk, and hands out each result, in order, as soon as it is there.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import _base
from concurrent.futures.thread import BrokenThreadPool, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from shardflow._executor import (
    Chunk,
    FutureCore,
    Halt,
    run_tasks,
    set_interpreter_exiting,
    take_call,
)
from shardflow._executor import submit as _compiled_submit
from shardflow._fork import fork_error
from shardflow._validate import check_callable, check_int, check_str
from shardflow.backends import Backend
from shardflow.backends.thread import ThreadBackend, ThreadRunner
from shardflow.errors import Closed
from shardflow.pool import ShardedPool

P = ParamSpec("P")

__all__ = ["Executor"]

T = TypeVar("T")

LOGGER = _base.LOGGER

#: Most tasks a worker takes from its queue for one Python call. A task queued behind a
#: long-running one on the same worker waits for it unless an idle worker steals it
#: while it is still queued, so this also bounds that head-of-line wait (to the tasks of
#: one list). Under the GIL the gain of larger lists flattens out well before this.
TASKS_PER_CALL = 64
#: Items of one ``map`` chunk at most (one pool task, one result list).
MAP_CHUNK_MAX = 1024
#: ``map`` aims at this many chunks per worker, so that work spreads over the workers.
MAP_CHUNKS_PER_WORKER = 4

_BROKEN_MESSAGE = "A thread initializer failed, the thread pool is not usable anymore"
_names = itertools.count()
#: Set when the interpreter starts shutting down (as ``concurrent.futures.thread`` does):
#: submits raise from then on.
_interpreter_shutdown = False


class _Future(FutureCore, _base.Future[T]):
    """The futures ``Executor.submit`` returns: a ``concurrent.futures.Future`` whose
    state and lock live in ``FutureCore`` (compiled; see ``shardflow._executor``).

    Every documented behaviour of ``Future`` is kept: ``result``/``exception`` with a
    timeout (one wait, then ``TimeoutError``), ``cancel``, ``add_done_callback``, and
    ``concurrent.futures.wait``/``as_completed``, which use ``_condition``, ``_state``
    and ``_waiters`` directly.
    """


def _make_handler(halt: Halt) -> Callable[[list[Any]], None]:
    """The pool handler: runs a list of tasks (futures with their call attached, and
    ``Chunk``s) in order."""
    active = halt.active
    get_ident = threading.get_ident
    local = halt.local

    def handle(tasks: list[Any]) -> None:
        me = get_ident()
        active[me] = tasks
        spared = halt.spared
        if spared is not None and not halt.cancel:
            spared.started(me)  # shutdown(cancel_futures=True) is under way: see _Spared
        try:
            if halt.initializer is not None and not getattr(local, "ready", False):
                _initialize(halt)
            run_tasks(halt, tasks, Chunk, _halted)
        finally:
            del active[me]

    return handle


def _initialize(halt: Halt) -> None:
    """Run the initializer once in this worker thread; on failure break the executor the
    way ``ThreadPoolExecutor`` does (log, then ``BrokenThreadPool`` for what is pending
    and for later submits)."""
    halt.local.ready = True
    assert halt.initializer is not None
    try:
        halt.initializer(*halt.initargs)
    except BaseException:
        LOGGER.critical("Exception in initializer:", exc_info=True)
        halt.set_broken(_BROKEN_MESSAGE)


def _halted(halt: Halt, task: Any) -> None:
    """A task reached after shutdown(cancel_futures=True) or a failed initializer."""
    if type(task) is Chunk:
        task.run(halt)  # cancels or fails every item, and completes the chunk
        return
    fut = task
    spared = halt.spared
    if spared is not None and spared.take(fut):
        _run_spared(fut)
        return
    if take_call(fut) is None:
        return  # a waiter on this worker already ran it (see _executor.FutureCore._help)
    if halt.cancel:
        fut.cancel()
    if fut.set_running_or_notify_cancel():
        fut.set_exception(BrokenThreadPool(halt.broken or _BROKEN_MESSAGE))


class _Spared:
    """The calls ``shutdown(cancel_futures=True)`` lets run (see ``Executor.shutdown``):
    ``calls`` by future, and ``threads``: workers that took calls from their queue but
    had not started on them, which run the first call they meet."""

    __slots__ = ("calls", "lock", "threads")

    def __init__(self) -> None:
        self.calls: set[Any] = set()
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def started(self, ident: int) -> None:
        """Worker ``ident`` starts a list of calls before the cancel flag is up: it runs
        its first call as usual, so it gets no spared call of its own."""
        with self.lock:
            self.threads.discard(ident)

    def take(self, fut: Any) -> bool:
        """True if the calling worker is to run ``fut`` rather than cancel it."""
        with self.lock:
            if fut in self.calls:
                self.calls.discard(fut)
                return True
            me = threading.get_ident()
            if me in self.threads:
                self.threads.discard(me)
                return True
        return False


def _run_spared(fut: Any) -> None:
    """Run a call shutdown(cancel_futures=True) let through (see Executor.shutdown), as
    ThreadPoolExecutor's worker runs its work item."""
    call = take_call(fut)
    if call is None or not fut.set_running_or_notify_cancel():
        return
    fn, args, kwargs = call
    try:
        result = fn(*args, **kwargs) if kwargs else fn(*args)
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
    finally:
        del fn, args, kwargs, call


def _cancel_task(task: Any) -> None:
    """Cancel a task shutdown took back from the queue (it never reaches a worker)."""
    if type(task) is Chunk:
        task.cancel_queued()
        return
    fut = task
    take_call(fut)
    fut.cancel()
    # Move it on to CANCELLED_AND_NOTIFIED as a worker would, so that wait() and
    # as_completed() callers blocked on it see it.
    fut.set_running_or_notify_cancel()


def _refuse(halt: Halt) -> None:
    """Raise what a submit refused by ``halt``'s executor raises."""
    if halt.forked:
        raise fork_error("Executor")
    broken = halt.broken
    if broken is not None:
        raise BrokenThreadPool(broken)
    if halt.shutdown:
        raise RuntimeError("cannot schedule new futures after shutdown")
    if _interpreter_shutdown:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)
    return min(32, (count() or 1) + 4)


class Executor(ThreadPoolExecutor):
    """A ``concurrent.futures.Executor`` running calls on a ``ShardedPool``'s threads.

    A drop-in for ``concurrent.futures.ThreadPoolExecutor``, and a subclass of it, so
    that code checking for one accepts it (``loop.set_default_executor`` does); none of
    its machinery is used, every method is this class's own. ``submit`` returns a
    ``concurrent.futures.Future`` (a subclass with a cheaper lock) that works with
    ``wait()``, ``as_completed()`` and ``asyncio`` (``loop.run_in_executor``);
    ``map(fn, *iterables, timeout=None, chunksize=1, buffersize=None)`` yields results in
    order; ``shutdown(wait=True, *, cancel_futures=False)``; a failing ``initializer``
    breaks the executor (``concurrent.futures.thread.BrokenThreadPool`` for pending calls
    and later submits); submitting after ``shutdown()`` raises ``RuntimeError``; at
    interpreter exit running and queued calls are finished first.

    Differences from ``ThreadPoolExecutor``, all on purpose:

    * ``max_workers`` threads start with the executor, not on demand.
    * Each worker has its own bounded queue (``capacity`` calls, default
      ``shardflow.DEFAULT_CAPACITY``); calls go round-robin and an idle worker steals
      half of a busy worker's queue. ``submit`` waits (without holding the GIL) while
      the chosen queue is full, where ``ThreadPoolExecutor`` queues without bound.
    * A worker takes up to ``TASKS_PER_CALL`` queued calls at once (that is where the
      speed comes from); those wait for the call before them on that worker rather than
      go to an idle worker (idle workers only steal calls still queued). A call that
      waits in ``result()``/``exception()`` for a call further down its own worker's
      list runs that call itself, so this common pattern does not deadlock; a call
      that waits through ``wait()``/``as_completed()`` (or on a call its worker took
      beyond that list) can wait forever where ``ThreadPoolExecutor`` would run the
      other call on an idle thread. The standard documentation warns that calls waiting
      on other calls of the same executor can deadlock: avoid it here too.
    * ``map`` makes no future per item (chunks of items, results kept in order); errors,
      timeouts, cancellation and ``buffersize`` behave as documented for
      ``Executor.map``. ``chunksize`` is ignored, as by ``ThreadPoolExecutor``. The
      iterator keeps no reference to a result it has handed out.

    ``shutdown(cancel_futures=True)`` cancels every call not started before it returns,
    except that, as with ``ThreadPoolExecutor`` (whose idle threads have already taken
    the next call off the queue), a worker not running a call when shutdown starts runs
    one more: the oldest call it holds. Without that exception a worker that took up to
    ``TASKS_PER_CALL`` calls at once would leave nothing running (CPython's
    ``test_cancel_futures`` expects some calls to finish). ``map`` chunks are not spared.

    Fork: a forked child has none of the executor's threads. It exits promptly, can
    create new executors, and using one made before the fork (``submit``, ``map``,
    ``shutdown``, waiting on one of its pending futures) raises ``RuntimeError`` naming
    the Executor and the fork.

    ``backend="process"`` (or a ``shardflow.backends.ProcessBackend``), ``"ray"`` (or a
    ``RayBackend``): the calls run in worker processes or Ray actors instead, and the
    object returned is a ``shardflow._remote_executor.RemoteExecutor``, a drop-in
    ``concurrent.futures.ProcessPoolExecutor`` (not a ``ThreadPoolExecutor``) that also
    takes ``mp_context`` and ``max_tasks_per_child`` (process only) and has
    ``terminate_workers()``/``kill_workers()``; see its documentation. The thread
    executor refuses those two arguments.

    Example:
        >>> import shardflow
        >>> with shardflow.Executor(max_workers=2) as ex:
        ...     future = ex.submit(pow, 2, 10)
        ...     squares = list(ex.map(pow, range(5), [2] * 5))
        >>> future.result(), squares
        (1024, [0, 1, 4, 9, 16])
    """

    def __new__(
        cls,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        capacity: int | None = None,
        backend: str | Backend = "thread",
        mp_context: Any = None,
        max_tasks_per_child: int | None = None,
    ) -> Executor:
        if backend == "thread" or isinstance(backend, ThreadBackend):
            return super().__new__(cls)
        # Worker processes or Ray actors: a separate implementation (not a subclass:
        # it is no ThreadPoolExecutor), built here; Python then skips __init__.
        from shardflow._remote_executor import RemoteExecutor

        remote: Any = RemoteExecutor(
            max_workers,
            backend=backend,
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            capacity=capacity,
            name=thread_name_prefix,
        )
        return remote  # type: ignore[no-any-return]

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        capacity: int | None = None,
        backend: str | Backend = "thread",
        mp_context: Any = None,
        max_tasks_per_child: int | None = None,
    ) -> None:
        for param, value in (
            ("mp_context", mp_context),
            ("max_tasks_per_child", max_tasks_per_child),
        ):
            if value is not None:
                raise ValueError(
                    f"{param}= applies to worker processes; pass backend='process' with it "
                    "(this executor runs calls in threads)"
                )
        if max_workers is None:
            max_workers = _default_workers()
        elif type(max_workers) is int and max_workers <= 0:
            # The standard library's message, word for word: code matches on it.
            raise ValueError("max_workers must be greater than 0")
        check_int("max_workers", max_workers, lo=1, hi=4096)
        check_str("thread_name_prefix", thread_name_prefix, optional=False)
        check_callable("initializer", initializer, optional=True)
        if not isinstance(initargs, tuple):
            raise TypeError(
                f"initargs must be a tuple, got {initargs!r} ({type(initargs).__name__})"
            )
        self._max_workers = max_workers
        self._halt = halt = Halt()
        halt.initializer = initializer
        halt.initargs = initargs
        halt.local = threading.local()
        halt.future_type = _Future
        halt.refuse = functools.partial(_refuse, halt)  # no reference to self
        self._shutdown_lock = threading.Lock()
        name = thread_name_prefix or f"Executor-{next(_names)}"
        self._pool: ShardedPool[Any] = ShardedPool(
            _make_handler(self._halt),
            workers=max_workers,
            capacity=capacity,
            batch_size=TASKS_PER_CALL,
            lists=True,
            steal=True,
            reuse_batches=False,
            name=name,
        )
        self._pool._fork_owner = "Executor"  # named by the error a forked child gets
        self._push = halt.push = self._pool.submit
        # An executor dropped without shutdown() lets its workers finish and exit, as
        # ThreadPoolExecutor's do (the handler holds no reference to the executor).
        weakref.finalize(self, _close_pool, self._pool)
        _register(self._pool, halt)

    @property
    def max_workers(self) -> int:
        """The number of worker threads."""
        return self._max_workers

    # typeshed declares ThreadPoolExecutor._broken a bool attribute; at run time it is
    # False or the message, as here.
    @property
    def _broken(self) -> str | bool:  # type: ignore[override]
        """What ``ThreadPoolExecutor._broken`` holds: False, or the message once an
        initializer failed (code written against the standard class, CPython's own
        tests among it, polls it)."""
        return self._halt.broken or False

    def _refuse(self) -> None:
        _refuse(self._halt)

    if TYPE_CHECKING:

        def submit(
            self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
        ) -> _base.Future[T]: ...

    else:
        # Compiled (shardflow._executor.submit): checks the executor's state, makes the
        # future with the call attached and pushes it to the pool, all in one C call.
        # Raises RuntimeError after shutdown() (and once the interpreter exits) and
        # BrokenThreadPool once an initializer failed.
        submit = _compiled_submit

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``map(fn, *iterables)`` run on the workers; results come in input order.

        As documented for ``concurrent.futures.Executor.map``: the iterables are
        collected now, unless ``buffersize`` is given, in which case at most
        ``buffersize`` items are submitted and not yet yielded, and the iterables are
        read as results are yielded. An exception raised by ``fn`` is re-raised when
        its value would be yielded. ``timeout`` (seconds) counts from this call: if a
        result is not ready by then, ``TimeoutError`` is raised when it is reached.
        Pending calls are cancelled when the iterator is closed or raises. ``chunksize``
        is ignored (as by ``ThreadPoolExecutor``).
        """
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        zipped = zip(*iterables, strict=False)
        if buffersize is None:
            items = list(zipped)
            size = max(1, -(-len(items) // (self._max_workers * MAP_CHUNKS_PER_WORKER)))
            size = min(size, MAP_CHUNK_MAX)
            chunks = deque(
                self._submit_chunk(fn, items[i : i + size]) for i in range(0, len(items), size)
            )
            return _map_results(chunks, end_time, None)
        size = max(1, min(MAP_CHUNK_MAX, buffersize // 4))
        feeder = _Feeder(weakref.ref(self), fn, zipped, size, buffersize)
        feeder.refill()
        return _map_results(feeder.chunks, end_time, feeder)

    def _submit_chunk(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> Chunk:
        halt = self._halt
        if halt.shutdown or halt.broken is not None or halt.forked or _interpreter_shutdown:
            self._refuse()
        chunk = Chunk(fn, args)
        try:
            self._push(chunk)
        except Closed:
            self._refuse()
            raise
        return chunk

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with ``cancel_futures`` cancel every call not started; with
        ``wait`` return once every running and queued call is done. Idempotent."""
        pool = self._pool
        if self._halt.forked:
            raise fork_error("Executor")
        with self._shutdown_lock:
            if cancel_futures:
                # Every call not started is cancelled here, now, as documented, with the
                # standard executor's one exception kept: a worker that is not running a
                # call when shutdown starts runs one more, the oldest it has (an idle
                # ThreadPoolExecutor thread has already taken the next call off the queue
                # and runs it). Such a call is "spared": if it is still queued it is
                # pushed back, and the worker that meets it runs it (_halted), cancelling
                # anything else it meets. The spares are chosen before the cancel flag
                # goes up (workers that run meanwhile are simply busy); what a worker
                # took but has not listed as active yet it cancels itself, after running
                # its first call if it is among ``spared.threads``.
                halt = self._halt
                sparing = not pool.closed  # the first shutdown: the rings are still open
                spared = halt.spared or _Spared()
                halt.spared = spared  # before a worker can meet one of them
                leftovers = []
                listed: set[int] = set()
                if sparing:
                    active = list(halt.active.items())
                    for _, tasks in active:
                        pending = [t for t in list(tasks) if type(t) is not Chunk]
                        if not any(t.running() for t in pending):
                            first = next((t for t in pending if not t.done()), None)
                            if first is not None:
                                with spared.lock:
                                    spared.calls.add(first)
                    listed = {ident for ident, _ in active}
                runner = pool._runner
                threads = runner.threads if isinstance(runner, ThreadRunner) else []
                for i in range(pool.workers):
                    queued = pool._take_queued(i)
                    ident = threads[i].ident if i < len(threads) else None
                    if sparing:
                        if ident is None or ident in listed:
                            pass
                        elif queued and type(queued[0]) is not Chunk:
                            fut = queued.pop(0)
                            with spared.lock:
                                spared.calls.add(fut)
                            pool.submit(fut)
                        elif not queued:
                            # Its queue is empty: it may hold calls it took and has not
                            # listed yet; it runs the first one it meets.
                            with spared.lock:
                                spared.threads.add(ident)
                    leftovers.extend(queued)
                halt.set_shutdown(True)
                pool.close()  # a call submitted meanwhile is cancelled by its worker
                for task in leftovers:
                    _cancel_task(task)
                for tasks in list(halt.active.values()):
                    for task in list(tasks):
                        if type(task) is Chunk:
                            task.cancelled = True
                        elif task not in spared.calls:
                            task.cancel()
            else:
                self._halt.set_shutdown(False)
                pool.close()
        if wait:
            pool.join()

    def __repr__(self) -> str:
        state = "shut down" if self._halt.shutdown else "running"
        return f"<shardflow.Executor {self._pool.name!r} {state} max_workers={self._max_workers}>"


class _Feeder:
    """The lazy input side of ``map(..., buffersize=n)``: submits chunks while fewer than
    ``buffersize`` items are submitted and not yet yielded."""

    __slots__ = ("buffersize", "chunks", "executor", "fn", "inflight", "size", "source")

    def __init__(
        self,
        executor: weakref.ref[Executor],
        fn: Callable[..., Any],
        source: Iterator[tuple[Any, ...]],
        size: int,
        buffersize: int,
    ) -> None:
        self.executor = executor
        self.fn = fn
        self.source: Iterator[tuple[Any, ...]] | None = source
        self.size = size
        self.buffersize = buffersize
        self.inflight = 0
        self.chunks: deque[Chunk] = deque()

    def refill(self) -> None:
        while self.source is not None and self.inflight + self.size <= self.buffersize:
            args = list(itertools.islice(self.source, self.size))
            if len(args) < self.size:
                self.source = None  # exhausted
                if not args:
                    return
            executor = self.executor()
            if executor is None:
                self.source = None
                return
            self.chunks.append(executor._submit_chunk(self.fn, args))
            self.inflight += len(args)


def _map_results(
    chunks: deque[Chunk], end_time: float | None, feeder: _Feeder | None
) -> Iterator[Any]:
    """Yield the results of ``chunks`` in order (a generator: ``map`` has already
    submitted what it submits eagerly before this runs)."""
    try:
        while chunks:
            chunk = chunks[0]
            ran, finished = chunk.wait_for(0, end_time)
            if finished and feeder is None and chunk.errors is None and ran == chunk.count:
                chunks.popleft()
                # The common case: the whole chunk is there. drain() lets go of each
                # result as it is handed out (bpo-14406: a consumer that drops a large
                # result frees it), as take() does below.
                yield from chunk.drain()
                continue
            for i in range(chunk.count):
                if i >= ran and not finished:
                    ran, finished = chunk.wait_for(i, end_time)
                if feeder is not None:
                    # As the standard map does: the next input is submitted before this
                    # result is handed out.
                    feeder.inflight -= 1
                    feeder.refill()
                if i >= ran:
                    chunks.popleft()
                    raise _base.CancelledError()
                errors = chunk.errors
                if errors is not None and i in errors:
                    chunks.popleft()
                    exc = errors.pop(i)
                    try:
                        raise exc
                    finally:
                        del exc
                yield chunk.take(i)
            chunks.popleft()
    finally:
        for chunk in chunks:
            chunk.cancelled = True
        if feeder is not None:
            feeder.source = None


# ------------------------------------------------------------------ interpreter exit

_pools: weakref.WeakSet[ShardedPool[Any]] = weakref.WeakSet()
#: Each live executor's Halt, for the fork hook. Weak: a Halt lives as long as its
#: executor or its pool's workers, whichever goes last.
_halts: weakref.WeakSet[Halt] = weakref.WeakSet()
_pools_lock = threading.Lock()


def _register(pool: ShardedPool[Any], halt: Halt) -> None:
    with _pools_lock:
        _pools.add(pool)
        _halts.add(halt)


def _close_pool(pool: ShardedPool[Any]) -> None:
    """The finalizer of an executor dropped without shutdown(): let its workers finish.
    It also runs at interpreter exit, where a forked child has nothing to close."""
    try:
        pool._check_fork()
    except RuntimeError:
        return
    pool.close()


def _after_fork_in_child() -> None:
    """In a forked child only the forking thread exists: executors made before the fork
    have no workers here. Mark them, so that using one raises (``fork_error``) and that
    interpreter exit does not wait for workers that will never report (issue 11: the
    child hung in ``_python_exit``)."""
    global _pools_lock
    _pools_lock = threading.Lock()  # may have been held by another thread at fork time
    for pool in list(_pools):
        pool._mark_forked()  # ShardedPool's own hook does it too; idempotent
    for halt in list(_halts):
        halt.set_forked()


def _python_exit() -> None:
    """Like ``concurrent.futures.thread``'s exit hook: refuse new calls, then let every
    executor finish what is running and queued (ShardedPool's own exit hook runs later,
    and would only find finished pools)."""
    global _interpreter_shutdown
    _interpreter_shutdown = True
    set_interpreter_exiting()
    with _pools_lock:
        pools = list(_pools)
    live = []
    for pool in pools:
        try:
            pool._check_fork()
        except RuntimeError:
            continue  # made before fork(): its workers are not in this process
        pool._close()
        live.append(pool)
    for pool in live:
        if pool._exit_wait:
            pool._wait_workers(None)


# threading's exit hook runs before atexit's and before non-daemon threads are joined,
# exactly where ThreadPoolExecutor waits for its workers.
_register_atexit: Callable[[Callable[[], None]], None] | None = getattr(
    threading, "_register_atexit", None
)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
if _register_atexit is not None:
    _register_atexit(_python_exit)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_python_exit)
