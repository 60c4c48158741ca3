/* Fuzz target for the paths that change an image: the write path (data
 * writes in place and allocating, zero writes, discards, compressed writes,
 * truncate, flush), the bitmap load/store path (a writable open loads the
 * image's bitmaps and marks them in use, a new persistent bitmap is added,
 * the set is stored, and closing stores it again) and repair
 * (`check -r all` on what is left).  Every input is a private copy in a
 * memfd, opened without locks and without backing files.  Built like
 * fuzz_open.c: `make fuzz` (libFuzzer) and a replay program run by make
 * check over the corpus (tests/t030-fuzz-replay.sh). */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "formats/blockdev-bitmaps.h"
#include "formats/blockdev.h"
#include "tests/fuzz/fuzz-image.h"

#define CHUNK (64u << 10)

static const unsigned base_flags = BLK_OPEN_NO_LOCK | BLK_OPEN_NO_BACKING;

/* Writes at a few places an image's metadata decides about: the start,
 * the middle, the last bytes, unaligned pieces. */
static void write_some(struct blockdev *bs, uint8_t *buf)
{
    struct err e = { 0 };
    uint64_t size = bs->size;
    if (size == 0)
        return;
    uint64_t mid = size / 2, last = size - (uint64_t)min_u64(size, 512);
    uint64_t n = min_u64(size, CHUNK);
    memset(buf, 0xa5, CHUNK);
    blk_pwrite(bs, 0, buf, (size_t)n, &e);
    blk_pwrite(bs, mid, buf, (size_t)min_u64(size - mid, 4096 + 100), &e);
    blk_pwrite(bs, last, buf, (size_t)min_u64(size - last, 512), &e);
    blk_write_zeroes(bs, 0, min_u64(size, 2 * CHUNK), BLK_ZERO_MAY_UNMAP, &e);
    blk_discard(bs, mid, min_u64(size - mid, 4 * CHUNK), &e);
    blk_pwrite(bs, 0, buf, (size_t)n, &e);     /* reuses what was freed */
    blk_write_zeroes(bs, last, size - last, 0, &e);
    uint32_t align = bs->drv->write_alignment ? bs->drv->write_alignment(bs) : 512;
    if (align && align <= CHUNK && size >= align)
        blk_pwrite_compressed(bs, align_down(mid, align), buf, align, &e);
    blk_flush(bs, &e);
}

/* Bitmaps of disks up to this size only: one of a huge disk is large in
 * memory (bounded by the format, but slow to fuzz). */
#define BITMAP_DISK_MAX (64ull << 30)

static void bitmaps_some(struct blockdev *bs)
{
    struct err e = { 0 };
    if (bs->size > BITMAP_DISK_MAX || !blk_bitmaps_storable(bs))
        return;
    if (blk_bitmap_add(bs, "fuzz", blk_bitmap_default_granularity(bs), BLK_BITMAP_PERSISTENT,
                       NULL, &e) == 0) {
        blk_bitmaps_mark(bs, 0, min_u64(bs->size, CHUNK));
        blk_bitmaps_store(bs, &e);
    }
}

static void write_path(const char *path)
{
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    uint8_t *buf = malloc(CHUNK);
    if (!buf)
        return;
    if (blk_open(path, NULL, base_flags | BLK_OPEN_RDWR, NULL, &bs, &e) == 0) {
        write_some(bs, buf);
        bitmaps_some(bs);
        /* A small truncate in each direction. */
        uint64_t size = bs->size;
        if (size && blk_truncate(bs, size + 4096, &e) == 0)
            blk_truncate(bs, size, &e);
        blk_close(bs);
    }
    free(buf);
}

static void repair(const char *path)
{
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    if (blk_open(path, NULL, base_flags | BLK_OPEN_RDWR | BLK_OPEN_CHECK, NULL, &bs,
                 &e) == 0) {
        struct blk_check_result res = { 0 };
        blk_check(bs, &res, BLK_CHECK_FIX_LEAKS | BLK_CHECK_FIX_ERRORS, &e);
        blk_check_result_free(&res);
        blk_close(bs);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_image_fd(data, size, path, sizeof(path));
    if (fd < 0)
        return 0;
    /* Repair first, as an administrator would on a damaged image, then
     * write to what the repair left (or to the image as it is, when the
     * repair refused), then repair again. */
    repair(path);
    write_path(path);
    repair(path);
    close(fd);
    return 0;
}

#ifdef FUZZ_REPLAY
#include "tests/fuzz/replay-main.h"
#endif
