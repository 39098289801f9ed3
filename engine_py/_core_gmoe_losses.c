/*
 * _core_gmoe_losses.c — Python glue for the router losses (load balance,
 * z-loss), the GMoE coordination losses (Poisson distinction, Normal
 * balance) and the AdamW step (eg_optim.h); private `_gmoe_*` functions
 * used by engine_py.gmoe. Argument helpers: _core_gmoe.h. The loss kernels
 * are O(T N) and run with the GIL held.
 */
#include "_core_gmoe.h"


/* T >= 1 tokens and 1 <= N <= 1024 experts (the losses sort rows of N in
 * fixed buffers), else ValueError naming the loss. */
static int check_tokens_experts(npy_intp T, npy_intp N, const char *loss)
{
    char what[64];
    snprintf(what, sizeof what, "%s: tokens T", loss);
    if (eg_py_check_range(T, 1, LLONG_MAX, NULL, what) < 0) {
        return -1;
    }
    snprintf(what, sizeof what, "%s: experts N", loss);
    return eg_py_check_range(N, 1, 1024, NULL, what);
}

/* ---------------------------------------------------------------- router losses */
static PyObject *py_balance_forward(PyObject *self, PyObject *args)
{
    PyObject *op, *oi;
    if (!PyArg_ParseTuple(args, "OO", &op, &oi)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY}, si[2] = {ANY, ANY};
    void *p, *idx;
    if (gmoe_arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    si[0] = sp[0];
    if (gmoe_arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        gmoe_check_idx(idx, (size_t)(si[0] * si[1]), (int)sp[1]) < 0) {
        return NULL;
    }
    if (eg_py_check_range(sp[0], 1, LLONG_MAX, NULL, "balance loss: tokens T") < 0 ||
        eg_py_check_range(si[1], 1, LLONG_MAX, NULL, "balance loss: top_k K") < 0) {
        return NULL;
    }
    PyObject *counts = eg_py_zeros(NPY_INT64, 1, sp[1], 0, 0, 0);
    if (counts == NULL) {
        return NULL;
    }
    double L = eg_balance_loss_forward(PyArray_DATA((PyArrayObject *)counts), p, idx, (int)sp[0],
                                       (int)sp[1], (int)si[1]);
    return Py_BuildValue("(dN)", L, counts);
}

static PyObject *py_balance_backward(PyObject *self, PyObject *args)
{
    PyObject *odp, *oc;
    float coef;
    int K;
    if (!PyArg_ParseTuple(args, "OfOi", &odp, &coef, &oc, &K)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY}, sc[1];
    void *dp, *c;
    if (gmoe_arr(odp, "dprobs", NPY_FLOAT32, 2, sp, 1, 0, &dp) < 0) {
        return NULL;
    }
    sc[0] = sp[1];
    if (gmoe_arr(oc, "counts", NPY_INT64, 1, sc, 0, 0, &c) < 0) {
        return NULL;
    }
    if (eg_py_check_range(sp[0], 1, LLONG_MAX, NULL, "balance loss: tokens T") < 0 ||
        eg_py_check_range(K, 1, LLONG_MAX, NULL, "balance loss: top_k K") < 0) {
        return NULL;
    }
    eg_balance_loss_backward(dp, coef, c, (int)sp[0], (int)sp[1], K);
    Py_RETURN_NONE;
}

static PyObject *py_zloss_forward(PyObject *self, PyObject *args)
{
    PyObject *ol;
    if (!PyArg_ParseTuple(args, "O", &ol)) {
        return NULL;
    }
    npy_intp s[1] = {ANY};
    void *l;
    if (gmoe_arr(ol, "lse", NPY_FLOAT32, 1, s, 0, 0, &l) < 0) {
        return NULL;
    }
    if (eg_py_check_range(s[0], 1, LLONG_MAX, NULL, "z-loss: tokens T") < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(eg_zloss_forward(l, (int)s[0]));
}

static PyObject *py_zloss_backward(PyObject *self, PyObject *args)
{
    PyObject *odl, *ol, *op;
    float coef;
    if (!PyArg_ParseTuple(args, "OfOO", &odl, &coef, &ol, &op)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY}, s[1];
    void *dl, *l, *p;
    if (gmoe_arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    s[0] = sp[0];
    if (gmoe_arr(odl, "dlogits", NPY_FLOAT32, 2, sp, 1, 0, &dl) < 0 ||
        gmoe_arr(ol, "lse", NPY_FLOAT32, 1, s, 0, 0, &l) < 0) {
        return NULL;
    }
    if (eg_py_check_range(sp[0], 1, LLONG_MAX, NULL, "z-loss: tokens T") < 0) {
        return NULL;
    }
    eg_zloss_backward(dl, coef, l, p, (int)sp[0], (int)sp[1]);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- GMoE losses */
static PyObject *py_poisson_forward(PyObject *self, PyObject *args)
{
    PyObject *op;
    float lam, eps;
    int kl;
    if (!PyArg_ParseTuple(args, "Ofpf", &op, &lam, &kl, &eps)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY};
    void *p;
    if (gmoe_arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    if (check_tokens_experts(sp[0], sp[1], "Poisson loss") < 0) {
        return NULL;
    }
    PyObject *perm = eg_py_zeros(NPY_INT32, 2, sp[0], sp[1], 0, 0);
    if (perm == NULL) {
        return NULL;
    }
    double L = eg_poisson_loss_forward(PyArray_DATA((PyArrayObject *)perm), p, lam, (int)sp[0],
                                       (int)sp[1], kl, eps);
    return Py_BuildValue("(dN)", L, perm);
}

static PyObject *py_poisson_backward(PyObject *self, PyObject *args)
{
    PyObject *odp, *op, *operm;
    float coef, lam, eps;
    int kl;
    if (!PyArg_ParseTuple(args, "OfOOfpf", &odp, &coef, &op, &operm, &lam, &kl, &eps)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY};
    void *dp, *p, *perm;
    if (gmoe_arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0 ||
        gmoe_arr(odp, "dprobs", NPY_FLOAT32, 2, sp, 1, 0, &dp) < 0 ||
        gmoe_arr(operm, "perm", NPY_INT32, 2, sp, 0, 0, &perm) < 0 ||
        gmoe_check_idx(perm, (size_t)(sp[0] * sp[1]), (int)sp[1]) < 0) {
        return NULL;
    }
    if (check_tokens_experts(sp[0], sp[1], "Poisson loss") < 0) {
        return NULL;
    }
    float dlam = 0.0f;
    eg_poisson_loss_backward(dp, &dlam, coef, p, perm, lam, (int)sp[0], (int)sp[1], kl, eps);
    return PyFloat_FromDouble(dlam);
}

static PyObject *py_normal_forward(PyObject *self, PyObject *args)
{
    PyObject *orun, *oi, *ow;
    float sigma, smin, eps;
    int kl;
    if (!PyArg_ParseTuple(args, "OOOffpf", &orun, &oi, &ow, &sigma, &smin, &kl, &eps)) {
        return NULL;
    }
    npy_intp sr[1] = {ANY}, si[2] = {ANY, ANY};
    void *run, *idx, *w;
    if (gmoe_arr(orun, "running", NPY_FLOAT64, 1, sr, 0, 0, &run) < 0 ||
        gmoe_arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        gmoe_arr(ow, "w", NPY_FLOAT32, 2, si, 0, 0, &w) < 0 ||
        gmoe_check_idx(idx, (size_t)(si[0] * si[1]), (int)sr[0]) < 0) {
        return NULL;
    }
    if (check_tokens_experts(1, sr[0], "Normal loss") < 0) {
        return NULL;
    }
    PyObject *o[2] = {eg_py_zeros(NPY_FLOAT64, 1, sr[0], 0, 0, 0),
                      eg_py_zeros(NPY_INT32, 1, sr[0], 0, 0, 0)};
    if (eg_py_all_made(o, 2) < 0) {
        return NULL;
    }
    double L = eg_normal_loss_forward(PyArray_DATA((PyArrayObject *)o[0]),
                                      PyArray_DATA((PyArrayObject *)o[1]), run, idx, w, sigma, smin,
                                      (int)si[0], (int)sr[0], (int)si[1], kl, eps);
    return Py_BuildValue("(dNN)", L, o[0], o[1]);
}

static PyObject *py_normal_backward(PyObject *self, PyObject *args)
{
    PyObject *odw, *oc, *operm, *oi;
    float coef, sigma, smin, eps;
    int kl;
    if (!PyArg_ParseTuple(args, "OfOOOffpf", &odw, &coef, &oc, &operm, &oi, &sigma, &smin, &kl,
                          &eps)) {
        return NULL;
    }
    npy_intp sc[1] = {ANY}, si[2] = {ANY, ANY};
    void *dw, *c, *perm, *idx;
    if (gmoe_arr(oc, "c", NPY_FLOAT64, 1, sc, 0, 0, &c) < 0 ||
        gmoe_arr(operm, "perm", NPY_INT32, 1, sc, 0, 0, &perm) < 0 ||
        gmoe_arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        gmoe_arr(odw, "dw", NPY_FLOAT32, 2, si, 1, 0, &dw) < 0 ||
        gmoe_check_idx(idx, (size_t)(si[0] * si[1]), (int)sc[0]) < 0 ||
        gmoe_check_idx(perm, (size_t)sc[0], (int)sc[0]) < 0) {
        return NULL;
    }
    if (check_tokens_experts(1, sc[0], "Normal loss") < 0) {
        return NULL;
    }
    float ds = 0.0f;
    eg_normal_loss_backward(dw, &ds, coef, c, perm, idx, sigma, smin, (int)si[0], (int)sc[0],
                            (int)si[1], kl, eps);
    return PyFloat_FromDouble(ds);
}

/* ---------------------------------------------------------------- AdamW */
static PyObject *py_adamw_step(PyObject *self, PyObject *args)
{
    PyObject *op, *og, *om, *ov;
    float lr, b1, b2, eps, wd;
    long t;
    if (!PyArg_ParseTuple(args, "OOOOfffffl", &op, &og, &om, &ov, &lr, &b1, &b2, &eps, &wd, &t)) {
        return NULL;
    }
    /* any shape, the same for all four (a non-array param: gmoe_arr's TypeError) */
    int nd = PyArray_Check(op) ? PyArray_NDIM((PyArrayObject *)op) : 0;
    npy_intp shape[NPY_MAXDIMS];
    for (int i = 0; i < nd; i++) {
        shape[i] = ANY;
    }
    void *p, *g, *m, *v;
    if (gmoe_arr(op, "param", NPY_FLOAT32, nd, shape, 1, 0, &p) < 0 ||
        gmoe_arr(og, "grad", NPY_FLOAT32, nd, shape, 0, 0, &g) < 0 ||
        gmoe_arr(om, "m", NPY_FLOAT32, nd, shape, 1, 0, &m) < 0 ||
        gmoe_arr(ov, "v", NPY_FLOAT32, nd, shape, 1, 0, &v) < 0) {
        return NULL;
    }
    if (eg_py_check_range(t, 1, LLONG_MAX, NULL, "AdamW step count t") < 0) {
        return NULL;
    }
    eg_adamw_config cfg = {lr, b1, b2, eps, wd};
    size_t n = (size_t)PyArray_SIZE((PyArrayObject *)op);
    EG_PY_NOGIL(eg_adamw_step(p, g, m, v, NULL, n, &cfg, t));
    Py_RETURN_NONE;
}

PyMethodDef gmoe_loss_methods[] = {
    {"_gmoe_balance_forward", py_balance_forward, METH_VARARGS, "(probs, idx) -> (loss, counts)"},
    {"_gmoe_balance_backward", py_balance_backward, METH_VARARGS,
     "(dprobs in/out, coef, counts, K)"},
    {"_gmoe_zloss_forward", py_zloss_forward, METH_VARARGS, "(lse) -> loss"},
    {"_gmoe_zloss_backward", py_zloss_backward, METH_VARARGS,
     "(dlogits in/out, coef, lse, probs)"},
    {"_gmoe_poisson_forward", py_poisson_forward, METH_VARARGS,
     "(probs, lambda, kl, eps) -> (loss, perm)"},
    {"_gmoe_poisson_backward", py_poisson_backward, METH_VARARGS,
     "(dprobs in/out, coef, probs, perm, lambda, kl, eps) -> dlambda"},
    {"_gmoe_normal_forward", py_normal_forward, METH_VARARGS,
     "(running f64, idx, w, sigma, sigma_min, kl, eps) -> (loss, c, perm)"},
    {"_gmoe_normal_backward", py_normal_backward, METH_VARARGS,
     "(dw in/out, coef, c, perm, idx, sigma, sigma_min, kl, eps) -> dsigma"},
    {"_gmoe_adamw_step", py_adamw_step, METH_VARARGS,
     "(param, grad, m, v in/out, lr, beta1, beta2, eps, weight_decay, t): torch.optim.AdamW step"},
    {NULL, NULL, 0, NULL},
};
