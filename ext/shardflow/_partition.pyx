# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=False
"""The compiled partition kernel of columnar batches: key hash -> shard, stable scatter.

Inputs are anything that exports a buffer (numpy arrays, ``array.array``, ``bytes``,
``memoryview`` ...): the module uses the buffer protocol only, never the numpy C API, so
it builds and imports without numpy. Every per-row loop runs with the GIL released; the
algorithm and the hash are described at the top of ``_partition.h``.

* ``shard_of(keys, nshards)``: the shard of every key, as a ``uint16`` memoryview.
* ``partition(keys, nshards, columns, outs=None, order=False)``: the per-shard offsets
  (``int64``, ``nshards + 1`` entries), optionally the row order (``int64``), and every
  column scattered into one output buffer the size of its input, shard ``s`` owning rows
  ``offsets[s]:offsets[s + 1]``, rows of one shard in source order.

Key columns: 1-D integers of 1, 2, 4 or 8 bytes (signed or unsigned, native byte order),
or fixed-width bytes (numpy ``'S'``, buffer format ``'<n>s'``); they may be strided (a
field of a structured array). Value columns: C-contiguous, any item size (rows are the
first axis; a row is ``itemsize * prod(shape[1:])`` bytes, copied as raw bytes), never
Python objects (format ``'O'``).
"""

from cpython.buffer cimport (
    PyBUF_FORMAT,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
import re
from operator import index as _index
from sys import byteorder as _byteorder


cdef extern from "shardflow/_partition.h" nogil:
    const unsigned int SF_PART_MAX_SHARDS
    enum:
        SF_PART_I8
        SF_PART_I16
        SF_PART_I32
        SF_PART_I64
        SF_PART_U8
        SF_PART_U16
        SF_PART_U32
        SF_PART_U64
        SF_PART_BYTES
    int sf_part_hash(const char *base, Py_ssize_t stride, size_t n, int kind, size_t width,
                     uint32_t nshards, uint16_t *ids)
    uint32_t sf_part_nseg(size_t n, uint32_t nshards)
    void sf_part_hash_count_u64(const char *base, size_t n, uint32_t nshards, uint32_t nseg,
                                uint16_t *ids, uint64_t *counts)
    void sf_part_count(const uint16_t *ids, size_t n, uint32_t nshards, uint32_t nseg,
                       uint64_t *counts)
    void sf_part_offsets(const uint64_t *counts, uint32_t nshards, uint32_t nseg,
                         uint64_t *offsets, uint64_t *starts)
    void sf_part_scatter(const uint16_t *ids, size_t n, uint32_t nshards, uint32_t nseg,
                         const uint64_t *starts, uint64_t *cursor, uint64_t *dest,
                         size_t ncols, const char *const *srcs, char *const *dsts,
                         const size_t *widths, int64_t *order)
    const size_t SF_PART_BLOCK


#: The largest shard count (shard ids are 16-bit).
MAX_SHARDS = SF_PART_MAX_SHARDS

cdef bint _BIG_ENDIAN = _byteorder == "big"
_NAMES = re.compile(rb":[^:]*:")


cdef class _Buf:
    """One acquired buffer, released when this object goes (exception-safe)."""

    cdef Py_buffer view
    cdef bint held
    cdef Py_ssize_t rows    # shape[0]
    cdef Py_ssize_t width   # bytes per row: itemsize * prod(shape[1:])

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False


cdef _Buf _acquire(object obj, str name, bint writable):
    """Acquire ``obj``'s buffer with strides and format; errors name the parameter."""
    cdef _Buf b = _Buf.__new__(_Buf)
    cdef int flags = PyBUF_STRIDES | PyBUF_FORMAT
    cdef Py_ssize_t d, width
    if writable:
        flags |= PyBUF_WRITABLE
    if not PyObject_CheckBuffer(obj):
        raise TypeError(
            f"{name} must support the buffer protocol (a numpy array, array.array, "
            f"bytearray, memoryview ...), got {type(obj).__name__}"
        )
    try:
        PyObject_GetBuffer(obj, &b.view, flags)
    except BufferError as exc:
        what = "a writable, C-contiguous buffer" if writable else "a buffer"
        raise ValueError(f"{name} must be {what}: {exc}") from None
    b.held = True
    if b.view.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension (rows), got a scalar")
    # 'O' is a Python object; field names (between colons, 'T{<d:Open:}') do not count
    if b.view.format != NULL and b"O" in _NAMES.sub(b"", <bytes>b.view.format):
        raise TypeError(
            f"{name} holds Python objects (format {(<bytes>b.view.format).decode()!r}): "
            "only fixed-width numbers, bytes and records of them are accepted"
        )
    b.rows = b.view.shape[0]
    width = b.view.itemsize
    for d in range(1, b.view.ndim):
        width *= b.view.shape[d]
    b.width = width
    return b


cdef int _key_kind(_Buf k) except -1:
    """The SF_PART_* kind of a key column, or a TypeError saying what is accepted."""
    cdef bytes fmt = b"B" if k.view.format == NULL else <bytes>k.view.format
    cdef bytes code = fmt.lstrip(b"@=<>!^")
    cdef Py_ssize_t size = k.view.itemsize
    if fmt[:1] in ((b"<",) if _BIG_ENDIAN else (b">", b"!")):
        raise TypeError(
            f"keys must be in native byte order, got format {fmt.decode()!r}: convert with "
            "keys.astype(keys.dtype.newbyteorder('='))"
        )
    if code.endswith(b"s") or code == b"c":
        return SF_PART_BYTES
    if len(code) == 1 and code in b"bhilqn" and size in (1, 2, 4, 8):
        return {1: SF_PART_I8, 2: SF_PART_I16, 4: SF_PART_I32, 8: SF_PART_I64}[size]
    if len(code) == 1 and code in b"BHILQN" and size in (1, 2, 4, 8):
        return {1: SF_PART_U8, 2: SF_PART_U16, 4: SF_PART_U32, 8: SF_PART_U64}[size]
    raise TypeError(
        f"keys must be integers (int8/16/32/64, uint8/16/32/64) or fixed-width bytes "
        f"(numpy 'S'), got buffer format {fmt.decode()!r} of itemsize {size}"
    )


cdef uint32_t _nshards(object nshards) except 0:
    if isinstance(nshards, bool):
        raise TypeError(f"nshards must be an int, got {nshards!r}")
    try:
        n = _index(nshards)
    except TypeError:
        raise TypeError(
            f"nshards must be an int, got {nshards!r} ({type(nshards).__name__})"
        ) from None
    if n < 1 or n > SF_PART_MAX_SHARDS:
        raise ValueError(f"nshards must be between 1 and {SF_PART_MAX_SHARDS}, got {n!r}")
    return <uint32_t>n


cdef _Buf _keys(object keys):
    cdef _Buf k = _acquire(keys, "keys", False)
    if k.view.ndim != 1:
        raise ValueError(f"keys must be one-dimensional, got {k.view.ndim} dimensions")
    return k


cdef bint _overlap(_Buf a, _Buf b):
    cdef const char *pa = <const char *>a.view.buf
    cdef const char *pb = <const char *>b.view.buf
    if a.view.len == 0 or b.view.len == 0:
        return False
    # a strided key column spans more than len bytes: be generous, any doubt overlaps
    cdef Py_ssize_t la = a.view.len if PyBuffer_IsContiguous(&a.view, b"C") else \
        abs(a.view.strides[0]) * a.view.shape[0] + a.view.itemsize
    cdef Py_ssize_t lb = b.view.len if PyBuffer_IsContiguous(&b.view, b"C") else \
        abs(b.view.strides[0]) * b.view.shape[0] + b.view.itemsize
    if not PyBuffer_IsContiguous(&a.view, b"C") and a.view.strides[0] < 0:
        pa -= la
    if not PyBuffer_IsContiguous(&b.view, b"C") and b.view.strides[0] < 0:
        pb -= lb
    return pa < pb + lb and pb < pa + la


cdef class _Scratch:
    """Per-call C arrays (shard ids, counts, offsets, cursors), freed with this object."""

    cdef uint16_t *ids
    cdef uint64_t *counts
    cdef uint64_t *starts
    cdef uint64_t *cursor
    cdef uint64_t *dest
    cdef const char **srcs
    cdef char **dsts
    cdef size_t *widths

    def __dealloc__(self):
        PyMem_RawFree(self.dest)
        PyMem_RawFree(self.srcs)
        PyMem_RawFree(self.dsts)
        PyMem_RawFree(self.widths)
        PyMem_RawFree(self.ids)
        PyMem_RawFree(self.counts)
        PyMem_RawFree(self.starts)
        PyMem_RawFree(self.cursor)


def shard_of(keys, nshards):
    """The shard of every key: a ``uint16`` memoryview (format ``'H'``) of ``len(keys)``.

    ``keys``: a 1-D integer column (int8..int64, uint8..uint64) or fixed-width bytes
    column (numpy ``'S'``), possibly strided. ``nshards``: 1 to ``MAX_SHARDS``. The shard
    of a key depends on its value and ``nshards`` only (see ``_partition.h``).
    """
    cdef uint32_t ns = _nshards(nshards)
    cdef _Buf k = _keys(keys)
    cdef int kind = _key_kind(k)
    cdef size_t n = <size_t>k.rows
    out = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>(2 * n))
    cdef uint16_t *ids = <uint16_t *>PyByteArray_AS_STRING(out)
    with nogil:
        sf_part_hash(<const char *>k.view.buf, k.view.strides[0], n, kind,
                     <size_t>k.view.itemsize, ns, ids)
    return memoryview(out).cast("H")


def partition(keys, nshards, columns=(), outs=None, order=False):
    """Partition the rows of ``columns`` by the hash of ``keys`` into ``nshards`` runs.

    Args:
        keys: the key column (see ``shard_of``), one key per row.
        nshards: 1 to ``MAX_SHARDS``.
        columns: a sequence of C-contiguous buffers with as many rows (first axis) as
            ``keys``; any fixed item size (records are copied as raw bytes).
        outs: None, or one entry per column: None (a new ``bytearray`` is allocated,
            uninitialised before the scatter) or a writable C-contiguous buffer of exactly
            the column's size in bytes, not overlapping any input.
        order: False, True (allocate the row order) or a writable C-contiguous buffer of
            ``8 * len(keys)`` bytes to write it into.

    Returns:
        ``(offsets, order, outs)``: ``offsets`` an ``int64`` memoryview of ``nshards + 1``
        entries (shard ``s`` owns rows ``offsets[s]:offsets[s + 1]``); ``order`` None or
        the source row of every output row (an ``int64`` memoryview when allocated here,
        else the buffer given); ``outs`` the list of output buffers, in column order.
        Rows of one shard keep their source order (the partition is stable).
    """
    cdef uint32_t ns = _nshards(nshards)
    cdef _Buf k = _keys(keys)
    cdef int kind = _key_kind(k)
    cdef size_t n = <size_t>k.rows
    cdef Py_ssize_t c, i, ncols
    cdef _Buf src, dst, ob = None
    cdef list srcs = [], dsts = [], result = []
    cdef _Scratch sc = _Scratch.__new__(_Scratch)
    cdef uint64_t *offsets
    cdef int64_t *order_p = NULL

    if PyObject_CheckBuffer(columns) or isinstance(columns, str) or not hasattr(
        columns, "__len__"
    ):
        raise TypeError(
            "columns must be a sequence (list or tuple) of buffers, got "
            f"{type(columns).__name__} (wrap a single column in a list)"
        )
    columns = list(columns)
    ncols = len(columns)
    if outs is None:
        outs = [None] * ncols
    else:
        if PyObject_CheckBuffer(outs) or isinstance(outs, str) or not hasattr(outs, "__len__"):
            raise TypeError(
                f"outs must be None or a sequence of buffers, got {type(outs).__name__}"
            )
        outs = list(outs)
        if len(outs) != ncols:
            raise ValueError(
                f"outs must have one entry per column ({ncols}), got {len(outs)}"
            )
    for c in range(ncols):
        name = f"columns[{c}]"
        src = _acquire(columns[c], name, False)
        if <size_t>src.rows != n:
            raise ValueError(
                f"{name} has {src.rows} rows but keys has {n}: every column must have "
                "as many rows (first axis) as keys"
            )
        if not PyBuffer_IsContiguous(&src.view, b"C"):
            raise ValueError(
                f"{name} is not C-contiguous: pass a contiguous copy "
                "(numpy.ascontiguousarray)"
            )
        srcs.append(src)
    for c in range(ncols):
        src = <_Buf>srcs[c]
        o = outs[c]
        name = f"outs[{c}]"
        if o is None:
            o = PyByteArray_FromStringAndSize(NULL, src.view.len)
        dst = _acquire(o, name, True)
        if dst.view.len != src.view.len or not PyBuffer_IsContiguous(&dst.view, b"C"):
            raise ValueError(
                f"{name} must be a writable C-contiguous buffer of {src.view.len} bytes "
                f"(the size of columns[{c}]), got {dst.view.len} bytes"
                + ("" if PyBuffer_IsContiguous(&dst.view, b"C") else ", not contiguous")
            )
        _check_disjoint(dst, name, k, srcs)
        for i in range(len(dsts)):
            if _overlap(dst, <_Buf>dsts[i]):
                raise ValueError(f"{name} overlaps outs[{i}]: every output needs its own memory")
        dsts.append(dst)
        result.append(o)
    order_obj = None
    if order is True:
        order_obj = memoryview(PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>(8 * n)))
        order_obj = order_obj.cast("q")
    elif order is not False and order is not None:
        order_obj = order
    if order_obj is not None:
        ob = _acquire(order_obj, "order", True)
        if <size_t>ob.view.len != 8 * n or not PyBuffer_IsContiguous(&ob.view, b"C"):
            raise ValueError(
                f"order must be True, False or a writable C-contiguous buffer of "
                f"{8 * n} bytes (int64 per row), got {ob.view.len} bytes"
            )
        _check_disjoint(ob, "order", k, srcs)
        for i in range(len(dsts)):
            if _overlap(ob, <_Buf>dsts[i]):
                raise ValueError(f"order overlaps outs[{i}]: every output needs its own memory")
        order_p = <int64_t *>ob.view.buf

    offsets_ba = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>(8 * (ns + 1)))
    offsets = <uint64_t *>PyByteArray_AS_STRING(offsets_ba)
    offsets_obj = memoryview(offsets_ba).cast("q")
    cdef uint32_t nseg = sf_part_nseg(n, ns)
    cdef size_t table = <size_t>nseg * ns * 8
    sc.ids = <uint16_t *>PyMem_RawMalloc(2 * n + 2)
    sc.counts = <uint64_t *>PyMem_RawMalloc(table)
    sc.starts = <uint64_t *>PyMem_RawMalloc(table)
    sc.cursor = <uint64_t *>PyMem_RawMalloc(table)
    sc.dest = <uint64_t *>PyMem_RawMalloc(nseg * SF_PART_BLOCK * 8)
    sc.srcs = <const char **>PyMem_RawMalloc(ncols * sizeof(char *) + 1)
    sc.dsts = <char **>PyMem_RawMalloc(ncols * sizeof(char *) + 1)
    sc.widths = <size_t *>PyMem_RawMalloc(ncols * sizeof(size_t) + 1)
    if (sc.ids == NULL or sc.counts == NULL or sc.starts == NULL or sc.cursor == NULL
            or sc.dest == NULL or sc.srcs == NULL or sc.dsts == NULL or sc.widths == NULL):
        raise MemoryError(f"cannot allocate the shard ids of {n} rows")
    for c in range(ncols):
        sc.srcs[c] = <const char *>(<_Buf>srcs[c]).view.buf
        sc.dsts[c] = <char *>(<_Buf>dsts[c]).view.buf
        sc.widths[c] = <size_t>(<_Buf>srcs[c]).width
    cdef const char *kbase = <const char *>k.view.buf
    cdef Py_ssize_t kstride = k.view.strides[0]
    cdef size_t kwidth = <size_t>k.view.itemsize
    with nogil:
        memset(sc.counts, 0, table)
        if (kind == SF_PART_I64 or kind == SF_PART_U64) and kstride == 8:
            sf_part_hash_count_u64(kbase, n, ns, nseg, sc.ids, sc.counts)
        else:
            sf_part_hash(kbase, kstride, n, kind, kwidth, ns, sc.ids)
            sf_part_count(sc.ids, n, ns, nseg, sc.counts)
        sf_part_offsets(sc.counts, ns, nseg, offsets, sc.starts)
        if ncols > 0 or order_p != NULL:
            sf_part_scatter(sc.ids, n, ns, nseg, sc.starts, sc.cursor, sc.dest,
                            <size_t>ncols, sc.srcs, sc.dsts, sc.widths, order_p)
    return offsets_obj, order_obj, result


cdef int _check_disjoint(_Buf dst, str name, _Buf k, list srcs) except -1:
    cdef _Buf s
    cdef Py_ssize_t i
    if _overlap(dst, k):
        raise ValueError(f"{name} overlaps keys: outputs must not share memory with inputs")
    for i in range(len(srcs)):
        s = <_Buf>srcs[i]
        if _overlap(dst, s):
            raise ValueError(
                f"{name} overlaps columns[{i}]: outputs must not share memory with inputs"
            )
    return 0
