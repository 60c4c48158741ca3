/* The raw format: the image file (or NBD export) is the disk, byte for
 * byte.  Block status comes from the transport: the file system's holes
 * (SEEK_DATA/SEEK_HOLE) or the server's base:allocation context. */
#include <errno.h>
#include <string.h>

#include "blockdev.h"

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1;   /* anything can be raw; every real format scores higher */
}

static int raw_open(struct blockdev *bs, struct err *e)
{
    /* Whole sectors, as QEMU sees a raw file: the tail of a file whose
     * size is not a multiple of 512 reads as zeroes up to the next one. */
    int ret = transport_size(bs->file, &bs->size, e);
    if (ret == 0)
        bs->size = align_up(bs->size, 512);
    return ret;
}

static int raw_create(struct transport *file, const struct blk_create_params *p,
                      struct err *e)
{
    if (p->backing_file)
        return err_set(e, ENOTSUP, "%s: format 'raw' does not support backing files",
                       p->filename);
    const char *prealloc = kvopts_get(p->opts, "preallocation");
    enum blk_prealloc mode = BLK_PREALLOC_OFF;
    if (prealloc && (blk_parse_prealloc(prealloc, &mode) < 0 || mode == BLK_PREALLOC_METADATA))
        return err_set(e, EINVAL, "%s: Parameter 'preallocation' does not accept value '%s' "
                       "(use off, falloc or full)", p->filename, prealloc);
    bool falloc = mode == BLK_PREALLOC_FALLOC, full = mode == BLK_PREALLOC_FULL;
    int ret = kvopts_check_unused(p->opts, "raw", e);
    if (ret < 0 || (ret = transport_truncate(file, p->size, e)) < 0)
        return ret;
    if (!falloc && !full)
        return 0;
    if ((ret = transport_preallocate(file, 0, p->size, full, e)) < 0)
        return ret;
    /* As QEMU (allocate_first_block): the first block is written, so that
     * its file starts with data whatever the file system reports for
     * fallocated blocks. */
    return falloc ? transport_preallocate(file, 0, min_u64(p->size, 4096), true, e) : 0;
}

static int raw_preadv(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                      struct err *e)
{
    return transport_preadv(bs->file, off, iov, iovcnt, e);
}

static int raw_pwritev(struct blockdev *bs, uint64_t off, const struct iovec *iov,
                       int iovcnt, struct err *e)
{
    return transport_pwritev(bs->file, off, iov, iovcnt, e);
}

static int raw_copy_range_to(struct blockdev *bs, uint64_t off, uint64_t len,
                             struct transport *src, uint64_t src_off, struct err *e)
{
    return transport_copy_range(bs->file, off, src, src_off, len, e);
}

static int raw_block_status(struct blockdev *bs, uint64_t off, uint64_t bytes,
                            struct blk_extent *ext, struct err *e)
{
    unsigned st;
    uint64_t run;
    int ret = transport_data_status(bs->file, off, bytes, &st, &run, e);
    if (ret < 0)
        return ret;
    ext->length = run;
    ext->flags = BLK_STATUS_ALLOCATED | BLK_STATUS_OFFSET |
                 (st & TRANSPORT_DATA ? BLK_STATUS_DATA : 0) |
                 (st & TRANSPORT_ZERO ? BLK_STATUS_ZERO : 0);
    ext->host_offset = off;
    return 0;
}

static int raw_write_zeroes(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                            struct err *e)
{
    return transport_write_zeroes(bs->file, off, len,
                                  (flags & BLK_ZERO_MAY_UNMAP ? TRANSPORT_ZERO_MAY_UNMAP : 0) |
                                  (flags & BLK_ZERO_FAST ? TRANSPORT_ZERO_FAST : 0), e);
}

static int raw_preallocate(struct blockdev *bs, uint64_t off, uint64_t len,
                           enum blk_prealloc mode, struct err *e)
{
    if (mode == BLK_PREALLOC_METADATA)
        return err_set(e, ENOTSUP, "%s: format 'raw' does not support preallocation=metadata",
                       bs->filename);
    return transport_preallocate(bs->file, off, len, mode == BLK_PREALLOC_FULL, e);
}

static int raw_discard(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e)
{
    return transport_discard(bs->file, off, len, e);
}

static int raw_flush(struct blockdev *bs, struct err *e)
{
    return transport_flush(bs->file, e);
}

static int raw_truncate(struct blockdev *bs, uint64_t size, struct err *e)
{
    int ret = transport_truncate(bs->file, size, e);
    if (ret == 0)
        bs->size = size;
    return ret;
}

static const struct blk_option_desc raw_create_options[] = {
    { "size", "size", "Virtual disk size", NULL, false },
    { "preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)", NULL,
      true },
    { NULL, NULL, NULL, NULL, false },
};

/* Every byte of the disk is in the file (QEMU's raw_measure): a source's
 * size, or the size asked for rounded up to a sector. */
static int raw_measure(struct kvopts *opts, struct blockdev *in, struct blk_measure *out,
                       struct err *e)
{
    uint64_t size;
    int ret = kvopts_get_size(opts, "size", 0, &size, e);
    if (ret < 0)
        return ret;
    /* preallocation is the file layer's option in QEMU: accepted, and
     * changes nothing here. */
    kvopts_get(opts, "preallocation");
    if ((ret = kvopts_check_known(opts, raw_create_options, e)) < 0)
        return ret;
    if (size > (uint64_t)INT64_MAX)
        return err_set(e, EINVAL, "Parameter 'size' is too large");
    out->required = in ? in->size : align_up(size, 512);
    out->fully_allocated = out->required;
    out->has_bitmaps = false;
    out->bitmaps = 0;
    return 0;
}

const struct blockdrv blockdrv_raw = {
    .name = "raw",
    .create_options = raw_create_options,
    .measure = raw_measure,
    .probe = raw_probe,
    .open = raw_open,
    .create = raw_create,
    .preadv = raw_preadv,
    .pwritev = raw_pwritev,
    .copy_range_to = raw_copy_range_to,
    .block_status = raw_block_status,
    .write_zeroes = raw_write_zeroes,
    .discard = raw_discard,
    .flush = raw_flush,
    .truncate = raw_truncate,
    .preallocate = raw_preallocate,
};
