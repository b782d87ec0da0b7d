# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=False
"""The compiled core of ``ShardedPool``: routing, the submit paths and the worker loop.

Per item, nothing here allocates a Python object, takes a lock or makes a system call:
``submit`` is one CAS and one release store on the shard's ring plus a fence to look for a
sleeping worker; the worker drains whole runs of items with one CAS and calls the handler
for each while holding the GIL once. Everything that touches Python objects on a rare path
(errors, hand-back on cancel, metrics) lives in plain Python-object code below.

GIL strategy (why throughput is decided here, not in the ring): under the GIL a hand-off
between threads costs microseconds, up to the 5 ms switch interval. So a worker that got
the GIL keeps it while there is work in its ring (it re-drains with the GIL held, a C call
with no Python in it), a producer that finds its shard full sleeps without the GIL so that
the worker runs, and nobody is woken unless it sleeps. ``submit_many`` also gives the GIL
to a worker waiting for it once its shard holds ``HAND_GIL_AT`` items, well before the ring
is full, so that what is in flight stays small and hot in the caches (see "GIL hand-off"
in ``_pool.h``).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.math cimport INFINITY
from libc.string cimport memcpy, memmove

from shardflow._atomic cimport (
    sf_counter_add,
    sf_load_acquire_u64,
    sf_fetch_add_relaxed_u64,
    sf_load_acquire_int,
    sf_load_acquire_u32,
    sf_load_relaxed_int,
    sf_load_relaxed_u64,
    sf_store_seqcst_int,
)
from shardflow._park cimport sf_now_ns
from shardflow._ring cimport (
    sf_ring_close,
    sf_ring_has_items,
    sf_ring_depth,
    sf_ring_is_closed,
    sf_ring_pop,
    sf_ring_round_capacity,
    sf_ring_tail_index,
    sf_ring_wait_published,
)
from shardflow._shard cimport (
    SF_HIST_BUCKETS,
    SF_HIST_SUB_BITS,
    SF_SERVICE_SAMPLE_EVERY,
    sf_hist,
    sf_hist_destroy,
    sf_hist_init,
    sf_hist_record,
    sf_hist_record_since,
    SF_WAIT_FLUSH,
    sf_sched_flushed,
    sf_sched_flush_done,
    sf_sched_pop_own,
    sf_sched_push,
    sf_sched_push1,
    sf_sched_gate,
    sf_sched_release_hold,
    sf_sched_request_flush,
    sf_sched_wait,
    sf_sched_wait_flushed,
    SF_STOP_FINISH_TAKEN,
    SF_STOP_HAND_BACK,
    SF_STOP_NONE,
    SF_WAIT_FINISHED,
    sf_pool,
    sf_pool_destroy,
    sf_pool_init,
    sf_pool_got_gil,
    sf_pool_next_shard,
    sf_pool_should_hand_gil,
    sf_pool_wait_gil_taken,
    sf_pool_want_gil,
    sf_pool_wait_idle,
    sf_pool_worker_exited,
    sf_pool_worker_started,
    sf_shard,
    sf_shard_destroy,
    sf_shard_init,
    sf_shard_wait_space,
    sf_shard_wake_all,
    sf_shards_alloc,
    sf_shards_free,
)

import logging
import sys
import threading
import types

from shardflow._itemloop import run_items as _item_loop
from shardflow._validate import seconds_to_ns
from shardflow.errors import Closed, Full


cdef extern from "Python.h":
    # Raw-pointer forms: the worker loop manages references itself, so it must not let
    # Cython add INCREF/DECREF pairs around every item.
    PyObject *PyObject_CallOneArg(PyObject *callable, PyObject *arg)
    void Py_DECREF_p "Py_DECREF"(PyObject *o)
    void Py_INCREF_p "Py_INCREF"(PyObject *o)
    object PyList_New(Py_ssize_t n)
    int PyErr_CheckSignals() except -1
    Py_ssize_t PyObject_LengthHint(object o, Py_ssize_t default) except -1
    Py_hash_t PyObject_Hash(object o) except -1
    # For recycling batch lists: a list nobody else references is refilled in place.
    ctypedef struct PyListObject:
        PyObject **ob_item
        Py_ssize_t allocated
    Py_ssize_t Py_SIZE(object o)
    void Py_SET_SIZE(object o, Py_ssize_t n)


cdef extern from "shardflow/_pycompat.h":
    object sf_take_exception()
    bint sf_is_uniquely_referenced(object o)
    bint sf_seq_fast_ok(object o)
    PyObject **sf_seq_items(object o)
    int sf_iter_fill(object it, void **out, Py_ssize_t n, Py_ssize_t *got) except -1


cdef extern from "shardflow/_fastcall.h":
    ctypedef object (*sf_one_arg_fn)(object, object)
    int sf_install_submit(object type_obj, sf_one_arg_fn one) except -1
    bint sf_submit_try_push1(sf_pool *p, sf_shard *shards, uint64_t s, PyObject *item)


cdef extern from "shardflow/_pool.h" nogil:
    size_t sizeof_sf_pool "sizeof(sf_pool)"


cdef extern from *:
    """
    #include "shardflow/_pool.h"
    static inline sf_pool *sf_pool_alloc(void) {
        void *p = NULL;
    #if defined(_WIN32)
        p = _aligned_malloc(sizeof(sf_pool), SF_CACHELINE);
    #else
        if (posix_memalign(&p, SF_CACHELINE, sizeof(sf_pool))) p = NULL;
    #endif
        return (sf_pool *)p;
    }
    static inline void sf_pool_free(sf_pool *p) {
    #if defined(_WIN32)
        _aligned_free(p);
    #else
        free(p);
    #endif
    }
    """
    sf_pool *sf_pool_alloc() nogil
    void sf_pool_free(sf_pool *p) nogil


_log = logging.getLogger("shardflow")

cdef enum:
    # Items a worker takes from its ring in one drain (in addition to a batch it is
    # filling). Large enough that a drain, its CAS and the GIL acquisition are amortized
    # over many items; small enough (32 KiB of pointers) to stay in L1/L2.
    DRAIN_CHUNK = 4096
    # In stealing pools a worker takes at most this many items (or one batch) per drain:
    # what it holds privately cannot be stolen, so it holds little; re-draining is one CAS.
    STEAL_DRAIN = 64
    # Items a worker may handle while holding the GIL once. Bounds how long other threads
    # wait for the GIL when the ring never runs dry (free-threaded builds).
    MAX_ITEMS_PER_HOLD = 65536
    # Items staged per shard by submit_many before one push.
    SUBMIT_CHUNK = 256
    # The smallest run submit_many cuts a sized call into (see _even_run).
    SPLIT_MIN = 32
    # Blocking waits wake this often (ns) to run signal handlers (Ctrl-C), check deadlines.
    WAIT_SLICE_NS = 50000000
    # submit_many gives the GIL to a shard's worker that waits for it once the shard holds
    # this many items (or two batches, if more): enough that a hand-off is amortized over
    # thousands of items, few enough that what is in flight stays in the CPU's caches and
    # in the allocator's retained memory (see "GIL hand-off" in _pool.h).
    HAND_GIL_AT = 8192
    # ... and waits at most this long (ns; the interpreter's default switch interval) for
    # the worker to take it.
    HAND_GIL_WAIT_NS = 5000000
    # A drained run of at least this many items goes through the bytecode loop
    # (_ItemRun); a shorter one is called from C (entering the loop costs about one call).
    ITEM_LOOP_MIN = 2

#: Per-item runs of a Python handler go through the bytecode loop (shardflow._itemloop)
#: from 3.12 on. Measured per no-op item (callgrind, whole process, 2 workers): 3.12 1198
#: -> 1029 instructions, 3.13 1047 -> 997, but 3.11 905 -> 963: there a call from C costs
#: about what an inlined call does (~460 instructions either way), and the iterator's
#: bookkeeping is then pure overhead. 3.10 does not inline calls at all.
_INLINED_CALLS = sys.version_info >= (3, 12)

ON_FULL_BLOCK = 0
ON_FULL_RAISE = 1
ON_FULL_DROP = 2
#: Items a worker may hold privately beyond its ring (its drain buffer): the pipeline's
#: memory bound counts them.
WORKER_DRAIN = DRAIN_CHUNK


_NO_ITEM = object()


cdef bint _is_python_function(object fn):
    """Is a call of ``fn`` from bytecode inlined (a Python function, or a bound method of
    one)? Other callables (builtins, partials, instances with ``__call__``) cost the same
    from bytecode as from C, plus the loop's own bytecode: they are called from C."""
    if type(fn) is types.MethodType:
        fn = fn.__func__
    return type(fn) is types.FunctionType


cdef object _unsent(object exc, object item):
    """The exception a refused ``submit(item)`` raises carries what ``submit_many``'s do:
    nothing was queued, and the item is handed back."""
    exc.submitted = 0
    exc.unsent = [item]
    return exc


cdef int _check_timeout(object timeout) except -1:
    """timeout: None, or seconds >= 0; inf (or an int too large for a float) = no limit."""
    cdef double secs
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            "timeout must be None or a number of seconds >= 0 (inf: no limit), got "
            f"{type(timeout).__name__}")
    try:
        secs = timeout
    except OverflowError:
        secs = INFINITY if timeout > 0 else -INFINITY
    if not secs >= 0:
        raise ValueError(
            f"timeout must be None or a number of seconds >= 0 (inf: no limit), got {timeout!r}")
    return 0


cdef inline int64_t _deadline(object timeout) except -2:
    """Monotonic deadline in ns for a (validated) timeout in seconds; -1 for None, and for
    timeouts too long to represent (inf included), which mean "no deadline"."""
    cdef double secs
    if timeout is None:
        return -1
    try:
        secs = timeout
    except OverflowError:
        return -1
    if secs > 1e9:  # ~31 years: beyond that (and inf), int64 ns would overflow
        return -1
    return sf_now_ns() + <int64_t>(secs * 1e9)


cdef inline int64_t _slice_deadline(int64_t deadline) nogil:
    cdef int64_t s = sf_now_ns() + WAIT_SLICE_NS
    if deadline >= 0 and deadline < s:
        return deadline
    return s


cdef inline Py_ssize_t _even_run(Py_ssize_t n, Py_ssize_t nsh) noexcept nogil:
    """Items per run when ``submit_many`` sends ``n`` unkeyed items round-robin to
    ``nsh`` shards (``n`` 0: unknown): at most SUBMIT_CHUNK, and runs of one size, so that
    the shards get the same number of runs, not the first ones an extra full run (4,000
    items on 2 shards: 16 runs of 250, 2,000 each, instead of 2,048 and 1,952; a process
    pool, which cannot rebalance what it shipped, finishes with its slower half). Runs
    stay at least SPLIT_MIN items: a small call is not cut into pushes of a few items
    (its imbalance is small, and round-robin evens it out over calls)."""
    cdef Py_ssize_t rounds, run
    if n <= 0:
        return SUBMIT_CHUNK
    rounds = (n - 1) // (nsh * SUBMIT_CHUNK) + 1
    run = (n - 1) // (nsh * rounds) + 1
    return run if run >= SPLIT_MIN else SPLIT_MIN


@cython.final
cdef class BatchOutcome:
    """Returned by a backend's wrapped handler (``shardflow.backends.base``) for a batch
    that ran elsewhere and in which some items failed: ``failures`` lists ``(index,
    exception)`` pairs, index into the batch. The pool routes each failed item alone (its
    dead letter, ``on_error``, counters, exactly as a per-item failure) and counts the
    other items as processed, so one bad item never fails its batch."""

    cdef readonly list failures

    def __init__(self, failures):
        self.failures = list(failures)

    def __repr__(self):
        return f"BatchOutcome(failures={self.failures!r})"


@cython.final
cdef class _Deferred:
    """The type of ``DEFERRED``."""

    def __repr__(self):
        return "shardflow.backends.DEFERRED"

    def __reduce__(self):
        return "DEFERRED"


#: Returned by a backend's wrapped handler for a batch it shipped and whose outcome is
#: not known yet (``shardflow.backends.base``: windows of batches in flight). The core then
#: counts the batch as handed over but neither processed nor failed; the runner reports
#: the outcome later, exactly once, with ``PoolCore._settle``.
cdef _Deferred _deferred = _Deferred()
DEFERRED = _deferred


cdef class PoolCore:
    """Compiled state and hot paths of ``shardflow.ShardedPool`` (use that class)."""

    cdef sf_shard *shards
    cdef sf_pool *st
    cdef readonly Py_ssize_t workers
    cdef readonly uint64_t capacity
    cdef readonly Py_ssize_t batch_size
    cdef int64_t batch_timeout_ns
    cdef int on_full_code
    cdef uint64_t hand_gil_at   # see HAND_GIL_AT; 0: never (the ring fills first)
    cdef readonly bint steal
    cdef readonly bint reuse_batches
    cdef readonly bint drain_one_batch  # see _core_init
    cdef readonly bint lists     # the handler gets lists (batch_size > 1, or asked for)
    cdef object handler
    # Per-item runs go through this bytecode loop (_itemloop.run_items), None: from C.
    cdef readonly object item_loop
    cdef object key_fn
    cdef object on_error_fn
    cdef object dead_letter_fn
    cdef object _lock
    cdef list _returned
    cdef object _fatal
    cdef bint _ready
    cdef object _direct   # see _set_direct; None: every item goes through the ring
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.shards = NULL
        self.st = NULL
        self.workers = 0
        self._ready = False
        self._direct = None

    def __dealloc__(self):
        cdef Py_ssize_t i
        cdef void *item
        if self.shards != NULL:
            for i in range(self.workers):
                # Only reachable when no worker runs (workers hold a reference to us).
                while sf_ring_pop(&self.shards[i].ring, &item, 1) == 1:
                    Py_DECREF_p(<PyObject *>item)
                sf_shard_destroy(&self.shards[i])
            sf_shards_free(self.shards)
        if self.st != NULL:
            sf_pool_destroy(self.st)
            sf_pool_free(self.st)

    def _core_init(self, handler, Py_ssize_t workers, key, uint64_t capacity,
                   Py_ssize_t batch_size, batch_timeout, int on_full, on_error,
                   bint steal=False, bint reuse_batches=True, dead_letter=None,
                   bint lists=False, bint drain_one_batch=False):
        """Allocate the shards. Arguments are validated by the Python layer.

        ``drain_one_batch``: a worker takes at most one batch from its ring at a time. For
        runners that ship batches elsewhere (processes, Ray) and may wait for room in a
        window: items drained ahead would sit in the dispatch thread's buffer, out of
        reach of ``_take_queued`` (``Executor.shutdown(cancel_futures=True)`` could not
        cancel them) and of ``cancel``."""
        cdef Py_ssize_t i, j
        if self._ready:
            raise RuntimeError("pool core initialised twice")
        self.handler = handler
        self.key_fn = key
        self.on_error_fn = on_error
        self.dead_letter_fn = dead_letter
        self.batch_size = batch_size
        self.batch_timeout_ns = -1 if batch_timeout is None else seconds_to_ns(batch_timeout)
        self.on_full_code = on_full
        self.steal = steal
        self.reuse_batches = reuse_batches
        self.lists = lists or batch_size > 1
        self.drain_one_batch = drain_one_batch
        self.item_loop = (_item_loop if not self.lists and _INLINED_CALLS
                          and _is_python_function(handler) else None)
        self._lock = threading.Lock()
        self._returned = []
        self._fatal = None
        self.capacity = sf_ring_round_capacity(capacity)
        self.hand_gil_at = max(<uint64_t>HAND_GIL_AT, 2 * <uint64_t>batch_size)
        if self.hand_gil_at >= self.capacity:
            self.hand_gil_at = 0
        self.st = sf_pool_alloc()
        if self.st == NULL:
            raise MemoryError()
        if sf_pool_init(self.st) != 0:
            sf_pool_free(self.st)
            self.st = NULL
            raise MemoryError()
        self.st.steal = steal
        self.shards = sf_shards_alloc(workers)
        if self.shards == NULL:
            raise MemoryError()
        for i in range(workers):
            if sf_shard_init(&self.shards[i], self.capacity) != 0:
                for j in range(i):
                    sf_shard_destroy(&self.shards[j])
                sf_shards_free(self.shards)
                self.shards = NULL
                raise MemoryError(f"cannot allocate a ring of {self.capacity} slots")
            self.workers = i + 1
        self._ready = True

    # ------------------------------------------------------------------ routing

    cdef inline Py_ssize_t _route(self, object item) except -1:
        cdef Py_hash_t h
        if self.key_fn is None:
            return <Py_ssize_t>sf_pool_next_shard(self.st, <uint64_t>self.workers)
        h = PyObject_Hash(self.key_fn(item))
        # Python's modulo: hash(key) % workers, non-negative for negative hashes.
        h = h % self.workers
        if h < 0:
            h += self.workers
        return <Py_ssize_t>h

    # ------------------------------------------------------------------ submit

    def submit(self, item, timeout=None):
        """Queue ``item`` for its shard's worker. Returns True when queued, False when the
        shard was full and ``on_full="drop"``; raises ``Full`` (``on_full="raise"``, or a
        blocking wait that timed out) and ``Closed`` after ``close()``."""
        cdef Py_ssize_t s
        if timeout is None:
            return _submit_one(self, item)
        _check_timeout(timeout)
        s = self._route(item)
        if self._direct is not None and _try_direct(self, s, item):
            return True
        return self._submit_at(s, item, timeout)

    def _submit_to(self, Py_ssize_t shard, item, timeout=None):
        """``submit`` to shard ``shard``, without the key function: ``submit_array``
        routes whole array batches itself (by the partition kernel's hash). Same returns,
        raises and counting as ``submit``."""
        if not (0 <= shard < self.workers):
            raise IndexError(f"shard index {shard} out of range(0, {self.workers})")
        if timeout is not None:
            _check_timeout(timeout)
        return self._submit_at(shard, item, timeout)

    cdef object _submit_routed(self, object item):
        """``submit(item)`` with a key function or a direct ship (see ``_submit_one``)."""
        cdef Py_ssize_t s
        cdef int64_t r
        if self.key_fn is None:
            s = <Py_ssize_t>sf_pool_next_shard(self.st, <uint64_t>self.workers)
        else:
            s = self._route(item)
        if self._direct is not None and _try_direct(self, s, item):
            return True
        # _submit_at written out: a keyed submit makes no further call.
        Py_INCREF(item)
        r = sf_sched_push1(self.st, self.shards, s, <void *><PyObject *>item)
        if r == 1:
            return True
        Py_DECREF(item)
        return self._submit_slow(s, item, None, r)

    cdef object _submit_at(self, Py_ssize_t s, object item, object timeout):
        """``submit(item, timeout)`` to shard ``s``, routed already (timeout checked)."""
        cdef int64_t r
        Py_INCREF(item)
        r = sf_sched_push1(self.st, self.shards, s, <void *><PyObject *>item)
        if r == 1:
            return True
        Py_DECREF(item)
        return self._submit_slow(s, item, timeout, r)

    cdef object _submit_slow(self, Py_ssize_t s, object item, object timeout, int64_t r):
        cdef sf_shard *sh = &self.shards[s]
        cdef void *p = <void *><PyObject *>item
        cdef int64_t deadline
        if r < 0:
            self._raise_closed(item)
        if self.on_full_code == ON_FULL_DROP:
            sf_fetch_add_relaxed_u64(&sh.ctr.dropped, 1)
            return False
        if self.on_full_code == ON_FULL_RAISE or (timeout is not None and timeout <= 0):
            raise _unsent(Full(f"shard is full ({self.capacity} items queued)"), item)
        deadline = _deadline(timeout)
        while True:
            with nogil:
                sf_shard_wait_space(sh, _slice_deadline(deadline))
            Py_INCREF(item)
            r = sf_sched_push(self.st, self.shards, s, &p, 1)
            if r == 1:
                return True
            Py_DECREF(item)
            if r < 0:
                self._raise_closed(item)
            PyErr_CheckSignals()
            if deadline >= 0 and sf_now_ns() >= deadline:
                raise _unsent(
                    Full(f"shard stayed full ({self.capacity} items) for {timeout} s"), item)

    cdef int _raise_closed(self, object item=_NO_ITEM) except -1:
        if sf_load_relaxed_int(&self.st.forked):
            # The object the user holds: a ShardedPool, or the BatchProcessor / Executor /
            # Pipeline built on it (they set _fork_owner).
            owner = getattr(self, "_fork_owner", "ShardedPool")
            raise RuntimeError(
                f"this {owner} was created in the parent process before fork() and cannot "
                f"be used in the child (its worker threads do not exist there); create a "
                f"new {owner} in the child")
        exc = Closed("pool is closed: submit() after close() or shutdown()")
        raise exc if item is _NO_ITEM else _unsent(exc, item)

    def submit_many(self, items, timeout=None):
        """Queue every item of the iterable, pushing staged chunks with one C call each.

        Returns how many items were queued (items refused by ``on_full="drop"`` are not
        counted). If an exception escapes (``Full``, ``Closed``, ``KeyboardInterrupt``, an
        error from the iterable or the key function), it carries ``submitted`` (items
        queued before it) and ``unsent`` (items taken from the iterable but not queued).
        """
        cdef Py_ssize_t nsh = self.workers
        cdef void **stage
        cdef Py_ssize_t *fill
        cdef Py_ssize_t s, j
        cdef Py_ssize_t submitted = 0
        cdef int64_t deadline
        cdef bint keyed = self.key_fn is not None
        cdef Py_ssize_t rr_shard = -1
        if timeout is not None:
            _check_timeout(timeout)
        deadline = _deadline(timeout)
        # Allocated after validation and freed in the finally below: nothing can leak.
        stage = <void **>malloc(nsh * SUBMIT_CHUNK * sizeof(void *))
        fill = <Py_ssize_t *>calloc(nsh, sizeof(Py_ssize_t))
        if stage == NULL or fill == NULL:
            free(stage)
            free(fill)
            raise MemoryError()
        cdef bint routing = False  # `item` was taken from the iterable, not yet staged
        cdef Py_ssize_t pos, run, chunk
        cdef PyObject **src
        cdef int status
        try:
            if not keyed and sf_seq_fast_ok(items):
                # Fast path: a list or tuple, no key function. Runs of up to SUBMIT_CHUNK
                # items are copied from the sequence's item array (under the GIL, so the
                # copy and the INCREFs see one state of a list even if another thread
                # changes it between runs), then pushed like staged items: one routing
                # decision and one push per run, the same shard choice as below.
                pos = 0
                chunk = _even_run(Py_SIZE(items), nsh)
                while pos < Py_SIZE(items):
                    run = Py_SIZE(items) - pos
                    if run > chunk:
                        run = chunk
                    s = self._route(None)
                    src = sf_seq_items(items) + pos
                    for j in range(run):
                        Py_INCREF_p(src[j])
                        stage[s * SUBMIT_CHUNK + j] = <void *>src[j]
                    fill[s] = run
                    pos += run
                    self._push_staged(s, stage + s * SUBMIT_CHUNK, &fill[s], deadline, timeout,
                                      &submitted)
                return submitted
            if not keyed:
                # Any other iterable, no key function: runs of up to SUBMIT_CHUNK items
                # are taken by one C loop over the iterator (sf_iter_fill), then routed
                # and pushed as one run. The run is staged in shard 0's slots whatever
                # shard it goes to (nothing else is staged meanwhile), so an exception
                # (from the iterator, or the push) finds its items there.
                chunk = _even_run(PyObject_LengthHint(items, 0), nsh)
                it = iter(items)
                while True:
                    status = sf_iter_fill(it, stage, chunk, &fill[0])
                    if fill[0]:
                        self._push_staged(self._route(None), stage, &fill[0], deadline, timeout,
                                          &submitted)
                    if status:
                        return submitted
            for item in items:
                routing = True
                if keyed:
                    s = self._route(item)
                else:
                    if rr_shard < 0:
                        rr_shard = self._route(item)
                    s = rr_shard
                Py_INCREF(item)
                stage[s * SUBMIT_CHUNK + fill[s]] = <void *><PyObject *>item
                fill[s] += 1
                routing = False
                if fill[s] == SUBMIT_CHUNK:
                    self._push_staged(s, stage + s * SUBMIT_CHUNK, &fill[s], deadline, timeout,
                                      &submitted)
                    rr_shard = -1
            for s in range(nsh):
                if fill[s]:
                    self._push_staged(s, stage + s * SUBMIT_CHUNK, &fill[s], deadline, timeout,
                                      &submitted)
        except BaseException as exc:
            unsent = [item] if routing else []
            for s in range(nsh):
                for j in range(fill[s]):
                    unsent.append(<object>stage[s * SUBMIT_CHUNK + j])
                    Py_DECREF_p(<PyObject *>stage[s * SUBMIT_CHUNK + j])
                fill[s] = 0
            try:
                exc.submitted = submitted
                exc.unsent = unsent
            except AttributeError:
                pass
            raise
        finally:
            free(stage)
            free(fill)
        return submitted

    cdef int _push_staged(self, Py_ssize_t s, void **items, Py_ssize_t *fill,
                          int64_t deadline, object timeout, Py_ssize_t *submitted) except -1:
        """Push items[0:*fill] to shard s, adding what was queued to *submitted as it goes
        (so an exception leaves it exact). On an exception *fill counts what is left, moved
        to the front, still owned."""
        cdef sf_shard *sh = &self.shards[s]
        cdef Py_ssize_t done = 0, total = fill[0], k
        cdef int64_t r
        try:
            while done < total:
                r = sf_sched_push(self.st, self.shards, s, items + done, total - done)
                if r > 0:
                    done += r
                    submitted[0] += r
                    # Under the GIL, a worker waiting for it cannot drain this ring until we
                    # let it (see "GIL hand-off" in _pool.h).
                    if self.hand_gil_at and sf_pool_should_hand_gil(
                            self.st, sf_ring_depth(&sh.ring), self.hand_gil_at):
                        with nogil:
                            sf_pool_wait_gil_taken(self.st, sf_now_ns() + HAND_GIL_WAIT_NS)
                    continue
                if r < 0:
                    self._raise_closed()
                if self.on_full_code == ON_FULL_DROP:
                    for k in range(done, total):
                        Py_DECREF_p(<PyObject *>items[k])
                    sf_fetch_add_relaxed_u64(&sh.ctr.dropped, total - done)
                    fill[0] = 0
                    return 0
                if self.on_full_code == ON_FULL_RAISE or (timeout is not None and timeout <= 0):
                    raise Full(f"shard is full ({self.capacity} items queued)")
                if deadline >= 0 and sf_now_ns() >= deadline:
                    raise Full(f"shard stayed full ({self.capacity} items) for {timeout} s")
                with nogil:
                    sf_shard_wait_space(sh, _slice_deadline(deadline))
                PyErr_CheckSignals()
        except BaseException:
            if done:
                memmove(items, items + done, (total - done) * sizeof(void *))
            fill[0] = total - done
            raise
        fill[0] = 0
        return 0

    # ------------------------------------------------------------------ workers

    def _run_worker(self, Py_ssize_t index):
        """Thread target: serve shard ``index`` until it is closed and drained, or stopped."""
        cdef _Worker w
        try:
            w = _Worker(self, index)
            w.run()
        finally:
            sf_sched_flushed(self.st, &self.shards[index], <uint64_t>-1)
            sf_pool_worker_exited(self.st)

    def _worker_starting(self):
        """Count a worker before its thread starts, so that join() cannot miss it."""
        sf_pool_worker_started(self.st)

    def _worker_start_failed(self):
        sf_pool_worker_exited(self.st)

    cdef int _run_items(self, sf_shard *sh, void **buf, Py_ssize_t n) except -1:
        """Call the handler once per item, in order. Consumes the references."""
        cdef PyObject *handler = <PyObject *>self.handler
        cdef PyObject *item
        cdef PyObject *res
        cdef Py_ssize_t i
        cdef int64_t t0
        for i in range(n):
            if sf_load_relaxed_int(&self.st.stop) == SF_STOP_HAND_BACK:
                self._hand_back(sh, buf + i, n - i)
                break
            item = <PyObject *>buf[i]
            # Time one call in SF_SERVICE_SAMPLE_EVERY: two clock reads per item would cost
            # more than the rest of the per-item path.
            if (sh.svc_tick & (SF_SERVICE_SAMPLE_EVERY - 1)) == 0:
                t0 = sf_now_ns()
                res = PyObject_CallOneArg(handler, item)
                sf_hist_record_since(&sh.service, t0, sf_now_ns())
            else:
                res = PyObject_CallOneArg(handler, item)
            sh.svc_tick += 1
            if res == NULL:
                self._failed(sh, item, 1)
            else:
                Py_DECREF_p(res)
                sf_counter_add(&sh.ctr.processed, 1)
            sf_counter_add(&sh.ctr.batches, 1)
            Py_DECREF_p(item)
        return 0

    cdef void _failed(self, sf_shard *sh, PyObject *what, Py_ssize_t count) noexcept:
        """Route the exception the handler just raised; never lets anything escape."""
        self._route_failure(sh, what, count, sf_take_exception())

    cdef void _route_failure(self, sf_shard *sh, PyObject *what, Py_ssize_t count,
                             object exc) noexcept:
        """Route ``exc``, raised for ``what`` (an item, or a batch of ``count``).

        With a dead letter, the item (or batch) goes there and counts as dead-lettered; if
        the dead letter refuses it (raises, e.g. a full queue), it counts as failed and is
        reported like any failure, so nothing vanishes."""
        try:
            if not isinstance(exc, Exception):
                # KeyboardInterrupt, SystemExit & co: remembered and re-raised by the next
                # join()/shutdown() in the owning thread; the worker itself goes on.
                with self._lock:
                    if self._fatal is None:
                        self._fatal = exc
            elif self.dead_letter_fn is not None:
                try:
                    self.dead_letter_fn(<object>what, exc)
                except BaseException as refused:
                    # Reported once, below, as an ordinary failure; say why it is one.
                    _log.warning("shardflow dead letter refused %r: %r", <object>what, refused)
                else:
                    sf_counter_add(&sh.ctr.dead_lettered, count)
                    return
            sf_counter_add(&sh.ctr.failed, count)
            if self.on_error_fn is not None:
                self.on_error_fn(<object>what, exc)
            else:
                _log.error("shardflow handler failed on %r", <object>what, exc_info=exc)
        except BaseException:
            try:
                _log.exception("shardflow on_error callback failed")
            except BaseException:
                pass

    cdef void _loop_failed(self, object exc) noexcept:
        """An exception escaped the bytecode item loop between two items (no handler call
        was in progress): nothing to count, but a ``KeyboardInterrupt``/``SystemExit`` is
        re-raised by join() as one from a handler is, and anything else is logged."""
        try:
            if not isinstance(exc, Exception):
                with self._lock:
                    if self._fatal is None:
                        self._fatal = exc
            else:
                _log.error("shardflow worker loop failed between two items", exc_info=exc)
        except BaseException:
            pass

    cdef Py_ssize_t _route_outcome(self, sf_shard *sh, list batch, BatchOutcome outcome,
                                   Py_ssize_t n) noexcept:
        """Route the failed items of a batch (``outcome.failures``) one by one, each with
        its own exception; returns how many items that accounts for. An outcome that does
        not fit the batch (an index out of range or repeated, a non-exception) is a
        backend bug: the whole batch is then reported as failed with a RuntimeError saying
        so, never half-counted."""
        cdef Py_ssize_t index
        try:
            checked = []
            seen = set()
            for entry in outcome.failures:
                index, exc = entry
                if not (0 <= index < n) or index in seen or not isinstance(exc, BaseException):
                    raise ValueError(f"bad failure entry {entry!r} for a batch of {n}")
                seen.add(index)
                checked.append((index, exc))
        except BaseException as bad:
            self._route_failure(sh, <PyObject *>batch, n, RuntimeError(
                f"shardflow backend returned a BatchOutcome that does not fit its batch: {bad}"))
            return n
        for index, exc in checked:
            self._route_failure(sh, <PyObject *>batch[index], 1, exc)
        return len(checked)

    def _settle(self, Py_ssize_t index, list batch, object outcome, int64_t service_ns):
        """Count a batch of shard ``index`` whose wrapped handler returned ``DEFERRED``:
        ``outcome`` is None (every item succeeded), a ``BatchOutcome`` (per-item failures,
        routed one by one) or the exception that failed the batch as a whole; the batch's
        service time (``service_ns``, recorded when >= 0) too.

        Called by the runner exactly once per deferred batch, never concurrently for one
        shard (from one thread, or from several serialized by a lock: the counters it adds
        to take one writer at a time), before the runner's ``join()`` returns."""
        if not (0 <= index < self.workers):
            raise IndexError(f"shard index {index} out of range(0, {self.workers})")
        cdef sf_shard *sh = &self.shards[index]
        cdef Py_ssize_t n = len(batch)
        cdef Py_ssize_t k
        if service_ns >= 0:
            sf_hist_record(&sh.service, <uint64_t>service_ns)
        if outcome is None:
            sf_counter_add(&sh.ctr.processed, n)
        elif type(outcome) is BatchOutcome:
            k = self._route_outcome(sh, batch, <BatchOutcome>outcome, n)
            sf_counter_add(&sh.ctr.processed, n - k)
        elif isinstance(outcome, BaseException):
            self._route_failure(sh, <PyObject *>batch, n, outcome)
        else:
            self._route_failure(sh, <PyObject *>batch, n, RuntimeError(
                f"shardflow backend settled a batch with {outcome!r}; expected None, a "
                "BatchOutcome or an exception"))

    cdef int _hand_back(self, sf_shard *sh, void **buf, Py_ssize_t n) except -1:
        """Give n unstarted items back to shutdown(cancel=True). Consumes the references."""
        cdef Py_ssize_t i
        if n <= 0:
            return 0
        with self._lock:
            for i in range(n):
                self._returned.append(<object>buf[i])
                Py_DECREF_p(<PyObject *>buf[i])
        sf_fetch_add_relaxed_u64(&sh.ctr.returned, n)
        return 0

    # ------------------------------------------------------------------ lifecycle

    def _set_direct(self, fn):
        """Let a backend ship single items from the submitting thread (``None``: never).

        Why: with an idle shard, the ring path costs a thread wake-up (the shard's loop
        sleeps) before the item even leaves; a backend whose hand-over is cheap and
        non-blocking (the process backend: one record into the worker's task ring) can
        take it at once. ``submit`` then calls ``fn(shard, item, tail)`` when the
        shard's ring is empty and open, after routing: ``tail`` is the ring's tail index
        for a keyed pool (the backend ships only if every item pushed before it was
        handed to the backend already, so the item overtakes none of its key) or
        ``2**64 - 1`` for an unkeyed one (no order is promised without a key, and an
        unkeyed pool steals, which would skew a per-shard count); ``_count_direct(shard)``
        must be called once the
        item is shipped and before its outcome can be settled. ``fn`` returns True when it took
        the item (it then settles it like a ``DEFERRED`` batch of one), anything else to
        leave it to the ring path. It must not block, and must not take it once the pool
        is closing (its own lock decides the race with ``join``)."""
        self._direct = fn

    def _count_direct(self, Py_ssize_t s):
        """Count one item shipped by ``_set_direct``'s backend as submitted (and as a
        batch). A rare-path counter (fetch_add): several threads may ship directly."""
        if not (0 <= s < self.workers):
            raise IndexError(f"shard index {s} out of range(0, {self.workers})")
        sf_fetch_add_relaxed_u64(&self.shards[s].ctr.direct, 1)

    def _gate_steal(self, Py_ssize_t s, bint closed):
        """Close (True) or open (False) shard ``s``'s steal gate: while it is closed, the
        shard's loop does not steal (a runner that ships batches elsewhere closes it while
        its window is busy: stolen items would wait there while the victim's worker runs
        dry; ``_sched.h``, "Gated thieves"). Opening it wakes the loop to steal. No effect
        in a pool that does not steal."""
        if not (0 <= s < self.workers):
            raise IndexError(f"shard index {s} out of range(0, {self.workers})")
        sf_sched_gate(&self.shards[s], closed)

    def _check_fork(self):
        if sf_load_relaxed_int(&self.st.forked):
            self._raise_closed()

    def _close(self):
        """Refuse new items; workers drain what is queued, then exit."""
        cdef Py_ssize_t i
        for i in range(self.workers):
            sf_ring_close(&self.shards[i].ring)
            sf_shard_wake_all(&self.shards[i])

    def _stop(self, bint hand_back):
        """Tell workers to stop taking items (see SF_STOP_*) and wake them."""
        sf_store_seqcst_int(&self.st.stop, SF_STOP_HAND_BACK if hand_back else SF_STOP_FINISH_TAKEN)
        self._close()

    def _mark_forked(self):
        """Called in a forked child: every later use raises instead of deadlocking."""
        cdef Py_ssize_t i
        sf_store_seqcst_int(&self.st.forked, 1)
        for i in range(self.workers):
            sf_ring_close(&self.shards[i].ring)

    def _wait_workers(self, timeout=None):
        """Wait (GIL released, Ctrl-C honoured) until every worker exited. Returns bool."""
        cdef int64_t deadline
        if timeout is not None:
            _check_timeout(timeout)
        deadline = _deadline(timeout)
        cdef int done = 0
        while True:
            with nogil:
                done = sf_pool_wait_idle(self.st, _slice_deadline(deadline))
            if done:
                return True
            PyErr_CheckSignals()
            if deadline >= 0 and sf_now_ns() >= deadline:
                return False

    def _flush(self, timeout=None):
        """Ask every worker to hand over its partial batch now; wait (GIL released, Ctrl-C
        honoured) until each did, after draining what was queued. Returns bool."""
        cdef int64_t deadline
        cdef uint64_t seq
        cdef int done = 0
        if timeout is not None:
            _check_timeout(timeout)
        deadline = _deadline(timeout)
        seq = sf_sched_request_flush(self.st, self.shards, <uint64_t>self.workers)
        try:
            while True:
                with nogil:
                    done = sf_sched_wait_flushed(self.st, self.shards, <uint64_t>self.workers,
                                                 seq, _slice_deadline(deadline))
                if done:
                    return True
                PyErr_CheckSignals()
                if deadline >= 0 and sf_now_ns() >= deadline:
                    return False
        finally:
            sf_sched_flush_done(self.st)

    cdef int _drain_shard(self, Py_ssize_t index, list out) except -1:
        """Append every item queued in shard ``index`` to ``out``, oldest first, taking
        them out of its ring (counted as returned)."""
        cdef uint64_t n = 0, k, j
        cdef void *buf[256]
        with nogil:
            sf_ring_wait_published(&self.shards[index].ring)
        while True:
            k = sf_ring_pop(&self.shards[index].ring, buf, 256)
            if k == 0:
                break
            for j in range(k):
                out.append(<object>buf[j])
                Py_DECREF_p(<PyObject *>buf[j])
            n += k
        if n:
            sf_fetch_add_relaxed_u64(&self.shards[index].ctr.returned, n)
        return 0

    def _take_leftovers(self):
        """After stop: every item still queued, plus what workers handed back, in a list."""
        cdef Py_ssize_t i
        out = []
        for i in range(self.workers):
            self._drain_shard(i, out)
        with self._lock:
            out.extend(self._returned)
            self._returned.clear()
        return out

    def _take_queued(self, Py_ssize_t index):
        """Every item queued in shard ``index`` now, oldest first, taken out of its ring
        (counted as returned). Safe while the pool runs (the ring has multiple consumers):
        ``Executor.shutdown(cancel_futures=True)`` takes calls back this way."""
        if index < 0 or index >= self.workers:
            raise IndexError(f"no shard {index}")
        out = []
        self._drain_shard(index, out)
        return out

    def _take_fatal(self):
        with self._lock:
            exc, self._fatal = self._fatal, None
        return exc

    def _shard_stats(self):
        """One tuple per shard: (submitted, processed, failed, dropped, returned, depth,
        high_water, batches, stolen_in, stolen_out, dead_lettered)."""
        cdef Py_ssize_t i
        cdef sf_shard *sh
        cdef uint64_t dropped, direct
        out = []
        for i in range(self.workers):
            sh = &self.shards[i]
            dropped = sf_load_relaxed_u64(&sh.ctr.dropped)
            direct = sf_load_relaxed_u64(&sh.ctr.direct)
            out.append((
                sf_ring_tail_index(&sh.ring) + dropped + direct,
                sf_load_relaxed_u64(&sh.ctr.processed),
                sf_load_relaxed_u64(&sh.ctr.failed),
                dropped,
                sf_load_relaxed_u64(&sh.ctr.returned),
                sf_ring_depth(&sh.ring),
                sf_load_relaxed_u64(&sh.ctr.high_water),
                sf_load_relaxed_u64(&sh.ctr.batches) + direct,
                sf_load_relaxed_u64(&sh.ctr.stolen_in),
                sf_load_relaxed_u64(&sh.ctr.stolen_out),
                sf_load_relaxed_u64(&sh.ctr.dead_lettered),
            ))
        return out

    def _shard_latencies(self):
        """The latency histograms, read with relaxed loads: ``(per_shard, merged)``.
        ``per_shard`` holds one ``(queue_wait, service_time)`` pair per shard, ``merged``
        the pair summed over the shards; each histogram is ``(sum_ns, max_ns, packed)``,
        ``packed`` being the non-empty buckets as native uint64 (index, count) pairs in
        index order (``Latency.from_packed``). Copying and merging here, in C, is what
        keeps a snapshot cheap: no Python object per bucket."""
        cdef Py_ssize_t i
        cdef uint64_t sums[2]
        cdef uint64_t maxs[2]
        # [scratch | queue-wait sums | service-time sums]
        cdef uint64_t *acc = <uint64_t *>calloc(3 * SF_HIST_BUCKETS, sizeof(uint64_t))
        if acc == NULL:
            raise MemoryError()
        sums[0] = sums[1] = maxs[0] = maxs[1] = 0
        try:
            per_shard = []
            for i in range(self.workers):
                per_shard.append((
                    _pack_hist(&self.shards[i].qwait, acc, acc + SF_HIST_BUCKETS,
                               &sums[0], &maxs[0]),
                    _pack_hist(&self.shards[i].service, acc, acc + 2 * SF_HIST_BUCKETS,
                               &sums[1], &maxs[1]),
                ))
            merged = ((sums[0], maxs[0], _pack_counts(acc + SF_HIST_BUCKETS)),
                      (sums[1], maxs[1], _pack_counts(acc + 2 * SF_HIST_BUCKETS)))
            return per_shard, merged
        finally:
            free(acc)

    @property
    def live_workers(self):
        return sf_load_acquire_u32(&self.st.live)


cdef object _submit_one(PoolCore self, object item):
    """``submit(item)``: the per-item hot path, called by the C entry of _fastcall.h (and
    by ``submit`` without a timeout)."""
    cdef Py_ssize_t s
    if self.key_fn is None and self._direct is None:
        # The route written out, and the push's common case without calls on its way
        # (sf_submit_try_push1): this function then needs no prologue.
        s = <Py_ssize_t>sf_pool_next_shard(self.st, <uint64_t>self.workers)
        if sf_submit_try_push1(self.st, self.shards, s, <PyObject *>item):
            return True
        return self._submit_at(s, item, None)
    # Calls through the vtable: never inlined here, so their calls and registers stay
    # out of the path above.
    return self._submit_routed(item)


cdef bint _try_direct(PoolCore self, Py_ssize_t s, object item) except -1:
    """The direct ship (see ``PoolCore._set_direct``): offer ``item`` to the backend when
    shard ``s``'s ring is empty and open. Returns True when the backend took it (counted
    here, as submitted and as a batch), False when the ring path must take it."""
    cdef sf_shard *sh = &self.shards[s]
    cdef uint64_t tail
    if sf_ring_depth(&sh.ring) != 0 or sf_ring_is_closed(&sh.ring):
        return False
    # Read before the backend's check: every item pushed before this point must have been
    # shipped for a keyed (ordered) item to overtake nothing; later pushes are concurrent.
    tail = sf_ring_tail_index(&sh.ring) if self.key_fn is not None else <uint64_t>-1
    return self._direct(s, item, tail) is True


sf_install_submit(PoolCore, <sf_one_arg_fn>_submit_one)


@cython.final
cdef class _Worker:
    """One worker's private state: its drain buffer, the partial batch it is filling and a
    spare batch list to recycle."""

    cdef PoolCore core
    cdef sf_shard *shard
    cdef Py_ssize_t index
    cdef void **buf
    cdef Py_ssize_t n           # items in buf[0:n], oldest first, all owned references
    cdef Py_ssize_t cap
    cdef int64_t first_ns       # when the oldest buffered item was drained (timed batches)
    cdef int64_t pop_ns         # when the last drain happened (timed batches)
    cdef uint64_t flush_seen    # the last flush request handled
    cdef object spare           # an empty list kept for the next batch (reuse_batches)
    cdef Py_ssize_t drain_max   # items taken per drain
    cdef Py_ssize_t hold_max    # > 0: at most this many items buffered (drain_one_batch)
    cdef _ItemRun item_run      # the iterator core.item_loop walks (None: items from C)

    def __cinit__(self, PoolCore core, Py_ssize_t index):
        self.core = core
        self.index = index
        self.shard = &core.shards[index]
        self.cap = core.batch_size + DRAIN_CHUNK
        self.buf = <void **>malloc(self.cap * sizeof(void *))
        if self.buf == NULL:
            raise MemoryError()
        self.n = 0
        self.first_ns = -1
        self.pop_ns = -1
        # 0, not the current request: a flush requested before this thread got going must
        # still be acknowledged by it (acknowledging with an empty buffer is harmless).
        self.flush_seen = 0
        self.spare = None
        self.hold_max = core.batch_size if core.drain_one_batch else 0
        if core.drain_one_batch:
            self.drain_max = core.batch_size
        elif core.steal:
            self.drain_max = core.batch_size if core.batch_size > STEAL_DRAIN else STEAL_DRAIN
        else:
            self.drain_max = DRAIN_CHUNK
        self.item_run = _ItemRun(core, index) if core.item_loop is not None else None

    cdef inline Py_ssize_t room(self) noexcept nogil:
        cdef Py_ssize_t r = self.cap - self.n
        if self.hold_max:
            # At most one batch held: what is not shipped stays in the ring (see _core_init).
            r = self.hold_max - self.n
            return r if r > 0 else 0
        return r if r < self.drain_max else self.drain_max

    def __dealloc__(self):
        free(self.buf)

    cdef int run(self) except -1:
        cdef PoolCore core = self.core
        cdef int64_t got, deadline
        cdef bint timed = core.batch_timeout_ns >= 0 and core.batch_size > 1
        cdef int stop
        cdef uint64_t seq
        cdef int hold
        while True:
            deadline = self.first_ns + core.batch_timeout_ns if (timed and self.n > 0) else -1
            hold = 0
            with nogil:
                got = sf_sched_wait(core.st, core.shards, <uint64_t>core.workers,
                                    <uint64_t>self.index, self.buf + self.n,
                                    self.room(), deadline, self.flush_seen, &hold)
                if got > 0:
                    sf_pool_want_gil(core.st)  # see "GIL hand-off" in _pool.h
            if got > 0:
                sf_pool_got_gil(core.st)
                self._took(got, timed)
                if hold:
                    # Stolen during a flush this worker already acknowledged: hand over now.
                    try:
                        self.process(True)
                    finally:
                        sf_sched_release_hold(core.st)
                else:
                    self.process(False)
                continue
            if got == SF_WAIT_FINISHED:
                self.process(True)
                return 0
            if got == SF_WAIT_FLUSH:
                # Requests made while this one is handled are seen on the next wait.
                seq = sf_load_acquire_u64(&core.st.flush_seq)
                self.process(True)
                # process() gives the GIL back after MAX_ITEMS_PER_HOLD items; a flush
                # acknowledges only once the backlog queued before it was handled.
                while (sf_ring_has_items(&self.shard.ring)
                       and sf_load_relaxed_int(&core.st.stop) == SF_STOP_NONE):
                    self._took(sf_sched_pop_own(core.st, core.shards, <uint64_t>self.index,
                                                self.buf + self.n, self.room()), timed)
                    self.process(True)
                self.flush_seen = seq
                sf_sched_flushed(core.st, self.shard, seq)
                continue
            stop = sf_load_acquire_int(&core.st.stop)
            if stop != SF_STOP_NONE:
                if stop == SF_STOP_HAND_BACK:
                    core._hand_back(self.shard, self.buf, self.n)
                    self.n = 0
                else:
                    self.process(True)
                return 0
            self.process(True)  # the partial batch's deadline passed

    cdef inline void _took(self, int64_t got, bint timed) noexcept:
        if timed:
            self.pop_ns = sf_now_ns()
            if self.n == 0:
                self.first_ns = self.pop_ns
        self.n += got

    cdef int process(self, bint flush) except -1:
        """Handle what is buffered, re-draining with the GIL held while items keep coming.
        With ``flush`` (deadline passed, flush request, ring finished) a partial batch goes
        out too."""
        cdef PoolCore core = self.core
        cdef Py_ssize_t bs = core.batch_size
        cdef Py_ssize_t off, got
        cdef Py_ssize_t handled = 0
        cdef bint timed = core.batch_timeout_ns >= 0 and bs > 1
        while True:
            if sf_load_relaxed_int(&core.st.stop) == SF_STOP_HAND_BACK:
                return 0  # run() hands the buffer back
            if not core.lists:
                if self.item_run is not None and self.n >= ITEM_LOOP_MIN:
                    self.item_run.run(self.buf, self.n)
                else:
                    core._run_items(self.shard, self.buf, self.n)
                handled += self.n
                self.n = 0
            elif self.n >= bs:
                off = 0
                while self.n - off >= bs:
                    if sf_load_relaxed_int(&core.st.stop) == SF_STOP_HAND_BACK:
                        break
                    self.run_batch(self.buf + off, bs)
                    off += bs
                self.n -= off
                handled += off
                if self.n:
                    memmove(self.buf, self.buf + off, self.n * sizeof(void *))
                    # Batches are cut from the front and the old remainder was shorter than
                    # a batch, so what remains came from the latest drain.
                    self.first_ns = self.pop_ns
            if handled >= MAX_ITEMS_PER_HOLD or sf_load_relaxed_int(&core.st.stop) != SF_STOP_NONE:
                break
            got = sf_sched_pop_own(core.st, core.shards, <uint64_t>self.index,
                                   self.buf + self.n, self.room())
            if got == 0:
                break
            self._took(got, timed)
        if self.n and (flush or not timed or sf_now_ns() >= self.first_ns + core.batch_timeout_ns):
            if sf_load_relaxed_int(&core.st.stop) != SF_STOP_HAND_BACK:
                self.run_batch(self.buf, self.n)
                self.n = 0
        return 0

    cdef int run_batch(self, void **buf, Py_ssize_t n) except -1:
        """Call the handler with a list of n items. Consumes the references.

        With ``reuse_batches`` the list is recycled: if, once the handler returned, nobody
        but this worker references it, it is emptied (its items released now) and refilled
        for the next batch, saving an allocation and a free per batch. A handler that keeps
        the list (stores it, or an iterator over it) keeps a reference, so it is never
        reused under it."""
        cdef PoolCore core = self.core
        cdef Py_ssize_t i, k
        cdef PyObject *res
        cdef PyObject **slots
        cdef int64_t t0
        batch = self.spare
        self.spare = None
        # One memcpy moves the references into the list (an item-by-item loop cost ~5
        # instructions per item more: buf is this worker's own, the list not yet shared).
        if batch is not None and (<PyListObject *>batch).allocated >= n:
            memcpy((<PyListObject *>batch).ob_item, buf, n * sizeof(void *))
            Py_SET_SIZE(batch, n)
        else:
            batch = PyList_New(n)
            memcpy((<PyListObject *>batch).ob_item, buf, n * sizeof(void *))
        t0 = sf_now_ns()
        res = PyObject_CallOneArg(<PyObject *>core.handler, <PyObject *>batch)
        if res == NULL:
            sf_hist_record_since(&self.shard.service, t0, sf_now_ns())
            core._failed(self.shard, <PyObject *>batch, n)
        elif res == <PyObject *>_deferred:
            # Shipped, outcome to come: the runner counts it with _settle (and times it:
            # the service histogram then has a single writer, the runner's).
            Py_DECREF_p(res)
        elif type(<object>res) is BatchOutcome:
            sf_hist_record_since(&self.shard.service, t0, sf_now_ns())
            # A backend ran the batch elsewhere and some items failed there: those are
            # routed one by one, the others count as processed.
            k = core._route_outcome(self.shard, batch, <BatchOutcome>(<object>res), n)
            Py_DECREF_p(res)
            sf_counter_add(&self.shard.ctr.processed, n - k)
        else:
            sf_hist_record_since(&self.shard.service, t0, sf_now_ns())
            Py_DECREF_p(res)
            sf_counter_add(&self.shard.ctr.processed, n)
        sf_counter_add(&self.shard.ctr.batches, 1)
        if core.reuse_batches and sf_is_uniquely_referenced(batch):
            # Empty it before releasing the items, so that code run by their finalizers
            # sees an empty list; then keep it.
            k = Py_SIZE(batch)
            slots = (<PyListObject *>batch).ob_item
            Py_SET_SIZE(batch, 0)
            for i in range(k):
                Py_DECREF_p(slots[i])
            self.spare = batch
        return 0


@cython.final
cdef class _ItemRun:
    """A worker's iterator over a drained run of items, walked by ``core.item_loop``
    (``shardflow._itemloop.run_items``: one Python call per run instead of one call from
    C per item). It does between handler calls what ``PoolCore._run_items`` does around
    each: it stops at ``shutdown(cancel=True)`` (the rest is handed back), times one call
    in ``SF_SERVICE_SAMPLE_EVERY``, counts each item processed (or its failure, routed by
    ``fail``) and releases it once its call ended, before the next one starts.

    The run's buffer keeps each item's reference until that item's call ended, so that an
    exception escaping the loop itself (not the handler's: the loop catches those) can be
    routed for the item in progress, and what was not yet yielded is run from C: nothing
    is lost or run twice."""

    cdef PoolCore core
    cdef sf_shard *sh
    cdef sf_pool *st
    cdef void **buf     # the run: buf[pos:n] not yet yielded, owned references
    cdef Py_ssize_t pos
    cdef Py_ssize_t n
    cdef bint open      # buf[pos - 1] was yielded and its call has not ended
    cdef int64_t t0     # start of the timed call, -1: this call is not timed

    def __cinit__(self, PoolCore core, Py_ssize_t index):
        self.core = core
        self.sh = &core.shards[index]
        self.st = core.st
        self._reset()

    cdef inline void _reset(self) noexcept:
        self.buf = NULL
        self.pos = self.n = 0
        self.open = False
        self.t0 = -1

    cdef inline void _stop_clock(self) noexcept:
        if self.t0 >= 0:
            sf_hist_record_since(&self.sh.service, self.t0, sf_now_ns())
            self.t0 = -1

    cdef inline void _end_call(self, bint ok) noexcept:
        """The call of buf[pos - 1] ended: count it and release the item."""
        self._stop_clock()
        self.open = False
        if ok:
            sf_counter_add(&self.sh.ctr.processed, 1)
        sf_counter_add(&self.sh.ctr.batches, 1)
        Py_DECREF_p(<PyObject *>self.buf[self.pos - 1])

    def __iter__(self):
        return self

    def __next__(self):
        cdef sf_shard *sh = self.sh
        cdef Py_ssize_t i = self.pos
        if self.open:
            self._end_call(True)
        if i >= self.n or sf_load_relaxed_int(&self.st.stop) == SF_STOP_HAND_BACK:
            raise StopIteration
        self.pos = i + 1
        self.open = True
        # One call in SF_SERVICE_SAMPLE_EVERY is timed, as in PoolCore._run_items.
        if (sh.svc_tick & (SF_SERVICE_SAMPLE_EVERY - 1)) == 0:
            self.t0 = sf_now_ns()
        sh.svc_tick += 1
        return <object>self.buf[i]

    def fail(self, exc):
        """Route ``exc``, raised by the handler for the item in progress, and end its call."""
        if not self.open:
            raise RuntimeError("_ItemRun.fail() without an item in progress")
        self._stop_clock()
        self.core._route_failure(self.sh, <PyObject *>self.buf[self.pos - 1], 1, exc)
        self._end_call(False)

    cdef int run(self, void **buf, Py_ssize_t n) except -1:
        """Hand buf[0:n] to ``core.item_loop``. Consumes the references."""
        cdef PoolCore core = self.core
        cdef Py_ssize_t left
        self.buf = buf
        self.n = n
        self.pos = 0
        self.open = False
        self.t0 = -1
        try:
            core.item_loop(core.handler, self)
        except BaseException as exc:
            # The loop itself failed (a MemoryError, an asynchronous exception between
            # two calls): the item in progress gets the exception, the rest runs below.
            if self.open:
                self._stop_clock()
                core._route_failure(self.sh, <PyObject *>buf[self.pos - 1], 1, exc)
                self._end_call(False)
            else:
                core._loop_failed(exc)
        if self.open:  # the loop returned without taking the next item
            self._end_call(True)
        left = self.n - self.pos
        buf = self.buf + self.pos
        self._reset()
        if left:
            # Stopped by shutdown(cancel=True) (_run_items hands them back), or the loop
            # gave up early.
            core._run_items(self.sh, buf, left)
        return 0


# ---------------------------------------------------------------------- histograms

cdef tuple _read_hist(sf_hist *h):
    """(count, sum_ns, max_ns, ((index, count), ...)) from relaxed loads of h."""
    cdef uint64_t i, c
    buckets = []
    if h.buckets != NULL:
        for i in range(SF_HIST_BUCKETS):
            c = sf_load_relaxed_u64(&h.buckets[i])
            if c:
                buckets.append((i, c))
    return (sf_load_relaxed_u64(&h.count), sf_load_relaxed_u64(&h.sum_ns),
            sf_load_relaxed_u64(&h.max_ns), tuple(buckets))


cdef tuple _pack_hist(sf_hist *h, uint64_t *scratch, uint64_t *acc, uint64_t *sum_acc,
                      uint64_t *max_acc):
    """(sum_ns, max_ns, packed) of h; adds its buckets into acc and its sum/max into
    sum_acc/max_acc. Each bucket is loaded once (into scratch), so the packed pairs and
    the merged sums agree even while the worker records."""
    cdef uint64_t i, c
    cdef uint64_t s = sf_load_relaxed_u64(&h.sum_ns)
    cdef uint64_t m = sf_load_relaxed_u64(&h.max_ns)
    sum_acc[0] += s
    if m > max_acc[0]:
        max_acc[0] = m
    if h.buckets == NULL:
        return (s, m, b"")
    for i in range(SF_HIST_BUCKETS):
        c = sf_load_relaxed_u64(&h.buckets[i])
        scratch[i] = c
        acc[i] += c
    return (s, m, _pack_counts(scratch))


cdef bytes _pack_counts(const uint64_t *counts):
    """The non-zero entries of counts[0:SF_HIST_BUCKETS] as uint64 (index, count) pairs."""
    cdef Py_ssize_t i, k = 0
    cdef uint64_t *out
    for i in range(SF_HIST_BUCKETS):
        if counts[i]:
            k += 1
    packed = PyBytes_FromStringAndSize(NULL, 2 * k * <Py_ssize_t>sizeof(uint64_t))
    out = <uint64_t *>PyBytes_AS_STRING(packed)
    k = 0
    for i in range(SF_HIST_BUCKETS):
        if counts[i]:
            out[2 * k] = i
            out[2 * k + 1] = counts[i]
            k += 1
    return packed


HIST_SUB_BITS = SF_HIST_SUB_BITS
HIST_BUCKETS = SF_HIST_BUCKETS


@cython.final
cdef class _HistogramHook:
    """Test hook: a standalone C histogram (the one shards use), fed from Python."""

    cdef sf_hist h

    def __cinit__(self):
        if sf_hist_init(&self.h) != 0:
            raise MemoryError()

    def __dealloc__(self):
        sf_hist_destroy(&self.h)

    def record(self, values):
        """Record each value (int ns >= 0) of the iterable."""
        cdef uint64_t v
        for x in values:
            v = x
            sf_hist_record(&self.h, v)

    def read(self):
        """(count, sum_ns, max_ns, ((index, count), ...)), as PoolCore._shard_latencies."""
        return _read_hist(&self.h)
