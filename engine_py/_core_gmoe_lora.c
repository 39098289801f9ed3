/*
 * _core_gmoe_lora.c — Python glue for the LoRA linear layer (csrc/gmoe/lora.c,
 * eg_gmoe.h): `_gmoe_lora_forward` / `_gmoe_lora_backward`, private
 * building blocks of engine_py.gmoe. Argument helpers: _core_gmoe.h. Arrays
 * are taken as they are (see _core_gmoe.c).
 */
#include "_core_gmoe.h"

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
    if (eg_py_all_made(o, 2) < 0) {
        return NULL;
    }
    eg_err err = {0};
    eg_status st;
    EG_PY_NOGIL(st = eg_lora_linear_forward(F32(o[0]), F32(o[1]), x, W, b, A, B, (int)sx[0],
                                            (int)sx[1], (int)sW[0], (int)sA[0], scale, p, seed,
                                            &err));
    return eg_py_result(st, &err, NULL, Py_BuildValue("(NN)", o[0], o[1]));
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
    EG_PY_NOGIL(st = eg_lora_linear_backward(F32(dx), dA, dB, dout, x, W, A, B, h, (int)sx[0],
                                             (int)sx[1], (int)sW[0], (int)sA[0], scale, p, seed,
                                             &err));
    return eg_py_result(st, &err, NULL, dx);
}

PyMethodDef gmoe_lora_methods[] = {
    {"_gmoe_lora_forward", py_lora_forward, METH_VARARGS,
     "(x, W, bias|None, A, B, scale, p, seed) -> (out, hA)"},
    {"_gmoe_lora_backward", py_lora_backward, METH_VARARGS,
     "(dout, x, W, A, B, hA, dA in/out, dB in/out, scale, p, seed) -> dx"},
    {NULL, NULL, 0, NULL},
};
