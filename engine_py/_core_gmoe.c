/*
 * _core_gmoe.c — Python glue for the MoE-LoRA FFN (csrc/gmoe/moe_ffn.c,
 * eg_gmoe.h) and the GMoE module table. The other GMoE glue files:
 * _core_gmoe_lora.c (LoRA linear), _core_gmoe_router.c (top-k, linear and
 * graph routers), _core_gmoe_losses.c (router and GMoE losses, AdamW); the
 * argument helpers all of them use are defined here (_core_gmoe.h). These are
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
#include "eg_bf16.h"

/* ---------------------------------------------------------------- helpers */
int gmoe_check_prod(npy_intp a, npy_intp b, npy_intp c)
{
    size_t x;
    if (eg_mul_ovf((size_t)a, (size_t)b, &x) || eg_mul_ovf(x, (size_t)c, &x) || x > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "sizes too large");
        return -1;
    }
    return 0;
}

int check_dropout(float p)
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
int x_and_weight(PyObject *ox, PyObject *oW, const char *wname, npy_intp *sx, npy_intp *sW,
                 void **x, void **W)
{
    sx[0] = sx[1] = sW[0] = ANY;
    if (gmoe_arr(ox, "x", NPY_FLOAT32, 2, sx, 0, 0, x) < 0) {
        return -1;
    }
    sW[1] = sx[1];
    return gmoe_arr(oW, wname, NPY_FLOAT32, 2, sW, 0, 0, W);
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
    if (eg_py_check_range(r, 1, 64, NULL, "LoRA rank r") < 0 ||
        eg_py_check_range(E, 1, LLONG_MAX, NULL, "number of experts") < 0) {
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
    int prec = 0;
    if (!PyArg_ParseTuple(args, "iOOOOOOOOOOOOOOffK|i", &kind, &ox, &oidx, &ow, &o[0], &o[1],
                          &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &scale,
                          &p, &seed, &prec)) {
        return NULL;
    }
    if (prec != EG_PREC_F32 && prec != EG_PREC_BF16) {
        return PyErr_Format(PyExc_ValueError, "precision code %d: 0 (float32) or 1 (bfloat16)", prec);
    }
    void *x, *idx, *w;
    eg_moe_ffn_params prm;
    eg_moe_ffn_dims d = {kind, 0, 0, 0, 0, 0, 0, scale, p, seed, prec};
    if (ffn_inputs(kind, p, ox, oidx, ow, o, &x, &idx, &w, &prm, &d) < 0) {
        return NULL;
    }
    const npy_intp M = (npy_intp)d.T * d.K;
    PyObject *out[4] = {
        gmoe_new_f32(2, d.T, d.H, 0, 0), gmoe_new_f32(2, M, d.inner, 0, 0),
        kind == EG_MOE_SWIGLU ? gmoe_new_f32(2, M, d.inner, 0, 0) : (Py_INCREF(Py_None), Py_None),
        gmoe_new_f32(3, 3, M, d.r, 0),
    };
    if (eg_py_all_made(out, 4) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    float *Up = out[2] == Py_None ? NULL : F32(out[2]);
    EG_PY_NOGIL(st = eg_moe_ffn_forward(F32(out[0]), F32(out[1]), Up, F32(out[3]), x, idx, w,
                                        &prm, &d, &err));
    return eg_py_result(st, &err, NULL, Py_BuildValue("(NNNN)", out[0], out[1], out[2], out[3]));
}

static PyObject *py_ffn_backward(PyObject *self, PyObject *args)
{
    int kind;
    PyObject *ody, *ox, *oidx, *ow, *oG, *oU, *oH, *o[11], *og[6];
    float scale, p;
    unsigned long long seed;
    int prec = 0;
    if (!PyArg_ParseTuple(args, "iOOOOOOOOOOOOOOOOOOOOOOOOffK|i", &kind, &ody, &ox, &oidx, &ow,
                          &oG, &oU, &oH, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &o[8], &o[9], &o[10], &og[0], &og[1], &og[2], &og[3], &og[4], &og[5],
                          &scale, &p, &seed, &prec)) {
        return NULL;
    }
    if (prec != EG_PREC_F32 && prec != EG_PREC_BF16) {
        return PyErr_Format(PyExc_ValueError, "precision code %d: 0 (float32) or 1 (bfloat16)", prec);
    }
    void *x, *idx, *w, *dy, *G, *U, *Hl;
    eg_moe_ffn_params prm;
    eg_moe_ffn_grads grd;
    eg_moe_ffn_dims d = {kind, 0, 0, 0, 0, 0, 0, scale, p, seed, prec};
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
    if (eg_py_all_made(res, 2) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    EG_PY_NOGIL(st = eg_moe_ffn_backward(F32(res[0]), F32(res[1]), &grd, dy, x, idx, w, G,
                                         swi ? U : NULL, Hl, &prm, &d, &err));
    return eg_py_result(st, &err, NULL, Py_BuildValue("(NN)", res[0], res[1]));
}

static PyMethodDef gmoe_methods[] = {
    {"_gmoe_ffn_forward", py_ffn_forward, METH_VARARGS,
     "(kind, x, idx, w, W_in, b_in, W_up, W_out, b_out, A0, A1, A2, B0, B1, B2, scale, p, seed)"
     " -> (y, G, U|None, Hl)"},
    {"_gmoe_ffn_backward", py_ffn_backward, METH_VARARGS,
     "(kind, dy, x, idx, w, G, U, Hl, <11 weights>, dA0, dA1, dA2, dB0, dB1, dB2 in/out, scale, p,"
     " seed) -> (dx, dw)"},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_gmoe(PyObject *module)
{
    PyMethodDef *tables[] = {gmoe_methods, gmoe_lora_methods, gmoe_router_methods,
                             gmoe_loss_methods};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        if (PyModule_AddFunctions(module, tables[i]) < 0) {
            return -1;
        }
    }
    return 0;
}
