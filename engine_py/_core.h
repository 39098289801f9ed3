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

#include <limits.h> /* LLONG_MAX: "no upper bound" for eg_py_check_range */

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
 * The one set of helpers for the glue files (defined in _core.c). Each
 * returns a new reference (or 0) on success, NULL (or -1) with a Python
 * exception set on failure. */

/* Run the statement(s) with the GIL released, after applying this thread's
 * OpenMP team size (eg_py_sync_threads): how every core call that may take
 * long is made. Long loops that check signals between steps
 * (EG_PY_CHECK_SIGNALS) write the Py_BEGIN/END_ALLOW_THREADS block out. */
#define EG_PY_NOGIL(...)          \
    do {                          \
        eg_py_sync_threads();     \
        Py_BEGIN_ALLOW_THREADS    \
        __VA_ARGS__;              \
        Py_END_ALLOW_THREADS      \
    } while (0)

/* The end of a core call that returns `value` (a new reference, or NULL
 * with an exception if making it failed): value when st is EG_OK, else
 * value is dropped and err raised (eg_py_raise). */
PyObject *eg_py_result(eg_status st, const eg_err *err, PyObject *corrupt_type, PyObject *value);

/* The end of a call into the core: leave *busy (when busy is not NULL),
 * then return None if st is EG_OK, else raise err (eg_py_raise). */
PyObject *eg_py_finish(int *busy, eg_status st, const eg_err *err, PyObject *corrupt_type);

/* An object's core handle: eg_py_ready raises RuntimeError "<what> is not
 * initialised" when handle is NULL (a method called before __init__ or
 * after a failed one); eg_py_init_once raises RuntimeError "<what> is
 * already initialised" when it is not (a second __init__). 0 or -1. */
int eg_py_ready(const void *handle, const char *what);
int eg_py_init_once(const void *handle, const char *what);

/* eg_py_ready, then eg_py_enter: the entry of a method that computes with
 * an object's handle (leave with eg_py_leave or eg_py_finish). 0 or -1. */
int eg_py_enter_ready(const void *handle, int *busy, const char *what);

/* v in [lo, hi], else `exc` (NULL: ValueError) "<what> must be in [lo, hi],
 * got v" ("<what> must be >= lo, got v" when hi is LLONG_MAX). 0 or -1. */
int eg_py_check_range(long long v, long long lo, long long hi, PyObject *exc, const char *what);

/* An integer argument: any object with __index__ (int, NumPy integers; not
 * float, str or None: TypeError), in [lo, hi] as eg_py_check_range. */
/* precision: None or "float32" -> EG_PREC_F32, "bfloat16" -> EG_PREC_BF16,
 * "int8" -> EG_PREC_INT8 (eg_bf16.h); anything else raises ValueError naming `what`. 0 or -1. */
int eg_py_precision_arg(PyObject *o, const char *what, int *out);

int eg_py_int_arg(PyObject *o, long long lo, long long hi, PyObject *exc, const char *what,
                  long long *out);

/* `o` converted to an aligned, C-contiguous array of `type`: NumPy's safe
 * casting (TypeError otherwise) unless `flags` adds NPY_ARRAY_FORCECAST.
 * Then, when ndim >= 0, the number of dimensions must be ndim and, when
 * shape != NULL, dimension i must be shape[i] (an entry < 0 matches any
 * size); if not, ValueError with the printf-style message fmt, ...
 * (fmt may be NULL when ndim < 0: nothing is checked). */
PyArrayObject *eg_py_array(PyObject *o, int type, int flags, int ndim, const npy_intp *shape,
                           const char *fmt, ...);

/* eg_py_array for a 1-D array of at most max_len entries (INT32_MAX where
 * the core counts them in int, NPY_MAX_INTP for no limit): ValueError
 * "<what> must be a 1-D array, got <n>-D" or "<what> has more than
 * <max_len> entries" otherwise. */
PyArrayObject *eg_py_vector(PyObject *o, int type, int flags, npy_intp max_len, const char *what);

/* A 1-D int64 array of any length (node ids, row ids, CSR pointers, labels). */
static inline PyArrayObject *eg_py_i64_vector(PyObject *o, const char *what)
{
    return eg_py_vector(o, NPY_INT64, 0, NPY_MAX_INTP, what);
}

/* Flags of eg_py_check_array. */
#define EG_PY_ANY ((npy_intp)-1) /* a shape entry that matches any size; filled in */
enum {
    EG_PY_WRITE = 1,    /* the core writes into it: must be writeable */
    EG_PY_OPTIONAL = 2, /* None is accepted (*data = NULL) */
    EG_PY_INT_DIMS = 4, /* every dimension <= INT_MAX / 4 (kernels with int sizes) */
};

/* Check, without converting, an array the core reads or writes in place:
 * `o` must be an ndarray (TypeError naming `name` otherwise) of exactly
 * `type` with ndim dimensions matching shape (EG_PY_ANY entries match any
 * size and are filled in), C-contiguous and aligned, plus what `flags` asks
 * (ValueError naming `name`, the dtype or the dimension otherwise). *data
 * (data may be NULL) gets its data pointer. 0 or -1. */
int eg_py_check_array(PyObject *o, const char *name, int type, int ndim, npy_intp *shape,
                      int flags, void **data);

/* Every ids[i] (type NPY_INT32 or NPY_INT64) in [0, hi), else `exc` with
 * the message fmt formatted as (long long id, Py_ssize_t position, long
 * long hi). 0 or -1. */
int eg_py_check_ids(const void *ids, int type, size_t n, long long hi, PyObject *exc,
                    const char *fmt);

/* A new zero-filled array of `type` with nd <= 4 dimensions d0, d1, ... */
PyObject *eg_py_zeros(int type, int nd, npy_intp d0, npy_intp d1, npy_intp d2, npy_intp d3);

/* For freshly made outputs: 0 if none of the n objects is NULL, else drop
 * the references to the others and return -1 (their exception is set). */
int eg_py_all_made(PyObject **objs, int n);

/* A new array of `type` and shape dims holding a copy of the bytes at src
 * (src may be NULL when the array is empty). */
PyObject *eg_py_array_copy(int nd, const npy_intp *dims, int type, const void *src);

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

/* ------------------------------------------------ packed-state encoders
 * encode_layers shared by every model that fills an eg_bert_state (BERT,
 * the Llama family): validation of the packed batch, groups of at most
 * EG_PY_CHUNK_TOKENS tokens, a layer at a time with signal checks, the GIL
 * released. Defined in _core_bert.c. */
#include "eg_bert.h"
typedef struct {
    const void *model;
    eg_bert_state *state;
    int *busy, *users;
    const char *what;                /* "BertModel" in messages */
    int vocab_size, num_layers, hidden_size, max_position;
    const char *max_position_name;   /* how messages name the length limit */
    eg_status (*embed)(const void *, eg_bert_state *, const int32_t *, const int64_t *, int,
                       eg_err *);
    eg_status (*run_layers)(const void *, eg_bert_state *, int, eg_err *);
    void (*pool)(const eg_bert_state *, float *);
} eg_py_encoder;
PyObject *eg_py_encode_layers(const eg_py_encoder *e, PyObject *ids, PyObject *offsets,
                              PyObject *layers);
/* Fill *e for a LlamaModel with the given pooling ("mean" or "last"): 1,
 * or 0 when obj is not a LlamaModel, -1 with an exception set on a bad
 * pooling. Defined in _core_llama.c (BertState uses it). */
int eg_py_llama_encoder_of(PyObject *obj, const char *pooling, eg_py_encoder *e);
/* ids (int32 1-D) and offsets (int64, n+1 from 0, non-decreasing, ending at
 * len(ids)), converted and checked; 0 or -1 with an exception set. */
int eg_py_convert_batch(PyObject *ids_obj, PyObject *off_obj, PyArrayObject **ids,
                        PyArrayObject **off, int *n_seq);

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
int eg_py_init_llama(PyObject *module);   /* _core_llama.c: Llama-family decoders */
int eg_py_init_llama_train(PyObject *module); /* _core_llama_train.c: LoRA fine-tuning */
int eg_py_init_cache(PyObject *module);   /* _core_cache.c: layer cache */
int eg_py_init_graph(PyObject *module);   /* _core_graph.c: CSR graph, samplers */
int eg_py_init_engine(PyObject *module);  /* _core_engine.c: G-Ladder */
int eg_py_init_exit(PyObject *module);    /* _core_exit.c: early-exit policy */
int eg_py_init_gmoe(PyObject *module);    /* _core_gmoe.c: GMoE layer kernels */

#endif
