/*
 * _core_cache.c — Python glue for the layer cache file (csrc/io/cache.c).
 *
 * _core.CacheFile wraps one eg_cache handle. Arguments are converted and
 * checked under the GIL (node ids in range, shapes, dtypes); the core runs
 * with the GIL released; a busy flag makes concurrent use from two threads
 * raise RuntimeError. Layer views are NumPy arrays over their own read-only
 * mapping, owned by a _core._CacheMap base object, so they outlive the
 * CacheFile and survive a capacity growth (which replaces the file).
 *
 * _core.CacheCorruptError (a subclass of OSError) is raised for EG_ECORRUPT.
 */
#include "_core.h"

#include "eg_cache.h"

#include <string.h>

static PyObject *CacheCorruptError = NULL;

/* ---------------------------------------------------------------- _CacheMap */

typedef struct {
    PyObject_HEAD
    void *base;
    size_t len;
} CacheMapObject;

static void cachemap_dealloc(CacheMapObject *self)
{
    eg_cache_unmap(self->base, self->len);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CacheMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core._CacheMap",
    .tp_basicsize = sizeof(CacheMapObject),
    .tp_dealloc = (destructor)cachemap_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read-only mapping of one cache layer; the base of layer views.",
};

/* ---------------------------------------------------------------- CacheFile */

typedef struct {
    PyObject_HEAD
    eg_cache *c;
    int busy;
} CacheFileObject;

static PyTypeObject CacheFileType;

static void cachefile_dealloc(CacheFileObject *self)
{
    eg_cache_close(self->c);
    self->c = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* 0 if the handle is open, else -1 with ValueError. */
static int check_open(CacheFileObject *self)
{
    if (self->c == NULL) {
        PyErr_SetString(PyExc_ValueError, "the layer cache file is closed");
        return -1;
    }
    return 0;
}

/* Enter a method: the handle must be open and not in use by another thread. */
static int enter(CacheFileObject *self)
{
    if (check_open(self) < 0) {
        return -1;
    }
    return eg_py_enter(&self->busy, "this LayerCache");
}

static PyObject *wrap(eg_cache *c)
{
    CacheFileObject *o = PyObject_New(CacheFileObject, &CacheFileType);
    if (o == NULL) {
        eg_cache_close(c);
        return NULL;
    }
    o->c = c;
    o->busy = 0;
    return (PyObject *)o;
}

static int get_digest(PyObject *obj, uint8_t out[32], const char *what)
{
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(obj, &buf, &len) < 0) {
        return -1;
    }
    if (len != 32) {
        PyErr_Format(PyExc_ValueError, "%s must be 32 bytes, got %zd", what, len);
        return -1;
    }
    memcpy(out, buf, 32);
    return 0;
}

static PyObject *py_cache_create(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"path", "dtype", "num_nodes", "capacity", "dim", "layers",
                             "chunk_rows", "fp_sha256", "fp_str", "texts_digest", NULL};
    PyObject *path = NULL, *layers_obj, *fp_sha, *digest;
    int dtype;
    unsigned long long n, cap, dim;
    unsigned int chunk_rows;
    const char *fp_str;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&iKKKOIOsO", kwlist, PyUnicode_FSConverter, &path,
                                     &dtype, &n, &cap, &dim, &layers_obj, &chunk_rows, &fp_sha,
                                     &fp_str, &digest)) {
        return NULL;
    }
    eg_cache_params p;
    memset(&p, 0, sizeof p);
    int32_t layers[EG_CACHE_MAX_LAYERS];
    PyObject *seq = PySequence_Fast(layers_obj, "layers must be a sequence of ints");
    if (seq == NULL) {
        goto fail;
    }
    Py_ssize_t K = PySequence_Fast_GET_SIZE(seq);
    if (K < 1 || K > (Py_ssize_t)EG_CACHE_MAX_LAYERS) {
        PyErr_Format(PyExc_ValueError, "between 1 and %u layers, got %zd", EG_CACHE_MAX_LAYERS, K);
        goto fail;
    }
    for (Py_ssize_t i = 0; i < K; i++) {
        long long v;
        if (eg_py_int_arg(PySequence_Fast_GET_ITEM(seq, i), 0, INT32_MAX, NULL, "layer ids",
                          &v) < 0) {
            goto fail;
        }
        layers[i] = (int32_t)v;
    }
    if (eg_py_check_range(dtype, 0, 2, NULL, "dtype code") < 0) {
        goto fail;
    }
    if (get_digest(fp_sha, p.fp_sha256, "fp_sha256") < 0 || get_digest(digest, p.texts_digest, "texts_digest") < 0) {
        goto fail;
    }
    p.dtype = (eg_cache_dtype)dtype;
    p.num_nodes = n;
    p.capacity = cap;
    p.dim = dim;
    p.num_layers = (uint32_t)K;
    p.layers = layers;
    p.chunk_rows = chunk_rows;
    p.fp_str = fp_str;
    eg_cache *c = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const char *cpath = PyBytes_AS_STRING(path);
    EG_PY_NOGIL(st = eg_cache_create(&c, cpath, &p, &err));
    Py_DECREF(seq);
    Py_DECREF(path);
    if (st != EG_OK) {
        return eg_py_raise(&err, CacheCorruptError);
    }
    return wrap(c);
fail:
    Py_XDECREF(seq);
    Py_XDECREF(path);
    return NULL;
}

static PyObject *py_cache_open(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"path", "writable", NULL};
    PyObject *path = NULL;
    int writable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|i", kwlist, PyUnicode_FSConverter, &path, &writable)) {
        return NULL;
    }
    if (eg_py_check_range(writable, 0, 2, NULL,
                          "writable (0 read-only, 1 writer, 2 data worker)") < 0) {
        Py_DECREF(path);
        return NULL;
    }
    eg_cache *c = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const char *cpath = PyBytes_AS_STRING(path);
    EG_PY_NOGIL(st = eg_cache_open(&c, cpath, writable, &err));
    Py_DECREF(path);
    if (st != EG_OK) {
        return eg_py_raise(&err, CacheCorruptError);
    }
    return wrap(c);
}

static PyObject *py_crc32c(PyObject *mod, PyObject *args)
{
    (void)mod;
    Py_buffer b;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &crc)) {
        return NULL;
    }
    uint32_t r;
    EG_PY_NOGIL(r = eg_crc32c(crc, b.buf, (size_t)b.len));
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}

static PyObject *py_crc32c_impl(PyObject *mod, PyObject *noargs)
{
    (void)mod;
    (void)noargs;
    return PyUnicode_FromString(eg_crc32c_impl());
}

static PyObject *cf_info(CacheFileObject *self, PyObject *noargs)
{
    (void)noargs;
    if (check_open(self) < 0) {
        return NULL;
    }
    eg_cache_info h;
    eg_cache_get_info(self->c, &h);
    PyObject *layers = PyTuple_New(h.num_layers);
    if (layers == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < h.num_layers; i++) {
        PyObject *v = PyLong_FromLong(h.layers[i]);
        if (v == NULL) {
            Py_DECREF(layers);
            return NULL;
        }
        PyTuple_SET_ITEM(layers, i, v);
    }
    return Py_BuildValue("{s:i,s:I,s:N,s:K,s:K,s:K,s:K,s:I,s:K,s:K,s:K,s:K,s:y#,s:s,s:y#,s:O}",
                         "dtype", (int)h.dtype, "elem_size", h.elem_size, "layers", layers,
                         "dim", (unsigned long long)h.dim,
                         "capacity", (unsigned long long)h.capacity,
                         "num_nodes", (unsigned long long)h.num_nodes,
                         "rows_done", (unsigned long long)h.rows_done,
                         "chunk_rows", h.chunk_rows,
                         "seq", (unsigned long long)h.seq,
                         "data_offset", (unsigned long long)h.data_offset,
                         "layer_stride", (unsigned long long)h.layer_stride,
                         "file_size", (unsigned long long)h.file_size,
                         "fp_sha256", (const char *)h.fp_sha256, (Py_ssize_t)32,
                         "fp_str", h.fp_str,
                         "texts_digest", (const char *)h.texts_digest, (Py_ssize_t)32,
                         "writable", h.writable ? Py_True : Py_False);
}

static PyObject *cf_done_mask(CacheFileObject *self, PyObject *noargs)
{
    (void)noargs;
    if (enter(self) < 0) {
        return NULL;
    }
    eg_cache_info h;
    eg_cache_get_info(self->c, &h);
    npy_intp dims[1] = {(npy_intp)h.num_nodes};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_BOOL);
    if (out != NULL) {
        const uint64_t *bm = eg_cache_bitmap(self->c);
        npy_bool *o = (npy_bool *)PyArray_DATA(out);
        for (uint64_t r = 0; r < h.num_nodes; r++) {
            o[r] = (npy_bool)((bm[r >> 6] >> (r & 63)) & 1u);
        }
    }
    eg_py_leave(&self->busy);
    return (PyObject *)out;
}

/* write_rows (mode 0), write_data (1), mark_rows (2: no states). */
static PyObject *rows_call(CacheFileObject *self, PyObject *args, int mode)
{
    PyObject *rows_obj, *src_obj = Py_None;
    if (mode == 2 ? !PyArg_ParseTuple(args, "O", &rows_obj) : !PyArg_ParseTuple(args, "OO", &rows_obj, &src_obj)) {
        return NULL;
    }
    if (enter(self) < 0) {
        return NULL;
    }
    PyArrayObject *rows = NULL, *src = NULL;
    PyObject *ret = NULL;
    eg_cache_info h;
    eg_cache_get_info(self->c, &h);
    rows = eg_py_i64_vector(rows_obj, "rows");
    if (rows == NULL) {
        goto fail;
    }
    npy_intp n = PyArray_DIM(rows, 0);
    if (mode != 2) {
        const npy_intp shape[3] = {(npy_intp)h.num_layers, n, (npy_intp)h.dim};
        src = eg_py_array(src_obj, NPY_FLOAT32, 0, 3, shape, "states must be float32 (K=%u, n=%zd, D=%llu)",
                          h.num_layers, (Py_ssize_t)n, (unsigned long long)h.dim);
        if (src == NULL) {
            goto fail;
        }
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const int64_t *r = (const int64_t *)PyArray_DATA(rows);
    const float *s = src != NULL ? (const float *)PyArray_DATA(src) : NULL;
    eg_py_sync_threads();   /* this thread's OpenMP team size */
    Py_BEGIN_ALLOW_THREADS
    if (mode == 0) {
        st = eg_cache_write_rows(self->c, r, (size_t)n, s, &err);
    } else if (mode == 1) {
        st = eg_cache_write_data(self->c, r, (size_t)n, s, &err);
    } else {
        st = eg_cache_mark_rows(self->c, r, (size_t)n, &err);
    }
    Py_END_ALLOW_THREADS
    ret = eg_py_finish(NULL, st, &err, CacheCorruptError);
fail:
    Py_XDECREF(rows);
    Py_XDECREF(src);
    eg_py_leave(&self->busy);
    return ret;
}

static PyObject *cf_write_rows(CacheFileObject *self, PyObject *args) { return rows_call(self, args, 0); }
static PyObject *cf_write_data(CacheFileObject *self, PyObject *args) { return rows_call(self, args, 1); }
static PyObject *cf_mark_rows(CacheFileObject *self, PyObject *args) { return rows_call(self, args, 2); }

static PyObject *cf_set_num_nodes(CacheFileObject *self, PyObject *args)
{
    unsigned long long n;
    PyObject *digest;
    uint8_t d[32];
    if (!PyArg_ParseTuple(args, "KO", &n, &digest) || get_digest(digest, d, "texts_digest") < 0) {
        return NULL;
    }
    if (enter(self) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_cache_set_num_nodes(self->c, n, d, &err));
    return eg_py_finish(&self->busy, st, &err, CacheCorruptError);
}

static PyObject *cf_grow(CacheFileObject *self, PyObject *args)
{
    unsigned long long cap;
    if (!PyArg_ParseTuple(args, "K", &cap)) {
        return NULL;
    }
    if (enter(self) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_cache_grow(self->c, cap, &err));
    return eg_py_finish(&self->busy, st, &err, CacheCorruptError);
}

/* Methods taking no argument and returning None: sync, verify. */
static PyObject *simple_call(CacheFileObject *self, eg_status (*fn)(eg_cache *, eg_err *))
{
    if (enter(self) < 0) {
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = fn(self->c, &err));
    return eg_py_finish(&self->busy, st, &err, CacheCorruptError);
}

static PyObject *cf_sync(CacheFileObject *self, PyObject *noargs)
{
    (void)noargs;
    return simple_call(self, eg_cache_sync);
}

static PyObject *cf_verify(CacheFileObject *self, PyObject *noargs)
{
    (void)noargs;
    return simple_call(self, eg_cache_verify);
}

static int check_layer_index(CacheFileObject *self, unsigned int k)
{
    eg_cache_info h;
    eg_cache_get_info(self->c, &h);
    if (k >= h.num_layers) {
        PyErr_Format(PyExc_IndexError, "layer index %u out of range for %u cached layers", k, h.num_layers);
        return -1;
    }
    return 0;
}

static PyObject *cf_check_layer(CacheFileObject *self, PyObject *args)
{
    unsigned int k;
    if (!PyArg_ParseTuple(args, "I", &k)) {
        return NULL;
    }
    if (enter(self) < 0) {
        return NULL;
    }
    if (check_layer_index(self, k) < 0) {
        eg_py_leave(&self->busy);
        return NULL;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_cache_check_layer(self->c, k, &err));
    return eg_py_finish(&self->busy, st, &err, CacheCorruptError);
}

static PyObject *cf_gather(CacheFileObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"k", "ids", "out", NULL};
    unsigned int k;
    PyObject *ids_obj, *out_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "IO|O", kwlist, &k, &ids_obj, &out_obj)) {
        return NULL;
    }
    if (enter(self) < 0) {
        return NULL;
    }
    PyArrayObject *ids = NULL, *out = NULL;
    PyObject *ret = NULL;
    if (check_layer_index(self, k) < 0) {
        goto fail;
    }
    eg_cache_info h;
    eg_cache_get_info(self->c, &h);
    ids = eg_py_i64_vector(ids_obj, "gather: node_ids");
    if (ids == NULL) {
        goto fail;
    }
    npy_intp n = PyArray_DIM(ids, 0);
    const int64_t *id = (const int64_t *)PyArray_DATA(ids);
    if (eg_py_check_ids(id, NPY_INT64, (size_t)n, (long long)h.num_nodes, PyExc_IndexError,
                        "gather: node id %lld at position %zd out of range [0, %lld)") < 0) {
        goto fail;
    }
    npy_intp dims[2] = {n, (npy_intp)h.dim};
    if (out_obj == Py_None) {
        out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT32);
        if (out == NULL) {
            goto fail;
        }
    } else {
        if (eg_py_check_array(out_obj, "gather: out", NPY_FLOAT32, 2, dims, EG_PY_WRITE, NULL) < 0) {
            goto fail;
        }
        out = (PyArrayObject *)Py_NewRef(out_obj);
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    float *o = (float *)PyArray_DATA(out);
    EG_PY_NOGIL(st = eg_cache_gather(self->c, k, id, (size_t)n, o, &err));
    if (st != EG_OK) {
        eg_py_raise(&err, CacheCorruptError);
        goto fail;
    }
    ret = Py_NewRef((PyObject *)out);
fail:
    Py_XDECREF(ids);
    Py_XDECREF(out);
    eg_py_leave(&self->busy);
    return ret;
}

static PyObject *cf_map_layer(CacheFileObject *self, PyObject *args)
{
    unsigned int k;
    if (!PyArg_ParseTuple(args, "I", &k)) {
        return NULL;
    }
    if (enter(self) < 0) {
        return NULL;
    }
    PyObject *ret = NULL;
    CacheMapObject *m = NULL;
    if (check_layer_index(self, k) < 0) {
        goto fail;
    }
    eg_cache_info h;
    eg_cache_get_info(self->c, &h);
    eg_err err;
    eg_err_clear(&err);
    void *base = NULL;
    size_t len = 0;
    const void *data = NULL;
    eg_status st = eg_cache_map_layer(self->c, k, &base, &len, &data, &err);
    if (st != EG_OK) {
        eg_py_raise(&err, CacheCorruptError);
        goto fail;
    }
    m = PyObject_New(CacheMapObject, &CacheMapType);
    if (m == NULL) {
        eg_cache_unmap(base, len);
        goto fail;
    }
    m->base = base;
    m->len = len;
    int type = h.dtype == EG_CACHE_F32 ? NPY_FLOAT32 : (h.dtype == EG_CACHE_F16 ? NPY_FLOAT16 : NPY_UINT16);
    npy_intp dims[2] = {(npy_intp)h.num_nodes, (npy_intp)h.dim};
    /* no NPY_ARRAY_WRITEABLE: the mapping is PROT_READ */
    PyObject *arr = PyArray_New(&PyArray_Type, 2, dims, type, NULL, (void *)data, 0,
                                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    ret = eg_py_set_base(arr, (PyObject *)m);
fail:
    Py_XDECREF(m);
    eg_py_leave(&self->busy);
    return ret;
}

static PyObject *cf_close(CacheFileObject *self, PyObject *noargs)
{
    (void)noargs;
    if (self->c == NULL) {
        Py_RETURN_NONE;
    }
    if (eg_py_enter(&self->busy, "this LayerCache") < 0) {
        return NULL;
    }
    eg_cache *c = self->c;
    self->c = NULL;
    EG_PY_NOGIL(eg_cache_close(c));
    eg_py_leave(&self->busy);
    Py_RETURN_NONE;
}

static PyObject *cf_closed(CacheFileObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->c == NULL);
}

static PyMethodDef cf_methods[] = {
    {"info", (PyCFunction)cf_info, METH_NOARGS, "Header fields and committed state as a dict."},
    {"done_mask", (PyCFunction)cf_done_mask, METH_NOARGS, "Bool array (N,): rows committed."},
    {"write_rows", (PyCFunction)cf_write_rows, METH_VARARGS,
     "write_rows(rows int64 (n,), states float32 (K, n, D)): write, sync, commit."},
    {"write_data", (PyCFunction)cf_write_data, METH_VARARGS,
     "write_data(rows, states): write and sync rows without claiming them (writer or data worker)."},
    {"mark_rows", (PyCFunction)cf_mark_rows, METH_VARARGS,
     "mark_rows(rows): claim rows written by write_data: bitmap, chunk checksums, commit."},
    {"set_num_nodes", (PyCFunction)cf_set_num_nodes, METH_VARARGS,
     "set_num_nodes(n, texts_digest): grow the rows in use within the capacity."},
    {"grow", (PyCFunction)cf_grow, METH_VARARGS, "grow(capacity): rewrite with more room (temp + rename)."},
    {"sync", (PyCFunction)cf_sync, METH_NOARGS, "Write the state into both slots."},
    {"verify", (PyCFunction)cf_verify, METH_NOARGS, "Check header, both slots and every complete chunk."},
    {"check_layer", (PyCFunction)cf_check_layer, METH_VARARGS, "check_layer(k): check unchecked chunks of layer index k."},
    {"gather", (PyCFunction)(void (*)(void))cf_gather, METH_VARARGS | METH_KEYWORDS,
     "gather(k, ids, out=None) -> float32 (n, D) rows of layer index k."},
    {"map_layer", (PyCFunction)cf_map_layer, METH_VARARGS,
     "map_layer(k) -> read-only (N, D) view (float32, float16, or uint16 bits for bfloat16)."},
    {"close", (PyCFunction)cf_close, METH_NOARGS, "Close the file (views stay valid)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef cf_getset[] = {
    {"closed", (getter)cf_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CacheFileType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.CacheFile",
    .tp_basicsize = sizeof(CacheFileObject),
    .tp_dealloc = (destructor)cachefile_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An open layer cache file (use engine_py.LayerCache).",
    .tp_methods = cf_methods,
    .tp_getset = cf_getset,
};

static PyMethodDef cache_functions[] = {
    {"cache_create", (PyCFunction)(void (*)(void))py_cache_create, METH_VARARGS | METH_KEYWORDS,
     "cache_create(path, dtype, num_nodes, capacity, dim, layers, chunk_rows, fp_sha256, fp_str, texts_digest)"},
    {"cache_open", (PyCFunction)(void (*)(void))py_cache_open, METH_VARARGS | METH_KEYWORDS,
     "cache_open(path, writable=0) -> CacheFile (0 read-only, 1 writer with lock, 2 data worker)"},
    {"crc32c", (PyCFunction)py_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> int (CRC-32C, Castagnoli)."},
    {"crc32c_impl", (PyCFunction)py_crc32c_impl, METH_NOARGS, "'sse4.2' or 'slice-by-8'."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_cache(PyObject *module)
{
    if (eg_py_add_type(module, "CacheFile", &CacheFileType) < 0 ||
        eg_py_add_type(module, "_CacheMap", &CacheMapType) < 0) {
        return -1;
    }
    CacheCorruptError = PyErr_NewExceptionWithDoc(
        "engine_py._core.CacheCorruptError",
        "A layer cache file fails its format's checks (bad header, damaged state slot, chunk checksum mismatch).",
        PyExc_OSError, NULL);
    if (CacheCorruptError == NULL || PyModule_AddObjectRef(module, "CacheCorruptError", CacheCorruptError) < 0) {
        return -1;
    }
    for (PyMethodDef *d = cache_functions; d->ml_name != NULL; d++) {
        PyObject *f = PyCFunction_NewEx(d, NULL, NULL);
        if (f == NULL || PyModule_AddObject(module, d->ml_name, f) < 0) {
            Py_XDECREF(f);
            return -1;
        }
    }
    return 0;
}
