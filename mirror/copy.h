/* The copy engine shared by convert, mirror, export, rebase and commit:
 * one loop that walks the source's block status, reads only what holds
 * data, writes zero ranges as zeroes (or not at all where the target
 * already reads zeroes), and reports progress through a callback. */
#ifndef IMGTOOL_COPY_H
#define IMGTOOL_COPY_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"

struct copy_stats {
    uint64_t bytes_read;        /* read from the source */
    uint64_t bytes_written;     /* data written to the target */
    uint64_t bytes_zeroed;      /* written to the target as zeroes */
    uint64_t bytes_skipped;     /* not written: already right on the target */
};

struct copy_job {
    struct blockdev *src;
    /* Copy only what the layers above `base` allocate (NULL: the whole
     * chain, flattened).  Ranges no layer above base allocates are left
     * alone: the target reads them from its own backing file. */
    const struct blockdev *base;
    struct blockdev *dst;
    uint64_t offset, length;    /* the range to copy */
    bool target_is_zero;        /* the target reads as zeroes everywhere */
    size_t buf_size;            /* bytes per request (default 2 MiB) */
    /* Smallest unit in which zero data is detected and skipped; 0 means
     * 4 KiB or the target's write alignment, whichever is larger. */
    uint32_t zero_detect;
    /* Called after each request; may be NULL. */
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
    /* Set asynchronously (signal handler) to stop the copy: copy_run then
     * returns -ECANCELED. */
    volatile sig_atomic_t *cancel;
    struct copy_stats stats;
};

int copy_run(struct copy_job *job, struct err *e);

#endif
