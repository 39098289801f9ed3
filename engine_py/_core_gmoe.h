/*
 * _core_gmoe.h — argument helpers shared by the GMoE glue files
 * (_core_gmoe.c: LoRA, MoE FFN, routers, module table; _core_gmoe_losses.c:
 * router and GMoE losses, AdamW). Defined in _core_gmoe.c. Every helper
 * returns 0, or -1 with a Python exception set.
 */
#ifndef ENGINE_PY_CORE_GMOE_H
#define ENGINE_PY_CORE_GMOE_H

#include "_core.h"

#include "eg_gmoe.h"
#include "eg_optim.h"

#define ANY (-1) /* a shape entry gmoe_arr fills in */

/* Check `o` is an ndarray of `type` with `ndim` dims matching shape (ANY
 * entries are filled in), C-contiguous, aligned (writeable if asked). None
 * gives *data = NULL when allow_none. TypeError / ValueError otherwise. */
int gmoe_arr(PyObject *o, const char *name, int type, int ndim, npy_intp *shape, int writable,
             int allow_none, void **data);

/* Every idx[i] in [0, E). */
int gmoe_check_idx(const int32_t *idx, size_t n, int E);

/* a * b * c fits in int. */
int gmoe_check_prod(npy_intp a, npy_intp b, npy_intp c);

/* New zero float32 array of nd <= 4 dims; NULL with an exception. */
PyObject *gmoe_new_f32(int nd, npy_intp d0, npy_intp d1, npy_intp d2, npy_intp d3);

/* For freshly made outputs: 0 if none of the n objects is NULL, else drop
 * the references to the others and return -1 (their exception is set). */
int gmoe_all_made(PyObject **objs, int n);

/* Add the losses' and AdamW's functions (_core_gmoe_losses.c). */
int gmoe_init_losses(PyObject *module);

#define F32(p) ((float *)PyArray_DATA((PyArrayObject *)(p)))

#endif
