/*
 * _core.c — module init for engine_py._core, the core-level functions
 * (threads, build information, the fp16/bf16 converters) and the argument
 * helpers the glue files share (declared in _core.h).
 */
#define EG_PY_IMPORT_ARRAY_HERE
#include "_core.h"
#include "eg_bf16.h"
#include "eg_quant.h"
#include "eg_isa.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenMP keeps the thread count per thread: omp_set_num_threads in
 * set_num_threads() reaches the calling thread only, a Python thread started
 * later would run OpenMP regions with libgomp's default, and a library that
 * sets the calling thread's count (threadpoolctl's OpenMP controller) would
 * leave this thread's count behind once it restores it. So the process-wide
 * count of set_num_threads is the one truth: eg_py_enter (the entry of every
 * long method) makes the calling thread's OpenMP count equal to it when it is
 * not (an omp_get_max_threads() read, a few ns). threadpoolctl limits reach
 * engine_py through its own controller (engine_py/_threads.py), which calls
 * set_num_threads, not by setting libgomp's per-thread value. Only OpenMP's
 * value is re-applied here: BLAS's count is process-wide and was set by
 * set_num_threads (or limited on its own, e.g. threadpoolctl user_api="blas",
 * which stays in force). Called under the GIL. */
void eg_py_sync_threads(void)
{
#ifdef _OPENMP
    const int want = eg_get_num_threads();
    if (omp_get_max_threads() != want) {
        omp_set_num_threads(want);
    }
#endif
}

/* Exported (the module is built with hidden visibility) only so that
 * threadpoolctl can tell this extension from other loaded libraries whose
 * file name starts with "_core." (its check_symbols); the count itself is
 * read and set through the Python functions, under the GIL. */
__attribute__((visibility("default"))) int engine_py_get_num_threads(void)
{
    return eg_get_num_threads();
}

PyObject *eg_py_raise(const eg_err *err, PyObject *corrupt_type)
{
    PyObject *type;
    switch (err->status) {
    case EG_ENOMEM: type = PyExc_MemoryError; break;
    case EG_EIO: type = PyExc_OSError; break;
    case EG_ECORRUPT: type = corrupt_type != NULL ? corrupt_type : PyExc_ValueError; break;
    case EG_ESTATE: type = PyExc_RuntimeError; break;
    case EG_EINTR: type = PyExc_KeyboardInterrupt; break;
    case EG_EINVAL:
    case EG_EOVERFLOW:
    default: type = PyExc_ValueError; break;
    }
    PyErr_SetString(type, err->msg[0] != '\0' ? err->msg : eg_status_name(err->status));
    return NULL;
}

unsigned long eg_py_main_thread = 0;

int eg_py_enter(int *busy, const char *what)
{
    if (*busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s is already in use by another thread; use one object per thread",
                     what);
        return -1;
    }
    *busy = 1;
    eg_py_sync_threads();
    return 0;
}

void eg_py_leave(int *busy)
{
    *busy = 0;
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be in [1, 4096], got %ld", n);
        return NULL;
    }
    eg_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromLong(eg_get_num_threads());
}

static PyObject *py_blas_parallel_calls(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromLong(eg_blas_parallel_calls());
}

static PyObject *py_build_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    eg_py_sync_threads();   /* report what a core call from this thread uses */
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:i,s:i,s:s,s:s,s:O,s:s,s:z}",
                         "version", EG_VERSION_STRING,
                         "blas", eg_blas_name(),
                         "blas_config", eg_blas_config(),
                         "blas_corename", eg_blas_corename(),
                         "blas_threads", eg_blas_get_num_threads(),
                         "omp_threads", eg_omp_max_threads(),
                         "build_flags", eg_build_flags(),
                         "isa", eg_isa_name(eg_isa_level()),
                         "bf16_kernel", eg_bf16_kernel_available() ? Py_True : Py_False,
                         "int8_kernel", eg_int8_kernel_name(eg_int8_kernel_level()),
                         "blas_error", eg_blas_last_error());
}

/* Convert a 1-D-or-any-shape array between float32 and a 16-bit format.
 * kind: 0 = f16, 1 = bf16. direction: 0 = to f32, 1 = from f32. The 16-bit
 * side is carried as uint16. */
static PyObject *convert16(PyObject *arg, int kind, int to_f32)
{
    int in_type = to_f32 ? NPY_UINT16 : NPY_FLOAT32;
    int out_type = to_f32 ? NPY_FLOAT32 : NPY_UINT16;
    PyArrayObject *in = (PyArrayObject *)PyArray_FROM_OTF(arg, in_type, NPY_ARRAY_IN_ARRAY);
    if (in == NULL) {
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(PyArray_NDIM(in), PyArray_DIMS(in), out_type);
    if (out == NULL) {
        Py_DECREF(in);
        return NULL;
    }
    size_t n = (size_t)PyArray_SIZE(in);
    const void *src = PyArray_DATA(in);
    void *dst = PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    if (to_f32) {
        (kind == 0 ? eg_f16_to_f32 : eg_bf16_to_f32)((const uint16_t *)src, (float *)dst, n);
    } else {
        (kind == 0 ? eg_f32_to_f16 : eg_f32_to_bf16)((const float *)src, (uint16_t *)dst, n);
    }
    Py_END_ALLOW_THREADS
    Py_DECREF(in);
    return (PyObject *)out;
}

static PyObject *py_f16_to_f32(PyObject *s, PyObject *a) { (void)s; return convert16(a, 0, 1); }
static PyObject *py_f32_to_f16(PyObject *s, PyObject *a) { (void)s; return convert16(a, 0, 0); }
static PyObject *py_bf16_to_f32(PyObject *s, PyObject *a) { (void)s; return convert16(a, 1, 1); }
static PyObject *py_f32_to_bf16(PyObject *s, PyObject *a) { (void)s; return convert16(a, 1, 0); }

/* The SIMD copy of the dispatched kernels in use and the CPU's best
 * (csrc/core/isa.c); engine_py/_isa.py checks ENGINE_PY_ISA against them. */
static PyObject *py_isa_levels(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("(ss)", eg_isa_name(eg_isa_level()), eg_isa_name(eg_isa_cpu_level()));
}

static PyMethodDef core_methods[] = {
    {"isa_levels", py_isa_levels, METH_NOARGS,
     "isa_levels()\n--\n\n(level in use, CPU's best level), each 'generic', 'avx2' or 'avx512'."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n)\n--\n\nUse n threads for OpenMP regions and BLAS calls alike."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads()\n--\n\nThe thread count the core uses."},
    {"build_info", py_build_info, METH_NOARGS,
     "build_info()\n--\n\nVersion, BLAS (config, kernel 'blas_corename') and its thread count,\n"
     "OpenMP threads, build flags, the core's SIMD level 'isa' (avx512 / avx2 / generic),\n"
     "the sticky BLAS error (None if none)."},
    {"_blas_parallel_calls", py_blas_parallel_calls, METH_NOARGS,
     "_blas_parallel_calls()\n--\n\nBLAS calls run with more than one job since load (-1: unknown\n"
     "for this build). For tests of thread limits."},
    {"f16_to_f32", py_f16_to_f32, METH_O, "Half bits (uint16 array) to float32."},
    {"f32_to_f16", py_f32_to_f16, METH_O, "float32 to half bits (uint16), round to nearest even."},
    {"bf16_to_f32", py_bf16_to_f32, METH_O, "bfloat16 bits (uint16 array) to float32."},
    {"f32_to_bf16", py_f32_to_bf16, METH_O, "float32 to bfloat16 bits (uint16), round to nearest even."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "engine_py._core",
    "C core of engine_py. Use the public API in engine_py instead.", -1,
    core_methods, NULL, NULL, NULL, NULL,
};

int eg_py_init_bpe(PyObject *module); /* _core_bpe.c */

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL) {
        return NULL;
    }
    /* the thread that receives signals (see EG_PY_CHECK_SIGNALS) */
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main_thread = threading != NULL ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = main_thread != NULL ? PyObject_GetAttrString(main_thread, "ident") : NULL;
    Py_XDECREF(threading);
    Py_XDECREF(main_thread);
    if (ident == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    eg_py_main_thread = PyLong_AsUnsignedLong(ident);
    Py_DECREF(ident);
    if (PyErr_Occurred()) {
        Py_DECREF(m);
        return NULL;
    }
    if (eg_py_init_io(m) < 0 || eg_py_init_gguf(m) < 0 || eg_py_init_text(m) < 0 ||
        eg_py_init_bert(m) < 0 || eg_py_init_llama(m) < 0 || eg_py_init_llama_train(m) < 0 || eg_py_init_cache(m) < 0 || eg_py_init_graph(m) < 0 ||
        eg_py_init_engine(m) < 0 || eg_py_init_exit(m) < 0 ||
        eg_py_init_gmoe(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (eg_py_init_bpe(m) < 0) { /* _core_bpe.c: BPE tokenizers */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* ------------------------------------------------------ argument helpers */

PyObject *eg_py_result(eg_status st, const eg_err *err, PyObject *corrupt_type, PyObject *value)
{
    if (st != EG_OK) {
        Py_XDECREF(value);
        return eg_py_raise(err, corrupt_type);
    }
    return value;
}

PyObject *eg_py_add_exception(PyObject *module, const char *name, const char *doc, PyObject *base)
{
    char qualname[128];
    snprintf(qualname, sizeof qualname, "engine_py._core.%s", name);
    PyObject *exc = PyErr_NewExceptionWithDoc(qualname, doc, base, NULL);
    if (exc == NULL) {
        return NULL;
    }
    Py_INCREF(exc);   /* one reference for the module, one for the caller's static */
    if (PyModule_AddObject(module, name, exc) < 0) {
        Py_DECREF(exc);
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

int eg_py_fs_path(PyObject *arg, PyObject **bytes, PyObject **str)
{
    *str = NULL;
    if (!PyUnicode_FSConverter(arg, bytes)) {
        return -1;
    }
    *str = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(*bytes));
    if (*str == NULL) {
        Py_CLEAR(*bytes);
        return -1;
    }
    return 0;
}

PyObject *eg_py_raise_file_error(const eg_err *err, int sys_errno, PyObject *path, PyObject *format_error)
{
    if (err->status == EG_EIO && sys_errno != 0) {
        PyObject *args = Py_BuildValue("(isO)", sys_errno, err->msg, path);
        if (args != NULL) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
        return NULL;
    }
    if (err->status == EG_ECORRUPT || err->status == EG_EOVERFLOW || err->status == EG_EINVAL) {
        PyErr_SetString(format_error, err->msg);
        return NULL;
    }
    return eg_py_raise(err, format_error);
}

PyObject *eg_py_finish(int *busy, eg_status st, const eg_err *err, PyObject *corrupt_type)
{
    if (busy != NULL) {
        eg_py_leave(busy);
    }
    return eg_py_result(st, err, corrupt_type, Py_NewRef(Py_None));
}

int eg_py_ready(const void *handle, const char *what)
{
    if (handle == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s is not initialised", what);
        return -1;
    }
    return 0;
}

int eg_py_init_once(const void *handle, const char *what)
{
    if (handle != NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s is already initialised", what);
        return -1;
    }
    return 0;
}

int eg_py_enter_ready(const void *handle, int *busy, const char *what)
{
    if (eg_py_ready(handle, what) < 0) {
        return -1;
    }
    return eg_py_enter(busy, what);
}

/* `exc` (NULL: ValueError) saying what range `what` must be in; got is an int. */
static int range_error(PyObject *exc, const char *what, long long lo, long long hi, PyObject *got)
{
    exc = exc != NULL ? exc : PyExc_ValueError;
    if (hi == LLONG_MAX) {
        PyErr_Format(exc, "%s must be >= %lld, got %S", what, lo, got);
    } else {
        PyErr_Format(exc, "%s must be in [%lld, %lld], got %S", what, lo, hi, got);
    }
    return -1;
}

int eg_py_check_range(long long v, long long lo, long long hi, PyObject *exc, const char *what)
{
    if (v >= lo && v <= hi) {
        return 0;
    }
    PyObject *got = PyLong_FromLongLong(v);
    if (got != NULL) {
        range_error(exc, what, lo, hi, got);
        Py_DECREF(got);
    }
    return -1;
}

int eg_py_precision_arg(PyObject *o, const char *what, int *out)
{
    if (o == Py_None) {
        *out = EG_PREC_F32;
        return 0;
    }
    if (PyUnicode_Check(o)) {
        if (PyUnicode_CompareWithASCIIString(o, "float32") == 0) {
            *out = EG_PREC_F32;
            return 0;
        }
        if (PyUnicode_CompareWithASCIIString(o, "bfloat16") == 0) {
            *out = EG_PREC_BF16;
            return 0;
        }
        if (PyUnicode_CompareWithASCIIString(o, "int8") == 0) {
            *out = EG_PREC_INT8;
            return 0;
        }
    }
    PyErr_Format(PyUnicode_Check(o) ? PyExc_ValueError : PyExc_TypeError,
                 "%s must be 'float32', 'bfloat16' or 'int8', not %R", what, o);
    return -1;
}

int eg_py_int_arg(PyObject *o, long long lo, long long hi, PyObject *exc, const char *what,
                  long long *out)
{
    PyObject *i = PyNumber_Index(o);
    if (i == NULL) {
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    int rc = 0;
    if (v == -1 && PyErr_Occurred()) {
        rc = -1;
    } else if (overflow != 0 || v < lo || v > hi) {
        rc = range_error(exc, what, lo, hi, i);
    } else {
        *out = v;
    }
    Py_DECREF(i);
    return rc;
}

/* The first dimension of `a` that does not match shape (entries < 0 match
 * any size), ndim when a has another number of dimensions, -1 if all
 * match. */
static int bad_dim(PyArrayObject *a, int ndim, const npy_intp *shape)
{
    if (PyArray_NDIM(a) != ndim) {
        return ndim;
    }
    for (int i = 0; shape != NULL && i < ndim; i++) {
        if (shape[i] >= 0 && PyArray_DIM(a, i) != shape[i]) {
            return i;
        }
    }
    return -1;
}

PyArrayObject *eg_py_array(PyObject *o, int type, int flags, int ndim, const npy_intp *shape,
                           const char *fmt, ...)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(o, type, NPY_ARRAY_IN_ARRAY | flags);
    if (a == NULL || ndim < 0 || bad_dim(a, ndim, shape) < 0) {
        return a;
    }
    va_list ap;
    va_start(ap, fmt);
    PyErr_FormatV(PyExc_ValueError, fmt, ap);
    va_end(ap);
    Py_DECREF(a);
    return NULL;
}

PyArrayObject *eg_py_vector(PyObject *o, int type, int flags, npy_intp max_len, const char *what)
{
    PyArrayObject *a = eg_py_array(o, type, flags, -1, NULL, NULL);
    if (a == NULL) {
        return NULL;
    }
    if (PyArray_NDIM(a) != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be a 1-D array, got %d-D", what, PyArray_NDIM(a));
    } else if (PyArray_DIM(a, 0) > max_len) {
        PyErr_Format(PyExc_ValueError, "%s has more than %zd entries", what, (Py_ssize_t)max_len);
    } else {
        return a;
    }
    Py_DECREF(a);
    return NULL;
}

int eg_py_check_array(PyObject *o, const char *name, int type, int ndim, npy_intp *shape,
                      int flags, void **data)
{
    if (data != NULL) {
        *data = NULL;
    }
    if (o == Py_None && (flags & EG_PY_OPTIONAL)) {
        return 0;
    }
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %.100s", name,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != type) {
        PyArray_Descr *want = PyArray_DescrFromType(type);
        if (want != NULL) {
            PyErr_Format(PyExc_ValueError, "%s must have dtype %S, got %S", name,
                         (PyObject *)want, (PyObject *)PyArray_DESCR(a));
            Py_DECREF(want);
        }
        return -1;
    }
    int i = bad_dim(a, ndim, shape);
    if (i == ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d", name, ndim,
                     PyArray_NDIM(a));
        return -1;
    }
    if (i >= 0) {
        PyErr_Format(PyExc_ValueError, "%s: dimension %d is %zd, expected %zd", name, i,
                     (Py_ssize_t)PyArray_DIM(a, i), (Py_ssize_t)shape[i]);
        return -1;
    }
    for (i = 0; i < ndim; i++) {
        if ((flags & EG_PY_INT_DIMS) && PyArray_DIM(a, i) > INT_MAX / 4) {
            PyErr_Format(PyExc_ValueError, "%s: dimension %d too large", name, i);
            return -1;
        }
    }
    for (i = 0; shape != NULL && i < ndim; i++) {
        shape[i] = PyArray_DIM(a, i);
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", name);
        return -1;
    }
    if ((flags & EG_PY_WRITE) && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be writeable", name);
        return -1;
    }
    if (data != NULL) {
        *data = PyArray_DATA(a);
    }
    return 0;
}

int eg_py_check_ids(const void *ids, int type, size_t n, long long hi, PyObject *exc,
                    const char *fmt)
{
    for (size_t i = 0; i < n; i++) {
        long long v = type == NPY_INT32 ? ((const int32_t *)ids)[i] : ((const int64_t *)ids)[i];
        if (v < 0 || v >= hi) {
            PyErr_Format(exc, fmt, v, (Py_ssize_t)i, hi);
            return -1;
        }
    }
    return 0;
}

PyObject *eg_py_zeros(int type, int nd, npy_intp d0, npy_intp d1, npy_intp d2, npy_intp d3)
{
    npy_intp dims[4] = {d0, d1, d2, d3};
    return PyArray_ZEROS(nd, dims, type, 0);
}

int eg_py_all_made(PyObject **objs, int n)
{
    int ok = 1;
    for (int i = 0; i < n; i++) {
        ok = ok && objs[i] != NULL;
    }
    if (!ok) {
        for (int i = 0; i < n; i++) {
            Py_XDECREF(objs[i]);
        }
        return -1;
    }
    return 0;
}

PyObject *eg_py_array_copy(int nd, const npy_intp *dims, int type, const void *src)
{
    PyObject *a = PyArray_SimpleNew(nd, (npy_intp *)dims, type);
    if (a != NULL && PyArray_NBYTES((PyArrayObject *)a) > 0) {
        memcpy(PyArray_DATA((PyArrayObject *)a), src, (size_t)PyArray_NBYTES((PyArrayObject *)a));
    }
    return a;
}

PyObject *eg_py_set_base(PyObject *arr, PyObject *owner)
{
    if (arr == NULL) {
        return NULL;
    }
    Py_INCREF(owner);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) {   /* steals owner */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

int eg_py_add_type(PyObject *module, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, name, (PyObject *)type);
}
