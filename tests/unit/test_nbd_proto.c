/* Unit tests for formats/nbd/proto.c: every encoder against its decoder,
 * and the decoders' refusals of malformed input. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/nbd/proto.h"
#include "tests/unit/unit.h"

static void test_greeting(void)
{
    uint8_t g[NBD_GREETING_SIZE];
    struct err e = { 0 };
    uint16_t flags = 0;
    nbd_encode_greeting(g, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    CU_ASSERT_EQUAL(memcmp(g, "NBDMAGICIHAVEOPT", 16), 0);
    CU_ASSERT_EQUAL(nbd_decode_greeting(g, &flags, "srv", &e), 0);
    CU_ASSERT_EQUAL(flags, 3);
    nbd_encode_greeting(g, 0);
    CU_ASSERT_EQUAL(nbd_decode_greeting(g, &flags, "srv", &e), -EPROTO);
    CU_ASSERT_STRING_EQUAL(e.msg, "srv: the server does not support fixed newstyle negotiation");
    g[0] = 'X';
    CU_ASSERT_EQUAL(nbd_decode_greeting(g, &flags, "srv", &e), -EPROTO);
}

static void test_client_flags_and_export_name_reply(void)
{
    uint8_t f[4], r[NBD_EXPORT_NAME_REPLY_SIZE];
    uint32_t flags = 0;
    struct err e = { 0 };
    nbd_encode_client_flags(f, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    CU_ASSERT_EQUAL(nbd_decode_client_flags(f, &flags, "c", &e), 0);
    CU_ASSERT_EQUAL(flags, 3);
    nbd_encode_client_flags(f, 0x81);
    CU_ASSERT_EQUAL(nbd_decode_client_flags(f, &flags, "c", &e), -EPROTO);
    CU_ASSERT_STRING_EQUAL(e.msg, "c: unknown client flags 0x80");
    memset(r, 0xff, sizeof(r));
    nbd_encode_export_name_reply(r, 0x123456789, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
    CU_ASSERT_EQUAL(be64_read(r), 0x123456789);
    CU_ASSERT_EQUAL(be16_read(r + 8), 3);
    CU_ASSERT_TRUE(buffer_is_zero(r + 10, 124));
}

static void test_option_reply(void)
{
    uint8_t h[NBD_OPTION_REPLY_SIZE];
    struct nbd_option_reply r;
    struct err e = { 0 };
    nbd_encode_option_reply(h, NBD_OPT_GO, NBD_REP_INFO, 12);
    CU_ASSERT_EQUAL(nbd_decode_option_reply(h, NBD_OPT_GO, &r, "s", &e), 0);
    CU_ASSERT_EQUAL(r.type, NBD_REP_INFO);
    CU_ASSERT_EQUAL(r.length, 12);
    CU_ASSERT_EQUAL(nbd_decode_option_reply(h, NBD_OPT_LIST, &r, "s", &e), -EPROTO);
    nbd_encode_option_reply(h, NBD_OPT_GO, NBD_REP_INFO, NBD_MAX_OPTION_LEN + 1);
    CU_ASSERT_EQUAL(nbd_decode_option_reply(h, NBD_OPT_GO, &r, "s", &e), -EPROTO);
}

static void test_go_and_info(void)
{
    struct nbd_buf b = { 0 };
    uint16_t want[] = { NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME };
    nbd_encode_go(&b, "disk0", want, 2);
    struct nbd_go_request g;
    struct err e = { 0 };
    CU_ASSERT_EQUAL(nbd_decode_go(b.data, b.len, &g, "c", &e), 0);
    CU_ASSERT_STRING_EQUAL(g.name, "disk0");
    CU_ASSERT_EQUAL(g.ninfo, 2);
    CU_ASSERT_EQUAL(g.info[1], NBD_INFO_NAME);
    nbd_go_request_free(&g);
    CU_ASSERT_EQUAL(nbd_decode_go(b.data, b.len - 1, &g, "c", &e), -EINVAL);
    nbd_buf_free(&b);

    struct nbd_export_info x = { 0 };
    nbd_encode_info_export(&b, 1 << 20, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
    CU_ASSERT_EQUAL(nbd_decode_info(b.data, b.len, &x, "s", &e), 0);
    CU_ASSERT_EQUAL(x.size, 1 << 20);
    CU_ASSERT(x.have_export);
    nbd_buf_free(&b);
    nbd_encode_info_block_size(&b, 512, 4096, 32 << 20);
    CU_ASSERT_EQUAL(nbd_decode_info(b.data, b.len, &x, "s", &e), 0);
    CU_ASSERT_EQUAL(x.max_block, 32 << 20);
    nbd_buf_free(&b);
    nbd_encode_info_block_size(&b, 3, 4096, 32 << 20);
    CU_ASSERT_EQUAL(nbd_decode_info(b.data, b.len, &x, "s", &e), -EPROTO);
    CU_ASSERT_STRING_EQUAL(e.msg, "s: invalid block size constraints (minimum 3, preferred "
                           "4096, maximum 33554432)");
    nbd_buf_free(&b);
    nbd_encode_info_export(&b, 1, 0);   /* no HAS_FLAGS */
    CU_ASSERT_EQUAL(nbd_decode_info(b.data, b.len, &x, "s", &e), -EPROTO);
    nbd_buf_free(&b);
    nbd_encode_info_string(&b, NBD_INFO_DESCRIPTION, "a disk");
    CU_ASSERT_EQUAL(nbd_decode_info(b.data, b.len, &x, "s", &e), 0);
    CU_ASSERT_STRING_EQUAL(x.description, "a disk");
    nbd_buf_free(&b);
    nbd_export_info_free(&x);
}

static void test_meta(void)
{
    struct nbd_buf b = { 0 };
    const char *q[] = { "base:allocation", "qemu:dirty-bitmap:b0" };
    nbd_encode_meta_request(&b, "", q, 2);
    struct nbd_meta_request m;
    struct err e = { 0 };
    CU_ASSERT_EQUAL(nbd_decode_meta_request(b.data, b.len, &m, "c", &e), 0);
    CU_ASSERT_EQUAL(m.nqueries, 2);
    CU_ASSERT_STRING_EQUAL(m.queries[1], "qemu:dirty-bitmap:b0");
    nbd_meta_request_free(&m);
    /* A count larger than the bytes can hold is refused before allocating. */
    be32_write(b.data + 4, 0x7fffffff);
    CU_ASSERT_EQUAL(nbd_decode_meta_request(b.data, b.len, &m, "c", &e), -EINVAL);
    nbd_buf_free(&b);

    nbd_encode_rep_meta_context(&b, 7, "base:allocation");
    uint32_t id;
    char *name;
    CU_ASSERT_EQUAL(nbd_decode_rep_meta_context(b.data, b.len, &id, &name, "s", &e), 0);
    CU_ASSERT_EQUAL(id, 7);
    CU_ASSERT_STRING_EQUAL(name, "base:allocation");
    free(name);
    CU_ASSERT_EQUAL(nbd_decode_rep_meta_context(b.data, 4, &id, &name, "s", &e), -EPROTO);
    nbd_buf_free(&b);
}

static void test_reply_headers(void)
{
    uint8_t h[NBD_CHUNK_HEADER_SIZE];
    struct nbd_reply r;
    struct err e = { 0 };
    nbd_encode_simple_reply(h, NBD_ENOSPC, 42);
    CU_ASSERT_EQUAL(nbd_reply_header_size(h, "s", &e), NBD_SIMPLE_REPLY_SIZE);
    CU_ASSERT_EQUAL(nbd_decode_reply_header(h, NBD_SIMPLE_REPLY_SIZE, 1 << 20, &r, "s", &e), 0);
    CU_ASSERT_EQUAL(r.error, NBD_ENOSPC);
    CU_ASSERT_EQUAL(r.cookie, 42);
    CU_ASSERT(!r.structured);
    nbd_encode_chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 9, 8 + 512);
    CU_ASSERT_EQUAL(nbd_decode_reply_header(h, NBD_CHUNK_HEADER_SIZE, 1 << 20, &r, "s", &e), 0);
    CU_ASSERT(r.structured);
    CU_ASSERT_EQUAL(r.length, 520);
    nbd_encode_chunk_header(h, 0x8001, NBD_REPLY_TYPE_NONE, 9, 0);
    CU_ASSERT_EQUAL(nbd_decode_reply_header(h, NBD_CHUNK_HEADER_SIZE, 1 << 20, &r, "s", &e),
                    -EPROTO);
    nbd_encode_chunk_header(h, 0, NBD_REPLY_TYPE_OFFSET_DATA, 9, 0xffffffff);
    CU_ASSERT_EQUAL(nbd_decode_reply_header(h, NBD_CHUNK_HEADER_SIZE, 1 << 20, &r, "s", &e),
                    -EPROTO);
    be32_write(h, 0xdeadbeef);
    CU_ASSERT_EQUAL(nbd_reply_header_size(h, "s", &e), 0);
    CU_ASSERT_STRING_EQUAL(e.msg, "s: bad reply magic 0xdeadbeef");
}

static void test_chunks(void)
{
    struct nbd_request rd = { .type = NBD_CMD_READ, .offset = 4096, .length = 8192 };
    struct err e = { 0 };
    uint8_t off[12];
    uint64_t o;
    uint32_t n;
    be64_write(off, 4096 + 512);
    CU_ASSERT_EQUAL(nbd_decode_offset_data(off, 8 + 1024, &rd, &o, &n, "s", &e), 0);
    CU_ASSERT_EQUAL(o, 512);
    CU_ASSERT_EQUAL(n, 1024);
    CU_ASSERT_EQUAL(nbd_decode_offset_data(off, 8 + 8192, &rd, &o, &n, "s", &e), -EPROTO);
    be64_write(off, 0);
    CU_ASSERT_EQUAL(nbd_decode_offset_data(off, 8 + 1, &rd, &o, &n, "s", &e), -EPROTO);
    nbd_encode_offset_hole(off, 4096, 8192);
    CU_ASSERT_EQUAL(nbd_decode_offset_hole(off, 12, &rd, &o, &n, "s", &e), 0);
    CU_ASSERT_EQUAL(n, 8192);
    nbd_encode_offset_hole(off, 4096, 8193);
    CU_ASSERT_EQUAL(nbd_decode_offset_hole(off, 12, &rd, &o, &n, "s", &e), -EPROTO);

    struct nbd_buf b = { 0 };
    struct nbd_chunk_error ce;
    nbd_encode_chunk_error(&b, NBD_EIO, "bad\x1b[31m sector", true, 5000);
    CU_ASSERT_EQUAL(nbd_decode_chunk_error(b.data, (uint32_t)b.len, NBD_REPLY_TYPE_ERROR_OFFSET,
                                           &rd, &ce, "s", &e), 0);
    CU_ASSERT_EQUAL(ce.error, NBD_EIO);
    CU_ASSERT_EQUAL(ce.offset, 5000);
    CU_ASSERT_STRING_EQUAL(ce.message, "bad?[31m sector");
    CU_ASSERT_EQUAL(nbd_decode_chunk_error(b.data, (uint32_t)b.len, NBD_REPLY_TYPE_ERROR,
                                           &rd, &ce, "s", &e), -EPROTO);
    nbd_buf_free(&b);
}

static void test_block_status(void)
{
    struct nbd_request bs = { .type = NBD_CMD_BLOCK_STATUS, .offset = 0, .length = 1 << 20 };
    struct nbd_extent in[3] = { { 4096, 0 }, { 8192, NBD_STATE_HOLE | NBD_STATE_ZERO },
                                { 4096, 0 } }, out[2];
    struct nbd_buf b = { 0 };
    struct err e = { 0 };
    uint32_t id, count;
    nbd_encode_block_status(&b, 3, in, 3);
    CU_ASSERT_EQUAL(nbd_decode_block_status(b.data, (uint32_t)b.len, &bs, 1 << 20, &id, out, 2,
                                            &count, "s", &e), 0);
    CU_ASSERT_EQUAL(id, 3);
    CU_ASSERT_EQUAL(count, 2);
    CU_ASSERT_EQUAL(out[1].flags, 3);
    /* Past the end of the export. */
    CU_ASSERT_EQUAL(nbd_decode_block_status(b.data, (uint32_t)b.len, &bs, 12288, &id, out, 2,
                                            &count, "s", &e), -EPROTO);
    bs.flags = NBD_CMD_FLAG_REQ_ONE;
    CU_ASSERT_EQUAL(nbd_decode_block_status(b.data, (uint32_t)b.len, &bs, 1 << 20, &id, out, 2,
                                            &count, "s", &e), -EPROTO);
    bs.flags = 0;
    CU_ASSERT_EQUAL(nbd_decode_block_status(b.data, (uint32_t)b.len - 1, &bs, 1 << 20, &id, out,
                                            2, &count, "s", &e), -EPROTO);
    nbd_buf_free(&b);
    struct nbd_extent empty = { 0, 0 };
    nbd_encode_block_status(&b, 3, &empty, 1);
    CU_ASSERT_EQUAL(nbd_decode_block_status(b.data, (uint32_t)b.len, &bs, 1 << 20, &id, out, 2,
                                            &count, "s", &e), -EPROTO);
    nbd_buf_free(&b);
}

static void test_request(void)
{
    struct nbd_request r = { .flags = NBD_CMD_FLAG_FUA, .type = NBD_CMD_WRITE, .cookie = 77,
                             .offset = 1ull << 40, .length = 65536 }, d;
    uint8_t w[NBD_REQUEST_SIZE];
    struct err e = { 0 };
    nbd_encode_request(w, &r);
    CU_ASSERT_EQUAL(nbd_decode_request(w, &d, "c", &e), 0);
    CU_ASSERT(d.flags == r.flags && d.type == r.type && d.cookie == r.cookie &&
              d.offset == r.offset && d.length == r.length);
    w[0] ^= 1;
    CU_ASSERT_EQUAL(nbd_decode_request(w, &d, "c", &e), -EPROTO);
    CU_ASSERT_EQUAL(nbd_errno_from_wire(12345), EIO);
    CU_ASSERT_EQUAL(nbd_errno_to_wire(ENOSPC), NBD_ENOSPC);
}

UNIT_MAIN("nbd_proto",
          UNIT_TEST(test_greeting),
          UNIT_TEST(test_client_flags_and_export_name_reply),
          UNIT_TEST(test_option_reply),
          UNIT_TEST(test_go_and_info),
          UNIT_TEST(test_meta),
          UNIT_TEST(test_reply_headers),
          UNIT_TEST(test_chunks),
          UNIT_TEST(test_block_status),
          UNIT_TEST(test_request))
