# cython: language_level=3, freethreading_compatible=True, boundscheck=False
# cython: wraparound=False, embedsignature=True, cdivision=True, binding=False
"""The per-item loop of a pipeline stage's handler: apply a function to a batch.

``out.extend(map(fn, iter(items)))`` does the same, but pays a list-iterator step, a
``map`` step and a growing ``extend`` per item on top of the call; with cheap functions
(a no-op is ~40 ns a call) that overhead is a large share of a stage's cost, so the loop
lives here, in C (GUIDE: per-item loops belong in ``ext/``).
"""

from cpython.list cimport PyList_GET_SIZE
from cpython.object cimport PyObject


cdef extern from "Python.h":
    PyObject *PyList_GET_ITEM_p "PyList_GET_ITEM"(object lst, Py_ssize_t i)
    # Straight to vectorcall: Cython's generic call helper first asks whether `fn` is a
    # C function (a PyType_IsSubtype walk per call for Python functions).
    object PyObject_CallOneArg(object fn, object arg)


def map_extend(list out, fn, list items):
    """Append ``fn(items[i])`` to ``out`` for ``i`` from ``len(out)`` to the end of
    ``items``, calling ``fn`` exactly once per item, in order.

    If a call raises, the exception propagates and ``out`` keeps every result appended
    before it: the failing item is ``items[len(out)]``. The caller records it, appends a
    placeholder to ``out`` and calls again to resume after it, so no item is given to
    ``fn`` twice. ``items`` must not be changed by another thread meanwhile (a stage's
    batch list is private to its handler call); its length is re-read every item, and the
    item is held during its call, so even a function that empties ``items`` is safe.

    >>> out = []
    >>> map_extend(out, lambda x: x * 2, [1, 2, 3])
    >>> out
    [2, 4, 6]
    """
    cdef Py_ssize_t i = PyList_GET_SIZE(out)
    cdef object x
    while i < PyList_GET_SIZE(items):
        x = <object>PyList_GET_ITEM_p(items, i)  # a new reference, held during the call
        out.append(PyObject_CallOneArg(fn, x))
        i += 1
