/* The set-up shared by the image fuzz targets (fuzz_open.c, fuzz_write.c):
 * the input becomes a writable in-memory file, opened by name through
 * /proc/self/fd (the drivers open paths, not descriptors). */
#ifndef IMGTOOL_FUZZ_IMAGE_H
#define IMGTOOL_FUZZ_IMAGE_H

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* A memfd holding data[0..size), its name in path; -1 when it cannot be
 * made (the input is then skipped).  The caller closes the descriptor. */
static int fuzz_image_fd(const uint8_t *data, size_t size, char *path, size_t path_len)
{
    int fd = memfd_create("fuzz-image", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, path_len, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
