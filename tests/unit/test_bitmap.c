/* Unit tests for bitmap/hbitmap.c: exact offsets, extents and counts,
 * checked against a naive one-bool-per-granule reference. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap/hbitmap.h"
#include "tests/unit/unit.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

static struct hbitmap *new_bitmap(uint64_t size, uint32_t granularity)
{
    struct hbitmap *hb = NULL;
    struct err e = { 0 };
    int ret = hbitmap_new(size, granularity, &hb, &e);
    CU_ASSERT_EQUAL_FATAL(ret, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(hb);
    return hb;
}

/* Collect up to max extents of [start, end) into offs/lens; return count. */
static size_t collect_extents(const struct hbitmap *hb, uint64_t start, uint64_t end,
                              uint64_t *offs, uint64_t *lens, size_t max)
{
    size_t n = 0;
    uint64_t off = start, len;
    while (n < max && hbitmap_next_dirty_extent(hb, off, end, &off, &len)) {
        offs[n] = off;
        lens[n] = len;
        n++;
        off += len;
    }
    return n;
}

static void test_new_rejects_bad_parameters(void)
{
    struct hbitmap *hb = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL(hbitmap_new(MiB, 0, &hb, &e), -EINVAL);
    CU_ASSERT_EQUAL(e.code, EINVAL);
    CU_ASSERT_EQUAL(hbitmap_new(MiB, 256, &hb, &e), -EINVAL);
    CU_ASSERT_EQUAL(hbitmap_new(MiB, 3 * 512, &hb, &e), -EINVAL);
    CU_ASSERT_EQUAL(hbitmap_new(MiB, UINT32_C(1) << 31 | 512, &hb, &e), -EINVAL);
    CU_ASSERT_EQUAL(hbitmap_new((uint64_t)INT64_MAX + 1, 65536, &hb, &e), -EINVAL);
    CU_ASSERT_PTR_NULL(hb);

    hb = new_bitmap(MiB, 512);
    CU_ASSERT_EQUAL(hbitmap_granularity(hb), 512);
    CU_ASSERT_EQUAL(hbitmap_size(hb), MiB);
    hbitmap_free(hb);
    hb = new_bitmap(5 * GiB, UINT32_C(1) << 31);
    CU_ASSERT_EQUAL(hbitmap_granularity(hb), UINT32_C(1) << 31);
    hbitmap_set(hb, 5 * GiB - 1, 1);
    CU_ASSERT_EQUAL(hbitmap_count(hb), GiB);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), (int64_t)(4 * GiB));
    hbitmap_free(hb);

    hb = new_bitmap(0, 512);
    hbitmap_set(hb, 0, 512);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 0);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, 512), -1);
    CU_ASSERT_EQUAL(hbitmap_next_clean(hb, 0, 512), -1);
    hbitmap_free(hb);
}

/* A disk of 10 granules and 100 bytes: the 11th granule is partial. */
static void test_partial_last_granule(void)
{
    const uint64_t gran = 4096, size = 10 * gran + 100;
    struct hbitmap *hb = new_bitmap(size, gran);
    uint64_t off, len;

    hbitmap_set(hb, size - 1, 1);
    CU_ASSERT_TRUE(hbitmap_get(hb, 10 * gran));
    CU_ASSERT_FALSE(hbitmap_get(hb, 10 * gran - 1));
    CU_ASSERT_FALSE(hbitmap_get(hb, size));
    CU_ASSERT_EQUAL(hbitmap_count(hb), 100);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, size), (int64_t)(10 * gran));
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, size - 10, 5), (int64_t)(size - 10));
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, 10 * gran), -1);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, size, 100), -1);
    CU_ASSERT_EQUAL(hbitmap_next_clean(hb, 10 * gran, UINT64_MAX), -1);
    CU_ASSERT_EQUAL(hbitmap_next_clean(hb, 10 * gran - 1, UINT64_MAX),
                    (int64_t)(10 * gran - 1));
    CU_ASSERT_TRUE(hbitmap_next_dirty_extent(hb, 0, UINT64_MAX, &off, &len));
    CU_ASSERT_EQUAL(off, 10 * gran);
    CU_ASSERT_EQUAL(len, 100);
    CU_ASSERT_FALSE(hbitmap_next_dirty_extent(hb, size, UINT64_MAX, &off, &len));

    /* Ranges past the end are clamped or ignored. */
    hbitmap_set(hb, size, 4096);
    hbitmap_set(hb, UINT64_MAX - 10, 10);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 100);
    hbitmap_set(hb, 9 * gran + 5, UINT64_MAX);
    CU_ASSERT_EQUAL(hbitmap_count(hb), gran + 100);
    CU_ASSERT_TRUE(hbitmap_next_dirty_extent(hb, 0, UINT64_MAX, &off, &len));
    CU_ASSERT_EQUAL(off, 9 * gran);
    CU_ASSERT_EQUAL(len, gran + 100);
    /* An extent is clamped to the range asked for. */
    CU_ASSERT_TRUE(hbitmap_next_dirty_extent(hb, 9 * gran + 7, 10 * gran + 3, &off, &len));
    CU_ASSERT_EQUAL(off, 9 * gran + 7);
    CU_ASSERT_EQUAL(len, gran - 4);

    /* Reset clears every granule the range touches, even partly. */
    hbitmap_reset(hb, size - 1, 1);
    CU_ASSERT_EQUAL(hbitmap_count(hb), gran);
    hbitmap_reset(hb, 9 * gran + 100, 1);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 0);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), -1);

    hbitmap_set_all(hb);
    CU_ASSERT_EQUAL(hbitmap_count(hb), size);
    CU_ASSERT_EQUAL(hbitmap_next_clean(hb, 0, UINT64_MAX), -1);
    CU_ASSERT_TRUE(hbitmap_next_dirty_extent(hb, 0, UINT64_MAX, &off, &len));
    CU_ASSERT_EQUAL(off, 0);
    CU_ASSERT_EQUAL(len, size);
    hbitmap_reset_all(hb);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 0);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), -1);
    CU_ASSERT_EQUAL(hbitmap_next_clean(hb, 5, UINT64_MAX), 5);
    hbitmap_free(hb);
}

/* 64, 4096 and 262144 granules are where words of level 0, 1 and 2 end. */
static void test_level_boundaries(void)
{
    const uint64_t gran = 512, granules = 300000, size = granules * gran;
    static const uint64_t boundaries[] = { 64, 4096, 262144 };
    struct hbitmap *hb = new_bitmap(size, gran);
    uint64_t off, len;

    for (size_t i = 0; i < 3; i++) {
        uint64_t b = boundaries[i];
        hbitmap_set(hb, (b - 1) * gran, 2 * gran);
        CU_ASSERT_EQUAL(hbitmap_count(hb), 2 * gran);
        CU_ASSERT_TRUE(hbitmap_get(hb, (b - 1) * gran));
        CU_ASSERT_TRUE(hbitmap_get(hb, b * gran));
        CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), (int64_t)((b - 1) * gran));
        CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, b * gran + 1, UINT64_MAX),
                        (int64_t)(b * gran + 1));
        CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, (b + 1) * gran, UINT64_MAX), -1);
        CU_ASSERT_EQUAL(hbitmap_next_clean(hb, (b - 1) * gran, UINT64_MAX),
                        (int64_t)((b + 1) * gran));
        CU_ASSERT_TRUE(hbitmap_next_dirty_extent(hb, 0, UINT64_MAX, &off, &len));
        CU_ASSERT_EQUAL(off, (b - 1) * gran);
        CU_ASSERT_EQUAL(len, 2 * gran);
        hbitmap_reset(hb, (b - 1) * gran, gran);
        CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), (int64_t)(b * gran));
        hbitmap_reset(hb, b * gran, gran);
        CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), -1);
        CU_ASSERT_EQUAL(hbitmap_count(hb), 0);
    }

    /* A range across all three boundaries, then a hole punched in it that
     * empties whole words of levels 0 and 1. */
    hbitmap_set(hb, 1 * gran, 270000 * gran);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 270000 * gran);
    hbitmap_reset(hb, 100 * gran, 269000 * gran);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 1000 * gran);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 100 * gran, UINT64_MAX), (int64_t)(269100 * gran));
    CU_ASSERT_EQUAL(hbitmap_next_clean(hb, 269100 * gran, UINT64_MAX),
                    (int64_t)(270001 * gran));
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, 100 * gran), (int64_t)gran);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 100 * gran, 269000 * gran), -1);
    uint64_t offs[4], lens[4];
    CU_ASSERT_EQUAL(collect_extents(hb, 0, size, offs, lens, 4), 2);
    CU_ASSERT_EQUAL(offs[0], gran);
    CU_ASSERT_EQUAL(lens[0], 99 * gran);
    CU_ASSERT_EQUAL(offs[1], 269100 * gran);
    CU_ASSERT_EQUAL(lens[1], 901 * gran);
    hbitmap_free(hb);
}

/* xorshift64*: deterministic and independent of the C library. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static uint64_t rng_below(uint64_t n)
{
    return n ? rng_next() % n : 0;
}

struct reference {
    uint64_t size, gran, granules;
    bool *dirty;
};

static void ref_assign(struct reference *r, uint64_t off, uint64_t len, bool value)
{
    if (len == 0 || off >= r->size)
        return;
    uint64_t end = off + (len < r->size - off ? len : r->size - off);
    for (uint64_t g = off / r->gran; g <= (end - 1) / r->gran; g++)
        r->dirty[g] = value;
}

static int64_t ref_next(const struct reference *r, uint64_t off, uint64_t bytes, bool dirty)
{
    if (bytes == 0 || off >= r->size)
        return -1;
    uint64_t end = off + (bytes < r->size - off ? bytes : r->size - off);
    for (uint64_t g = off / r->gran; g < r->granules; g++) {
        uint64_t pos = g * r->gran > off ? g * r->gran : off;
        if (pos >= end)
            return -1;
        if (r->dirty[g] == dirty)
            return (int64_t)pos;
    }
    return -1;
}

static uint64_t ref_count(const struct reference *r)
{
    uint64_t count = 0;
    for (uint64_t g = 0; g < r->granules; g++)
        if (r->dirty[g])
            count += g + 1 < r->granules ? r->gran : r->size - g * r->gran;
    return count;
}

/* Compare every extent of [start, end) with the reference. */
static void check_extents(const struct hbitmap *hb, const struct reference *r,
                          uint64_t start, uint64_t end)
{
    uint64_t pos = start, off, len;
    int mismatches = 0;
    while (hbitmap_next_dirty_extent(hb, pos, end, &off, &len)) {
        int64_t want_off = ref_next(r, pos, end - pos, true);
        int64_t want_end = ref_next(r, off, end - off, false);
        if (want_end < 0)
            want_end = (int64_t)(end < r->size ? end : r->size);
        if ((int64_t)off != want_off || (int64_t)(off + len) != want_end)
            mismatches++;
        pos = off + len;
    }
    if (pos < end)
        CU_ASSERT_EQUAL(ref_next(r, pos, end - pos, true), -1);
    CU_ASSERT_EQUAL(mismatches, 0);
}

static uint64_t random_length(uint64_t gran)
{
    switch (rng_below(4)) {
    case 0: return rng_below(3 * gran) + 1;
    case 1: return rng_below(200 * gran) + 1;
    case 2: return rng_below(70000 * gran) + 1;
    default: return (rng_below(20) + 1) * gran;
    }
}

static void run_random_ops(uint64_t size, uint32_t gran, unsigned ops, uint64_t seed)
{
    struct reference r = { .size = size, .gran = gran };
    r.granules = (size + gran - 1) / gran;
    r.dirty = calloc(r.granules, sizeof(bool));
    CU_ASSERT_PTR_NOT_NULL_FATAL(r.dirty);
    struct hbitmap *hb = new_bitmap(size, gran);
    rng_state = seed;
    int query_mismatches = 0;

    for (unsigned i = 0; i < ops; i++) {
        uint64_t off = rng_below(size + gran);
        uint64_t len = random_length(gran);
        bool value = rng_below(3) != 0;     /* bias towards dirty */
        if (value)
            hbitmap_set(hb, off, len);
        else
            hbitmap_reset(hb, off, len);
        ref_assign(&r, off, len, value);

        for (int q = 0; q < 4; q++) {
            uint64_t qoff = rng_below(size + 2);
            uint64_t qlen = rng_below(2) ? random_length(gran) : UINT64_MAX;
            if (hbitmap_next_dirty(hb, qoff, qlen) != ref_next(&r, qoff, qlen, true))
                query_mismatches++;
            if (hbitmap_next_clean(hb, qoff, qlen) != ref_next(&r, qoff, qlen, false))
                query_mismatches++;
            if (hbitmap_get(hb, qoff) != (qoff < size && r.dirty[qoff / gran]))
                query_mismatches++;
        }
        if (hbitmap_count(hb) != ref_count(&r))
            query_mismatches++;
        if (i % 50 == 0) {
            check_extents(hb, &r, 0, UINT64_MAX);
            uint64_t start = rng_below(size), end = start + rng_below(size - start + 1);
            check_extents(hb, &r, start, end);
        }
    }
    CU_ASSERT_EQUAL(query_mismatches, 0);
    check_extents(hb, &r, 0, size);
    hbitmap_free(hb);
    free(r.dirty);
}

static void test_random_small_partial(void)
{
    run_random_ops(5000 * 512 + 100, 512, 3000, 0x9e3779b97f4a7c15);
}

static void test_random_three_levels(void)
{
    /* 270000 granules: level 2 has more than one word; last granule partial. */
    run_random_ops(270000 * UINT64_C(1024) - 300, 1024, 1500, 0x1234567887654321);
}

static void test_huge_sparse(void)
{
    const uint64_t gran = 64 * KiB, size = 2 * TiB;
    const uint64_t dirty[3] = { 123 * GiB + 5 * gran, TiB + 3 * gran, size - gran };
    struct hbitmap *hb = new_bitmap(size, gran);
    for (int i = 2; i >= 0; i--)
        hbitmap_set(hb, dirty[i] + 100, 1);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 3 * gran);

    uint64_t off = 0;
    for (int i = 0; i < 3; i++) {
        int64_t found = hbitmap_next_dirty(hb, off, UINT64_MAX);
        CU_ASSERT_EQUAL(found, (int64_t)dirty[i]);
        if (found < 0)
            break;
        off = (uint64_t)found + gran;
    }
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, off, UINT64_MAX), -1);

    uint64_t offs[4], lens[4];
    CU_ASSERT_EQUAL_FATAL(collect_extents(hb, 0, UINT64_MAX, offs, lens, 4), 3);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(offs[i], dirty[i]);
        CU_ASSERT_EQUAL(lens[i], gran);
    }
    hbitmap_reset(hb, dirty[1], gran);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, dirty[0] + gran, UINT64_MAX), (int64_t)dirty[2]);
    hbitmap_free(hb);
}

static void test_merge_granularities(void)
{
    const uint64_t size = 24 * 4096 + 1696;
    struct hbitmap *fine = new_bitmap(size, 512);
    struct hbitmap *coarse = new_bitmap(size, 4096);
    struct err e = { 0 };
    uint64_t offs[4], lens[4];

    /* Coarse into fine: one coarse granule dirties 8 fine ones; the partial
     * last coarse granule dirties the fine ones up to the disk end. */
    hbitmap_set(coarse, 5000, 1);
    hbitmap_set(coarse, size - 1, 1);
    CU_ASSERT_EQUAL(hbitmap_merge(fine, coarse, &e), 0);
    CU_ASSERT_EQUAL(collect_extents(fine, 0, UINT64_MAX, offs, lens, 4), 2);
    CU_ASSERT_EQUAL(offs[0], 4096);
    CU_ASSERT_EQUAL(lens[0], 4096);
    CU_ASSERT_EQUAL(offs[1], 24 * 4096);
    CU_ASSERT_EQUAL(lens[1], 1696);
    CU_ASSERT_EQUAL(hbitmap_count(fine), 4096 + 1696);

    /* Fine into coarse: one fine granule dirties the coarse one around it. */
    hbitmap_reset_all(coarse);
    hbitmap_reset_all(fine);
    hbitmap_set(fine, 9 * 512, 512);
    hbitmap_set(fine, 16 * 512 - 1, 2);     /* straddles coarse granules 1 and 2 */
    CU_ASSERT_EQUAL(hbitmap_merge(coarse, fine, &e), 0);
    CU_ASSERT_EQUAL(collect_extents(coarse, 0, UINT64_MAX, offs, lens, 4), 1);
    CU_ASSERT_EQUAL(offs[0], 4096);
    CU_ASSERT_EQUAL(lens[0], 2 * 4096);

    /* OR keeps what dst had. */
    hbitmap_set(coarse, 0, 1);
    CU_ASSERT_EQUAL(hbitmap_merge(coarse, fine, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(coarse), 3 * 4096);
    CU_ASSERT_EQUAL(hbitmap_merge(coarse, coarse, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(coarse), 3 * 4096);

    struct hbitmap *other = new_bitmap(size + 1, 512);
    CU_ASSERT_EQUAL(hbitmap_merge(coarse, other, &e), -EINVAL);
    CU_ASSERT_EQUAL(e.code, EINVAL);
    CU_ASSERT_EQUAL(hbitmap_count(coarse), 3 * 4096);
    hbitmap_free(other);
    hbitmap_free(fine);
    hbitmap_free(coarse);
}

static void test_copy(void)
{
    struct hbitmap *hb = new_bitmap(300000 * 512, 512), *copy = NULL;
    struct err e = { 0 };
    hbitmap_set(hb, 262143 * 512, 1024);
    CU_ASSERT_EQUAL_FATAL(hbitmap_copy(hb, &copy, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(copy), 1024);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(copy, 0, UINT64_MAX), 262143 * 512);
    hbitmap_reset_all(hb);
    CU_ASSERT_EQUAL(hbitmap_count(copy), 1024);
    CU_ASSERT_EQUAL(hbitmap_next_clean(copy, 262143 * 512, UINT64_MAX), 262145 * 512);
    hbitmap_free(copy);
    hbitmap_free(hb);
}

/* docs/interop/qcow2.txt, "Bitmap data": bit (byte_nr / granularity) % 8 of
 * data byte byte_nr / granularity / 8, least significant bit first. */
static void test_serialize_layout(void)
{
    const uint64_t gran = 512, size = 20 * gran;    /* 20 granules: 3 bytes */
    struct hbitmap *hb = new_bitmap(size, gran);
    uint8_t buf[4];

    CU_ASSERT_EQUAL(hbitmap_serialization_align(hb), 8 * gran);
    CU_ASSERT_EQUAL(hbitmap_serialization_size(hb, 0, size), 3);
    CU_ASSERT_EQUAL(hbitmap_serialization_size(hb, 0, UINT64_MAX), 3);
    CU_ASSERT_EQUAL(hbitmap_serialization_size(hb, 8 * gran, 8 * gran), 1);
    CU_ASSERT_EQUAL(hbitmap_serialization_size(hb, 16 * gran, 8 * gran), 1);

    hbitmap_set(hb, 0, 1);
    hbitmap_set(hb, 9 * gran, 1);
    memset(buf, 0xee, sizeof(buf));
    hbitmap_serialize_part(hb, buf, 0, size);
    CU_ASSERT_EQUAL(buf[0], 0x01);
    CU_ASSERT_EQUAL(buf[1], 0x02);
    CU_ASSERT_EQUAL(buf[2], 0x00);
    CU_ASSERT_EQUAL(buf[3], 0xee);

    hbitmap_set(hb, 7 * gran, 1);
    hbitmap_set(hb, 19 * gran + 511, 1);    /* last granule: bit 3 of byte 2 */
    hbitmap_serialize_part(hb, buf, 0, size);
    CU_ASSERT_EQUAL(buf[0], 0x81);
    CU_ASSERT_EQUAL(buf[1], 0x02);
    CU_ASSERT_EQUAL(buf[2], 0x08);
    hbitmap_serialize_part(hb, buf, 16 * gran, 8 * gran);
    CU_ASSERT_EQUAL(buf[0], 0x08);

    /* Deserialize into a dirty bitmap: the part is replaced, and tail bits
     * past the last granule (bits 4..7 of byte 2) are ignored. */
    struct hbitmap *loaded = new_bitmap(size, gran);
    hbitmap_set_all(loaded);
    const uint8_t data[3] = { 0x81, 0x02, 0xf8 };
    hbitmap_deserialize_part(loaded, data, 0, size);
    CU_ASSERT_EQUAL(hbitmap_count(loaded), 4 * gran);
    hbitmap_serialize_part(loaded, buf, 0, size);
    CU_ASSERT_EQUAL(buf[0], 0x81);
    CU_ASSERT_EQUAL(buf[1], 0x02);
    CU_ASSERT_EQUAL(buf[2], 0x08);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(loaded, gran, UINT64_MAX), (int64_t)(7 * gran));

    /* Deserializing one byte in the middle leaves the others alone. */
    const uint8_t middle = 0x10;
    hbitmap_deserialize_part(loaded, &middle, 8 * gran, 8 * gran);
    CU_ASSERT_FALSE(hbitmap_get(loaded, 9 * gran));
    CU_ASSERT_TRUE(hbitmap_get(loaded, 12 * gran));
    CU_ASSERT_EQUAL(hbitmap_count(loaded), 4 * gran);

    hbitmap_deserialize_zeroes(loaded, 0, size);
    CU_ASSERT_EQUAL(hbitmap_count(loaded), 0);
    hbitmap_deserialize_ones(loaded, 16 * gran, 8 * gran);
    CU_ASSERT_EQUAL(hbitmap_count(loaded), 4 * gran);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(loaded, 0, UINT64_MAX), (int64_t)(16 * gran));
    hbitmap_free(loaded);
    hbitmap_free(hb);
}

/* Round trip in parts of one 64-byte "cluster" of data each, as the qcow2
 * code will do, with a partial last part and a partial last granule. */
static void test_serialize_round_trip(void)
{
    const uint32_t gran = 1024;
    const uint64_t part = (uint64_t)gran * 8 * 64;
    const uint64_t size = 5 * part + 3 * 8 * gran + 1000;
    struct hbitmap *hb = new_bitmap(size, gran);
    struct hbitmap *loaded = new_bitmap(size, gran);
    uint8_t buf[64];

    rng_state = 42;
    for (int i = 0; i < 200; i++)
        hbitmap_set(hb, rng_below(size), rng_below(20 * gran) + 1);
    hbitmap_set(hb, size - 1, 1);
    hbitmap_set(loaded, 0, size / 2);   /* stale contents to be replaced */

    uint64_t total = 0;
    for (uint64_t off = 0; off < size; off += part) {
        uint64_t n = hbitmap_serialization_size(hb, off, part);
        CU_ASSERT_EQUAL(n, off + part <= size ? 64 : 4);
        memset(buf, 0, sizeof(buf));
        hbitmap_serialize_part(hb, buf, off, part);
        hbitmap_deserialize_part(loaded, buf, off, part);
        total += n;
    }
    CU_ASSERT_EQUAL(total, (size / gran + 1 + 7) / 8);
    CU_ASSERT_EQUAL(hbitmap_count(loaded), hbitmap_count(hb));

    uint64_t a_off = 0, a_len, b_off = 0, b_len;
    int mismatches = 0;
    for (;;) {
        bool a = hbitmap_next_dirty_extent(hb, a_off, UINT64_MAX, &a_off, &a_len);
        bool b = hbitmap_next_dirty_extent(loaded, b_off, UINT64_MAX, &b_off, &b_len);
        if (a != b || (a && (a_off != b_off || a_len != b_len)))
            mismatches++;
        if (!a || !b)
            break;
        a_off += a_len;
        b_off += b_len;
    }
    CU_ASSERT_EQUAL(mismatches, 0);
    hbitmap_free(loaded);
    hbitmap_free(hb);
}

static void test_truncate(void)
{
    const uint64_t gran = 4096;
    struct hbitmap *hb = new_bitmap(10 * gran, gran);
    struct err e = { 0 };

    hbitmap_set(hb, 5 * gran, 1);
    hbitmap_set(hb, 9 * gran, 1);
    /* Granule 9 becomes a partial last granule and keeps its bit. */
    CU_ASSERT_EQUAL(hbitmap_truncate(hb, 9 * gran + 10, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_size(hb), 9 * gran + 10);
    CU_ASSERT_EQUAL(hbitmap_count(hb), gran + 10);
    /* Shrink drops granule 9. */
    CU_ASSERT_EQUAL(hbitmap_truncate(hb, 6 * gran, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(hb), gran);
    /* Grow across several levels: the new area is clean. */
    CU_ASSERT_EQUAL(hbitmap_truncate(hb, 300000 * gran, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(hb), gran);
    CU_ASSERT_FALSE(hbitmap_get(hb, 9 * gran));
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 6 * gran, UINT64_MAX), -1);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), (int64_t)(5 * gran));
    hbitmap_set(hb, 299999 * gran, 1);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 6 * gran, UINT64_MAX), (int64_t)(299999 * gran));
    CU_ASSERT_EQUAL(hbitmap_count(hb), 2 * gran);
    /* Shrink back below one word. */
    CU_ASSERT_EQUAL(hbitmap_truncate(hb, 6 * gran - 1, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(hb), gran - 1);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), (int64_t)(5 * gran));
    CU_ASSERT_EQUAL(hbitmap_truncate(hb, 0, &e), 0);
    CU_ASSERT_EQUAL(hbitmap_count(hb), 0);
    CU_ASSERT_EQUAL(hbitmap_next_dirty(hb, 0, UINT64_MAX), -1);
    CU_ASSERT_EQUAL(hbitmap_truncate(hb, (uint64_t)INT64_MAX + 1, &e), -EINVAL);
    CU_ASSERT_EQUAL(hbitmap_size(hb), 0);
    hbitmap_free(hb);
}

UNIT_MAIN("bitmap",
          UNIT_TEST(test_new_rejects_bad_parameters),
          UNIT_TEST(test_partial_last_granule),
          UNIT_TEST(test_level_boundaries),
          UNIT_TEST(test_random_small_partial),
          UNIT_TEST(test_random_three_levels),
          UNIT_TEST(test_huge_sparse),
          UNIT_TEST(test_merge_granularities),
          UNIT_TEST(test_copy),
          UNIT_TEST(test_serialize_layout),
          UNIT_TEST(test_serialize_round_trip),
          UNIT_TEST(test_truncate))
