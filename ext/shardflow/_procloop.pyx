# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True
"""The per-item loop of a process-backend worker (``shardflow.backends._process_worker``).

A worker process runs each batch's items one by one and, before each call, writes the
item's index to the shard's shared progress word (an int64 in shared memory the parent
reads after a crash: the items before it ran, it is the suspect, those after it never
started). In Python that loop (``enumerate``, a memoryview store, ``try``) cost about
twice the handler call itself for a no-op handler (80 vs 36 us per 1,000 items on the
2-core VM); here it is the call plus one relaxed store.

The store is relaxed: the parent reads the word only after the worker process ended
(its sentinel fired and it was joined), and the end of a process orders every store it
made before the parent's read; while the worker lives, the parent reads it only as a
hint (``task_timeout``: has a new item started?), where a stale value just delays the
deadline by one poll.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport uint64_t

from shardflow._atomic cimport sf_atomic_u64, sf_store_relaxed_u64


def run_items(object handler, list items, object progress, object on_error, list values=None):
    """Call ``handler(item)`` for each item of ``items``, in order, writing the item's index
    to ``progress`` (a writable buffer of at least 8 bytes, an int64 in shared memory)
    before each call (the caller marks the end of the batch itself).

    An exception raised by the handler is passed to ``on_error(index, exc)`` at once (the
    worker reports it before running the next item, so that a crash later in the batch
    cannot lose it), and the loop goes on. With ``values`` (a list), each call's return
    value is appended to it (None for an item that raised), one per item.

    Returns the number of items that raised."""
    cdef Py_buffer view
    cdef sf_atomic_u64 *word
    cdef Py_ssize_t i
    cdef Py_ssize_t failed = 0
    cdef object item, result
    PyObject_GetBuffer(progress, &view, PyBUF_WRITABLE)
    try:
        if view.len < 8 or (<size_t>view.buf & 7) != 0:
            raise ValueError(
                "progress must be a writable, 8-byte aligned buffer of at least 8 bytes")
        word = <sf_atomic_u64 *>view.buf
        i = 0
        # The list may change size under a handler that mutates it: re-read the size.
        while i < PyList_GET_SIZE(items):
            item = <object>PyList_GET_ITEM(items, i)
            sf_store_relaxed_u64(word, <uint64_t>i)
            try:
                result = handler(item)
            except BaseException as exc:
                failed += 1
                on_error(i, exc)
                result = None
            if values is not None:
                values.append(result)
            i += 1
    finally:
        PyBuffer_Release(&view)
    return failed
