/*
 * _core_graph.c — Python glue for the CSR graph and its samplers
 * (csrc/graph, eg_graph.h).
 *
 * Type added to engine_py._core:
 *   Graph(src, dst, num_nodes, undirected)   CSR graph (eg_graph.h)
 *       .num_nodes .num_edges .indptr() .indices()
 *       .sample_khop(targets, max_neighbors, seed) -> (nodes, graph_ptr, indptr, indices)
 *       .sample_rw(targets, walk_steps, restart, seed) -> same tuple
 * Arguments are converted and range-checked here under the GIL; the core runs
 * with the GIL released. A Graph is immutable and sampled by any number of
 * threads.
 */
#include "_core.h"
#include "eg_graph.h"


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

int eg_py_init_graph(PyObject *module)
{
    return eg_py_add_type(module, "Graph", &GraphType);
}
