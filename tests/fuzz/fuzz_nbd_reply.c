/* Fuzz target for the NBD reply parser (formats/nbd/proto.c): the input is
 * what a server sends during transmission, parsed as the client does for
 * a fixed set of requests in flight (a read, a block status query, a
 * write): reply headers, then each chunk's payload through its decoder
 * with the request it answers.  Built as fuzz_open.c is (make fuzz, and a
 * replay program that make check runs over tests/corpus-nbd). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/nbd/proto.h"

#define EXPORT_SIZE (1ull << 30)

static const struct nbd_request requests[] = {
    { .type = NBD_CMD_READ, .cookie = 1, .offset = 4096, .length = 65536 },
    { .type = NBD_CMD_BLOCK_STATUS, .cookie = 2, .offset = 0, .length = 1 << 20 },
    { .type = NBD_CMD_WRITE, .cookie = 3, .offset = 0, .length = 512 },
    { .type = NBD_CMD_BLOCK_STATUS, .flags = NBD_CMD_FLAG_REQ_ONE, .cookie = 4,
      .offset = EXPORT_SIZE - 512, .length = 512 },
};

static const struct nbd_request *find_request(uint64_t cookie)
{
    for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++)
        if (requests[i].cookie == cookie)
            return &requests[i];
    return NULL;
}

/* One chunk payload through the decoder its type calls for. */
static void parse_payload(const struct nbd_reply *r, const struct nbd_request *req,
                          const uint8_t *p, struct err *e)
{
    uint64_t off;
    uint32_t n, id, count;
    struct nbd_extent ext[64];
    struct nbd_chunk_error ce;
    switch (r->type) {
    case NBD_REPLY_TYPE_OFFSET_DATA:
        if (r->length >= 8)
            nbd_decode_offset_data(p, r->length, req, &off, &n, "fuzz", e);
        break;
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        nbd_decode_offset_hole(p, r->length, req, &off, &n, "fuzz", e);
        break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
        nbd_decode_block_status(p, r->length, req, EXPORT_SIZE, &id, ext, 64, &count, "fuzz", e);
        break;
    default:
        if (NBD_REPLY_TYPE_IS_ERROR(r->type))
            nbd_decode_chunk_error(p, r->length, r->type, req, &ce, "fuzz", e);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct err e = { 0 };
    size_t pos = 0;
    while (pos + 4 <= size) {
        size_t hs = nbd_reply_header_size(data + pos, "fuzz", &e);
        if (hs == 0 || pos + hs > size)
            break;
        struct nbd_reply r;
        if (nbd_decode_reply_header(data + pos, hs, 1 << 20, &r, "fuzz", &e) < 0)
            break;
        pos += hs;
        const struct nbd_request *req = find_request(r.cookie);
        if (!req)
            break;
        size_t plen = r.structured ? r.length
                    : (req->type == NBD_CMD_READ && !r.error ? req->length : 0);
        if (plen > size - pos)
            break;
        if (r.structured)
            parse_payload(&r, req, data + pos, &e);
        pos += plen;
    }
    return 0;
}

#ifdef FUZZ_REPLAY
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 2;
        }
        static uint8_t buf[4 << 20];
        size_t len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, len);
    }
    return 0;
}
#endif
