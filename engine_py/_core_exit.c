/*
 * _core_exit.c — Python glue for the early-exit policy (csrc/engine/exit.c,
 * eg_engine.h): exit_reset / exit_step / exit_decide. The policy's state
 * arrays belong to the caller (engine_py.early_exit) and are checked, not
 * converted.
 */
#include "_core.h"
#include "eg_engine.h"

/* ------------------------------------------------------- exit policy */

/* The policy's state arrays (writable, C-contiguous, exact dtypes): probs
 * (n, C) float32, last (n,) int64, streak and exit_at (n,) int32. */
static int exit_state_from(eg_exit_state *s, PyObject *last, PyObject *streak, PyObject *exit_at,
                           PyObject *probs, int patience, float threshold)
{
    npy_intp sp[2] = {EG_PY_ANY, EG_PY_ANY};
    void *p, *l, *k, *e;
    if (eg_py_check_array(probs, "exit state probs", NPY_FLOAT32, 2, sp, EG_PY_WRITE, &p) < 0) {
        return -1;
    }
    if (sp[1] < 1 || sp[1] > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "exit state: need at least one class");
        return -1;
    }
    if (eg_py_check_array(last, "exit state last", NPY_INT64, 1, sp, EG_PY_WRITE, &l) < 0 ||
        eg_py_check_array(streak, "exit state streak", NPY_INT32, 1, sp, EG_PY_WRITE, &k) < 0 ||
        eg_py_check_array(exit_at, "exit state exit_at", NPY_INT32, 1, sp, EG_PY_WRITE, &e) < 0) {
        return -1;
    }
    *s = (eg_exit_state){(int64_t)sp[0], (int)sp[1], patience, threshold, l, k, e, p};
    return 0;
}

static PyObject *py_exit_reset(PyObject *mod, PyObject *args)
{
    PyObject *last, *streak, *exit_at, *probs;
    int patience;
    float threshold;
    if (!PyArg_ParseTuple(args, "OOOOif", &last, &streak, &exit_at, &probs, &patience, &threshold)) {
        return NULL;
    }
    eg_exit_state s;
    if (exit_state_from(&s, last, streak, exit_at, probs, patience, threshold) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    return eg_py_finish(NULL, eg_exit_reset(&s, &err), &err, NULL);
}

static PyObject *py_exit_step(PyObject *mod, PyObject *args)
{
    PyObject *last, *streak, *exit_at, *probs, *idxo, *lo;
    int patience, ladder, final;
    float threshold;
    if (!PyArg_ParseTuple(args, "OOOOifipOO", &last, &streak, &exit_at, &probs, &patience, &threshold,
                          &ladder, &final, &idxo, &lo)) {
        return NULL;
    }
    eg_exit_state s;
    if (exit_state_from(&s, last, streak, exit_at, probs, patience, threshold) < 0) {
        return NULL;
    }
    PyArrayObject *idx = eg_py_i64_vector(idxo, "idx"), *L = NULL;
    PyObject *act = NULL;
    if (idx == NULL) {
        return NULL;
    }
    npy_intp m = PyArray_DIM(idx, 0);
    const npy_intp lshape[2] = {m, s.C};
    L = eg_py_array(lo, NPY_FLOAT32, 0, 2, lshape, "exit step: logits must have shape (%lld, %d)",
                    (long long)m, s.C);
    if (L == NULL) {
        goto fail;
    }
    act = PyArray_SimpleNew(1, &m, NPY_BOOL);
    if (act == NULL) {
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_exit_step(&s, ladder, final, (int64_t)m, PyArray_DATA(idx), PyArray_DATA(L),
                                PyArray_DATA((PyArrayObject *)act), NULL, &err);
    act = eg_py_result(st, &err, NULL, act);
fail:
    Py_XDECREF(idx);
    Py_XDECREF(L);
    return act;
}

static PyObject *py_exit_decide(PyObject *mod, PyObject *args)
{
    PyObject *lo, *hho;
    int patience;
    float threshold;
    if (!PyArg_ParseTuple(args, "OifO", &lo, &patience, &threshold, &hho)) {
        return NULL;
    }
    static const char lmsg[] = "logits must have shape (K, n, C) with K, C >= 1";
    PyArrayObject *L = eg_py_array(lo, NPY_FLOAT32, 0, 3, NULL, lmsg);
    PyArrayObject *hh = NULL;
    PyObject *res = NULL;
    if (L == NULL) {
        return NULL;
    }
    npy_intp K = PyArray_DIM(L, 0), n = PyArray_DIM(L, 1), C = PyArray_DIM(L, 2);
    if (K < 1 || C < 1 || K > 4096 || C > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, lmsg);
        goto fail;
    }
    if (hho != Py_None) {
        hh = eg_py_array(hho, NPY_UINT8, NPY_ARRAY_FORCECAST, 1, &K,
                         "has_head must have one entry per ladder");
        if (hh == NULL) {
            goto fail;
        }
    }
    /* probs, exit_at: returned; last, streak: the policy's scratch */
    PyObject *o[4] = {eg_py_zeros(NPY_FLOAT32, 2, n, C, 0, 0), eg_py_zeros(NPY_INT32, 1, n, 0, 0, 0),
                      eg_py_zeros(NPY_INT64, 1, n, 0, 0, 0), eg_py_zeros(NPY_INT32, 1, n, 0, 0, 0)};
    if (eg_py_all_made(o, 4) < 0) {
        goto fail;
    }
    eg_exit_state s = {(int64_t)n, (int)C, patience, threshold,
                       PyArray_DATA((PyArrayObject *)o[2]), PyArray_DATA((PyArrayObject *)o[3]),
                       PyArray_DATA((PyArrayObject *)o[1]), PyArray_DATA((PyArrayObject *)o[0])};
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_exit_decide(&s, (int)K, PyArray_DATA(L), hh ? PyArray_DATA(hh) : NULL,
                                    &err));
    Py_DECREF(o[2]);
    Py_DECREF(o[3]);
    res = eg_py_result(st, &err, NULL, Py_BuildValue("(NN)", o[0], o[1]));
fail:
    Py_XDECREF(L);
    Py_XDECREF(hh);
    return res;
}

static PyMethodDef exit_functions[] = {
    {"exit_reset", py_exit_reset, METH_VARARGS,
     "exit_reset(last, streak, exit_at, probs, patience, threshold): validate and reset a policy state."},
    {"exit_step", py_exit_step, METH_VARARGS,
     "exit_step(last, streak, exit_at, probs, patience, threshold, ladder, final, idx, logits) -> "
     "still-active mask (bool, len(idx)). Refuses exited targets."},
    {"exit_decide", py_exit_decide, METH_VARARGS,
     "exit_decide(logits (K, n, C), patience, threshold, has_head or None) -> (probs, exit_at)."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_exit(PyObject *module)
{
    return PyModule_AddFunctions(module, exit_functions);
}
