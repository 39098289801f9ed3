/*
 * _core_io.c — Python glue for csrc/io: safetensors reader and writer.
 */
#include "_core.h"

int eg_py_init_io(PyObject *module)
{
    (void)module;
    return 0;
}
