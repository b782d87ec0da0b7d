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

#endif /* SF_PYCOMPAT_H */
