/* Unit tests for qcow2 refcounts of every width (refcount_order 0..6): the
 * entry layout inside a refcount block (qcow2.txt: sub-byte widths least
 * significant first, wider ones big-endian), updates through the refcount
 * cache across many refcount blocks and a growing refcount table, limits
 * (no overflow, no underflow), persistence across a reopen, and check
 * counting and repairing leaks of each width. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/qcow2/qcow2.h"
#include "tests/unit/unit.h"

#define CLUSTERS 5000           /* spans refcount blocks of every width */

static char path[64];

/* A deterministic value that fits in `bits` bits. */
static uint64_t value_for(uint64_t i, unsigned bits)
{
    uint64_t v = (i + 1) * 0x9e3779b97f4a7c15ull;
    return bits == 64 ? v : v & ((1ull << bits) - 1);
}

static void test_entry_layout(void)
{
    for (uint32_t order = 0; order <= 6; order++) {
        unsigned bits = 1u << order;
        uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
        uint64_t n = 64 * 8 / bits;     /* entries in 64 bytes */
        uint8_t block[64];
        memset(block, 0, sizeof(block));
        for (uint64_t i = 0; i < n; i++)
            qcow2_refcount_entry_set(block, i, order, value_for(i, bits));
        for (uint64_t i = 0; i < n; i++)
            CU_ASSERT_EQUAL(qcow2_refcount_entry_get(block, i, order), value_for(i, bits));
        /* Changing one entry leaves its neighbours alone. */
        memset(block, 0xff, sizeof(block));
        qcow2_refcount_entry_set(block, 5, order, 0);
        for (uint64_t i = 0; i < n; i++)
            CU_ASSERT_EQUAL(qcow2_refcount_entry_get(block, i, order), i == 5 ? 0 : max);
    }
    /* The bytes themselves, as QEMU reads them. */
    uint8_t b[16] = { 0 };
    qcow2_refcount_entry_set(b, 3, 0, 1);
    CU_ASSERT_EQUAL(b[0], 0x08);
    memset(b, 0, sizeof(b));
    qcow2_refcount_entry_set(b, 1, 1, 3);
    qcow2_refcount_entry_set(b, 4, 1, 2);
    CU_ASSERT_EQUAL(b[0], 0x0c);
    CU_ASSERT_EQUAL(b[1], 0x02);
    memset(b, 0, sizeof(b));
    qcow2_refcount_entry_set(b, 1, 2, 0xa);
    qcow2_refcount_entry_set(b, 2, 2, 0x5);
    CU_ASSERT_EQUAL(b[0], 0xa0);
    CU_ASSERT_EQUAL(b[1], 0x05);
    memset(b, 0, sizeof(b));
    qcow2_refcount_entry_set(b, 1, 4, 0x1234);
    CU_ASSERT_EQUAL(b[2], 0x12);
    CU_ASSERT_EQUAL(b[3], 0x34);
    memset(b, 0, sizeof(b));
    qcow2_refcount_entry_set(b, 1, 5, 0x12345678);
    CU_ASSERT_EQUAL(memcmp(b + 4, "\x12\x34\x56\x78", 4), 0);
    memset(b, 0, sizeof(b));
    qcow2_refcount_entry_set(b, 1, 6, 0x0102030405060708ull);
    CU_ASSERT_EQUAL(memcmp(b + 8, "\x01\x02\x03\x04\x05\x06\x07\x08", 8), 0);
}

static void create_image(unsigned bits)
{
    strcpy(path, "/tmp/imgtool-unit-XXXXXX");
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    char spec[64];
    snprintf(spec, sizeof(spec), "cluster_size=512,refcount_bits=%u", bits);
    struct kvopts opts = { 0 };
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(kvopts_parse(&opts, spec, &e), 0);
    struct blk_create_params p = { .filename = path, .size = 1 << 20, .opts = &opts };
    CU_ASSERT_EQUAL_FATAL(blk_create("qcow2", &p, &e), 0);
    kvopts_free(&opts);
}

static struct blockdev *open_image(unsigned flags)
{
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(blk_open(path, "qcow2", flags | BLK_OPEN_NO_LOCK, NULL, &bs, &e), 0);
    return bs;
}

static uint64_t refcount_of(struct qcow2_state *s, uint64_t cluster)
{
    uint64_t rc = UINT64_MAX;
    struct err e = { 0 };
    CU_ASSERT_EQUAL(qcow2_get_refcount(s, cluster, &rc, &e), 0);
    return rc;
}

/* Set the refcount of `cluster` (now `from`) to `to`, in steps that fit
 * the signed delta. */
static int set_refcount(struct qcow2_state *s, uint64_t cluster, uint64_t from, uint64_t to)
{
    struct err e = { 0 };
    while (from != to) {
        uint64_t step = from < to ? to - from : from - to;
        if (step > INT64_MAX)
            step = INT64_MAX;
        int ret = qcow2_update_refcount(s, cluster << s->cluster_bits, 1,
                                        from < to ? (int64_t)step : -(int64_t)step, &e);
        if (ret < 0)
            return ret;
        from = from < to ? from + step : from - step;
    }
    return 0;
}

static void check_width(unsigned bits)
{
    create_image(bits);
    struct blockdev *bs = open_image(BLK_OPEN_RDWR);
    struct qcow2_state *s = bs->opaque;
    struct err e = { 0 };
    uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1, first;
    CU_ASSERT_EQUAL(s->refcount_max, max);
    uint32_t old_reftable_clusters = s->reftable_clusters;
    pthread_mutex_lock(&s->lock);
    /* Clusters nothing references: every one a leak of refcount 1. */
    CU_ASSERT_EQUAL_FATAL(qcow2_alloc_clusters(s, CLUSTERS, &first, &e), 0);
    first >>= s->cluster_bits;
    for (uint64_t i = 0; i < CLUSTERS; i++)
        CU_ASSERT_EQUAL(set_refcount(s, first + i, 1, value_for(i, bits)), 0);
    for (uint64_t i = 0; i < CLUSTERS; i++)
        CU_ASSERT_EQUAL(refcount_of(s, first + i), value_for(i, bits));
    /* Limits: the refcount stays as it was. */
    CU_ASSERT_EQUAL(set_refcount(s, first, value_for(0, bits), max), 0);
    CU_ASSERT_EQUAL(qcow2_update_refcount(s, first << s->cluster_bits, 1, 1, &e), -EIO);
    CU_ASSERT_EQUAL(refcount_of(s, first), max);
    CU_ASSERT_EQUAL(set_refcount(s, first, max, 0), 0);
    CU_ASSERT_EQUAL(qcow2_update_refcount(s, first << s->cluster_bits, 1, -1, &e), -EIO);
    CU_ASSERT_EQUAL(refcount_of(s, first), 0);
    CU_ASSERT_EQUAL(set_refcount(s, first, 0, value_for(0, bits)), 0);
    pthread_mutex_unlock(&s->lock);
    /* 64 refcount table entries (one 512-byte cluster) cover 4096 clusters
     * with 64-bit refcounts: the table had to grow. */
    if (bits == 64)
        CU_ASSERT(s->reftable_clusters > old_reftable_clusters);
    CU_ASSERT_EQUAL(blk_flush(bs, &e), 0);
    blk_close(bs);

    /* On disk, read back by a new open. */
    bs = open_image(0);
    s = bs->opaque;
    uint64_t leaks = 0;
    for (uint64_t i = 0; i < CLUSTERS; i++) {
        CU_ASSERT_EQUAL(refcount_of(s, first + i), value_for(i, bits));
        leaks += value_for(i, bits) != 0;
    }
    /* check: each non-zero refcount is a leak, nothing else is wrong. */
    struct blk_check_result res = { 0 };
    CU_ASSERT_EQUAL(blk_check(bs, &res, 0, &e), 0);
    CU_ASSERT_EQUAL(res.leaks, leaks);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.check_errors, 0);
    CU_ASSERT_EQUAL(res.nmessages, leaks);
    blk_check_result_free(&res);
    blk_close(bs);

    /* check -r leaks frees them all; then the image is clean. */
    bs = open_image(BLK_OPEN_RDWR | BLK_OPEN_CHECK);
    CU_ASSERT_EQUAL(blk_check(bs, &res, BLK_CHECK_FIX_LEAKS, &e), 0);
    CU_ASSERT_EQUAL(res.leaks_fixed, leaks);
    CU_ASSERT_EQUAL(res.leaks, 0);
    blk_check_result_free(&res);
    blk_close(bs);
    bs = open_image(0);
    s = bs->opaque;
    for (uint64_t i = 0; i < CLUSTERS; i++)
        CU_ASSERT_EQUAL(refcount_of(s, first + i), 0);
    CU_ASSERT_EQUAL(blk_check(bs, &res, 0, &e), 0);
    CU_ASSERT_EQUAL(res.leaks + res.corruptions + res.check_errors, 0);
    CU_ASSERT_EQUAL(res.nmessages, 0);
    blk_check_result_free(&res);
    blk_close(bs);
    unlink(path);
}

static void test_width_1(void) { check_width(1); }
static void test_width_2(void) { check_width(2); }
static void test_width_4(void) { check_width(4); }
static void test_width_8(void) { check_width(8); }
static void test_width_16(void) { check_width(16); }
static void test_width_32(void) { check_width(32); }
static void test_width_64(void) { check_width(64); }

UNIT_MAIN("qcow2_refcount", UNIT_TEST(test_entry_layout), UNIT_TEST(test_width_1),
          UNIT_TEST(test_width_2), UNIT_TEST(test_width_4), UNIT_TEST(test_width_8),
          UNIT_TEST(test_width_16), UNIT_TEST(test_width_32), UNIT_TEST(test_width_64))
