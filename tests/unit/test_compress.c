/* Unit tests for formats/qcow2/compress.c: round trips for zlib and zstd,
 * incompressible data, sector padding after the stream, corrupt input, and
 * clusters compressed by QEMU itself. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/compress.h"
#include "tests/unit/unit.h"

static const enum qcow2_compression_type types[] = {
    QCOW2_COMPRESSION_ZLIB, QCOW2_COMPRESSION_ZSTD,
};

/* Deterministic pseudo-random bytes (xorshift), incompressible. */
static void fill_random(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)(x >> 24);
    }
}

/* The text QEMU's clusters below were made from (qemu-img convert -c of a
 * 4 KiB cluster holding these lines). */
static void fill_text(uint8_t *buf, size_t len)
{
    char line[80];
    size_t pos = 0;
    for (int i = 0; pos < len; i++) {
        int n = snprintf(line, sizeof(line), "cluster line %05d: the quick brown fox %d\n", i,
                         (i * 7919) % 1000);
        size_t take = (size_t)n < len - pos ? (size_t)n : len - pos;
        memcpy(buf + pos, line, take);
        pos += take;
    }
}

static void test_round_trip(void)
{
    static const size_t sizes[] = { 512, 4096, 65536, 2u << 20 };
    for (size_t t = 0; t < 2; t++) {
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            size_t len = sizes[s];
            uint8_t *src = malloc(len), *comp = malloc(len), *back = malloc(len);
            CU_ASSERT_FATAL(src && comp && back);
            fill_text(src, len);
            memset(src, 0, len / 4);                /* some zeroes too */
            struct err e = { 0 };
            ssize_t n = qcow2_compress(types[t], src, len, comp, len, &e);
            CU_ASSERT(n > 0 && (size_t)n < len / 2);
            if (n > 0) {
                memset(back, 0xee, len);
                CU_ASSERT_EQUAL(qcow2_decompress(types[t], comp, (size_t)n, back, len, &e), 0);
                CU_ASSERT_EQUAL(memcmp(src, back, len), 0);
            }
            free(src);
            free(comp);
            free(back);
        }
    }
}

static void test_all_zero_cluster(void)
{
    for (size_t t = 0; t < 2; t++) {
        static uint8_t zero[65536], comp[65536], back[65536];
        struct err e = { 0 };
        ssize_t n = qcow2_compress(types[t], zero, sizeof(zero), comp, sizeof(comp), &e);
        CU_ASSERT(n > 0 && n < 512);
        memset(back, 1, sizeof(back));
        CU_ASSERT_EQUAL(qcow2_decompress(types[t], comp, (size_t)n, back, sizeof(back), &e), 0);
        CU_ASSERT_TRUE(buffer_is_zero(back, sizeof(back)));
    }
}

/* Random data does not get smaller: -ENOSPC, no message needed, and the
 * same when the room is just one byte short of what is needed. */
static void test_incompressible(void)
{
    for (size_t t = 0; t < 2; t++) {
        static uint8_t src[65536], comp[65536 + 1024];
        fill_random(src, sizeof(src), 7 + t);
        struct err e = { 0 };
        CU_ASSERT_EQUAL(qcow2_compress(types[t], src, sizeof(src), comp, sizeof(src), &e),
                        -ENOSPC);
        CU_ASSERT_EQUAL(qcow2_compress(types[t], src, 4096, comp, 4096, &e), -ENOSPC);
        CU_ASSERT_EQUAL(qcow2_compress(types[t], src, 100, comp, 0, &e), -ENOSPC);
        CU_ASSERT_EQUAL(e.code, 0);
        /* Half random, half text: compresses, but not below its size. */
        fill_text(src + sizeof(src) / 2, sizeof(src) / 2);
        ssize_t n = qcow2_compress(types[t], src, sizeof(src), comp, sizeof(comp), &e);
        CU_ASSERT_FATAL(n > 0);
        /* The room needed: zlib needs a byte to spare, zstd does not (as
         * with QEMU's compressors). */
        size_t need = (size_t)n + (types[t] == QCOW2_COMPRESSION_ZLIB);
        CU_ASSERT_EQUAL(qcow2_compress(types[t], src, sizeof(src), comp, need - 1, &e),
                        -ENOSPC);
        CU_ASSERT_EQUAL(qcow2_compress(types[t], src, sizeof(src), comp, need, &e), n);
    }
}

/* qcow2 stores compressed sizes rounded up to sectors: whatever follows
 * the stream (zeroes, other clusters' data) is ignored. */
static void test_trailing_bytes(void)
{
    for (size_t t = 0; t < 2; t++) {
        static uint8_t src[65536], comp[65536], back[65536];
        fill_text(src, sizeof(src));
        struct err e = { 0 };
        ssize_t n = qcow2_compress(types[t], src, sizeof(src), comp, sizeof(comp), &e);
        CU_ASSERT_FATAL(n > 0 && (size_t)n + 1024 <= sizeof(comp));
        fill_random(comp + n, 1024, 3);
        memset(back, 0, sizeof(back));
        CU_ASSERT_EQUAL(qcow2_decompress(types[t], comp, (size_t)n + 1024, back, sizeof(back),
                                         &e), 0);
        CU_ASSERT_EQUAL(memcmp(src, back, sizeof(src)), 0);
        memset(comp + n, 0, 1024);
        CU_ASSERT_EQUAL(qcow2_decompress(types[t], comp, (size_t)n + 511, back, sizeof(back),
                                         &e), 0);
        CU_ASSERT_EQUAL(memcmp(src, back, sizeof(src)), 0);
    }
}

static void expect_corrupt(enum qcow2_compression_type type, const void *src, size_t src_len,
                           size_t dst_len)
{
    uint8_t *dst = malloc(dst_len);
    CU_ASSERT_FATAL(dst != NULL);
    struct err e = { 0 };
    CU_ASSERT_EQUAL(qcow2_decompress(type, src, src_len, dst, dst_len, &e), -EIO);
    CU_ASSERT_STRING_EQUAL(e.msg, "corrupt compressed cluster");
    free(dst);
}

static void test_corrupt(void)
{
    for (size_t t = 0; t < 2; t++) {
        static uint8_t src[65536], comp[65536], junk[4096];
        fill_text(src, sizeof(src));
        struct err e = { 0 };
        ssize_t n = qcow2_compress(types[t], src, sizeof(src), comp, sizeof(comp), &e);
        CU_ASSERT_FATAL(n > 16);
        /* Truncated stream: not enough output. */
        expect_corrupt(types[t], comp, (size_t)n / 2, sizeof(src));
        expect_corrupt(types[t], comp, 0, sizeof(src));
        /* A complete stream for a cluster smaller than asked for. */
        expect_corrupt(types[t], comp, (size_t)n, sizeof(src) + 512);
        /* Garbage, and every single damaged byte of a valid stream: never a
         * crash; a result other than -EIO must then be a full cluster. */
        for (uint64_t seed = 1; seed <= 64; seed++) {
            fill_random(junk, sizeof(junk), seed);
            expect_corrupt(types[t], junk, sizeof(junk), sizeof(src));
        }
        static uint8_t bad[65536], back[65536];
        for (ssize_t i = 0; i < n; i += 7) {
            memcpy(bad, comp, (size_t)n);
            bad[i] ^= 0x5a;
            int ret = qcow2_decompress(types[t], bad, (size_t)n, back, sizeof(back), &e);
            CU_ASSERT(ret == 0 || ret == -EIO);
        }
    }
    /* The zstd magic number followed by nonsense. */
    static const uint8_t bad_frame[] = { 0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    expect_corrupt(QCOW2_COMPRESSION_ZSTD, bad_frame, sizeof(bad_frame), 4096);
}

/* zstd: a frame whose header asks for a larger window than a cluster
 * could need is refused instead of making the decoder allocate it; the same
 * frame with a 1 MiB window decodes. */
static void test_zstd_window_limit(void)
{
    static uint8_t frame[4 + 2 + 3 + 4096], back[4096];
    /* Magic; frame header descriptor 0 (a window descriptor follows, no
     * content size); the window descriptor; one last raw block of 4096
     * bytes (block header (4096 << 3) | 1, little endian), then its data. */
    memcpy(frame, "\x28\xb5\x2f\xfd\x00\x00\x01\x80\x00", 9);
    fill_text(frame + 9, 4096);
    struct err e = { 0 };
    frame[5] = (20 - 10) << 3;      /* window log 20: 1 MiB */
    CU_ASSERT_EQUAL(qcow2_decompress(QCOW2_COMPRESSION_ZSTD, frame, sizeof(frame), back,
                                     sizeof(back), &e), 0);
    CU_ASSERT_EQUAL(memcmp(back, frame + 9, sizeof(back)), 0);
    frame[5] = (26 - 10) << 3;      /* window log 26: 64 MiB */
    expect_corrupt(QCOW2_COMPRESSION_ZSTD, frame, sizeof(frame), sizeof(back));
}

static void test_unknown_type(void)
{
    uint8_t buf[64] = { 0 }, out[64];
    struct err e = { 0 };
    CU_ASSERT_EQUAL(qcow2_compress((enum qcow2_compression_type)2, buf, sizeof(buf), out,
                                   sizeof(out), &e), -ENOTSUP);
    CU_ASSERT_STRING_EQUAL(e.msg, "unknown compression type 2");
    CU_ASSERT_EQUAL(qcow2_decompress((enum qcow2_compression_type)2, buf, sizeof(buf), out,
                                     sizeof(out), &e), -ENOTSUP);
}

/* Clusters written by QEMU 7.2 ("qemu-img convert -c -O qcow2 -o
 * cluster_size=4096,compression_type=..."), as stored in the image: the
 * stream and the zero padding up to the end of its sector. */
static const uint8_t qemu_zlib_cluster[512] = {
#include "tests/unit/data/qemu_zlib_4k.inc"
};
static const uint8_t qemu_zstd_cluster[512] = {
#include "tests/unit/data/qemu_zstd_4k.inc"
};

static void test_qemu_clusters(void)
{
    uint8_t want[4096], got[4096];
    fill_text(want, sizeof(want));
    struct err e = { 0 };
    memset(got, 0, sizeof(got));
    CU_ASSERT_EQUAL(qcow2_decompress(QCOW2_COMPRESSION_ZLIB, qemu_zlib_cluster,
                                     sizeof(qemu_zlib_cluster), got, sizeof(got), &e), 0);
    CU_ASSERT_EQUAL(memcmp(want, got, sizeof(want)), 0);
    memset(got, 0, sizeof(got));
    CU_ASSERT_EQUAL(qcow2_decompress(QCOW2_COMPRESSION_ZSTD, qemu_zstd_cluster,
                                     sizeof(qemu_zstd_cluster), got, sizeof(got), &e), 0);
    CU_ASSERT_EQUAL(memcmp(want, got, sizeof(want)), 0);
    /* The same streams as QEMU's qcow2 expects: a raw deflate stream (no
     * zlib header) and a zstd frame (magic 0xFD2FB528, little endian). */
    uint8_t comp[4096];
    ssize_t n = qcow2_compress(QCOW2_COMPRESSION_ZLIB, want, sizeof(want), comp,
                               sizeof(comp), &e);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_NOT_EQUAL((comp[0] & 0x0f), 8);     /* not a zlib CMF byte */
    n = qcow2_compress(QCOW2_COMPRESSION_ZSTD, want, sizeof(want), comp, sizeof(comp), &e);
    CU_ASSERT_FATAL(n > 4);
    CU_ASSERT_EQUAL(memcmp(comp, "\x28\xb5\x2f\xfd", 4), 0);
}

/* Several threads compressing and decompressing at once agree with one
 * thread doing it (no shared state). */
struct worker_arg {
    enum qcow2_compression_type type;
    uint64_t seed;
    int failures;
};

static void *compress_worker(void *opaque)
{
    struct worker_arg *a = opaque;
    size_t len = 65536;
    uint8_t *src = malloc(len), *comp = malloc(len), *back = malloc(len);
    if (!src || !comp || !back) {
        a->failures++;
        goto out;
    }
    for (int round = 0; round < 20; round++) {
        fill_text(src, len);
        fill_random(src + (size_t)round * 1024, 1024, a->seed + (uint64_t)round);
        struct err e = { 0 };
        ssize_t n = qcow2_compress(a->type, src, len, comp, len, &e);
        if (n <= 0 || qcow2_decompress(a->type, comp, (size_t)n, back, len, &e) != 0 ||
            memcmp(src, back, len) != 0)
            a->failures++;
    }
out:
    free(src);
    free(comp);
    free(back);
    return NULL;
}

static void test_threads(void)
{
    pthread_t th[8];
    struct worker_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (struct worker_arg){ .type = types[i % 2], .seed = (uint64_t)i * 100 };
        CU_ASSERT_FATAL(pthread_create(&th[i], NULL, compress_worker, &args[i]) == 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(args[i].failures, 0);
    }
}

UNIT_MAIN("compress",
          UNIT_TEST(test_round_trip),
          UNIT_TEST(test_all_zero_cluster),
          UNIT_TEST(test_incompressible),
          UNIT_TEST(test_trailing_bytes),
          UNIT_TEST(test_corrupt),
          UNIT_TEST(test_zstd_window_limit),
          UNIT_TEST(test_unknown_type),
          UNIT_TEST(test_qemu_clusters),
          UNIT_TEST(test_threads))
