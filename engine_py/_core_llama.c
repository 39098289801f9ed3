/*
 * _core_llama.c — Python glue for the Llama-family decoders
 * (csrc/models/llama.c).
 *
 * LlamaModel(vocab_size, hidden_size, num_layers, num_heads, num_kv_heads,
 *            head_dim, intermediate_size, max_position, rms_norm_eps,
 *            rope_theta, rope_mode, qkv_bias, precision="float32")
 *     precision "bfloat16" rounds the products' inputs to bf16 (eg_bf16.h);
 *     "int8" multiplies int8 activations by the weights' codes (eg_quant.h)
 *     weight_specs() -> [(name, shape)]
 *     set_weight(name, data, type, shape): data is any contiguous buffer
 *         (a GGUF raw() view, a NumPy array) holding the tensor in ggml type
 *         `type`; matrices are read in place, so the model keeps a
 *         reference to `data` for its lifetime
 *     check_complete(), encode_layers(ids, offsets, layers, pooling="mean"),
 *     flops(lengths), config
 *
 * Arguments are checked under the GIL; the core runs without it.
 */
#include "_core.h"

#include "eg_bf16.h"
#include "eg_llama.h"
#include "eg_ops.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    eg_llama *model;
    eg_bert_state state;
    PyObject *keep;  /* dict name -> the object whose bytes a weight reads */
    int busy;
    int users;
} LlamaModelObject;

static int model_init(LlamaModelObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"vocab_size", "hidden_size", "num_layers", "num_heads",
                             "num_kv_heads", "head_dim", "intermediate_size", "max_position",
                             "rms_norm_eps", "rope_theta", "rope_mode", "qkv_bias", "precision",
                             NULL};
    eg_llama_config c;
    memset(&c, 0, sizeof c);
    const char *mode = NULL;
    int bias = 0;
    PyObject *prec = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiiiiiifds|pO", kwlist, &c.vocab_size,
                                     &c.hidden_size, &c.num_layers, &c.num_heads, &c.num_kv_heads,
                                     &c.head_dim, &c.intermediate_size, &c.max_position,
                                     &c.rms_norm_eps, &c.rope_theta, &mode, &bias, &prec)
        || eg_py_precision_arg(prec, "precision", &c.precision) < 0) {
        return -1;
    }
    if (strcmp(mode, "norm") == 0) {
        c.rope_mode = EG_ROPE_NORM;
    } else if (strcmp(mode, "neox") == 0) {
        c.rope_mode = EG_ROPE_NEOX;
    } else {
        PyErr_Format(PyExc_ValueError, "rope_mode must be 'norm' or 'neox', got '%s'", mode);
        return -1;
    }
    c.qkv_bias = bias;
    if (eg_py_init_once(self->model, "LlamaModel") < 0) {
        return -1;
    }
    self->keep = PyDict_New();
    if (self->keep == NULL) {
        return -1;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_llama *m = NULL;
    eg_status st = eg_llama_create(&m, &c, &err);
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        return -1;
    }
    self->model = m;
    eg_bert_state_init(&self->state);
    return 0;
}

static void model_dealloc(LlamaModelObject *self)
{
    eg_bert_state_free(&self->state);
    eg_llama_free(self->model);
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int model_ready(LlamaModelObject *self)
{
    return eg_py_ready(self->model, "LlamaModel");
}

static PyObject *model_weight_specs(LlamaModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (model_ready(self) < 0) {
        return NULL;
    }
    size_t n = eg_llama_num_weights(self->model);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name;
        int nd;
        int64_t shape[2];
        eg_llama_weight_info(self->model, i, &name, &nd, shape);
        PyObject *item = nd == 1 ? Py_BuildValue("(s(L))", name, (long long)shape[0])
                                 : Py_BuildValue("(s(LL))", name, (long long)shape[0],
                                                 (long long)shape[1]);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    return list;
}

static PyObject *model_set_weight(LlamaModelObject *self, PyObject *args)
{
    const char *name;
    PyObject *data, *shape_obj;
    int type;
    if (!PyArg_ParseTuple(args, "sOiO", &name, &data, &type, &shape_obj) || model_ready(self) < 0) {
        return NULL;
    }
    if (self->users > 0 || self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "cannot change LlamaModel weights while it is computing");
        return NULL;
    }
    PyObject *shape_seq = PySequence_Fast(shape_obj, "shape must be a sequence of ints");
    if (shape_seq == NULL) {
        return NULL;
    }
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(shape_seq);
    int64_t shape[2] = {0, 0};
    if (nd < 1 || nd > 2) {
        Py_DECREF(shape_seq);
        PyErr_Format(PyExc_ValueError, "%s: shape must have 1 or 2 dims, got %zd", name, nd);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(shape_seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(shape_seq);
            return NULL;
        }
        shape[i] = v;
    }
    Py_DECREF(shape_seq);
    size_t bs, ts;
    if (eg_ggml_type_traits(type, &bs, &ts) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: tensor type %s (%d) is not supported (supported: %s)",
                     name, eg_ggml_type_name(type), type, eg_ggml_supported_names());
        return NULL;
    }
    if (shape[0] <= 0 || (nd == 2 && shape[1] <= 0)) {
        PyErr_Format(PyExc_ValueError, "%s: bad shape", name);
        return NULL;
    }
    /* bytes the tensor occupies: rows * (row length / block) * block bytes */
    size_t row = (size_t)(nd == 2 ? shape[1] : shape[0]), rows = nd == 2 ? (size_t)shape[0] : 1;
    size_t want, tmp;
    if (row % bs != 0) {
        PyErr_Format(PyExc_ValueError, "%s: row length %zu is not a multiple of %s's block size %zu",
                     name, row, eg_ggml_type_name(type), bs);
        return NULL;
    }
    if (eg_mul_ovf(row / bs, ts, &tmp) || eg_mul_ovf(tmp, rows, &want)) {
        PyErr_Format(PyExc_OverflowError, "%s: tensor size overflows", name);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if ((size_t)view.len != want) {
        PyErr_Format(PyExc_ValueError, "%s: %s data of shape %s needs %zu bytes, got %zd", name,
                     eg_ggml_type_name(type), nd == 2 ? "(rows, cols)" : "(n,)", want, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_llama_set_weight(self->model, name, type, (int)nd, shape, view.buf, &err);
    PyBuffer_Release(&view);
    if (st != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
    /* the model reads matrices in place: keep their owner alive */
    if (PyDict_SetItemString(self->keep, name, data) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *model_check_complete(LlamaModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (model_ready(self) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_llama_check_complete(self->model, &err);
    return eg_py_finish(NULL, st, &err, NULL);
}

static eg_status llama_embed_fn(const void *m, eg_bert_state *s, const int32_t *ids,
                                const int64_t *offsets, int n_seq, eg_err *err)
{
    return eg_llama_embed((const eg_llama *)m, s, ids, offsets, n_seq, err);
}

static eg_status llama_run_fn(const void *m, eg_bert_state *s, int last, eg_err *err)
{
    return eg_llama_run_layers((const eg_llama *)m, s, last, err);
}

static PyTypeObject LlamaModelType;

int eg_py_llama_encoder_of(PyObject *obj, const char *pooling, eg_py_encoder *e)
{
    if (!PyObject_TypeCheck(obj, &LlamaModelType)) {
        return 0;
    }
    LlamaModelObject *self = (LlamaModelObject *)obj;
    if (model_ready(self) < 0) {
        return -1;
    }
    void (*pool)(const eg_bert_state *, float *);
    if (strcmp(pooling, "mean") == 0) {
        pool = eg_bert_pool;
    } else if (strcmp(pooling, "last") == 0) {
        pool = eg_state_pool_last;
    } else {
        PyErr_Format(PyExc_ValueError, "pooling must be 'mean' or 'last', got '%s'", pooling);
        return -1;
    }
    const eg_llama_config *c = eg_llama_get_config(self->model);
    *e = (eg_py_encoder){
        .model = self->model, .state = &self->state, .busy = &self->busy, .users = &self->users,
        .what = "LlamaModel", .vocab_size = c->vocab_size, .num_layers = c->num_layers,
        .hidden_size = c->hidden_size, .max_position = c->max_position,
        .max_position_name = "the context length", .embed = llama_embed_fn,
        .run_layers = llama_run_fn, .pool = pool,
    };
    return 1;
}

static PyObject *model_encode_layers(LlamaModelObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ids", "offsets", "layers", "pooling", NULL};
    PyObject *ids_obj, *off_obj, *layers_obj;
    const char *pooling = "mean";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|s", kwlist, &ids_obj, &off_obj,
                                     &layers_obj, &pooling)) {
        return NULL;
    }
    eg_py_encoder e;
    if (eg_py_llama_encoder_of((PyObject *)self, pooling, &e) < 0) {
        return NULL;
    }
    return eg_py_encode_layers(&e, ids_obj, off_obj, layers_obj);
}

static PyObject *model_flops(LlamaModelObject *self, PyObject *arg)
{
    if (model_ready(self) < 0) {
        return NULL;
    }
    PyArrayObject *len = eg_py_vector(arg, NPY_INT64, 0, INT32_MAX, "lengths");
    if (len == NULL) {
        return NULL;
    }
    double f = eg_llama_flops(eg_llama_get_config(self->model), (const int64_t *)PyArray_DATA(len),
                              (int)PyArray_DIM(len, 0));
    Py_DECREF(len);
    return PyFloat_FromDouble(f);
}

static PyObject *model_get_config(LlamaModelObject *self, void *closure)
{
    (void)closure;
    if (model_ready(self) < 0) {
        return NULL;
    }
    const eg_llama_config *c = eg_llama_get_config(self->model);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:d,s:d,s:s,s:O,s:s}", "vocab_size",
                         c->vocab_size, "hidden_size", c->hidden_size, "num_layers", c->num_layers,
                         "num_heads", c->num_heads, "num_kv_heads", c->num_kv_heads, "head_dim",
                         c->head_dim, "intermediate_size", c->intermediate_size, "max_position",
                         c->max_position, "rms_norm_eps", (double)c->rms_norm_eps, "rope_theta",
                         c->rope_theta, "rope_mode", c->rope_mode == EG_ROPE_NEOX ? "neox" : "norm",
                         "qkv_bias", c->qkv_bias ? Py_True : Py_False, "precision",
                         c->precision == EG_PREC_BF16 ? "bfloat16"
                         : c->precision == EG_PREC_INT8 ? "int8" : "float32");
}

static PyMethodDef model_methods[] = {
    {"weight_specs", (PyCFunction)model_weight_specs, METH_NOARGS,
     "weight_specs()\n--\n\nList of (GGUF name, shape) of every weight the model needs."},
    {"set_weight", (PyCFunction)model_set_weight, METH_VARARGS,
     "set_weight(name, data, type, shape)\n--\n\nGive a weight its bytes (ggml type id); "
     "matrices are read in place and `data` is kept alive."},
    {"check_complete", (PyCFunction)model_check_complete, METH_NOARGS,
     "check_complete()\n--\n\nValueError naming the first weight never set."},
    {"encode_layers", (PyCFunction)(void (*)(void))model_encode_layers, METH_VARARGS | METH_KEYWORDS,
     "encode_layers(ids, offsets, layers, pooling='mean')\n--\n\nPooled hidden states, float32 "
     "(len(layers), n_seq, hidden): ids int32 packed, offsets int64 (n_seq + 1); pooling "
     "'mean' (every token) or 'last' (the last token)."},
    {"flops", (PyCFunction)model_flops, METH_O,
     "flops(lengths)\n--\n\nFLOPs of all layers on texts of these lengths."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"config", (getter)model_get_config, NULL, "the hyper-parameters (dict)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LlamaModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.LlamaModel",
    .tp_basicsize = sizeof(LlamaModelObject),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LlamaModel(vocab_size, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, "
              "intermediate_size, max_position, rms_norm_eps, rope_theta, rope_mode, "
              "qkv_bias=False)\n--\n\n"
              "A Llama-family decoder (arch llama or qwen2) used as an encoder (C core).",
    .tp_methods = model_methods,
    .tp_getset = model_getset,
    .tp_init = (initproc)model_init,
    .tp_new = PyType_GenericNew,
};

int eg_py_init_llama(PyObject *module)
{
    return eg_py_add_type(module, "LlamaModel", &LlamaModelType);
}
