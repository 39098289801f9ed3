/*
 * eg_mapfile.h — read-only memory mapping of a whole file, and
 * little-endian loads from unaligned bytes; shared by the file readers
 * (safetensors.c, gguf.c).
 */
#ifndef EG_MAPFILE_H
#define EG_MAPFILE_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Map the regular file at `path` read-only (MAP_PRIVATE) into *base, its
 * size into *size. A file under min_size bytes is refused with EG_ECORRUPT
 * "<path>: file is N bytes, too small for <min_what>" before mapping. The OS
 * refusing (open, fstat, mmap; a folder or device) gives EG_EIO with
 * *sys_errno set. On success the caller unmaps with eg_unmap_file. */
eg_status eg_map_file(const char *path, size_t min_size, const char *min_what,
                      const unsigned char **base, size_t *size, int *sys_errno, eg_err *err);
void eg_unmap_file(const void *base, size_t size);

static inline uint16_t eg_load_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static inline uint32_t eg_load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t eg_load_le64(const unsigned char *p)
{
    return (uint64_t)eg_load_le32(p) | (uint64_t)eg_load_le32(p + 4) << 32;
}

#ifdef __cplusplus
}
#endif
#endif /* EG_MAPFILE_H */
