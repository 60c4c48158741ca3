#include "mirror/copy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BUF_SIZE (2u << 20)

/* Make [off, off+len) of the target read as zeroes, skipping sub-ranges it
 * already reads as zeroes (unless the whole target is known to be zero). */
static int copy_zeroes(struct copy_job *job, uint64_t off, uint64_t len, struct err *e)
{
    if (job->target_is_zero) {
        job->stats.bytes_skipped += len;
        return 0;
    }
    while (len) {
        struct blk_extent ext;
        int ret = blk_block_status(job->dst, off, len, &ext, e);
        if (ret < 0)
            return ret;
        if (ext.flags & BLK_STATUS_ZERO) {
            job->stats.bytes_skipped += ext.length;
        } else {
            ret = blk_write_zeroes(job->dst, off, ext.length, BLK_ZERO_MAY_UNMAP, e);
            if (ret < 0)
                return ret;
            job->stats.bytes_zeroed += ext.length;
        }
        off += ext.length;
        len -= ext.length;
    }
    return 0;
}

/* Write one buffer of source data, turning all-zero blocks into zero
 * writes (or nothing) so that the target stays sparse. */
static int copy_buffer(struct copy_job *job, const uint8_t *buf, uint64_t off, size_t len,
                       uint32_t unit, struct err *e)
{
    size_t pos = 0;
    while (pos < len) {
        /* A run of blocks that are all zero, or all not. */
        size_t blk = (size_t)min_u64(unit - (off + pos) % unit, len - pos);
        bool zero = buffer_is_zero(buf + pos, blk);
        size_t run = blk;
        while (pos + run < len) {
            size_t next = (size_t)min_u64(unit, len - pos - run);
            if (buffer_is_zero(buf + pos + run, next) != zero)
                break;
            run += next;
        }
        int ret;
        if (zero) {
            ret = copy_zeroes(job, off + pos, run, e);
        } else {
            ret = blk_pwrite(job->dst, off + pos, buf + pos, run, e);
            job->stats.bytes_written += run;
        }
        if (ret < 0)
            return ret;
        pos += run;
    }
    return 0;
}

int copy_run(struct copy_job *job, struct err *e)
{
    size_t buf_size = job->buf_size ? job->buf_size : DEFAULT_BUF_SIZE;
    uint32_t unit = job->zero_detect;
    if (!unit)
        unit = (uint32_t)max_u64(4096, blk_write_alignment(job->dst));
    if (job->offset > job->src->size || job->length > job->src->size - job->offset)
        return err_set(e, EINVAL, "%s: copy range is beyond the end of the image",
                       job->src->filename);
    if (job->offset + job->length > job->dst->size)
        return err_set(e, EINVAL, "%s: target is smaller (%llu bytes) than the range to "
                       "copy", job->dst->filename, (unsigned long long)job->dst->size);
    uint8_t *buf;
    if (posix_memalign((void **)&buf, 4096, buf_size))
        return err_set(e, ENOMEM, "out of memory for a %zu-byte copy buffer", buf_size);
    uint64_t end = job->offset + job->length;
    int ret = 0;
    for (uint64_t off = job->offset; off < end;) {
        if (job->cancel && *job->cancel) {
            ret = err_set(e, ECANCELED, "cancelled");
            break;
        }
        struct blk_extent ext;
        uint64_t want = min_u64(end - off, buf_size);
        ret = blk_block_status_above(job->src, job->base, off, want, &ext, e);
        if (ret < 0)
            break;
        uint64_t len = ext.length;
        if (job->base && !(ext.flags & BLK_STATUS_ALLOCATED)) {
            /* Comes from base or below: the target's backing provides it. */
            job->stats.bytes_skipped += len;
        } else if (ext.flags & BLK_STATUS_ZERO) {
            ret = copy_zeroes(job, off, len, e);
        } else {
            ret = blk_pread(job->src, off, buf, (size_t)len, e);
            if (ret == 0) {
                job->stats.bytes_read += len;
                ret = copy_buffer(job, buf, off, (size_t)len, unit, e);
            }
        }
        if (ret < 0)
            break;
        off += len;
        if (job->progress)
            job->progress(job->opaque, off - job->offset, job->length);
    }
    free(buf);
    return ret;
}
