/*
 * _core_text.c — Python glue for the WordPiece tokenizer (csrc/text).
 *
 * _core.WordPiece(tokens, added, unk_id, cls_id, sep_id, clean_text,
 *                 handle_chinese_chars, strip_accents, lowercase,
 *                 max_input_chars_per_word=100, prefix="##")
 *   tokens: list of str, token i has id i; added: list of (str, id) pairs
 *   matched in the raw text before normalisation.
 * .encode_batch(texts, max_length=0, add_special_tokens=True) -> list of
 *   int32 arrays (max_length 0 = no truncation). The GIL is released while
 *   the texts are tokenized (OpenMP over texts).
 * .lookup(token) -> id or -1;  .vocab_size
 *
 * engine_py/tokenizer.py wraps this with model-folder loading.
 */
#include "_core.h"
#include "eg_text.h"


typedef struct {
    PyObject_HEAD
    eg_wordpiece *wp;
    int busy;
} WordPieceObject;

static void wp_dealloc(WordPieceObject *self)
{
    eg_wordpiece_free(self->wp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* UTF-8 of str `o` (borrowed buffer owned by o), or NULL with an exception
 * naming `what`[index]. */
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

/* utf8_of for every item of the tuple t: p[i], len[i]. 0 or -1. */
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

static int wp_init(WordPieceObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tokens", "added", "unk_id", "cls_id", "sep_id", "clean_text",
                             "handle_chinese_chars", "strip_accents", "lowercase",
                             "max_input_chars_per_word", "prefix", NULL};
    PyObject *tokens_in, *added_in;
    int unk_id, cls_id, sep_id, clean, chinese, strip, lower, maxc = 100;
    const char *prefix = "##";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOiiipppp|is:WordPiece", kwlist, &tokens_in,
                                     &added_in, &unk_id, &cls_id, &sep_id, &clean, &chinese,
                                     &strip, &lower, &maxc, &prefix)) {
        return -1;
    }
    if (eg_py_init_once(self->wp, "WordPiece") < 0) {
        return -1;
    }
    int rc = -1;
    PyObject *tokens = NULL, *added = NULL;
    const char **tp = NULL, **ap = NULL;
    size_t *tl = NULL, *al = NULL;
    int32_t *aid = NULL;
    tokens = PySequence_Tuple(tokens_in);
    if (tokens == NULL) {
        goto fail;
    }
    added = PySequence_Tuple(added_in);
    if (added == NULL) {
        goto fail;
    }
    Py_ssize_t nt = PyTuple_GET_SIZE(tokens), na = PyTuple_GET_SIZE(added);
    tp = PyMem_Calloc((size_t)nt + 1, sizeof(char *));
    tl = PyMem_Calloc((size_t)nt + 1, sizeof(size_t));
    ap = PyMem_Calloc((size_t)na + 1, sizeof(char *));
    al = PyMem_Calloc((size_t)na + 1, sizeof(size_t));
    aid = PyMem_Calloc((size_t)na + 1, sizeof(int32_t));
    if (tp == NULL || tl == NULL || ap == NULL || al == NULL || aid == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (utf8_all(tokens, "tokens", tp, tl) < 0) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < na; i++) {
        PyObject *pair = PyTuple_GET_ITEM(added, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyLong_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_Format(PyExc_TypeError, "added[%zd] must be a (str, int) tuple", i);
            goto fail;
        }
        Py_ssize_t len;
        ap[i] = utf8_of(PyTuple_GET_ITEM(pair, 0), "added", i, &len);
        if (ap[i] == NULL) {
            goto fail;
        }
        al[i] = (size_t)len;
        char what[48];
        long long id;
        snprintf(what, sizeof what, "added[%zd] id", i);
        if (eg_py_int_arg(PyTuple_GET_ITEM(pair, 1), 0, INT32_MAX, NULL, what, &id) < 0) {
            goto fail;
        }
        aid[i] = (int32_t)id;
    }
    eg_wordpiece_config cfg = {
        .clean_text = clean, .handle_chinese_chars = chinese, .strip_accents = strip,
        .lowercase = lower, .max_input_chars_per_word = maxc, .continuing_prefix = prefix,
        .unk_id = unk_id, .cls_id = cls_id, .sep_id = sep_id,
    };
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_wordpiece_create(&self->wp, &cfg, tp, tl, (size_t)nt, ap, al, aid,
                                       (size_t)na, &err);
    if (st != EG_OK) {
        eg_py_raise(&err, NULL);
        goto fail;
    }
    rc = 0;
fail:
    PyMem_Free(tp);
    PyMem_Free(tl);
    PyMem_Free(ap);
    PyMem_Free(al);
    PyMem_Free(aid);
    Py_XDECREF(tokens);
    Py_XDECREF(added);
    return rc;
}

static int wp_ready(WordPieceObject *self)
{
    return eg_py_ready(self->wp, "WordPiece");
}

static PyObject *wp_encode_batch(WordPieceObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"texts", "max_length", "add_special_tokens", NULL};
    PyObject *texts_in;
    Py_ssize_t max_length = 0;
    int add_special = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|np:encode_batch", kwlist, &texts_in,
                                     &max_length, &add_special)) {
        return NULL;
    }
    if (wp_ready(self) < 0) {
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
    if (texts == NULL) {
        goto fail;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(texts);
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
    if (eg_py_enter(&self->busy, "WordPiece tokenizer") != 0) {
        goto fail;
    }
    entered = 1;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    EG_PY_NOGIL(st = eg_wordpiece_encode_batch(self->wp, tp, tl, (size_t)n, (size_t)max_length,
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
        eg_wordpiece_free_batch(ids, (size_t)n);
    }
    PyMem_Free(tp);
    PyMem_Free(tl);
    PyMem_Free(ol);
    PyMem_Free(ids);
    Py_XDECREF(texts);
    return result;
}

static PyObject *wp_lookup(WordPieceObject *self, PyObject *arg)
{
    if (wp_ready(self) < 0) {
        return NULL;
    }
    Py_ssize_t len;
    const char *s = utf8_of(arg, "token", 0, &len);
    if (s == NULL) {
        return NULL;
    }
    return PyLong_FromLong((long)eg_wordpiece_lookup(self->wp, s, (size_t)len));
}

static PyObject *wp_vocab_size(WordPieceObject *self, void *closure)
{
    (void)closure;
    if (wp_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromSize_t(eg_wordpiece_vocab_size(self->wp));
}

static PyMethodDef wp_methods[] = {
    {"encode_batch", (PyCFunction)(void (*)(void))wp_encode_batch, METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts, max_length=0, add_special_tokens=True) -> list of int32 arrays"},
    {"lookup", (PyCFunction)wp_lookup, METH_O, "lookup(token) -> id, or -1 if absent"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef wp_getset[] = {
    {"vocab_size", (getter)wp_vocab_size, NULL, "number of vocabulary ids", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WordPieceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine_py._core.WordPiece",
    .tp_basicsize = sizeof(WordPieceObject),
    .tp_dealloc = (destructor)wp_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BERT WordPiece tokenizer (C); see engine_py.tokenizer.WordPieceTokenizer",
    .tp_methods = wp_methods,
    .tp_getset = wp_getset,
    .tp_init = (initproc)wp_init,
    .tp_new = PyType_GenericNew,
};

int eg_py_init_text(PyObject *module)
{
    return eg_py_add_type(module, "WordPiece", &WordPieceType);
}
