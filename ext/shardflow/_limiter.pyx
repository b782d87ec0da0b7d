# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=False
"""The compiled cores of ``shardflow.Limiter`` (semaphore) and ``shardflow.RateLimiter``.

An uncontended acquire or release is one CAS in C, with no Python-level lock. A blocked
thread waits with the GIL released, in slices of 50 ms between which it runs signal
handlers (Ctrl-C raises ``KeyboardInterrupt`` promptly) and checks its deadline.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.math cimport llround
from libc.stdlib cimport free, malloc

from shardflow._atomic cimport (
    sf_cas_acqrel_u64,
    sf_cpu_relax,
    sf_fetch_add_acqrel_u64,
    sf_fetch_add_relaxed_u64,
    sf_fetch_sub_relaxed_u64,
    sf_load_relaxed_u64,
    sf_store_relaxed_u64,
)
from shardflow._limiter cimport (
    sf_lim_waiter,
    sf_limiter,
    sf_limiter_abandon,
    sf_limiter_destroy,
    sf_limiter_enqueue,
    sf_limiter_init,
    sf_limiter_release,
    sf_limiter_try_acquire,
    sf_limiter_wait_fair,
    sf_limiter_wait_unfair,
    sf_rate,
    sf_rate_available,
    sf_rate_init,
    sf_rate_take,
)
from shardflow._park cimport sf_now_ns, sf_thread_yield


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


cdef enum:
    # Blocking waits wake this often (ns) to run signal handlers (Ctrl-C), check deadlines.
    WAIT_SLICE_NS = 50000000


cdef inline int64_t _slice_deadline(int64_t deadline) noexcept nogil:
    cdef int64_t s = sf_now_ns() + WAIT_SLICE_NS
    if deadline >= 0 and deadline < s:
        return deadline
    return s


cdef int _check_timeout(object timeout) except -1:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be None or a number of seconds >= 0, got {timeout!r} "
            f"({type(timeout).__name__})")
    try:
        ok = float(timeout) >= 0
    except OverflowError:
        ok = timeout > 0
    if not ok:
        raise ValueError(
            f"timeout must be None or a number of seconds >= 0 (inf: no limit), got {timeout!r}")
    return 0


cdef inline int64_t _timeout_ns(object timeout) except -1:
    """A checked timeout in ns, saturated at ~146 years (no int64 overflow); inf and ints
    too large for a float saturate too."""
    cdef double t
    try:
        t = timeout
    except OverflowError:
        return <int64_t>1 << 62
    if t > 4.6e9:
        return <int64_t>1 << 62
    return <int64_t>(t * 1e9)


cdef void _hammer_loop(sf_limiter *l, Py_ssize_t n, bint blocking) noexcept nogil:
    cdef Py_ssize_t i
    cdef unsigned int spins
    cdef uint64_t inside, m
    cdef sf_lim_waiter w
    for i in range(n):  # no-cython-lint: n rounds
        if not sf_limiter_try_acquire(l):
            if blocking:
                if l.fair:
                    if not sf_limiter_enqueue(l, &w):
                        while not sf_limiter_wait_fair(l, &w, -1):
                            pass
                else:
                    while not sf_limiter_wait_unfair(l, -1):
                        pass
            else:
                spins = 0
                while not sf_limiter_try_acquire(l):
                    spins += 1
                    if spins & 63:
                        sf_cpu_relax()
                    else:
                        sf_thread_yield()
        inside = sf_fetch_add_acqrel_u64(&l.probe_inside, 1) + 1
        m = sf_load_relaxed_u64(&l.probe_max)
        while inside > m:
            if sf_cas_acqrel_u64(&l.probe_max, &m, inside):
                break
        sf_fetch_sub_relaxed_u64(&l.probe_inside, 1)
        sf_limiter_release(l)


cdef class LimiterCore:
    """Compiled state and hot paths of ``shardflow.Limiter`` (use that class)."""

    cdef sf_limiter *l
    cdef bint _ready
    cdef bint _forked  # set in a forked child: see _mark_forked
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.l = NULL
        self._ready = False
        self._forked = False

    def __dealloc__(self):
        if self.l != NULL:
            sf_limiter_destroy(self.l)
            free(self.l)
            self.l = NULL

    def _core_init(self, uint64_t limit, bint fair):
        if self._ready:
            raise RuntimeError("limiter core initialised twice")
        self.l = <sf_limiter *>malloc(sizeof(sf_limiter))
        if self.l == NULL:
            raise MemoryError()
        if sf_limiter_init(self.l, limit, fair) != 0:
            free(self.l)
            self.l = NULL
            raise MemoryError("cannot initialise the limiter's mutex/condition variable")
        self._ready = True

    def _mark_forked(self):
        """Called in a forked child (limiter.py's fork hook): the permits held and the
        queue of waiters belong to threads of the parent, which do not exist here (a
        wait could last forever, the queue's mutex may even be held), so every later use
        raises instead."""
        self._forked = True

    cdef int _check_fork(self) except -1:
        if self._forked:
            raise RuntimeError(
                "this Limiter was created in the parent process before fork() and cannot be "
                "used in the child (the permits held by the parent's threads would never "
                "come back); create a new Limiter in the child")
        return 0

    def try_acquire(self):
        """Take a permit if one is free now; never blocks. Returns True on success."""
        if self._forked:
            self._check_fork()
        return sf_limiter_try_acquire(self.l) != 0

    def acquire(self, timeout=None):
        """Take a permit, waiting up to ``timeout`` seconds (None: forever; 0: no wait).

        Returns True when a permit was taken, False on timeout. The wait releases the GIL
        and is interrupted by Ctrl-C (``KeyboardInterrupt``, no permit held).
        """
        cdef int64_t deadline = -1
        if timeout is not None:
            _check_timeout(timeout)  # before the fast path: bad input is refused, always
        if self._forked:
            self._check_fork()
        if sf_limiter_try_acquire(self.l):
            return True
        if timeout is not None:
            if timeout <= 0:
                sf_fetch_add_relaxed_u64(&self.l.timeouts, 1)
                return False
            deadline = sf_now_ns() + _timeout_ns(timeout)
        return self._wait(deadline)

    cdef bint _wait(self, int64_t deadline) except -1:
        cdef sf_lim_waiter w
        cdef int got = 0
        cdef sf_limiter *l = self.l
        sf_fetch_add_relaxed_u64(&l.waiting, 1)
        try:
            if l.fair:
                if sf_limiter_enqueue(l, &w):
                    got = 1
                while not got:
                    with nogil:
                        got = sf_limiter_wait_fair(l, &w, _slice_deadline(deadline))
                    if got:
                        break
                    try:
                        PyErr_CheckSignals()
                    except BaseException:
                        if sf_limiter_abandon(l, &w):
                            sf_limiter_release(l)
                        raise
                    if deadline >= 0 and sf_now_ns() >= deadline:
                        got = sf_limiter_abandon(l, &w)
                        if not got:
                            sf_fetch_add_relaxed_u64(&l.timeouts, 1)
                            return False
            else:
                while not got:
                    with nogil:
                        got = sf_limiter_wait_unfair(l, _slice_deadline(deadline))
                    if got:
                        break
                    PyErr_CheckSignals()
                    if deadline >= 0 and sf_now_ns() >= deadline:
                        got = sf_limiter_try_acquire(l)
                        if not got:
                            sf_fetch_add_relaxed_u64(&l.timeouts, 1)
                            return False
            sf_fetch_add_relaxed_u64(&l.acquired, 1)
            return True
        finally:
            sf_fetch_sub_relaxed_u64(&l.waiting, 1)

    def release(self):
        """Give a permit back. Raises ValueError if no permit is held (over-release)."""
        if self._forked:
            self._check_fork()
        if sf_limiter_release(self.l) != 0:
            raise ValueError(
                "Limiter.release() called more times than acquire(): no permit is held")

    def __enter__(self):
        if self._forked:
            self._check_fork()
        if not sf_limiter_try_acquire(self.l):
            self._wait(-1)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._forked:
            self._check_fork()
        if sf_limiter_release(self.l) != 0:
            raise ValueError(
                "Limiter.release() called more times than acquire(): no permit is held")
        return False

    def _waiting_add(self, int delta):
        """Count an asyncio waiter in or out of ``waiting``."""
        if delta > 0:
            sf_fetch_add_relaxed_u64(&self.l.waiting, 1)
        else:
            sf_fetch_sub_relaxed_u64(&self.l.waiting, 1)

    def _count_timeout(self):
        sf_fetch_add_relaxed_u64(&self.l.timeouts, 1)

    def _count_acquired_after_wait(self):
        sf_fetch_add_relaxed_u64(&self.l.acquired, 1)

    @property
    def concurrency(self):
        """The bound: permits available in total."""
        return self.l.limit

    @property
    def fair(self):
        """True when blocked threads are served in arrival order."""
        return bool(self.l.fair)

    @property
    def in_use(self):
        """Permits held right now (a snapshot)."""
        return sf_load_relaxed_u64(&self.l.count)

    def _counters(self):
        """(in_use, waiting, timeouts, acquired_after_wait)."""
        return (sf_load_relaxed_u64(&self.l.count), sf_load_relaxed_u64(&self.l.waiting),
                sf_load_relaxed_u64(&self.l.timeouts), sf_load_relaxed_u64(&self.l.acquired))

    def _hammer(self, Py_ssize_t n, bint blocking=False):
        """Test helper: acquire and release ``n`` times in C with the GIL released,
        spinning (or, with ``blocking``, parking with no signal checks) when refused.
        Returns the most threads ever seen inside the bound across all hammering calls."""
        with nogil:
            _hammer_loop(self.l, n, blocking)
        return sf_load_relaxed_u64(&self.l.probe_max)

    def _reset_probe(self):
        sf_store_relaxed_u64(&self.l.probe_max, 0)


cdef class RateLimiterCore:
    """Compiled state and hot paths of ``shardflow.RateLimiter`` (use that class)."""

    cdef sf_rate *r
    cdef object _clock
    cdef readonly int64_t burst
    cdef bint _ready
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self.r = NULL
        self._ready = False

    def __dealloc__(self):
        free(self.r)
        self.r = NULL

    def _core_init(self, int64_t cost_ns, int64_t burst, clock):
        if self._ready:
            raise RuntimeError("rate limiter core initialised twice")
        self.r = <sf_rate *>malloc(sizeof(sf_rate))
        if self.r == NULL:
            raise MemoryError()
        sf_rate_init(self.r, cost_ns, burst)
        self.burst = burst
        self._clock = clock
        self._ready = True

    cdef inline int64_t _now(self) except? -1:
        if self._clock is None:
            return sf_now_ns()
        # Nearest ns: seconds like 50.1 are not exact in binary, and truncating would
        # make a fake clock's step look 1 ns short.
        return <int64_t>llround(<double>self._clock() * 1e9)

    cdef int _check_tokens(self, object tokens) except -1:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens must be an int, got {tokens!r} ({type(tokens).__name__})")
        if tokens < 1 or tokens > self.burst:
            raise ValueError(
                f"tokens must be between 1 and burst={self.burst}, got {tokens!r} "
                "(more than burst could never be granted)")
        return 0

    def try_acquire(self, tokens=1):
        """Take ``tokens`` if available now; never waits. Returns True on success."""
        cdef int ok = 0
        self._check_tokens(tokens)
        sf_rate_take(self.r, tokens, self._now(), 0, &ok)
        if not ok:
            sf_fetch_add_relaxed_u64(&self.r.rejected, 1)
        return ok != 0

    def _reserve(self, tokens, timeout):
        """Reserve ``tokens`` due within ``timeout`` seconds (None: any time).

        Returns the seconds to wait before using them, or None (nothing reserved) when they
        would not be due in time."""
        cdef int ok = 0
        cdef int64_t max_wait, wait
        self._check_tokens(tokens)
        if timeout is None:
            max_wait = 1 << 62
        else:
            _check_timeout(timeout)
            max_wait = _timeout_ns(timeout)
        wait = sf_rate_take(self.r, tokens, self._now(), max_wait, &ok)
        if not ok:
            sf_fetch_add_relaxed_u64(&self.r.rejected, 1)
            return None
        return wait / 1e9

    def _counters(self):
        """(acquired_tokens, rejected, available_tokens)."""
        return (sf_load_relaxed_u64(&self.r.acquired), sf_load_relaxed_u64(&self.r.rejected),
                sf_rate_available(self.r, self._now()))
