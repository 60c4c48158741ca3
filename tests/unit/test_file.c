/* Unit tests for formats/file.c: read-only mappings (hostfile_map_read). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/file.h"
#include "tests/unit/unit.h"

/* A file of `size` bytes, byte i = i * 7 + 3 (mod 256), not a multiple of
 * the page size, so the last page is partial. */
#define FILE_SIZE (3 * 4096 + 1001)

static char path[256];

static uint8_t pattern(uint64_t i)
{
    return (uint8_t)(i * 7 + 3);
}

static void make_file(void)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(path, sizeof(path), "%s/imgtool-file.XXXXXX", base);
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t buf[FILE_SIZE];
    for (uint64_t i = 0; i < FILE_SIZE; i++)
        buf[i] = pattern(i);
    CU_ASSERT_FATAL(write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf));
    close(fd);
}

static struct hostfile *open_file(unsigned flags)
{
    struct hostfile *f = NULL;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(hostfile_open(path, flags, &f, &e), 0);
    return f;
}

/* Map [off, off + len) and check every byte against the pattern. */
static void check_mapped(struct hostfile *f, uint64_t off, size_t len)
{
    struct transport_view v;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(hostfile_map_read(f, off, len, &v, &e), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v.base);
    size_t bad = 0;
    for (size_t i = 0; i < len; i++)
        bad += v.data[i] != pattern(off + i);
    CU_ASSERT_EQUAL(bad, 0);
    hostfile_unmap(&v);
    CU_ASSERT_PTR_NULL(v.base);
}

/* Offsets inside a page, runs across pages, the partial last page up to
 * the last byte of the file. */
static void test_map_read_offsets(void)
{
    make_file();
    struct hostfile *f = open_file(0);
    check_mapped(f, 0, FILE_SIZE);
    check_mapped(f, 1, 4096);
    check_mapped(f, 4095, 2);
    check_mapped(f, 8192 + 513, FILE_SIZE - 8192 - 513);
    check_mapped(f, FILE_SIZE - 1, 1);
    hostfile_close(f);
    unlink(path);
}

/* What cannot be mapped is refused with -ENOTSUP and no mapping: past the
 * end of the file, empty, a file open for writing, with O_DIRECT or
 * force-shared (others may truncate it). */
static void test_map_read_refused(void)
{
    make_file();
    struct transport_view v;
    struct err e = { 0 };
    struct hostfile *f = open_file(0);
    CU_ASSERT_EQUAL(hostfile_map_read(f, FILE_SIZE - 10, 11, &v, &e), -ENOTSUP);
    CU_ASSERT_PTR_NULL(v.base);
    CU_ASSERT_EQUAL(hostfile_map_read(f, FILE_SIZE + 4096, 1, &v, &e), -ENOTSUP);
    CU_ASSERT_EQUAL(hostfile_map_read(f, UINT64_MAX - 1, 4096, &v, &e), -ENOTSUP);
    CU_ASSERT_EQUAL(hostfile_map_read(f, 0, 0, &v, &e), -ENOTSUP);
    hostfile_unmap(&v);     /* an unmapped view: nothing to do */
    hostfile_close(f);
    unsigned refused[] = { HOSTFILE_RDWR, HOSTFILE_DIRECT, HOSTFILE_FORCE_SHARE,
                           HOSTFILE_NO_LOCK };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        struct hostfile *g = NULL;
        if (hostfile_open(path, refused[i], &g, &e) < 0)
            continue;       /* O_DIRECT where the file system has none */
        CU_ASSERT_EQUAL(hostfile_map_read(g, 0, 4096, &v, &e), -ENOTSUP);
        CU_ASSERT_PTR_NULL(v.base);
        hostfile_close(g);
    }
    unlink(path);
}

UNIT_MAIN("file", UNIT_TEST(test_map_read_offsets), UNIT_TEST(test_map_read_refused))
