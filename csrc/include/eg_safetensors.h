/*
 * eg_safetensors.h — safetensors reader (mmap, validated exactly like the
 * reference implementation) and writer (temp file + fsync + rename).
 *
 * File layout: u64 little-endian header length N, N bytes of UTF-8 JSON
 * object {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {str: str}}, then the data section; offsets are relative
 * to the data section and the tensors tile it exactly.
 */
#ifndef EG_SAFETENSORS_H
#define EG_SAFETENSORS_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest header the reference implementation accepts. */
#define EG_ST_MAX_HEADER ((size_t)100000000)

/* Dtypes, in the reference implementation's order (its writer sorts tensors
 * by this order, descending, then by name). */
typedef enum {
    EG_ST_BOOL = 0,
    EG_ST_U8,
    EG_ST_I8,
    EG_ST_I16,
    EG_ST_U16,
    EG_ST_F16,
    EG_ST_BF16,
    EG_ST_I32,
    EG_ST_U32,
    EG_ST_F32,
    EG_ST_F64,
    EG_ST_I64,
    EG_ST_U64,
    EG_ST_NUM_DTYPES
} eg_st_dtype;

const char *eg_st_dtype_name(eg_st_dtype d);
size_t eg_st_dtype_size(eg_st_dtype d);
/* 0 and *out set if `name[0..len)` is a known dtype name, else -1. */
int eg_st_dtype_from_name(const char *name, size_t len, eg_st_dtype *out);

/* One tensor of a parsed file. Strings and shape live in the file's arena. */
typedef struct {
    const char *name;       /* UTF-8, NUL-terminated */
    size_t name_len;
    eg_st_dtype dtype;
    int ndim;
    const int64_t *shape;   /* ndim entries, each >= 0 (NULL when ndim == 0) */
    size_t begin, end;      /* data_offsets, relative to the data section */
    size_t offset;          /* absolute byte offset in the file: data_start + begin */
    size_t nbytes;          /* end - begin == numel * dtype size */
} eg_st_tensor;

typedef struct {
    const char *key, *value;   /* UTF-8, NUL-terminated */
    size_t key_len, value_len;
} eg_st_meta;

/* A parsed (and, from eg_st_open, memory-mapped) file. */
typedef struct {
    eg_arena arena;
    const unsigned char *base;  /* the whole file */
    size_t size;
    int mapped;                 /* base is an mmap owned by this object */
    int sys_errno;              /* errno of a failed open/stat/mmap, else 0 */
    size_t header_len;
    size_t data_start;          /* 8 + header_len */
    size_t n_tensors;
    eg_st_tensor *tensors;      /* header (document) order */
    int has_metadata;           /* "__metadata__" was present */
    size_t n_meta;
    eg_st_meta *meta;           /* document order */
} eg_st_file;

/* Validate `buf[0..size)` as a safetensors file and fill *f (which does not
 * own buf; f->mapped = 0). `what` names the file in messages (may be NULL).
 * Returns EG_ECORRUPT naming the rule broken, EG_EOVERFLOW, or EG_ENOMEM.
 * Call eg_st_close(f) afterwards in every case. */
eg_status eg_st_parse(const unsigned char *buf, size_t size, const char *what,
                      eg_st_file *f, eg_err *err);

/* Open and validate `path`, mapping it read-only (MAP_PRIVATE). Files under
 * 8 bytes are rejected before mapping. EG_EIO (f->sys_errno set) when the OS
 * refuses. Call eg_st_close(f) afterwards in every case. */
eg_status eg_st_open(const char *path, eg_st_file *f, eg_err *err);

/* Unmap (if mapped) and free everything; *f is left empty. Idempotent. */
void eg_st_close(eg_st_file *f);

/* One tensor to write. `data` holds nbytes little-endian bytes, C order. */
typedef struct {
    const char *name;
    size_t name_len;
    eg_st_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
    size_t nbytes;
} eg_st_write_entry;

/* Write a safetensors file at `path`: tensors ordered like the reference
 * writer (dtype order descending, then name bytewise), header padded with
 * spaces to a multiple of 8, metadata (if meta != NULL, even when n_meta is
 * 0) under "__metadata__" sorted by key. Written to a temporary file in the
 * same folder, fsynced, renamed over `path`, then the folder is fsynced.
 * Validates names (UTF-8, unique, not "__metadata__"), shapes and sizes.
 * Returns EG_EINVAL / EG_EOVERFLOW / EG_ENOMEM / EG_EIO. */
eg_status eg_st_write(const char *path, const eg_st_write_entry *entries, size_t n,
                      const eg_st_meta *meta, size_t n_meta, eg_err *err);

/* The header the writer would produce (JSON + space padding, without the
 * 8-byte length), malloc'd into *out (caller frees). Exposed for tests. */
eg_status eg_st_build_header(const eg_st_write_entry *entries, size_t n,
                             const eg_st_meta *meta, size_t n_meta,
                             char **out, size_t *out_len, size_t **order, eg_err *err);

#ifdef __cplusplus
}
#endif
#endif /* EG_SAFETENSORS_H */
