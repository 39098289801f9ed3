/*
 * _core_llama_train.c — Python glue for LoRA fine-tuning of the
 * Llama-family decoders (csrc/models/llama_train.c).
 *
 * LoraTrainer(model, ranks, alphas, dropout=0.0, seed=0)
 *     model: a complete LlamaModel (kept alive, and its weights can no
 *     longer be changed while the trainer exists); ranks/alphas: 7 values
 *     for q, k, v, o, gate, up, down (rank 0 = no adapter)
 *     set_head(data, type): an untied LM head (vocab, hidden), kept alive
 *     params, grads: float32 views of the core's buffers (base: the trainer)
 *     slots(): [(layer, module, offA, offB, in, out, rank)]
 *     step(ids, offsets, targets, scale=1.0, backward=True, seed=0)
 *         -> (nll_sum, token_nll): gradients of scale * nll_sum accumulate;
 *         in the main thread Ctrl-C stops it between two layers
 *         (KeyboardInterrupt; parameters and MoE running counts unchanged,
 *         the gradients partial)
 *     adamw_step(m, v, lr, beta1, beta2, eps, weight_decay, t)
 *
 * With moe={...} (GMoE / MixLoRA; eg_llama_lora_set_moe, set at construction
 * so that no view of the parameter buffer predates its final size): keys
 * experts, top_k, rank, alpha, router (0 graph, 1 linear, 2 switch), gcn_dim,
 * gcn_layers, loss_kl, coef (4: poisson, normal, balance, z), running_decay,
 * normal_weights, per_expert_readout (eg_llama_moe_config).
 *     moe_slots(): [(layer, part, offset, size)] of the expert/router parts
 *     moe_buffers(): (features (L,N,D) f32, adjacency (L,N+1,N+1) f32,
 *                     running (L,N) f64), writable views
 *     set_aux_scale(s); moe_stats() -> (counts (L,N), aux (L,4), entropy (L))
 *     moe_routes(layer) -> (probs (n,N), idx (n,K)) copies of the last step's
 *         routing in that layer
 *     attach_to_model(): the model's encode_layers routes through a copy of
 *         these experts from now on (eg_llama_attach_moe)
 */
#include "_core.h"

#include "eg_llama_train.h"
#include "eg_optim.h"

#include <math.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    eg_llama_lora *t;
    PyObject *model;
    PyObject *head;
    int *model_users;
    int busy;
    int vocab;
    int layers, dim;
} LoraTrainerObject;

/* A float from dict d[key] (required). */
static int dict_num(PyObject *d, const char *key, double *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "moe config needs %s", key);
        return -1;
    }
    *out = PyFloat_AsDouble(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static int parse_moe(PyObject *o, eg_llama_moe_config *mc)
{
    if (!PyDict_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "moe must be a dict or None");
        return -1;
    }
    static const char *ints[] = {"experts", "top_k", "rank", "router", "gcn_dim", "gcn_layers",
                                 "loss_kl", "normal_weights", "per_expert_readout"};
    int *dst[] = {&mc->experts, &mc->top_k, &mc->rank, &mc->router, &mc->gcn_dim,
                  &mc->gcn_layers, &mc->loss_kl, &mc->normal_weights, &mc->per_expert_readout};
    memset(mc, 0, sizeof *mc);
    for (int i = 0; i < 9; i++) {
        double v;
        if (dict_num(o, ints[i], &v) < 0) {
            return -1;
        }
        if (v != (double)(int)v) {
            PyErr_Format(PyExc_ValueError, "moe %s must be an integer, got %g", ints[i], v);
            return -1;
        }
        *dst[i] = (int)v;
    }
    double alpha, decay;
    if (dict_num(o, "alpha", &alpha) < 0 || dict_num(o, "running_decay", &decay) < 0) {
        return -1;
    }
    mc->alpha = (float)alpha;
    mc->running_decay = decay;
    PyObject *c = PyDict_GetItemString(o, "coef");
    if (c == NULL) {
        PyErr_SetString(PyExc_KeyError, "moe config needs coef");
        return -1;
    }
    PyObject *seq = PySequence_Fast(c, "moe coef must be a sequence of 4 numbers");
    if (seq == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(seq) != EG_AUX_N) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "moe coef must have 4 entries (poisson, normal, "
                        "balance, z)");
        return -1;
    }
    for (int i = 0; i < EG_AUX_N; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        mc->coef[i] = (float)v;
    }
    Py_DECREF(seq);
    return 0;
}

static int parse7(PyObject *o, double out[7], const char *what)
{
    PyObject *seq = PySequence_Fast(o, "ranks and alphas must be sequences of 7 numbers");
    if (seq == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(seq) != EG_LORA_NMOD) {
        PyErr_Format(PyExc_ValueError, "%s must have 7 entries (q, k, v, o, gate, up, down), got %zd",
                     what, PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    for (int i = 0; i < EG_LORA_NMOD; i++) {
        out[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (out[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static int lt_init(LoraTrainerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"model", "ranks", "alphas", "dropout", "seed", "moe", NULL};
    PyObject *model, *ranks_o, *alphas_o, *moe_o = Py_None;
    double dropout = 0.0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|dKO", kwlist, &model, &ranks_o, &alphas_o,
                                     &dropout, &seed, &moe_o)) {
        return -1;
    }
    eg_llama_moe_config mc;
    if (moe_o != Py_None && parse_moe(moe_o, &mc) < 0) {
        return -1;
    }
    if (eg_py_init_once(self->t, "LoraTrainer") < 0) {
        return -1;
    }
    eg_py_encoder e;
    int r = eg_py_llama_encoder_of(model, "mean", &e);
    if (r < 0) {
        return -1;
    }
    if (r == 0) {
        PyErr_SetString(PyExc_TypeError, "LoraTrainer needs a LlamaModel");
        return -1;
    }
    double ranks[7], alphas[7];
    if (parse7(ranks_o, ranks, "ranks") < 0 || parse7(alphas_o, alphas, "alphas") < 0) {
        return -1;
    }
    eg_lora_config lc;
    memset(&lc, 0, sizeof lc);
    for (int i = 0; i < EG_LORA_NMOD; i++) {
        if (ranks[i] != (double)(int)ranks[i] || ranks[i] < 0 || ranks[i] > 4096) {
            PyErr_Format(PyExc_ValueError, "lora ranks must be integers in [0, 4096], got %g",
                         ranks[i]);
            return -1;
        }
        lc.rank[i] = (int)ranks[i];
        lc.alpha[i] = (float)alphas[i];
    }
    lc.dropout = (float)dropout;
    eg_err err;
    eg_err_clear(&err);
    eg_llama_lora *t = NULL;
    eg_status st = eg_llama_lora_create(&t, (const eg_llama *)e.model, &lc, (uint64_t)seed, &err);
    if (st == EG_OK && moe_o != Py_None) {
        st = eg_llama_lora_set_moe(t, &mc, &err);
    }
    if (st != EG_OK) {
        eg_llama_lora_free(t);
        eg_py_raise(&err, NULL);
        return -1;
    }
    self->layers = e.num_layers;
    self->dim = e.hidden_size;
    self->t = t;
    Py_INCREF(model);
    self->model = model;
    self->model_users = e.users;
    (*self->model_users)++;
    self->vocab = e.vocab_size;
    return 0;
}

static void lt_dealloc(LoraTrainerObject *self)
{
    eg_llama_lora_free(self->t);
    if (self->model_users != NULL) {
        (*self->model_users)--;
    }
    Py_XDECREF(self->model);
    Py_XDECREF(self->head);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *lt_set_head(LoraTrainerObject *self, PyObject *args)
{
    PyObject *data;
    int type;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OiLL", &data, &type, &rows, &cols)
        || eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    size_t bs, ts, want, tmp;
    if (eg_ggml_type_traits(type, &bs, &ts) != 0 || rows <= 0 || cols <= 0 || (size_t)cols % bs) {
        PyErr_Format(PyExc_ValueError, "lm head: bad type %d or shape (%lld, %lld)", type, rows, cols);
        return NULL;
    }
    if (eg_mul_ovf((size_t)cols / bs, ts, &tmp) || eg_mul_ovf(tmp, (size_t)rows, &want)) {
        PyErr_SetString(PyExc_OverflowError, "lm head size overflows");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if ((size_t)view.len != want) {
        PyErr_Format(PyExc_ValueError, "lm head: needs %zu bytes, got %zd", want, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_llama_lora_set_head(self->t, type, rows, cols, view.buf, &err);
    PyBuffer_Release(&view);
    if (st != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
    Py_INCREF(data);
    Py_XSETREF(self->head, data);
    Py_RETURN_NONE;
}

static PyObject *buffer_view(LoraTrainerObject *self, float *p)
{
    npy_intp n = (npy_intp)eg_llama_lora_num_params(self->t);
    PyObject *arr = PyArray_SimpleNewFromData(1, &n, NPY_FLOAT32, p);
    return arr == NULL ? NULL : eg_py_set_base(arr, (PyObject *)self);
}

static PyObject *lt_params(LoraTrainerObject *self, void *closure)
{
    (void)closure;
    if (eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    return buffer_view(self, eg_llama_lora_params(self->t));
}

static PyObject *lt_grads(LoraTrainerObject *self, void *closure)
{
    (void)closure;
    if (eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    return buffer_view(self, eg_llama_lora_grads(self->t));
}

static PyObject *lt_slots(LoraTrainerObject *self, PyObject *noargs)
{
    (void)noargs;
    if (eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    int L = 0;
    {
        eg_py_encoder e;
        if (eg_py_llama_encoder_of(self->model, "mean", &e) < 0) {
            Py_DECREF(list);
            return NULL;
        }
        L = e.num_layers;
    }
    for (int l = 0; l < L; l++) {
        for (int k = 0; k < EG_LORA_NMOD; k++) {
            size_t oa, ob;
            int in, out, r;
            eg_llama_lora_slot(self->t, l, k, &oa, &ob, &in, &out, &r);
            if (r == 0) {
                continue;
            }
            PyObject *item = Py_BuildValue("(iinniii)", l, k, (Py_ssize_t)oa, (Py_ssize_t)ob, in,
                                           out, r);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(item);
        }
    }
    return list;
}

/* The core's poll between layers of a step (eg_llama_lora_set_poll): *save
 * is the thread state Py_BEGIN_ALLOW_THREADS saved; take the GIL, run the
 * pending signal handlers, release it again. Nonzero: a handler raised. */
typedef struct {
    PyThreadState **save;
} step_poll_ctx;

static int step_poll(void *ctx)
{
    step_poll_ctx *p = ctx;
    PyEval_RestoreThread(*p->save);
    int stop = PyErr_CheckSignals() < 0;
    *p->save = PyEval_SaveThread();
    return stop;
}

static PyObject *lt_step(LoraTrainerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ids", "offsets", "targets", "scale", "backward", "seed", NULL};
    PyObject *ids_o, *off_o, *tg_o;
    double scale = 1.0;
    int backward = 1;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|dpK", kwlist, &ids_o, &off_o, &tg_o, &scale,
                                     &backward, &seed)) {
        return NULL;
    }
    if (eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    PyArrayObject *ids = NULL, *off = NULL, *tg = NULL;
    PyObject *nll = NULL;
    int n_seq;
    if (eg_py_convert_batch(ids_o, off_o, &ids, &off, &n_seq) < 0) {
        return NULL;
    }
    npy_intp n = PyArray_DIM(ids, 0);
    tg = eg_py_array(tg_o, NPY_INT32, NPY_ARRAY_FORCECAST, 1, (npy_intp[]){n},
                     "targets must be a 1-D array as long as ids (%zd)", (Py_ssize_t)n);
    if (tg == NULL) {
        goto fail;
    }
    const int32_t *tgp = PyArray_DATA(tg);
    for (npy_intp i = 0; i < n; i++) {
        if (tgp[i] >= self->vocab) {
            PyErr_Format(PyExc_ValueError, "target %d at position %zd is outside the vocabulary "
                         "(%d tokens)", tgp[i], (Py_ssize_t)i, self->vocab);
            goto fail;
        }
    }
    nll = PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (nll == NULL || eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    double s = 0.0;
    eg_status st;
    /* Ctrl-C inside the step (a step on a real model takes seconds): in the
     * main thread, the core polls step_poll between layers, which takes the
     * GIL back for a moment and runs Python's pending signal handlers; a
     * handler that raises (KeyboardInterrupt) stops the step with EG_EINTR,
     * its exception already set (_core.h, EG_PY_CHECK_SIGNALS) */
    step_poll_ctx pc = {NULL};
    const int main_thread = PyThread_get_thread_ident() == eg_py_main_thread;
    eg_llama_lora_set_poll(self->t, main_thread ? step_poll : NULL, &pc);
    eg_py_sync_threads();
    Py_BEGIN_ALLOW_THREADS
    pc.save = &_save;
    st = eg_llama_lora_step(self->t, PyArray_DATA(ids), PyArray_DATA(off), n_seq, tgp,
                            (float)scale, backward, (uint64_t)seed, &s,
                            PyArray_DATA((PyArrayObject *)nll), &err);
    Py_END_ALLOW_THREADS
    eg_llama_lora_set_poll(self->t, NULL, NULL);
    eg_py_leave(&self->busy);
    Py_DECREF(ids);
    Py_DECREF(off);
    Py_DECREF(tg);
    if (st != EG_OK) {
        Py_DECREF(nll);
        if (st == EG_EINTR && PyErr_Occurred()) {
            return NULL;   /* the handler's exception */
        }
        return eg_py_raise(&err, NULL);
    }
    PyObject *res = Py_BuildValue("(dO)", s, nll);
    Py_DECREF(nll);
    return res;
fail:
    Py_XDECREF(ids);
    Py_XDECREF(off);
    Py_XDECREF(tg);
    Py_XDECREF(nll);
    return NULL;
}

static PyObject *lt_adamw(LoraTrainerObject *self, PyObject *args)
{
    PyObject *m_o, *v_o;
    double lr, b1, b2, eps, wd;
    long long t;
    if (!PyArg_ParseTuple(args, "OOdddddL", &m_o, &v_o, &lr, &b1, &b2, &eps, &wd, &t)
        || eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    if (t < 1) {
        PyErr_SetString(PyExc_ValueError, "adamw step count must be >= 1");
        return NULL;
    }
    npy_intp n = (npy_intp)eg_llama_lora_num_params(self->t);
    PyArrayObject *m = NULL, *v = NULL;
    if (!PyArray_Check(m_o) || !PyArray_Check(v_o)) {
        PyErr_SetString(PyExc_TypeError, "adamw state must be NumPy arrays");
        return NULL;
    }
    m = (PyArrayObject *)m_o;
    v = (PyArrayObject *)v_o;
    if (PyArray_TYPE(m) != NPY_FLOAT32 || PyArray_TYPE(v) != NPY_FLOAT32 || PyArray_NDIM(m) != 1
        || PyArray_NDIM(v) != 1 || PyArray_DIM(m, 0) != n || PyArray_DIM(v, 0) != n
        || !PyArray_ISCARRAY(m) || !PyArray_ISCARRAY(v)) {
        PyErr_Format(PyExc_ValueError, "adamw state must be writable C-contiguous float32 arrays "
                     "of %zd entries", (Py_ssize_t)n);
        return NULL;
    }
    if (eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        return NULL;
    }
    eg_adamw_config cfg = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd};
    EG_PY_NOGIL(eg_adamw_step(eg_llama_lora_params(self->t), eg_llama_lora_grads(self->t),
                              PyArray_DATA(m), PyArray_DATA(v), NULL, (size_t)n, &cfg, (long)t));
    eg_py_leave(&self->busy);
    Py_RETURN_NONE;
}

static PyObject *lt_profile(LoraTrainerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"reset", NULL};
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p", kwlist, &reset)
        || eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    static const char *names[EG_LORA_PROF_N] = {
        "fwd_base", "fwd_lora", "fwd_attn", "fwd_other", "lm_head_ce", "bwd_base", "bwd_lora",
        "bwd_attn", "bwd_other"};
    double v[EG_LORA_PROF_N];
    if (eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        return NULL;
    }
    eg_llama_lora_profile(self->t, v, reset);
    eg_py_leave(&self->busy);
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int i = 0; i < EG_LORA_PROF_N; i++) {
        PyObject *f = PyFloat_FromDouble(v[i]);
        if (f == NULL || PyDict_SetItemString(d, names[i], f) < 0) {
            Py_XDECREF(f);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(f);
    }
    return d;
}

static PyObject *lt_set_recompute(LoraTrainerObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0 || eg_py_ready(self->t, "LoraTrainer") < 0) {
        return NULL;
    }
    if (eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        return NULL;
    }
    eg_llama_lora_set_recompute(self->t, on);
    eg_py_leave(&self->busy);
    Py_RETURN_NONE;
}

static int need_moe(LoraTrainerObject *self)
{
    if (eg_py_ready(self->t, "LoraTrainer") < 0) {
        return -1;
    }
    if (eg_llama_lora_moe(self->t) == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this LoraTrainer has no MoE adapters");
        return -1;
    }
    return 0;
}

static PyObject *lt_moe_slots(LoraTrainerObject *self, PyObject *noargs)
{
    (void)noargs;
    if (need_moe(self) < 0) {
        return NULL;
    }
    PyObject *list = PyList_New(0);
    for (int l = 0; list != NULL && l < self->layers; l++) {
        for (int k = 0; k < EG_MOE_NPART; k++) {
            size_t off, size;
            eg_llama_moe_slot(self->t, l, k, &off, &size);
            if (size == 0) {
                continue;
            }
            PyObject *item = Py_BuildValue("(iinn)", l, k, (Py_ssize_t)off, (Py_ssize_t)size);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(list);
                break;
            }
            Py_DECREF(item);
        }
    }
    return list;
}

static PyObject *lt_moe_buffers(LoraTrainerObject *self, PyObject *noargs)
{
    (void)noargs;
    if (need_moe(self) < 0) {
        return NULL;
    }
    const eg_llama_moe_config *mc = eg_llama_lora_moe(self->t);
    float *feat, *adj;
    double *run;
    eg_llama_moe_buffers(self->t, &feat, &adj, &run);
    npy_intp L = self->layers, N = mc->experts;
    npy_intp sf[3] = {L, N, self->dim}, sa[3] = {L, N + 1, N + 1}, sr[2] = {L, N};
    PyObject *a = PyArray_SimpleNewFromData(3, sf, NPY_FLOAT32, feat);
    a = a == NULL ? NULL : eg_py_set_base(a, (PyObject *)self);
    PyObject *b = PyArray_SimpleNewFromData(3, sa, NPY_FLOAT32, adj);
    b = b == NULL ? NULL : eg_py_set_base(b, (PyObject *)self);
    PyObject *c = PyArray_SimpleNewFromData(2, sr, NPY_FLOAT64, run);
    c = c == NULL ? NULL : eg_py_set_base(c, (PyObject *)self);
    if (a == NULL || b == NULL || c == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        return NULL;
    }
    return Py_BuildValue("(NNN)", a, b, c);
}

/* attach_to_model(): eg_llama_attach_moe on this trainer's own model. */
static PyObject *lt_attach_to_model(LoraTrainerObject *self, PyObject *noargs)
{
    (void)noargs;
    if (need_moe(self) < 0) {
        return NULL;
    }
    eg_py_encoder e;
    int r = eg_py_llama_encoder_of(self->model, "mean", &e);
    if (r <= 0) {
        if (r == 0) {
            PyErr_SetString(PyExc_TypeError, "LoraTrainer's model is not a LlamaModel");
        }
        return NULL;
    }
    if (eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        return NULL;
    }
    if (eg_py_enter(e.busy, "LlamaModel") < 0) {
        eg_py_leave(&self->busy);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_llama_attach_moe((eg_llama *)e.model, self->t, &err);
    eg_py_leave(e.busy);
    eg_py_leave(&self->busy);
    if (st != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
    Py_RETURN_NONE;
}

static PyObject *lt_set_aux_scale(LoraTrainerObject *self, PyObject *arg)
{
    double s = PyFloat_AsDouble(arg);
    if ((s == -1.0 && PyErr_Occurred()) || need_moe(self) < 0) {
        return NULL;
    }
    if (!(s >= 0.0) || !isfinite(s)) {
        PyErr_SetString(PyExc_ValueError, "aux scale must be finite and >= 0");
        return NULL;
    }
    if (eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        return NULL;
    }
    eg_llama_moe_set_aux_scale(self->t, (float)s);
    eg_py_leave(&self->busy);
    Py_RETURN_NONE;
}

static PyObject *lt_moe_stats(LoraTrainerObject *self, PyObject *noargs)
{
    (void)noargs;
    if (need_moe(self) < 0) {
        return NULL;
    }
    npy_intp L = self->layers, N = eg_llama_lora_moe(self->t)->experts;
    npy_intp sc[2] = {L, N}, sa[2] = {L, EG_AUX_N};
    PyObject *c = PyArray_SimpleNew(2, sc, NPY_INT64);
    PyObject *a = PyArray_SimpleNew(2, sa, NPY_FLOAT64);
    PyObject *e = PyArray_SimpleNew(1, &L, NPY_FLOAT64);
    if (c == NULL || a == NULL || e == NULL) {
        Py_XDECREF(c);
        Py_XDECREF(a);
        Py_XDECREF(e);
        return NULL;
    }
    eg_llama_moe_stats(self->t, PyArray_DATA((PyArrayObject *)c),
                       PyArray_DATA((PyArrayObject *)a), PyArray_DATA((PyArrayObject *)e));
    return Py_BuildValue("(NNN)", c, a, e);
}

static PyObject *lt_moe_routes(LoraTrainerObject *self, PyObject *arg)
{
    long layer = PyLong_AsLong(arg);
    if ((layer == -1 && PyErr_Occurred()) || need_moe(self) < 0) {
        return NULL;
    }
    if (layer < 0 || layer >= self->layers) {
        PyErr_Format(PyExc_IndexError, "layer %ld is outside [0, %d)", layer, self->layers);
        return NULL;
    }
    if (eg_py_enter(&self->busy, "LoraTrainer") < 0) {
        return NULL;
    }
    const eg_llama_moe_config *mc = eg_llama_lora_moe(self->t);
    const float *pr;
    const int32_t *ix;
    size_t n;
    eg_llama_moe_routes(self->t, (int)layer, &pr, &ix, &n);
    npy_intp sp[2] = {(npy_intp)n, mc->experts}, si[2] = {(npy_intp)n, mc->top_k};
    PyObject *p = PyArray_SimpleNew(2, sp, NPY_FLOAT32);
    PyObject *i = PyArray_SimpleNew(2, si, NPY_INT32);
    if (p != NULL && i != NULL && n > 0) {
        memcpy(PyArray_DATA((PyArrayObject *)p), pr, n * (size_t)mc->experts * sizeof(float));
        memcpy(PyArray_DATA((PyArrayObject *)i), ix, n * (size_t)mc->top_k * sizeof(int32_t));
    }
    eg_py_leave(&self->busy);
    if (p == NULL || i == NULL) {
        Py_XDECREF(p);
        Py_XDECREF(i);
        return NULL;
    }
    return Py_BuildValue("(NN)", p, i);
}

static PyMethodDef lt_methods[] = {
    {"attach_to_model", (PyCFunction)lt_attach_to_model, METH_NOARGS,
     "route the model's layer-by-layer forward (LlamaModel.encode_layers, caches, early "
     "exit) through a copy of this trainer's experts and routers, for good"},
    {"moe_slots", (PyCFunction)lt_moe_slots, METH_NOARGS,
     "moe_slots()\n--\n\n[(layer, part, offset, size)] of the experts' and routers' parameters."},
    {"moe_buffers", (PyCFunction)lt_moe_buffers, METH_NOARGS,
     "moe_buffers()\n--\n\n(features, adjacency, running): writable views of the router buffers."},
    {"set_aux_scale", (PyCFunction)lt_set_aux_scale, METH_O,
     "set_aux_scale(s)\n--\n\nWeight of the MoE aux losses in the next steps."},
    {"moe_stats", (PyCFunction)lt_moe_stats, METH_NOARGS,
     "moe_stats()\n--\n\n(counts (L,N), aux (L,4), entropy (L)) of the last step."},
    {"moe_routes", (PyCFunction)lt_moe_routes, METH_O,
     "moe_routes(layer)\n--\n\n(probs, idx) of the last step's routing in that layer."},
    {"set_recompute", (PyCFunction)lt_set_recompute, METH_O,
     "set_recompute(on)\n--\n\nActivation recomputation per layer in training steps."},
    {"profile", (PyCFunction)(void (*)(void))lt_profile, METH_VARARGS | METH_KEYWORDS,
     "profile(reset=False)\n--\n\nSeconds spent per phase of step() since the last reset."},
    {"set_head", (PyCFunction)lt_set_head, METH_VARARGS,
     "set_head(data, type, rows, cols)\n--\n\nAn untied LM head (ggml type), read in place."},
    {"slots", (PyCFunction)lt_slots, METH_NOARGS,
     "slots()\n--\n\n[(layer, module, offA, offB, in, out, rank)] of every adapter."},
    {"step", (PyCFunction)(void (*)(void))lt_step, METH_VARARGS | METH_KEYWORDS,
     "step(ids, offsets, targets, scale=1.0, backward=True, seed=0)\n--\n\n"
     "(nll_sum, token_nll); with backward, gradients of scale*nll_sum accumulate into grads."},
    {"adamw_step", (PyCFunction)lt_adamw, METH_VARARGS,
     "adamw_step(m, v, lr, beta1, beta2, eps, weight_decay, t)\n--\n\nOne AdamW step."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef lt_getset[] = {
    {"params", (getter)lt_params, NULL, "the LoRA parameters (float32 view)", NULL},
    {"grads", (getter)lt_grads, NULL, "their gradients (float32 view)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LoraTrainerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.LoraTrainer",
    .tp_basicsize = sizeof(LoraTrainerObject),
    .tp_dealloc = (destructor)lt_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LoraTrainer(model, ranks, alphas, dropout=0.0, seed=0)\n--\n\n"
              "LoRA adapters and their forward/backward over a frozen LlamaModel (C core).",
    .tp_methods = lt_methods,
    .tp_getset = lt_getset,
    .tp_init = (initproc)lt_init,
    .tp_new = PyType_GenericNew,
};

int eg_py_init_llama_train(PyObject *module)
{
    return eg_py_add_type(module, "LoraTrainer", &LoraTrainerType);
}
