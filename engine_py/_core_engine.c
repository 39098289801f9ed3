/*
 * _core_engine.c — Python glue for graph, samplers, ops and the G-Ladder.
 */
#include "_core.h"

int eg_py_init_engine(PyObject *module)
{
    (void)module;
    return 0;
}
