# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=False
"""The compiled core of ``shardflow.CircuitBreaker``: admission and outcome recording.

The state machine itself is C (``_breaker.h``); this module turns it into calls around a
Python callable. In the closed state a call costs one atomic load before and one relaxed
fetch_add after (plus the window's two atomics when a sliding window is configured); the
clock is read only when the configuration needs it (slow-call policy, time window), when
the breaker is not closed, or when a call failed (the breaker may open).

With an injected Python clock, ``now`` is always taken from it (seconds -> ns) and passed
into the C functions, so that tests drive the state machine with a fake clock.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.math cimport llround
from libc.stdlib cimport free, malloc

from shardflow._atomic cimport (
    sf_atomic_u64,
    sf_cas_acqrel_u64,
    sf_cpu_relax,
    sf_fetch_add_acqrel_u64,
    sf_fetch_add_relaxed_u64,
    sf_fetch_sub_relaxed_u64,
    sf_load_acquire_u64,
    sf_load_relaxed_u64,
)
from shardflow._breaker cimport (
    SF_BR_ALLOW,
    SF_BR_CLOSED,
    SF_BR_DISABLED,
    SF_BR_FAIL,
    SF_BR_FORCED_OPEN,
    SF_BR_HALF_OPEN,
    SF_BR_IGNORE,
    SF_BR_OK,
    SF_BR_OPEN,
    SF_BR_REJECT,
    SF_BR_SLOW,
    SF_WIN_COUNT,
    SF_WIN_NONE,
    SF_WIN_TIME,
    sf_br_window_totals,
    sf_breaker,
    sf_breaker_acquire,
    sf_breaker_alloc_window,
    sf_breaker_force,
    sf_breaker_free,
    sf_breaker_record,
    sf_breaker_zero,
)
from shardflow._park cimport sf_now_ns

from cpython.object cimport PyObject, PyTypeObject

from shardflow.errors import CircuitOpen


cdef extern from "Python.h":
    object PyDescr_NewMethod(PyTypeObject *tp, PyMethodDef *meth)
    ctypedef struct PyMethodDef:
        pass
    int PyDict_SetItemString(object d, const char *key, object v) except -1
    void PyType_Modified(PyTypeObject *tp)


# ``call`` is a METH_FASTCALL C function written by hand: a Cython ``def call(self, fn,
# *args, **kwargs)`` would build a tuple and a dict per call (~40% of the overhead);
# this one forwards the caller's argument vector and keyword names to ``fn`` untouched
# (PyObject_Vectorcall), so a closed-state call allocates nothing. Admission and the
# outcome record stay in Cython (the two callbacks below).
cdef extern from *:
    """
    #include "shardflow/_pycompat.h"
    typedef int (*sf_br_enter_fn)(PyObject *self, uint64_t *token, int64_t *start);
    typedef int (*sf_br_exit_fn)(PyObject *self, uint64_t token, int64_t start, PyObject *exc);
    static sf_br_enter_fn sf_br_enter_cb = NULL;
    static sf_br_exit_fn sf_br_exit_cb = NULL;

    /* The inverse of sf_take_exception: set `exc` (a reference it steals) as the current
     * exception, traceback included. */
    static inline void sf_restore_exception(PyObject *exc) {
    #if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(exc);
    #else
        PyObject *type = (PyObject *)Py_TYPE(exc);
        Py_INCREF(type);
        PyErr_Restore(type, exc, PyException_GetTraceback(exc));
    #endif
    }

    static PyObject *sf_breaker_call(PyObject *self, PyObject *const *args, Py_ssize_t nargsf,
                                     PyObject *kwnames) {
        uint64_t token;
        int64_t start;
        PyObject *res;
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
        if (nargs < 1) {
            PyErr_SetString(PyExc_TypeError,
                            "CircuitBreaker.call() missing its first argument: the callable fn");
            return NULL;
        }
        if (sf_br_enter_cb(self, &token, &start) < 0) return NULL;
        res = PyObject_Vectorcall(args[0], args + 1, (size_t)(nargs - 1), kwnames);
        if (res == NULL) {
            PyObject *exc = sf_take_exception();
            if (sf_br_exit_cb(self, token, start, exc) < 0) {
                /* Recording failed (an `exclude` predicate raised): that error wins,
                 * with the call's exception as its context. */
                PyObject *err = sf_take_exception();
                if (err != Py_None && exc != Py_None) PyException_SetContext(err, exc);
                else Py_DECREF(exc);
                sf_restore_exception(err);
                return NULL;
            }
            sf_restore_exception(exc);
            return NULL;
        }
        if (sf_br_exit_cb(self, token, start, NULL) < 0) {
            Py_DECREF(res);
            return NULL;
        }
        return res;
    }

    static PyMethodDef sf_breaker_call_def = {
        "call", (PyCFunction)(void (*)(void))sf_breaker_call, METH_FASTCALL | METH_KEYWORDS,
        "call($self, fn, /, *args, **kwargs)\\n--\\n\\n"
        "Call fn(*args, **kwargs) through the breaker: raise shardflow.CircuitOpen without\\n"
        "calling it when the breaker refuses, else return its result (or re-raise its\\n"
        "exception) after recording the outcome."
    };
    """
    ctypedef int (*sf_br_enter_fn)(PyObject *self, uint64_t *token, int64_t *start) except -1
    ctypedef int (*sf_br_exit_fn)(PyObject *self, uint64_t token, int64_t start,
                                  PyObject *exc) except -1
    sf_br_enter_fn sf_br_enter_cb
    sf_br_exit_fn sf_br_exit_cb
    PyMethodDef sf_breaker_call_def

STATE_CLOSED = SF_BR_CLOSED
STATE_OPEN = SF_BR_OPEN
STATE_HALF_OPEN = SF_BR_HALF_OPEN
STATE_FORCED_OPEN = SF_BR_FORCED_OPEN
STATE_DISABLED = SF_BR_DISABLED
WINDOW_NONE = SF_WIN_NONE
WINDOW_COUNT = SF_WIN_COUNT
WINDOW_TIME = SF_WIN_TIME


cdef void _hammer_loop(sf_breaker *b, Py_ssize_t n, unsigned int fail_every,
                       sf_atomic_u64 *inside, sf_atomic_u64 *most,
                       sf_atomic_u64 *trans) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t w, token = 0, x, m
    cdef int64_t remaining
    cdef int r, t, k, st, flags
    for i in range(n):
        w = sf_load_acquire_u64(&b.state)
        st = <int>(w & 7)
        t = -1
        if st == SF_BR_CLOSED or st == SF_BR_DISABLED:
            token = w
            r = SF_BR_ALLOW
        else:
            r = sf_breaker_acquire(b, sf_now_ns(), &token, &remaining, &t)
        if t >= 0 and (t >> 4) != (t & 15):
            sf_fetch_add_relaxed_u64(trans, 1)
        if r == SF_BR_REJECT:
            continue
        if r == SF_BR_TRIAL:
            x = sf_fetch_add_acqrel_u64(inside, 1) + 1
            m = sf_load_relaxed_u64(most)
            while x > m:
                if sf_cas_acqrel_u64(most, &m, x):
                    break
            for k in range(32):  # no-cython-lint: a counted spin
                sf_cpu_relax()
            sf_fetch_sub_relaxed_u64(inside, 1)
        flags = SF_BR_FAIL if (fail_every and i % fail_every == 0) else SF_BR_OK
        t = sf_breaker_record(b, token, flags, sf_now_ns())
        if t >= 0 and (t >> 4) != (t & 15):
            sf_fetch_add_relaxed_u64(trans, 1)


cdef class BreakerCore:
    """Compiled state and hot paths of ``shardflow.CircuitBreaker`` (use that class)."""

    cdef sf_breaker *b
    cdef object _clock          # None: the C monotonic clock
    cdef tuple _exclude_types   # exceptions that do not count
    cdef object _exclude_pred   # None or predicate(exc) -> bool: True = does not count
    cdef int64_t _slow_ns       # -1: no slow-call policy
    cdef bint _time_window
    cdef bint _ready
    # test-only probes of _hammer (zeroed by the type's allocator)
    cdef sf_atomic_u64 _probe_inside
    cdef sf_atomic_u64 _probe_max
    cdef sf_atomic_u64 _probe_trans
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.b = NULL
        self._ready = False
        self._slow_ns = -1
        self._exclude_types = ()

    def __dealloc__(self):
        if self.b != NULL:
            sf_breaker_free(self.b)
            free(self.b)
            self.b = NULL

    def _core_init(self, clock, tuple exclude_types, exclude_pred, uint64_t max_failures,
                   double failure_rate, double slow_rate, int64_t slow_ns,
                   uint64_t minimum_calls, int win_kind, uint64_t win_size, int64_t width_ns,
                   int64_t reset_ns, unsigned int ho_max, unsigned int success_threshold):
        """Set up the C state. Arguments are validated by the Python layer."""
        if self._ready:
            raise RuntimeError("breaker core initialised twice")
        self.b = <sf_breaker *>malloc(sizeof(sf_breaker))
        if self.b == NULL:
            raise MemoryError()
        sf_breaker_zero(self.b)
        self.b.max_failures = max_failures
        self.b.failure_rate = failure_rate
        self.b.slow_rate = slow_rate
        self.b.minimum_calls = minimum_calls
        self.b.reset_ns = reset_ns
        self.b.ho_max = ho_max
        self.b.success_threshold = success_threshold
        if sf_breaker_alloc_window(self.b, win_kind, win_size, width_ns) != 0:
            raise MemoryError("cannot allocate the breaker's window")
        self._clock = clock
        self._exclude_types = exclude_types
        self._exclude_pred = exclude_pred
        self._slow_ns = slow_ns
        self._time_window = win_kind == SF_WIN_TIME
        self._ready = True

    # ------------------------------------------------------------------ internals

    cdef inline int64_t _now(self) except? -1:
        if self._clock is None:
            return sf_now_ns()
        # Nearest ns: seconds like 50.1 are not exact in binary, and truncating would
        # make a fake clock's step look 1 ns short.
        return <int64_t>llround(<double>self._clock() * 1e9)

    cdef int _fire(self, int trans) except -1:
        cdef int old = trans >> 4, new = trans & 15
        if trans >= 0 and old != new:
            self._on_transition(old, new)
        return 0

    def _on_transition(self, int old, int new):
        """Overridden by CircuitBreaker: notify the listeners."""

    cdef int _enter(self, uint64_t *token) except -1:
        """Admit a call or raise CircuitOpen. Returns SF_BR_ALLOW or SF_BR_TRIAL."""
        cdef uint64_t w = sf_load_acquire_u64(&self.b.state)
        cdef int st = <int>(w & 7)
        cdef int64_t remaining = 0
        cdef int trans = -1, r
        if st == SF_BR_CLOSED or st == SF_BR_DISABLED:
            token[0] = w
            return SF_BR_ALLOW
        r = sf_breaker_acquire(self.b, self._now(), token, &remaining, &trans)
        if trans >= 0:
            self._fire(trans)
        if r == SF_BR_REJECT:
            raise CircuitOpen(
                "circuit breaker is " + ("forced open" if remaining < 0 else
                                         "half-open and all trial calls are taken"
                                         if remaining == 0 else "open"),
                remaining=float("inf") if remaining < 0 else remaining / 1e9,
            )
        return r

    cdef inline int64_t _start(self) except? -1:
        if self._slow_ns >= 0:
            return self._now()
        return 0

    cdef int _ok(self, uint64_t token, int64_t start) except -1:
        cdef int flags = SF_BR_OK
        cdef int64_t now = 0
        cdef int trans
        if self._slow_ns >= 0 or self._time_window:
            now = self._now()
            if self._slow_ns >= 0 and now - start >= self._slow_ns:
                flags = SF_BR_SLOW
        trans = sf_breaker_record(self.b, token, flags, now)
        if trans >= 0:
            self._fire(trans)
        return 0

    cdef int _error(self, uint64_t token, int64_t start, object exc) except -1:
        cdef int flags = SF_BR_FAIL
        cdef int64_t now
        cdef int trans
        if not isinstance(exc, Exception) or isinstance(exc, self._exclude_types) or (
                self._exclude_pred is not None and self._exclude_pred(exc)):
            flags = SF_BR_IGNORE
        now = self._now()
        if flags == SF_BR_FAIL and self._slow_ns >= 0 and now - start >= self._slow_ns:
            flags |= SF_BR_SLOW
        trans = sf_breaker_record(self.b, token, flags, now)
        if trans >= 0:
            self._fire(trans)
        return 0

    # ------------------------------------------------------------------ public core

    def _begin(self):
        """Admit a call (raise CircuitOpen if not); return the opaque (token, start)."""
        cdef uint64_t token
        self._enter(&token)
        return (token, self._start())

    def _finish(self, uint64_t token, int64_t start, exc=None):
        """Record the outcome of a call admitted by ``_begin``; exc None = success."""
        if exc is None:
            self._ok(token, start)
        else:
            self._error(token, start, exc)

    def _force(self, int target):
        cdef int trans = sf_breaker_force(self.b, target, self._now())
        if trans >= 0:
            self._fire(trans)

    def _hammer(self, Py_ssize_t n, unsigned int fail_every=0):
        """Test helper: ``n`` admissions + records in C with the GIL released (real
        monotonic clock, whatever ``clock`` was given; no listeners). Every
        ``fail_every``-th call fails. Returns (most half-open trials ever in flight at
        once, transitions made by all hammering calls so far)."""
        with nogil:
            _hammer_loop(self.b, n, fail_every, &self._probe_inside, &self._probe_max,
                         &self._probe_trans)
        return (sf_load_relaxed_u64(&self._probe_max), sf_load_relaxed_u64(&self._probe_trans))

    @property
    def _generation(self):
        """Transitions made so far (the state word's generation; tests use it)."""
        return sf_load_acquire_u64(&self.b.state) >> 3

    @property
    def _state_code(self):
        return <int>(sf_load_acquire_u64(&self.b.state) & 7)

    def _counters(self):
        """(calls, failures, slow_calls, rejections, consecutive, window_calls,
        window_failures, window_slow)."""
        cdef int64_t wc = 0, wf = 0, ws = 0
        if self.b.win_kind != SF_WIN_NONE:
            sf_br_window_totals(self.b, self._now() if self._time_window else 0, &wc, &wf, &ws)
        return (
            sf_load_relaxed_u64(&self.b.calls),
            sf_load_relaxed_u64(&self.b.failures),
            sf_load_relaxed_u64(&self.b.slow_calls),
            sf_load_relaxed_u64(&self.b.rejections),
            sf_load_relaxed_u64(&self.b.consecutive),
            wc, wf, ws,
        )


cdef int _enter_cb(PyObject *self, uint64_t *token, int64_t *start) except -1:
    cdef BreakerCore b = <BreakerCore>self
    b._enter(token)
    start[0] = b._start()
    return 0


cdef int _exit_cb(PyObject *self, uint64_t token, int64_t start, PyObject *exc) except -1:
    cdef BreakerCore b = <BreakerCore>self
    if exc == NULL:
        b._ok(token, start)
    else:
        b._error(token, start, <object>exc)
    return 0


sf_br_enter_cb = _enter_cb
sf_br_exit_cb = _exit_cb
PyDict_SetItemString(<object>(<PyTypeObject *>BreakerCore).tp_dict, "call",
                     PyDescr_NewMethod(<PyTypeObject *>BreakerCore, &sf_breaker_call_def))
PyType_Modified(<PyTypeObject *>BreakerCore)
