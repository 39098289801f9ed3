/*
 * _core_text.c — Python glue for tokenizers (WordPiece).
 */
#include "_core.h"

int eg_py_init_text(PyObject *module)
{
    (void)module;
    return 0;
}
