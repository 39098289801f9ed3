/*
 * _core_engine.c — Python glue for the G-Ladder (csrc/engine/ladder.c,
 * eg_engine.h); the graph and its samplers are in _core_graph.c, the
 * early-exit policy in _core_exit.c.
 *
 * Type added to engine_py._core:
 *   Ladder(num_ladders, in_dim, reduced_dim, hidden, num_classes, gnn, gnn_layers,
 *          act, norm, heads, early_exit, dropout, T, seed, precision=0)
 *                                                   G-Ladder (eg_engine.h)
 *       .param_table() .buffer(kind) (a float32 view owned by the model)
 *       .begin() .forward_step() .loss() .backward() .zero_grad() .adamw_step()
 *       .train_batch() .predict_batch()  (whole batch, GIL released; predict
 *                                          checks signals after each ladder)
 *       .keep(mask)  (eval: drop exited subgraphs between forward steps)
 * Arguments are converted and range-checked here under the GIL; the core runs
 * with the GIL released; a busy flag rejects use of a Ladder from two threads
 * at once.
 */
#include "_core.h"
#include "eg_engine.h"

#include <string.h>

/* ------------------------------------------------------------- Ladder */

typedef struct {
    PyObject_HEAD
    eg_ladder *m;
    int busy;
} LadderObject;

static void Ladder_dealloc(LadderObject *self)
{
    eg_ladder_free(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Ladder_init(LadderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"num_ladders", "in_dim", "reduced_dim", "hidden", "num_classes", "gnn",
                             "gnn_layers", "act", "norm", "heads", "early_exit", "dropout", "T",
                             "seed", "precision", NULL};
    eg_ladder_config c;
    memset(&c, 0, sizeof c);
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiiiiiiiipffK|i", kwlist, &c.num_ladders, &c.in_dim,
                                     &c.reduced_dim, &c.hidden, &c.num_classes, &c.gnn,
                                     &c.gnn_layers, &c.act, &c.norm, &c.heads, &c.early_exit,
                                     &c.dropout, &c.T, &seed, &c.precision)) {
        return -1;
    }
    if (eg_py_init_once(self->m, "Ladder") < 0) {
        return -1;
    }
    eg_err err;
    eg_err_clear(&err);
    if (eg_ladder_create(&self->m, &c, (uint64_t)seed, &err) != EG_OK) {
        eg_py_raise(&err, NULL);
        return -1;
    }
    return 0;
}

static int ladder_ready(LadderObject *self)
{
    return eg_py_ready(self->m, "Ladder");
}

/* ladder_ready, then the busy flag (eg_py_enter). */
static int ladder_enter(LadderObject *self)
{
    return eg_py_enter_ready(self->m, &self->busy, "Ladder");
}

static PyObject *Ladder_param_table(LadderObject *self, PyObject *noargs)
{
    if (ladder_ready(self) < 0) {
        return NULL;
    }
    int n = eg_ladder_num_params(self->m);
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        const eg_param_desc *d = eg_ladder_param(self->m, i);
        PyObject *shape = PyTuple_New(d->ndim);
        if (shape == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        for (int j = 0; j < d->ndim; j++) {
            PyTuple_SET_ITEM(shape, j, PyLong_FromLongLong(d->shape[j]));
        }
        PyObject *item = Py_BuildValue("(snNii)", d->name, (Py_ssize_t)d->offset, shape, d->decay,
                                       d->trainable);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *Ladder_buffer(LadderObject *self, PyObject *arg)
{
    if (ladder_ready(self) < 0) {
        return NULL;
    }
    const char *kind = PyUnicode_AsUTF8(arg);
    if (kind == NULL) {
        return NULL;
    }
    float *p;
    if (strcmp(kind, "param") == 0) {
        p = eg_ladder_params(self->m);
    } else if (strcmp(kind, "grad") == 0) {
        p = eg_ladder_grads(self->m);
    } else if (strcmp(kind, "m") == 0) {
        p = eg_ladder_adam_m(self->m);
    } else if (strcmp(kind, "v") == 0) {
        p = eg_ladder_adam_v(self->m);
    } else {
        PyErr_Format(PyExc_ValueError, "buffer kind must be param, grad, m or v, got %s", kind);
        return NULL;
    }
    npy_intp n = (npy_intp)eg_ladder_total_floats(self->m);
    return eg_py_set_base(PyArray_SimpleNewFromData(1, &n, NPY_FLOAT32, p), (PyObject *)self);
}

static PyObject *Ladder_get_step(LadderObject *self, void *c)
{
    return ladder_ready(self) < 0 ? NULL : PyLong_FromLong(*eg_ladder_step_count(self->m));
}

static int Ladder_set_step(LadderObject *self, PyObject *v, void *c)
{
    long long s;
    if (ladder_ready(self) < 0) {
        return -1;
    }
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "the step count cannot be deleted");
        return -1;
    }
    if (eg_py_int_arg(v, 0, LONG_MAX, NULL, "step count", &s) < 0) {
        return -1;
    }
    *eg_ladder_step_count(self->m) = (long)s;
    return 0;
}

/* Parsed batch arrays, held while the GIL is released. */
typedef struct {
    PyArrayObject *gp, *ptr, *src, *labels, *rows;
    PyArrayObject *H[64];
    int nH;
    int64_t G, N; /* subgraphs and nodes, set by parse_graph */
    int64_t U;    /* state rows: N, or max(rows) + 1 when rows are given */
} batch_args;

static void batch_args_free(batch_args *b)
{
    Py_XDECREF(b->gp);
    Py_XDECREF(b->ptr);
    Py_XDECREF(b->src);
    Py_XDECREF(b->labels);
    Py_XDECREF(b->rows);
    for (int i = 0; i < b->nH; i++) {
        Py_XDECREF(b->H[i]);
    }
}

static int parse_graph(LadderObject *self, batch_args *b, PyObject *gpo, PyObject *ptro, PyObject *srco)
{
    b->gp = eg_py_i64_vector(gpo, "graph_ptr");
    if (b->gp == NULL) {
        return -1;
    }
    b->ptr = eg_py_i64_vector(ptro, "indptr");
    if (b->ptr == NULL) {
        return -1;
    }
    b->src = eg_py_i64_vector(srco, "indices");
    if (b->src == NULL) {
        return -1;
    }
    if (PyArray_DIM(b->gp, 0) < 2 || PyArray_DIM(b->ptr, 0) < 2) {
        PyErr_SetString(PyExc_ValueError, "batch: need at least one subgraph and one node");
        return -1;
    }
    const int64_t *gp = PyArray_DATA(b->gp), *p = PyArray_DATA(b->ptr);
    const int64_t G = PyArray_DIM(b->gp, 0) - 1, N = PyArray_DIM(b->ptr, 0) - 1;
    b->G = G;
    b->N = N;
    if (gp[G] != N) {
        PyErr_Format(PyExc_ValueError, "batch: graph_ptr[-1] = %lld but indptr has %lld nodes",
                     (long long)gp[G], (long long)N);
        return -1;
    }
    if (p[N] != (int64_t)PyArray_DIM(b->src, 0) || p[0] != 0) {
        PyErr_SetString(PyExc_ValueError, "batch: indptr[0] must be 0 and indptr[-1] == len(indices)");
        return -1;
    }
    return 0;
}

/* labels: 1-D int64, one per subgraph of the batch (G). */
static PyArrayObject *parse_labels(PyObject *o, int64_t G)
{
    PyArrayObject *y = eg_py_i64_vector(o, "labels");
    if (y != NULL && (int64_t)PyArray_DIM(y, 0) != G) {
        PyErr_Format(PyExc_ValueError, "need %lld labels (one per subgraph), got %lld", (long long)G,
                     (long long)PyArray_DIM(y, 0));
        Py_CLEAR(y);
    }
    return y;
}

static PyArrayObject *parse_states(LadderObject *self, PyObject *o, npy_intp N, int i)
{
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    const npy_intp shape[2] = {N, c->in_dim};
    return eg_py_array(o, NPY_FLOAT32, 0, 2, shape, "states of ladder %d must have shape (%lld, %d)",
                       i, (long long)N, c->in_dim);
}

static PyObject *Ladder_begin(LadderObject *self, PyObject *args)
{
    PyObject *gpo, *ptro, *srco;
    int training;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOpK", &gpo, &ptro, &srco, &training, &seed) ||
        ladder_ready(self) < 0) {
        return NULL;
    }
    batch_args b;
    memset(&b, 0, sizeof b);
    PyObject *res = NULL;
    if (parse_graph(self, &b, gpo, ptro, srco) < 0 || ladder_enter(self) < 0) {
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const int64_t G = b.G, N = b.N;
    EG_PY_NOGIL(st = eg_ladder_begin(self->m, G, PyArray_DATA(b.gp), N, PyArray_DATA(b.ptr),
                                     PyArray_DATA(b.src), training, (uint64_t)seed, &err));
    res = eg_py_finish(&self->busy, st, &err, NULL);
fail:
    batch_args_free(&b);
    return res;
}

static PyObject *Ladder_set_rows(LadderObject *self, PyObject *arg)
{
    if (ladder_ready(self) < 0) {
        return NULL;
    }
    int64_t N, G;
    eg_ladder_batch_dims(self->m, &N, &G);
    PyArrayObject *rows = eg_py_i64_vector(arg, "rows");
    if (rows == NULL) {
        return NULL;
    }
    if ((int64_t)PyArray_DIM(rows, 0) != N) {
        PyErr_Format(PyExc_ValueError, "rows: need one state row per node (%lld), got %lld",
                     (long long)N, (long long)PyArray_DIM(rows, 0));
        Py_DECREF(rows);
        return NULL;
    }
    const int64_t *r = PyArray_DATA(rows);
    int64_t top = -1;
    for (int64_t n = 0; n < N; n++) {
        top = r[n] > top ? r[n] : top;
    }
    if (ladder_enter(self) < 0) {
        Py_DECREF(rows);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_ladder_set_rows(self->m, top + 1, r, &err);
    Py_DECREF(rows);
    return eg_py_finish(&self->busy, st, &err, NULL);
}

static PyObject *Ladder_forward_step(LadderObject *self, PyObject *args)
{
    int i, keep_states = 1;
    PyObject *ho;
    int64_t N, G;
    if (!PyArg_ParseTuple(args, "iO|p", &i, &ho, &keep_states) || ladder_ready(self) < 0) {
        return NULL;
    }
    eg_ladder_batch_dims(self->m, &N, &G);
    if (G == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Ladder.forward_step: call begin() first");
        return NULL;
    }
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    PyArrayObject *H = parse_states(self, ho, (npy_intp)eg_ladder_state_rows(self->m), i);
    if (H == NULL) {
        return NULL;
    }
    PyObject *logits = NULL;
    int has = eg_ladder_has_head(self->m, i);
    if (has) {
        npy_intp dims[2] = {(npy_intp)G, c->num_classes};
        logits = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (logits == NULL) {
            Py_DECREF(H);
            return NULL;
        }
    }
    if (ladder_enter(self) < 0) {
        Py_DECREF(H);
        Py_XDECREF(logits);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    float *lp = has ? PyArray_DATA((PyArrayObject *)logits) : NULL;
    EG_PY_NOGIL(st = (keep_states ? eg_ladder_forward_step : eg_ladder_forward_eval)(
                    self->m, i, PyArray_DATA(H), lp, &err));
    eg_py_leave(&self->busy);
    Py_DECREF(H);
    return eg_py_result(st, &err, NULL, has ? logits : Py_NewRef(Py_None));
}

static PyObject *Ladder_loss(LadderObject *self, PyObject *arg)
{
    if (ladder_ready(self) < 0) {
        return NULL;
    }
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    int64_t N, G;
    eg_ladder_batch_dims(self->m, &N, &G);
    PyArrayObject *y = parse_labels(arg, G);
    if (y == NULL) {
        return NULL;
    }
    npy_intp K = c->num_ladders;
    PyObject *hl = PyArray_SimpleNew(1, &K, NPY_FLOAT32);
    if (hl == NULL || ladder_enter(self) < 0) {
        Py_DECREF(y);
        Py_XDECREF(hl);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    float loss = 0.0f;
    eg_status st = eg_ladder_loss(self->m, PyArray_DATA(y), &loss,
                                  PyArray_DATA((PyArrayObject *)hl), &err);
    eg_py_leave(&self->busy);
    Py_DECREF(y);
    return eg_py_result(st, &err, NULL, Py_BuildValue("(dN)", (double)loss, hl));
}

static PyObject *Ladder_backward(LadderObject *self, PyObject *noargs)
{
    if (ladder_enter(self) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_ladder_backward(self->m, &err));
    return eg_py_finish(&self->busy, st, &err, NULL);
}

static PyObject *Ladder_zero_grad(LadderObject *self, PyObject *noargs)
{
    if (ladder_enter(self) < 0) {
        return NULL;
    }
    eg_ladder_zero_grad(self->m);
    eg_py_leave(&self->busy);
    Py_RETURN_NONE;
}

static PyObject *Ladder_adamw_step(LadderObject *self, PyObject *args)
{
    float lr, wd, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    if (!PyArg_ParseTuple(args, "ff|fff", &lr, &wd, &b1, &b2, &eps) || ladder_enter(self) < 0) {
        return NULL;
    }
    EG_PY_NOGIL(eg_ladder_adamw_step(self->m, lr, wd, b1, b2, eps));
    eg_py_leave(&self->busy);
    Py_RETURN_NONE;
}

/* Shared by train_batch / predict_batch: parse (graph_ptr, indptr, indices,
 * states list, rows or None). With rows (one int64 per node, in [0, N)) the
 * states have U = max(rows) + 1 rows (eg_ladder_set_rows). */
static int parse_full(LadderObject *self, batch_args *b, PyObject *gpo, PyObject *ptro,
                      PyObject *srco, PyObject *hlist, PyObject *rowso)
{
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    if (parse_graph(self, b, gpo, ptro, srco) < 0) {
        return -1;
    }
    b->U = b->N;
    if (rowso != NULL && rowso != Py_None) {
        b->rows = eg_py_i64_vector(rowso, "rows");
        if (b->rows == NULL) {
            return -1;
        }
        if ((int64_t)PyArray_DIM(b->rows, 0) != b->N) {
            PyErr_Format(PyExc_ValueError, "rows: need one state row per node (%lld), got %lld",
                         (long long)b->N, (long long)PyArray_DIM(b->rows, 0));
            return -1;
        }
        const int64_t *r = PyArray_DATA(b->rows);
        int64_t top = -1;
        for (int64_t n = 0; n < b->N; n++) {
            if (r[n] < 0 || r[n] >= b->N) {
                PyErr_Format(PyExc_ValueError, "rows[%lld] = %lld is outside [0, %lld)", (long long)n,
                             (long long)r[n], (long long)b->N);
                return -1;
            }
            top = r[n] > top ? r[n] : top;
        }
        b->U = top + 1;
    }
    PyObject *seq = PySequence_Fast(hlist, "states must be a sequence of arrays");
    if (seq == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(seq) != c->num_ladders) {
        PyErr_Format(PyExc_ValueError, "need %d state arrays (one per ladder), got %zd",
                     c->num_ladders, PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    const npy_intp U = (npy_intp)b->U;
    for (int i = 0; i < c->num_ladders; i++) {
        b->H[i] = parse_states(self, PySequence_Fast_GET_ITEM(seq, i), U, i);
        if (b->H[i] == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        b->nH = i + 1;
    }
    Py_DECREF(seq);
    return 0;
}

static PyObject *Ladder_train_batch(LadderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"graph_ptr", "indptr", "indices", "states", "labels", "seed", "lr",
                             "weight_decay", "rows", NULL};
    PyObject *gpo, *ptro, *srco, *hlist, *yo, *rowso = Py_None;
    unsigned long long seed;
    float lr, wd;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOKff|O", kwlist, &gpo, &ptro, &srco, &hlist, &yo,
                                     &seed, &lr, &wd, &rowso) ||
        ladder_ready(self) < 0) {
        return NULL;
    }
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    batch_args b;
    memset(&b, 0, sizeof b);
    PyObject *res = NULL;
    if (parse_full(self, &b, gpo, ptro, srco, hlist, rowso) < 0) {
        goto fail;
    }
    const int64_t G = b.G, N = b.N;
    b.labels = parse_labels(yo, G);
    if (b.labels == NULL) {
        goto fail;
    }
    if (ladder_enter(self) < 0) {
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    float loss = 0.0f;
    const float *H[64];
    for (int i = 0; i < c->num_ladders; i++) {
        H[i] = PyArray_DATA(b.H[i]);
    }
    /* One C call for the whole step (~0.1-0.2 s for a default Debian batch):
     * a Ctrl-C during it is raised by Python as soon as it returns, with the
     * parameters fully updated, never half-way through AdamW. */
    EG_PY_NOGIL(st = eg_ladder_train_step(self->m, G, PyArray_DATA(b.gp), N, PyArray_DATA(b.ptr),
                                          PyArray_DATA(b.src), b.U,
                                          b.rows != NULL ? PyArray_DATA(b.rows) : NULL, H,
                                          PyArray_DATA(b.labels),
                                          (uint64_t)seed, lr, wd, &loss, &err));
    eg_py_leave(&self->busy);
    res = eg_py_result(st, &err, NULL, PyFloat_FromDouble((double)loss));
fail:
    batch_args_free(&b);
    return res;
}

static PyObject *Ladder_predict_batch(LadderObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"graph_ptr", "indptr", "indices", "states", "rows", NULL};
    PyObject *gpo, *ptro, *srco, *hlist, *rowso = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|O", kwlist, &gpo, &ptro, &srco, &hlist, &rowso) ||
        ladder_ready(self) < 0) {
        return NULL;
    }
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    batch_args b;
    memset(&b, 0, sizeof b);
    PyObject *res = NULL;
    if (parse_full(self, &b, gpo, ptro, srco, hlist, rowso) < 0) {
        goto fail;
    }
    const int64_t G = b.G, N = b.N;
    npy_intp dims[3] = {c->num_ladders, (npy_intp)G, c->num_classes};
    res = PyArray_ZEROS(3, dims, NPY_FLOAT32, 0);
    if (res == NULL || ladder_enter(self) < 0) {
        Py_CLEAR(res);
        goto fail;
    }
    float *out = PyArray_DATA((PyArrayObject *)res);
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    int stop = 0;
    Py_BEGIN_ALLOW_THREADS
    st = eg_ladder_begin(self->m, G, PyArray_DATA(b.gp), N, PyArray_DATA(b.ptr), PyArray_DATA(b.src),
                         0, 0, &err);
    if (st == EG_OK && b.rows != NULL) {
        st = eg_ladder_set_rows(self->m, b.U, PyArray_DATA(b.rows), &err);
    }
    for (int i = 0; st == EG_OK && !stop && i < c->num_ladders; i++) {
        st = eg_ladder_forward_eval(self->m, i, PyArray_DATA(b.H[i]),
                                    out + (size_t)i * (size_t)G * (size_t)c->num_classes, &err);
        if (i + 1 < c->num_ladders) {
            EG_PY_CHECK_SIGNALS(stop);
        }
    }
    Py_END_ALLOW_THREADS
    eg_py_leave(&self->busy);
    if (stop) {
        Py_CLEAR(res);   /* KeyboardInterrupt is set */
    } else if (st != EG_OK) {
        Py_CLEAR(res);
        eg_py_raise(&err, NULL);
    }
fail:
    batch_args_free(&b);
    return res;
}

static PyObject *Ladder_has_head(LadderObject *self, PyObject *arg)
{
    long long i;
    if (ladder_ready(self) < 0 || eg_py_int_arg(arg, LLONG_MIN, LLONG_MAX, NULL, "i", &i) < 0) {
        return NULL;
    }
    /* False outside the ladders, as the core says (no truncation to int) */
    return PyBool_FromLong(i >= 0 && i <= INT_MAX && eg_ladder_has_head(self->m, (int)i));
}

static PyObject *Ladder_keep(LadderObject *self, PyObject *arg)
{
    if (ladder_ready(self) < 0) {
        return NULL;
    }
    int64_t N, G;
    eg_ladder_batch_dims(self->m, &N, &G);
    static const char msg[] = "keep must be a 1-D mask with one entry per subgraph (%lld)";
    const npy_intp shape[1] = {(npy_intp)G};
    PyArrayObject *k = eg_py_array(arg, NPY_UINT8, NPY_ARRAY_FORCECAST, 1, shape, msg, (long long)G);
    if (k == NULL) {
        return NULL;
    }
    if (G == 0) {
        PyErr_Format(PyExc_ValueError, msg, (long long)G);
        Py_DECREF(k);
        return NULL;
    }
    if (ladder_enter(self) < 0) {
        Py_DECREF(k);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_ladder_keep(self->m, PyArray_DATA(k), &err));
    Py_DECREF(k);
    return eg_py_finish(&self->busy, st, &err, NULL);
}

static PyMethodDef Ladder_methods[] = {
    {"param_table", (PyCFunction)Ladder_param_table, METH_NOARGS,
     "[(name, offset, shape, decay, trainable)] in buffer order."},
    {"buffer", (PyCFunction)Ladder_buffer, METH_O,
     "buffer(kind) -> float32 view of 'param', 'grad', 'm' or 'v' (owned by the model)."},
    {"begin", (PyCFunction)Ladder_begin, METH_VARARGS,
     "begin(graph_ptr, indptr, indices, training, seed): start a batch."},
    {"set_rows", (PyCFunction)Ladder_set_rows, METH_O,
     "set_rows(rows): right after begin(): node n uses state row rows[n]; forward_step then takes\n"
     "states of max(rows) + 1 rows (a node repeated across subgraphs is projected once)."},
    {"forward_step", (PyCFunction)Ladder_forward_step, METH_VARARGS,
     "forward_step(i, states, keep_states=True) -> exit logits (G, C) or None. keep_states=False: "
     "prediction only (no copy of states; backward refused)."},
    {"loss", (PyCFunction)Ladder_loss, METH_O, "loss(labels) -> (summed loss, per-head losses)."},
    {"backward", (PyCFunction)Ladder_backward, METH_NOARGS, "Accumulate gradients of the last loss."},
    {"zero_grad", (PyCFunction)Ladder_zero_grad, METH_NOARGS, "Zero the gradient buffer."},
    {"adamw_step", (PyCFunction)Ladder_adamw_step, METH_VARARGS,
     "adamw_step(lr, weight_decay, beta1=0.9, beta2=0.999, eps=1e-8)."},
    {"train_batch", (PyCFunction)(void (*)(void))Ladder_train_batch, METH_VARARGS | METH_KEYWORDS,
     "train_batch(graph_ptr, indptr, indices, states, labels, seed, lr, wd, rows=None) -> loss.\n"
     "rows (int64, one per node): node n uses state row rows[n]; the states then have\n"
     "max(rows) + 1 rows, so a node repeated across subgraphs is projected once."},
    {"predict_batch", (PyCFunction)(void (*)(void))Ladder_predict_batch, METH_VARARGS | METH_KEYWORDS,
     "predict_batch(graph_ptr, indptr, indices, states, rows=None) -> logits (K, G, C) (zeros for\n"
     "ladders without a head); rows as in train_batch."},
    {"has_head", (PyCFunction)Ladder_has_head, METH_O, "has_head(i) -> bool."},
    {"keep", (PyCFunction)Ladder_keep, METH_O,
     "keep(mask): eval only, after a forward_step: keep only the subgraphs with mask[g] (early exit)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ladder_getset[] = {
    {"step", (getter)Ladder_get_step, (setter)Ladder_set_step, "AdamW step count", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LadderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.Ladder",
    .tp_basicsize = sizeof(LadderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "G-Ladder side structure. Use engine_py.EngineClassifier.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ladder_init,
    .tp_dealloc = (destructor)Ladder_dealloc,
    .tp_methods = Ladder_methods,
    .tp_getset = Ladder_getset,
};

int eg_py_init_engine(PyObject *module)
{
    return eg_py_add_type(module, "Ladder", &LadderType);
}
