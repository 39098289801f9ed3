/*
 * _core_bert.c — Python glue for the BERT-family encoder (csrc/models/bert.c).
 *
 * Types:
 *   BertModel(vocab_size, hidden_size, num_layers, num_heads,
 *             intermediate_size, max_position, type_vocab_size, layer_norm_eps)
 *       param_specs() -> [(name, shape)], set_param(name, float32 array),
 *       get_param(name) -> copy, check_complete(), num_floats,
 *       encode_layers(ids, offsets, layers) -> float32 (len(layers), n_seq, D),
 *       flops(lengths) -> float
 *   BertState(model): a packed state stepped layer by layer (early exit):
 *       embed(ids, offsets), run_layers(last), pool() -> (n_seq, D),
 *       compact(keep), layer, n_seq, n_tokens
 * Functions: _bench_sgemm(n, reps) -> seconds of `reps` n x n x n sgemms.
 *
 * Arguments are converted and range-checked under the GIL; the core runs
 * with the GIL released. A model counts the calls using it: set_param
 * refuses while any runs, and one object used from two threads at once
 * raises RuntimeError (busy flags).
 */
#include "_core.h"

#include "eg_bert.h"

#include <string.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    eg_bert *model;
    eg_bert_state state; /* used by encode_layers */
    int busy;            /* encode_layers / set_param running */
    int users;           /* calls currently computing with the weights */
} BertModelObject;

typedef struct {
    PyObject_HEAD
    PyObject *owner;      /* the BertModel or LlamaModel the state runs */
    eg_py_encoder enc;    /* the owner's model functions (see _core.h) */
    eg_bert_state state;
    int busy;
} BertStateObject;

static PyTypeObject BertModelType;
static PyTypeObject BertStateType;

/* ------------------------------------------------------------- helpers */

/* Convert and check packed ids (int32 1-D) and offsets (int64 1-D, n+1,
 * from 0, non-decreasing, ending at len(ids)). The core checks lengths and
 * vocabulary ranges with precise messages; here only what keeps the core's
 * reads in bounds. */
int eg_py_convert_batch(PyObject *ids_obj, PyObject *off_obj, PyArrayObject **ids,
                         PyArrayObject **off, int *n_seq)
{
    *ids = eg_py_vector(ids_obj, NPY_INT32, NPY_ARRAY_FORCECAST, NPY_MAX_INTP, "ids");
    if (*ids == NULL) {
        return -1;
    }
    /* n_seq + 1 offsets, n_seq an int */
    *off = eg_py_vector(off_obj, NPY_INT64, 0, INT32_MAX, "offsets");
    if (*off == NULL) {
        return -1;
    }
    npy_intp n_off = PyArray_DIM(*off, 0);
    if (n_off < 1) {
        PyErr_SetString(PyExc_ValueError, "offsets must have n_seq + 1 >= 1 entries");
        return -1;
    }
    const int64_t *o = (const int64_t *)PyArray_DATA(*off);
    if (o[0] != 0) {
        PyErr_Format(PyExc_ValueError, "offsets must start at 0, got %lld", (long long)o[0]);
        return -1;
    }
    for (npy_intp i = 0; i + 1 < n_off; i++) {
        if (o[i + 1] < o[i]) {
            PyErr_Format(PyExc_ValueError, "offsets must not decrease (entry %zd)", (Py_ssize_t)(i + 1));
            return -1;
        }
    }
    if (o[n_off - 1] != (int64_t)PyArray_DIM(*ids, 0)) {
        PyErr_Format(PyExc_ValueError, "offsets end at %lld but there are %zd ids",
                     (long long)o[n_off - 1], (Py_ssize_t)PyArray_DIM(*ids, 0));
        return -1;
    }
    *n_seq = (int)(n_off - 1);
    return 0;
}

/* ------------------------------------------------------------ BertModel */

static int model_init(BertModelObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"vocab_size", "hidden_size", "num_layers", "num_heads",
                             "intermediate_size", "max_position", "type_vocab_size",
                             "layer_norm_eps", NULL};
    eg_bert_config c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiiiiif", kwlist, &c.vocab_size,
                                     &c.hidden_size, &c.num_layers, &c.num_heads,
                                     &c.intermediate_size, &c.max_position,
                                     &c.type_vocab_size, &c.layer_norm_eps)) {
        return -1;
    }
    if (eg_py_init_once(self->model, "BertModel") < 0) {
        return -1;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    eg_bert *m = NULL;
    EG_PY_NOGIL(st = eg_bert_create(&m, &c, &err));
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        return -1;
    }
    self->model = m;
    eg_bert_state_init(&self->state);
    return 0;
}

static void model_dealloc(BertModelObject *self)
{
    eg_bert_state_free(&self->state);
    eg_bert_free(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int model_ready(BertModelObject *self)
{
    return eg_py_ready(self->model, "BertModel");
}

static PyObject *model_param_specs(BertModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (model_ready(self) < 0) {
        return NULL;
    }
    size_t n = eg_bert_num_params(self->model);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name;
        int nd;
        int64_t shape[2];
        eg_bert_param_info(self->model, i, &name, &nd, shape);
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

static PyObject *model_set_param(BertModelObject *self, PyObject *args)
{
    const char *name;
    PyObject *obj;
    PyArrayObject *arr = NULL;
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "sO", &name, &obj) || model_ready(self) < 0) {
        return NULL;
    }
    if (self->users > 0 || self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "cannot change BertModel weights while it is computing");
        return NULL;
    }
    arr = eg_py_array(obj, NPY_FLOAT32, NPY_ARRAY_FORCECAST, -1, NULL, NULL);
    if (arr == NULL) {
        goto fail;
    }
    int nd = PyArray_NDIM(arr);
    int64_t shape[2] = {0, 0};
    for (int i = 0; i < nd && i < 2; i++) {
        shape[i] = (int64_t)PyArray_DIM(arr, i);
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    self->busy = 1;
    EG_PY_NOGIL(st = eg_bert_set_param(self->model, name, (const float *)PyArray_DATA(arr), nd,
                                       shape, &err));
    ret = eg_py_finish(&self->busy, st, &err, NULL);
fail:
    Py_XDECREF(arr);
    return ret;
}

static PyObject *model_get_param(BertModelObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL || model_ready(self) < 0) {
        return NULL;
    }
    size_t count = 0;
    const float *p = eg_bert_get_param(self->model, name, &count);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "unknown BERT tensor %s", name);
        return NULL;
    }
    size_t n = eg_bert_num_params(self->model);
    const char *want = strncmp(name, "bert.", 5) == 0 ? name + 5 : name;
    npy_intp dims[2] = {(npy_intp)count, 0};
    int nd = 1;
    for (size_t i = 0; i < n; i++) {
        const char *nm;
        int d;
        int64_t shape[2];
        eg_bert_param_info(self->model, i, &nm, &d, shape);
        if (strcmp(nm, want) == 0) {
            nd = d;
            dims[0] = (npy_intp)shape[0];
            dims[1] = (npy_intp)shape[1];
            break;
        }
    }
    return eg_py_array_copy(nd, dims, NPY_FLOAT32, p);
}

static PyObject *model_check_complete(BertModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (model_ready(self) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_bert_check_complete(self->model, &err);
    return eg_py_finish(NULL, st, &err, NULL);
}

/* encode_layers for any model that fills packed states (eg_py_encoder in
 * _core.h): BERT here, the Llama family in _core_llama.c. */
PyObject *eg_py_encode_layers(const eg_py_encoder *e, PyObject *ids_obj, PyObject *off_obj,
                              PyObject *layers_obj)
{
    PyArrayObject *ids = NULL, *off = NULL, *layers = NULL, *out = NULL;
    int64_t *goff = NULL;
    int entered = 0;
    int n_seq = 0;
    if (eg_py_convert_batch(ids_obj, off_obj, &ids, &off, &n_seq) < 0) {
        goto fail;
    }
    layers = eg_py_vector(layers_obj, NPY_INT32, 0, INT32_MAX, "layers");
    if (layers == NULL) {
        goto fail;
    }
    const int K = (int)PyArray_DIM(layers, 0);
    const int32_t *lay = (const int32_t *)PyArray_DATA(layers);
    int top = 0;
    for (int k = 0; k < K; k++) {
        if (lay[k] < 0 || lay[k] > e->num_layers) {
            PyErr_Format(PyExc_IndexError, "layer index %d out of range: the model has hidden states 0..%d",
                         (int)lay[k], e->num_layers);
            goto fail;
        }
        top = lay[k] > top ? lay[k] : top;
    }
    npy_intp dims[3] = {K, n_seq, e->hidden_size};
    out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    if (out == NULL) {
        goto fail;
    }
    /* The core checks each group it is given; check the whole batch here
     * first (same messages), so that a bad sequence fails before any work and
     * the message counts sequences and positions from the batch start. */
    {
        const int64_t *o = (const int64_t *)PyArray_DATA(off);
        const int32_t *t = (const int32_t *)PyArray_DATA(ids);
        for (int i = 0; i < n_seq; i++) {
            int64_t len = o[i + 1] - o[i];
            if (len < 1) {
                PyErr_Format(PyExc_ValueError,
                             "sequence %d is empty (every sequence needs at least one token)", i);
                goto fail;
            }
            if (len > e->max_position) {
                PyErr_Format(PyExc_ValueError, "sequence %d has %lld tokens, more than %s %d", i,
                             (long long)len, e->max_position_name, e->max_position);
                goto fail;
            }
        }
        if (eg_py_check_ids(t, NPY_INT32, (size_t)PyArray_DIM(ids, 0), e->vocab_size,
                            PyExc_ValueError,
                            "token id %lld at position %zd is outside the vocabulary [0, %lld)") < 0) {
            goto fail;
        }
    }
    /* offsets of one group of sequences, rebased to start at 0 */
    goff = PyMem_Malloc(((size_t)n_seq + 1) * sizeof(int64_t));
    if (goff == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (eg_py_enter(e->busy, e->what) < 0) {
        goto fail;
    }
    entered = 1;
    (*e->users)++;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = EG_OK;
    int stop = 0;
    float *o = (float *)PyArray_DATA(out);
    const size_t plane = (size_t)n_seq * (size_t)e->hidden_size;
    const int32_t *all_ids = (const int32_t *)PyArray_DATA(ids);
    const int64_t *all_off = (const int64_t *)PyArray_DATA(off);
    /* Sequences are encoded independently (packed, per-sequence attention),
     * so the batch is run in groups of at most EG_PY_CHUNK_TOKENS tokens (at
     * least one sequence each) and a layer at a time, with a signal check
     * between steps: Ctrl-C waits for one layer of one group, not for the
     * whole batch. Results do not depend on the grouping. */
    Py_BEGIN_ALLOW_THREADS
    int s0 = 0;
    do {
        int s1 = s0;
        while (s1 < n_seq && (s1 == s0 || all_off[s1 + 1] - all_off[s0] <= EG_PY_CHUNK_TOKENS)) {
            s1++;
        }
        for (int i = s0; i <= s1; i++) {
            goff[i - s0] = all_off[i] - all_off[s0];
        }
        st = e->embed(e->model, e->state, all_ids + all_off[s0], goff, s1 - s0, &err);
        for (int l = 0; st == EG_OK && !stop && l <= top; l++) {
            if (l > 0) {
                EG_PY_CHECK_SIGNALS(stop);
                if (stop) {
                    break;
                }
                st = e->run_layers(e->model, e->state, l, &err);
            }
            for (int k = 0; st == EG_OK && k < K; k++) {
                if (lay[k] == l) {
                    e->pool(e->state, o + (size_t)k * plane + (size_t)s0 * (size_t)e->hidden_size);
                }
            }
        }
        s0 = s1;
        if (st == EG_OK && !stop && s0 < n_seq) {
            EG_PY_CHECK_SIGNALS(stop);
        }
    } while (st == EG_OK && !stop && s0 < n_seq);
    Py_END_ALLOW_THREADS
    (*e->users)--;
    if (stop) {
        goto fail;   /* KeyboardInterrupt (or what a signal handler raised) is set */
    }
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    PyMem_Free(goff);
    eg_py_leave(e->busy);
    Py_DECREF(ids);
    Py_DECREF(off);
    Py_DECREF(layers);
    return (PyObject *)out;
fail:
    if (entered) {
        eg_py_leave(e->busy);
    }
    PyMem_Free(goff);
    Py_XDECREF(ids);
    Py_XDECREF(off);
    Py_XDECREF(layers);
    Py_XDECREF(out);
    return NULL;
}

static eg_status bert_embed_fn(const void *m, eg_bert_state *s, const int32_t *ids,
                               const int64_t *offsets, int n_seq, eg_err *err)
{
    return eg_bert_embed((const eg_bert *)m, s, ids, offsets, n_seq, err);
}

static eg_status bert_run_fn(const void *m, eg_bert_state *s, int last, eg_err *err)
{
    return eg_bert_run_layers((const eg_bert *)m, s, last, err);
}

static int bert_encoder_of(PyObject *obj, eg_py_encoder *e);

static PyObject *model_encode_layers(BertModelObject *self, PyObject *args)
{
    PyObject *ids_obj, *off_obj, *layers_obj;
    eg_py_encoder e;
    if (!PyArg_ParseTuple(args, "OOO", &ids_obj, &off_obj, &layers_obj)
        || bert_encoder_of((PyObject *)self, &e) < 0) {
        return NULL;
    }
    return eg_py_encode_layers(&e, ids_obj, off_obj, layers_obj);
}

static PyObject *model_flops(BertModelObject *self, PyObject *arg)
{
    if (model_ready(self) < 0) {
        return NULL;
    }
    PyArrayObject *len = eg_py_vector(arg, NPY_INT64, 0, INT32_MAX, "lengths");
    if (len == NULL) {
        return NULL;
    }
    double f = eg_bert_flops(eg_bert_get_config(self->model), (const int64_t *)PyArray_DATA(len),
                             (int)PyArray_DIM(len, 0));
    Py_DECREF(len);
    return PyFloat_FromDouble(f);
}

static PyObject *model_get_num_floats(BertModelObject *self, void *closure)
{
    (void)closure;
    if (model_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromSize_t(eg_bert_num_floats(self->model));
}

static PyObject *model_get_config(BertModelObject *self, void *closure)
{
    (void)closure;
    if (model_ready(self) < 0) {
        return NULL;
    }
    const eg_bert_config *c = eg_bert_get_config(self->model);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:d}", "vocab_size", c->vocab_size,
                         "hidden_size", c->hidden_size, "num_layers", c->num_layers, "num_heads",
                         c->num_heads, "intermediate_size", c->intermediate_size, "max_position",
                         c->max_position, "type_vocab_size", c->type_vocab_size,
                         "layer_norm_eps", (double)c->layer_norm_eps);
}

static PyMethodDef model_methods[] = {
    {"param_specs", (PyCFunction)model_param_specs, METH_NOARGS,
     "param_specs()\n--\n\nList of (name, shape) of every parameter, in load order."},
    {"set_param", (PyCFunction)model_set_param, METH_VARARGS,
     "set_param(name, array)\n--\n\nCopy a float32 tensor in; ValueError names a wrong shape."},
    {"get_param", (PyCFunction)model_get_param, METH_O,
     "get_param(name)\n--\n\nA copy of a parameter (float32)."},
    {"check_complete", (PyCFunction)model_check_complete, METH_NOARGS,
     "check_complete()\n--\n\nValueError naming the first parameter never set."},
    {"encode_layers", (PyCFunction)model_encode_layers, METH_VARARGS,
     "encode_layers(ids, offsets, layers)\n--\n\nMean-pooled hidden states, float32 "
     "(len(layers), n_seq, hidden): ids int32 packed, offsets int64 (n_seq + 1)."},
    {"flops", (PyCFunction)model_flops, METH_O,
     "flops(lengths)\n--\n\nFLOPs of all layers on sequences of these lengths."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    {"num_floats", (getter)model_get_num_floats, NULL, "number of float parameters", NULL},
    {"config", (getter)model_get_config, NULL, "the hyper-parameters (dict)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BertModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.BertModel",
    .tp_basicsize = sizeof(BertModelObject),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BertModel(vocab_size, hidden_size, num_layers, num_heads, intermediate_size, "
              "max_position, type_vocab_size, layer_norm_eps)\n--\n\n"
              "BERT-family encoder weights and a packed forward pass (C core).",
    .tp_methods = model_methods,
    .tp_getset = model_getset,
    .tp_init = (initproc)model_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------ BertState */

/* Fill *e for a BertModel (1), or 0 when obj is not one. */
static int bert_encoder_of(PyObject *obj, eg_py_encoder *e)
{
    if (!PyObject_TypeCheck(obj, &BertModelType)) {
        return 0;
    }
    BertModelObject *m = (BertModelObject *)obj;
    if (model_ready(m) < 0) {
        return -1;
    }
    const eg_bert_config *c = eg_bert_get_config(m->model);
    *e = (eg_py_encoder){
        .model = m->model, .state = &m->state, .busy = &m->busy, .users = &m->users,
        .what = "BertModel", .vocab_size = c->vocab_size, .num_layers = c->num_layers,
        .hidden_size = c->hidden_size, .max_position = c->max_position,
        .max_position_name = "max_position_embeddings", .embed = bert_embed_fn,
        .run_layers = bert_run_fn, .pool = eg_bert_pool,
    };
    return 1;
}

static int state_init(BertStateObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"model", "pooling", NULL};
    PyObject *model;
    const char *pooling = "mean";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|s", kwlist, &model, &pooling)) {
        return -1;
    }
    if (eg_py_init_once(self->owner, "BertState") < 0) {
        return -1;
    }
    eg_py_encoder e;
    int got = bert_encoder_of(model, &e);
    if (got == 0) {
        got = eg_py_llama_encoder_of(model, pooling, &e);
    } else if (got == 1 && strcmp(pooling, "mean") != 0) {
        PyErr_Format(PyExc_ValueError, "a BERT state pools by mean, got pooling='%s'", pooling);
        return -1;
    }
    if (got < 0) {
        return -1;
    }
    if (got == 0) {
        PyErr_Format(PyExc_TypeError, "BertState needs a BertModel or a LlamaModel, got %s",
                     Py_TYPE(model)->tp_name);
        return -1;
    }
    Py_INCREF(model);
    self->owner = model;
    self->enc = e;
    eg_bert_state_init(&self->state);
    return 0;
}

static void state_dealloc(BertStateObject *self)
{
    if (self->owner != NULL) {
        eg_bert_state_free(&self->state);
    }
    Py_XDECREF(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int state_enter(BertStateObject *self)
{
    if (eg_py_enter_ready(self->owner != NULL ? self->enc.model : NULL, &self->busy,
                          "BertState") < 0) {
        return -1;
    }
    (*self->enc.users)++;
    return 0;
}

static void state_leave(BertStateObject *self)
{
    (*self->enc.users)--;
    eg_py_leave(&self->busy);
}

static PyObject *state_embed(BertStateObject *self, PyObject *args)
{
    PyObject *ids_obj, *off_obj;
    PyArrayObject *ids = NULL, *off = NULL;
    PyObject *ret = NULL;
    if (!PyArg_ParseTuple(args, "OO", &ids_obj, &off_obj)) {
        return NULL;
    }
    int n_seq = 0;
    if (eg_py_convert_batch(ids_obj, off_obj, &ids, &off, &n_seq) < 0 || state_enter(self) < 0) {
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = self->enc.embed(self->enc.model, &self->state,
                                     (const int32_t *)PyArray_DATA(ids),
                                     (const int64_t *)PyArray_DATA(off), n_seq, &err));
    state_leave(self);
    ret = eg_py_finish(NULL, st, &err, NULL);
fail:
    Py_XDECREF(ids);
    Py_XDECREF(off);
    return ret;
}

static PyObject *state_run_layers(BertStateObject *self, PyObject *arg)
{
    long long last;
    if (state_enter(self) < 0) {
        return NULL;
    }
    if (eg_py_int_arg(arg, 0, self->enc.num_layers, PyExc_IndexError, "layer (a hidden-state index)",
                      &last) < 0) {
        state_leave(self);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = self->enc.run_layers(self->enc.model, &self->state, (int)last, &err));
    state_leave(self);
    return eg_py_finish(NULL, st, &err, NULL);
}

static PyObject *state_pool(BertStateObject *self, PyObject *noargs)
{
    (void)noargs;
    if (state_enter(self) < 0) {
        return NULL;
    }
    if (self->state.layer < 0) {
        state_leave(self);
        PyErr_SetString(PyExc_RuntimeError, "BertState is empty: call embed first");
        return NULL;
    }
    npy_intp dims[2] = {self->state.n_seq, self->state.hidden};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out == NULL) {
        state_leave(self);
        return NULL;
    }
    float *o = (float *)PyArray_DATA(out);
    EG_PY_NOGIL(self->enc.pool(&self->state, o));
    state_leave(self);
    return (PyObject *)out;
}

static PyObject *state_compact(BertStateObject *self, PyObject *arg)
{
    PyArrayObject *keep = eg_py_vector(arg, NPY_INT32, 0, INT32_MAX, "keep (sequence indices)");
    if (keep == NULL) {
        return NULL;
    }
    if (state_enter(self) < 0) {
        Py_DECREF(keep);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_bert_compact(&self->state, (const int *)PyArray_DATA(keep),
                                   (int)PyArray_DIM(keep, 0), &err);
    state_leave(self);
    Py_DECREF(keep);
    return eg_py_finish(NULL, st, &err, NULL);
}

static PyObject *state_get_layer(BertStateObject *self, void *c) { (void)c; return PyLong_FromLong(self->state.layer); }
static PyObject *state_get_n_seq(BertStateObject *self, void *c) { (void)c; return PyLong_FromLong(self->state.n_seq); }
static PyObject *state_get_n_tok(BertStateObject *self, void *c) { (void)c; return PyLong_FromSize_t(self->state.n_tok); }

static PyMethodDef state_methods[] = {
    {"embed", (PyCFunction)state_embed, METH_VARARGS,
     "embed(ids, offsets)\n--\n\nFill the state with hidden state 0 of the packed sequences."},
    {"run_layers", (PyCFunction)state_run_layers, METH_O,
     "run_layers(last)\n--\n\nAdvance to hidden state `last`."},
    {"pool", (PyCFunction)state_pool, METH_NOARGS,
     "pool()\n--\n\nThe pooled current hidden state (the model's pooling), float32 (n_seq, hidden)."},
    {"compact", (PyCFunction)state_compact, METH_O,
     "compact(keep)\n--\n\nKeep only these sequences (strictly increasing indices)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef state_getset[] = {
    {"layer", (getter)state_get_layer, NULL, "hidden-state index held (-1: empty)", NULL},
    {"n_seq", (getter)state_get_n_seq, NULL, "number of sequences held", NULL},
    {"n_tokens", (getter)state_get_n_tok, NULL, "number of tokens held", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BertStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.BertState",
    .tp_basicsize = sizeof(BertStateObject),
    .tp_dealloc = (destructor)state_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BertState(model, pooling='mean')\n--\n\nPacked hidden states of a BertModel or a "
              "LlamaModel, stepped layer by layer (early exit); pooling 'mean' or, for a "
              "LlamaModel, 'last'.",
    .tp_methods = state_methods,
    .tp_getset = state_getset,
    .tp_init = (initproc)state_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------- sgemm bench */

static PyObject *py_bench_sgemm(PyObject *self, PyObject *args)
{
    (void)self;
    int n, reps, m = -1, k = -1;
    if (!PyArg_ParseTuple(args, "ii|ii", &n, &reps, &m, &k)) {
        return NULL;
    }
    m = m < 0 ? n : m;
    k = k < 0 ? n : k;
    if (eg_py_check_range(n, 1, 8192, NULL, "_bench_sgemm: n") < 0 ||
        eg_py_check_range(m, 1, 8192, NULL, "_bench_sgemm: m") < 0 ||
        eg_py_check_range(k, 1, 8192, NULL, "_bench_sgemm: k") < 0 ||
        eg_py_check_range(reps, 1, 100000, NULL, "_bench_sgemm: reps") < 0) {
        return NULL;
    }
    size_t nn = (size_t)m * k > (size_t)n * k ? (size_t)m * k : (size_t)n * k;
    nn = (size_t)m * n > nn ? (size_t)m * n : nn;
    float *a = eg_aligned_alloc(nn * sizeof(float)), *b = eg_aligned_alloc(nn * sizeof(float));
    float *c = eg_aligned_alloc(nn * sizeof(float));
    if (a == NULL || b == NULL || c == NULL) {
        eg_aligned_free(a);
        eg_aligned_free(b);
        eg_aligned_free(c);
        return PyErr_NoMemory();
    }
    double secs;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    uint64_t rng = 1;
    for (size_t i = 0; i < nn; i++) {
        a[i] = eg_rng_uniform(&rng) - 0.5f;
        b[i] = eg_rng_uniform(&rng) - 0.5f;
    }
    /* one untimed call warms up the threads and caches */
    eg_sgemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps; r++) {
        eg_sgemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, c, n);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    Py_END_ALLOW_THREADS
    eg_aligned_free(a);
    eg_aligned_free(b);
    eg_aligned_free(c);
    return PyFloat_FromDouble(secs);
}

static PyObject *py_bert_profile(PyObject *self, PyObject *args)
{
    (void)self;
    int reset = 0;
    if (!PyArg_ParseTuple(args, "|p", &reset)) {
        return NULL;
    }
    eg_bert_profile p;
    eg_bert_profile_get(&p);
    if (reset) {
        eg_bert_profile_reset();
    }
    return Py_BuildValue("{s:d,s:d,s:d,s:d,s:d,s:d,s:d,s:d}", "embed", p.embed, "qkv_gemm",
                         p.qkv_gemm, "attention", p.attention, "out_gemm", p.out_gemm,
                         "layernorm", p.layernorm, "ffn_in_gemm", p.ffn_in_gemm, "gelu", p.gelu,
                         "ffn_out_gemm", p.ffn_out_gemm);
}

static PyObject *py_bert_kernel_isa(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(eg_bert_kernel_isa());
}

static PyMethodDef bert_functions[] = {
    {"_bert_kernel_isa", py_bert_kernel_isa, METH_NOARGS,
     "_bert_kernel_isa()\n--\n\nWhich compiled copy of the BERT kernels runs here: avx512, avx2, baseline."},
    {"_bench_sgemm", py_bench_sgemm, METH_VARARGS,
     "_bench_sgemm(n, reps, m=n, k=n)\n--\n\nSeconds taken by `reps` sgemm calls C(m,n) = "
     "A(m,k) B(n,k)^T, the layout of a Linear layer (benchmarks)."},
    {"_bert_profile", py_bert_profile, METH_VARARGS,
     "_bert_profile(reset=False)\n--\n\nPer-stage seconds accumulated while EG_BERT_PROFILE=1."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_bert(PyObject *module)
{
    if (eg_py_add_type(module, "BertModel", &BertModelType) < 0 ||
        eg_py_add_type(module, "BertState", &BertStateType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, bert_functions);
}
