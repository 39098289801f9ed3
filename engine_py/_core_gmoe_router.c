/*
 * _core_gmoe_router.c — Python glue for the GMoE routers (csrc/gmoe/router.c,
 * graph_router.c, eg_gmoe.h): softmax top-k selection, the linear router and
 * the graph (GCN) router, forward and backward; private `_gmoe_*` building
 * blocks of engine_py.gmoe. Argument helpers: _core_gmoe.h. Arrays are taken
 * as they are (see _core_gmoe.c).
 */
#include "_core_gmoe.h"

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
    if (eg_py_check_range(K, 1, sl[1], NULL, "top_k") < 0) {
        return NULL;
    }
    npy_intp dk[2] = {sl[0], K};
    PyObject *o[4] = {gmoe_new_f32(2, sl[0], sl[1], 0, 0), gmoe_new_f32(1, sl[0], 0, 0, 0),
                      PyArray_ZEROS(2, dk, NPY_INT32, 0), gmoe_new_f32(2, sl[0], K, 0, 0)};
    if (eg_py_all_made(o, 4) < 0) {
        return NULL;
    }
    EG_PY_NOGIL(eg_router_topk_forward(F32(o[0]), F32(o[1]), PyArray_DATA((PyArrayObject *)o[2]),
                                       F32(o[3]), lg, (int)sl[0], (int)sl[1], K, renorm));
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
    EG_PY_NOGIL(eg_router_topk_backward(F32(dl), dw, dp, p, idx, w, (int)sp[0], (int)sp[1],
                                        (int)si[1], renorm));
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
    EG_PY_NOGIL(eg_linear_router_forward(F32(lg), x, W, (int)sx[0], (int)sx[1], (int)sW[0]));
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
    EG_PY_NOGIL(eg_linear_router_backward(dx, dW, dl, x, W, (int)sx[0], (int)sx[1], (int)sW[0]));
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
    npy_intp sWt[2] = {g, sx[1]}, sWl[3] = {ANY, g, g}, sp[1] = {g}, spe[2] = {N, g},
             sA[2] = {N + 1, N + 1};
    /* pvec (g): the shared readout; (N, g): one readout row per expert */
    int per_expert = PyArray_Check(o[5]) && PyArray_NDIM((PyArrayObject *)o[5]) == 2;
    if (gmoe_arr(o[3], "Wt", NPY_FLOAT32, 2, sWt, 0, 0, &pp[3]) < 0 ||
        gmoe_arr(o[4], "Wl", NPY_FLOAT32, 3, sWl, 0, 0, &pp[4]) < 0 ||
        (per_expert ? gmoe_arr(o[5], "pvec", NPY_FLOAT32, 2, spe, 0, 0, &pp[5])
                    : gmoe_arr(o[5], "pvec", NPY_FLOAT32, 1, sp, 0, 0, &pp[5])) < 0 ||
        gmoe_arr(o[6], "Ahat", NPY_FLOAT32, 2, sA, 0, 0, &pp[6]) < 0) {
        return -1;
    }
    if (eg_py_check_range(sWl[0], 1, LLONG_MAX, NULL, "graph router: GCN layers") < 0 ||
        eg_py_check_range(N, 1, LLONG_MAX, NULL, "graph router: experts") < 0 ||
        eg_py_check_range(g, 1, LLONG_MAX, NULL, "graph router: width") < 0) {
        return -1;
    }
    if (gmoe_check_prod(sx[0], N + 1, g) < 0) {
        return -1;
    }
    *d = (eg_graph_router_dims){(int)sx[0], (int)sx[1], (int)N, (int)g, (int)sWl[0], per_expert};
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
    if (eg_py_all_made(out, 3) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    EG_PY_NOGIL(st = eg_graph_router_forward(F32(out[0]), F32(out[1]), F32(out[2]), pp[0], pp[1],
                                             pp[2], pp[3], pp[4], pp[5], pp[6], &d, &err));
    return eg_py_result(st, &err, NULL, Py_BuildValue("(NNN)", out[0], out[1], out[2]));
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
    npy_intp sx[2] = {d.T, d.H}, sW[2] = {d.g, d.H}, sWl[3] = {d.L, d.g, d.g},
             sp[2] = {d.per_expert_proj ? d.N : d.g, d.g}, sl[2] = {d.T, d.N},
             sZt[2] = {d.T, d.g}, sZ[4] = {d.L, d.T, d.N + 1, d.g};
    if (gmoe_arr(odx, "dx", NPY_FLOAT32, 2, sx, 1, 0, &dx) < 0 ||
        gmoe_arr(odWs, "dWs", NPY_FLOAT32, 2, sW, 1, 0, &dWs) < 0 ||
        gmoe_arr(odWt, "dWt", NPY_FLOAT32, 2, sW, 1, 0, &dWt) < 0 ||
        gmoe_arr(odWl, "dWl", NPY_FLOAT32, 3, sWl, 1, 0, &dWl) < 0 ||
        gmoe_arr(odp, "dpvec", NPY_FLOAT32, d.per_expert_proj ? 2 : 1, sp, 1, 0, &dp) < 0 ||
        gmoe_arr(odl, "dlogits", NPY_FLOAT32, 2, sl, 0, 0, &dl) < 0 ||
        gmoe_arr(oZt, "Zt", NPY_FLOAT32, 2, sZt, 0, 0, &Zt) < 0 ||
        gmoe_arr(oZ, "Z", NPY_FLOAT32, 4, sZ, 0, 0, &Z) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    EG_PY_NOGIL(st = eg_graph_router_backward(dx, dWs, dWt, dWl, dp, dl, pp[0], pp[1], pp[2],
                                              pp[3], pp[4], pp[5], pp[6], Zt, Z, &d, &err));
    return eg_py_finish(NULL, st, &err, NULL);
}

PyMethodDef gmoe_router_methods[] = {
    {"_gmoe_topk_forward", py_topk_forward, METH_VARARGS,
     "(logits, K, renorm) -> (probs, lse, idx, w)"},
    {"_gmoe_topk_backward", py_topk_backward, METH_VARARGS,
     "(dw, dprobs|None, probs, idx, w, renorm) -> dlogits"},
    {"_gmoe_linear_router_forward", py_linear_router_forward, METH_VARARGS, "(x, Wg) -> logits"},
    {"_gmoe_linear_router_backward", py_linear_router_backward, METH_VARARGS,
     "(dx in/out, dWg in/out, dlogits, x, Wg)"},
    {"_gmoe_graph_forward", py_graph_forward, METH_VARARGS,
     "(x, X, Ws, Wt, Wl, pvec (g) or (N, g), Ahat) -> (logits, Zt, Z)"},
    {"_gmoe_graph_backward", py_graph_backward, METH_VARARGS,
     "(dx, dWs, dWt, dWl, dpvec in/out, dlogits, x, X, Ws, Wt, Wl, pvec, Ahat, Zt, Z)"},
    {NULL, NULL, 0, NULL},
};
