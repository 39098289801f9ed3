/*
 * _core_gmoe.h — argument helpers shared by the GMoE glue files
 * (_core_gmoe.c: MoE FFN, module table; _core_gmoe_lora.c: LoRA linear;
 * _core_gmoe_router.c: routers; _core_gmoe_losses.c: router and GMoE
 * losses, AdamW). Defined in _core_gmoe.c. Every helper returns 0, or -1
 * with a Python exception set.
 */
#ifndef ENGINE_PY_CORE_GMOE_H
#define ENGINE_PY_CORE_GMOE_H

#include "_core.h"

#include "eg_gmoe.h"
#include "eg_optim.h"

/* GMoE's conventions on top of the shared helpers (_core.h): arrays are
 * checked, not converted, and their sizes fit the kernels' int arithmetic;
 * outputs are zero-filled float32; routed indices name experts. */
#define ANY EG_PY_ANY /* a shape entry gmoe_arr fills in */

/* eg_py_check_array with EG_PY_INT_DIMS, EG_PY_WRITE when writable and
 * EG_PY_OPTIONAL (None gives *data = NULL) when allow_none. */
static inline int gmoe_arr(PyObject *o, const char *name, int type, int ndim, npy_intp *shape,
                           int writable, int allow_none, void **data)
{
    int flags = EG_PY_INT_DIMS | (writable ? EG_PY_WRITE : 0) | (allow_none ? EG_PY_OPTIONAL : 0);
    return eg_py_check_array(o, name, type, ndim, shape, flags, data);
}

/* Every idx[i] in [0, E), else ValueError. */
static inline int gmoe_check_idx(const int32_t *idx, size_t n, int E)
{
    return eg_py_check_ids(idx, NPY_INT32, n, E, PyExc_ValueError,
                           "expert index %lld at position %zd out of range [0, %lld)");
}

/* New zero float32 array of nd <= 4 dims; NULL with an exception. */
static inline PyObject *gmoe_new_f32(int nd, npy_intp d0, npy_intp d1, npy_intp d2, npy_intp d3)
{
    return eg_py_zeros(NPY_FLOAT32, nd, d0, d1, d2, d3);
}

/* a * b * c fits in int. */
int gmoe_check_prod(npy_intp a, npy_intp b, npy_intp c);

/* dropout p in [0, 1), else ValueError. */
int check_dropout(float p);

/* x (T, H) float32, then a float32 weight (OUT, H) named wname that shares
 * x's last dimension: the first arguments of the LoRA linear and the linear
 * router. sx and sW are filled in. */
int x_and_weight(PyObject *ox, PyObject *oW, const char *wname, npy_intp *sx, npy_intp *sW,
                 void **x, void **W);

/* The functions of the other GMoE glue files (eg_py_init_gmoe adds them). */
extern PyMethodDef gmoe_lora_methods[];   /* _core_gmoe_lora.c */
extern PyMethodDef gmoe_router_methods[]; /* _core_gmoe_router.c */
extern PyMethodDef gmoe_loss_methods[];   /* _core_gmoe_losses.c: losses, AdamW */

#define F32(p) ((float *)PyArray_DATA((PyArrayObject *)(p)))

#endif
