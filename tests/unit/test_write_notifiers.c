/* Unit tests for the block layer's write notifiers (blockdev.h, "Write
 * notifiers"): every kind of write calls before and after with its range,
 * a refusing notifier fails the write before it reaches the driver, and
 * removing a notifier waits for the writes between their two calls. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/blockdev.h"
#include "tests/unit/unit.h"

struct recorder {
    enum blk_write_kind kinds[8];
    uint64_t offsets[8], lengths[8];
    int results[8];
    int n, befores;
    int refuse;                 /* before fails with this errno */
    atomic_int hold, held;      /* before waits while hold is set */
};

static int rec_before(void *opaque, const struct blk_write_request *r, void **token,
                      struct err *e)
{
    struct recorder *rec = opaque;
    rec->befores++;
    *token = rec;
    atomic_store(&rec->held, 1);
    while (atomic_load(&rec->hold))
        usleep(1000);
    return rec->refuse ? err_set(e, rec->refuse, "refused") : 0;
}

static void rec_after(void *opaque, const struct blk_write_request *r, int ret, void *token)
{
    struct recorder *rec = opaque;
    CU_ASSERT_PTR_EQUAL(token, rec);
    if (rec->n < 8) {
        rec->kinds[rec->n] = r->kind;
        rec->offsets[rec->n] = r->offset;
        rec->lengths[rec->n] = r->length;
        rec->results[rec->n++] = ret;
    }
}

static struct blockdev *open_scratch(char *path)
{
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    struct err e = { 0 };
    struct blk_create_params p = { .filename = path, .size = 1 << 20 };
    CU_ASSERT_EQUAL_FATAL(blk_create("qcow2", &p, &e), 0);
    struct blockdev *bs = NULL;
    CU_ASSERT_EQUAL_FATAL(blk_open(path, "qcow2", BLK_OPEN_RDWR | BLK_OPEN_NO_LOCK, NULL,
                                   &bs, &e), 0);
    return bs;
}

static void test_every_kind_is_notified(void)
{
    char path[] = "/tmp/imgtool-notifiers-XXXXXX";
    struct blockdev *bs = open_scratch(path);
    struct recorder rec = { 0 };
    struct blk_write_notifier n = { rec_before, rec_after, &rec };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(blk_add_write_notifier(bs, &n, &e), 0);
    static char buf[65536];
    memset(buf, 7, sizeof(buf));
    CU_ASSERT_EQUAL(blk_pwrite(bs, 8192, buf, 4096, &e), 0);
    CU_ASSERT_EQUAL(blk_write_zeroes(bs, 65536, 512, 0, &e), 0);
    CU_ASSERT_EQUAL(blk_discard(bs, 131072, 65536, &e), 0);
    CU_ASSERT_EQUAL(blk_pwrite_compressed(bs, 196608, buf, 65536, &e), 0);
    /* Reads and flushes are not writes. */
    CU_ASSERT_EQUAL(blk_pread(bs, 0, buf, 4096, &e), 0);
    CU_ASSERT_EQUAL(blk_flush(bs, &e), 0);
    CU_ASSERT_EQUAL(rec.n, 4);
    CU_ASSERT_EQUAL(rec.befores, 4);
    enum blk_write_kind kinds[] = { BLK_WRITE_DATA, BLK_WRITE_ZEROES, BLK_WRITE_DISCARD,
                                    BLK_WRITE_COMPRESSED };
    uint64_t offsets[] = { 8192, 65536, 131072, 196608 }, lengths[] = { 4096, 512, 65536, 65536 };
    for (int i = 0; i < 4 && i < rec.n; i++) {
        CU_ASSERT_EQUAL(rec.kinds[i], kinds[i]);
        CU_ASSERT_EQUAL(rec.offsets[i], offsets[i]);
        CU_ASSERT_EQUAL(rec.lengths[i], lengths[i]);
        CU_ASSERT_EQUAL(rec.results[i], 0);
    }
    blk_remove_write_notifier(bs, &n);
    CU_ASSERT_EQUAL(blk_pwrite(bs, 0, buf, 512, &e), 0);
    CU_ASSERT_EQUAL(rec.n, 4);      /* removed: not called any more */
    blk_close(bs);
    unlink(path);
}

static void test_refusal_fails_the_write(void)
{
    char path[] = "/tmp/imgtool-notifiers-XXXXXX";
    struct blockdev *bs = open_scratch(path);
    struct recorder first = { 0 }, second = { .refuse = ENOSPC };
    struct blk_write_notifier n1 = { rec_before, rec_after, &first };
    struct blk_write_notifier n2 = { rec_before, rec_after, &second };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(blk_add_write_notifier(bs, &n1, &e), 0);
    CU_ASSERT_EQUAL(blk_add_write_notifier(bs, &n2, &e), 0);
    char buf[512];
    memset(buf, 9, sizeof(buf));
    CU_ASSERT_EQUAL(blk_pwrite(bs, 0, buf, sizeof(buf), &e), -ENOSPC);
    CU_ASSERT_STRING_EQUAL(e.msg, "refused");
    /* The first notifier got its after, with the error; the refusing one
     * none; the driver nothing. */
    CU_ASSERT_EQUAL(first.n, 1);
    CU_ASSERT_EQUAL(first.results[0], -ENOSPC);
    CU_ASSERT_EQUAL(second.n, 0);
    blk_remove_write_notifier(bs, &n2);
    blk_remove_write_notifier(bs, &n1);
    CU_ASSERT_EQUAL(blk_pread(bs, 0, buf, sizeof(buf), &e), 0);
    CU_ASSERT_EQUAL(buf[0], 0);
    blk_close(bs);
    unlink(path);
}

struct writer { struct blockdev *bs; int ret; };
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    char buf[512] = { 1 };
    struct err e = { 0 };
    w->ret = blk_pwrite(w->bs, 0, buf, sizeof(buf), &e);
    return NULL;
}

struct remover { struct blockdev *bs; struct blk_write_notifier *n; atomic_int done; };
static void *remover_main(void *arg)
{
    struct remover *r = arg;
    blk_remove_write_notifier(r->bs, r->n);
    atomic_store(&r->done, 1);
    return NULL;
}

static void test_remove_waits_for_writes_in_flight(void)
{
    char path[] = "/tmp/imgtool-notifiers-XXXXXX";
    struct blockdev *bs = open_scratch(path);
    struct recorder rec = { 0 };
    atomic_store(&rec.hold, 1);
    struct blk_write_notifier n = { rec_before, rec_after, &rec };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(blk_add_write_notifier(bs, &n, &e), 0);
    struct writer w = { bs, 1 };
    pthread_t wt, rt;
    CU_ASSERT_FATAL(pthread_create(&wt, NULL, writer_main, &w) == 0);
    while (!atomic_load(&rec.held))
        usleep(1000);
    struct remover r = { .bs = bs, .n = &n };
    CU_ASSERT_FATAL(pthread_create(&rt, NULL, remover_main, &r) == 0);
    usleep(50000);
    CU_ASSERT_EQUAL(atomic_load(&r.done), 0);   /* the write is between its calls */
    atomic_store(&rec.hold, 0);
    pthread_join(wt, NULL);
    pthread_join(rt, NULL);
    CU_ASSERT_EQUAL(w.ret, 0);
    CU_ASSERT_EQUAL(rec.n, 1);
    CU_ASSERT_EQUAL(atomic_load(&r.done), 1);
    blk_close(bs);
    unlink(path);
}

UNIT_MAIN("write_notifiers",
          UNIT_TEST(test_every_kind_is_notified),
          UNIT_TEST(test_refusal_fails_the_write),
          UNIT_TEST(test_remove_waits_for_writes_in_flight))
