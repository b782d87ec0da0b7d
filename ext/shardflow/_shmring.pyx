# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True
"""A shared-memory ring between two processes (``ShmRing``), over ``_shmring.h``.

One ``ShmRing`` is a single-producer, single-consumer ring of variable-length records
(bytes, or pickled objects) in memory shared by two processes: the transport the process
backend uses per shard (a task ring parent -> worker, a result ring worker -> parent).

* Backing memory cannot leak: ``memfd_create`` on Linux (no name anywhere; gone with the
  last fd and mapping), ``shm_open`` + immediate ``shm_unlink`` elsewhere. Nothing is ever
  left in ``/dev/shm``, even when a process is SIGKILLed.
* A child maps the ring from the fd: it is inherited by ``fork``, and pickling a
  ``ShmRing`` (as a ``multiprocessing.Process`` argument, under ``spawn`` or
  ``forkserver``) passes the fd with ``multiprocessing.reduction.DupFd``. ``attach(fd)``
  maps a ring from an fd number passed by other means (``subprocess`` ``pass_fds``).
* ``put_pickled`` pickles with ``pickle.dumps(obj, protocol=5)`` and copies the bytes
  once into the ring. Pickling straight into the ring through a file object was measured
  slower (benchmarks/shmring_rtt.py --pickle-paths: the stdlib pickler buffers its output
  itself and calls ``write`` per frame, so it copies anyway, and its per-call set-up costs
  more than ``dumps``). ``get`` unpickles straight from the mapping (a read-only
  ``memoryview`` over the record, released before the record is).
* Waits spin briefly (adaptively: up to ``spin_us``, less after spins that found nothing,
  see ``_shmring.h``), then park on a shared futex word with the GIL released, in slices
  (``check_interval``): between slices the peer's sentinel (``watch``) and pending signals
  are checked, so a dead peer is reported as ``PeerDead`` and Ctrl-C is never stuck.
* One producer thread and one consumer thread at a time (per ring, across both
  processes); a second concurrent ``put`` (or ``get``) in one process raises RuntimeError.
"""

import os
import pickle

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from shardflow._atomic cimport sf_atomic_u32, sf_load_relaxed_u64
from shardflow._park cimport sf_now_ns
from shardflow._shmring cimport (
    SF_SHM_CLOSED,
    SF_SHM_CORRUPT,
    SF_SHM_DATA_OFFSET,
    SF_SHM_EMPTY,
    SF_SHM_FULL,
    SF_SHM_HDR,
    SF_SHM_MAX_CAPACITY,
    SF_SHM_MIN_CAPACITY,
    SF_SHM_OK,
    SF_SHM_READER_CLOSED,
    SF_SHM_RECORD_SIZE,
    SF_SHM_TAG_PAD,
    SF_SHM_TIMEOUT,
    SF_SHM_TOO_BIG,
    SF_SHM_WRITER_CLOSED,
    sf_exchange_acqrel_u32,
    sf_shm_create,
    sf_shm_map,
    sf_shm_sentinel_fired,
    sf_shm_size,
    sf_shm_unmap,
    sf_shmring,
    sf_shmring_close,
    sf_shmring_closed_flags,
    sf_shmring_commit,
    sf_shmring_commit_quiet,
    sf_shmring_format,
    sf_shmring_map_size,
    sf_shmring_open,
    sf_shmring_peek,
    sf_shmring_release,
    sf_shmring_reader_parked,
    sf_shmring_reserve,
    sf_shmring_try_peek,
    sf_shmring_try_reserve,
    sf_shmring_used,
    sf_store_release_u32,
)


cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ


cdef extern from "errno.h":
    int errno


cdef inline int _errno() noexcept:
    return errno


class RingError(Exception):
    """Base class of the errors of a shared-memory ring."""


class RingClosed(RingError):
    """The other side closed the ring (the writer after its last record, or the reader)."""


class PeerDead(RingClosed):
    """The process on the other side ended while this side waited (its sentinel fired)."""


class RingTimeout(RingError, TimeoutError):
    """A put or get did not complete within its timeout."""


class RecordTooLarge(RingError, ValueError):
    """A record can never fit in this ring: split it, or send it another way."""


cdef object _dumps = pickle.dumps
cdef object _loads = pickle.loads

DEFAULT_SPIN_US = 20
"""Default longest busy-poll before parking, in microseconds (adaptive below that)."""
DEFAULT_CHECK_INTERVAL = 0.05
"""Default park slice, in seconds: how often a long wait checks the peer and signals."""

cdef int64_t _NO_DEADLINE = -1
cdef uint64_t _NOGIL_COPY = 65536  # copies at least this large release the GIL


cdef int64_t _deadline(object timeout, str what) except -2:
    """-1 for no timeout, else the monotonic deadline in ns."""
    cdef double t
    if timeout is None:
        return _NO_DEADLINE
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"{what}: timeout must be None or a number of seconds >= 0, "
            f"got {type(timeout).__name__}")
    t = timeout
    if not (t >= 0):  # also NaN
        raise ValueError(
            f"{what}: timeout must be None or a number of seconds >= 0, got {timeout!r}")
    if t > 1e9:
        return _NO_DEADLINE
    return sf_now_ns() + <int64_t>(t * 1e9)


cdef uint32_t _check_tag(object tag) except? 0xffffffff:
    if isinstance(tag, bool) or not isinstance(tag, int):
        raise TypeError(
            f"tag must be an int in [0, {SF_SHM_TAG_PAD - 1}], got {type(tag).__name__}")
    if tag < 0 or tag >= SF_SHM_TAG_PAD:
        raise ValueError(f"tag must be an int in [0, {SF_SHM_TAG_PAD - 1}], got {tag!r}")
    return <uint32_t>tag


def _rebuild(dupfd, spin_us, check_interval):
    """Unpickle a ShmRing in another process: map it from the fd multiprocessing passed."""
    fd = dupfd.detach()
    try:
        return ShmRing.attach(fd, spin_us=spin_us, check_interval=check_interval)
    finally:
        os.close(fd)


cdef class ShmRing:
    """An SPSC ring of records in shared memory; see the module docstring.

    Build with ``ShmRing.create(size)`` (a new ring of ``size`` data bytes, rounded up to a
    power of two, 64 B .. 2 GiB) or ``ShmRing.attach(fd)`` (map an existing one).
    """

    cdef sf_shmring r
    cdef void *base
    cdef uint64_t map_size
    cdef int fd
    cdef int sentinel
    cdef int64_t spin_ns
    cdef int64_t slice_ns
    cdef bint released
    cdef sf_atomic_u32 producing
    cdef sf_atomic_u32 consuming
    cdef readonly uint32_t last_tag  # tag of the record the last get/get_bytes returned
    cdef readonly uint64_t last_len  # payload bytes of that record

    def __cinit__(self):
        self.base = NULL
        self.fd = -1
        self.sentinel = -1
        self.released = True

    def __init__(self):
        raise TypeError("use ShmRing.create(size) or ShmRing.attach(fd)")

    def __dealloc__(self):
        if self.base != NULL:
            sf_shm_unmap(self.base, self.map_size)
            self.base = NULL
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    cdef int _configure(self, object spin_us, object check_interval) except -1:
        if isinstance(spin_us, bool) or not isinstance(spin_us, (int, float)):
            raise TypeError(
                f"spin_us must be a number of microseconds >= 0, got {type(spin_us).__name__}")
        if not (spin_us >= 0) or spin_us > 1e6:
            raise ValueError(f"spin_us must be between 0 and 1000000 microseconds, got {spin_us!r}")
        if isinstance(check_interval, bool) or not isinstance(check_interval, (int, float)):
            raise TypeError(
                "check_interval must be a number of seconds > 0, "
                f"got {type(check_interval).__name__}")
        if not (check_interval > 0) or check_interval > 3600:
            raise ValueError(
                "check_interval must be between 0 (excluded) and 3600 seconds, "
                f"got {check_interval!r}")
        self.spin_ns = <int64_t>(spin_us * 1000)
        self.slice_ns = <int64_t>(check_interval * 1e9)
        if self.slice_ns < 1000:
            self.slice_ns = 1000
        return 0

    cdef int _map(self, int fd, uint64_t size, bint fresh) except -1:
        cdef void *base = sf_shm_map(fd, size)
        if base == NULL:
            raise OSError(f"mmap of the ring ({size} bytes): {os.strerror(_errno())}")
        if fresh:
            sf_shmring_format(base, size - SF_SHM_DATA_OFFSET)
        if sf_shmring_open(&self.r, base, size) != 0:
            sf_shm_unmap(base, size)
            raise ValueError(
                f"fd {fd} does not hold a shardflow shared-memory ring of this version "
                "(bad magic, version or size)")
        self.base = base
        self.map_size = size
        self.released = False
        return 0

    @classmethod
    def create(cls, size, *, spin_us=DEFAULT_SPIN_US, check_interval=DEFAULT_CHECK_INTERVAL):
        """A new ring with ``size`` data bytes (rounded up to a power of two; 64 B .. 2 GiB).

        ``spin_us``: busy-poll before parking (microseconds); ``check_interval``: park slice
        in seconds (how often a long wait checks the watched peer and signals).
        """
        cdef uint64_t cap = SF_SHM_MIN_CAPACITY
        cdef ShmRing self
        cdef int fd
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int (bytes), got {type(size).__name__}")
        if size < 1 or size > SF_SHM_MAX_CAPACITY:
            raise ValueError(
                f"size must be between 1 and {SF_SHM_MAX_CAPACITY} bytes, got {size!r}")
        while cap < <uint64_t>size:
            cap <<= 1
        self = ShmRing.__new__(ShmRing)
        self._configure(spin_us, check_interval)
        fd = sf_shm_create(sf_shmring_map_size(cap))
        if fd < 0:
            raise OSError(
                f"creating shared memory for a ring of {cap} bytes: {os.strerror(_errno())}")
        self.fd = fd
        self._map(fd, sf_shmring_map_size(cap), True)
        return self

    @classmethod
    def attach(cls, fd, *, spin_us=DEFAULT_SPIN_US, check_interval=DEFAULT_CHECK_INTERVAL):
        """Map the ring behind ``fd`` (from ``fileno()`` of the creator, passed to this
        process). The ring keeps its own duplicate of the fd: the caller may close ``fd``."""
        cdef ShmRing self
        cdef int64_t size
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int file descriptor, got {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"fd must be a file descriptor >= 0, got {fd!r}")
        self = ShmRing.__new__(ShmRing)
        self._configure(spin_us, check_interval)
        size = sf_shm_size(fd)
        if size < 0:
            raise OSError(f"fd {fd}: {os.strerror(_errno())}")
        if <uint64_t>size < SF_SHM_DATA_OFFSET + SF_SHM_MIN_CAPACITY:
            raise ValueError(
                f"fd {fd} does not hold a shardflow shared-memory ring (size {size} bytes)")
        self.fd = os.dup(fd)
        self._map(self.fd, <uint64_t>size, False)
        return self

    def __reduce__(self):
        # multiprocessing passes the fd to the child (pass_fds under spawn, the fork server's
        # fd list under forkserver, SCM_RIGHTS otherwise); _rebuild maps it there.
        from multiprocessing import reduction
        self._check_open()
        return (_rebuild, (reduction.DupFd(self.fd), self.spin_ns / 1000, self.slice_ns / 1e9))

    cdef int _check_open(self) except -1:
        if self.released:
            raise ValueError("operation on a closed ShmRing")
        return 0

    # ------------------------------------------------------------ properties

    @property
    def capacity(self):
        """Data bytes in the ring (a power of two)."""
        return self.r.capacity

    @property
    def max_record(self):
        """The largest payload one record can hold (capacity - 8 bytes)."""
        return self.r.capacity - SF_SHM_HDR

    @property
    def closed(self):
        """True once ``close()`` released this process's handle."""
        return self.released

    @property
    def writer_closed(self):
        """True once the writer side closed the ring (``close_writer``/``close_peer``)."""
        self._check_open()
        return (sf_shmring_closed_flags(&self.r) & SF_SHM_WRITER_CLOSED) != 0

    @property
    def reader_closed(self):
        """True once the reader side closed the ring (``close_reader``/``close_peer``)."""
        self._check_open()
        return (sf_shmring_closed_flags(&self.r) & SF_SHM_READER_CLOSED) != 0

    @property
    def check_interval(self):
        """Park slice in seconds: how often a long wait checks the watched peer and
        signals. Settable (this process's handle only; a copy already sent to another
        process keeps the value it had then)."""
        return self.slice_ns / 1e9

    @check_interval.setter
    def check_interval(self, value):
        self._configure(self.spin_ns / 1000, value)

    @property
    def spin_us(self):
        """Busy-poll before parking, in microseconds."""
        return self.spin_ns / 1000

    def fileno(self):
        """The fd of the shared memory (to pass to another process, then ``attach``)."""
        self._check_open()
        return self.fd

    def __len__(self):
        """Bytes published and not yet consumed (record headers and padding included)."""
        self._check_open()
        return sf_shmring_used(&self.r)

    def watch(self, sentinel):
        """Report ``PeerDead`` from waits once ``sentinel`` (an fd that becomes readable when
        the peer ends: ``Process.sentinel``, ``os.pidfd_open(pid)``) fires; None stops.
        The caller keeps the fd open while it is watched."""
        if sentinel is None:
            self.sentinel = -1
            return
        if isinstance(sentinel, bool) or not isinstance(sentinel, int) or sentinel < 0:
            raise TypeError(
                f"sentinel must be None or a file descriptor (int >= 0), got {sentinel!r}")
        self.sentinel = sentinel

    # ------------------------------------------------------------ producer

    cdef int _enter(self, sf_atomic_u32 *flag, str what) except -1:
        self._check_open()
        if sf_exchange_acqrel_u32(flag, 1) != 0:
            raise RuntimeError(
                f"ShmRing.{what} called from two threads at once: a ring has one "
                f"{'producer' if what.startswith('put') else 'consumer'}")
        return 0

    cdef unsigned char *_reserve(self, uint64_t n, object timeout) except NULL:
        cdef unsigned char *out = NULL
        cdef int rc
        cdef int64_t deadline, slice_end, now
        deadline = _deadline(timeout, "put")
        rc = sf_shmring_try_reserve(&self.r, n, &out)
        if rc == SF_SHM_FULL and timeout != 0:
            while True:
                now = sf_now_ns()
                slice_end = now + self.slice_ns
                if deadline != _NO_DEADLINE and deadline < slice_end:
                    slice_end = deadline
                with nogil:
                    rc = sf_shmring_reserve(&self.r, n, &out, self.spin_ns, slice_end)
                if rc != SF_SHM_TIMEOUT:
                    break
                if sf_shm_sentinel_fired(self.sentinel):
                    rc = sf_shmring_try_reserve(&self.r, n, &out)
                    if rc == SF_SHM_FULL:
                        raise PeerDead(
                            f"the reader process ended (sentinel fd {self.sentinel}) while "
                            f"put waited for {SF_SHM_RECORD_SIZE(n)} bytes of room")
                    break
                PyErr_CheckSignals()
                if deadline != _NO_DEADLINE and sf_now_ns() >= deadline:
                    raise RingTimeout(
                        f"put: no room for {SF_SHM_RECORD_SIZE(n)} bytes within {timeout} s "
                        f"({sf_shmring_used(&self.r)} of {self.r.capacity} bytes in use)")
        if rc == SF_SHM_OK:
            return out
        if rc == SF_SHM_FULL:
            raise RingTimeout(
                f"put: the ring is full ({sf_shmring_used(&self.r)} of {self.r.capacity} bytes "
                f"in use) and timeout=0")
        if rc == SF_SHM_CLOSED:
            raise RingClosed("put: the reader closed the ring")
        if rc == SF_SHM_TOO_BIG:
            raise RecordTooLarge(
                f"put: a record of {n} bytes can never fit this ring: its largest record is "
                f"{self.r.capacity - SF_SHM_HDR} bytes (capacity {self.r.capacity}); split it "
                "or create a larger ring")
        raise RingError(f"put: unexpected ring status {rc}")

    cdef int _put_raw(self, const unsigned char *src, uint64_t n, object timeout,
                      uint32_t tag, bint wake) except -1:
        cdef unsigned char *dst = self._reserve(n, timeout)
        if n >= _NOGIL_COPY:
            with nogil:
                memcpy(dst, src, n)
        else:
            memcpy(dst, src, n)
        if wake:
            sf_shmring_commit(&self.r, n, tag)
        else:
            sf_shmring_commit_quiet(&self.r, n, tag)
        return 0

    def put(self, data, timeout=None, *, tag=0, wake=True):
        """Append one record holding the bytes of ``data`` (any contiguous bytes-like).

        Waits up to ``timeout`` seconds for room (None: as long as it takes; 0: not at all).
        Raises RingTimeout, RingClosed (the reader closed), PeerDead (the watched peer
        ended), RecordTooLarge (larger than ``max_record``). ``tag`` (a u32 below
        0xffffffff) travels in the record header: ``last_tag`` on the reading side.
        ``wake=False`` publishes without waking a reader that sleeps: it sees the record
        at its next wake-up (a later ``put`` with ``wake=True``, this writer's wait for
        room, or the end of its park slice); for a writer that will put again soon and
        knows the reader can wait.
        """
        cdef Py_buffer view
        cdef uint32_t t = _check_tag(tag)
        self._enter(&self.producing, "put")
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._put_raw(<const unsigned char *>view.buf, <uint64_t>view.len, timeout, t,
                              wake)
            finally:
                PyBuffer_Release(&view)
        finally:
            sf_store_release_u32(&self.producing, 0)

    def put_pickled(self, obj, timeout=None, *, tag=0, wake=True):
        """Append ``pickle.dumps(obj, protocol=5)`` as one record (see ``put``).

        Returns the size of the pickle in bytes."""
        cdef uint32_t t = _check_tag(tag)
        cdef bytes data
        self._enter(&self.producing, "put_pickled")
        try:
            data = _dumps(obj, 5)
            self._put_raw(<const unsigned char *>PyBytes_AS_STRING(data),
                          <uint64_t>PyBytes_GET_SIZE(data), timeout, t, wake)
            return PyBytes_GET_SIZE(data)
        finally:
            sf_store_release_u32(&self.producing, 0)

    # ------------------------------------------------------------ consumer

    cdef int _peek(self, object timeout, unsigned char **ptr, uint64_t *n, uint32_t *tag) except -1:
        cdef int rc
        cdef int64_t deadline, slice_end
        deadline = _deadline(timeout, "get")
        rc = sf_shmring_try_peek(&self.r, ptr, n, tag)
        if rc == SF_SHM_EMPTY and timeout != 0:
            while True:
                slice_end = sf_now_ns() + self.slice_ns
                if deadline != _NO_DEADLINE and deadline < slice_end:
                    slice_end = deadline
                with nogil:
                    rc = sf_shmring_peek(&self.r, ptr, n, tag, self.spin_ns, slice_end)
                if rc != SF_SHM_TIMEOUT:
                    break
                if sf_shm_sentinel_fired(self.sentinel):
                    # Records the peer published before it ended are complete: deliver them.
                    rc = sf_shmring_try_peek(&self.r, ptr, n, tag)
                    if rc == SF_SHM_EMPTY:
                        raise PeerDead(
                            f"the writer process ended (sentinel fd {self.sentinel}) and the "
                            "ring is empty")
                    break
                PyErr_CheckSignals()
                if deadline != _NO_DEADLINE and sf_now_ns() >= deadline:
                    raise RingTimeout(f"get: no record within {timeout} s")
        if rc == SF_SHM_OK:
            self.last_tag = tag[0]
            self.last_len = n[0]
            return 0
        if rc == SF_SHM_EMPTY:
            raise RingTimeout("get: the ring is empty and timeout=0")
        if rc == SF_SHM_CLOSED:
            raise RingClosed("get: the writer closed the ring and every record was read")
        if rc == SF_SHM_CORRUPT:
            raise RingError("get: corrupt record header in the shared ring (a record that "
                            "does not fit the data area)")
        raise RingError(f"get: unexpected ring status {rc}")

    def get(self, timeout=None):
        """Take the next record and return it unpickled (straight from the shared memory).

        Waits up to ``timeout`` seconds (None: as long as it takes; 0: not at all). Raises
        RingTimeout, RingClosed (the writer closed and everything was read), PeerDead (the
        watched peer ended and the ring is empty). If unpickling raises, the record is
        consumed and the error propagates."""
        cdef unsigned char *ptr = NULL
        cdef uint64_t n = 0
        cdef uint32_t tag = 0
        cdef object view
        self._enter(&self.consuming, "get")
        try:
            self._peek(timeout, &ptr, &n, &tag)
            try:
                view = PyMemoryView_FromMemory(<char *>ptr, <Py_ssize_t>n, PyBUF_READ)
                try:
                    return _loads(view)
                finally:
                    view.release()
            finally:
                sf_shmring_release(&self.r)
        finally:
            sf_store_release_u32(&self.consuming, 0)

    def get_bytes(self, timeout=None):
        """Take the next record and return a copy of its bytes (see ``get``)."""
        cdef unsigned char *ptr = NULL
        cdef uint64_t n = 0
        cdef uint32_t tag = 0
        self._enter(&self.consuming, "get_bytes")
        try:
            self._peek(timeout, &ptr, &n, &tag)
            try:
                return PyBytes_FromStringAndSize(<char *>ptr, <Py_ssize_t>n)
            finally:
                sf_shmring_release(&self.r)
        finally:
            sf_store_release_u32(&self.consuming, 0)

    # ------------------------------------------------------------ either side

    @property
    def reader_parked(self):
        """True while the reader is parked on the ring's futex word (or about to be):
        a snapshot, e.g. to observe that an idle reader stopped polling."""
        self._check_open()
        return sf_shmring_reader_parked(&self.r) != 0

    # ------------------------------------------------------------ closing

    def close_writer(self):
        """The writer is done: the reader drains what was published, then gets RingClosed."""
        self._check_open()
        sf_shmring_close(&self.r, SF_SHM_WRITER_CLOSED)

    def close_reader(self):
        """The reader is gone: every put (waiting or not) raises RingClosed."""
        self._check_open()
        sf_shmring_close(&self.r, SF_SHM_READER_CLOSED)

    def close_peer(self):
        """Close both directions and wake every waiter, in this process and the other:
        use when the peer died or must stop. Published records can still be read."""
        self._check_open()
        sf_shmring_close(&self.r, SF_SHM_WRITER_CLOSED | SF_SHM_READER_CLOSED)

    def close(self):
        """Release this process's handle (its fd now; the mapping once no call is using it).
        The ring itself lives on while the other process maps it."""
        if self.released:
            return
        self.released = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self):
        """Counters of this process's handle (each side counts its own operations)."""
        self._check_open()
        return {
            "capacity": self.r.capacity,
            "used": sf_shmring_used(&self.r),
            "records_put": sf_load_relaxed_u64(&self.r.st.records_put),
            "bytes_put": sf_load_relaxed_u64(&self.r.st.bytes_put),
            "pads": sf_load_relaxed_u64(&self.r.st.pads),
            "full_waits": sf_load_relaxed_u64(&self.r.st.full_waits),
            "producer_parks": sf_load_relaxed_u64(&self.r.st.producer_parks),
            "wakes_sent_to_reader": sf_load_relaxed_u64(&self.r.st.wakes_sent_data),
            "records_got": sf_load_relaxed_u64(&self.r.st.records_got),
            "bytes_got": sf_load_relaxed_u64(&self.r.st.bytes_got),
            "empty_waits": sf_load_relaxed_u64(&self.r.st.empty_waits),
            "consumer_parks": sf_load_relaxed_u64(&self.r.st.consumer_parks),
            "wakes_sent_to_writer": sf_load_relaxed_u64(&self.r.st.wakes_sent_space),
        }

    def __repr__(self):
        if self.released:
            return "<ShmRing closed>"
        return f"<ShmRing capacity={self.r.capacity} used={sf_shmring_used(&self.r)} fd={self.fd}>"
