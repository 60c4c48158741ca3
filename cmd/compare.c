/* imgtool compare: are two images the same disk?  Exit 0 identical,
 * 1 different (with the first differing offset), 2 error.  Ranges that
 * both images report as zero by block status are not read. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"

#define CMP_CHUNK (2u << 20)

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_ERROR = 2 };

struct side {
    struct blockdev *bs;
    uint8_t *buf;
};

static size_t first_difference(const uint8_t *a, const uint8_t *b, size_t len)
{
    size_t i = 0;
    while (i < len && a[i] == b[i])
        i++;
    return i;
}

static size_t first_nonzero(const uint8_t *a, size_t len)
{
    size_t i = 0;
    while (i < len && !a[i])
        i++;
    return i;
}

/* What strict mode compares, as qemu-img compare -s compares block status. */
#define STRICT_STATUS (BLK_STATUS_DATA | BLK_STATUS_ZERO | BLK_STATUS_ALLOCATED)

/* Compare [off, end) of both images; *diff gets the first differing offset,
 * *by_status says whether (in strict mode) the block status differs there. */
static int compare_common(struct side *a, struct side *b, uint64_t off, uint64_t end,
                          bool strict, uint64_t *diff, bool *differs, bool *by_status,
                          struct progress *bar, struct err *e)
{
    while (off < end) {
        progress_update(bar, off);
        struct blk_extent ea, eb;
        /* Ask for the status up to the end: qemu-img's strict mode also
         * tells apart a run that reaches the end of the image from one
         * that does not (BDRV_BLOCK_EOF). */
        if (blk_block_status(a->bs, off, end - off, &ea, e) < 0 ||
            blk_block_status(b->bs, off, end - off, &eb, e) < 0)
            return -1;
        uint64_t len = min_u64(min_u64(ea.length, eb.length), CMP_CHUNK);
        if (strict && ((ea.flags & STRICT_STATUS) != (eb.flags & STRICT_STATUS) ||
                       (off + ea.length == end) != (off + eb.length == end))) {
            *differs = true;
            *by_status = true;
            *diff = off;
            return 0;
        }
        bool za = ea.flags & BLK_STATUS_ZERO, zb = eb.flags & BLK_STATUS_ZERO;
        if (!(za && zb)) {
            if ((!za && blk_pread(a->bs, off, a->buf, (size_t)len, e) < 0) ||
                (!zb && blk_pread(b->bs, off, b->buf, (size_t)len, e) < 0))
                return -1;
            size_t at = za ? first_nonzero(b->buf, (size_t)len)
                      : zb ? first_nonzero(a->buf, (size_t)len)
                           : first_difference(a->buf, b->buf, (size_t)len);
            if (at < len) {
                *differs = true;
                *diff = off + at;
                return 0;
            }
        }
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
        struct blk_extent ext;
        if (blk_block_status(s->bs, off, min_u64(end - off, CMP_CHUNK), &ext, e) < 0)
            return -1;
        if (!(ext.flags & BLK_STATUS_ZERO)) {
            if (blk_pread(s->bs, off, s->buf, (size_t)ext.length, e) < 0)
                return -1;
            size_t at = first_nonzero(s->buf, (size_t)ext.length);
            if (at < ext.length) {
                *differs = true;
                *diff = off + at;
                return 0;
            }
        }
        off += ext.length;
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
        if (!quiet)
            printf("Warning: Image size mismatch!\n");
    }
    uint64_t common = min_u64(a.bs->size, b.bs->size), diff = 0;
    bool differs = false, by_status = false;
    struct progress bar;
    progress_init(&bar, progress && !quiet, max_u64(a.bs->size, b.bs->size));
    ret = compare_common(&a, &b, 0, common, strict, &diff, &differs, &by_status, &bar,
                         &e);
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
