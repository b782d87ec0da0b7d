/* Small shims over CPython API differences between the versions shardflow supports. */
#ifndef SF_PYCOMPAT_H
#define SF_PYCOMPAT_H

#include <Python.h>

/* Take the exception currently set (PyErr_Occurred() must be true) and return it as a new
 * reference with its traceback attached; the error indicator is cleared. */
static inline PyObject *sf_take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) {
        Py_INCREF(Py_None);
        return Py_None;
    }
    return value;
#endif
}

/* Is `o` referenced by the caller alone? (List recycling: a batch list nobody else holds
 * may be refilled.) On free-threaded builds the reference count is split between the
 * owning thread and others; 3.14 has the API for this; on 3.13t we never claim it. */
static inline int sf_is_uniquely_referenced(PyObject *o) {
#if defined(Py_GIL_DISABLED)
#if PY_VERSION_HEX >= 0x030E0000
    return PyUnstable_Object_IsUniquelyReferenced(o);
#else
    (void)o;
    return 0;
#endif
#else
    return Py_REFCNT(o) == 1;
#endif
}

/* May submit_many read `o`'s item array directly? An exact tuple always (immutable); an
 * exact list only where the GIL serializes access to it: on free-threaded builds another
 * thread may resize a list while it is read, so lists take the iterator path there. */
static inline int sf_seq_fast_ok(PyObject *o) {
#if defined(Py_GIL_DISABLED)
    return PyTuple_CheckExact(o);
#else
    return PyList_CheckExact(o) || PyTuple_CheckExact(o);
#endif
}

/* The item array of an exact list or tuple (sf_seq_fast_ok(o) must be true). */
static inline PyObject **sf_seq_items(PyObject *o) {
    return PyList_CheckExact(o) ? ((PyListObject *)o)->ob_item : ((PyTupleObject *)o)->ob_item;
}

/* submit_many's path for an iterator without a key function: take up to n items from the
 * iterator `it` into out[0:n] as new references, in one C loop (no per-item bookkeeping
 * beyond the slot), and say in *got how many. Returns 0 when n were taken (more may
 * follow), 1 when the iterator is exhausted, -1 when it raised: the exception is set and
 * the items taken before it are in out[0:*got], owned by the caller. */
static inline int sf_iter_fill(PyObject *it, void **out, Py_ssize_t n, Py_ssize_t *got) {
    iternextfunc next = Py_TYPE(it)->tp_iternext;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = next(it);
        if (x == NULL) {
            *got = i;
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return -1;
                PyErr_Clear();
            }
            return 1;
        }
        out[i] = (void *)x;
    }
    *got = n;
    return 0;
}

#endif /* SF_PYCOMPAT_H */
