/*
 * _core_bert.c — Python glue for the BERT-family encoder.
 */
#include "_core.h"

int eg_py_init_bert(PyObject *module)
{
    (void)module;
    return 0;
}
