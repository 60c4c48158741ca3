/* Fuzz target for the open / read / block-status / check / info path of
 * every format driver (probing decides which).  Built two ways:
 *   - `make fuzz`: with clang's libFuzzer (build/fuzz/fuzz_open), run as
 *     build/fuzz/fuzz_open tests/corpus/   (any libFuzzer options apply);
 *   - by `make check`: as a replay program (FUZZ_REPLAY) that runs each
 *     file named on its command line through the same code, so the corpus
 *     of damaged images stays covered by the ordinary test suite. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "formats/blockdev.h"
#include "tests/fuzz/fuzz-image.h"

/* Bounds so that one input cannot make the fuzzer spend seconds. */
#define MAX_EXTENTS 4096
#define READ_CHUNK  (64u << 10)
#define MAX_READS   64

static void exercise(struct blockdev *bs)
{
    struct err e = { 0 };
    uint8_t *buf = malloc(READ_CHUNK);
    if (!buf)
        return;
    uint64_t off = 0;
    int reads = 0;
    for (int i = 0; i < MAX_EXTENTS && off < bs->size; i++) {
        struct blk_extent ext;
        if (blk_block_status(bs, off, bs->size - off, &ext, &e) < 0)
            break;
        if ((ext.flags & BLK_STATUS_DATA) && reads < MAX_READS) {
            size_t n = (size_t)min_u64(ext.length, READ_CHUNK);
            blk_pread(bs, off, buf, n, &e);
            reads++;
        }
        off += ext.length;
    }
    /* Also read places that block status did not lead to. */
    if (bs->size) {
        blk_pread(bs, 0, buf, (size_t)min_u64(bs->size, READ_CHUNK), &e);
        uint64_t last = bs->size - min_u64(bs->size, 512);
        blk_pread(bs, last, buf, (size_t)min_u64(bs->size, 512), &e);
    }
    struct prop *info = NULL;
    if (blk_get_info(bs, &info, &e) == 0)
        prop_free(info);
    struct blk_check_result res = { 0 };
    blk_check(bs, &res, 0, &e);
    blk_check_result_free(&res);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_image_fd(data, size, path, sizeof(path));
    if (fd < 0)
        return 0;
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    /* No backing files: a fuzzed name must not open files of the host. */
    if (blk_open(path, NULL, BLK_OPEN_NO_LOCK | BLK_OPEN_NO_BACKING | BLK_OPEN_CHECK, NULL, &bs,
                 &e) == 0) {
        exercise(bs);
        blk_close(bs);
    }
    close(fd);
    return 0;
}

#ifdef FUZZ_REPLAY
#include "tests/fuzz/replay-main.h"
#endif
