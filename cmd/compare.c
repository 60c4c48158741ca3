/* imgtool compare: are two images the same disk?  Exit 0 identical,
 * 1 different (with the first differing offset), 2 error.  Ranges that
 * both images report as zero by block status, or that both read from the
 * same place of the same file, are not read; the rest is read from both
 * images in large requests and compared with memcmp. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"

/* Reads are this large: large requests keep the disk and the qcow2
 * driver busy. */
#define CMP_CHUNK (4u << 20)

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_ERROR = 2 };

/* One image being compared, with the block status run last returned for
 * it: runs are asked for once and used up chunk by chunk, so that the cost
 * follows the number of runs, not the virtual size. */
struct side {
    struct blockdev *bs;
    uint8_t *buf;
    struct blk_extent ext;
    uint64_t ext_start;     /* image offset of ext (ext.length == 0: none) */
};

/* The status of the run at `off` (up to `end`), reusing the last answer. */
static int side_status(struct side *s, uint64_t off, uint64_t end, struct err *e)
{
    if (s->ext.length && off >= s->ext_start && off < s->ext_start + s->ext.length) {
        uint64_t used = off - s->ext_start;
        s->ext.length -= used;
        if (s->ext.flags & BLK_STATUS_OFFSET)
            s->ext.host_offset += used;
        s->ext_start = off;
        return 0;
    }
    s->ext_start = off;
    return blk_block_status_host(s->bs, off, end - off, &s->ext, e);
}

/* Read `len` bytes at `off` of the sides that need it.  One after the
 * other: reading the two files at once was slower on the benchmark's
 * disk, cold and warm (two streams defeat the readahead of each). */
static int read_sides(struct side *a, bool read_a, struct side *b, bool read_b, uint64_t off,
                      size_t len, struct err *e)
{
    if (read_a && blk_pread(a->bs, off, a->buf, len, e) < 0)
        return -1;
    if (read_b && blk_pread(b->bs, off, b->buf, len, e) < 0)
        return -1;
    return 0;
}

/* Offset of the first differing byte, or len: memcmp finds whether a block
 * differs, then words and bytes where. */
static size_t first_difference(const uint8_t *a, const uint8_t *b, size_t len)
{
    enum { BLOCK = 4096 };
    size_t i = 0;
    while (i < len && !memcmp(a + i, b + i, min_u64(BLOCK, len - i)))
        i += min_u64(BLOCK, len - i);
    for (; i + 8 <= len; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            break;
    }
    while (i < len && a[i] == b[i])
        i++;
    return i;
}

static size_t first_nonzero(const uint8_t *a, size_t len)
{
    enum { BLOCK = 4096 };
    size_t i = 0;
    while (i < len && buffer_is_zero(a + i, min_u64(BLOCK, len - i)))
        i += min_u64(BLOCK, len - i);
    while (i < len && !a[i])
        i++;
    return i;
}

/* Block status proves the two runs equal: the same bytes of the same file
 * read through the same format (an overlay compared with its backing file,
 * or two overlays of one base, where neither has written). */
static bool same_stored_data(const struct blk_extent *ea, const struct blk_extent *eb)
{
    if (!(ea->flags & eb->flags & BLK_STATUS_OFFSET) || !(ea->flags & BLK_STATUS_DATA) ||
        ea->host_offset != eb->host_offset || ea->layer->drv != eb->layer->drv)
        return false;
    return ea->layer == eb->layer || transport_same(ea->layer->file, eb->layer->file);
}

/* What strict mode compares, as qemu-img compare -s compares block status
 * words: whether the data has a host offset counts too (compressed
 * clusters have none, so they differ from the same data stored plain). */
#define STRICT_STATUS (BLK_STATUS_DATA | BLK_STATUS_ZERO | BLK_STATUS_ALLOCATED | \
                       BLK_STATUS_OFFSET)

/* The offset qemu-img names for a first difference at byte `at` of a run
 * of `len` bytes: where both sides are allocated it compares whole 512-byte
 * sectors and names the first differing one; against an unallocated side
 * it looks for the first non-zero sector, and in a partial last sector for
 * the byte. */
static size_t qemu_mismatch_offset(size_t at, size_t len, bool both_allocated)
{
    size_t sector = at & ~(size_t)511;
    if (both_allocated || sector < (len & ~(size_t)511))
        return sector;
    return at;
}

/* Compare [off, off + len) of both sides, whose runs ea/eb cover it. */
static int compare_run(struct side *a, struct side *b, uint64_t off, size_t len,
                       uint64_t *diff, bool *differs, struct err *e)
{
    bool za = a->ext.flags & BLK_STATUS_ZERO, zb = b->ext.flags & BLK_STATUS_ZERO;
    if ((za && zb) || same_stored_data(&a->ext, &b->ext))
        return 0;
    if (read_sides(a, !za, b, !zb, off, len, e) < 0)
        return -1;
    size_t at = za ? first_nonzero(b->buf, len)
              : zb ? first_nonzero(a->buf, len)
                   : first_difference(a->buf, b->buf, len);
    if (at < len) {
        *differs = true;
        *diff = off + qemu_mismatch_offset(at, len, (a->ext.flags & BLK_STATUS_ALLOCATED) ==
                                                    (b->ext.flags & BLK_STATUS_ALLOCATED));
    }
    return 0;
}

/* Compare [off, end) of both images; *diff gets the first differing offset,
 * *by_status says whether (in strict mode) the block status differs there. */
static int compare_common(struct side *a, struct side *b, uint64_t off, uint64_t end,
                          bool strict, uint64_t *diff, bool *differs, bool *by_status,
                          struct progress *bar, struct err *e)
{
    while (off < end) {
        progress_update(bar, off);
        /* Ask for the status up to the end: qemu-img's strict mode also
         * tells apart a run that reaches the end of the image from one
         * that does not (BDRV_BLOCK_EOF). */
        if (side_status(a, off, end, e) < 0 || side_status(b, off, end, e) < 0)
            return -1;
        const struct blk_extent *ea = &a->ext, *eb = &b->ext;
        if (strict && ((ea->flags & STRICT_STATUS) != (eb->flags & STRICT_STATUS) ||
                       (off + ea->length == end) != (off + eb->length == end))) {
            *differs = true;
            *by_status = true;
            *diff = off;
            return 0;
        }
        uint64_t len = min_u64(ea->length, eb->length);
        if (!(ea->flags & eb->flags & BLK_STATUS_ZERO))
            len = min_u64(len, CMP_CHUNK);
        if (compare_run(a, b, off, (size_t)len, diff, differs, e) < 0)
            return -1;
        if (*differs)
            return 0;
        off += len;
    }
    return 0;
}

/* The part of the larger image past the smaller one's end must read as zero. */
static int check_tail_zero(struct side *s, uint64_t off, uint64_t *diff, bool *differs,
                           struct progress *bar, struct err *e)
{
    uint64_t end = s->bs->size;
    while (off < end) {
        progress_update(bar, off);
        if (side_status(s, off, end, e) < 0)
            return -1;
        uint64_t len = s->ext.length;
        if (!(s->ext.flags & BLK_STATUS_ZERO)) {
            len = min_u64(len, CMP_CHUNK);
            if (blk_pread(s->bs, off, s->buf, (size_t)len, e) < 0)
                return -1;
            size_t at = first_nonzero(s->buf, (size_t)len);
            if (at < len) {
                *differs = true;
                *diff = off + qemu_mismatch_offset(at, (size_t)len, false);
                return 0;
            }
        }
        off += len;
    }
    return 0;
}

int cmd_compare(const struct command *cmd, int argc, const char **argv)
{
    char *fmt1 = NULL, *fmt2 = NULL, *cache = NULL;
    int strict = 0, force_share = 0, quiet = 0, progress = 0;
    struct poptOption options[] = {
        { "a-format", 'f', POPT_ARG_STRING, &fmt1, 0, "format of the first image", "FMT" },
        { "b-format", 'F', POPT_ARG_STRING, &fmt2, 0, "format of the second image", "FMT" },
        { "source-cache", 'T', POPT_ARG_STRING, &cache, 0,
          "cache mode of both images (none = O_DIRECT)", "MODE" },
        { "strict", 's', POPT_ARG_NONE, &strict, 0,
          "also fail on different sizes or allocation", NULL },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "open even if another process is writing the images", NULL },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        { "quiet", 'q', POPT_ARG_NONE, &quiet, 0, "print nothing, only set the exit status",
          NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { .usage_status = CMP_ERROR };
    struct side a = { 0 }, b = { 0 };
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 2, 2, NULL, NULL);
    if (status >= 0)
        goto out;
    status = CMP_ERROR;
    int ret;
    unsigned flags = cmd_open_flags(false, force_share, cache, &e, &ret);
    if (ret < 0 || blk_open(cl.args[0], fmt1, flags, cmd_open_opts(), &a.bs, &e) < 0 ||
        blk_open(cl.args[1], fmt2, flags, cmd_open_opts(), &b.bs, &e) < 0)
        goto fail;
    /* Aligned for -T none (O_DIRECT). */
    if (posix_memalign((void **)&a.buf, 4096, CMP_CHUNK) ||
        posix_memalign((void **)&b.buf, 4096, CMP_CHUNK)) {
        err_set(&e, ENOMEM, "out of memory");
        goto fail;
    }
    if (a.bs->size != b.bs->size) {
        if (strict) {
            if (!quiet)
                printf("Strict mode: Image size mismatch!\n");
            status = CMP_DIFFERENT;
            goto out;
        }
    }
    uint64_t common = min_u64(a.bs->size, b.bs->size), diff = 0;
    bool differs = false, by_status = false;
    struct progress bar;
    progress_init(&bar, progress && !quiet, max_u64(a.bs->size, b.bs->size));
    ret = compare_common(&a, &b, 0, common, strict, &diff, &differs, &by_status, &bar,
                         &e);
    /* As qemu-img, the warning comes once the common part is the same. */
    if (ret == 0 && !differs && a.bs->size != b.bs->size && !quiet)
        printf("Warning: Image size mismatch!\n");
    if (ret == 0 && !differs && a.bs->size != b.bs->size)
        ret = check_tail_zero(a.bs->size > common ? &a : &b, common, &diff, &differs, &bar, &e);
    progress_finish(&bar);
    if (ret < 0)
        goto fail;
    if (differs) {
        if (!quiet && by_status)
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", diff);
        else if (!quiet)
            printf("Content mismatch at offset %" PRIu64 "!\n", diff);
        status = CMP_DIFFERENT;
        goto out;
    }
    if (!quiet)
        printf("Images are identical.\n");
    status = CMP_SAME;
    goto out;
fail:
    cmd_print_err(&e);
out:
    free(a.buf);
    free(b.buf);
    blk_close(a.bs);
    blk_close(b.bs);
    cmd_done(&cl);
    return status;
}
