/* A C entry for PoolCore.submit: `submit(item)` goes straight to the compiled push.
 *
 * Why: per-item submit is one C call per item, ~100 instructions of real work, and the
 * argument parsing Cython generates for `def submit(self, item, timeout=None)` (a table of
 * names, new references to each argument and to the default, a prologue that saves every
 * register) added ~35 more. This entry is installed in the type's dict over the Cython
 * method once, at import (sf_install_submit); the common call, one positional argument
 * and no keywords, calls `one` directly, and every other call (a timeout, keywords, wrong
 * arguments and their TypeError) goes to the Cython method, unchanged. */
#ifndef SF_FASTCALL_H
#define SF_FASTCALL_H

#include <Python.h>
#include <string.h>

#include "shardflow/_sched.h"

typedef PyObject *(*sf_one_arg_fn)(PyObject *self, PyObject *arg);

static sf_one_arg_fn sf_submit_one = NULL; /* submit(item) */
static PyObject *sf_submit_full = NULL;    /* the Cython method: every other call */
static PyObject *sf_submit_doc = NULL;     /* keeps ml_doc's buffer alive */

/* Every call but submit(item): the Cython method, with self prepended. Out of line, so
 * that its stack array does not give the entry below a prologue. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static PyObject *sf_submit_other(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    PyObject *small[8], **stack = small, *res;
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (total + 1 > (Py_ssize_t)(sizeof(small) / sizeof(small[0]))) {
        stack = (PyObject **)PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
        if (stack == NULL) return PyErr_NoMemory();
    }
    stack[0] = self;
    if (total) memcpy(stack + 1, args, (size_t)total * sizeof(PyObject *));
    res = PyObject_Vectorcall(sf_submit_full, stack, (size_t)(nargs + 1), kwnames);
    if (stack != small) PyMem_Free(stack);
    return res;
}

static PyObject *sf_submit_entry(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    if (nargs == 1 && kwnames == NULL) return sf_submit_one(self, args[0]);
    return sf_submit_other(self, args, nargs, kwnames);
}

static PyMethodDef sf_submit_def = {
    "submit", (PyCFunction)(void (*)(void))sf_submit_entry, METH_FASTCALL | METH_KEYWORDS, NULL};

/* Replace type.submit (a Cython method) by sf_submit_entry, with its docstring. Call once,
 * at import, before any instance exists. Returns -1 with an exception set on failure. */
static int sf_install_submit(PyObject *type_obj, sf_one_arg_fn one) {
    PyTypeObject *type = (PyTypeObject *)type_obj;
    PyObject *full, *doc, *descr;
    if (sf_submit_full != NULL) return 0;
    full = PyDict_GetItemString(type->tp_dict, "submit"); /* borrowed */
    if (full == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shardflow: PoolCore has no submit method");
        return -1;
    }
    doc = PyObject_GetAttrString(full, "__doc__");
    if (doc == NULL) return -1;
    if (PyUnicode_Check(doc)) {
        sf_submit_def.ml_doc = PyUnicode_AsUTF8(doc);
        if (sf_submit_def.ml_doc == NULL) {
            Py_DECREF(doc);
            return -1;
        }
    }
    descr = PyDescr_NewMethod(type, &sf_submit_def);
    if (descr == NULL) {
        Py_DECREF(doc);
        return -1;
    }
    Py_INCREF(full); /* the dict's reference goes with the replacement below */
    if (PyDict_SetItemString(type->tp_dict, "submit", descr) < 0) {
        Py_DECREF(full);
        Py_DECREF(descr);
        Py_DECREF(doc);
        return -1;
    }
    Py_DECREF(descr);
    sf_submit_full = full;
    sf_submit_doc = doc;
    sf_submit_one = one;
    PyType_Modified(type);
    return 0;
}

/* The common case of submit(item), for an unkeyed pool with no direct ship: an open ring
 * with room by the cached head, no earlier claim still publishing, no queue-wait stamp due
 * at this index, and an uncontended claim. Returns 1 when the item was pushed (its
 * reference taken, then P2-P4 of sf_sched_after_push: the owner or a thief woken), 0 when
 * nothing was done: the caller then takes the general path (sf_sched_push1, which handles
 * every case).
 *
 * Why a second path: sf_sched_push1 inlined into the caller has calls on its rare branches
 * (the stamp's clock read, the wait for an earlier producer's publish) with the ring and
 * the item live across them, which made the compiler save six registers and set up a
 * frame on every submit. Here every check that could lead to one comes before the claim,
 * and the calls left (the wake-ups) have nothing live after them, so the common path runs
 * without a prologue.
 *
 * Same steps and memory orders as sf_sched_push1: the claim is the same seq_cst CAS of
 * tail, and `t` is the tail index read before it (as sf_sched_push1 reads it for a
 * stealing pool); commit == t, read with acquire before the claim, stays t once the claim
 * of t succeeds (only the claimer of t publishes t), so sf_ring_push1's wait loop would
 * exit at once; then the slot store, the release store of commit, and
 * sf_sched_after_push itself. */
SF_ALWAYS_INLINE int sf_submit_try_push1(sf_pool *p, sf_shard *shards, uint64_t s,
                                         PyObject *item) {
    sf_ring *r = &shards[s].ring;
    uint64_t t = sf_load_relaxed_u64(&r->tail);
    if ((t & SF_RING_CLOSED) || (t & ~r->stamp_high) == 0 ||
        t - sf_load_acquire_u64(&r->head_cache) >= r->capacity ||
        sf_load_acquire_u64(&r->commit) != t || !sf_cas_weak_seqcst_u64(&r->tail, &t, t + 1))
        return 0;
    Py_INCREF(item); /* the ring's reference */
    sf_store_relaxed_ptr(&r->slots[t & r->mask], (void *)item);
    sf_store_release_u64(&r->commit, t + 1);
    (void)sf_sched_after_push(p, shards, s, t, 1);
    return 1;
}

#endif /* SF_FASTCALL_H */
