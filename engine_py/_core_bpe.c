/*
 * _core_bpe.c — Python glue for the BPE tokenizers (csrc/text/bpe.c).
 *
 * _core.BPE(kind, pre, tokens, types, scores, merges, bos_id=-1, eos_id=-1,
 *           unk_id=-1, add_bos=False, add_eos=False, add_space_prefix=False,
 *           ignore_merges=False, what="tokenizer", tokens_field=None,
 *           merges_field=None, byte_unk=False, pad_id=-1)
 *   kind "bytelevel" | "spm"; pre "gpt-2" | "llama-bpe" | "qwen2" | "smollm"
 *   (byte-level); tokens: list of str (token i has id i); types: list of int
 *   (GGUF token types) or None; scores: list of float or None; merges: list
 *   of "LEFT RIGHT" str.
 * _core.bpe_from_gguf(path) -> BPE built by the core from the file's
 *   tokenizer.ggml.* metadata (OSError when the OS refuses, ValueError
 *   naming the file and the key otherwise).
 * .encode_batch(texts, max_length=0, add_special_tokens=True) -> list of
 *   int32 arrays; the GIL is released while the texts are tokenized.
 * .lookup(token) -> id or -1; .token(i) -> (str, type); .vocab_size and the
 *   settings as read-only attributes.
 *
 * engine_py/tokenizer.py (BPETokenizer) wraps this.
 */
#include "_core.h"
#include "eg_bpe.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    eg_bpe *bpe;
    int busy;
} BPEObject;

static PyTypeObject BPEType;

static void bpe_dealloc(BPEObject *self)
{
    eg_bpe_free(self->bpe);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* UTF-8 of str `o` (buffer owned by o), or NULL with an exception naming
 * what[index]. A lone surrogate has no UTF-8 form: ValueError. */
static const char *utf8_of(PyObject *o, const char *what, Py_ssize_t index, Py_ssize_t *len)
{
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s[%zd] must be str, got %.100s", what, index,
                     Py_TYPE(o)->tp_name);
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8AndSize(o, len);
    if (s == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s[%zd] is not valid Unicode (it contains a lone "
                     "surrogate code point, which has no UTF-8 form)", what, index);
        return NULL;
    }
    return s;
}

static int utf8_all(PyObject *t, const char *what, const char **p, size_t *len)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        Py_ssize_t n;
        p[i] = utf8_of(PyTuple_GET_ITEM(t, i), what, i, &n);
        if (p[i] == NULL) {
            return -1;
        }
        len[i] = (size_t)n;
    }
    return 0;
}

static int bpe_init(BPEObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "pre", "tokens", "types", "scores", "merges", "bos_id",
                             "eos_id", "unk_id", "add_bos", "add_eos", "add_space_prefix",
                             "ignore_merges", "what", "tokens_field", "merges_field", "byte_unk",
                             "pad_id", NULL};
    const char *kind, *pre_name, *what = "tokenizer", *tfield = NULL, *mfield = NULL;
    PyObject *tokens_in, *types_in, *scores_in, *merges_in;
    int bos = -1, eos = -1, unk = -1, add_bos = 0, add_eos = 0, prefix = 0, ignore = 0;
    int byte_unk = 0, pad = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ssOOOO|iiippppszzpi:BPE", kwlist, &kind,
                                     &pre_name, &tokens_in, &types_in, &scores_in, &merges_in,
                                     &bos, &eos, &unk, &add_bos, &add_eos, &prefix, &ignore,
                                     &what, &tfield, &mfield, &byte_unk, &pad)) {
        return -1;
    }
    if (eg_py_init_once(self->bpe, "BPE") < 0) {
        return -1;
    }
    eg_bpe_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (strcmp(kind, "bytelevel") == 0) {
        cfg.kind = EG_BPE_BYTELEVEL;
        cfg.pre = eg_bpe_pre_from_name(pre_name, strlen(pre_name), NULL);
        if (cfg.pre == 0) {
            PyErr_Format(PyExc_ValueError, "%s: unsupported pre-tokenizer '%s'", what, pre_name);
            return -1;
        }
    } else if (strcmp(kind, "spm") == 0) {
        cfg.kind = EG_BPE_SPM;
    } else {
        PyErr_Format(PyExc_ValueError, "kind must be 'bytelevel' or 'spm', got '%s'", kind);
        return -1;
    }
    cfg.bos_id = bos;
    cfg.eos_id = eos;
    cfg.unk_id = unk;
    cfg.pad_id = pad;
    cfg.add_bos = add_bos;
    cfg.add_eos = add_eos;
    cfg.add_space_prefix = prefix;
    cfg.ignore_merges = ignore;
    cfg.byte_unk = byte_unk && unk >= 0;
    cfg.what = what;
    cfg.tokens_field = tfield;
    cfg.merges_field = mfield;

    int rc = -1;
    PyObject *tokens = NULL, *types = NULL, *scores = NULL, *merges = NULL;
    const char **tp = NULL, **mp = NULL;
    size_t *tl = NULL, *ml = NULL;
    int32_t *ty = NULL;
    float *sc = NULL;
    if ((tokens = PySequence_Tuple(tokens_in)) == NULL ||
        (merges = PySequence_Tuple(merges_in)) == NULL) {
        goto fail;
    }
    Py_ssize_t nt = PyTuple_GET_SIZE(tokens), nm = PyTuple_GET_SIZE(merges);
    tp = PyMem_Calloc((size_t)nt + 1, sizeof(char *));
    tl = PyMem_Calloc((size_t)nt + 1, sizeof(size_t));
    mp = PyMem_Calloc((size_t)nm + 1, sizeof(char *));
    ml = PyMem_Calloc((size_t)nm + 1, sizeof(size_t));
    if (tp == NULL || tl == NULL || mp == NULL || ml == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (utf8_all(tokens, "tokens", tp, tl) < 0 || utf8_all(merges, "merges", mp, ml) < 0) {
        goto fail;
    }
    if (types_in != Py_None) {
        if ((types = PySequence_Tuple(types_in)) == NULL) {
            goto fail;
        }
        if (PyTuple_GET_SIZE(types) != nt) {
            PyErr_Format(PyExc_ValueError, "%s: %zd token types for %zd tokens", what,
                         PyTuple_GET_SIZE(types), nt);
            goto fail;
        }
        ty = PyMem_Calloc((size_t)nt + 1, sizeof(int32_t));
        if (ty == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (Py_ssize_t i = 0; i < nt; i++) {
            char w[48];
            long long v;
            snprintf(w, sizeof w, "types[%zd]", i);
            if (eg_py_int_arg(PyTuple_GET_ITEM(types, i), 1, 6, NULL, w, &v) < 0) {
                goto fail;
            }
            ty[i] = (int32_t)v;
        }
    }
    if (scores_in != Py_None) {
        if ((scores = PySequence_Tuple(scores_in)) == NULL) {
            goto fail;
        }
        if (PyTuple_GET_SIZE(scores) != nt) {
            PyErr_Format(PyExc_ValueError, "%s: %zd scores for %zd tokens", what,
                         PyTuple_GET_SIZE(scores), nt);
            goto fail;
        }
        sc = PyMem_Calloc((size_t)nt + 1, sizeof(float));
        if (sc == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        for (Py_ssize_t i = 0; i < nt; i++) {
            double v = PyFloat_AsDouble(PyTuple_GET_ITEM(scores, i));
            if (v == -1.0 && PyErr_Occurred()) {
                goto fail;
            }
            sc[i] = (float)v;
        }
    }
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_bpe_create(&self->bpe, &cfg, tp, tl, (size_t)nt, ty, sc, mp, ml,
                                 (size_t)nm, &err);
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    rc = 0;
fail:
    PyMem_Free(tp);
    PyMem_Free(tl);
    PyMem_Free(mp);
    PyMem_Free(ml);
    PyMem_Free(ty);
    PyMem_Free(sc);
    Py_XDECREF(tokens);
    Py_XDECREF(types);
    Py_XDECREF(scores);
    Py_XDECREF(merges);
    return rc;
}

static PyObject *py_bpe_from_gguf(PyObject *mod, PyObject *path_arg)
{
    (void)mod;
    PyObject *pbytes, *path;
    if (eg_py_fs_path(path_arg, &pbytes, &path) < 0) {
        return NULL;
    }
    eg_gguf_file f;
    memset(&f, 0, sizeof f);
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    eg_bpe *b = NULL;
    const char *cpath = PyBytes_AS_STRING(pbytes);
    EG_PY_NOGIL(st = eg_gguf_open(cpath, &f, &err); if (st == EG_OK) {
        st = eg_bpe_from_gguf(&b, &f, &err);
    });
    int sys_errno = f.sys_errno;
    eg_gguf_close(&f);
    Py_DECREF(pbytes);
    if (st != EG_OK) {
        eg_py_raise_file_error(&err, sys_errno, path, PyExc_ValueError);
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    BPEObject *o = PyObject_New(BPEObject, &BPEType);
    if (o == NULL) {
        eg_bpe_free(b);
        return NULL;
    }
    o->bpe = b;
    o->busy = 0;
    return (PyObject *)o;
}

static int bpe_ready(BPEObject *self)
{
    return eg_py_ready(self->bpe, "BPE");
}

static PyObject *bpe_encode_batch(BPEObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"texts", "max_length", "add_special_tokens", NULL};
    PyObject *texts_in;
    Py_ssize_t max_length = 0;
    int add_special = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|np:encode_batch", kwlist, &texts_in,
                                     &max_length, &add_special)) {
        return NULL;
    }
    if (bpe_ready(self) < 0) {
        return NULL;
    }
    if (!PyList_Check(texts_in) && !PyTuple_Check(texts_in)) {
        PyErr_Format(PyExc_TypeError, "texts must be a list of str, got %.100s",
                     Py_TYPE(texts_in)->tp_name);
        return NULL;
    }
    if (eg_py_check_range(max_length, 0, LLONG_MAX, NULL, "max_length (0 = no truncation)") < 0) {
        return NULL;
    }
    /* A tuple copy keeps every str (and its cached UTF-8) alive while the
     * GIL is released, whatever other threads do to the caller's list. */
    PyObject *texts = PySequence_Tuple(texts_in);
    PyObject *result = NULL;
    const char **tp = NULL;
    size_t *tl = NULL, *ol = NULL;
    int32_t **ids = NULL;
    int entered = 0;
    Py_ssize_t n = 0;
    if (texts == NULL) {
        goto fail;
    }
    n = PyTuple_GET_SIZE(texts);
    tp = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    tl = PyMem_Calloc((size_t)n + 1, sizeof(size_t));
    ol = PyMem_Calloc((size_t)n + 1, sizeof(size_t));
    ids = PyMem_Calloc((size_t)n + 1, sizeof(int32_t *));
    if (tp == NULL || tl == NULL || ol == NULL || ids == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (utf8_all(texts, "texts", tp, tl) < 0) {
        goto fail;
    }
    if (eg_py_enter(&self->busy, "BPE tokenizer") != 0) {
        goto fail;
    }
    entered = 1;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_bpe_encode_batch(self->bpe, tp, tl, (size_t)n, (size_t)max_length,
                                         add_special, ids, ol, &err));
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    result = PyList_New(n);
    if (result == NULL) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        npy_intp dim = (npy_intp)ol[i];
        PyObject *arr = eg_py_array_copy(1, &dim, NPY_INT32, ids[i]);
        if (arr == NULL) {
            Py_CLEAR(result);
            goto fail;
        }
        PyList_SET_ITEM(result, i, arr);
    }
fail:
    if (entered) {
        eg_py_leave(&self->busy);
    }
    if (ids != NULL) {
        eg_bpe_free_batch(ids, (size_t)n);
    }
    PyMem_Free(tp);
    PyMem_Free(tl);
    PyMem_Free(ol);
    PyMem_Free(ids);
    Py_XDECREF(texts);
    return result;
}

static PyObject *bpe_lookup(BPEObject *self, PyObject *arg)
{
    if (bpe_ready(self) < 0) {
        return NULL;
    }
    Py_ssize_t len;
    const char *s = utf8_of(arg, "token", 0, &len);
    if (s == NULL) {
        return NULL;
    }
    return PyLong_FromLong((long)eg_bpe_lookup(self->bpe, s, (size_t)len));
}

/* All tokens as a list of str and their types as a list of int. */
static PyObject *bpe_vocab(BPEObject *self, PyObject *unused)
{
    (void)unused;
    if (bpe_ready(self) < 0) {
        return NULL;
    }
    size_t n = eg_bpe_vocab_size(self->bpe);
    PyObject *toks = PyList_New((Py_ssize_t)n), *types = PyList_New((Py_ssize_t)n);
    if (toks == NULL || types == NULL) {
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len;
        int type;
        const char *s = eg_bpe_token(self->bpe, i, &len, &type);
        PyObject *t = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "strict");
        PyObject *ty = PyLong_FromLong(type);
        if (t == NULL || ty == NULL) {
            Py_XDECREF(t);
            Py_XDECREF(ty);
            goto fail;
        }
        PyList_SET_ITEM(toks, (Py_ssize_t)i, t);
        PyList_SET_ITEM(types, (Py_ssize_t)i, ty);
    }
    return Py_BuildValue("(NN)", toks, types);
fail:
    Py_XDECREF(toks);
    Py_XDECREF(types);
    return NULL;
}

/* The settings as a dict. */
static PyObject *bpe_config(BPEObject *self, void *closure)
{
    (void)closure;
    if (bpe_ready(self) < 0) {
        return NULL;
    }
    const eg_bpe_config *c = eg_bpe_get_config(self->bpe);
    return Py_BuildValue(
        "{s:s,s:s,s:i,s:i,s:i,s:i,s:O,s:O,s:O,s:O,s:n}", "kind",
        c->kind == EG_BPE_SPM ? "spm" : "bytelevel", "pre",
        c->kind == EG_BPE_SPM ? "none" : eg_bpe_pre_name(c->pre), "bos_id", (int)c->bos_id,
        "eos_id", (int)c->eos_id, "unk_id", (int)c->unk_id, "pad_id", (int)c->pad_id, "add_bos", c->add_bos ? Py_True : Py_False,
        "add_eos", c->add_eos ? Py_True : Py_False, "add_space_prefix",
        c->add_space_prefix ? Py_True : Py_False, "ignore_merges",
        c->ignore_merges ? Py_True : Py_False, "vocab_size",
        (Py_ssize_t)eg_bpe_vocab_size(self->bpe));
}

static PyMethodDef bpe_methods[] = {
    {"encode_batch", (PyCFunction)(void (*)(void))bpe_encode_batch, METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts, max_length=0, add_special_tokens=True) -> list of int32 arrays"},
    {"lookup", (PyCFunction)bpe_lookup, METH_O, "lookup(token) -> id, or -1 if absent"},
    {"vocab", (PyCFunction)bpe_vocab, METH_NOARGS, "vocab() -> (list of str, list of type)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bpe_getset[] = {
    {"config", (getter)bpe_config, NULL, "the settings (dict)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BPEType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.BPE",
    .tp_basicsize = sizeof(BPEObject),
    .tp_dealloc = (destructor)bpe_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BPE tokenizer (C); see engine_py.tokenizer.BPETokenizer",
    .tp_methods = bpe_methods,
    .tp_getset = bpe_getset,
    .tp_init = (initproc)bpe_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef bpe_module_methods[] = {
    {"bpe_from_gguf", py_bpe_from_gguf, METH_O,
     "bpe_from_gguf(path)\n--\n\nThe BPE tokenizer of a GGUF file's tokenizer.ggml.* metadata."},
    {NULL, NULL, 0, NULL},
};

int eg_py_init_bpe(PyObject *module)
{
    if (eg_py_add_type(module, "BPE", &BPEType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, bpe_module_methods);
}
