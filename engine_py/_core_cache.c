/*
 * _core_cache.c — Python glue for the layer cache.
 */
#include "_core.h"

int eg_py_init_cache(PyObject *module)
{
    (void)module;
    return 0;
}
