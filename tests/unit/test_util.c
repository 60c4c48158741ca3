/* Unit tests for formats/util.c and formats/options.c. */
#include <errno.h>
#include <string.h>

#include "formats/options.h"
#include "formats/util.h"
#include "tests/unit/unit.h"

static void test_parse_size(void)
{
    uint64_t v = 0;
    CU_ASSERT_EQUAL(parse_size("512", &v), 0);
    CU_ASSERT_EQUAL(v, 512);
    CU_ASSERT_EQUAL(parse_size("64k", &v), 0);
    CU_ASSERT_EQUAL(v, 65536);
    CU_ASSERT_EQUAL(parse_size("10G", &v), 0);
    CU_ASSERT_EQUAL(v, 10ULL << 30);
    CU_ASSERT_EQUAL(parse_size("2MiB", &v), 0);
    CU_ASSERT_EQUAL(v, 2ULL << 20);
    CU_ASSERT_EQUAL(parse_size("0x1000", &v), 0);
    CU_ASSERT_EQUAL(v, 4096);
    CU_ASSERT_EQUAL(parse_size("010", &v), 0);     /* decimal, as qemu-img */
    CU_ASSERT_EQUAL(v, 10);
    CU_ASSERT_EQUAL(parse_size("0x1fk", &v), 0);
    CU_ASSERT_EQUAL(v, 31 << 10);
    CU_ASSERT_EQUAL(parse_size("15E", &v), 0);
    CU_ASSERT_EQUAL(v, 15ULL << 60);
    CU_ASSERT_EQUAL(parse_size("16E", &v), -ERANGE);
    CU_ASSERT_EQUAL(parse_size("1Q", &v), -EINVAL);
    CU_ASSERT_EQUAL(parse_size("", &v), -EINVAL);
    CU_ASSERT_EQUAL(parse_size("-1", &v), -EINVAL);
    CU_ASSERT_EQUAL(parse_size("k", &v), -EINVAL);
    CU_ASSERT_EQUAL(parse_size("99999999999999999999", &v), -ERANGE);
}

static void test_format_size_human(void)
{
    char buf[32];
    format_size_human(0, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "0 B");
    format_size_human(1023, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "1023 B");
    format_size_human(10 << 20, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "10 MiB");
    format_size_human(3ULL << 29, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "1.5 GiB");
}

static void test_endian(void)
{
    uint8_t b[8];
    be64_write(b, 0x0102030405060708ULL);
    CU_ASSERT_EQUAL(b[0], 1);
    CU_ASSERT_EQUAL(b[7], 8);
    CU_ASSERT_EQUAL(be64_read(b), 0x0102030405060708ULL);
    CU_ASSERT_EQUAL(be32_read(b + 4), 0x05060708u);
    be16_write(b, 0xbeef);
    CU_ASSERT_EQUAL(be16_read(b), 0xbeef);
}

static void test_buffer_is_zero(void)
{
    static uint8_t buf[4096 + 3];
    memset(buf, 0, sizeof(buf));
    CU_ASSERT_TRUE(buffer_is_zero(buf, sizeof(buf)));
    CU_ASSERT_TRUE(buffer_is_zero(buf + 1, 100));
    for (size_t i = 0; i < sizeof(buf); i += 511) {
        buf[i] = 1;
        CU_ASSERT_FALSE(buffer_is_zero(buf, sizeof(buf)));
        buf[i] = 0;
    }
    buf[sizeof(buf) - 1] = 1;
    CU_ASSERT_FALSE(buffer_is_zero(buf, sizeof(buf)));
    CU_ASSERT_TRUE(buffer_is_zero(buf, sizeof(buf) - 1));
}

static void test_err(void)
{
    struct err e = { 0 };
    CU_ASSERT_EQUAL(err_set(&e, EINVAL, "%s: bad field %d", "x.img", 3), -EINVAL);
    CU_ASSERT_STRING_EQUAL(e.msg, "x.img: bad field 3");
    CU_ASSERT_EQUAL(e.code, EINVAL);
    err_prefix(&e, "%s: ", "top.qcow2");
    CU_ASSERT_STRING_EQUAL(e.msg, "top.qcow2: x.img: bad field 3");
    CU_ASSERT_EQUAL(err_errno(&e, ENOENT, "a"), -ENOENT);
    CU_ASSERT_STRING_EQUAL(e.msg, "a: No such file or directory");
    CU_ASSERT_EQUAL(err_set(NULL, -EIO, "ignored"), -EIO);
    err_set(&e, EFBIG, "x.img.tmp-1: write error at x.img.tmp-1+%d: File too large", 5);
    err_replace(&e, "x.img.tmp-1", "x.img");
    CU_ASSERT_STRING_EQUAL(e.msg, "x.img: write error at x.img+5: File too large");
    CU_ASSERT_EQUAL(e.code, EFBIG);
    err_replace(&e, "absent", "y");
    err_replace(&e, "", "y");
    CU_ASSERT_STRING_EQUAL(e.msg, "x.img: write error at x.img+5: File too large");
    /* A longer name that does not fit is cut at the end of the message. */
    char longer[sizeof(e.msg)];
    memset(longer, 'n', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    err_replace(&e, "x.img", longer);
    CU_ASSERT_EQUAL(strlen(e.msg), sizeof(e.msg) - 1);
    CU_ASSERT_EQUAL(strspn(e.msg, "n"), sizeof(e.msg) - 1);
}

static void test_kvopts(void)
{
    struct kvopts o = { 0 };
    struct err e = { 0 };
    bool b;
    uint64_t sz;
    CU_ASSERT_EQUAL(kvopts_parse(&o, "cluster_size=64k,lazy_refcounts=on,backing_file=a,,b", &e), 0);
    CU_ASSERT_EQUAL(kvopts_parse(&o, "cluster_size=4k", &e), 0);
    CU_ASSERT_EQUAL(o.count, 3);
    CU_ASSERT_EQUAL(kvopts_get_size(&o, "cluster_size", 0, &sz, &e), 0);
    CU_ASSERT_EQUAL(sz, 4096);
    CU_ASSERT_EQUAL(kvopts_get_bool(&o, "lazy_refcounts", false, &b, &e), 0);
    CU_ASSERT_TRUE(b);
    CU_ASSERT_EQUAL(kvopts_check_unused(&o, "qcow2", &e), -EINVAL);
    CU_ASSERT_STRING_EQUAL(e.msg, "format 'qcow2' does not support option 'backing_file'");
    CU_ASSERT_STRING_EQUAL(kvopts_get(&o, "backing_file"), "a,b");
    CU_ASSERT_EQUAL(kvopts_check_unused(&o, "qcow2", &e), 0);
    CU_ASSERT_EQUAL(kvopts_get_bool(&o, "missing", true, &b, &e), 0);
    CU_ASSERT_TRUE(b);
    CU_ASSERT_EQUAL(kvopts_parse(&o, "novalue", &e), -EINVAL);
    CU_ASSERT_EQUAL(kvopts_parse(&o, "x=maybe", &e), 0);
    CU_ASSERT_EQUAL(kvopts_get_bool(&o, "x", false, &b, &e), -EINVAL);
    kvopts_free(&o);
    CU_ASSERT_EQUAL(o.count, 0);
}

UNIT_MAIN("util",
          UNIT_TEST(test_parse_size),
          UNIT_TEST(test_format_size_human),
          UNIT_TEST(test_endian),
          UNIT_TEST(test_buffer_is_zero),
          UNIT_TEST(test_err),
          UNIT_TEST(test_kvopts))
