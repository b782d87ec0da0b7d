# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=True
"""The per-task paths of ``shardflow.Executor``: its futures, submit and the worker loop.

``concurrent.futures.Future`` spends most of a no-op task's cost on its
``threading.Condition`` (a Python object graph built per future, a Python-level
``with`` per state change). ``FutureCore`` keeps the future's state in C fields and
uses ``FutureLock``, a reentrant lock whose uncontended acquire is a C call, as the
``_condition`` that ``concurrent.futures.wait``/``as_completed`` take; the worker loop
(``run_tasks``) and ``submit`` reach both without Python dispatch.

Everything ``concurrent.futures`` relies on is kept (``_state`` with the module's state
names, ``_waiters`` with the waiters ``wait()`` installs, ``_condition`` as a context
manager), and every state change happens under the lock: thread-safe without the GIL.
A thread blocked in ``result()``/``exception()`` waits on a lock of its own registered
in ``_wakeups`` and released by whoever completes or cancels the future; completing a
future nobody waits for touches no such lock.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport uint64_t

from shardflow._atomic cimport (
    sf_atomic_u64,
    sf_load_acquire_u64,
    sf_load_relaxed_u64,
    sf_store_relaxed_u64,
)

import threading
from concurrent.futures import _base

from concurrent.futures.thread import BrokenThreadPool

from shardflow.errors import Closed


cdef extern from "pythread.h":
    ctypedef enum PyLockStatus:
        PY_LOCK_FAILURE
        PY_LOCK_ACQUIRED
        PY_LOCK_INTR
    PyLockStatus PyThread_acquire_lock_timed(
        PyThread_type_lock lock, long long microseconds, int intr_flag) nogil
    unsigned long PyThread_get_thread_ident() nogil


cdef extern from "shardflow/_atomic.h" nogil:
    uint64_t sf_fetch_or_seqcst_u64(sf_atomic_u64 *p, uint64_t v)


cdef extern from "Python.h":
    # kwargs may be NULL: no empty dict is built (or copied) for the common call.
    object PyObject_Call_kw "PyObject_Call"(object callable, object args, PyObject *kw)
    int PyErr_CheckSignals() except -1
    void PyObject_GC_Track(object op)
    void PyObject_GC_UnTrack(object op)
    int PyObject_GC_IsTracked(object op)
    int PyObject_GenericSetAttr(object o, object name, object value) except -1


cdef object PENDING = _base.PENDING
cdef object RUNNING = _base.RUNNING
cdef object CANCELLED = _base.CANCELLED
cdef object CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
cdef object FINISHED = _base.FINISHED
cdef object CancelledError = _base.CancelledError
# The builtin TimeoutError from 3.11 on; on 3.10 concurrent.futures has its own class,
# which is what callers of a Future catch there.
cdef object FuturesTimeoutError = _base.TimeoutError
cdef object InvalidStateError = _base.InvalidStateError
cdef object LOGGER = _base.LOGGER
cdef object _allocate_lock = threading.Lock
cdef double TIMEOUT_MAX = threading.TIMEOUT_MAX


@cython.final
cdef class FutureLock:
    """A reentrant lock: ``acquire(blocking=True, timeout=-1)``, ``release()``, ``with``.

    The ``_condition`` of shardflow's futures. Reentrant because ``concurrent.futures.
    wait()`` calls ``f.exception()`` while holding ``f._condition``. The owner field is
    only ever equal to a thread's id if that thread wrote it, so a relaxed atomic load
    is enough to recognise re-entry; the count is touched by the owner only.
    """

    cdef PyThread_type_lock _lock
    cdef sf_atomic_u64 _owner
    cdef Py_ssize_t _count

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()
        sf_store_relaxed_u64(&self._owner, 0)
        self._count = 0

    def __dealloc__(self):
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    cdef inline int enter(self) except -1:
        """Blocking acquire. Critical sections are a few field updates, so the wait is
        short; it releases the GIL so that the holder can finish."""
        cdef uint64_t me = PyThread_get_thread_ident()
        if sf_load_relaxed_u64(&self._owner) == me:
            self._count += 1
            return 0
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock_timed(self._lock, -1, 0)
        sf_store_relaxed_u64(&self._owner, me)
        self._count = 1
        return 0

    cdef inline void leave(self) noexcept:
        self._count -= 1
        if self._count == 0:
            sf_store_relaxed_u64(&self._owner, 0)
            PyThread_release_lock(self._lock)

    def acquire(self, bint blocking=True, double timeout=-1):
        """Acquire (re-entrantly); False if not blocking or ``timeout`` ran out."""
        cdef uint64_t me = PyThread_get_thread_ident()
        cdef long long us
        cdef PyLockStatus r
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        if sf_load_relaxed_u64(&self._owner) == me:
            self._count += 1
            return True
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            if not blocking:
                return False
            if timeout > TIMEOUT_MAX:
                raise OverflowError("timeout value is too large")
            us = -1 if timeout == -1 else <long long>(timeout * 1e6)
            while True:
                with nogil:
                    r = PyThread_acquire_lock_timed(self._lock, us, 1)
                if r == PY_LOCK_ACQUIRED:
                    break
                if r == PY_LOCK_FAILURE:
                    return False
                PyErr_CheckSignals()  # interrupted: run handlers (Ctrl-C), then go on
        sf_store_relaxed_u64(&self._owner, me)
        self._count = 1
        return True

    def release(self):
        """Release one level; ``RuntimeError`` if this thread does not hold the lock."""
        if sf_load_relaxed_u64(&self._owner) != PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self.leave()

    def _is_owned(self):
        return sf_load_relaxed_u64(&self._owner) == PyThread_get_thread_ident()

    def __enter__(self):
        self.enter()
        return True

    def __exit__(self, *exc_info):
        self.release()
        return None


cdef class Halt


# no_gc_clear: the collector must not set ``_condition`` to None under code that may
# still run on a future in a garbage cycle (a finalizer, a weakref callback); cycles
# through a future are broken by its other members (dict, results, tracebacks, cells).
@cython.no_gc_clear
cdef class FutureCore:
    """The state of a ``shardflow`` future (the ``concurrent.futures.Future`` subclass
    in ``shardflow.executor`` puts this first in its bases)."""

    cdef public object _state
    cdef public object _result
    cdef public object _exception
    cdef readonly FutureLock _condition
    cdef list _waiter_list   # wait()/as_completed() waiters, made on first use
    cdef list _callbacks     # done callbacks, made on first use
    cdef list _wakeups       # locks of threads blocked in result()/exception()
    # The call, until a worker takes it (the future itself is what travels through the
    # pool's queue: no task tuple per call).
    cdef object _fn
    cdef tuple _args
    cdef dict _kwargs        # None when the call has no keyword arguments
    # Set by the one thread that takes the call (the worker holding it, or shutdown for a
    # call it took back from the queue): the call runs at most once.
    cdef bint _taken
    cdef object _halt        # the Halt of the executor that made it (None: not ours)
    # Set by __setattr__: Python code stored something on this future (its __dict__ or
    # a field), which could close a reference cycle: never untracked then (see finish).
    cdef bint _touched

    def __cinit__(self, *args, **kwargs):
        self._condition = FutureLock.__new__(FutureLock)
        self._state = PENDING
        self._result = None
        self._exception = None

    def __init__(self):
        # Not Future.__init__ (the Condition it builds is what this class saves).
        pass

    @property
    def _waiters(self):
        # concurrent.futures appends/removes its waiters under ``with f._condition``, so
        # making the list here, on first use, is under the lock too.
        if self._waiter_list is None:
            self._waiter_list = []
            # Kept out of the cyclic GC's lists, as an untracked future is (see
            # _settle_tracking): wait()/as_completed() remove their waiters before they
            # return, so no cycle through this list outlives them; one list per future
            # awaited, each visited by every collection otherwise.
            PyObject_GC_UnTrack(self._waiter_list)
        return self._waiter_list

    @property
    def _done_callbacks(self):
        # Whoever asks for the list may put callables in it: tracked again (see finish).
        self._touched = True
        self._retrack()
        if self._callbacks is None:
            self._callbacks = []
        return self._callbacks

    def __setattr__(self, name, value):
        # Anything Python code stores on a future may reference it back: such a future
        # stays (or becomes again) visible to the cyclic GC (see finish).
        self._touched = True
        self._retrack()
        PyObject_GenericSetAttr(self, name, value)

    cdef inline void _retrack(self) noexcept:
        """Back in the cyclic GC's lists (see ``_settle_tracking``); takes the lock."""
        cdef FutureLock lock = self._condition
        lock.enter()
        if not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(self)
        lock.leave()

    cdef inline void _settle_tracking(self, object value, bint failed) noexcept:
        """Under the lock, once FINISHED: leave the cyclic GC's lists when nothing this
        future references can lead back to it; be in them otherwise.

        ``submit`` takes its futures out of the GC's lists (see there); a future that
        finished usually outlives its call by far (a list of them awaited with
        ``wait()``), and every collection of the generation it sat in visited it: with
        100k futures alive that was a third of the parent's CPU per ``submit`` of the
        process executor (perf: gc_collect_main, visit_decref, visit_reachable). Once
        finished with a result of an atomic type, what it holds are the module's state
        constants, that result, its lock (no references) and empty lists, and ``_halt``
        is dropped (only a pending future needs it): none can be part of a cycle (as
        CPython untracks tuples and dicts of atomic values). Anything that could add a
        reference later tracks it again (``__setattr__``, ``_done_callbacks``). The
        waiters ``wait()``/``as_completed()`` put in ``_waiters`` do reference the future
        (a waiter keeps the futures it was told about), but those functions hold the
        futures while the waiters are there and remove them before they return (their
        ``finally``, also when the ``as_completed`` generator is closed or dropped), so
        a cycle through a waiter never outlives them. Refcounting frees an untracked
        future."""
        cdef type t = type(value)
        if (failed or self._touched or self._callbacks or self._wakeups
                or self._fn is not None or self._args is not None
                or self._kwargs is not None
                or not (value is None or t is int or t is float or t is str
                        or t is bytes or t is bool or t is complex)):
            if not PyObject_GC_IsTracked(self):
                PyObject_GC_Track(self)
            return
        self._halt = None
        if PyObject_GC_IsTracked(self):
            PyObject_GC_UnTrack(self)

    # -- state changes (callers hold no lock)

    cdef inline bint start(self) except -1:
        """set_running_or_notify_cancel"""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            if self._state is PENDING:
                self._state = RUNNING
                return True
            if self._state is CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                self._fn = self._args = self._kwargs = None
                if self._waiter_list:
                    for waiter in self._waiter_list:
                        waiter.add_cancelled(self)
                return False
            LOGGER.critical("Future %s in unexpected state: %s", id(self), self._state)
            raise RuntimeError("Future in unexpected state")
        finally:
            lock.leave()

    cdef inline int finish(self, object value, bint failed) except -1:
        """set_result(value), or set_exception(value) when ``failed``"""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            if self._state is FINISHED or self._state is CANCELLED or (
                    self._state is CANCELLED_AND_NOTIFIED):
                raise InvalidStateError(f"{self._state}: {self!r}")
            if failed:
                self._exception = value
            else:
                self._result = value
            self._state = FINISHED
            if self._waiter_list:
                for waiter in self._waiter_list:
                    if failed:
                        waiter.add_exception(self)
                    else:
                        waiter.add_result(self)
            self._wake()
            self._settle_tracking(value, failed)
        finally:
            lock.leave()
        if self._callbacks:
            self._invoke_callbacks()
        return 0

    cdef inline int _wake(self) except -1:
        """Release the threads blocked in result()/exception(); under the lock."""
        if self._wakeups:
            for w in self._wakeups:
                w.release()
            self._wakeups.clear()
        return 0

    cdef int run_call(self) except -1:
        """Run the attached call and complete the future (by the thread that took it)."""
        fn = self._fn
        args = self._args
        kwargs = self._kwargs
        self._fn = self._args = self._kwargs = None
        if not self.start():
            return 0
        try:
            if kwargs is not None:
                result = PyObject_Call_kw(fn, args, <PyObject *>kwargs)
            else:
                result = PyObject_Call_kw(fn, args, NULL)
        except BaseException as exc:
            self.finish(exc, True)
        else:
            self.finish(result, False)
        return 0

    cdef bint _help(self) except -1:
        """A worker of this future's executor waits for it, and the call sits further
        down the task list that worker is running: run it here and now, instead of
        waiting for a call that would only start after this wait ends (a deadlock that
        ThreadPoolExecutor avoids by handing it to another thread). Only the worker
        holding the list ever gets here for this future, so ``_taken`` has one writer."""
        cdef list tasks
        if self._halt is None:
            return False
        tasks = (<Halt>self._halt).active.get(PyThread_get_thread_ident())
        if tasks is None:
            return False
        for t in tasks:
            if t is self:
                break
        else:
            return False
        if self._taken:
            return False
        self._taken = True
        self.run_call()
        return True

    def _invoke_callbacks(self):
        if self._callbacks:
            for callback in list(self._callbacks):
                try:
                    callback(self)
                except Exception:
                    LOGGER.exception("exception calling callback for %r", self)

    def set_running_or_notify_cancel(self):
        """For executors: see ``concurrent.futures.Future.set_running_or_notify_cancel``."""
        return self.start()

    def set_result(self, result):
        """For executors: see ``concurrent.futures.Future.set_result``."""
        self.finish(result, False)

    def set_exception(self, exception):
        """For executors: see ``concurrent.futures.Future.set_exception``."""
        self.finish(exception, True)

    def cancel(self):
        """Cancel the call if it has not started; see ``Future.cancel``."""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            if self._state is RUNNING or self._state is FINISHED:
                return False
            if self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED:
                return True
            self._state = CANCELLED
            self._wake()
            # Still holding its call (taken later, by whoever drops it from the queue):
            # visible to the cyclic GC again (see submit).
            if not PyObject_GC_IsTracked(self):
                PyObject_GC_Track(self)
        finally:
            lock.leave()
        self._invoke_callbacks()
        return True

    def cancelled(self):
        """True if the call was cancelled."""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            return self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED
        finally:
            lock.leave()

    def running(self):
        """True while the call runs."""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            return self._state is RUNNING
        finally:
            lock.leave()

    def done(self):
        """True once the call finished or was cancelled."""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            return (self._state is FINISHED or self._state is CANCELLED
                    or self._state is CANCELLED_AND_NOTIFIED)
        finally:
            lock.leave()

    def add_done_callback(self, fn):
        """Call ``fn(future)`` once done (now, if it already is); see ``Future``."""
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            if not (self._state is FINISHED or self._state is CANCELLED
                    or self._state is CANCELLED_AND_NOTIFIED):
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        finally:
            lock.leave()
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    cdef object _outcome(self, bint want_result):
        """Under the lock: the result (raising the exception), or the exception; raises
        CancelledError; returns the _NOT_DONE marker when not done."""
        if self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED:
            raise CancelledError()
        if self._state is FINISHED:
            if not want_result:
                return self._exception
            if self._exception is not None:
                raise self._exception
            return self._result
        return _NOT_DONE

    cdef object _get(self, object timeout, bint want_result):
        cdef FutureLock lock = self._condition
        lock.enter()
        try:
            out = self._outcome(want_result)
        finally:
            lock.leave()
        if out is not _NOT_DONE:
            return out
        if self._halt is not None and (<Halt>self._halt).flags() & HALT_FORKED:
            # A future of an executor made before fork(), pending in this child: the
            # worker that would complete it is in the parent, so the wait would never end.
            raise RuntimeError(
                "this future belongs to an Executor created in the parent process before "
                "fork(); it cannot complete in the child")
        self._help()
        lock.enter()
        try:
            out = self._outcome(want_result)
            if out is not _NOT_DONE:
                return out
            w = _allocate_lock()
            w.acquire()
            if self._wakeups is None:
                self._wakeups = []
            self._wakeups.append(w)
        finally:
            lock.leave()
        # One wait, as the standard result() does one Condition.wait(timeout): the lock
        # is released exactly when the future is done or cancelled.
        try:
            if timeout is None:
                w.acquire()
            elif timeout > 0:
                w.acquire(True, timeout)
        finally:
            lock.enter()
            try:
                if self._wakeups is not None and w in self._wakeups:
                    self._wakeups.remove(w)
            finally:
                lock.leave()
        lock.enter()
        try:
            out = self._outcome(want_result)
        finally:
            lock.leave()
        if out is _NOT_DONE:
            raise FuturesTimeoutError()
        return out

    def result(self, timeout=None):
        """The call's result (or its exception, raised); see ``Future.result``."""
        return self._get(timeout, True)

    def exception(self, timeout=None):
        """The call's exception, or None; see ``Future.exception``."""
        return self._get(timeout, False)


cdef object _NOT_DONE = object()


cdef enum:
    HALT_SHUTDOWN = 1
    HALT_CANCEL = 2
    HALT_BROKEN = 4
    HALT_FORKED = 8  # this is a forked child; the executor was made in the parent


@cython.final
cdef class Halt:
    """What an executor's workers check between tasks, and what its submit checks.

    Shared by the executor and its workers; holds no reference to the executor, so that
    an executor nobody uses any more can be collected. The flags are one atomic word
    (set once each, read by every task): ``broken`` (the message) is written before its
    flag is published with a seq_cst fetch-or and read after an acquire load of it.
    """

    cdef sf_atomic_u64 _flags
    cdef object _broken
    cdef public object push         # the pool's submit
    cdef public object future_type  # the Future subclass to create
    cdef public object refuse       # raises the right error for a refused submit
    cdef public object initializer
    cdef public tuple initargs
    cdef public object local        # threading.local: initializer ran in this thread
    cdef public dict active         # worker thread id -> the task list it works through
    cdef public object spared       # shutdown(cancel_futures=True): futures still to run
    cdef object __weakref__         # executor.py's fork hook keeps a WeakSet of them

    def __cinit__(self):
        sf_store_relaxed_u64(&self._flags, 0)
        self._broken = None
        self.active = {}

    cdef inline uint64_t flags(self) noexcept:
        return sf_load_acquire_u64(&self._flags)

    @property
    def shutdown(self):
        return bool(self.flags() & HALT_SHUTDOWN)

    @property
    def cancel(self):
        return bool(self.flags() & HALT_CANCEL)

    @property
    def broken(self):
        return self._broken if self.flags() & HALT_BROKEN else None

    @property
    def forked(self):
        return bool(self.flags() & HALT_FORKED)

    def set_forked(self):
        """In a forked child: every submit (and every wait on a pending future) raises
        from now on; the workers this executor had are not in this process."""
        sf_fetch_or_seqcst_u64(&self._flags, HALT_FORKED)

    def set_shutdown(self, bint cancel):
        sf_fetch_or_seqcst_u64(&self._flags, HALT_SHUTDOWN | (HALT_CANCEL if cancel else 0))

    def set_broken(self, str message):
        if self.flags() & HALT_BROKEN:
            return
        self._broken = message
        sf_fetch_or_seqcst_u64(&self._flags, HALT_BROKEN)

    cdef object broken_error(self):
        return BrokenThreadPool(self._broken)


# Set once by the exit hook, read by every submit (atomic: a relaxed load suffices, it
# only decides between refusing now and a moment later).
cdef sf_atomic_u64 _interpreter_exiting
sf_store_relaxed_u64(&_interpreter_exiting, 0)


def set_interpreter_exiting():
    """From the exit hook: submits are refused from now on."""
    sf_store_relaxed_u64(&_interpreter_exiting, 1)


def submit(self, fn, /, *args, **kwargs):
    """Schedule ``fn(*args, **kwargs)``; returns its ``concurrent.futures.Future``.

    Raises ``RuntimeError`` after ``shutdown()`` (and once the interpreter exits) and
    ``concurrent.futures.thread.BrokenThreadPool`` once an initializer failed.
    """
    cdef Halt halt = self._halt
    cdef FutureCore f
    if halt.flags() or sf_load_relaxed_u64(&_interpreter_exiting):
        halt.refuse()
    f = FutureCore.__new__(halt.future_type)  # tp_new only: __init__ does nothing
    f._fn = fn
    f._args = args
    f._kwargs = kwargs if kwargs else None
    f._halt = halt
    # Out of the cyclic GC's lists from here on (FutureCore._settle_tracking puts it back
    # when it finishes with something that could form a cycle): while the call is
    # attached, the pool's queue (or the worker running it) holds the future, so a
    # cycle through its arguments cannot become garbage before the call is taken off
    # it; the collections while a burst of futures is pending then skip them all.
    PyObject_GC_UnTrack(f)
    try:
        halt.push(f)
    except Closed:
        f._fn = f._args = f._kwargs = None
        halt.refuse()
        raise
    except BaseException:
        f._retrack()  # never queued: dropped with its call attached, maybe in a cycle
        raise
    return f


def take_call(FutureCore fut):
    """Detach ``(fn, args, kwargs)`` from a future that will not run (the references go
    now, as a finished call's do); None if the call was already taken (run)."""
    if fut._taken:
        return None
    call = (fut._fn, fut._args, fut._kwargs)
    fut._taken = True
    fut._fn = fut._args = fut._kwargs = None
    return call


def take_calls(list futures, dict registry, tuple cancelled):
    """The remote executor's hand-over of a batch of futures (``_Shipper``), one compiled
    loop instead of three Python calls per future: each future is marked running and its
    call ``(fn, args, kwargs)`` taken off it and registered in ``registry`` by the call
    tuple's identity; a future cancelled before that is not run (its call becomes
    ``cancelled``, its arguments dropped). Returns the calls, in batch order. Raises
    what ``set_running_or_notify_cancel`` raises for a future in an unexpected state."""
    cdef Py_ssize_t i, n = len(futures)
    cdef list calls = [None] * n
    cdef FutureCore fut
    for i in range(n):
        fut = <FutureCore?>futures[i]
        if fut.start() and not fut._taken:
            call = (fut._fn, fut._args, fut._kwargs)
            fut._taken = True
            fut._fn = fut._args = fut._kwargs = None
            registry[id(call)] = fut
        else:  # cancelled before it could start (or already taken): not run
            fut._taken = True
            fut._fn = fut._args = fut._kwargs = None
            call = cancelled
        calls[i] = call
    return calls


def pop_futures(dict registry, list calls):
    """``[registry.pop(id(call), None) for call in calls]``: the futures of the calls a
    runner reports values for (None for a call cancelled before it was shipped)."""
    cdef Py_ssize_t i, n = len(calls)
    cdef list out = [None] * n
    for i in range(n):
        out[i] = registry.pop(id(calls[i]), None)
    return out


def set_results(list futures, list values):
    """``fut.set_result(value)`` for each pair (None futures skipped), in order: the
    remote executor's ``on_results``. Raises ``ValueError`` if the lengths differ
    (nothing is set then) and what ``set_result`` raises (the futures before it are
    set)."""
    cdef Py_ssize_t i, n = len(futures)
    if len(values) != n:
        raise ValueError(
            f"set_results: {n} futures and {len(values)} values (one value per future)")
    for i in range(n):
        fut = futures[i]
        if fut is None:
            continue
        if type(fut) is not FutureCore and not isinstance(fut, FutureCore):
            fut.set_result(values[i])
        else:
            (<FutureCore>fut).finish(values[i], False)


def run_tasks(Halt halt, list tasks, object chunk_type, object halted):
    """Run a list of tasks in order: futures made by ``submit`` (their call attached),
    and map chunks (``chunk.run(halt)``); after shutdown(cancel_futures=True) or a
    failed initializer, ``halted(halt, task)`` instead."""
    cdef FutureCore fut
    for task in tasks:
        if halt.flags() & (HALT_CANCEL | HALT_BROKEN):
            halted(halt, task)
            continue
        if type(task) is chunk_type:
            task.run(halt)
            continue
        fut = <FutureCore>task
        if fut._taken:
            continue  # already run by a waiter on this thread (FutureCore._help)
        fut._taken = True
        fut.run_call()


cdef object _monotonic = __import__("time").monotonic


cdef class Chunk:
    """One ``map`` task: ``fn`` over a run of argument tuples, results kept in order.

    The worker publishes progress item by item under ``_mutex``: ``ran`` items have a
    result in ``results`` (or an exception in ``errors``), so a result is handed out as
    soon as its call returned, as with a future per item. ``finished`` is set once, by
    the worker that ran the chunk or by ``shutdown(cancel_futures=True)`` for a chunk it
    took back from the queue (``cancel_queued``); items past ``ran`` were then
    cancelled. One consumer (the map iterator) waits in ``wait_for``: it sets
    ``_waiting`` under the mutex and sleeps on ``_signal``, which the worker releases.
    """

    cdef public object fn
    cdef public list args
    cdef readonly Py_ssize_t count
    cdef readonly list results
    cdef readonly object errors     # None, or {index: exception}
    cdef Py_ssize_t _ran
    cdef bint _finished
    cdef bint _waiting
    cdef sf_atomic_u64 _cancelled
    cdef PyThread_type_lock _mutex
    cdef PyThread_type_lock _signal

    def __cinit__(self, fn, list args):
        self._mutex = PyThread_allocate_lock()
        self._signal = PyThread_allocate_lock()
        if self._mutex == NULL or self._signal == NULL:
            raise MemoryError()
        PyThread_acquire_lock(self._signal, NOWAIT_LOCK)  # held: released to wake
        self.fn = fn
        self.args = args
        self.count = len(args)
        self.results = []
        self.errors = None
        self._ran = 0
        self._finished = False
        self._waiting = False
        sf_store_relaxed_u64(&self._cancelled, 0)

    def __dealloc__(self):
        if self._mutex != NULL:
            PyThread_free_lock(self._mutex)
        if self._signal != NULL:
            PyThread_free_lock(self._signal)

    @property
    def cancelled(self):
        return sf_load_relaxed_u64(&self._cancelled) != 0

    @cancelled.setter
    def cancelled(self, bint value):
        # A hint for the worker (checked before each item): a stale read only lets one
        # more item start, as a cancel() racing with a start would.
        sf_store_relaxed_u64(&self._cancelled, 1 if value else 0)

    cdef inline void _lock(self) noexcept:
        if not PyThread_acquire_lock(self._mutex, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock_timed(self._mutex, -1, 0)

    cdef inline void _publish(self, Py_ssize_t ran, bint finished) noexcept:
        """Under the mutex: progress, and a wake-up for a waiting consumer."""
        self._ran = ran
        if finished:
            self._finished = True
        if self._waiting:
            self._waiting = False
            PyThread_release_lock(self._signal)

    def run(self, Halt halt):
        """Run the items in order (in a worker); publish each result as it is there."""
        cdef Py_ssize_t i = 0
        cdef uint64_t flags
        fn = self.fn
        results = self.results
        try:
            for args in self.args:
                flags = halt.flags()
                if sf_load_relaxed_u64(&self._cancelled) or flags & HALT_CANCEL:
                    break
                failed = False
                if flags & HALT_BROKEN:
                    value = halt.broken_error()
                    failed = True
                else:
                    try:
                        value = PyObject_Call_kw(fn, <tuple>args, NULL)
                    except BaseException as exc:
                        value = exc
                        failed = True
                self._lock()
                try:
                    if failed:
                        if self.errors is None:
                            self.errors = {}
                        self.errors[i] = value
                        results.append(None)
                    else:
                        results.append(value)
                    i += 1
                    self._publish(i, False)
                finally:
                    PyThread_release_lock(self._mutex)
                value = None
        finally:
            self.args = []
            self._lock()
            self._publish(i, True)
            PyThread_release_lock(self._mutex)

    def take(self, Py_ssize_t i):
        """Result ``i`` (which has run), let go of by the chunk: once the map iterator
        has handed it out, only the consumer holds it (bpo-14406)."""
        self._lock()
        try:
            value = self.results[i]
            self.results[i] = None
        finally:
            PyThread_release_lock(self._mutex)
        return value

    def drain(self):
        """An iterator over the results of a finished chunk (every item ran, none
        failed) that lets go of each one as it hands it out, as ``take`` does."""
        cdef _Drain d = _Drain.__new__(_Drain)
        d.items = self.results
        d.pos = 0
        return d

    def cancel_queued(self):
        """A chunk shutdown took back from the queue: nothing of it ran."""
        self.args = []
        self._lock()
        self._publish(0, True)
        PyThread_release_lock(self._mutex)

    def wait_for(self, Py_ssize_t i, object end_time):
        """Wait until item ``i`` ran or the chunk finished; returns ``(ran, finished)``.
        ``TimeoutError`` if ``end_time`` (``time.monotonic()``) passes first."""
        cdef long long us
        cdef PyLockStatus r
        cdef double remaining
        while True:
            self._lock()
            if self._ran > i or self._finished:
                out = (self._ran, self._finished)
                PyThread_release_lock(self._mutex)
                return out
            self._waiting = True
            PyThread_release_lock(self._mutex)
            if end_time is None:
                us = -1
            else:
                remaining = end_time - _monotonic()
                if remaining > TIMEOUT_MAX:
                    remaining = TIMEOUT_MAX
                us = <long long>(remaining * 1e6) if remaining > 0 else 0
            with nogil:
                r = PyThread_acquire_lock_timed(self._signal, us, 1)
            if r == PY_LOCK_ACQUIRED:
                continue
            self._lock()
            if self._waiting:
                self._waiting = False  # no wake-up is coming
            else:
                PyThread_acquire_lock(self._signal, NOWAIT_LOCK)  # consume the one sent
            out = (self._ran, self._finished)
            PyThread_release_lock(self._mutex)
            if self._ran > i or self._finished:
                return out
            if r == PY_LOCK_INTR:
                PyErr_CheckSignals()  # Ctrl-C raises here; otherwise wait on
                continue
            raise FuturesTimeoutError()


@cython.final
cdef class _Drain:
    """``Chunk.drain()``: a list iterator that replaces each item by None as it yields it
    (the chunk is finished: no worker touches the list any more)."""

    cdef list items
    cdef Py_ssize_t pos

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t i = self.pos
        cdef list items = self.items
        if items is None or i >= len(items):
            self.items = None
            raise StopIteration
        value = items[i]
        items[i] = None
        self.pos = i + 1
        return value
