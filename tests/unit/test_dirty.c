/* Unit tests for bitmap/dirty.c: names, enabled/frozen/inconsistent
 * states and the three outcomes of a job using a successor. */
#include <errno.h>
#include <string.h>

#include "bitmap/dirty.h"
#include "tests/unit/unit.h"

#define GRAN 4096
#define DISK_SIZE (100 * GRAN + 512)

static struct dirty_bitmap *new_dirty(const char *name)
{
    struct dirty_bitmap *bm = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_new(name, DISK_SIZE, GRAN, &bm, &e), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bm);
    return bm;
}

/* Render the dirty extents in granules, e.g. "0-4,7,20-21". */
static const char *extents(const struct dirty_bitmap *bm)
{
    static char buf[256];
    const struct hbitmap *hb = dirty_bitmap_bits(bm);
    uint64_t off = 0, len;
    size_t n = 0;
    buf[0] = '\0';
    while (hbitmap_next_dirty_extent(hb, off, UINT64_MAX, &off, &len) && n < sizeof(buf) - 32) {
        uint64_t first = off / GRAN, last = (off + len - 1) / GRAN;
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%llu", n ? "," : "",
                              (unsigned long long)first);
        if (last != first)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "-%llu", (unsigned long long)last);
        off += len;
    }
    return buf;
}

static void test_name_validation(void)
{
    char name[1025];
    memset(name, 'a', sizeof(name));
    CU_ASSERT_FALSE(dirty_bitmap_name_valid(NULL, 0));
    CU_ASSERT_FALSE(dirty_bitmap_name_valid("", 0));
    CU_ASSERT_TRUE(dirty_bitmap_name_valid("b", 1));
    CU_ASSERT_TRUE(dirty_bitmap_name_valid(name, 1023));
    CU_ASSERT_FALSE(dirty_bitmap_name_valid(name, 1024));
    CU_ASSERT_FALSE(dirty_bitmap_name_valid("a\0b", 3));

    struct dirty_bitmap *bm = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL(dirty_bitmap_new("", DISK_SIZE, GRAN, &bm, &e), -EINVAL);
    CU_ASSERT_EQUAL(e.code, EINVAL);
    name[1024] = '\0';
    CU_ASSERT_EQUAL(dirty_bitmap_new(name, DISK_SIZE, GRAN, &bm, &e), -EINVAL);
    CU_ASSERT_EQUAL(dirty_bitmap_new("ok", DISK_SIZE, 1000, &bm, &e), -EINVAL);
    CU_ASSERT_PTR_NULL(bm);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'ok'"));
    name[1023] = '\0';
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_new(name, DISK_SIZE, GRAN, &bm, &e), 0);
    CU_ASSERT_EQUAL(strlen(dirty_bitmap_name(bm)), 1023);
    CU_ASSERT_EQUAL(dirty_bitmap_granularity(bm), GRAN);
    CU_ASSERT_EQUAL(dirty_bitmap_size(bm), DISK_SIZE);
    CU_ASSERT_TRUE(dirty_bitmap_enabled(bm));
    CU_ASSERT_FALSE(dirty_bitmap_persistent(bm));
    dirty_bitmap_set_persistent(bm, true);
    CU_ASSERT_TRUE(dirty_bitmap_persistent(bm));
    dirty_bitmap_free(bm);
}

static void test_mark_follows_enabled(void)
{
    struct dirty_bitmap *bm = new_dirty("b0");
    struct err e = { 0 };
    dirty_bitmap_mark(bm, 3 * GRAN + 1, 1);
    CU_ASSERT_STRING_EQUAL(extents(bm), "3");
    CU_ASSERT_EQUAL(dirty_bitmap_set_enabled(bm, false, &e), 0);
    dirty_bitmap_mark(bm, 5 * GRAN, 1);
    CU_ASSERT_STRING_EQUAL(extents(bm), "3");
    /* Explicit changes work on a disabled bitmap. */
    CU_ASSERT_EQUAL(dirty_bitmap_set(bm, 7 * GRAN, 2 * GRAN, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "3,7-8");
    CU_ASSERT_EQUAL(dirty_bitmap_reset(bm, 8 * GRAN, GRAN, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "3,7");
    CU_ASSERT_EQUAL(dirty_bitmap_count(bm), 2 * GRAN);
    CU_ASSERT_EQUAL(dirty_bitmap_clear(bm, &e), 0);
    CU_ASSERT_EQUAL(dirty_bitmap_count(bm), 0);
    CU_ASSERT_EQUAL(dirty_bitmap_remove(bm, &e), 0);
}

static void test_frozen_refuses_changes(void)
{
    struct dirty_bitmap *bm = new_dirty("frozen"), *other = new_dirty("other");
    struct err e = { 0 };
    struct hbitmap *bits = NULL;
    CU_ASSERT_EQUAL(dirty_bitmap_set(bm, 0, GRAN, &e), 0);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_freeze(bm, &e), 0);
    CU_ASSERT_TRUE(dirty_bitmap_frozen(bm));

    CU_ASSERT_EQUAL(dirty_bitmap_set(bm, GRAN, GRAN, &e), -EBUSY);
    CU_ASSERT_EQUAL(e.code, EBUSY);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'frozen'"));
    CU_ASSERT_EQUAL(dirty_bitmap_reset(bm, 0, GRAN, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_clear(bm, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_merge(bm, other, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_set_enabled(bm, false, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_truncate(bm, 2 * DISK_SIZE, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_freeze(bm, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_bits_for_load(bm, &bits, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_remove(bm, &e), -EBUSY);
    CU_ASSERT_STRING_EQUAL(extents(bm), "0");

    /* Reading a frozen bitmap is fine: merge it into another one. */
    CU_ASSERT_EQUAL(dirty_bitmap_merge(other, bm, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(other), "0");

    CU_ASSERT_EQUAL(dirty_bitmap_abdicate(bm, &e), 0);
    CU_ASSERT_FALSE(dirty_bitmap_frozen(bm));
    CU_ASSERT_EQUAL(dirty_bitmap_remove(bm, &e), 0);
    dirty_bitmap_free(other);
}

static void test_not_frozen_job_calls_fail(void)
{
    struct dirty_bitmap *bm = new_dirty("idle");
    struct err e = { 0 };
    CU_ASSERT_EQUAL(dirty_bitmap_abdicate(bm, &e), -EINVAL);
    CU_ASSERT_EQUAL(e.code, EINVAL);
    CU_ASSERT_EQUAL(dirty_bitmap_reclaim(bm, &e), -EINVAL);
    CU_ASSERT_EQUAL(dirty_bitmap_job_consume_range(bm, 0, GRAN, &e), -EINVAL);
    dirty_bitmap_free(bm);
}

/* Success: the bitmap keeps only the writes made during the job. */
static void test_successor_abdicate(void)
{
    struct dirty_bitmap *bm = new_dirty("inc0");
    struct err e = { 0 };
    dirty_bitmap_mark(bm, 0, 5 * GRAN);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_freeze(bm, &e), 0);
    CU_ASSERT_TRUE(dirty_bitmap_enabled(bm));
    dirty_bitmap_mark(bm, 2 * GRAN, 1);
    dirty_bitmap_mark(bm, 50 * GRAN, 2 * GRAN);
    dirty_bitmap_mark(bm, DISK_SIZE - 1, 1);
    /* The frozen parent is what the job copies: unchanged by writes. */
    CU_ASSERT_STRING_EQUAL(extents(bm), "0-4");
    CU_ASSERT_EQUAL(dirty_bitmap_abdicate(bm, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "2,50-51,100");
    CU_ASSERT_EQUAL(dirty_bitmap_count(bm), 3 * GRAN + 512);
    CU_ASSERT_STRING_EQUAL(dirty_bitmap_name(bm), "inc0");
    CU_ASSERT_TRUE(dirty_bitmap_enabled(bm));
    /* Thawed: writes go to the bitmap again. */
    dirty_bitmap_mark(bm, 70 * GRAN, 1);
    CU_ASSERT_STRING_EQUAL(extents(bm), "2,50-51,70,100");
    dirty_bitmap_free(bm);
}

/* Failure: parent | successor, nothing lost. */
static void test_successor_reclaim(void)
{
    struct dirty_bitmap *bm = new_dirty("inc1");
    struct err e = { 0 };
    dirty_bitmap_mark(bm, 0, 5 * GRAN);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_freeze(bm, &e), 0);
    dirty_bitmap_mark(bm, 2 * GRAN, 1);
    dirty_bitmap_mark(bm, 50 * GRAN, 2 * GRAN);
    CU_ASSERT_EQUAL(dirty_bitmap_reclaim(bm, &e), 0);
    CU_ASSERT_FALSE(dirty_bitmap_frozen(bm));
    CU_ASSERT_STRING_EQUAL(extents(bm), "0-4,50-51");
    CU_ASSERT_EQUAL(dirty_bitmap_count(bm), 7 * GRAN);
    dirty_bitmap_mark(bm, 60 * GRAN, 1);
    CU_ASSERT_STRING_EQUAL(extents(bm), "0-4,50-51,60");
    dirty_bitmap_free(bm);
}

/* bitmap-mode=always: the job clears what reached the target; on failure
 * the bitmap holds what was not copied plus every write made meanwhile,
 * including rewrites of ranges already copied. */
static void test_successor_consume_then_reclaim(void)
{
    struct dirty_bitmap *bm = new_dirty("always");
    struct err e = { 0 };
    dirty_bitmap_mark(bm, 0, 10 * GRAN);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_freeze(bm, &e), 0);
    CU_ASSERT_EQUAL(dirty_bitmap_job_consume_range(bm, 0, 5 * GRAN, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "5-9");
    dirty_bitmap_mark(bm, 2 * GRAN, 1);     /* rewrite of copied data */
    dirty_bitmap_mark(bm, 20 * GRAN, 1);
    CU_ASSERT_EQUAL(dirty_bitmap_job_consume_range(bm, 5 * GRAN, 2 * GRAN, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "7-9");
    CU_ASSERT_EQUAL(dirty_bitmap_reclaim(bm, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "2,7-9,20");
    CU_ASSERT_EQUAL(dirty_bitmap_count(bm), 5 * GRAN);
    dirty_bitmap_free(bm);
}

/* A disabled bitmap used by a job stays disabled and records nothing. */
static void test_successor_of_disabled_bitmap(void)
{
    struct dirty_bitmap *bm = new_dirty("snap");
    struct err e = { 0 };
    dirty_bitmap_mark(bm, 0, GRAN);
    CU_ASSERT_EQUAL(dirty_bitmap_set_enabled(bm, false, &e), 0);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_freeze(bm, &e), 0);
    CU_ASSERT_FALSE(dirty_bitmap_enabled(bm));
    dirty_bitmap_mark(bm, 9 * GRAN, 1);
    CU_ASSERT_EQUAL(dirty_bitmap_reclaim(bm, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "0");
    CU_ASSERT_FALSE(dirty_bitmap_enabled(bm));
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_freeze(bm, &e), 0);
    dirty_bitmap_mark(bm, 9 * GRAN, 1);
    CU_ASSERT_EQUAL(dirty_bitmap_abdicate(bm, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(bm), "");
    CU_ASSERT_FALSE(dirty_bitmap_enabled(bm));
    dirty_bitmap_free(bm);
}

static void test_inconsistent(void)
{
    struct dirty_bitmap *bm = new_dirty("stale"), *other = new_dirty("other");
    struct err e = { 0 };
    dirty_bitmap_set_inconsistent(bm, true);
    CU_ASSERT_TRUE(dirty_bitmap_inconsistent(bm));
    CU_ASSERT_EQUAL(dirty_bitmap_set(bm, 0, GRAN, &e), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "inconsistent"));
    CU_ASSERT_EQUAL(dirty_bitmap_freeze(bm, &e), -EINVAL);
    CU_ASSERT_EQUAL(dirty_bitmap_merge(other, bm, &e), -EINVAL);
    CU_ASSERT_EQUAL(dirty_bitmap_merge(bm, other, &e), -EINVAL);
    dirty_bitmap_mark(bm, 0, GRAN);
    CU_ASSERT_EQUAL(dirty_bitmap_count(bm), 0);
    CU_ASSERT_EQUAL(dirty_bitmap_remove(bm, &e), 0);
    dirty_bitmap_free(other);
}

static void test_merge_and_truncate(void)
{
    struct dirty_bitmap *a = new_dirty("a"), *b = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_new("b", DISK_SIZE, 512, &b, &e), 0);
    dirty_bitmap_mark(b, 10 * GRAN + 600, 1);
    dirty_bitmap_mark(a, 0, 1);
    CU_ASSERT_EQUAL(dirty_bitmap_merge(a, b, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(a), "0,10");
    CU_ASSERT_EQUAL(dirty_bitmap_truncate(a, 5 * GRAN, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(a), "0");
    CU_ASSERT_EQUAL(dirty_bitmap_merge(a, b, &e), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'b' into 'a'"));
    dirty_bitmap_free(a);
    dirty_bitmap_free(b);
}

UNIT_MAIN("dirty",
          UNIT_TEST(test_name_validation),
          UNIT_TEST(test_mark_follows_enabled),
          UNIT_TEST(test_frozen_refuses_changes),
          UNIT_TEST(test_not_frozen_job_calls_fail),
          UNIT_TEST(test_successor_abdicate),
          UNIT_TEST(test_successor_reclaim),
          UNIT_TEST(test_successor_consume_then_reclaim),
          UNIT_TEST(test_successor_of_disabled_bitmap),
          UNIT_TEST(test_inconsistent),
          UNIT_TEST(test_merge_and_truncate))
