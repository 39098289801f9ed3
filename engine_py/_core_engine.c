/*
 * _core_engine.c — Python glue for graphs, samplers and the G-Ladder.
 *
 * Types added to engine_py._core:
 *   Graph(src, dst, num_nodes, undirected)   CSR graph (eg_graph.h)
 *       .num_nodes .num_edges .indptr() .indices()
 *       .sample_khop(targets, max_neighbors, seed) -> (nodes, graph_ptr, indptr, indices)
 *       .sample_rw(targets, walk_steps, restart, seed) -> same tuple
 *   Ladder(num_ladders, in_dim, reduced_dim, hidden, num_classes, gnn, gnn_layers,
 *          act, norm, heads, early_exit, dropout, T, seed)   G-Ladder (eg_engine.h)
 *       .param_table() .buffer(kind) (a float32 view owned by the model)
 *       .begin() .forward_step() .loss() .backward() .zero_grad() .adamw_step()
 *       .train_batch() .predict_batch()  (whole batch, GIL released; predict
 *                                          checks signals after each ladder)
 *       .keep(mask)  (eval: drop exited subgraphs between forward steps)
 *   exit_reset / exit_step / exit_decide   the early-exit policy (exit.c)
 * Arguments are converted and range-checked here under the GIL; the core runs
 * with the GIL released; a busy flag rejects use of a Ladder from two threads
 * at once. A Graph is immutable and sampled by any number of threads.
 */
#include "_core.h"
#include "eg_engine.h"
#include "eg_graph.h"

#include <string.h>

/* ------------------------------------------------------------ helpers */

static PyObject *batch_to_tuple(eg_batch *b)
{
    npy_intp n1 = (npy_intp)b->num_nodes, n2 = (npy_intp)b->num_graphs + 1,
             n3 = (npy_intp)b->num_nodes + 1, n4 = (npy_intp)b->num_edges;
    PyObject *a1 = eg_py_array_copy(1, &n1, NPY_INT64, b->nodes);
    PyObject *a2 = eg_py_array_copy(1, &n2, NPY_INT64, b->graph_ptr);
    PyObject *a3 = eg_py_array_copy(1, &n3, NPY_INT64, b->indptr);
    PyObject *a4 = eg_py_array_copy(1, &n4, NPY_INT64, b->indices);
    PyObject *res = NULL;
    if (a1 && a2 && a3 && a4) {
        res = PyTuple_Pack(4, a1, a2, a3, a4);
    }
    Py_XDECREF(a1);
    Py_XDECREF(a2);
    Py_XDECREF(a3);
    Py_XDECREF(a4);
    return res;
}

/* -------------------------------------------------------------- Graph */

typedef struct {
    PyObject_HEAD
    eg_graph *g;
} GraphObject;

static void Graph_dealloc(GraphObject *self)
{
    eg_graph_free(self->g);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Graph_init(GraphObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"src", "dst", "num_nodes", "undirected", NULL};
    PyObject *so, *dob;
    long long n;
    int undirected = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL|p", kwlist, &so, &dob, &n, &undirected)) {
        return -1;
    }
    if (eg_py_init_once(self->g, "Graph") < 0) {
        return -1;
    }
    PyArrayObject *src = NULL, *dst = NULL;
    int rc = -1;
    src = eg_py_i64_vector(so, "src");
    if (src == NULL) {
        goto fail;
    }
    dst = eg_py_i64_vector(dob, "dst");
    if (dst == NULL) {
        goto fail;
    }
    if (PyArray_DIM(src, 0) != PyArray_DIM(dst, 0)) {
        PyErr_SetString(PyExc_ValueError, "src and dst must have the same length");
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    eg_graph *g = NULL;
    const int64_t *s = PyArray_DATA(src), *d = PyArray_DATA(dst);
    int64_t E = (int64_t)PyArray_DIM(src, 0);
    EG_PY_NOGIL(st = eg_graph_build(&g, (int64_t)n, s, d, E, undirected, &err));
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    self->g = g;
    rc = 0;
fail:
    Py_XDECREF(src);
    Py_XDECREF(dst);
    return rc;
}

static int graph_ready(GraphObject *self)
{
    return eg_py_ready(self->g, "Graph");
}

static PyObject *Graph_get_num_nodes(GraphObject *self, void *c)
{
    return graph_ready(self) < 0 ? NULL : PyLong_FromLongLong(self->g->num_nodes);
}

static PyObject *Graph_get_num_edges(GraphObject *self, void *c)
{
    return graph_ready(self) < 0 ? NULL : PyLong_FromLongLong(self->g->num_edges);
}

static PyObject *Graph_copy_array(GraphObject *self, int which)
{
    if (graph_ready(self) < 0) {
        return NULL;
    }
    npy_intp n = which == 0 ? (npy_intp)self->g->num_nodes + 1 : (npy_intp)self->g->num_edges;
    return eg_py_array_copy(1, &n, NPY_INT64, which == 0 ? self->g->indptr : self->g->indices);
}

static PyObject *Graph_indptr(GraphObject *self, PyObject *noargs) { return Graph_copy_array(self, 0); }
static PyObject *Graph_indices(GraphObject *self, PyObject *noargs) { return Graph_copy_array(self, 1); }

static PyObject *Graph_sample(GraphObject *self, PyObject *args, int kind)
{
    PyObject *to;
    long long cap_or_steps = 0;
    double restart = 0.0;
    unsigned long long seed;
    if (kind == 0) {
        if (!PyArg_ParseTuple(args, "OLK", &to, &cap_or_steps, &seed)) {
            return NULL;
        }
    } else if (!PyArg_ParseTuple(args, "OLdK", &to, &cap_or_steps, &restart, &seed)) {
        return NULL;
    }
    if (graph_ready(self) < 0) {
        return NULL;
    }
    PyArrayObject *t = eg_py_i64_vector(to, "targets");
    if (t == NULL) {
        return NULL;
    }
    /* The graph is immutable once built (init refuses a second build) and
     * the samplers only read it (const eg_graph *; the batch is the call's
     * own), so any number of threads may sample at once: no busy flag. */
    eg_batch b;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const int64_t *tp = PyArray_DATA(t);
    int64_t nt = (int64_t)PyArray_DIM(t, 0);
    EG_PY_NOGIL(st = kind == 0 ? eg_sample_khop(self->g, tp, nt, (int64_t)cap_or_steps,
                                                (uint64_t)seed, &b, &err)
                               : eg_sample_rw(self->g, tp, nt, (int64_t)cap_or_steps,
                                              (float)restart, (uint64_t)seed, &b, &err));
    Py_DECREF(t);
    if (st != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
    PyObject *res = batch_to_tuple(&b);
    eg_batch_free(&b);
    return res;
}

static PyObject *Graph_sample_khop(GraphObject *self, PyObject *args) { return Graph_sample(self, args, 0); }
static PyObject *Graph_sample_rw(GraphObject *self, PyObject *args) { return Graph_sample(self, args, 1); }

static PyMethodDef Graph_methods[] = {
    {"indptr", (PyCFunction)Graph_indptr, METH_NOARGS, "CSR row pointer (copy), in-neighbours."},
    {"indices", (PyCFunction)Graph_indices, METH_NOARGS, "CSR column indices (copy)."},
    {"sample_khop", (PyCFunction)Graph_sample_khop, METH_VARARGS,
     "sample_khop(targets, max_neighbors, seed) -> (nodes, graph_ptr, indptr, indices)"},
    {"sample_rw", (PyCFunction)Graph_sample_rw, METH_VARARGS,
     "sample_rw(targets, walk_steps, restart, seed) -> (nodes, graph_ptr, indptr, indices)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Graph_getset[] = {
    {"num_nodes", (getter)Graph_get_num_nodes, NULL, "number of nodes", NULL},
    {"num_edges", (getter)Graph_get_num_edges, NULL, "stored directed edges", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GraphType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.Graph",
    .tp_basicsize = sizeof(GraphObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "In-neighbour CSR graph. Use engine_py.Graph.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Graph_init,
    .tp_dealloc = (destructor)Graph_dealloc,
    .tp_methods = Graph_methods,
    .tp_getset = Graph_getset,
};

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
                             "seed", NULL};
    eg_ladder_config c;
    memset(&c, 0, sizeof c);
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiiiiiiiipffK", kwlist, &c.num_ladders, &c.in_dim,
                                     &c.reduced_dim, &c.hidden, &c.num_classes, &c.gnn,
                                     &c.gnn_layers, &c.act, &c.norm, &c.heads, &c.early_exit,
                                     &c.dropout, &c.T, &seed)) {
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
    PyArrayObject *gp, *ptr, *src, *labels;
    PyArrayObject *H[64];
    int nH;
} batch_args;

static void batch_args_free(batch_args *b)
{
    Py_XDECREF(b->gp);
    Py_XDECREF(b->ptr);
    Py_XDECREF(b->src);
    Py_XDECREF(b->labels);
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
    npy_intp G = PyArray_DIM(b->gp, 0) - 1, N = PyArray_DIM(b->ptr, 0) - 1;
    if (gp[G] != (int64_t)N) {
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
    int64_t G = PyArray_DIM(b.gp, 0) - 1, N = PyArray_DIM(b.ptr, 0) - 1;
    EG_PY_NOGIL(st = eg_ladder_begin(self->m, G, PyArray_DATA(b.gp), N, PyArray_DATA(b.ptr),
                                     PyArray_DATA(b.src), training, (uint64_t)seed, &err));
    res = eg_py_finish(&self->busy, st, &err, NULL);
fail:
    batch_args_free(&b);
    return res;
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
    PyArrayObject *H = parse_states(self, ho, (npy_intp)N, i);
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

/* Shared by train_batch / predict_batch: parse (graph_ptr, indptr, indices, states list). */
static int parse_full(LadderObject *self, batch_args *b, PyObject *gpo, PyObject *ptro,
                      PyObject *srco, PyObject *hlist)
{
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    if (parse_graph(self, b, gpo, ptro, srco) < 0) {
        return -1;
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
    npy_intp N = PyArray_DIM(b->ptr, 0) - 1;
    for (int i = 0; i < c->num_ladders; i++) {
        b->H[i] = parse_states(self, PySequence_Fast_GET_ITEM(seq, i), N, i);
        if (b->H[i] == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        b->nH = i + 1;
    }
    Py_DECREF(seq);
    return 0;
}

static PyObject *Ladder_train_batch(LadderObject *self, PyObject *args)
{
    PyObject *gpo, *ptro, *srco, *hlist, *yo;
    unsigned long long seed;
    float lr, wd;
    if (!PyArg_ParseTuple(args, "OOOOOKff", &gpo, &ptro, &srco, &hlist, &yo, &seed, &lr, &wd) ||
        ladder_ready(self) < 0) {
        return NULL;
    }
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    batch_args b;
    memset(&b, 0, sizeof b);
    PyObject *res = NULL;
    if (parse_full(self, &b, gpo, ptro, srco, hlist) < 0) {
        goto fail;
    }
    int64_t G = PyArray_DIM(b.gp, 0) - 1, N = PyArray_DIM(b.ptr, 0) - 1;
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
                                          PyArray_DATA(b.src), H, PyArray_DATA(b.labels),
                                          (uint64_t)seed, lr, wd, &loss, &err));
    eg_py_leave(&self->busy);
    res = eg_py_result(st, &err, NULL, PyFloat_FromDouble((double)loss));
fail:
    batch_args_free(&b);
    return res;
}

static PyObject *Ladder_predict_batch(LadderObject *self, PyObject *args)
{
    PyObject *gpo, *ptro, *srco, *hlist;
    if (!PyArg_ParseTuple(args, "OOOO", &gpo, &ptro, &srco, &hlist) || ladder_ready(self) < 0) {
        return NULL;
    }
    const eg_ladder_config *c = eg_ladder_get_config(self->m);
    batch_args b;
    memset(&b, 0, sizeof b);
    PyObject *res = NULL;
    if (parse_full(self, &b, gpo, ptro, srco, hlist) < 0) {
        goto fail;
    }
    int64_t G = PyArray_DIM(b.gp, 0) - 1, N = PyArray_DIM(b.ptr, 0) - 1;
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
    {"forward_step", (PyCFunction)Ladder_forward_step, METH_VARARGS,
     "forward_step(i, states, keep_states=True) -> exit logits (G, C) or None. keep_states=False: "
     "prediction only (no copy of states; backward refused)."},
    {"loss", (PyCFunction)Ladder_loss, METH_O, "loss(labels) -> (summed loss, per-head losses)."},
    {"backward", (PyCFunction)Ladder_backward, METH_NOARGS, "Accumulate gradients of the last loss."},
    {"zero_grad", (PyCFunction)Ladder_zero_grad, METH_NOARGS, "Zero the gradient buffer."},
    {"adamw_step", (PyCFunction)Ladder_adamw_step, METH_VARARGS,
     "adamw_step(lr, weight_decay, beta1=0.9, beta2=0.999, eps=1e-8)."},
    {"train_batch", (PyCFunction)Ladder_train_batch, METH_VARARGS,
     "train_batch(graph_ptr, indptr, indices, states, labels, seed, lr, wd) -> loss."},
    {"predict_batch", (PyCFunction)Ladder_predict_batch, METH_VARARGS,
     "predict_batch(graph_ptr, indptr, indices, states) -> logits (K, G, C) (zeros for ladders without a head)."},
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

/* ------------------------------------------------------- exit policy */

/* The policy's state arrays (writable, C-contiguous, exact dtypes): probs
 * (n, C) float32, last (n,) int64, streak and exit_at (n,) int32. */
static int exit_state_from(eg_exit_state *s, PyObject *last, PyObject *streak, PyObject *exit_at,
                           PyObject *probs, int patience, float threshold)
{
    npy_intp sp[2] = {EG_PY_ANY, EG_PY_ANY};
    void *p, *l, *k, *e;
    if (eg_py_check_array(probs, "exit state probs", NPY_FLOAT32, 2, sp, EG_PY_WRITE, &p) < 0) {
        return -1;
    }
    if (sp[1] < 1 || sp[1] > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "exit state: need at least one class");
        return -1;
    }
    if (eg_py_check_array(last, "exit state last", NPY_INT64, 1, sp, EG_PY_WRITE, &l) < 0 ||
        eg_py_check_array(streak, "exit state streak", NPY_INT32, 1, sp, EG_PY_WRITE, &k) < 0 ||
        eg_py_check_array(exit_at, "exit state exit_at", NPY_INT32, 1, sp, EG_PY_WRITE, &e) < 0) {
        return -1;
    }
    *s = (eg_exit_state){(int64_t)sp[0], (int)sp[1], patience, threshold, l, k, e, p};
    return 0;
}

static PyObject *py_exit_reset(PyObject *mod, PyObject *args)
{
    PyObject *last, *streak, *exit_at, *probs;
    int patience;
    float threshold;
    if (!PyArg_ParseTuple(args, "OOOOif", &last, &streak, &exit_at, &probs, &patience, &threshold)) {
        return NULL;
    }
    eg_exit_state s;
    if (exit_state_from(&s, last, streak, exit_at, probs, patience, threshold) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    return eg_py_finish(NULL, eg_exit_reset(&s, &err), &err, NULL);
}

static PyObject *py_exit_step(PyObject *mod, PyObject *args)
{
    PyObject *last, *streak, *exit_at, *probs, *idxo, *lo;
    int patience, ladder, final;
    float threshold;
    if (!PyArg_ParseTuple(args, "OOOOifipOO", &last, &streak, &exit_at, &probs, &patience, &threshold,
                          &ladder, &final, &idxo, &lo)) {
        return NULL;
    }
    eg_exit_state s;
    if (exit_state_from(&s, last, streak, exit_at, probs, patience, threshold) < 0) {
        return NULL;
    }
    PyArrayObject *idx = eg_py_i64_vector(idxo, "idx"), *L = NULL;
    PyObject *act = NULL;
    if (idx == NULL) {
        return NULL;
    }
    npy_intp m = PyArray_DIM(idx, 0);
    const npy_intp lshape[2] = {m, s.C};
    L = eg_py_array(lo, NPY_FLOAT32, 0, 2, lshape, "exit step: logits must have shape (%lld, %d)",
                    (long long)m, s.C);
    if (L == NULL) {
        goto fail;
    }
    act = PyArray_SimpleNew(1, &m, NPY_BOOL);
    if (act == NULL) {
        goto fail;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_exit_step(&s, ladder, final, (int64_t)m, PyArray_DATA(idx), PyArray_DATA(L),
                                PyArray_DATA((PyArrayObject *)act), NULL, &err);
    act = eg_py_result(st, &err, NULL, act);
fail:
    Py_XDECREF(idx);
    Py_XDECREF(L);
    return act;
}

static PyObject *py_exit_decide(PyObject *mod, PyObject *args)
{
    PyObject *lo, *hho;
    int patience;
    float threshold;
    if (!PyArg_ParseTuple(args, "OifO", &lo, &patience, &threshold, &hho)) {
        return NULL;
    }
    static const char lmsg[] = "logits must have shape (K, n, C) with K, C >= 1";
    PyArrayObject *L = eg_py_array(lo, NPY_FLOAT32, 0, 3, NULL, lmsg);
    PyArrayObject *hh = NULL;
    PyObject *res = NULL;
    if (L == NULL) {
        return NULL;
    }
    npy_intp K = PyArray_DIM(L, 0), n = PyArray_DIM(L, 1), C = PyArray_DIM(L, 2);
    if (K < 1 || C < 1 || K > 4096 || C > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, lmsg);
        goto fail;
    }
    if (hho != Py_None) {
        hh = eg_py_array(hho, NPY_UINT8, NPY_ARRAY_FORCECAST, 1, &K,
                         "has_head must have one entry per ladder");
        if (hh == NULL) {
            goto fail;
        }
    }
    /* probs, exit_at: returned; last, streak: the policy's scratch */
    PyObject *o[4] = {eg_py_zeros(NPY_FLOAT32, 2, n, C, 0, 0), eg_py_zeros(NPY_INT32, 1, n, 0, 0, 0),
                      eg_py_zeros(NPY_INT64, 1, n, 0, 0, 0), eg_py_zeros(NPY_INT32, 1, n, 0, 0, 0)};
    if (eg_py_all_made(o, 4) < 0) {
        goto fail;
    }
    eg_exit_state s = {(int64_t)n, (int)C, patience, threshold,
                       PyArray_DATA((PyArrayObject *)o[2]), PyArray_DATA((PyArrayObject *)o[3]),
                       PyArray_DATA((PyArrayObject *)o[1]), PyArray_DATA((PyArrayObject *)o[0])};
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_exit_decide(&s, (int)K, PyArray_DATA(L), hh ? PyArray_DATA(hh) : NULL,
                                    &err));
    Py_DECREF(o[2]);
    Py_DECREF(o[3]);
    res = eg_py_result(st, &err, NULL, Py_BuildValue("(NN)", o[0], o[1]));
fail:
    Py_XDECREF(L);
    Py_XDECREF(hh);
    return res;
}

static PyMethodDef exit_functions[] = {
    {"exit_reset", py_exit_reset, METH_VARARGS,
     "exit_reset(last, streak, exit_at, probs, patience, threshold): validate and reset a policy state."},
    {"exit_step", py_exit_step, METH_VARARGS,
     "exit_step(last, streak, exit_at, probs, patience, threshold, ladder, final, idx, logits) -> "
     "still-active mask (bool, len(idx)). Refuses exited targets."},
    {"exit_decide", py_exit_decide, METH_VARARGS,
     "exit_decide(logits (K, n, C), patience, threshold, has_head or None) -> (probs, exit_at)."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_engine(PyObject *module)
{
    if (PyModule_AddFunctions(module, exit_functions) < 0) {
        return -1;
    }
    if (eg_py_add_type(module, "Graph", &GraphType) < 0 ||
        eg_py_add_type(module, "Ladder", &LadderType) < 0) {
        return -1;
    }
    return 0;
}
