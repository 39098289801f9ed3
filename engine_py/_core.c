/*
 * _core.c — module init for engine_py._core, the core-level functions
 * (threads, build information, the fp16/bf16 converters) and the argument
 * helpers the glue files share (declared in _core.h).
 */
#define EG_PY_IMPORT_ARRAY_HERE
#include "_core.h"
#include "eg_isa.h"

#include <stdarg.h>
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
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:i,s:i,s:s,s:s,s:z}",
                         "version", EG_VERSION_STRING,
                         "blas", eg_blas_name(),
                         "blas_config", eg_blas_config(),
                         "blas_corename", eg_blas_corename(),
                         "blas_threads", eg_blas_get_num_threads(),
                         "omp_threads", eg_omp_max_threads(),
                         "build_flags", eg_build_flags(),
                         "isa", eg_isa_name(eg_isa_level()),
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
    if (eg_py_init_io(m) < 0 || eg_py_init_gguf(m) < 0 || eg_py_init_text(m) < 0 || eg_py_init_bert(m) < 0 ||
        eg_py_init_cache(m) < 0 || eg_py_init_engine(m) < 0 ||
        eg_py_init_gmoe(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* ------------------------------------------------------ argument helpers */

/* dims of `a` match ndim and shape (entries < 0 match any size) */
static int shape_matches(PyArrayObject *a, int ndim, const npy_intp *shape)
{
    if (ndim < 0) {
        return 1;
    }
    if (PyArray_NDIM(a) != ndim) {
        return 0;
    }
    for (int i = 0; shape != NULL && i < ndim; i++) {
        if (shape[i] >= 0 && PyArray_DIM(a, i) != shape[i]) {
            return 0;
        }
    }
    return 1;
}

PyArrayObject *eg_py_array(PyObject *o, int type, int flags, int ndim, const npy_intp *shape,
                           const char *fmt, ...)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(o, type, NPY_ARRAY_IN_ARRAY | flags);
    if (a == NULL || shape_matches(a, ndim, shape)) {
        return a;
    }
    va_list ap;
    va_start(ap, fmt);
    PyErr_FormatV(PyExc_ValueError, fmt, ap);
    va_end(ap);
    Py_DECREF(a);
    return NULL;
}

int eg_py_check_out(PyObject *o, int type, int ndim, const npy_intp *shape, const char *fmt, ...)
{
    if (PyArray_Check(o) && PyArray_TYPE((PyArrayObject *)o) == type &&
        shape_matches((PyArrayObject *)o, ndim, shape) &&
        PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o) && PyArray_ISWRITEABLE((PyArrayObject *)o)) {
        return 0;
    }
    va_list ap;
    va_start(ap, fmt);
    PyErr_FormatV(PyExc_ValueError, fmt, ap);
    va_end(ap);
    return -1;
}

PyObject *eg_py_array_copy(int nd, const npy_intp *dims, int type, const void *src)
{
    PyObject *a = PyArray_SimpleNew(nd, (npy_intp *)dims, type);
    if (a != NULL && PyArray_NBYTES((PyArrayObject *)a) > 0) {
        memcpy(PyArray_DATA((PyArrayObject *)a), src, (size_t)PyArray_NBYTES((PyArrayObject *)a));
    }
    return a;
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
    if (st != EG_OK) {
        return eg_py_raise(err, corrupt_type);
    }
    Py_RETURN_NONE;
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
