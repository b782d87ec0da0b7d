# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=False
"""A thin test harness around the C ring (``sf_ring``).

``Ring`` exposes push/pop of Python objects so that the ring can be checked against a
``collections.deque`` model (tests/test_ring.py) and hammered from several threads. The pool
does not use it: the pool calls the C functions directly.
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc

from shardflow._ring cimport (
    SF_RING_MAX_CAPACITY,
    sf_ring,
    sf_ring_close,
    sf_ring_depth,
    sf_ring_destroy,
    sf_ring_init,
    sf_ring_is_closed,
    sf_ring_pop_part,
    sf_ring_push,
    sf_ring_round_capacity,
)


cdef extern from "shardflow/_ring.h" nogil:
    size_t sizeof_sf_ring "sizeof(sf_ring)"


cdef class Ring:
    """Bounded MPMC ring of Python objects (test harness; capacity rounds up to 2**k)."""

    cdef sf_ring *ring
    cdef readonly uint64_t capacity

    def __cinit__(self, capacity):
        cdef uint64_t cap
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if capacity < 1 or capacity > SF_RING_MAX_CAPACITY:
            raise ValueError(
                f"capacity must be between 1 and {SF_RING_MAX_CAPACITY}, got {capacity!r}")
        cap = sf_ring_round_capacity(capacity)
        self.ring = <sf_ring *>malloc(sizeof_sf_ring)
        if self.ring == NULL:
            raise MemoryError()
        if sf_ring_init(self.ring, cap) != 0:
            free(self.ring)
            self.ring = NULL
            raise MemoryError()
        self.capacity = cap

    def __dealloc__(self):
        cdef void *item
        if self.ring != NULL:
            while sf_ring_pop_part(self.ring, &item, 1, 1) == 1:
                Py_DECREF(<object>item)
            sf_ring_destroy(self.ring)
            free(self.ring)

    def push(self, item):
        """Push one item. Returns True, or False when full; raises RuntimeError when closed."""
        cdef void *p = <void *><PyObject *>item
        cdef int64_t r
        Py_INCREF(item)
        r = sf_ring_push(self.ring, &p, 1)
        if r == 1:
            return True
        Py_DECREF(item)
        if r < 0:
            raise RuntimeError("ring is closed")
        return False

    def push_many(self, items):
        """Push a batch with one claim; returns how many fitted (a prefix of ``items``)."""
        cdef list seq = list(items)
        cdef Py_ssize_t n = len(seq), i
        cdef int64_t r
        cdef void **buf
        if n == 0:
            return 0
        buf = <void **>malloc(n * sizeof(void *))
        if buf == NULL:
            raise MemoryError()
        for i in range(n):
            Py_INCREF(seq[i])
            buf[i] = <void *><PyObject *>seq[i]
        r = sf_ring_push(self.ring, buf, n)
        if r < 0:
            r = 0
        for i in range(r, n):
            Py_DECREF(<object>buf[i])
        free(buf)
        if sf_ring_is_closed(self.ring) and r == 0:
            raise RuntimeError("ring is closed")
        return r

    def pop_many(self, Py_ssize_t max_items, Py_ssize_t divisor=1):
        """Pop up to ``max_items`` (at most ceil(len/divisor)) oldest items as a list."""
        cdef void **buf
        cdef uint64_t n, i
        cdef list out = []
        if max_items < 1 or divisor < 1:
            raise ValueError("max_items and divisor must be >= 1")
        buf = <void **>malloc(max_items * sizeof(void *))
        if buf == NULL:
            raise MemoryError()
        with nogil:
            n = sf_ring_pop_part(self.ring, buf, max_items, divisor)
        for i in range(n):
            out.append(<object>buf[i])
            Py_DECREF(<object>buf[i])
        free(buf)
        return out

    def close(self):
        """Refuse further pushes; returns True if this call closed it."""
        return bool(sf_ring_close(self.ring))

    @property
    def closed(self):
        return bool(sf_ring_is_closed(self.ring))

    def __len__(self):
        return sf_ring_depth(self.ring)
