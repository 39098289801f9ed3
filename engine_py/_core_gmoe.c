/*
 * _core_gmoe.c — Python glue for the GMoE kernels (csrc/gmoe, eg_gmoe.h) and
 * the AdamW step (eg_optim.h). These are private building blocks
 * (`_gmoe_*`) used by engine_py.gmoe.MoELoRAFFN, which validates user input
 * first; the glue still checks every array's dtype, shape, contiguity and
 * every expert index so that a wrong call raises instead of crashing.
 *
 * Arrays are taken as they are (no conversion): inputs must be C-contiguous
 * aligned arrays of the stated dtype, and arguments documented as "in/out"
 * are updated in place (so they must be writeable). New outputs are returned.
 */
#include "_core.h"

#include <limits.h>

#include "eg_gmoe.h"
#include "eg_optim.h"

#define ANY (-1)

/* Check `o` is an ndarray of `type` with `ndim` dims matching shape (ANY
 * entries are filled in), C-contiguous, aligned (writeable if asked). None
 * gives *data = NULL when allow_none. Returns 0, or -1 with ValueError. */
static int arr(PyObject *o, const char *name, int type, int ndim, npy_intp *shape, int writable,
               int allow_none, void **data)
{
    *data = NULL;
    if (o == Py_None && allow_none) {
        return 0;
    }
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array", name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != type) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s", name,
                     type == NPY_FLOAT32 ? "float32"
                                         : (type == NPY_FLOAT64 ? "float64" : "int32"));
        return -1;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d", name, ndim,
                     PyArray_NDIM(a));
        return -1;
    }
    for (int i = 0; i < ndim; i++) {
        npy_intp d = PyArray_DIM(a, i);
        if (d > INT_MAX / 4) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d too large", name, i);
            return -1;
        }
        if (shape[i] == ANY) {
            shape[i] = d;
        } else if (shape[i] != d) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d is %zd, expected %zd", name, i,
                         (Py_ssize_t)d, (Py_ssize_t)shape[i]);
            return -1;
        }
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", name);
        return -1;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be writeable", name);
        return -1;
    }
    *data = PyArray_DATA(a);
    return 0;
}

static int check_idx(const int32_t *idx, size_t n, int E)
{
    for (size_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= E) {
            PyErr_Format(PyExc_ValueError, "expert index %d out of range [0, %d)", (int)idx[i], E);
            return -1;
        }
    }
    return 0;
}

static int check_prod(npy_intp a, npy_intp b, npy_intp c)
{
    size_t x;
    if (eg_mul_ovf((size_t)a, (size_t)b, &x) || eg_mul_ovf(x, (size_t)c, &x) || x > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "sizes too large");
        return -1;
    }
    return 0;
}

static PyObject *new_f32(int nd, npy_intp d0, npy_intp d1, npy_intp d2, npy_intp d3)
{
    npy_intp dims[4] = {d0, d1, d2, d3};
    return PyArray_ZEROS(nd, dims, NPY_FLOAT32, 0);
}

#define F32(p) ((float *)PyArray_DATA((PyArrayObject *)(p)))

/* ---------------------------------------------------------------- LoRA */
static PyObject *py_lora_forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *oW, *ob, *oA, *oB;
    float scale, p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOOffK", &ox, &oW, &ob, &oA, &oB, &scale, &p, &seed)) {
        return NULL;
    }
    npy_intp sx[2] = {ANY, ANY}, sA[2] = {ANY, ANY}, sW[2] = {ANY, ANY}, sB[2], sb[1];
    void *x, *W, *b, *A, *B;
    if (arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, &x) < 0) {
        return NULL;
    }
    sA[1] = sx[1];
    if (arr(oA, "A", NPY_FLOAT32, 2, sA, 0, 0, &A) < 0) {
        return NULL;
    }
    sW[1] = sx[1];
    if (arr(oW, "W", NPY_FLOAT32, 2, sW, 0, 0, &W) < 0) {
        return NULL;
    }
    sB[0] = sW[0];
    sB[1] = sA[0];
    sb[0] = sW[0];
    if (arr(oB, "B", NPY_FLOAT32, 2, sB, 0, 0, &B) < 0 ||
        arr(ob, "bias", NPY_FLOAT32, 1, sb, 0, 1, &b) < 0) {
        return NULL;
    }
    if (!(p >= 0.0f && p < 1.0f)) {
        PyErr_SetString(PyExc_ValueError, "dropout p must be in [0, 1)");
        return NULL;
    }
    PyObject *out = new_f32(2, sx[0], sW[0], 0, 0), *h = new_f32(2, sx[0], sA[0], 0, 0);
    if (out == NULL || h == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(h);
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eg_lora_linear_forward(F32(out), F32(h), x, W, b, A, B, (int)sx[0], (int)sx[1],
                                (int)sW[0], (int)sA[0], scale, p, seed, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        Py_DECREF(out);
        Py_DECREF(h);
        return eg_py_raise(&err, NULL);
    }
    return Py_BuildValue("(NN)", out, h);
}

static PyObject *py_lora_backward(PyObject *self, PyObject *args)
{
    PyObject *odo, *ox, *oW, *oA, *oB, *oh, *odA, *odB;
    float scale, p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOOOOOffK", &odo, &ox, &oW, &oA, &oB, &oh, &odA, &odB,
                          &scale, &p, &seed)) {
        return NULL;
    }
    npy_intp sx[2] = {ANY, ANY}, sA[2] = {ANY, ANY}, sW[2] = {ANY, ANY}, sB[2], sh[2], sd[2];
    void *x, *W, *A, *B, *h, *dout, *dA, *dB;
    if (arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, &x) < 0) {
        return NULL;
    }
    sA[1] = sx[1];
    sW[1] = sx[1];
    if (arr(oA, "A", NPY_FLOAT32, 2, sA, 0, 0, &A) < 0 ||
        arr(oW, "W", NPY_FLOAT32, 2, sW, 0, 0, &W) < 0) {
        return NULL;
    }
    sB[0] = sW[0];
    sB[1] = sA[0];
    sh[0] = sx[0];
    sh[1] = sA[0];
    sd[0] = sx[0];
    sd[1] = sW[0];
    if (arr(oB, "B", NPY_FLOAT32, 2, sB, 0, 0, &B) < 0 ||
        arr(oh, "hA", NPY_FLOAT32, 2, sh, 0, 0, &h) < 0 ||
        arr(odo, "dout", NPY_FLOAT32, 2, sd, 0, 0, &dout) < 0 ||
        arr(odA, "dA", NPY_FLOAT32, 2, sA, 1, 0, &dA) < 0 ||
        arr(odB, "dB", NPY_FLOAT32, 2, sB, 1, 0, &dB) < 0) {
        return NULL;
    }
    if (!(p >= 0.0f && p < 1.0f)) {
        PyErr_SetString(PyExc_ValueError, "dropout p must be in [0, 1)");
        return NULL;
    }
    PyObject *dx = new_f32(2, sx[0], sx[1], 0, 0);
    if (dx == NULL) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eg_lora_linear_backward(F32(dx), dA, dB, dout, x, W, A, B, h, (int)sx[0], (int)sx[1],
                                 (int)sW[0], (int)sA[0], scale, p, seed, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        Py_DECREF(dx);
        return eg_py_raise(&err, NULL);
    }
    return dx;
}

/* ---------------------------------------------------------------- MoE FFN */
/* Parse the shared weight arguments of the FFN (order: W_in, b_in, W_up, W_out,
 * b_out, A0, A1, A2, B0, B1, B2) given kind; fills prm and the dims H, I, E, r. */
static int ffn_params(PyObject **o, int kind, npy_intp H, eg_moe_ffn_params *prm,
                      eg_moe_ffn_dims *d)
{
    int swi = kind == EG_MOE_SWIGLU;
    npy_intp sWi[2] = {ANY, H};
    void *p;
    if (arr(o[0], "W_in", NPY_FLOAT32, 2, sWi, 0, 0, &p) < 0) {
        return -1;
    }
    prm->W_in = p;
    npy_intp In = sWi[0];
    npy_intp sbi[1] = {In}, sWu[2] = {In, H}, sWo[2] = {H, In}, sbo[1] = {H};
    if (arr(o[1], "b_in", NPY_FLOAT32, 1, sbi, 0, 1, &p) < 0) {
        return -1;
    }
    prm->b_in = p;
    if (arr(o[2], "W_up", NPY_FLOAT32, 2, sWu, 0, !swi, &p) < 0) {
        return -1;
    }
    prm->W_up = swi ? p : NULL;
    if (arr(o[3], "W_out", NPY_FLOAT32, 2, sWo, 0, 0, &p) < 0) {
        return -1;
    }
    prm->W_out = p;
    if (arr(o[4], "b_out", NPY_FLOAT32, 1, sbo, 0, 1, &p) < 0) {
        return -1;
    }
    prm->b_out = p;
    npy_intp sA0[3] = {ANY, ANY, H};
    if (arr(o[5], "A0", NPY_FLOAT32, 3, sA0, 0, 0, &p) < 0) {
        return -1;
    }
    prm->A[0] = p;
    npy_intp E = sA0[0], r = sA0[1];
    npy_intp sA1[3] = {E, r, H}, sA2[3] = {E, r, In}, sB0[3] = {E, In, r}, sB2[3] = {E, H, r};
    if (arr(o[6], "A1", NPY_FLOAT32, 3, sA1, 0, !swi, &p) < 0) {
        return -1;
    }
    prm->A[1] = swi ? p : NULL;
    if (arr(o[7], "A2", NPY_FLOAT32, 3, sA2, 0, 0, &p) < 0) {
        return -1;
    }
    prm->A[2] = p;
    if (arr(o[8], "B0", NPY_FLOAT32, 3, sB0, 0, 0, &p) < 0) {
        return -1;
    }
    prm->B[0] = p;
    if (arr(o[9], "B1", NPY_FLOAT32, 3, sB0, 0, !swi, &p) < 0) {
        return -1;
    }
    prm->B[1] = swi ? p : NULL;
    if (arr(o[10], "B2", NPY_FLOAT32, 3, sB2, 0, 0, &p) < 0) {
        return -1;
    }
    prm->B[2] = p;
    if (r < 1 || r > 64 || E < 1) {
        PyErr_SetString(PyExc_ValueError, "LoRA rank must be in [1, 64] and experts >= 1");
        return -1;
    }
    d->H = (int)H;
    d->inner = (int)In;
    d->E = (int)E;
    d->r = (int)r;
    return 0;
}

static PyObject *py_ffn_forward(PyObject *self, PyObject *args)
{
    int kind;
    PyObject *ox, *oidx, *ow, *o[11];
    float scale, p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "iOOOOOOOOOOOOOOffK", &kind, &ox, &oidx, &ow, &o[0], &o[1],
                          &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &scale,
                          &p, &seed)) {
        return NULL;
    }
    if (kind != EG_MOE_SWIGLU && kind != EG_MOE_GELU) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (swiglu) or 1 (gelu)");
        return NULL;
    }
    if (!(p >= 0.0f && p < 1.0f)) {
        PyErr_SetString(PyExc_ValueError, "dropout p must be in [0, 1)");
        return NULL;
    }
    npy_intp sx[2] = {ANY, ANY}, si[2] = {ANY, ANY};
    void *x, *idx, *w;
    eg_moe_ffn_params prm;
    eg_moe_ffn_dims d = {kind, 0, 0, 0, 0, 0, 0, scale, p, seed};
    if (arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, &x) < 0 ||
        arr(oidx, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        ffn_params(o, kind, sx[1], &prm, &d) < 0) {
        return NULL;
    }
    npy_intp sw[2] = {sx[0], si[1]};
    si[0] = sx[0];
    if (arr(oidx, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        arr(ow, "w", NPY_FLOAT32, 2, sw, 0, 0, &w) < 0 ||
        check_idx(idx, (size_t)(si[0] * si[1]), d.E) < 0 ||
        check_prod(sx[0], si[1] > 0 ? si[1] : 1, d.inner) < 0) {
        return NULL;
    }
    d.T = (int)sx[0];
    d.K = (int)si[1];
    npy_intp M = sx[0] * si[1];
    PyObject *y = new_f32(2, sx[0], sx[1], 0, 0), *G = new_f32(2, M, d.inner, 0, 0);
    PyObject *U = kind == EG_MOE_SWIGLU ? new_f32(2, M, d.inner, 0, 0) : (Py_INCREF(Py_None), Py_None);
    PyObject *Hl = new_f32(3, 3, M, d.r, 0);
    if (y == NULL || G == NULL || U == NULL || Hl == NULL) {
        goto fail;
    }
    eg_err err = {0};
    eg_status st;
    float *Up = U == Py_None ? NULL : F32(U);
    Py_BEGIN_ALLOW_THREADS
    st = eg_moe_ffn_forward(F32(y), F32(G), Up, F32(Hl), x, idx, w, &prm, &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    return Py_BuildValue("(NNNN)", y, G, U, Hl);
fail:
    Py_XDECREF(y);
    Py_XDECREF(G);
    Py_XDECREF(U);
    Py_XDECREF(Hl);
    return NULL;
}

static PyObject *py_ffn_backward(PyObject *self, PyObject *args)
{
    int kind;
    PyObject *ody, *ox, *oidx, *ow, *oG, *oU, *oH, *o[11], *og[6];
    float scale, p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "iOOOOOOOOOOOOOOOOOOOOOOOOffK", &kind, &ody, &ox, &oidx, &ow,
                          &oG, &oU, &oH, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &o[8], &o[9], &o[10], &og[0], &og[1], &og[2], &og[3], &og[4], &og[5],
                          &scale, &p, &seed)) {
        return NULL;
    }
    if (kind != EG_MOE_SWIGLU && kind != EG_MOE_GELU) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (swiglu) or 1 (gelu)");
        return NULL;
    }
    if (!(p >= 0.0f && p < 1.0f)) {
        PyErr_SetString(PyExc_ValueError, "dropout p must be in [0, 1)");
        return NULL;
    }
    int swi = kind == EG_MOE_SWIGLU;
    npy_intp sx[2] = {ANY, ANY}, si[2] = {ANY, ANY};
    void *x, *idx, *w, *dy, *G, *U, *Hl;
    eg_moe_ffn_params prm;
    eg_moe_ffn_grads grd;
    eg_moe_ffn_dims d = {kind, 0, 0, 0, 0, 0, 0, scale, p, seed};
    if (arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, &x) < 0 ||
        ffn_params(o, kind, sx[1], &prm, &d) < 0) {
        return NULL;
    }
    si[0] = sx[0];
    if (arr(oidx, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0) {
        return NULL;
    }
    npy_intp M = sx[0] * si[1];
    npy_intp sw[2] = {sx[0], si[1]}, sy[2] = {sx[0], sx[1]}, sG[2] = {M, d.inner},
             sH[3] = {3, M, d.r};
    if (arr(ow, "w", NPY_FLOAT32, 2, sw, 0, 0, &w) < 0 ||
        arr(ody, "dy", NPY_FLOAT32, 2, sy, 0, 0, &dy) < 0 ||
        arr(oG, "G", NPY_FLOAT32, 2, sG, 0, 0, &G) < 0 ||
        arr(oU, "U", NPY_FLOAT32, 2, sG, 0, !swi, &U) < 0 ||
        arr(oH, "Hl", NPY_FLOAT32, 3, sH, 0, 0, &Hl) < 0 ||
        check_idx(idx, (size_t)M, d.E) < 0 || check_prod(sx[0], si[1] > 0 ? si[1] : 1, d.inner) < 0) {
        return NULL;
    }
    npy_intp in[3] = {d.H, d.H, d.inner}, out[3] = {d.inner, d.inner, d.H};
    for (int q = 0; q < 3; q++) {
        npy_intp sa[3] = {d.E, d.r, in[q]}, sb[3] = {d.E, out[q], d.r};
        void *pa, *pb;
        int opt = q == 1 && !swi;
        if (arr(og[q], "dA", NPY_FLOAT32, 3, sa, 1, opt, &pa) < 0 ||
            arr(og[3 + q], "dB", NPY_FLOAT32, 3, sb, 1, opt, &pb) < 0) {
            return NULL;
        }
        grd.A[q] = pa;
        grd.B[q] = pb;
    }
    d.T = (int)sx[0];
    d.K = (int)si[1];
    PyObject *dx = new_f32(2, sx[0], sx[1], 0, 0), *dw = new_f32(2, sx[0], si[1], 0, 0);
    if (dx == NULL || dw == NULL) {
        Py_XDECREF(dx);
        Py_XDECREF(dw);
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eg_moe_ffn_backward(F32(dx), F32(dw), &grd, dy, x, idx, w, G, swi ? U : NULL, Hl, &prm,
                             &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        Py_DECREF(dx);
        Py_DECREF(dw);
        return eg_py_raise(&err, NULL);
    }
    return Py_BuildValue("(NN)", dx, dw);
}

/* ---------------------------------------------------------------- routing */
static PyObject *py_topk_forward(PyObject *self, PyObject *args)
{
    PyObject *ol;
    int K, renorm;
    if (!PyArg_ParseTuple(args, "Oip", &ol, &K, &renorm)) {
        return NULL;
    }
    npy_intp sl[2] = {ANY, ANY};
    void *lg;
    if (arr(ol, "logits", NPY_FLOAT32, 2, sl, 0, 0, &lg) < 0) {
        return NULL;
    }
    if (K < 1 || K > sl[1]) {
        PyErr_Format(PyExc_ValueError, "top_k must be in [1, %zd], got %d", (Py_ssize_t)sl[1], K);
        return NULL;
    }
    npy_intp dk[2] = {sl[0], K};
    PyObject *probs = new_f32(2, sl[0], sl[1], 0, 0), *lse = new_f32(1, sl[0], 0, 0, 0);
    PyObject *idx = PyArray_ZEROS(2, dk, NPY_INT32, 0), *w = new_f32(2, sl[0], K, 0, 0);
    if (probs == NULL || lse == NULL || idx == NULL || w == NULL) {
        Py_XDECREF(probs);
        Py_XDECREF(lse);
        Py_XDECREF(idx);
        Py_XDECREF(w);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    eg_router_topk_forward(F32(probs), F32(lse), PyArray_DATA((PyArrayObject *)idx), F32(w), lg,
                           (int)sl[0], (int)sl[1], K, renorm);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NNNN)", probs, lse, idx, w);
}

static PyObject *py_topk_backward(PyObject *self, PyObject *args)
{
    PyObject *odw, *odp, *op, *oi, *ow;
    int renorm;
    if (!PyArg_ParseTuple(args, "OOOOOp", &odw, &odp, &op, &oi, &ow, &renorm)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY}, si[2] = {ANY, ANY};
    void *dw, *dp, *p, *idx, *w;
    if (arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    si[0] = sp[0];
    if (arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        arr(ow, "w", NPY_FLOAT32, 2, si, 0, 0, &w) < 0 ||
        arr(odw, "dw", NPY_FLOAT32, 2, si, 0, 0, &dw) < 0 ||
        arr(odp, "dprobs", NPY_FLOAT32, 2, sp, 0, 1, &dp) < 0 ||
        check_idx(idx, (size_t)(si[0] * si[1]), (int)sp[1]) < 0) {
        return NULL;
    }
    PyObject *dl = new_f32(2, sp[0], sp[1], 0, 0);
    if (dl == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    eg_router_topk_backward(F32(dl), dw, dp, p, idx, w, (int)sp[0], (int)sp[1], (int)si[1], renorm);
    Py_END_ALLOW_THREADS
    return dl;
}

static PyObject *py_balance_forward(PyObject *self, PyObject *args)
{
    PyObject *op, *oi;
    if (!PyArg_ParseTuple(args, "OO", &op, &oi)) {
        return NULL;
    }
    npy_intp sp[2] = {ANY, ANY}, si[2] = {ANY, ANY};
    void *p, *idx;
    if (arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    si[0] = sp[0];
    if (arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        check_idx(idx, (size_t)(si[0] * si[1]), (int)sp[1]) < 0) {
        return NULL;
    }
    if (sp[0] < 1 || si[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "balance loss needs at least one token");
        return NULL;
    }
    npy_intp dn[1] = {sp[1]};
    PyObject *counts = PyArray_ZEROS(1, dn, NPY_INT64, 0);
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
    if (arr(odp, "dprobs", NPY_FLOAT32, 2, sp, 1, 0, &dp) < 0) {
        return NULL;
    }
    sc[0] = sp[1];
    if (arr(oc, "counts", NPY_INT64, 1, sc, 0, 0, &c) < 0) {
        return NULL;
    }
    if (K < 1 || sp[0] < 1) {
        PyErr_SetString(PyExc_ValueError, "K and T must be >= 1");
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
    if (arr(ol, "lse", NPY_FLOAT32, 1, s, 0, 0, &l) < 0) {
        return NULL;
    }
    if (s[0] < 1) {
        PyErr_SetString(PyExc_ValueError, "z-loss needs at least one token");
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
    if (arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    s[0] = sp[0];
    if (arr(odl, "dlogits", NPY_FLOAT32, 2, sp, 1, 0, &dl) < 0 ||
        arr(ol, "lse", NPY_FLOAT32, 1, s, 0, 0, &l) < 0) {
        return NULL;
    }
    if (sp[0] < 1) {
        PyErr_SetString(PyExc_ValueError, "z-loss needs at least one token");
        return NULL;
    }
    eg_zloss_backward(dl, coef, l, p, (int)sp[0], (int)sp[1]);
    Py_RETURN_NONE;
}

static PyObject *py_linear_router_forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *oW;
    if (!PyArg_ParseTuple(args, "OO", &ox, &oW)) {
        return NULL;
    }
    npy_intp sx[2] = {ANY, ANY}, sW[2] = {ANY, ANY};
    void *x, *W;
    if (arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, &x) < 0) {
        return NULL;
    }
    sW[1] = sx[1];
    if (arr(oW, "Wg", NPY_FLOAT32, 2, sW, 0, 0, &W) < 0) {
        return NULL;
    }
    PyObject *lg = new_f32(2, sx[0], sW[0], 0, 0);
    if (lg == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    eg_linear_router_forward(F32(lg), x, W, (int)sx[0], (int)sx[1], (int)sW[0]);
    Py_END_ALLOW_THREADS
    return lg;
}

static PyObject *py_linear_router_backward(PyObject *self, PyObject *args)
{
    PyObject *odx, *odW, *odl, *ox, *oW;
    if (!PyArg_ParseTuple(args, "OOOOO", &odx, &odW, &odl, &ox, &oW)) {
        return NULL;
    }
    npy_intp sx[2] = {ANY, ANY}, sW[2] = {ANY, ANY}, sl[2];
    void *dx, *dW, *dl, *x, *W;
    if (arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, &x) < 0) {
        return NULL;
    }
    sW[1] = sx[1];
    if (arr(oW, "Wg", NPY_FLOAT32, 2, sW, 0, 0, &W) < 0) {
        return NULL;
    }
    sl[0] = sx[0];
    sl[1] = sW[0];
    if (arr(odx, "dx", NPY_FLOAT32, 2, sx, 1, 0, &dx) < 0 ||
        arr(odW, "dWg", NPY_FLOAT32, 2, sW, 1, 0, &dW) < 0 ||
        arr(odl, "dlogits", NPY_FLOAT32, 2, sl, 0, 0, &dl) < 0) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    eg_linear_router_backward(dx, dW, dl, x, W, (int)sx[0], (int)sx[1], (int)sW[0]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- graph router */
/* x, X, Ws, Wt, Wl, pvec, Ahat -> dims */
static int graph_args(PyObject **o, void **pp, eg_graph_router_dims *d)
{
    npy_intp sx[2] = {ANY, ANY};
    if (arr(o[0], "x", NPY_FLOAT32, 2, sx, 0, 0, &pp[0]) < 0) {
        return -1;
    }
    npy_intp sX[2] = {ANY, sx[1]}, sWs[2] = {ANY, sx[1]};
    if (arr(o[1], "X", NPY_FLOAT32, 2, sX, 0, 0, &pp[1]) < 0 ||
        arr(o[2], "Ws", NPY_FLOAT32, 2, sWs, 0, 0, &pp[2]) < 0) {
        return -1;
    }
    npy_intp g = sWs[0], N = sX[0];
    npy_intp sWt[2] = {g, sx[1]}, sWl[3] = {ANY, g, g}, sp[1] = {g}, sA[2] = {N + 1, N + 1};
    if (arr(o[3], "Wt", NPY_FLOAT32, 2, sWt, 0, 0, &pp[3]) < 0 ||
        arr(o[4], "Wl", NPY_FLOAT32, 3, sWl, 0, 0, &pp[4]) < 0 ||
        arr(o[5], "pvec", NPY_FLOAT32, 1, sp, 0, 0, &pp[5]) < 0 ||
        arr(o[6], "Ahat", NPY_FLOAT32, 2, sA, 0, 0, &pp[6]) < 0) {
        return -1;
    }
    if (sWl[0] < 1 || N < 1 || g < 1) {
        PyErr_SetString(PyExc_ValueError, "graph router needs >= 1 layer, expert and width");
        return -1;
    }
    if (check_prod(sx[0], N + 1, g) < 0) {
        return -1;
    }
    *d = (eg_graph_router_dims){(int)sx[0], (int)sx[1], (int)N, (int)g, (int)sWl[0]};
    return 0;
}

static PyObject *py_graph_forward(PyObject *self, PyObject *args)
{
    PyObject *o[7];
    void *pp[7];
    eg_graph_router_dims d;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6]) ||
        graph_args(o, pp, &d) < 0) {
        return NULL;
    }
    PyObject *lg = new_f32(2, d.T, d.N, 0, 0), *Zt = new_f32(2, d.T, d.g, 0, 0);
    PyObject *Z = new_f32(4, d.L, d.T, d.N + 1, d.g);
    if (lg == NULL || Zt == NULL || Z == NULL) {
        goto fail;
    }
    eg_err err = {0};
    eg_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eg_graph_router_forward(F32(lg), F32(Zt), F32(Z), pp[0], pp[1], pp[2], pp[3], pp[4],
                                 pp[5], pp[6], &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    return Py_BuildValue("(NNN)", lg, Zt, Z);
fail:
    Py_XDECREF(lg);
    Py_XDECREF(Zt);
    Py_XDECREF(Z);
    return NULL;
}

static PyObject *py_graph_backward(PyObject *self, PyObject *args)
{
    PyObject *o[7], *odx, *odWs, *odWt, *odWl, *odp, *odl, *oZt, *oZ;
    void *pp[7], *dx, *dWs, *dWt, *dWl, *dp, *dl, *Zt, *Z;
    eg_graph_router_dims d;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOO", &odx, &odWs, &odWt, &odWl, &odp, &odl, &o[0],
                          &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &oZt, &oZ) ||
        graph_args(o, pp, &d) < 0) {
        return NULL;
    }
    npy_intp sx[2] = {d.T, d.H}, sW[2] = {d.g, d.H}, sWl[3] = {d.L, d.g, d.g}, sp[1] = {d.g},
             sl[2] = {d.T, d.N}, sZt[2] = {d.T, d.g}, sZ[4] = {d.L, d.T, d.N + 1, d.g};
    if (arr(odx, "dx", NPY_FLOAT32, 2, sx, 1, 0, &dx) < 0 ||
        arr(odWs, "dWs", NPY_FLOAT32, 2, sW, 1, 0, &dWs) < 0 ||
        arr(odWt, "dWt", NPY_FLOAT32, 2, sW, 1, 0, &dWt) < 0 ||
        arr(odWl, "dWl", NPY_FLOAT32, 3, sWl, 1, 0, &dWl) < 0 ||
        arr(odp, "dpvec", NPY_FLOAT32, 1, sp, 1, 0, &dp) < 0 ||
        arr(odl, "dlogits", NPY_FLOAT32, 2, sl, 0, 0, &dl) < 0 ||
        arr(oZt, "Zt", NPY_FLOAT32, 2, sZt, 0, 0, &Zt) < 0 ||
        arr(oZ, "Z", NPY_FLOAT32, 4, sZ, 0, 0, &Z) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    Py_BEGIN_ALLOW_THREADS
    st = eg_graph_router_backward(dx, dWs, dWt, dWl, dp, dl, pp[0], pp[1], pp[2], pp[3], pp[4],
                                  pp[5], pp[6], Zt, Z, &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
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
    if (arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    if (sp[0] < 1 || sp[1] < 1 || sp[1] > 1024) {
        PyErr_SetString(PyExc_ValueError, "Poisson loss needs T >= 1 and 1 <= N <= 1024");
        return NULL;
    }
    npy_intp dims[2] = {sp[0], sp[1]};
    PyObject *perm = PyArray_ZEROS(2, dims, NPY_INT32, 0);
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
    if (arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0 ||
        arr(odp, "dprobs", NPY_FLOAT32, 2, sp, 1, 0, &dp) < 0 ||
        arr(operm, "perm", NPY_INT32, 2, sp, 0, 0, &perm) < 0 ||
        check_idx(perm, (size_t)(sp[0] * sp[1]), (int)sp[1]) < 0) {
        return NULL;
    }
    if (sp[0] < 1 || sp[1] > 1024) {
        PyErr_SetString(PyExc_ValueError, "Poisson loss needs T >= 1 and N <= 1024");
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
    if (arr(orun, "running", NPY_FLOAT64, 1, sr, 0, 0, &run) < 0 ||
        arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        arr(ow, "w", NPY_FLOAT32, 2, si, 0, 0, &w) < 0 ||
        check_idx(idx, (size_t)(si[0] * si[1]), (int)sr[0]) < 0) {
        return NULL;
    }
    if (sr[0] < 1 || sr[0] > 1024) {
        PyErr_SetString(PyExc_ValueError, "Normal loss needs 1 <= N <= 1024");
        return NULL;
    }
    npy_intp dn[1] = {sr[0]};
    PyObject *c = PyArray_ZEROS(1, dn, NPY_FLOAT64, 0), *perm = PyArray_ZEROS(1, dn, NPY_INT32, 0);
    if (c == NULL || perm == NULL) {
        Py_XDECREF(c);
        Py_XDECREF(perm);
        return NULL;
    }
    double L = eg_normal_loss_forward(PyArray_DATA((PyArrayObject *)c),
                                      PyArray_DATA((PyArrayObject *)perm), run, idx, w, sigma, smin,
                                      (int)si[0], (int)sr[0], (int)si[1], kl, eps);
    return Py_BuildValue("(dNN)", L, c, perm);
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
    if (arr(oc, "c", NPY_FLOAT64, 1, sc, 0, 0, &c) < 0 ||
        arr(operm, "perm", NPY_INT32, 1, sc, 0, 0, &perm) < 0 ||
        arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        arr(odw, "dw", NPY_FLOAT32, 2, si, 1, 0, &dw) < 0 ||
        check_idx(idx, (size_t)(si[0] * si[1]), (int)sc[0]) < 0 ||
        check_idx(perm, (size_t)sc[0], (int)sc[0]) < 0) {
        return NULL;
    }
    if (sc[0] < 1 || sc[0] > 1024) {
        PyErr_SetString(PyExc_ValueError, "Normal loss needs 1 <= N <= 1024");
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
    if (!PyArray_Check(op)) {
        PyErr_SetString(PyExc_TypeError, "param must be a numpy array");
        return NULL;
    }
    int nd = PyArray_NDIM((PyArrayObject *)op);
    npy_intp shape[NPY_MAXDIMS];
    for (int i = 0; i < nd; i++) {
        shape[i] = ANY;
    }
    void *p, *g, *m, *v;
    if (arr(op, "param", NPY_FLOAT32, nd, shape, 1, 0, &p) < 0 ||
        arr(og, "grad", NPY_FLOAT32, nd, shape, 0, 0, &g) < 0 ||
        arr(om, "m", NPY_FLOAT32, nd, shape, 1, 0, &m) < 0 ||
        arr(ov, "v", NPY_FLOAT32, nd, shape, 1, 0, &v) < 0) {
        return NULL;
    }
    if (t < 1) {
        PyErr_SetString(PyExc_ValueError, "step count must be >= 1");
        return NULL;
    }
    eg_adamw_config cfg = {lr, b1, b2, eps, wd};
    size_t n = (size_t)PyArray_SIZE((PyArrayObject *)op);
    Py_BEGIN_ALLOW_THREADS
    eg_adamw_step(p, g, m, v, NULL, n, &cfg, t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef gmoe_methods[] = {
    {"_gmoe_lora_forward", py_lora_forward, METH_VARARGS,
     "(x, W, bias|None, A, B, scale, p, seed) -> (out, hA)"},
    {"_gmoe_lora_backward", py_lora_backward, METH_VARARGS,
     "(dout, x, W, A, B, hA, dA in/out, dB in/out, scale, p, seed) -> dx"},
    {"_gmoe_ffn_forward", py_ffn_forward, METH_VARARGS,
     "(kind, x, idx, w, W_in, b_in, W_up, W_out, b_out, A0, A1, A2, B0, B1, B2, scale, p, seed)"
     " -> (y, G, U|None, Hl)"},
    {"_gmoe_ffn_backward", py_ffn_backward, METH_VARARGS,
     "(kind, dy, x, idx, w, G, U, Hl, <11 weights>, dA0, dA1, dA2, dB0, dB1, dB2 in/out, scale, p,"
     " seed) -> (dx, dw)"},
    {"_gmoe_topk_forward", py_topk_forward, METH_VARARGS,
     "(logits, K, renorm) -> (probs, lse, idx, w)"},
    {"_gmoe_topk_backward", py_topk_backward, METH_VARARGS,
     "(dw, dprobs|None, probs, idx, w, renorm) -> dlogits"},
    {"_gmoe_balance_forward", py_balance_forward, METH_VARARGS, "(probs, idx) -> (loss, counts)"},
    {"_gmoe_balance_backward", py_balance_backward, METH_VARARGS,
     "(dprobs in/out, coef, counts, K)"},
    {"_gmoe_zloss_forward", py_zloss_forward, METH_VARARGS, "(lse) -> loss"},
    {"_gmoe_zloss_backward", py_zloss_backward, METH_VARARGS,
     "(dlogits in/out, coef, lse, probs)"},
    {"_gmoe_linear_router_forward", py_linear_router_forward, METH_VARARGS, "(x, Wg) -> logits"},
    {"_gmoe_linear_router_backward", py_linear_router_backward, METH_VARARGS,
     "(dx in/out, dWg in/out, dlogits, x, Wg)"},
    {"_gmoe_graph_forward", py_graph_forward, METH_VARARGS,
     "(x, X, Ws, Wt, Wl, pvec, Ahat) -> (logits, Zt, Z)"},
    {"_gmoe_graph_backward", py_graph_backward, METH_VARARGS,
     "(dx, dWs, dWt, dWl, dpvec in/out, dlogits, x, X, Ws, Wt, Wl, pvec, Ahat, Zt, Z)"},
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

int eg_py_init_gmoe(PyObject *module)
{
    return PyModule_AddFunctions(module, gmoe_methods);
}
