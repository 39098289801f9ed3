/*
 * eg_gguf.h — GGUF reader (v2 and v3, little-endian): mmap, validation,
 * typed metadata access, tensor infos.
 *
 * File layout: "GGUF", u32 version, u64 tensor count, u64 metadata count;
 * metadata entries (string key, u32 value type, value); tensor infos
 * (string name, u32 n_dims, u64 dims[n_dims] fastest-varying first, u32 ggml
 * type, u64 offset relative to the data section); padding to
 * general.alignment (default 32); the data section. A string is a u64 byte
 * length and the bytes (no NUL). See docs/GGUF.md for the rules we enforce.
 */
#ifndef EG_GGUF_H
#define EG_GGUF_H

#include "eg.h"
#include "eg_quant.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EG_GGUF_DEFAULT_ALIGNMENT 32
#define EG_GGUF_MAX_DIMS 4

/* Metadata value types, as stored. */
typedef enum {
    EG_GGUF_UINT8 = 0,
    EG_GGUF_INT8 = 1,
    EG_GGUF_UINT16 = 2,
    EG_GGUF_INT16 = 3,
    EG_GGUF_UINT32 = 4,
    EG_GGUF_INT32 = 5,
    EG_GGUF_FLOAT32 = 6,
    EG_GGUF_BOOL = 7,
    EG_GGUF_STRING = 8,
    EG_GGUF_ARRAY = 9,
    EG_GGUF_UINT64 = 10,
    EG_GGUF_INT64 = 11,
    EG_GGUF_FLOAT64 = 12,
    EG_GGUF_NUM_VTYPES
} eg_gguf_vtype;

const char *eg_gguf_vtype_name(int t);   /* "uint8" ... "float64", "?" */
size_t eg_gguf_vtype_size(int t);        /* bytes of a scalar; 0 for string/array */

/* A string inside the mapped file: not NUL-terminated, not checked as UTF-8
 * (metadata values may hold any bytes; keys and tensor names are UTF-8). */
typedef struct {
    const char *s;
    size_t len;
} eg_gguf_str;

/* One metadata entry. */
typedef struct {
    const char *key;           /* NUL-terminated copy (arena), valid UTF-8 */
    size_t key_len;
    eg_gguf_vtype type;        /* EG_GGUF_ARRAY for arrays */
    eg_gguf_vtype elem_type;   /* arrays: element type (never ARRAY); else == type */
    size_t n;                  /* arrays: element count; scalars: 1 */
    size_t offset;             /* file offset of the value (arrays: of the first element) */
    const unsigned char *data; /* base + offset: little-endian, possibly unaligned */
    const eg_gguf_str *strs;   /* string or string array: n entries (arena); else NULL */
} eg_gguf_kv;

/* One tensor. Dims are GGUF's order: ne[0] is the row length (fastest). */
typedef struct {
    const char *name;          /* NUL-terminated copy (arena), valid UTF-8 */
    size_t name_len;
    int n_dims;                /* 1..4 */
    int64_t ne[EG_GGUF_MAX_DIMS]; /* unused dims are 1 */
    int type;                  /* eg_ggml_type */
    size_t n_elements;
    size_t nbytes;             /* n_elements / block size * type size */
    size_t rel_offset;         /* as stored: relative to data_start */
    size_t offset;             /* absolute file offset: data_start + rel_offset */
    size_t info_offset;        /* file offset of this tensor's info (for messages) */
} eg_gguf_tensor;

typedef struct {
    eg_arena arena;
    const char *what;          /* the file's name in messages (arena copy) */
    const unsigned char *base; /* the whole file */
    size_t size;
    int mapped;                /* base is an mmap owned by this object */
    int sys_errno;             /* errno of a failed open/stat/mmap, else 0 */
    uint32_t version;          /* 2 or 3 */
    size_t alignment;          /* general.alignment or 32 */
    size_t data_start;         /* aligned end of the tensor infos */
    size_t n_kv;
    eg_gguf_kv *kv;            /* file order */
    size_t n_tensors;
    eg_gguf_tensor *tensors;   /* file order */
} eg_gguf_file;

/* Validate buf[0..size) as a GGUF file and fill *f (which does not own buf).
 * `what` names the file in messages (NULL: "GGUF buffer"). Returns
 * EG_ECORRUPT naming the rule, field, key or tensor and the file offset,
 * EG_EOVERFLOW, or EG_ENOMEM. Call eg_gguf_close(f) afterwards in every case. */
eg_status eg_gguf_parse(const unsigned char *buf, size_t size, const char *what,
                        eg_gguf_file *f, eg_err *err);

/* Open, map read-only and validate `path`. EG_EIO with f->sys_errno when the
 * OS refuses. Call eg_gguf_close(f) afterwards in every case. */
eg_status eg_gguf_open(const char *path, eg_gguf_file *f, eg_err *err);

/* Unmap (if mapped) and free everything; *f is left empty. Idempotent. */
void eg_gguf_close(eg_gguf_file *f);

/* Lookups: NULL / -1 when absent. */
const eg_gguf_kv *eg_gguf_find_kv(const eg_gguf_file *f, const char *key);
const eg_gguf_tensor *eg_gguf_find_tensor(const eg_gguf_file *f, const char *name);

/* Typed metadata access by key. Each returns EG_OK and sets *out, EG_EINVAL
 * when the key is absent (message names the key and the file), or
 * EG_ECORRUPT when it holds another type (names the key, both types and the
 * value's offset).
 *   get_int:   any integer type; uint64 above INT64_MAX is EG_EOVERFLOW
 *   get_uint:  any integer type; a negative value is EG_ECORRUPT
 *   get_float: float32 or float64 (widened)
 *   get_bool:  bool (0 or 1)
 *   get_str:   string (bytes in the file, not NUL-terminated)
 *   get_array: an array; *elem_type and *n set */
eg_status eg_gguf_get_int(const eg_gguf_file *f, const char *key, int64_t *out, eg_err *err);
eg_status eg_gguf_get_uint(const eg_gguf_file *f, const char *key, uint64_t *out, eg_err *err);
eg_status eg_gguf_get_float(const eg_gguf_file *f, const char *key, double *out, eg_err *err);
eg_status eg_gguf_get_bool(const eg_gguf_file *f, const char *key, int *out, eg_err *err);
eg_status eg_gguf_get_str(const eg_gguf_file *f, const char *key, eg_gguf_str *out, eg_err *err);
eg_status eg_gguf_get_array(const eg_gguf_file *f, const char *key, eg_gguf_vtype *elem_type,
                            size_t *n, eg_err *err);

/* Element i of an array entry (or of a scalar entry with i == 0), typed as
 * above: EG_EINVAL for i out of range, EG_ECORRUPT for the wrong type. */
eg_status eg_gguf_kv_int(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, int64_t *out, eg_err *err);
eg_status eg_gguf_kv_float(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, double *out, eg_err *err);
eg_status eg_gguf_kv_bool(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, int *out, eg_err *err);
eg_status eg_gguf_kv_str(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, eg_gguf_str *out, eg_err *err);

/* Dequantize tensor t of f into dst (t->n_elements floats, GGUF order,
 * i.e. C order of the reversed dims). EG_EINVAL naming the tensor and its
 * type when eg_ggml_can_dequantize refuses the type. */
eg_status eg_gguf_dequantize(const eg_gguf_file *f, const eg_gguf_tensor *t, float *dst, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif /* EG_GGUF_H */
