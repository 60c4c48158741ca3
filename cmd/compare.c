/* imgtool compare: are two images the same disk?  Exit 0 identical,
 * 1 different (with the first differing offset), 2 error.  Ranges that
 * both images report as zero by block status, or that both read from the
 * same place of the same file, are not read; the rest is read from both
 * images in large requests and compared with memcmp.  Data that block
 * status places plainly in a host file (raw, uncompressed qcow2 clusters)
 * is mapped instead of read (blk_map_run): memcmp then reads the page
 * cache's pages, without the copy into a buffer that costs most of a
 * read's CPU time.
 *
 * The reads run ahead of the comparison: the main thread walks the block
 * status and cuts the runs to read into segments, which it queues in a
 * ring of CMP_SLOTS; one reader thread per image reads its side of each
 * segment in order, and the main thread compares the segments in order as
 * both sides arrive.  So both files are read at once, with several
 * requests queued, while the CPU compares (two streams at once are about
 * twice as fast as one after the other on the benchmark's disk, cold). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"

/* Reads are this large: large enough to keep the disk and the qcow2
 * driver busy (the kernel's readahead runs further ahead), small enough
 * that the ring's buffers stay in the CPU cache between the copy out of
 * the page cache and the comparison (4 MiB segments cost half as much CPU
 * again, most of it in cache misses). */
#define CMP_CHUNK (1u << 20)
/* Segments read ahead of the comparison (each side has a CMP_CHUNK
 * buffer per slot, touched only where a segment cannot be mapped): 16 MiB
 * ahead per image keeps more of the disk's reads in flight than 8 (cold
 * compares of the bench's images, alternating runs: median 1.4 s against
 * 2.3 s for two qcow2 images). */
#define CMP_SLOTS 16

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_ERROR = 2 };

/* One image being compared, with the block status run last returned for
 * it: runs are asked for once and used up chunk by chunk, so that the cost
 * follows the number of runs, not the virtual size. */
struct side {
    struct blockdev *bs;
    uint8_t *buf;                   /* check_tail_zero's buffer */
    struct blk_extent ext;
    uint64_t ext_start;     /* image offset of ext (ext.length == 0: none) */
    struct pipeline *pl;
    int index;                      /* 0 or 1: its buffers and flags in a slot */
    pthread_t reader;
    bool reader_started;
};

/* A segment of [off, off + len) to compare, read by one or both sides. */
struct slot {
    uint64_t off;
    size_t len;
    bool read[2];                   /* this side is read (not zero by status) */
    bool done[2];                   /* ... and its read completed */
    bool same_allocation;           /* for qemu_mismatch_offset */
    int ret[2];
    struct err err[2];
    struct blk_extent ext[2];       /* each side's run from off, to map it */
    struct transport_view view[2];  /* the mapped run, or unmapped: read into buf */
    const uint8_t *data[2];         /* the bytes read: view.data or buf */
    uint8_t *buf[2];
};

/* The ring of segments between the main thread and the readers, under
 * `lock`: slots [head, head + queued) are queued in offset order. */
struct pipeline {
    pthread_mutex_t lock;
    pthread_cond_t changed;         /* a slot was queued, read or freed, or stop */
    struct slot slots[CMP_SLOTS];
    unsigned head, queued;
    unsigned next_read[2];          /* per side: the next queued slot it reads */
    bool stop;                      /* readers exit (done, or a difference found) */
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

/* Side i of a slot: mapped where it can be, else read into its buffer. */
static int read_side(struct blockdev *bs, struct slot *sl, int i)
{
    struct err ignored;
    if (blk_map_run(&sl->ext[i], sl->len, &sl->view[i], &ignored) == 0) {
        sl->data[i] = sl->view[i].data;
        return 0;
    }
    sl->data[i] = sl->buf[i];
    return blk_pread(bs, sl->off, sl->buf[i], sl->len, &sl->err[i]);
}

/* A reader thread: reads its side of every queued slot, in order. */
static void *reader_main(void *opaque)
{
    struct side *s = opaque;
    struct pipeline *pl = s->pl;
    int i = s->index;
    pthread_mutex_lock(&pl->lock);
    for (;;) {
        while (!pl->stop && pl->next_read[i] == pl->head + pl->queued)
            pthread_cond_wait(&pl->changed, &pl->lock);
        if (pl->stop)
            break;
        struct slot *sl = &pl->slots[pl->next_read[i] % CMP_SLOTS];
        pl->next_read[i]++;
        if (sl->read[i]) {
            pthread_mutex_unlock(&pl->lock);
            int ret = read_side(s->bs, sl, i);
            pthread_mutex_lock(&pl->lock);
            sl->ret[i] = ret;
        }
        sl->done[i] = true;
        pthread_cond_broadcast(&pl->changed);
    }
    pthread_mutex_unlock(&pl->lock);
    return NULL;
}

static int pipeline_start(struct pipeline *pl, struct side *a, struct side *b, struct err *e)
{
    pthread_mutex_init(&pl->lock, NULL);
    pthread_cond_init(&pl->changed, NULL);
    for (unsigned k = 0; k < CMP_SLOTS; k++)
        for (int i = 0; i < 2; i++)
            /* Aligned for -T none (O_DIRECT). */
            if (posix_memalign((void **)&pl->slots[k].buf[i], 4096, CMP_CHUNK)) {
                pl->slots[k].buf[i] = NULL;
                return err_set(e, ENOMEM, "out of memory");
            }
    struct side *sides[2] = { a, b };
    for (int i = 0; i < 2; i++) {
        sides[i]->pl = pl;
        sides[i]->index = i;
        int ret = pthread_create(&sides[i]->reader, NULL, reader_main, sides[i]);
        if (ret)
            return err_set(e, ret, "cannot start a reader thread: %s", strerror(ret));
        sides[i]->reader_started = true;
    }
    return 0;
}

static void pipeline_stop(struct pipeline *pl, struct side *a, struct side *b)
{
    pthread_mutex_lock(&pl->lock);
    pl->stop = true;
    pthread_cond_broadcast(&pl->changed);
    pthread_mutex_unlock(&pl->lock);
    struct side *sides[2] = { a, b };
    for (int i = 0; i < 2; i++)
        if (sides[i]->reader_started)
            pthread_join(sides[i]->reader, NULL);
    for (unsigned k = 0; k < CMP_SLOTS; k++)
        for (int i = 0; i < 2; i++) {
            transport_unmap(&pl->slots[k].view[i]);
            free(pl->slots[k].buf[i]);
        }
    pthread_mutex_destroy(&pl->lock);
    pthread_cond_destroy(&pl->changed);
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

/* Cut the next segment to read at *off (moving past what block status
 * proves equal: zero on both sides, or the same stored data) into `sl`.
 * Returns 1 when a segment was cut, 0 at `end` or, in strict mode, where
 * the block status differs (*by_status set, *off there), -1 on error. */
static int plan_segment(struct side *a, struct side *b, uint64_t *off, uint64_t end,
                        bool strict, struct slot *sl, bool *by_status, struct err *e)
{
    while (*off < end) {
        /* Ask for the status up to the end: qemu-img's strict mode also
         * tells apart a run that reaches the end of the image from one
         * that does not (BDRV_BLOCK_EOF). */
        if (side_status(a, *off, end, e) < 0 || side_status(b, *off, end, e) < 0)
            return -1;
        const struct blk_extent *ea = &a->ext, *eb = &b->ext;
        if (strict && ((ea->flags & STRICT_STATUS) != (eb->flags & STRICT_STATUS) ||
                       (*off + ea->length == end) != (*off + eb->length == end))) {
            *by_status = true;
            return 0;
        }
        uint64_t len = min_u64(ea->length, eb->length);
        bool za = ea->flags & BLK_STATUS_ZERO, zb = eb->flags & BLK_STATUS_ZERO;
        if ((za && zb) || same_stored_data(ea, eb)) {
            *off += len;
            continue;
        }
        sl->off = *off;
        sl->len = (size_t)min_u64(len, CMP_CHUNK);
        sl->read[0] = !za;
        sl->read[1] = !zb;
        sl->ext[0] = *ea;
        sl->ext[1] = *eb;
        sl->done[0] = sl->done[1] = false;
        sl->ret[0] = sl->ret[1] = 0;
        sl->same_allocation = (ea->flags & BLK_STATUS_ALLOCATED) ==
                              (eb->flags & BLK_STATUS_ALLOCATED);
        *off += sl->len;
        return 1;
    }
    return 0;
}

/* Compare a segment whose reads completed: 0, or -1 with the read error. */
static int compare_slot(const struct slot *sl, uint64_t *diff, bool *differs, struct err *e)
{
    for (int i = 0; i < 2; i++)
        if (sl->ret[i] < 0) {
            *e = sl->err[i];
            return -1;
        }
    size_t at = !sl->read[0] ? first_nonzero(sl->data[1], sl->len)
              : !sl->read[1] ? first_nonzero(sl->data[0], sl->len)
                             : first_difference(sl->data[0], sl->data[1], sl->len);
    if (at < sl->len) {
        *differs = true;
        *diff = sl->off + qemu_mismatch_offset(at, sl->len, sl->same_allocation);
    }
    return 0;
}

/* Queue segments until the ring is full or nothing is left to cut (*more
 * cleared; a failure to cut is kept in plan_ret/plan_err, for after the
 * segments before it). */
static void fill_pipeline(struct side *a, struct side *b, uint64_t *off, uint64_t end,
                          bool strict, bool *more, bool *by_status, int *plan_ret,
                          struct err *plan_err, struct progress *bar)
{
    struct pipeline *pl = a->pl;
    while (*more && pl->queued < CMP_SLOTS) {
        progress_update(bar, *off);
        struct slot *sl = &pl->slots[(pl->head + pl->queued) % CMP_SLOTS];
        int r = plan_segment(a, b, off, end, strict, sl, by_status, plan_err);
        if (r <= 0) {
            *plan_ret = r;
            *more = false;
            return;
        }
        pthread_mutex_lock(&pl->lock);
        pl->queued++;
        pthread_cond_broadcast(&pl->changed);
        pthread_mutex_unlock(&pl->lock);
    }
}

/* Compare [off, end) of both images; *diff gets the first differing offset,
 * *by_status says whether (in strict mode) the block status differs there.
 * Segments are compared in offset order, so the first difference wins
 * over a later one, a later status difference or a later error. */
static int compare_common(struct side *a, struct side *b, uint64_t off, uint64_t end,
                          bool strict, uint64_t *diff, bool *differs, bool *by_status,
                          struct progress *bar, struct err *e)
{
    struct pipeline *pl = a->pl;
    struct err plan_err = { 0 };
    int plan_ret = 0;
    bool more = true;
    for (;;) {
        fill_pipeline(a, b, &off, end, strict, &more, by_status, &plan_ret, &plan_err, bar);
        if (!pl->queued)
            break;
        struct slot *sl = &pl->slots[pl->head % CMP_SLOTS];
        pthread_mutex_lock(&pl->lock);
        while (!sl->done[0] || !sl->done[1])
            pthread_cond_wait(&pl->changed, &pl->lock);
        pthread_mutex_unlock(&pl->lock);
        int ret = compare_slot(sl, diff, differs, e);
        for (int i = 0; i < 2; i++)
            transport_unmap(&sl->view[i]);
        if (ret < 0)
            return -1;
        if (*differs) {
            *by_status = false;
            return 0;
        }
        pthread_mutex_lock(&pl->lock);
        pl->head++;
        pl->queued--;
        pthread_cond_broadcast(&pl->changed);
        pthread_mutex_unlock(&pl->lock);
    }
    if (plan_ret < 0) {
        *e = plan_err;
        return -1;
    }
    if (*by_status) {
        *differs = true;
        *diff = off;
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
    struct pipeline pl = { 0 };
    ret = pipeline_start(&pl, &a, &b, &e);
    if (ret == 0)
        ret = compare_common(&a, &b, 0, common, strict, &diff, &differs, &by_status, &bar,
                             &e);
    pipeline_stop(&pl, &a, &b);
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
