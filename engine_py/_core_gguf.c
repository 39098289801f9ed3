/*
 * _core_gguf.c — Python glue for csrc/io/gguf.c: the GGUF reader.
 *
 * gguf_open(path) maps and validates the file once (eg_gguf_open) inside a
 * GGUFMapping object. raw(i) returns a read-only uint8 view of a tensor's
 * blocks whose base is that object, so the mapping lives as long as some
 * view does; dequantize(i) returns a fresh float32 array shaped like
 * PyTorch / NumPy (GGUF's dims reversed). Errors in a file raise GGUFError
 * (a ValueError) naming the file and the field; OS errors raise OSError with
 * errno and filename. engine_py/io.py wraps this in GGUFFile.
 */
#include "_core.h"
#include "eg_gguf.h"
#include "eg_quant.h"

#include <string.h>

static PyObject *GGUFError = NULL;

typedef struct {
    PyObject_HEAD
    eg_gguf_file file;
    PyObject *path;        /* str */
    PyObject *weakreflist;
} GGUFMappingObject;

static void mapping_dealloc(GGUFMappingObject *self)
{
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    eg_gguf_close(&self->file);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *mapping_repr(GGUFMappingObject *self)
{
    return PyUnicode_FromFormat("<GGUFMapping %R, v%u, %zu tensors, %zu bytes>",
                                self->path ? self->path : Py_None, (unsigned)self->file.version,
                                self->file.n_tensors, self->file.size);
}

/* ------------------------------------------------------------- metadata */

static int npy_type_of(eg_gguf_vtype t)
{
    switch (t) {
    case EG_GGUF_UINT8: return NPY_UINT8;
    case EG_GGUF_INT8: return NPY_INT8;
    case EG_GGUF_UINT16: return NPY_UINT16;
    case EG_GGUF_INT16: return NPY_INT16;
    case EG_GGUF_UINT32: return NPY_UINT32;
    case EG_GGUF_INT32: return NPY_INT32;
    case EG_GGUF_FLOAT32: return NPY_FLOAT32;
    case EG_GGUF_BOOL: return NPY_BOOL;
    case EG_GGUF_UINT64: return NPY_UINT64;
    case EG_GGUF_INT64: return NPY_INT64;
    case EG_GGUF_FLOAT64: return NPY_FLOAT64;
    default: return -1;
    }
}

/* Metadata strings may hold any bytes; invalid UTF-8 is kept losslessly
 * as lone surrogates (os.fsdecode's convention). */
static PyObject *str_value(const eg_gguf_str *s)
{
    return PyUnicode_DecodeUTF8(s->s, (Py_ssize_t)s->len, "surrogateescape");
}

static PyObject *scalar_value(GGUFMappingObject *m, const eg_gguf_kv *kv, size_t i)
{
    eg_err err;
    eg_err_clear(&err);
    switch (kv->elem_type) {
    case EG_GGUF_STRING:
        return str_value(&kv->strs[i]);
    case EG_GGUF_BOOL:
        return PyBool_FromLong(kv->data[i]);
    case EG_GGUF_FLOAT32:
    case EG_GGUF_FLOAT64: {
        double d;
        if (eg_gguf_kv_float(&m->file, kv, i, &d, &err) != EG_OK) {
            return eg_py_raise(&err, GGUFError);
        }
        return PyFloat_FromDouble(d);
    }
    case EG_GGUF_UINT64: {
        uint64_t u;
        memcpy(&u, kv->data + 8 * i, 8);   /* little-endian host */
        return PyLong_FromUnsignedLongLong(u);
    }
    default: {
        int64_t v;
        if (eg_gguf_kv_int(&m->file, kv, i, &v, &err) != EG_OK) {
            return eg_py_raise(&err, GGUFError);
        }
        return PyLong_FromLongLong(v);
    }
    }
}

static PyObject *kv_value(GGUFMappingObject *m, const eg_gguf_kv *kv)
{
    if (kv->type != EG_GGUF_ARRAY) {
        return scalar_value(m, kv, 0);
    }
    if (kv->elem_type == EG_GGUF_STRING) {
        PyObject *list = PyList_New((Py_ssize_t)kv->n);
        if (list == NULL) {
            return NULL;
        }
        for (size_t i = 0; i < kv->n; i++) {
            PyObject *s = str_value(&kv->strs[i]);
            if (s == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, s);
        }
        return list;
    }
    npy_intp dims[1] = {(npy_intp)kv->n};
    return eg_py_array_copy(1, dims, npy_type_of(kv->elem_type), kv->n > 0 ? kv->data : NULL);
}

static PyObject *mapping_metadata(GGUFMappingObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *md = PyDict_New();
    if (md == NULL) {
        return NULL;
    }
    for (size_t k = 0; k < self->file.n_kv; k++) {
        const eg_gguf_kv *kv = &self->file.kv[k];
        PyObject *v = kv_value(self, kv);
        if (v == NULL || PyDict_SetItemString(md, kv->key, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(md);
            return NULL;
        }
        Py_DECREF(v);
    }
    return md;
}

/* ------------------------------------------------------------- tensors */

static PyObject *torch_shape(const eg_gguf_tensor *t)
{
    PyObject *s = PyTuple_New(t->n_dims);
    if (s == NULL) {
        return NULL;
    }
    for (int d = 0; d < t->n_dims; d++) {
        PyObject *v = PyLong_FromLongLong((long long)t->ne[t->n_dims - 1 - d]);
        if (v == NULL) {
            Py_DECREF(s);
            return NULL;
        }
        PyTuple_SET_ITEM(s, d, v);
    }
    return s;
}

/* [(name, shape, type_name, type_id, nbytes, offset, n_elements), ...] in
 * file order; shape in PyTorch order (GGUF dims reversed). */
static PyObject *mapping_tensor_infos(GGUFMappingObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *list = PyList_New((Py_ssize_t)self->file.n_tensors);
    if (list == NULL) {
        return NULL;
    }
    for (size_t k = 0; k < self->file.n_tensors; k++) {
        const eg_gguf_tensor *t = &self->file.tensors[k];
        PyObject *shape = torch_shape(t);
        PyObject *item = shape == NULL ? NULL
                             : Py_BuildValue("(s#Nsinnn)", t->name, (Py_ssize_t)t->name_len, shape,
                                             eg_ggml_type_name(t->type), t->type, (Py_ssize_t)t->nbytes,
                                             (Py_ssize_t)t->offset, (Py_ssize_t)t->n_elements);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, item);
    }
    return list;
}

static const eg_gguf_tensor *tensor_arg(GGUFMappingObject *self, PyObject *arg)
{
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0 || (size_t)i >= self->file.n_tensors) {
        PyErr_Format(PyExc_IndexError, "tensor index %zd out of range (%zu tensors)", i, self->file.n_tensors);
        return NULL;
    }
    return &self->file.tensors[i];
}

static PyObject *mapping_dequantize(GGUFMappingObject *self, PyObject *arg)
{
    const eg_gguf_tensor *t = tensor_arg(self, arg);
    if (t == NULL) {
        return NULL;
    }
    if (!eg_ggml_can_dequantize(t->type)) {
        PyErr_Format(GGUFError, "%U: tensor \"%s\": cannot dequantize type %s", self->path, t->name,
                     eg_ggml_type_name(t->type));
        return NULL;
    }
    npy_intp dims[EG_GGUF_MAX_DIMS];
    for (int d = 0; d < t->n_dims; d++) {
        dims[d] = (npy_intp)t->ne[t->n_dims - 1 - d];
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(t->n_dims, dims, NPY_FLOAT32);
    if (out == NULL) {
        return NULL;
    }
    float *dst = PyArray_DATA(out);
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_gguf_dequantize(&self->file, t, dst, &err));
    if (st != EG_OK) {
        Py_DECREF(out);
        return eg_py_raise(&err, GGUFError);
    }
    return (PyObject *)out;
}

static PyObject *mapping_raw(GGUFMappingObject *self, PyObject *arg)
{
    const eg_gguf_tensor *t = tensor_arg(self, arg);
    if (t == NULL) {
        return NULL;
    }
    npy_intp dims[1] = {(npy_intp)t->nbytes};
    PyObject *arr = PyArray_New(&PyArray_Type, 1, dims, NPY_UINT8, NULL,
                                (void *)(self->file.base + t->offset), 0,
                                NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    return eg_py_set_base(arr, (PyObject *)self);
}

static PyObject *get_version(GGUFMappingObject *self, void *c) { (void)c; return PyLong_FromUnsignedLong(self->file.version); }
static PyObject *get_alignment(GGUFMappingObject *self, void *c) { (void)c; return PyLong_FromSize_t(self->file.alignment); }
static PyObject *get_data_offset(GGUFMappingObject *self, void *c) { (void)c; return PyLong_FromSize_t(self->file.data_start); }
static PyObject *get_size(GGUFMappingObject *self, void *c) { (void)c; return PyLong_FromSize_t(self->file.size); }
static PyObject *get_path(GGUFMappingObject *self, void *c) { (void)c; Py_INCREF(self->path); return self->path; }

static PyGetSetDef mapping_getset[] = {
    {"version", (getter)get_version, NULL, "GGUF version (2 or 3).", NULL},
    {"alignment", (getter)get_alignment, NULL, "general.alignment, or 32.", NULL},
    {"data_offset", (getter)get_data_offset, NULL, "File offset of the data section.", NULL},
    {"size", (getter)get_size, NULL, "Size of the mapped file in bytes.", NULL},
    {"path", (getter)get_path, NULL, "The file's path.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef mapping_methods[] = {
    {"metadata", (PyCFunction)mapping_metadata, METH_NOARGS,
     "metadata()\n--\n\nA new dict key -> value (numeric and bool arrays as NumPy arrays, string arrays as lists)."},
    {"tensor_infos", (PyCFunction)mapping_tensor_infos, METH_NOARGS,
     "tensor_infos()\n--\n\n[(name, shape, type_name, type_id, nbytes, offset, n_elements)] in file order."},
    {"dequantize", (PyCFunction)mapping_dequantize, METH_O,
     "dequantize(i)\n--\n\nTensor i as a new float32 array (shape in PyTorch order)."},
    {"raw", (PyCFunction)mapping_raw, METH_O,
     "raw(i)\n--\n\nTensor i's bytes as a read-only uint8 view into the mapping."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GGUFMappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.GGUFMapping",
    .tp_basicsize = sizeof(GGUFMappingObject),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_repr = (reprfunc)mapping_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A validated, read-only memory mapping of a GGUF file (gguf_open); the base of the views "
              "raw() returns. It is unmapped when the last reference is gone.",
    .tp_weaklistoffset = offsetof(GGUFMappingObject, weakreflist),
    .tp_getset = mapping_getset,
    .tp_methods = mapping_methods,
};

static PyObject *py_gguf_open(PyObject *self, PyObject *path_arg)
{
    (void)self;
    PyObject *pbytes, *path;
    if (eg_py_fs_path(path_arg, &pbytes, &path) < 0) {
        return NULL;
    }
    GGUFMappingObject *m = PyObject_New(GGUFMappingObject, &GGUFMappingType);
    if (m == NULL) {
        Py_DECREF(pbytes);
        Py_DECREF(path);
        return NULL;
    }
    memset(&m->file, 0, sizeof m->file);
    m->weakreflist = NULL;
    m->path = path;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const char *cpath = PyBytes_AS_STRING(pbytes);
    EG_PY_NOGIL(st = eg_gguf_open(cpath, &m->file, &err));
    Py_DECREF(pbytes);
    if (st != EG_OK) {
        eg_py_raise_file_error(&err, m->file.sys_errno, m->path, GGUFError);
        Py_DECREF(m);
        return NULL;
    }
    return (PyObject *)m;
}

/* qmatmul(x, raw, type, rows, cols, bias=None, precision="float32"):
 * Y = x @ W^T (+ bias) with W a (rows, cols) matrix of ggml `type` given as
 * its raw bytes (any buffer, e.g. GGUFMapping.raw(i)); eg_qmatmul_prec. For
 * tests and benchmarks. */
static PyObject *py_qmatmul(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"x", "raw", "type", "rows", "cols", "bias", "precision", NULL};
    PyObject *xo, *rawo, *typeo, *rowso, *colso, *biaso = Py_None, *preco = Py_None;
    int precision;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|OO:qmatmul", kwlist, &xo, &rawo, &typeo,
                                     &rowso, &colso, &biaso, &preco)
        || eg_py_precision_arg(preco, "qmatmul: precision", &precision) < 0) {
        return NULL;
    }
    long long type, rows, cols;
    if (eg_py_int_arg(typeo, 0, INT32_MAX, NULL, "type", &type) < 0
        || eg_py_int_arg(rowso, 1, INT32_MAX, NULL, "rows", &rows) < 0
        || eg_py_int_arg(colso, 1, INT32_MAX, NULL, "cols", &cols) < 0) {
        return NULL;
    }
    PyArrayObject *x = NULL, *bias = NULL, *out = NULL;
    Py_buffer raw;
    int have_raw = 0;
    eg_err err;
    eg_err_clear(&err);
    eg_qmat w;
    if (eg_qmat_init(&w, (int)type, rows, cols, NULL, "qmatmul", &err) != EG_OK) {
        return eg_py_raise(&err, NULL);
    }
    if (!PyArray_Check(xo) || PyArray_TYPE((PyArrayObject *)xo) != NPY_FLOAT32) {
        PyErr_SetString(PyExc_TypeError, "qmatmul: x must be a float32 ndarray");
        return NULL;
    }
    x = eg_py_array(xo, NPY_FLOAT32, 0, 2, (const npy_intp[]){-1, (npy_intp)cols},
                    "qmatmul: x must have shape (N, %lld)", cols);
    if (x == NULL) {
        goto fail;
    }
    if (biaso != Py_None) {
        bias = eg_py_array(biaso, NPY_FLOAT32, 0, 1, (const npy_intp[]){(npy_intp)rows},
                           "qmatmul: bias must have shape (%lld,)", rows);
        if (bias == NULL) {
            goto fail;
        }
    }
    if (PyObject_GetBuffer(rawo, &raw, PyBUF_SIMPLE) < 0) {
        goto fail;
    }
    have_raw = 1;
    if ((size_t)raw.len != w.row_bytes * (size_t)w.rows) {
        PyErr_Format(PyExc_ValueError, "qmatmul: raw has %zd bytes; a (%lld, %lld) %s matrix has "
                     "%zu", raw.len, rows, cols, eg_ggml_type_name(w.type),
                     w.row_bytes * (size_t)w.rows);
        goto fail;
    }
    w.data = raw.buf;
    const npy_intp n = PyArray_DIM(x, 0);
    npy_intp odims[2] = {n, (npy_intp)rows};
    out = (PyArrayObject *)PyArray_SimpleNew(2, odims, NPY_FLOAT32);
    if (out == NULL) {
        goto fail;
    }
    eg_status st;
    EG_PY_NOGIL(st = eg_qmatmul_prec(PyArray_DATA(out), (size_t)rows, PyArray_DATA(x),
                                     (size_t)cols, (size_t)n, &w,
                                     bias != NULL ? PyArray_DATA(bias) : NULL, precision, &err));
    PyBuffer_Release(&raw);
    Py_DECREF(x);
    Py_XDECREF(bias);
    return eg_py_result(st, &err, NULL, (PyObject *)out);
fail:
    if (have_raw) {
        PyBuffer_Release(&raw);
    }
    Py_XDECREF(x);
    Py_XDECREF(bias);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *py_qmatmul_tuning(PyObject *self, PyObject *args)
{
    (void)self;
    int direct_max = -1, tile_rows = -1;
    if (!PyArg_ParseTuple(args, "|ii:_qmatmul_tuning", &direct_max, &tile_rows)) {
        return NULL;
    }
    int d = eg_qmatmul_direct_max(direct_max);
    int t = eg_qmatmul_tile_rows(tile_rows);
    return Py_BuildValue("(ii)", d, t);
}

/* _q8_quantize(x) -> (codes int8 (N, cols), scales float32 (N, cols / 32)):
 * the int8 precision's activation quantizer (eg_q8_quantize_rows), for
 * tests. */
static PyObject *py_q8_quantize(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyArray_Check(arg) || PyArray_TYPE((PyArrayObject *)arg) != NPY_FLOAT32
        || PyArray_NDIM((PyArrayObject *)arg) != 2) {
        PyErr_SetString(PyExc_TypeError, "_q8_quantize: x must be a 2-D float32 ndarray");
        return NULL;
    }
    PyArrayObject *x = (PyArrayObject *)PyArray_FROM_OTF(arg, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY);
    if (x == NULL) {
        return NULL;
    }
    const npy_intp n = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    if (cols % 32 != 0 || cols > INT32_MAX) {
        Py_DECREF(x);
        PyErr_Format(PyExc_ValueError, "_q8_quantize: columns (%zd) must be a multiple of 32",
                     (Py_ssize_t)cols);
        return NULL;
    }
    npy_intp qd[2] = {n, cols}, dd[2] = {n, cols / 32};
    PyArrayObject *q = (PyArrayObject *)PyArray_SimpleNew(2, qd, NPY_UINT8);
    PyArrayObject *d = (PyArrayObject *)PyArray_SimpleNew(2, dd, NPY_FLOAT32);
    PyArrayObject *ds = (PyArrayObject *)PyArray_SimpleNew(2, dd, NPY_FLOAT32);
    if (q == NULL || d == NULL || ds == NULL) {
        Py_DECREF(x);
        Py_XDECREF(q);
        Py_XDECREF(d);
        Py_XDECREF(ds);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    eg_q8_quantize_rows(PyArray_DATA(q), PyArray_DATA(d), PyArray_DATA(ds), PyArray_DATA(x),
                        (size_t)cols, (size_t)n, (int)cols);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    Py_DECREF(ds);
    /* codes as int8: u - 128 */
    uint8_t *u = PyArray_DATA(q);
    for (npy_intp i = 0; i < n * cols; i++) {
        u[i] = (uint8_t)(u[i] ^ 0x80u);
    }
    PyObject *qi = PyArray_View(q, PyArray_DescrFromType(NPY_INT8), NULL);
    Py_DECREF(q);
    if (qi == NULL) {
        Py_DECREF(d);
        return NULL;
    }
    return Py_BuildValue("(NN)", qi, (PyObject *)d);
}

/* _int8_kernel(level=-1): force the int8 kernel level (tests; -1 clears);
 * returns (the level now in use, the previous override). */
static PyObject *py_int8_kernel(PyObject *self, PyObject *args)
{
    (void)self;
    int level = -1;
    if (!PyArg_ParseTuple(args, "|i:_int8_kernel", &level)) {
        return NULL;
    }
    if (level > eg_int8_kernel_level()) {
        PyErr_Format(PyExc_ValueError, "_int8_kernel: level %d is above this CPU's %d", level,
                     eg_int8_kernel_level());
        return NULL;
    }
    int old = eg_int8_force_level(level);
    return Py_BuildValue("(ii)", level >= 0 ? level : eg_int8_kernel_level(), old);
}

/* _int8_peak(iters) -> ops: the VPDPBUSD peak probe (eg_int8_peak_ops); the
 * caller times it. 0.0 without VNNI. */
static PyObject *py_int8_peak(PyObject *self, PyObject *arg)
{
    (void)self;
    long long iters;
    if (eg_py_int_arg(arg, 0, (long long)1 << 40, NULL, "iters", &iters) < 0) {
        return NULL;
    }
    double ops;
    eg_py_sync_threads();
    Py_BEGIN_ALLOW_THREADS
    ops = eg_int8_peak_ops((long)iters);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(ops);
}

static PyMethodDef gguf_methods[] = {
    {"_q8_quantize", py_q8_quantize, METH_O,
     "_q8_quantize(x)\n--\n\nThe int8 precision's activation quantizer: (codes int8 (N, cols), "
     "scales float32 (N, cols / 32))."},
    {"_int8_kernel", py_int8_kernel, METH_VARARGS,
     "_int8_kernel(level=-1)\n--\n\nTest hook: run int8 kernel `level` (0 generic, 1 avx2, "
     "2 avxvnni, 3 avx512vnni; -1 clears); returns (level in use, previous override)."},
    {"_int8_peak", py_int8_peak, METH_O,
     "_int8_peak(iters)\n--\n\nRun the VPDPBUSD peak loop; returns the ops done (time it)."},
    {"_qmatmul_tuning", py_qmatmul_tuning, METH_VARARGS,
     "_qmatmul_tuning(direct_max=-1, tile_rows=-1)\n--\n\nTest/benchmark hook: set the largest "
     "batch of qmatmul's direct path and the rows per tile of its GEMM path (-1 keeps a value); "
     "returns the previous (direct_max, tile_rows)."},
    {"qmatmul", (PyCFunction)(void (*)(void))py_qmatmul, METH_VARARGS | METH_KEYWORDS,
     "qmatmul(x, raw, type, rows, cols, bias=None)\n--\n\n"
     "x (N, cols) float32 @ W^T (+ bias) -> (N, rows) float32, W a (rows, cols) matrix of ggml "
     "type id `type` given as its raw bytes (rows * row_bytes; e.g. GGUFMapping.raw(i))."},
    {"gguf_open", py_gguf_open, METH_O,
     "gguf_open(path)\n--\n\nMap and validate a GGUF file; return a GGUFMapping."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_gguf(PyObject *module)
{
    if (eg_py_add_type(module, "GGUFMapping", &GGUFMappingType) < 0) {
        return -1;
    }
    GGUFError = eg_py_add_exception(
        module, "GGUFError",
        "A GGUF file breaks a rule of the format (the message names the file, the field and its offset).",
        PyExc_ValueError);
    if (GGUFError == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(module, gguf_methods);
}
