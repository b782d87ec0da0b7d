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
    ctypedef PyObject *(*vectorcallfunc)(PyObject *callable, PyObject *const *args,
                                         size_t nargsf, PyObject *kwnames)
    vectorcallfunc PyVectorcall_Function(object callable)


cdef extern from *:
    """
    /* fn(x) through fn's own vectorcall slot, looked up once per batch by the caller:
     * PyObject_CallOneArg would look it up again and re-check the result on every call
     * (~40 instructions a call, a tenth of a no-op Python call). The slot is called as
     * PyObject_Vectorcall would (a spare slot before the argument, as
     * PY_VECTORCALL_ARGUMENTS_OFFSET allows); a callable without one (vc == NULL) goes
     * through PyObject_CallOneArg. A NULL result without an exception set (a broken C
     * callable) becomes a SystemError, as CPython's own check makes it. */
    static inline PyObject *sf_call_one(vectorcallfunc vc, PyObject *fn, PyObject *x) {
        PyObject *args[2] = {NULL, x};
        PyObject *r;
        if (vc == NULL) return PyObject_CallOneArg(fn, x);
        r = vc(fn, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL && !PyErr_Occurred())
            PyErr_Format(PyExc_SystemError, "%R returned NULL without setting an exception",
                         fn);
        return r;
    }
    """
    object sf_call_one(vectorcallfunc vc, object fn, object x)


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
    cdef vectorcallfunc vc = PyVectorcall_Function(fn)
    while i < PyList_GET_SIZE(items):
        x = <object>PyList_GET_ITEM_p(items, i)  # a new reference, held during the call
        out.append(sf_call_one(vc, fn, x))
        i += 1
