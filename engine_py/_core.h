/*
 * _core.h — shared by the engine_py/_core*.c files, the only C files that
 * include Python.h and the NumPy headers. Each _core_<area>.c converts and
 * checks Python arguments under the GIL, releases the GIL around the core
 * call and maps eg_status to an exception with the core's message.
 *
 * The extension is one module (engine_py._core) built from several files:
 * _core.c holds PyInit__core and calls each area's eg_py_init_<area>(module);
 * it also defines the argument helpers declared below.
 */
#ifndef ENGINE_PY_CORE_H
#define ENGINE_PY_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL engine_py_ARRAY_API
#ifndef EG_PY_IMPORT_ARRAY_HERE
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "eg.h"

/* Raise the Python exception matching err->status with err->msg and return
 * NULL. `corrupt_type` is used for EG_ECORRUPT (a format-specific ValueError
 * or OSError subclass); NULL means ValueError. */
PyObject *eg_py_raise(const eg_err *err, PyObject *corrupt_type);

/* A busy flag, checked and set under the GIL, makes an object used from two
 * Python threads at once raise RuntimeError instead of racing in C. */
int eg_py_enter(int *busy, const char *what);
void eg_py_leave(int *busy);

/* Apply the thread count of set_num_threads() to OpenMP in the calling
 * thread (OpenMP keeps it per thread). eg_py_enter calls it; a method that
 * runs core code without eg_py_enter calls it itself, under the GIL. */
void eg_py_sync_threads(void);

/* Ctrl-C inside long calls. Python runs signal handlers only between
 * bytecodes, so a core call that runs for seconds with the GIL released
 * would delay KeyboardInterrupt by as long. Long calls are therefore split
 * by the glue into bounded steps (a BERT layer over <= EG_PY_CHUNK_TOKENS
 * tokens, one ladder, the backward pass ...); between two steps, inside a
 * Py_BEGIN_ALLOW_THREADS block, EG_PY_CHECK_SIGNALS(stop) takes the GIL back
 * for a moment and runs pending handlers, in the main thread only (other
 * threads never receive signals, so they keep running without the GIL).
 * stop becomes 1 when a handler raised (KeyboardInterrupt): the caller
 * stops, leaves the allow-threads block, frees what it made and returns
 * NULL with that exception. The core itself stays free of Python. */
extern unsigned long eg_py_main_thread;
#define EG_PY_CHUNK_TOKENS 2048
#define EG_PY_CHECK_SIGNALS(stop)                                   \
    do {                                                            \
        if (PyThread_get_thread_ident() == eg_py_main_thread) {     \
            Py_BLOCK_THREADS                                        \
            (stop) = PyErr_CheckSignals() < 0;                      \
            Py_UNBLOCK_THREADS                                      \
        }                                                           \
    } while (0)

/* ------------------------------------------------------ argument helpers
 * Shared by the glue files. Each returns a new reference (or 0) on success,
 * NULL (or -1) with a Python exception set on failure. */

/* `o` converted to an aligned, C-contiguous array of `type`: NumPy's safe
 * casting (TypeError otherwise) unless `flags` adds NPY_ARRAY_FORCECAST.
 * Then, when ndim >= 0, the number of dimensions must be ndim and, when
 * shape != NULL, dimension i must be shape[i] (an entry < 0 matches any
 * size); if not, ValueError with the printf-style message fmt, ...
 * (fmt may be NULL when ndim < 0: nothing is checked). */
PyArrayObject *eg_py_array(PyObject *o, int type, int flags, int ndim, const npy_intp *shape,
                           const char *fmt, ...);

/* Check, without converting, that `o` is an array the core may write into:
 * an ndarray of exactly `type` with ndim dimensions matching shape (entries
 * < 0 match any size), C-contiguous and writeable. ValueError with the
 * printf-style message fmt, ... otherwise. */
int eg_py_check_out(PyObject *o, int type, int ndim, const npy_intp *shape, const char *fmt, ...);

/* A new array of `type` and shape dims holding a copy of the bytes at src
 * (src may be NULL when the array is empty). */
PyObject *eg_py_array_copy(int nd, const npy_intp *dims, int type, const void *src);

/* The end of a call into the core: leave *busy (when busy is not NULL),
 * then return None if st is EG_OK, else raise err (eg_py_raise). */
PyObject *eg_py_finish(int *busy, eg_status st, const eg_err *err, PyObject *corrupt_type);

/* An object's core handle: eg_py_ready raises RuntimeError "<what> is not
 * initialised" when handle is NULL (a method called before __init__ or
 * after a failed one); eg_py_init_once raises RuntimeError "<what> is
 * already initialised" when it is not (a second __init__). 0 or -1. */
int eg_py_ready(const void *handle, const char *what);
int eg_py_init_once(const void *handle, const char *what);

/* Make `owner` (a new reference is taken) the base of the view arr, so the
 * memory arr points into lives as long as arr. Returns arr, or NULL (arr
 * dropped) with an exception; arr may be NULL (a failed constructor). */
PyObject *eg_py_set_base(PyObject *arr, PyObject *owner);

/* A path argument (str, bytes or os.PathLike) as file-system bytes
 * (*bytes) and as str (*str), both new references. 0 or -1. */
int eg_py_fs_path(PyObject *arg, PyObject **bytes, PyObject **str);

/* Raise for a file reader's failed open of `path`: OSError(errno, message,
 * path) when the OS refused (EG_EIO with sys_errno != 0), format_error with
 * the core's message for a file breaking its format (EG_ECORRUPT,
 * EG_EOVERFLOW, EG_EINVAL), else as eg_py_raise. Returns NULL. */
PyObject *eg_py_raise_file_error(const eg_err *err, int sys_errno, PyObject *path, PyObject *format_error);

/* A new exception class engine_py._core.<name> deriving from base, added
 * to the module; returns a new reference (for the caller's static), or NULL. */
PyObject *eg_py_add_exception(PyObject *module, const char *name, const char *doc, PyObject *base);

/* PyType_Ready(type), then add it to the module as `name`. 0 or -1. */
int eg_py_add_type(PyObject *module, const char *name, PyTypeObject *type);

/* Area initialisers: add functions, types and exceptions to the module.
 * Return 0 on success, -1 with an exception set. */
int eg_py_init_io(PyObject *module);      /* _core_io.c: safetensors */
int eg_py_init_gguf(PyObject *module);    /* _core_gguf.c: GGUF reader */
int eg_py_init_text(PyObject *module);    /* _core_text.c: tokenizers */
int eg_py_init_bert(PyObject *module);    /* _core_bert.c: BERT encoder */
int eg_py_init_cache(PyObject *module);   /* _core_cache.c: layer cache */
int eg_py_init_engine(PyObject *module);  /* _core_engine.c: graph, samplers, G-Ladder */
int eg_py_init_gmoe(PyObject *module);    /* _core_gmoe.c: GMoE layer kernels */

#endif
