/*
 * mapfile.c — eg_map_file / eg_unmap_file (eg_mapfile.h): the open, fstat,
 * size checks and read-only mmap every file reader of the core starts with.
 */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC under -std=c11 */
#include "eg_mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

eg_status eg_map_file(const char *path, size_t min_size, const char *min_what,
                      const unsigned char **base, size_t *size, int *sys_errno, eg_err *err)
{
    *base = NULL;
    *size = 0;
    *sys_errno = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *sys_errno = errno;
        return eg_seterr(err, EG_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        *sys_errno = errno;
        eg_seterr(err, EG_EIO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return EG_EIO;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        *sys_errno = S_ISDIR(sb.st_mode) ? EISDIR : EINVAL;
        return eg_seterr(err, EG_EIO, "%s: not a regular file", path);
    }
    if (sb.st_size == 0 || (unsigned long long)sb.st_size < (unsigned long long)min_size) {
        close(fd);
        return eg_seterr(err, EG_ECORRUPT, "%s: file is %lld bytes, too small for %s", path,
                         (long long)sb.st_size, min_what);
    }
    if ((unsigned long long)sb.st_size > (unsigned long long)SIZE_MAX) {
        close(fd);
        return eg_seterr(err, EG_EOVERFLOW, "%s: file too large to map", path);
    }
    size_t n = (size_t)sb.st_size;
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        *sys_errno = e;
        return eg_seterr(err, EG_EIO, "%s: cannot mmap %zu bytes: %s", path, n, strerror(e));
    }
    *base = p;
    *size = n;
    return EG_OK;
}

void eg_unmap_file(const void *base, size_t size)
{
    if (base != NULL && size > 0) {
        munmap((void *)base, size);
    }
}
