/* Unit tests for formats/blockdev-bitmaps.c: every write primitive marks the
 * enabled bitmaps, truncate resizes them, the set's rules (names, removal,
 * frozen bitmaps), BITMAPS_ONLY opens, marking from several threads, and
 * the persistent life cycle (load + mark in use at open, store clean at
 * close) with a fake driver. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/blockdev-bitmaps.h"
#include "tests/unit/unit.h"

#define DISK_SIZE (8u << 20)

static char path[64];

static void make_raw(void)
{
    strcpy(path, "/tmp/imgtool-unit-XXXXXX");
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(ftruncate(fd, DISK_SIZE) == 0);
    close(fd);
}

static struct blockdev *open_raw(unsigned flags)
{
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(blk_open(path, "raw", flags | BLK_OPEN_NO_LOCK, NULL, &bs, &e), 0);
    return bs;
}

/* Dirty extents as "start+len,..." in bytes. */
static const char *extents(const struct dirty_bitmap *bm)
{
    static char buf[512];
    const struct hbitmap *hb = dirty_bitmap_bits(bm);
    uint64_t off = 0, len;
    size_t n = 0;
    buf[0] = '\0';
    while (hbitmap_next_dirty_extent(hb, off, UINT64_MAX, &off, &len) && n < sizeof(buf) - 48) {
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%llu+%llu", n ? "," : "",
                              (unsigned long long)off, (unsigned long long)len);
        off += len;
    }
    return buf;
}

static void test_every_write_marks(void)
{
    make_raw();
    struct blockdev *bs = open_raw(BLK_OPEN_RDWR);
    struct err e = { 0 };
    struct dirty_bitmap *a, *b, *off;
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "a", 65536, 0, &a, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "b", 512, 0, &b, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "off", 4096, BLK_BITMAP_DISABLED, &off, &e), 0);
    CU_ASSERT_FALSE(dirty_bitmap_enabled(off));
    char buf[1000];
    memset(buf, 0x5a, sizeof(buf));
    CU_ASSERT_EQUAL(blk_pwrite(bs, 100, buf, 1, &e), 0);
    CU_ASSERT_EQUAL(blk_write_zeroes(bs, 1 << 20, 513, 0, &e), 0);
    CU_ASSERT_EQUAL(blk_discard(bs, 3 << 20, 65536, &e), 0);
    /* Rejected writes mark nothing. */
    CU_ASSERT_EQUAL(blk_pwrite(bs, DISK_SIZE - 10, buf, 11, &e), -EINVAL);
    CU_ASSERT_STRING_EQUAL(extents(a), "0+65536,1048576+65536,3145728+65536");
    CU_ASSERT_STRING_EQUAL(extents(b), "0+512,1048576+1024,3145728+65536");
    CU_ASSERT_STRING_EQUAL(extents(off), "");
    CU_ASSERT_EQUAL(blk_pwrite_compressed(bs, 0, buf, 512, &e), -ENOTSUP);
    blk_close(bs);
    unlink(path);
}

static void test_truncate_resizes(void)
{
    make_raw();
    struct blockdev *bs = open_raw(BLK_OPEN_RDWR);
    struct err e = { 0 };
    struct dirty_bitmap *a;
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "a", 4096, 0, &a, &e), 0);
    CU_ASSERT_EQUAL(blk_write_zeroes(bs, DISK_SIZE - 4096, 4096, 0, &e), 0);
    CU_ASSERT_EQUAL(blk_truncate(bs, DISK_SIZE + 10000, &e), 0);
    CU_ASSERT_EQUAL(dirty_bitmap_size(a), DISK_SIZE + 10000);
    CU_ASSERT_EQUAL(blk_write_zeroes(bs, DISK_SIZE + 9000, 1000, 0, &e), 0);
    CU_ASSERT_STRING_EQUAL(extents(a), "8384512+4096,8396800+1808");
    CU_ASSERT_EQUAL(blk_truncate(bs, 4096, &e), 0);
    CU_ASSERT_EQUAL(dirty_bitmap_size(a), 4096);
    CU_ASSERT_STRING_EQUAL(extents(a), "");
    /* A frozen bitmap blocks resizing: its job relies on the size. */
    CU_ASSERT_EQUAL(dirty_bitmap_freeze(a, &e), 0);
    CU_ASSERT_EQUAL(blk_truncate(bs, 8192, &e), -EBUSY);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "bitmap 'a' is in use by a job"));
    CU_ASSERT_EQUAL(blk_bitmap_remove(bs, "a", &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_reclaim(a, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmap_remove(bs, "a", &e), 0);
    CU_ASSERT_EQUAL(blk_bitmap_count(bs), 0);
    blk_close(bs);
    unlink(path);
}

static void test_set_rules(void)
{
    make_raw();
    struct blockdev *bs = open_raw(BLK_OPEN_RDWR);
    struct err e = { 0 };
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "x", 65536, 0, NULL, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "x", 65536, 0, NULL, &e), -EEXIST);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "bitmap 'x' already exists"));
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "y", 1000, 0, NULL, &e), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "granularity 1000 is not a power of two"));
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "y", 256, 0, NULL, &e), -EINVAL);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "", 512, 0, NULL, &e), -EINVAL);
    /* raw cannot store bitmaps. */
    CU_ASSERT_FALSE(blk_bitmaps_supported(bs));
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "p", 65536, BLK_BITMAP_PERSISTENT, NULL, &e), -ENOTSUP);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "format 'raw' does not support persistent bitmaps"));
    CU_ASSERT_EQUAL(blk_bitmaps_load(bs, &e), -ENOTSUP);
    CU_ASSERT_EQUAL(blk_bitmaps_store(bs, &e), -ENOTSUP);
    CU_ASSERT_EQUAL(blk_bitmap_remove(bs, "nope", &e), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "no bitmap 'nope'"));
    struct dirty_bitmap *bm;
    CU_ASSERT_EQUAL(blk_bitmap_get(bs, "x", &bm, &e), 0);
    CU_ASSERT_STRING_EQUAL(dirty_bitmap_name(bm), "x");
    CU_ASSERT_PTR_EQUAL(blk_bitmap_at(bs, 0), bm);
    CU_ASSERT_PTR_NULL(blk_bitmap_at(bs, 1));
    CU_ASSERT_EQUAL(blk_bitmap_default_granularity(bs), 4096);
    blk_close(bs);
    unlink(path);
}

static void test_bitmaps_only_refuses_guest_writes(void)
{
    make_raw();
    struct blockdev *bs = open_raw(BLK_OPEN_RDWR | BLK_OPEN_BITMAPS_ONLY);
    struct err e = { 0 };
    char c = 1;
    CU_ASSERT_EQUAL(blk_pwrite(bs, 0, &c, 1, &e), -EROFS);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "open for bitmap changes only"));
    CU_ASSERT_EQUAL(blk_write_zeroes(bs, 0, 512, 0, &e), -EROFS);
    CU_ASSERT_EQUAL(blk_discard(bs, 0, 512, &e), -EROFS);
    CU_ASSERT_EQUAL(blk_truncate(bs, 512, &e), -EROFS);
    blk_close(bs);
    unlink(path);
}

struct writer {
    struct blockdev *bs;
    int index;
};

static void *write_stripes(void *opaque)
{
    struct writer *w = opaque;
    char buf[512] = { 0 };
    struct err e = { 0 };
    for (uint64_t off = (uint64_t)w->index * 4096; off < DISK_SIZE; off += 4 * 4096)
        if (blk_pwrite(w->bs, off, buf, sizeof(buf), &e) < 0)
            return (void *)1;
    return NULL;
}

static void test_marking_from_threads(void)
{
    make_raw();
    struct blockdev *bs = open_raw(BLK_OPEN_RDWR);
    struct err e = { 0 };
    struct dirty_bitmap *a;
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "a", 4096, 0, &a, &e), 0);
    pthread_t t[3];
    struct writer w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (struct writer){ bs, i };
        pthread_create(&t[i], NULL, write_stripes, &w[i]);
    }
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(t[i], &r);
        CU_ASSERT_PTR_NULL(r);
    }
    /* Stripes 0, 1, 2 of every 4: three quarters of the disk. */
    CU_ASSERT_EQUAL(dirty_bitmap_count(a), DISK_SIZE / 4 * 3);
    CU_ASSERT_FALSE(hbitmap_get(dirty_bitmap_bits(a), 3 * 4096));
    blk_close(bs);
    unlink(path);
}

/* A fake persistent-bitmap driver over raw, recording what the generic
 * layer asks of it. */
static struct {
    int loads, stores;
    bool load_mark_in_use, store_in_use;
    size_t stored_count;
    int store_error;
} fake;

static int fake_load(struct blockdev *bs, bool mark_in_use, struct err *e)
{
    fake.loads++;
    fake.load_mark_in_use = mark_in_use;
    struct dirty_bitmap *bm;
    int ret = dirty_bitmap_new("disk", bs->size, 65536, &bm, e);
    if (ret < 0)
        return ret;
    dirty_bitmap_set_persistent(bm, true);
    return blk_bitmap_attach(bs, bm, e);
}

static int fake_store(struct blockdev *bs, bool in_use, struct err *e)
{
    if (fake.store_error)
        return err_set(e, fake.store_error, "store failed");
    fake.stores++;
    fake.store_in_use = in_use;
    fake.stored_count = 0;
    for (size_t i = 0; i < blk_bitmap_count(bs); i++)
        fake.stored_count += dirty_bitmap_persistent(blk_bitmap_at(bs, i));
    return 0;
}

static struct blockdrv fake_drv;

static struct blockdev *open_fake(unsigned flags)
{
    struct blockdev *bs = open_raw(flags);
    fake_drv = *bs->drv;
    fake_drv.bitmaps_load = fake_load;
    fake_drv.bitmaps_store = fake_store;
    bs->drv = &fake_drv;
    memset(&fake, 0, sizeof(fake));
    return bs;
}

static void test_persistent_life_cycle(void)
{
    make_raw();
    struct err e = { 0 };
    /* A writable open loads and marks in use; close stores them clean. */
    struct blockdev *bs = open_fake(BLK_OPEN_RDWR);
    CU_ASSERT_EQUAL(blk_bitmaps_open(bs, &e), 0);
    CU_ASSERT_EQUAL(fake.loads, 1);
    CU_ASSERT_TRUE(fake.load_mark_in_use);
    CU_ASSERT_EQUAL(blk_bitmaps_load(bs, &e), 0);   /* already loaded */
    CU_ASSERT_EQUAL(fake.loads, 1);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "new", 65536, BLK_BITMAP_PERSISTENT, NULL, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "mem", 65536, 0, NULL, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmaps_store(bs, &e), 0);
    CU_ASSERT_TRUE(fake.store_in_use);              /* guest writes may follow */
    CU_ASSERT_EQUAL(fake.stored_count, 2);
    /* A frozen persistent bitmap cannot be stored. */
    struct dirty_bitmap *bm = blk_bitmap_find(bs, "disk");
    CU_ASSERT_EQUAL(dirty_bitmap_freeze(bm, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmaps_store(bs, &e), -EBUSY);
    CU_ASSERT_EQUAL(dirty_bitmap_abdicate(bm, &e), 0);
    CU_ASSERT_EQUAL(blk_bitmaps_release(bs, &e), 0);
    CU_ASSERT_FALSE(fake.store_in_use);
    CU_ASSERT_EQUAL(fake.stores, 2);
    char c = 0;
    CU_ASSERT_EQUAL(blk_pwrite(bs, 0, &c, 1, &e), -EROFS);  /* released */
    blk_close(bs);
    CU_ASSERT_EQUAL(fake.stores, 2);                /* nothing left to store */

    /* Closing without release stores clean. */
    bs = open_fake(BLK_OPEN_RDWR);
    CU_ASSERT_EQUAL(blk_bitmaps_open(bs, &e), 0);
    blk_close(bs);
    CU_ASSERT_EQUAL(fake.stores, 1);
    CU_ASSERT_FALSE(fake.store_in_use);

    /* BITMAPS_ONLY: no marking at open, stores are clean, close stores
     * nothing (the caller's store is the one change). */
    bs = open_fake(BLK_OPEN_RDWR | BLK_OPEN_BITMAPS_ONLY);
    CU_ASSERT_EQUAL(blk_bitmaps_open(bs, &e), 0);
    CU_ASSERT_FALSE(fake.load_mark_in_use);
    CU_ASSERT_EQUAL(blk_bitmap_remove(bs, "disk", &e), 0);
    CU_ASSERT_EQUAL(blk_bitmaps_store(bs, &e), 0);
    CU_ASSERT_FALSE(fake.store_in_use);
    CU_ASSERT_EQUAL(fake.stored_count, 0);
    blk_close(bs);
    CU_ASSERT_EQUAL(fake.stores, 1);

    /* Read-only: loaded on demand, never stored. */
    bs = open_fake(0);
    CU_ASSERT_EQUAL(blk_bitmaps_load(bs, &e), 0);
    CU_ASSERT_FALSE(fake.load_mark_in_use);
    CU_ASSERT_EQUAL(blk_bitmaps_store(bs, &e), -EROFS);
    CU_ASSERT_EQUAL(blk_bitmap_add(bs, "p", 65536, BLK_BITMAP_PERSISTENT, NULL, &e), -EROFS);
    CU_ASSERT_EQUAL(blk_bitmap_remove(bs, "disk", &e), -EROFS);
    blk_close(bs);
    CU_ASSERT_EQUAL(fake.stores, 0);

    /* A failed store at close is silent and leaves the bitmaps in use. */
    bs = open_fake(BLK_OPEN_RDWR);
    CU_ASSERT_EQUAL(blk_bitmaps_open(bs, &e), 0);
    fake.store_error = EIO;
    CU_ASSERT_EQUAL(blk_bitmaps_release(bs, &e), -EIO);
    CU_ASSERT_STRING_EQUAL(e.msg, "store failed");
    blk_close(bs);
    CU_ASSERT_EQUAL(fake.stores, 0);
    unlink(path);
}

UNIT_MAIN("blockdev-bitmaps",
          UNIT_TEST(test_every_write_marks),
          UNIT_TEST(test_truncate_resizes),
          UNIT_TEST(test_set_rules),
          UNIT_TEST(test_bitmaps_only_refuses_guest_writes),
          UNIT_TEST(test_marking_from_threads),
          UNIT_TEST(test_persistent_life_cycle))
