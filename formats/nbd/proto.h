/* The NBD protocol codec, shared by the client (formats/nbd/client.c) and
 * the server (cmd/serve.c via formats/nbd/): wire constants, the fixed-size
 * headers, and encode/decode of every message both sides exchange.
 *
 * No I/O happens here: encoders fill caller buffers (or a struct nbd_buf
 * that grows), decoders take bytes already read and validate every field,
 * returning a negative errno and a one-line message that names `peer` (the
 * server's URI or the client's address) and the offending field.  That
 * keeps the parsers small enough to fuzz (tests/fuzz/fuzz_nbd_reply.c).
 *
 * Specification: doc/proto.md in NetworkBlockDevice/nbd ("Handshake",
 * "Transmission", "Structured reply chunk message types", "Metadata
 * querying"); QEMU's contexts: docs/interop/nbd.rst in qemu/qemu.
 * Threads: every function is reentrant; nothing here holds state. */
#ifndef IMGTOOL_NBD_PROTO_H
#define IMGTOOL_NBD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* --- Handshake ("Newstyle negotiation") --- */
#define NBD_INIT_MAGIC      0x4e42444d41474943ull  /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC      0x49484156454F5054ull  /* "IHAVEOPT" */
#define NBD_OLDSTYLE_MAGIC  0x0000420281861253ull
#define NBD_REP_MAGIC       0x0003e889045565a9ull
#define NBD_DEFAULT_PORT    10809

/* Server handshake flags (16 bits) and client flags (32 bits). */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Transmission flags (16 bits, in NBD_INFO_EXPORT). */
enum {
    NBD_FLAG_HAS_FLAGS         = 1 << 0,
    NBD_FLAG_READ_ONLY         = 1 << 1,
    NBD_FLAG_SEND_FLUSH        = 1 << 2,
    NBD_FLAG_SEND_FUA          = 1 << 3,
    NBD_FLAG_ROTATIONAL        = 1 << 4,
    NBD_FLAG_SEND_TRIM         = 1 << 5,
    NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6,
    NBD_FLAG_SEND_DF           = 1 << 7,
    NBD_FLAG_CAN_MULTI_CONN    = 1 << 8,
    NBD_FLAG_SEND_RESIZE       = 1 << 9,
    NBD_FLAG_SEND_CACHE        = 1 << 10,
    NBD_FLAG_SEND_FAST_ZERO    = 1 << 11,
};

/* Options. */
enum {
    NBD_OPT_EXPORT_NAME      = 1,
    NBD_OPT_ABORT            = 2,
    NBD_OPT_LIST             = 3,
    NBD_OPT_STARTTLS         = 5,
    NBD_OPT_INFO             = 6,
    NBD_OPT_GO               = 7,
    NBD_OPT_STRUCTURED_REPLY = 8,
    NBD_OPT_LIST_META_CONTEXT = 9,
    NBD_OPT_SET_META_CONTEXT = 10,
};

/* Option reply types; errors have bit 31 set. */
#define NBD_REP_ERR_BIT (1u << 31)
enum {
    NBD_REP_ACK          = 1,
    NBD_REP_SERVER       = 2,
    NBD_REP_INFO         = 3,
    NBD_REP_META_CONTEXT = 4,
};
#define NBD_REP_ERR_UNSUP           (NBD_REP_ERR_BIT | 1)
#define NBD_REP_ERR_POLICY          (NBD_REP_ERR_BIT | 2)
#define NBD_REP_ERR_INVALID         (NBD_REP_ERR_BIT | 3)
#define NBD_REP_ERR_PLATFORM        (NBD_REP_ERR_BIT | 4)
#define NBD_REP_ERR_TLS_REQD        (NBD_REP_ERR_BIT | 5)
#define NBD_REP_ERR_UNKNOWN         (NBD_REP_ERR_BIT | 6)
#define NBD_REP_ERR_SHUTDOWN        (NBD_REP_ERR_BIT | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_ERR_BIT | 8)
#define NBD_REP_ERR_TOO_BIG         (NBD_REP_ERR_BIT | 9)

/* NBD_REP_INFO types. */
enum {
    NBD_INFO_EXPORT      = 0,
    NBD_INFO_NAME        = 1,
    NBD_INFO_DESCRIPTION = 2,
    NBD_INFO_BLOCK_SIZE  = 3,
};

/* --- Transmission --- */
#define NBD_REQUEST_MAGIC          0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

enum {
    NBD_CMD_READ         = 0,
    NBD_CMD_WRITE        = 1,
    NBD_CMD_DISC         = 2,
    NBD_CMD_FLUSH        = 3,
    NBD_CMD_TRIM         = 4,
    NBD_CMD_CACHE        = 5,
    NBD_CMD_WRITE_ZEROES = 6,
    NBD_CMD_BLOCK_STATUS = 7,
};

/* Command flags (16 bits). */
enum {
    NBD_CMD_FLAG_FUA       = 1 << 0,
    NBD_CMD_FLAG_NO_HOLE   = 1 << 1,
    NBD_CMD_FLAG_DF        = 1 << 2,
    NBD_CMD_FLAG_REQ_ONE   = 1 << 3,
    NBD_CMD_FLAG_FAST_ZERO = 1 << 4,
};

/* Structured reply chunk flags and types. */
#define NBD_REPLY_FLAG_DONE (1u << 0)
enum {
    NBD_REPLY_TYPE_NONE         = 0,
    NBD_REPLY_TYPE_OFFSET_DATA  = 1,
    NBD_REPLY_TYPE_OFFSET_HOLE  = 2,
    NBD_REPLY_TYPE_BLOCK_STATUS = 5,
    NBD_REPLY_TYPE_ERROR        = (1 << 15) | 1,
    NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2,
};
#define NBD_REPLY_TYPE_IS_ERROR(t) (((t) & (1 << 15)) != 0)

/* Error values on the wire ("Error values"). */
enum {
    NBD_EPERM     = 1,
    NBD_EIO       = 5,
    NBD_ENOMEM    = 12,
    NBD_EINVAL    = 22,
    NBD_ENOSPC    = 28,
    NBD_EOVERFLOW = 75,
    NBD_ENOTSUP   = 95,
    NBD_ESHUTDOWN = 108,
};

/* Block status flags of the base:allocation context; qemu:dirty-bitmap:*
 * uses bit 0 for "dirty"; qemu:allocation-depth carries the depth (0 =
 * unallocated in the whole chain, 1 = the top layer, ...). */
#define NBD_STATE_HOLE  (1u << 0)
#define NBD_STATE_ZERO  (1u << 1)
#define NBD_STATE_DIRTY (1u << 0)
#define NBD_CONTEXT_BASE_ALLOCATION  "base:allocation"
#define NBD_CONTEXT_ALLOCATION_DEPTH "qemu:allocation-depth"
#define NBD_CONTEXT_DIRTY_BITMAP     "qemu:dirty-bitmap:"

/* Sizes of the fixed parts. */
#define NBD_OPTION_HEADER_SIZE    16   /* IHAVEOPT, option, length */
#define NBD_OPTION_REPLY_SIZE     20   /* magic, option, type, length */
#define NBD_REQUEST_SIZE          28
#define NBD_SIMPLE_REPLY_SIZE     16
#define NBD_CHUNK_HEADER_SIZE     20
#define NBD_EXTENT_SIZE           8    /* length, flags */

/* Limits this implementation enforces on what a peer sends. */
#define NBD_MAX_STRING        4096          /* export / context names (spec) */
#define NBD_MAX_OPTION_LEN    (64u << 10)   /* option data and option replies */
#define NBD_MAX_ERROR_MSG     4096
#define NBD_MAX_PAYLOAD       (32u << 20)   /* data in one read / write */
#define NBD_MAX_EXTENTS       (1u << 20)    /* descriptors in one block status chunk */

/* A growable output buffer for variable-length messages. */
struct nbd_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed;        /* an allocation failed; the contents are incomplete */
};
void nbd_buf_free(struct nbd_buf *b);
void nbd_buf_put(struct nbd_buf *b, const void *p, size_t n);
void nbd_buf_put16(struct nbd_buf *b, uint16_t v);
void nbd_buf_put32(struct nbd_buf *b, uint32_t v);
void nbd_buf_put64(struct nbd_buf *b, uint64_t v);
void nbd_buf_put_string32(struct nbd_buf *b, const char *s);   /* u32 length + bytes */

/* A cursor over bytes received: every get checks the length left. */
struct nbd_cursor {
    const uint8_t *p;
    size_t left;
};
bool nbd_get16(struct nbd_cursor *c, uint16_t *v);
bool nbd_get32(struct nbd_cursor *c, uint32_t *v);
bool nbd_get64(struct nbd_cursor *c, uint64_t *v);
/* A u32-length-prefixed string of at most NBD_MAX_STRING bytes, without
 * NUL bytes; *s is malloc'ed and NUL-terminated.  -EINVAL / -ENOMEM. */
int nbd_get_string32(struct nbd_cursor *c, char **s);

/* Names for messages. */
const char *nbd_option_name(uint32_t opt);
const char *nbd_rep_name(uint32_t type);
const char *nbd_cmd_name(uint16_t cmd);
/* errno <-> NBD error values (unknown values map to EIO / NBD_EINVAL). */
int nbd_errno_from_wire(uint32_t err);
uint32_t nbd_errno_to_wire(int err);

/* --- Handshake messages --- */
/* Server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
#define NBD_GREETING_SIZE 18
void nbd_encode_greeting(uint8_t out[NBD_GREETING_SIZE], uint16_t flags);
int nbd_decode_greeting(const uint8_t in[NBD_GREETING_SIZE], uint16_t *flags,
                        const char *peer, struct err *e);

/* The client's 32-bit flags after the greeting: only NBD_FLAG_C_* are
 * known, and a server must end the session on any other bit. */
void nbd_encode_client_flags(uint8_t out[4], uint32_t flags);
int nbd_decode_client_flags(const uint8_t in[4], uint32_t *flags, const char *peer,
                            struct err *e);

/* The server's answer to NBD_OPT_EXPORT_NAME: export size, transmission
 * flags, then 124 zero bytes that a client which set NBD_FLAG_C_NO_ZEROES
 * does not get (send NBD_EXPORT_NAME_REPLY_SHORT bytes then). */
#define NBD_EXPORT_NAME_REPLY_SIZE  134
#define NBD_EXPORT_NAME_REPLY_SHORT 10
void nbd_encode_export_name_reply(uint8_t out[NBD_EXPORT_NAME_REPLY_SIZE], uint64_t size,
                                  uint16_t flags);

/* Option request header; data follows (at most NBD_MAX_OPTION_LEN). */
struct nbd_option {
    uint32_t option;
    uint32_t length;
};
void nbd_encode_option(uint8_t out[NBD_OPTION_HEADER_SIZE], uint32_t option, uint32_t length);
int nbd_decode_option(const uint8_t in[NBD_OPTION_HEADER_SIZE], struct nbd_option *o,
                      const char *peer, struct err *e);

/* Option reply header; `expect_option` is the option the client sent. */
struct nbd_option_reply {
    uint32_t option;
    uint32_t type;      /* NBD_REP_* */
    uint32_t length;
};
void nbd_encode_option_reply(uint8_t out[NBD_OPTION_REPLY_SIZE], uint32_t option,
                             uint32_t type, uint32_t length);
int nbd_decode_option_reply(const uint8_t in[NBD_OPTION_REPLY_SIZE], uint32_t expect_option,
                            struct nbd_option_reply *r, const char *peer, struct err *e);

/* NBD_OPT_GO / NBD_OPT_INFO data: export name plus the NBD_INFO_* the
 * client asks for. */
struct nbd_go_request {
    char *name;
    uint16_t ninfo;
    uint16_t info[8];   /* requests beyond 8 are ignored when decoding */
};
void nbd_encode_go(struct nbd_buf *b, const char *name, const uint16_t *info, uint16_t ninfo);
int nbd_decode_go(const uint8_t *data, size_t len, struct nbd_go_request *g,
                  const char *peer, struct err *e);
void nbd_go_request_free(struct nbd_go_request *g);

/* What NBD_REP_INFO replies tell about an export. */
struct nbd_export_info {
    uint64_t size;
    uint16_t flags;                 /* NBD_FLAG_* transmission flags */
    bool have_export;               /* NBD_INFO_EXPORT seen */
    bool have_block_size;
    uint32_t min_block, pref_block, max_block;
    char *name;                     /* NBD_INFO_NAME, or NULL */
    char *description;              /* NBD_INFO_DESCRIPTION, or NULL */
};
void nbd_export_info_free(struct nbd_export_info *x);
/* Encode one NBD_REP_INFO payload (server side). */
void nbd_encode_info_export(struct nbd_buf *b, uint64_t size, uint16_t flags);
void nbd_encode_info_block_size(struct nbd_buf *b, uint32_t min, uint32_t pref, uint32_t max);
void nbd_encode_info_string(struct nbd_buf *b, uint16_t type, const char *s);
/* Decode one NBD_REP_INFO payload into *x; unknown types are ignored (the
 * spec lets servers send them).  Validates the block size constraints:
 * powers of two, min <= 64 KiB, min <= pref <= max, max a multiple of min. */
int nbd_decode_info(const uint8_t *data, size_t len, struct nbd_export_info *x,
                    const char *peer, struct err *e);

/* NBD_OPT_LIST reply (NBD_REP_SERVER): export name (and description). */
void nbd_encode_rep_server(struct nbd_buf *b, const char *name, const char *description);
int nbd_decode_rep_server(const uint8_t *data, size_t len, char **name, char **description,
                          const char *peer, struct err *e);

/* NBD_OPT_{LIST,SET}_META_CONTEXT data: export name and queries. */
struct nbd_meta_request {
    char *export_name;
    uint32_t nqueries;
    char **queries;
};
void nbd_encode_meta_request(struct nbd_buf *b, const char *export_name,
                             const char *const *queries, uint32_t nqueries);
int nbd_decode_meta_request(const uint8_t *data, size_t len, struct nbd_meta_request *m,
                            const char *peer, struct err *e);
void nbd_meta_request_free(struct nbd_meta_request *m);
/* NBD_REP_META_CONTEXT: context id and name. */
void nbd_encode_rep_meta_context(struct nbd_buf *b, uint32_t id, const char *name);
int nbd_decode_rep_meta_context(const uint8_t *data, size_t len, uint32_t *id, char **name,
                                const char *peer, struct err *e);
/* An error reply's payload is an optional human-readable message: copied
 * (sanitised, at most `len - 1` bytes) into msg. */
void nbd_decode_rep_error_message(const uint8_t *data, size_t dlen, char *msg, size_t len);

/* --- Requests and replies --- */
struct nbd_request {
    uint16_t flags;     /* NBD_CMD_FLAG_* */
    uint16_t type;      /* NBD_CMD_* */
    uint64_t cookie;    /* the "handle": the client's tag for the reply */
    uint64_t offset;
    uint32_t length;
};
void nbd_encode_request(uint8_t out[NBD_REQUEST_SIZE], const struct nbd_request *r);
/* Checks the magic only; the server checks the command against its export. */
int nbd_decode_request(const uint8_t in[NBD_REQUEST_SIZE], struct nbd_request *r,
                       const char *peer, struct err *e);

/* A reply header: simple (16 bytes) or a structured chunk (20 bytes).  Read
 * 4 bytes, call nbd_reply_header_size for the total, read the rest, then
 * nbd_decode_reply_header. */
struct nbd_reply {
    bool structured;
    uint16_t flags;     /* chunk: NBD_REPLY_FLAG_DONE; simple: DONE implied */
    uint16_t type;      /* chunk type; simple: NBD_REPLY_TYPE_NONE */
    uint32_t error;     /* simple reply: the wire error value */
    uint64_t cookie;
    uint32_t length;    /* chunk payload length; simple: 0 */
};
/* 0 for an unknown magic (and sets e). */
size_t nbd_reply_header_size(const uint8_t magic[4], const char *peer, struct err *e);
/* Validates the magic, that a simple reply carries a known error value,
 * that chunk flags are known, and bounds the payload (a chunk may carry
 * at most `max_payload` bytes after its fixed part). */
int nbd_decode_reply_header(const uint8_t *in, size_t len, uint32_t max_payload,
                            struct nbd_reply *r, const char *peer, struct err *e);
void nbd_encode_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_SIZE], uint32_t error,
                             uint64_t cookie);
void nbd_encode_chunk_header(uint8_t out[NBD_CHUNK_HEADER_SIZE], uint16_t flags,
                             uint16_t type, uint64_t cookie, uint32_t length);

/* Structured chunk payloads, checked against the request they answer. */
/* NBD_REPLY_TYPE_OFFSET_DATA: 8-byte offset then data; the data must lie
 * within the request.  *data_off is the offset within the request. */
int nbd_decode_offset_data(const uint8_t hdr[8], uint32_t chunk_len,
                           const struct nbd_request *req, uint64_t *data_off,
                           uint32_t *data_len, const char *peer, struct err *e);
/* The 8-byte offset that starts an NBD_REPLY_TYPE_OFFSET_DATA payload
 * (the data follows it). */
void nbd_encode_offset_data(uint8_t out[8], uint64_t offset);
/* NBD_REPLY_TYPE_OFFSET_HOLE: offset + 32-bit size within the request. */
int nbd_decode_offset_hole(const uint8_t *data, uint32_t len, const struct nbd_request *req,
                           uint64_t *hole_off, uint32_t *hole_len, const char *peer,
                           struct err *e);
void nbd_encode_offset_hole(uint8_t out[12], uint64_t offset, uint32_t len);
/* NBD_REPLY_TYPE_ERROR{,_OFFSET}: error value, message (copied into msg,
 * sanitised), and for ERROR_OFFSET an offset within the request. */
struct nbd_chunk_error {
    uint32_t error;         /* wire value, never 0 */
    bool has_offset;
    uint64_t offset;
    char message[256];
};
int nbd_decode_chunk_error(const uint8_t *data, uint32_t len, uint16_t type,
                           const struct nbd_request *req, struct nbd_chunk_error *ce,
                           const char *peer, struct err *e);
void nbd_encode_chunk_error(struct nbd_buf *b, uint32_t error, const char *message,
                            bool with_offset, uint64_t offset);

/* NBD_REPLY_TYPE_BLOCK_STATUS: context id then (length, flags) pairs. */
struct nbd_extent {
    uint32_t length;
    uint32_t flags;
};
/* Decodes up to `max` descriptors into ext (the rest are dropped, as the
 * spec allows a client to use a prefix).  Validates: a whole number of
 * descriptors, at least one, each length > 0 (except that the spec allows
 * nothing else), the sum not beyond the end of the request's range
 * (`size` is the export size) and the first one starting at the request
 * offset by construction; with REQ_ONE exactly one descriptor. */
int nbd_decode_block_status(const uint8_t *data, uint32_t len, const struct nbd_request *req,
                            uint64_t size, uint32_t *context_id, struct nbd_extent *ext,
                            uint32_t max, uint32_t *count, const char *peer, struct err *e);
void nbd_encode_block_status(struct nbd_buf *b, uint32_t context_id,
                             const struct nbd_extent *ext, uint32_t count);

#endif
