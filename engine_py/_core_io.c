/*
 * _core_io.c — Python glue for csrc/io: the safetensors reader and writer.
 *
 * Reading maps the file once (eg_st_open) inside a SafetensorsMapping object.
 * Tensors whose data is aligned for their dtype come back as read-only NumPy
 * views whose base is that object, so the mapping lives exactly as long as
 * some view does; misaligned tensors, and BF16 widened to float32, are
 * copied. Errors in a file raise SafetensorsError (a ValueError) naming the
 * file and the rule broken; OS errors raise OSError with errno and filename.
 */
#include "_core.h"
#include "eg_safetensors.h"

#include <string.h>

static PyObject *SafetensorsError = NULL;

/* ------------------------------------------------------ the mapping owner */

typedef struct {
    PyObject_HEAD
    eg_st_file file;
    PyObject *path;        /* str, for repr */
    PyObject *weakreflist;
} MappingObject;

static void mapping_dealloc(MappingObject *self)
{
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    eg_st_close(&self->file);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *mapping_repr(MappingObject *self)
{
    return PyUnicode_FromFormat("<SafetensorsMapping %R, %zu bytes%s>", self->path ? self->path : Py_None,
                                self->file.size, self->file.mapped ? "" : " (closed)");
}

static PyObject *mapping_get_size(MappingObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->file.size);
}

static PyGetSetDef mapping_getset[] = {
    {"size", (getter)mapping_get_size, NULL, "Size of the mapped file in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.SafetensorsMapping",
    .tp_basicsize = sizeof(MappingObject),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_repr = (reprfunc)mapping_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read-only memory mapping of a safetensors file; the base of the NumPy views "
              "load_safetensors returns. It is unmapped when the last view is gone.",
    .tp_weaklistoffset = offsetof(MappingObject, weakreflist),
    .tp_getset = mapping_getset,
};

/* Open and validate; returns a new MappingObject or NULL. */
static MappingObject *open_mapping(PyObject *path_arg)
{
    PyObject *pbytes, *path;
    if (eg_py_fs_path(path_arg, &pbytes, &path) < 0) {
        return NULL;
    }
    MappingObject *m = PyObject_New(MappingObject, &MappingType);
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
    EG_PY_NOGIL(st = eg_st_open(cpath, &m->file, &err));
    Py_DECREF(pbytes);
    if (st != EG_OK) {
        eg_py_raise_file_error(&err, m->file.sys_errno, m->path, SafetensorsError);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

static int npy_type_of(eg_st_dtype d)
{
    switch (d) {
    case EG_ST_BOOL: return NPY_BOOL;
    case EG_ST_U8: return NPY_UINT8;
    case EG_ST_I8: return NPY_INT8;
    case EG_ST_I16: return NPY_INT16;
    case EG_ST_U16: return NPY_UINT16;
    case EG_ST_F16: return NPY_FLOAT16;
    case EG_ST_BF16: return NPY_UINT16;
    case EG_ST_I32: return NPY_INT32;
    case EG_ST_U32: return NPY_UINT32;
    case EG_ST_F32: return NPY_FLOAT32;
    case EG_ST_F64: return NPY_FLOAT64;
    case EG_ST_I64: return NPY_INT64;
    case EG_ST_U64: return NPY_UINT64;
    default: return -1;
    }
}

static PyObject *shape_tuple(const eg_st_tensor *t)
{
    PyObject *s = PyTuple_New(t->ndim);
    if (s == NULL) {
        return NULL;
    }
    for (int d = 0; d < t->ndim; d++) {
        PyObject *v = PyLong_FromLongLong((long long)t->shape[d]);
        if (v == NULL) {
            Py_DECREF(s);
            return NULL;
        }
        PyTuple_SET_ITEM(s, d, v);
    }
    return s;
}

static PyObject *metadata_dict(const eg_st_file *f)
{
    if (!f->has_metadata) {
        Py_RETURN_NONE;
    }
    PyObject *md = PyDict_New();
    if (md == NULL) {
        return NULL;
    }
    for (size_t k = 0; k < f->n_meta; k++) {
        PyObject *key = PyUnicode_DecodeUTF8(f->meta[k].key, (Py_ssize_t)f->meta[k].key_len, "strict");
        PyObject *val = PyUnicode_DecodeUTF8(f->meta[k].value, (Py_ssize_t)f->meta[k].value_len, "strict");
        if (key == NULL || val == NULL || PyDict_SetItem(md, key, val) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(val);
            Py_DECREF(md);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(val);
    }
    return md;
}

/* One tensor as a NumPy array: a read-only view into the mapping when the
 * data is aligned (and no widening is asked), else a fresh copy. */
static PyObject *tensor_array(MappingObject *m, const eg_st_tensor *t, int widen_bf16)
{
    npy_intp dims[NPY_MAXDIMS];
    if (t->ndim > NPY_MAXDIMS) {
        PyErr_Format(SafetensorsError, "%U: tensor \"%s\" has %d dimensions, NumPy allows at most %d",
                     m->path, t->name, t->ndim, NPY_MAXDIMS);
        return NULL;
    }
    for (int d = 0; d < t->ndim; d++) {
        dims[d] = (npy_intp)t->shape[d];
    }
    const unsigned char *src = m->file.base + t->offset;
    size_t isz = eg_st_dtype_size(t->dtype);
    if (widen_bf16 && t->dtype == EG_ST_BF16) {
        PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(t->ndim, dims, NPY_FLOAT32);
        if (out == NULL) {
            return NULL;
        }
        size_t n = t->nbytes / 2;
        float *dst = PyArray_DATA(out);
        int ok = 1;
        eg_py_sync_threads();   /* this thread's OpenMP team size */
        Py_BEGIN_ALLOW_THREADS
        if (((uintptr_t)src & 1u) == 0) {
            eg_bf16_to_f32((const uint16_t *)(const void *)src, dst, n);
        } else {
            uint16_t *tmp = malloc(t->nbytes > 0 ? t->nbytes : 1);
            if (tmp == NULL) {
                ok = 0;
            } else {
                memcpy(tmp, src, t->nbytes);
                eg_bf16_to_f32(tmp, dst, n);
                free(tmp);
            }
        }
        Py_END_ALLOW_THREADS
        if (!ok) {
            Py_DECREF(out);
            return PyErr_NoMemory();
        }
        return (PyObject *)out;
    }
    int type = npy_type_of(t->dtype);
    PyArray_Descr *descr = PyArray_DescrFromType(type);
    if (descr == NULL) {
        return NULL;
    }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    if (isz > 1) {
        PyArray_Descr *le = PyArray_DescrNewByteorder(descr, NPY_LITTLE);
        Py_DECREF(descr);
        if (le == NULL) {
            return NULL;
        }
        descr = le;
    }
#endif
    if (t->nbytes == 0 || ((uintptr_t)src % isz) != 0) {
        PyArrayObject *out = (PyArrayObject *)PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims,
                                                                   NULL, NULL, 0, NULL);
        if (out == NULL) {
            return NULL;
        }
        void *dst = PyArray_DATA(out);
        size_t nb = t->nbytes;
        if (nb > 0) {
            EG_PY_NOGIL(memcpy(dst, src, nb));
        }
        return (PyObject *)out;
    }
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims, NULL, (void *)src,
                                         NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    return eg_py_set_base(arr, (PyObject *)m);
}

/* safetensors_load's value for one tensor: the array (tensor_array), with
 * NumPy's refusal of a shape (e.g. zero-size with a dimension past its size
 * limit) turned into a SafetensorsError naming the file and tensor. */
static PyObject *loaded_array(MappingObject *m, const eg_st_tensor *t, PyObject *name, int widen)
{
    PyObject *arr = tensor_array(m, t, widen);
    if (arr == NULL && PyErr_ExceptionMatches(PyExc_ValueError) &&
        !PyErr_ExceptionMatches(SafetensorsError)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *shape = shape_tuple(t);
        if (shape != NULL) {
            PyErr_Format(SafetensorsError, "%U: tensor %R: NumPy cannot represent shape %R: %S", m->path,
                         name, shape, value != NULL ? value : Py_None);
            Py_DECREF(shape);
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return arr;
}

/* safetensors_header's value for one tensor: (dtype, shape, (begin, end)). */
static PyObject *header_entry(const eg_st_tensor *t)
{
    PyObject *shape = shape_tuple(t);
    if (shape == NULL) {
        return NULL;
    }
    return Py_BuildValue("(sN(nn))", eg_st_dtype_name(t->dtype), shape, (Py_ssize_t)t->begin,
                         (Py_ssize_t)t->end);
}

/* Open and validate the file at `path`; return ({name: value}, metadata or
 * None), value from loaded_array (header_only 0) or header_entry (1). */
static PyObject *read_file(PyObject *path, int header_only, int widen)
{
    PyObject *tensors = NULL, *md = NULL, *result = NULL;
    MappingObject *m = open_mapping(path);
    if (m == NULL) {
        return NULL;
    }
    tensors = PyDict_New();
    if (tensors == NULL) {
        goto fail;
    }
    for (size_t k = 0; k < m->file.n_tensors; k++) {
        const eg_st_tensor *t = &m->file.tensors[k];
        PyObject *name = PyUnicode_DecodeUTF8(t->name, (Py_ssize_t)t->name_len, "strict");
        PyObject *value = NULL;
        if (name != NULL) {
            value = header_only ? header_entry(t) : loaded_array(m, t, name, widen);
        }
        int bad = value == NULL || PyDict_SetItem(tensors, name, value) < 0;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (bad) {
            goto fail;
        }
    }
    md = metadata_dict(&m->file);
    if (md == NULL) {
        goto fail;
    }
    result = PyTuple_Pack(2, tensors, md);
fail:
    Py_XDECREF(tensors);
    Py_XDECREF(md);
    Py_DECREF(m);
    return result;
}

static PyObject *py_safetensors_load(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *path;
    int widen = 1;
    if (!PyArg_ParseTuple(args, "Op:safetensors_load", &path, &widen)) {
        return NULL;
    }
    return read_file(path, 0, widen);
}

static PyObject *py_safetensors_header(PyObject *self, PyObject *path)
{
    (void)self;
    return read_file(path, 1, 0);
}

/* safetensors_save(path, entries, metadata): entries is a sequence of
 * (name: str, dtype: str, array: C-contiguous little-endian ndarray) whose
 * itemsize matches the dtype; metadata is None or a sequence of (str, str). */
static PyObject *py_safetensors_save(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *path_arg, *entries_arg, *meta_arg;
    PyObject *pbytes = NULL, *entries = NULL, *metas = NULL, *result = NULL;
    eg_st_write_entry *ents = NULL;
    eg_st_meta *meta = NULL;
    int64_t *shapes = NULL;
    if (!PyArg_ParseTuple(args, "OOO:safetensors_save", &path_arg, &entries_arg, &meta_arg)) {
        return NULL;
    }
    if (!PyUnicode_FSConverter(path_arg, &pbytes)) {
        return NULL;
    }
    /* Tuples hold strong references for the whole GIL-free write. */
    entries = PySequence_Tuple(entries_arg);
    if (entries == NULL) {
        goto fail;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(entries);
    Py_ssize_t n_meta = 0;
    if (meta_arg != Py_None) {
        metas = PySequence_Tuple(meta_arg);
        if (metas == NULL) {
            goto fail;
        }
        n_meta = PyTuple_GET_SIZE(metas);
    }
    size_t total_dims = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *it = PyTuple_GET_ITEM(entries, k);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(it, 0)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(it, 1)) || !PyArray_Check(PyTuple_GET_ITEM(it, 2))) {
            PyErr_SetString(PyExc_TypeError, "safetensors_save: entries must be (name, dtype, ndarray) tuples");
            goto fail;
        }
        total_dims += (size_t)PyArray_NDIM((PyArrayObject *)PyTuple_GET_ITEM(it, 2));
    }
    ents = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof *ents);
    shapes = PyMem_Calloc(total_dims > 0 ? total_dims : 1, sizeof *shapes);
    meta = PyMem_Calloc(n_meta > 0 ? (size_t)n_meta : 1, sizeof *meta);
    if (ents == NULL || shapes == NULL || meta == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    size_t si = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *it = PyTuple_GET_ITEM(entries, k);
        PyArrayObject *a = (PyArrayObject *)PyTuple_GET_ITEM(it, 2);
        Py_ssize_t len;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 0), &len);
        if (name == NULL) {
            goto fail;
        }
        Py_ssize_t dlen;
        const char *dname = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 1), &dlen);
        if (dname == NULL) {
            goto fail;
        }
        eg_st_dtype dt;
        if (eg_st_dtype_from_name(dname, (size_t)dlen, &dt) < 0) {
            PyErr_Format(SafetensorsError, "tensor %R: unknown safetensors dtype %R",
                         PyTuple_GET_ITEM(it, 0), PyTuple_GET_ITEM(it, 1));
            goto fail;
        }
        if (!PyArray_IS_C_CONTIGUOUS(a) || (size_t)PyArray_ITEMSIZE(a) != eg_st_dtype_size(dt)) {
            PyErr_Format(PyExc_ValueError,
                         "tensor %R: array must be C-contiguous with itemsize %zu for %s",
                         PyTuple_GET_ITEM(it, 0), eg_st_dtype_size(dt), eg_st_dtype_name(dt));
            goto fail;
        }
        ents[k].name = name;
        ents[k].name_len = (size_t)len;
        ents[k].dtype = dt;
        ents[k].ndim = PyArray_NDIM(a);
        ents[k].shape = shapes + si;
        for (int d = 0; d < PyArray_NDIM(a); d++) {
            shapes[si++] = (int64_t)PyArray_DIM(a, d);
        }
        ents[k].data = PyArray_DATA(a);
        ents[k].nbytes = (size_t)PyArray_NBYTES(a);
    }
    for (Py_ssize_t k = 0; k < n_meta; k++) {
        PyObject *it = PyTuple_GET_ITEM(metas, k);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(it, 0)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(it, 1))) {
            PyErr_SetString(PyExc_TypeError, "safetensors_save: metadata must be (str, str) pairs");
            goto fail;
        }
        Py_ssize_t kl, vl;
        meta[k].key = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 0), &kl);
        if (meta[k].key == NULL) {
            goto fail;
        }
        meta[k].value = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(it, 1), &vl);
        if (meta[k].value == NULL) {
            goto fail;
        }
        meta[k].key_len = (size_t)kl;
        meta[k].value_len = (size_t)vl;
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    const char *cpath = PyBytes_AS_STRING(pbytes);
    const eg_st_meta *mp = metas != NULL ? meta : NULL;
    EG_PY_NOGIL(st = eg_st_write(cpath, ents, (size_t)n, mp, (size_t)n_meta, &err));
    if (st != EG_OK) {
        eg_py_raise_file_error(&err, 0, NULL, SafetensorsError);
        goto fail;
    }
    result = Py_NewRef(Py_None);
fail:
    PyMem_Free(ents);
    PyMem_Free(shapes);
    PyMem_Free(meta);
    Py_XDECREF(entries);
    Py_XDECREF(metas);
    Py_XDECREF(pbytes);
    return result;
}

static PyMethodDef io_methods[] = {
    {"safetensors_load", py_safetensors_load, METH_VARARGS,
     "safetensors_load(path, widen_bf16)\n--\n\n"
     "Validate and map a safetensors file; return (dict name -> ndarray, metadata or None)."},
    {"safetensors_header", py_safetensors_header, METH_O,
     "safetensors_header(path)\n--\n\n"
     "Validate a safetensors file; return (dict name -> (dtype, shape, (begin, end)), metadata or None)."},
    {"safetensors_save", py_safetensors_save, METH_VARARGS,
     "safetensors_save(path, entries, metadata)\n--\n\n"
     "Write (name, dtype, C-contiguous ndarray) entries atomically (temp + fsync + rename)."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_io(PyObject *module)
{
    if (eg_py_add_type(module, "SafetensorsMapping", &MappingType) < 0) {
        return -1;
    }
    SafetensorsError = eg_py_add_exception(
        module, "SafetensorsError",
        "A safetensors file breaks a rule of the format (the message names the file and the rule).",
        PyExc_ValueError);
    if (SafetensorsError == NULL) {
        return -1;
    }
    if (PyModule_AddFunctions(module, io_methods) < 0) {
        return -1;
    }
    return 0;
}
