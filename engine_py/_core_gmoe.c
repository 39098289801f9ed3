/*
 * _core_gmoe.c — Python glue for the GMoE kernels (csrc/gmoe, eg_gmoe.h):
 * LoRA linear, MoE-LoRA FFN, top-k / linear / graph routers, and the module
 * table; the losses and the AdamW step are in _core_gmoe_losses.c, the
 * argument helpers both use are defined here (_core_gmoe.h). These are
 * private building blocks (`_gmoe_*`) used by engine_py.gmoe.MoELoRAFFN,
 * which validates user input first; the glue still checks every array's
 * dtype, shape, contiguity and every expert index so that a wrong call
 * raises instead of crashing.
 *
 * Arrays are taken as they are (no conversion): inputs must be C-contiguous
 * aligned arrays of the stated dtype, and arguments documented as "in/out"
 * are updated in place (so they must be writeable). New outputs are returned.
 */
#include "_core_gmoe.h"

#include <limits.h>

/* ---------------------------------------------------------------- helpers */
int gmoe_arr(PyObject *o, const char *name, int type, int ndim, npy_intp *shape, int writable,
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

int gmoe_check_idx(const int32_t *idx, size_t n, int E)
{
    for (size_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= E) {
            PyErr_Format(PyExc_ValueError, "expert index %d out of range [0, %d)", (int)idx[i], E);
            return -1;
        }
    }
    return 0;
}

int gmoe_check_prod(npy_intp a, npy_intp b, npy_intp c)
{
    size_t x;
    if (eg_mul_ovf((size_t)a, (size_t)b, &x) || eg_mul_ovf(x, (size_t)c, &x) || x > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "sizes too large");
        return -1;
    }
    return 0;
}

PyObject *gmoe_new_f32(int nd, npy_intp d0, npy_intp d1, npy_intp d2, npy_intp d3)
{
    npy_intp dims[4] = {d0, d1, d2, d3};
    return PyArray_ZEROS(nd, dims, NPY_FLOAT32, 0);
}

int gmoe_all_made(PyObject **objs, int n)
{
    int ok = 1;
    for (int i = 0; i < n; i++) {
        ok = ok && objs[i] != NULL;
    }
    if (!ok) {
        for (int i = 0; i < n; i++) {
            Py_XDECREF(objs[i]);
        }
        return -1;
    }
    return 0;
}

static int check_dropout(float p)
{
    if (!(p >= 0.0f && p < 1.0f)) {
        PyErr_SetString(PyExc_ValueError, "dropout p must be in [0, 1)");
        return -1;
    }
    return 0;
}

/* x (T, H) float32, then a float32 weight (OUT, H) named wname that shares
 * x's last dimension: the first arguments of the LoRA linear and the linear
 * router. sx and sW are filled in. */
static int x_and_weight(PyObject *ox, PyObject *oW, const char *wname, npy_intp *sx,
                        npy_intp *sW, void **x, void **W)
{
    sx[0] = sx[1] = sW[0] = ANY;
    if (gmoe_arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, x) < 0) {
        return -1;
    }
    sW[1] = sx[1];
    return gmoe_arr(oW, wname, NPY_FLOAT32, 2, sW, 0, 0, W);
}


/* ---------------------------------------------------------------- LoRA */
/* x (T, in), W (out, in), A (r, in), B (out, r): the arguments both LoRA
 * calls share; sA = (r, in), sB = (out, r). */
static int lora_args(PyObject *ox, PyObject *oW, PyObject *oA, PyObject *oB, npy_intp *sx,
                     npy_intp *sW, npy_intp *sA, npy_intp *sB, void **x, void **W, void **A,
                     void **B)
{
    if (x_and_weight(ox, oW, "W", sx, sW, x, W) < 0) {
        return -1;
    }
    sA[0] = ANY;
    sA[1] = sx[1];
    if (gmoe_arr(oA, "A", NPY_FLOAT32, 2, sA, 0, 0, A) < 0) {
        return -1;
    }
    sB[0] = sW[0];
    sB[1] = sA[0];
    return gmoe_arr(oB, "B", NPY_FLOAT32, 2, sB, 0, 0, B);
}

static PyObject *py_lora_forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *oW, *ob, *oA, *oB;
    float scale, p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOOffK", &ox, &oW, &ob, &oA, &oB, &scale, &p, &seed)) {
        return NULL;
    }
    npy_intp sx[2], sA[2], sW[2], sB[2], sb[1];
    void *x, *W, *b, *A, *B;
    if (lora_args(ox, oW, oA, oB, sx, sW, sA, sB, &x, &W, &A, &B) < 0) {
        return NULL;
    }
    sb[0] = sW[0];
    if (gmoe_arr(ob, "bias", NPY_FLOAT32, 1, sb, 0, 1, &b) < 0 || check_dropout(p) < 0) {
        return NULL;
    }
    PyObject *o[2] = {gmoe_new_f32(2, sx[0], sW[0], 0, 0), gmoe_new_f32(2, sx[0], sA[0], 0, 0)};
    if (gmoe_all_made(o, 2) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    st = eg_lora_linear_forward(F32(o[0]), F32(o[1]), x, W, b, A, B, (int)sx[0], (int)sx[1],
                                (int)sW[0], (int)sA[0], scale, p, seed, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        Py_DECREF(o[0]);
        Py_DECREF(o[1]);
        return eg_py_raise(&err, NULL);
    }
    return Py_BuildValue("(NN)", o[0], o[1]);
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
    npy_intp sx[2], sA[2], sW[2], sB[2], sh[2], sd[2];
    void *x, *W, *A, *B, *h, *dout, *dA, *dB;
    if (lora_args(ox, oW, oA, oB, sx, sW, sA, sB, &x, &W, &A, &B) < 0) {
        return NULL;
    }
    sh[0] = sx[0];
    sh[1] = sA[0];
    sd[0] = sx[0];
    sd[1] = sW[0];
    if (gmoe_arr(oh, "hA", NPY_FLOAT32, 2, sh, 0, 0, &h) < 0 ||
        gmoe_arr(odo, "dout", NPY_FLOAT32, 2, sd, 0, 0, &dout) < 0 ||
        gmoe_arr(odA, "dA", NPY_FLOAT32, 2, sA, 1, 0, &dA) < 0 ||
        gmoe_arr(odB, "dB", NPY_FLOAT32, 2, sB, 1, 0, &dB) < 0 || check_dropout(p) < 0) {
        return NULL;
    }
    PyObject *dx = gmoe_new_f32(2, sx[0], sx[1], 0, 0);
    if (dx == NULL) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
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
typedef struct {
    int i;            /* position in the weight arguments */
    const char *name;
    int nd;
    npy_intp s[3];
    int optional;     /* None allowed */
} weight_spec;

static int check_weights(PyObject **o, const weight_spec *spec, int n, void **p)
{
    for (int k = 0; k < n; k++) {
        npy_intp s[3] = {spec[k].s[0], spec[k].s[1], spec[k].s[2]};
        if (gmoe_arr(o[spec[k].i], spec[k].name, NPY_FLOAT32, spec[k].nd, s, 0, spec[k].optional,
                &p[spec[k].i]) < 0) {
            return -1;
        }
    }
    return 0;
}

/* Parse the shared weight arguments of the FFN (order: W_in, b_in, W_up, W_out,
 * b_out, A0, A1, A2, B0, B1, B2) given kind; fills prm and the dims H, I, E, r.
 * W_up, A1 and B1 are for SwiGLU only (None allowed, and ignored, for GELU). */
static int ffn_params(PyObject **o, int kind, npy_intp H, eg_moe_ffn_params *prm,
                      eg_moe_ffn_dims *d)
{
    const int swi = kind == EG_MOE_SWIGLU;
    void *p[11];
    npy_intp sWi[2] = {ANY, H};
    if (gmoe_arr(o[0], "W_in", NPY_FLOAT32, 2, sWi, 0, 0, &p[0]) < 0) {
        return -1;
    }
    const npy_intp In = sWi[0];
    const weight_spec frozen[] = {
        {1, "b_in", 1, {In}, 1},          {2, "W_up", 2, {In, H}, !swi},
        {3, "W_out", 2, {H, In}, 0},      {4, "b_out", 1, {H}, 1},
    };
    npy_intp sA0[3] = {ANY, ANY, H};
    if (check_weights(o, frozen, 4, p) < 0 ||
        gmoe_arr(o[5], "A0", NPY_FLOAT32, 3, sA0, 0, 0, &p[5]) < 0) {
        return -1;
    }
    const npy_intp E = sA0[0], r = sA0[1];
    const weight_spec lora[] = {
        {6, "A1", 3, {E, r, H}, !swi},  {7, "A2", 3, {E, r, In}, 0},
        {8, "B0", 3, {E, In, r}, 0},    {9, "B1", 3, {E, In, r}, !swi},
        {10, "B2", 3, {E, H, r}, 0},
    };
    if (check_weights(o, lora, 5, p) < 0) {
        return -1;
    }
    if (r < 1 || r > 64 || E < 1) {
        PyErr_SetString(PyExc_ValueError, "LoRA rank must be in [1, 64] and experts >= 1");
        return -1;
    }
    *prm = (eg_moe_ffn_params){0};
    prm->W_in = p[0];
    prm->b_in = p[1];
    prm->W_up = swi ? p[2] : NULL;
    prm->W_out = p[3];
    prm->b_out = p[4];
    for (int q = 0; q < 3; q++) {
        prm->A[q] = q == 1 && !swi ? NULL : p[5 + q];
        prm->B[q] = q == 1 && !swi ? NULL : p[8 + q];
    }
    d->H = (int)H;
    d->inner = (int)In;
    d->E = (int)E;
    d->r = (int)r;
    return 0;
}

/* What forward and backward share: kind, dropout p, x (T,H), the 11 weights,
 * idx (T,K) int32 with every index < E and w (T,K). Fills prm and d (T, K
 * included). */
static int ffn_inputs(int kind, float p, PyObject *ox, PyObject *oidx, PyObject *ow,
                      PyObject **o, void **x, void **idx, void **w, eg_moe_ffn_params *prm,
                      eg_moe_ffn_dims *d)
{
    if (kind != EG_MOE_SWIGLU && kind != EG_MOE_GELU) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (swiglu) or 1 (gelu)");
        return -1;
    }
    npy_intp sx[2] = {ANY, ANY};
    if (check_dropout(p) < 0 || gmoe_arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, x) < 0 ||
        ffn_params(o, kind, sx[1], prm, d) < 0) {
        return -1;
    }
    npy_intp si[2] = {sx[0], ANY};
    if (gmoe_arr(oidx, "idx", NPY_INT32, 2, si, 0, 0, idx) < 0) {
        return -1;
    }
    npy_intp sw[2] = {sx[0], si[1]};
    if (gmoe_arr(ow, "w", NPY_FLOAT32, 2, sw, 0, 0, w) < 0 ||
        gmoe_check_idx(*idx, (size_t)(si[0] * si[1]), d->E) < 0 ||
        gmoe_check_prod(sx[0], si[1] > 0 ? si[1] : 1, d->inner) < 0) {
        return -1;
    }
    d->T = (int)sx[0];
    d->K = (int)si[1];
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
    void *x, *idx, *w;
    eg_moe_ffn_params prm;
    eg_moe_ffn_dims d = {kind, 0, 0, 0, 0, 0, 0, scale, p, seed};
    if (ffn_inputs(kind, p, ox, oidx, ow, o, &x, &idx, &w, &prm, &d) < 0) {
        return NULL;
    }
    const npy_intp M = (npy_intp)d.T * d.K;
    PyObject *out[4] = {
        gmoe_new_f32(2, d.T, d.H, 0, 0), gmoe_new_f32(2, M, d.inner, 0, 0),
        kind == EG_MOE_SWIGLU ? gmoe_new_f32(2, M, d.inner, 0, 0) : (Py_INCREF(Py_None), Py_None),
        gmoe_new_f32(3, 3, M, d.r, 0),
    };
    if (gmoe_all_made(out, 4) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    float *Up = out[2] == Py_None ? NULL : F32(out[2]);
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    st = eg_moe_ffn_forward(F32(out[0]), F32(out[1]), Up, F32(out[3]), x, idx, w, &prm, &d,
                            &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        for (int i = 0; i < 4; i++) {
            Py_DECREF(out[i]);
        }
        return eg_py_raise(&err, NULL);
    }
    return Py_BuildValue("(NNNN)", out[0], out[1], out[2], out[3]);
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
    void *x, *idx, *w, *dy, *G, *U, *Hl;
    eg_moe_ffn_params prm;
    eg_moe_ffn_grads grd;
    eg_moe_ffn_dims d = {kind, 0, 0, 0, 0, 0, 0, scale, p, seed};
    if (ffn_inputs(kind, p, ox, oidx, ow, o, &x, &idx, &w, &prm, &d) < 0) {
        return NULL;
    }
    const int swi = kind == EG_MOE_SWIGLU;
    const npy_intp M = (npy_intp)d.T * d.K;
    npy_intp sy[2] = {d.T, d.H}, sG[2] = {M, d.inner}, sU[2] = {M, d.inner}, sH[3] = {3, M, d.r};
    if (gmoe_arr(ody, "dy", NPY_FLOAT32, 2, sy, 0, 0, &dy) < 0 ||
        gmoe_arr(oG, "G", NPY_FLOAT32, 2, sG, 0, 0, &G) < 0 ||
        gmoe_arr(oU, "U", NPY_FLOAT32, 2, sU, 0, !swi, &U) < 0 ||
        gmoe_arr(oH, "Hl", NPY_FLOAT32, 3, sH, 0, 0, &Hl) < 0) {
        return NULL;
    }
    const npy_intp in[3] = {d.H, d.H, d.inner}, out[3] = {d.inner, d.inner, d.H};
    for (int q = 0; q < 3; q++) {
        npy_intp sa[3] = {d.E, d.r, in[q]}, sb[3] = {d.E, out[q], d.r};
        void *pa, *pb;
        int opt = q == 1 && !swi;
        if (gmoe_arr(og[q], "dA", NPY_FLOAT32, 3, sa, 1, opt, &pa) < 0 ||
            gmoe_arr(og[3 + q], "dB", NPY_FLOAT32, 3, sb, 1, opt, &pb) < 0) {
            return NULL;
        }
        grd.A[q] = pa;
        grd.B[q] = pb;
    }
    PyObject *res[2] = {gmoe_new_f32(2, d.T, d.H, 0, 0), gmoe_new_f32(2, d.T, d.K, 0, 0)};
    if (gmoe_all_made(res, 2) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    st = eg_moe_ffn_backward(F32(res[0]), F32(res[1]), &grd, dy, x, idx, w, G, swi ? U : NULL,
                             Hl, &prm, &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        Py_DECREF(res[0]);
        Py_DECREF(res[1]);
        return eg_py_raise(&err, NULL);
    }
    return Py_BuildValue("(NN)", res[0], res[1]);
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
    if (gmoe_arr(ol, "logits", NPY_FLOAT32, 2, sl, 0, 0, &lg) < 0) {
        return NULL;
    }
    if (K < 1 || K > sl[1]) {
        PyErr_Format(PyExc_ValueError, "top_k must be in [1, %zd], got %d", (Py_ssize_t)sl[1], K);
        return NULL;
    }
    npy_intp dk[2] = {sl[0], K};
    PyObject *o[4] = {gmoe_new_f32(2, sl[0], sl[1], 0, 0), gmoe_new_f32(1, sl[0], 0, 0, 0),
                      PyArray_ZEROS(2, dk, NPY_INT32, 0), gmoe_new_f32(2, sl[0], K, 0, 0)};
    if (gmoe_all_made(o, 4) < 0) {
        return NULL;
    }
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    eg_router_topk_forward(F32(o[0]), F32(o[1]), PyArray_DATA((PyArrayObject *)o[2]), F32(o[3]),
                           lg, (int)sl[0], (int)sl[1], K, renorm);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NNNN)", o[0], o[1], o[2], o[3]);
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
    if (gmoe_arr(op, "probs", NPY_FLOAT32, 2, sp, 0, 0, &p) < 0) {
        return NULL;
    }
    si[0] = sp[0];
    if (gmoe_arr(oi, "idx", NPY_INT32, 2, si, 0, 0, &idx) < 0 ||
        gmoe_arr(ow, "w", NPY_FLOAT32, 2, si, 0, 0, &w) < 0 ||
        gmoe_arr(odw, "dw", NPY_FLOAT32, 2, si, 0, 0, &dw) < 0 ||
        gmoe_arr(odp, "dprobs", NPY_FLOAT32, 2, sp, 0, 1, &dp) < 0 ||
        gmoe_check_idx(idx, (size_t)(si[0] * si[1]), (int)sp[1]) < 0) {
        return NULL;
    }
    PyObject *dl = gmoe_new_f32(2, sp[0], sp[1], 0, 0);
    if (dl == NULL) {
        return NULL;
    }
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    eg_router_topk_backward(F32(dl), dw, dp, p, idx, w, (int)sp[0], (int)sp[1], (int)si[1], renorm);
    Py_END_ALLOW_THREADS
    return dl;
}

static PyObject *py_linear_router_forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *oW;
    if (!PyArg_ParseTuple(args, "OO", &ox, &oW)) {
        return NULL;
    }
    npy_intp sx[2], sW[2];
    void *x, *W;
    if (x_and_weight(ox, oW, "Wg", sx, sW, &x, &W) < 0) {
        return NULL;
    }
    PyObject *lg = gmoe_new_f32(2, sx[0], sW[0], 0, 0);
    if (lg == NULL) {
        return NULL;
    }
    eg_py_sync_threads();   /* this thread's OpenMP team size */
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
    npy_intp sx[2], sW[2], sl[2];
    void *dx, *dW, *dl, *x, *W;
    if (x_and_weight(ox, oW, "Wg", sx, sW, &x, &W) < 0) {
        return NULL;
    }
    sl[0] = sx[0];
    sl[1] = sW[0];
    if (gmoe_arr(odx, "dx", NPY_FLOAT32, 2, sx, 1, 0, &dx) < 0 ||
        gmoe_arr(odW, "dWg", NPY_FLOAT32, 2, sW, 1, 0, &dW) < 0 ||
        gmoe_arr(odl, "dlogits", NPY_FLOAT32, 2, sl, 0, 0, &dl) < 0) {
        return NULL;
    }
    eg_py_sync_threads();   /* this thread's OpenMP team size */
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
    if (gmoe_arr(o[0], "x", NPY_FLOAT32, 2, sx, 0, 0, &pp[0]) < 0) {
        return -1;
    }
    npy_intp sX[2] = {ANY, sx[1]}, sWs[2] = {ANY, sx[1]};
    if (gmoe_arr(o[1], "X", NPY_FLOAT32, 2, sX, 0, 0, &pp[1]) < 0 ||
        gmoe_arr(o[2], "Ws", NPY_FLOAT32, 2, sWs, 0, 0, &pp[2]) < 0) {
        return -1;
    }
    npy_intp g = sWs[0], N = sX[0];
    npy_intp sWt[2] = {g, sx[1]}, sWl[3] = {ANY, g, g}, sp[1] = {g}, sA[2] = {N + 1, N + 1};
    if (gmoe_arr(o[3], "Wt", NPY_FLOAT32, 2, sWt, 0, 0, &pp[3]) < 0 ||
        gmoe_arr(o[4], "Wl", NPY_FLOAT32, 3, sWl, 0, 0, &pp[4]) < 0 ||
        gmoe_arr(o[5], "pvec", NPY_FLOAT32, 1, sp, 0, 0, &pp[5]) < 0 ||
        gmoe_arr(o[6], "Ahat", NPY_FLOAT32, 2, sA, 0, 0, &pp[6]) < 0) {
        return -1;
    }
    if (sWl[0] < 1 || N < 1 || g < 1) {
        PyErr_SetString(PyExc_ValueError, "graph router needs >= 1 layer, expert and width");
        return -1;
    }
    if (gmoe_check_prod(sx[0], N + 1, g) < 0) {
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
    PyObject *out[3] = {gmoe_new_f32(2, d.T, d.N, 0, 0), gmoe_new_f32(2, d.T, d.g, 0, 0),
                        gmoe_new_f32(4, d.L, d.T, d.N + 1, d.g)};
    if (gmoe_all_made(out, 3) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    st = eg_graph_router_forward(F32(out[0]), F32(out[1]), F32(out[2]), pp[0], pp[1], pp[2],
                                 pp[3], pp[4], pp[5], pp[6], &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        for (int i = 0; i < 3; i++) {
            Py_DECREF(out[i]);
        }
        return eg_py_raise(&err, NULL);
    }
    return Py_BuildValue("(NNN)", out[0], out[1], out[2]);
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
    if (gmoe_arr(odx, "dx", NPY_FLOAT32, 2, sx, 1, 0, &dx) < 0 ||
        gmoe_arr(odWs, "dWs", NPY_FLOAT32, 2, sW, 1, 0, &dWs) < 0 ||
        gmoe_arr(odWt, "dWt", NPY_FLOAT32, 2, sW, 1, 0, &dWt) < 0 ||
        gmoe_arr(odWl, "dWl", NPY_FLOAT32, 3, sWl, 1, 0, &dWl) < 0 ||
        gmoe_arr(odp, "dpvec", NPY_FLOAT32, 1, sp, 1, 0, &dp) < 0 ||
        gmoe_arr(odl, "dlogits", NPY_FLOAT32, 2, sl, 0, 0, &dl) < 0 ||
        gmoe_arr(oZt, "Zt", NPY_FLOAT32, 2, sZt, 0, 0, &Zt) < 0 ||
        gmoe_arr(oZ, "Z", NPY_FLOAT32, 4, sZ, 0, 0, &Z) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    st = eg_graph_router_backward(dx, dWs, dWt, dWl, dp, dl, pp[0], pp[1], pp[2], pp[3], pp[4],
                                  pp[5], pp[6], Zt, Z, &d, &err);
    Py_END_ALLOW_THREADS
    if (st != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
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
    {"_gmoe_linear_router_forward", py_linear_router_forward, METH_VARARGS, "(x, Wg) -> logits"},
    {"_gmoe_linear_router_backward", py_linear_router_backward, METH_VARARGS,
     "(dx in/out, dWg in/out, dlogits, x, Wg)"},
    {"_gmoe_graph_forward", py_graph_forward, METH_VARARGS,
     "(x, X, Ws, Wt, Wl, pvec, Ahat) -> (logits, Zt, Z)"},
    {"_gmoe_graph_backward", py_graph_backward, METH_VARARGS,
     "(dx, dWs, dWt, dWl, dpvec in/out, dlogits, x, X, Ws, Wt, Wl, pvec, Ahat, Zt, Z)"},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_gmoe(PyObject *module)
{
    if (PyModule_AddFunctions(module, gmoe_methods) < 0) {
        return -1;
    }
    return gmoe_init_losses(module);
}
