/* The NBD protocol codec (see proto.h): encoders and strict decoders. */
#include "nbd/proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* --- Buffers --- */

void nbd_buf_free(struct nbd_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

void nbd_buf_put(struct nbd_buf *b, const void *p, size_t n)
{
    if (b->failed || n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void nbd_buf_put16(struct nbd_buf *b, uint16_t v)
{
    uint8_t x[2];
    be16_write(x, v);
    nbd_buf_put(b, x, 2);
}

void nbd_buf_put32(struct nbd_buf *b, uint32_t v)
{
    uint8_t x[4];
    be32_write(x, v);
    nbd_buf_put(b, x, 4);
}

void nbd_buf_put64(struct nbd_buf *b, uint64_t v)
{
    uint8_t x[8];
    be64_write(x, v);
    nbd_buf_put(b, x, 8);
}

void nbd_buf_put_string32(struct nbd_buf *b, const char *s)
{
    size_t n = strlen(s);
    nbd_buf_put32(b, (uint32_t)n);
    nbd_buf_put(b, s, n);
}

/* --- Cursors --- */

bool nbd_get16(struct nbd_cursor *c, uint16_t *v)
{
    if (c->left < 2)
        return false;
    *v = be16_read(c->p);
    c->p += 2;
    c->left -= 2;
    return true;
}

bool nbd_get32(struct nbd_cursor *c, uint32_t *v)
{
    if (c->left < 4)
        return false;
    *v = be32_read(c->p);
    c->p += 4;
    c->left -= 4;
    return true;
}

bool nbd_get64(struct nbd_cursor *c, uint64_t *v)
{
    if (c->left < 8)
        return false;
    *v = be64_read(c->p);
    c->p += 8;
    c->left -= 8;
    return true;
}

/* A string of exactly `n` bytes from the cursor (spec "Conventions": no
 * NUL, at most 4096 bytes). */
static int get_string_bytes(struct nbd_cursor *c, size_t n, char **s)
{
    if (n > NBD_MAX_STRING || n > c->left || memchr(c->p, 0, n))
        return -EINVAL;
    char *r = malloc(n + 1);
    if (!r)
        return -ENOMEM;
    memcpy(r, c->p, n);
    r[n] = '\0';
    c->p += n;
    c->left -= n;
    *s = r;
    return 0;
}

int nbd_get_string32(struct nbd_cursor *c, char **s)
{
    uint32_t n;
    if (!nbd_get32(c, &n))
        return -EINVAL;
    return get_string_bytes(c, n, s);
}

/* Copy a peer's message for our own error text: printable ASCII only, so
 * that a hostile server cannot put escape sequences on the terminal. */
static void sanitise_message(const uint8_t *p, size_t n, char *out, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < len; i++)
        out[j++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    if (len)
        out[j] = '\0';
}

/* --- Names --- */

const char *nbd_option_name(uint32_t opt)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: return "NBD_OPT_EXPORT_NAME";
    case NBD_OPT_ABORT: return "NBD_OPT_ABORT";
    case NBD_OPT_LIST: return "NBD_OPT_LIST";
    case NBD_OPT_STARTTLS: return "NBD_OPT_STARTTLS";
    case NBD_OPT_INFO: return "NBD_OPT_INFO";
    case NBD_OPT_GO: return "NBD_OPT_GO";
    case NBD_OPT_STRUCTURED_REPLY: return "NBD_OPT_STRUCTURED_REPLY";
    case NBD_OPT_LIST_META_CONTEXT: return "NBD_OPT_LIST_META_CONTEXT";
    case NBD_OPT_SET_META_CONTEXT: return "NBD_OPT_SET_META_CONTEXT";
    default: return "unknown option";
    }
}

const char *nbd_rep_name(uint32_t type)
{
    switch (type) {
    case NBD_REP_ACK: return "NBD_REP_ACK";
    case NBD_REP_SERVER: return "NBD_REP_SERVER";
    case NBD_REP_INFO: return "NBD_REP_INFO";
    case NBD_REP_META_CONTEXT: return "NBD_REP_META_CONTEXT";
    case NBD_REP_ERR_UNSUP: return "unsupported";
    case NBD_REP_ERR_POLICY: return "denied by policy";
    case NBD_REP_ERR_INVALID: return "invalid";
    case NBD_REP_ERR_PLATFORM: return "not supported on this platform";
    case NBD_REP_ERR_TLS_REQD: return "TLS required";
    case NBD_REP_ERR_UNKNOWN: return "no such export";
    case NBD_REP_ERR_SHUTDOWN: return "server shutting down";
    case NBD_REP_ERR_BLOCK_SIZE_REQD: return "block size constraints required";
    case NBD_REP_ERR_TOO_BIG: return "request too big";
    default: return (type & NBD_REP_ERR_BIT) ? "unknown error" : "unknown reply";
    }
}

const char *nbd_cmd_name(uint16_t cmd)
{
    switch (cmd) {
    case NBD_CMD_READ: return "read";
    case NBD_CMD_WRITE: return "write";
    case NBD_CMD_DISC: return "disconnect";
    case NBD_CMD_FLUSH: return "flush";
    case NBD_CMD_TRIM: return "trim";
    case NBD_CMD_CACHE: return "cache";
    case NBD_CMD_WRITE_ZEROES: return "write zeroes";
    case NBD_CMD_BLOCK_STATUS: return "block status";
    default: return "unknown command";
    }
}

int nbd_errno_from_wire(uint32_t err)
{
    switch (err) {
    case NBD_EPERM: return EPERM;
    case NBD_EIO: return EIO;
    case NBD_ENOMEM: return ENOMEM;
    case NBD_EINVAL: return EINVAL;
    case NBD_ENOSPC: return ENOSPC;
    case NBD_EOVERFLOW: return EOVERFLOW;
    case NBD_ENOTSUP: return ENOTSUP;
    case NBD_ESHUTDOWN: return ESHUTDOWN;
    default: return EIO;    /* the spec: treat unknown values as EINVAL/EIO */
    }
}

uint32_t nbd_errno_to_wire(int err)
{
    switch (err) {
    case 0: return 0;
    case EPERM: case EROFS: return NBD_EPERM;
    case EIO: return NBD_EIO;
    case ENOMEM: return NBD_ENOMEM;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EINVAL;
    }
}

static bool known_wire_error(uint32_t err)
{
    switch (err) {
    case NBD_EPERM: case NBD_EIO: case NBD_ENOMEM: case NBD_EINVAL: case NBD_ENOSPC:
    case NBD_EOVERFLOW: case NBD_ENOTSUP: case NBD_ESHUTDOWN:
        return true;
    default:
        return false;
    }
}

/* --- Handshake --- */

void nbd_encode_greeting(uint8_t out[NBD_GREETING_SIZE], uint16_t flags)
{
    be64_write(out, NBD_INIT_MAGIC);
    be64_write(out + 8, NBD_OPTS_MAGIC);
    be16_write(out + 16, flags);
}

int nbd_decode_greeting(const uint8_t in[NBD_GREETING_SIZE], uint16_t *flags,
                        const char *peer, struct err *e)
{
    if (be64_read(in) != NBD_INIT_MAGIC)
        return err_set(e, EPROTO, "%s: not an NBD server (bad magic 0x%016llx)", peer,
                       (unsigned long long)be64_read(in));
    uint64_t m = be64_read(in + 8);
    if (m == NBD_OLDSTYLE_MAGIC)
        return err_set(e, EPROTO, "%s: the server speaks the oldstyle protocol, which has "
                       "no export names (use a newstyle server)", peer);
    if (m != NBD_OPTS_MAGIC)
        return err_set(e, EPROTO, "%s: bad handshake magic 0x%016llx", peer,
                       (unsigned long long)m);
    *flags = be16_read(in + 16);
    if (!(*flags & NBD_FLAG_FIXED_NEWSTYLE))
        return err_set(e, EPROTO, "%s: the server does not support fixed newstyle "
                       "negotiation", peer);
    return 0;
}

void nbd_encode_client_flags(uint8_t out[4], uint32_t flags)
{
    be32_write(out, flags);
}

int nbd_decode_client_flags(const uint8_t in[4], uint32_t *flags, const char *peer,
                            struct err *e)
{
    *flags = be32_read(in);
    uint32_t known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
    if (*flags & ~known)
        return err_set(e, EPROTO, "%s: unknown client flags 0x%x", peer, *flags & ~known);
    return 0;
}

void nbd_encode_export_name_reply(uint8_t out[NBD_EXPORT_NAME_REPLY_SIZE], uint64_t size,
                                  uint16_t flags)
{
    memset(out, 0, NBD_EXPORT_NAME_REPLY_SIZE);
    be64_write(out, size);
    be16_write(out + 8, flags);
}

void nbd_encode_option(uint8_t out[NBD_OPTION_HEADER_SIZE], uint32_t option, uint32_t length)
{
    be64_write(out, NBD_OPTS_MAGIC);
    be32_write(out + 8, option);
    be32_write(out + 12, length);
}

int nbd_decode_option(const uint8_t in[NBD_OPTION_HEADER_SIZE], struct nbd_option *o,
                      const char *peer, struct err *e)
{
    if (be64_read(in) != NBD_OPTS_MAGIC)
        return err_set(e, EPROTO, "%s: bad option magic 0x%016llx", peer,
                       (unsigned long long)be64_read(in));
    o->option = be32_read(in + 8);
    o->length = be32_read(in + 12);
    if (o->length > NBD_MAX_OPTION_LEN)
        return err_set(e, EPROTO, "%s: option %u carries %u bytes (limit %u)", peer,
                       o->option, o->length, NBD_MAX_OPTION_LEN);
    return 0;
}

void nbd_encode_option_reply(uint8_t out[NBD_OPTION_REPLY_SIZE], uint32_t option,
                             uint32_t type, uint32_t length)
{
    be64_write(out, NBD_REP_MAGIC);
    be32_write(out + 8, option);
    be32_write(out + 12, type);
    be32_write(out + 16, length);
}

int nbd_decode_option_reply(const uint8_t in[NBD_OPTION_REPLY_SIZE], uint32_t expect_option,
                            struct nbd_option_reply *r, const char *peer, struct err *e)
{
    if (be64_read(in) != NBD_REP_MAGIC)
        return err_set(e, EPROTO, "%s: bad option reply magic 0x%016llx", peer,
                       (unsigned long long)be64_read(in));
    r->option = be32_read(in + 8);
    r->type = be32_read(in + 12);
    r->length = be32_read(in + 16);
    if (r->option != expect_option)
        return err_set(e, EPROTO, "%s: reply to option %u while waiting for %s", peer,
                       r->option, nbd_option_name(expect_option));
    if (r->length > NBD_MAX_OPTION_LEN)
        return err_set(e, EPROTO, "%s: %s reply of %u bytes (limit %u)", peer,
                       nbd_option_name(expect_option), r->length, NBD_MAX_OPTION_LEN);
    return 0;
}

void nbd_encode_go(struct nbd_buf *b, const char *name, const uint16_t *info, uint16_t ninfo)
{
    nbd_buf_put_string32(b, name);
    nbd_buf_put16(b, ninfo);
    for (uint16_t i = 0; i < ninfo; i++)
        nbd_buf_put16(b, info[i]);
}

int nbd_decode_go(const uint8_t *data, size_t len, struct nbd_go_request *g,
                  const char *peer, struct err *e)
{
    memset(g, 0, sizeof(*g));
    struct nbd_cursor c = { data, len };
    int ret = nbd_get_string32(&c, &g->name);
    if (ret == -ENOMEM)
        return err_set(e, ENOMEM, "%s: out of memory", peer);
    uint16_t n;
    if (ret < 0 || !nbd_get16(&c, &n) || c.left != (size_t)n * 2) {
        nbd_go_request_free(g);
        return err_set(e, EINVAL, "%s: malformed NBD_OPT_GO/INFO request", peer);
    }
    for (uint16_t i = 0; i < n; i++) {
        uint16_t t = 0;
        nbd_get16(&c, &t);
        if (g->ninfo < sizeof(g->info) / sizeof(g->info[0]))
            g->info[g->ninfo++] = t;
    }
    return 0;
}

void nbd_go_request_free(struct nbd_go_request *g)
{
    free(g->name);
    g->name = NULL;
}

void nbd_export_info_free(struct nbd_export_info *x)
{
    free(x->name);
    free(x->description);
    x->name = x->description = NULL;
}

void nbd_encode_info_export(struct nbd_buf *b, uint64_t size, uint16_t flags)
{
    nbd_buf_put16(b, NBD_INFO_EXPORT);
    nbd_buf_put64(b, size);
    nbd_buf_put16(b, flags);
}

void nbd_encode_info_block_size(struct nbd_buf *b, uint32_t min, uint32_t pref, uint32_t max)
{
    nbd_buf_put16(b, NBD_INFO_BLOCK_SIZE);
    nbd_buf_put32(b, min);
    nbd_buf_put32(b, pref);
    nbd_buf_put32(b, max);
}

void nbd_encode_info_string(struct nbd_buf *b, uint16_t type, const char *s)
{
    nbd_buf_put16(b, type);
    nbd_buf_put(b, s, strlen(s));
}

/* "Block size constraints": min a power of 2 up to 64 KiB, preferred a
 * power of 2 at least min (and at least 512 in the spec's words, but some
 * servers send the minimum), max a multiple of min, at least pref. */
static int check_block_sizes(uint32_t min, uint32_t pref, uint32_t max, const char *peer,
                             struct err *e)
{
    if (!is_power_of_2(min) || min > (64u << 10) || !is_power_of_2(pref) || pref < min ||
        max < pref || max % min != 0)
        return err_set(e, EPROTO, "%s: invalid block size constraints (minimum %u, "
                       "preferred %u, maximum %u)", peer, min, pref, max);
    return 0;
}

static int decode_info_string(struct nbd_cursor *c, char **dst, const char *peer,
                              struct err *e)
{
    char *s;
    int ret = get_string_bytes(c, c->left, &s);
    if (ret < 0)
        return err_set(e, -ret, "%s: malformed name or description in NBD_REP_INFO", peer);
    free(*dst);
    *dst = s;
    return 0;
}

int nbd_decode_info(const uint8_t *data, size_t len, struct nbd_export_info *x,
                    const char *peer, struct err *e)
{
    struct nbd_cursor c = { data, len };
    uint16_t type;
    if (!nbd_get16(&c, &type))
        return err_set(e, EPROTO, "%s: NBD_REP_INFO of %zu bytes", peer, len);
    switch (type) {
    case NBD_INFO_EXPORT:
        if (c.left != 10)
            return err_set(e, EPROTO, "%s: NBD_INFO_EXPORT of %zu bytes (expected 12)", peer,
                           len);
        nbd_get64(&c, &x->size);
        nbd_get16(&c, &x->flags);
        if (!(x->flags & NBD_FLAG_HAS_FLAGS))
            return err_set(e, EPROTO, "%s: transmission flags 0x%x lack NBD_FLAG_HAS_FLAGS",
                           peer, x->flags);
        if (x->size > INT64_MAX)
            return err_set(e, EPROTO, "%s: export size %llu is too large", peer,
                           (unsigned long long)x->size);
        x->have_export = true;
        return 0;
    case NBD_INFO_BLOCK_SIZE:
        if (c.left != 12)
            return err_set(e, EPROTO, "%s: NBD_INFO_BLOCK_SIZE of %zu bytes (expected 14)",
                           peer, len);
        nbd_get32(&c, &x->min_block);
        nbd_get32(&c, &x->pref_block);
        nbd_get32(&c, &x->max_block);
        x->have_block_size = true;
        return check_block_sizes(x->min_block, x->pref_block, x->max_block, peer, e);
    case NBD_INFO_NAME:
        return decode_info_string(&c, &x->name, peer, e);
    case NBD_INFO_DESCRIPTION:
        return decode_info_string(&c, &x->description, peer, e);
    default:
        return 0;   /* servers may send information we did not ask for */
    }
}

void nbd_encode_rep_server(struct nbd_buf *b, const char *name, const char *description)
{
    nbd_buf_put_string32(b, name);
    if (description)
        nbd_buf_put(b, description, strlen(description));
}

int nbd_decode_rep_server(const uint8_t *data, size_t len, char **name, char **description,
                          const char *peer, struct err *e)
{
    struct nbd_cursor c = { data, len };
    *name = *description = NULL;
    int ret = nbd_get_string32(&c, name);
    if (ret == 0 && (ret = get_string_bytes(&c, c.left, description)) < 0) {
        free(*name);
        *name = NULL;
    }
    if (ret < 0)
        return err_set(e, -ret, "%s: malformed NBD_REP_SERVER reply", peer);
    return 0;
}

void nbd_encode_meta_request(struct nbd_buf *b, const char *export_name,
                             const char *const *queries, uint32_t nqueries)
{
    nbd_buf_put_string32(b, export_name);
    nbd_buf_put32(b, nqueries);
    for (uint32_t i = 0; i < nqueries; i++)
        nbd_buf_put_string32(b, queries[i]);
}

int nbd_decode_meta_request(const uint8_t *data, size_t len, struct nbd_meta_request *m,
                            const char *peer, struct err *e)
{
    memset(m, 0, sizeof(*m));
    struct nbd_cursor c = { data, len };
    uint32_t n;
    int ret = nbd_get_string32(&c, &m->export_name);
    /* Each query takes at least its 4-byte length, which bounds n. */
    if (ret < 0 || !nbd_get32(&c, &n) || n > c.left / 4)
        goto bad;
    m->queries = calloc(n ? n : 1, sizeof(*m->queries));
    if (!m->queries) {
        nbd_meta_request_free(m);
        return err_set(e, ENOMEM, "%s: out of memory", peer);
    }
    for (; m->nqueries < n; m->nqueries++)
        if (nbd_get_string32(&c, &m->queries[m->nqueries]) < 0)
            goto bad;
    if (c.left)
        goto bad;
    return 0;
bad:
    nbd_meta_request_free(m);
    return err_set(e, EINVAL, "%s: malformed meta context request", peer);
}

void nbd_meta_request_free(struct nbd_meta_request *m)
{
    for (uint32_t i = 0; i < m->nqueries; i++)
        free(m->queries[i]);
    free(m->queries);
    free(m->export_name);
    memset(m, 0, sizeof(*m));
}

void nbd_encode_rep_meta_context(struct nbd_buf *b, uint32_t id, const char *name)
{
    nbd_buf_put32(b, id);
    nbd_buf_put(b, name, strlen(name));
}

int nbd_decode_rep_meta_context(const uint8_t *data, size_t len, uint32_t *id, char **name,
                                const char *peer, struct err *e)
{
    struct nbd_cursor c = { data, len };
    if (!nbd_get32(&c, id) || c.left == 0 || get_string_bytes(&c, c.left, name) < 0)
        return err_set(e, EPROTO, "%s: malformed NBD_REP_META_CONTEXT reply", peer);
    return 0;
}

void nbd_decode_rep_error_message(const uint8_t *data, size_t dlen, char *msg, size_t len)
{
    sanitise_message(data, dlen, msg, len);
}

/* --- Transmission --- */

void nbd_encode_request(uint8_t out[NBD_REQUEST_SIZE], const struct nbd_request *r)
{
    be32_write(out, NBD_REQUEST_MAGIC);
    be16_write(out + 4, r->flags);
    be16_write(out + 6, r->type);
    be64_write(out + 8, r->cookie);
    be64_write(out + 16, r->offset);
    be32_write(out + 24, r->length);
}

int nbd_decode_request(const uint8_t in[NBD_REQUEST_SIZE], struct nbd_request *r,
                       const char *peer, struct err *e)
{
    if (be32_read(in) != NBD_REQUEST_MAGIC)
        return err_set(e, EPROTO, "%s: bad request magic 0x%08x", peer, be32_read(in));
    r->flags = be16_read(in + 4);
    r->type = be16_read(in + 6);
    r->cookie = be64_read(in + 8);
    r->offset = be64_read(in + 16);
    r->length = be32_read(in + 24);
    return 0;
}

size_t nbd_reply_header_size(const uint8_t magic[4], const char *peer, struct err *e)
{
    uint32_t m = be32_read(magic);
    if (m == NBD_SIMPLE_REPLY_MAGIC)
        return NBD_SIMPLE_REPLY_SIZE;
    if (m == NBD_STRUCTURED_REPLY_MAGIC)
        return NBD_CHUNK_HEADER_SIZE;
    err_set(e, EPROTO, "%s: bad reply magic 0x%08x", peer, m);
    return 0;
}

int nbd_decode_reply_header(const uint8_t *in, size_t len, uint32_t max_payload,
                            struct nbd_reply *r, const char *peer, struct err *e)
{
    memset(r, 0, sizeof(*r));
    if (len < 4)
        return err_set(e, EPROTO, "%s: short reply header", peer);
    size_t want = nbd_reply_header_size(in, peer, e);
    if (want == 0)
        return -EPROTO;
    if (len != want)
        return err_set(e, EPROTO, "%s: reply header of %zu bytes (expected %zu)", peer, len,
                       want);
    if (want == NBD_SIMPLE_REPLY_SIZE) {
        r->flags = NBD_REPLY_FLAG_DONE;
        r->error = be32_read(in + 4);
        r->cookie = be64_read(in + 8);
        if (r->error && !known_wire_error(r->error))
            r->error = NBD_EINVAL;      /* spec: unknown errors read as EINVAL */
        return 0;
    }
    r->structured = true;
    r->flags = be16_read(in + 4);
    r->type = be16_read(in + 6);
    r->cookie = be64_read(in + 8);
    r->length = be32_read(in + 16);
    if (r->flags & ~NBD_REPLY_FLAG_DONE)
        return err_set(e, EPROTO, "%s: unknown reply chunk flags 0x%x", peer, r->flags);
    /* The largest fixed part is ERROR_OFFSET's (4 + 2 + message + 8). */
    uint64_t limit = (uint64_t)max_payload + 8 + 6 + NBD_MAX_ERROR_MSG;
    if (r->length > limit)
        return err_set(e, EPROTO, "%s: reply chunk of %u bytes (limit %llu)", peer,
                       r->length, (unsigned long long)limit);
    if (r->type == NBD_REPLY_TYPE_NONE && (r->length || !(r->flags & NBD_REPLY_FLAG_DONE)))
        return err_set(e, EPROTO, "%s: NBD_REPLY_TYPE_NONE chunk with length %u, flags 0x%x",
                       peer, r->length, r->flags);
    return 0;
}

void nbd_encode_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_SIZE], uint32_t error,
                             uint64_t cookie)
{
    be32_write(out, NBD_SIMPLE_REPLY_MAGIC);
    be32_write(out + 4, error);
    be64_write(out + 8, cookie);
}

void nbd_encode_chunk_header(uint8_t out[NBD_CHUNK_HEADER_SIZE], uint16_t flags,
                             uint16_t type, uint64_t cookie, uint32_t length)
{
    be32_write(out, NBD_STRUCTURED_REPLY_MAGIC);
    be16_write(out + 4, flags);
    be16_write(out + 6, type);
    be64_write(out + 8, cookie);
    be32_write(out + 16, length);
}

/* [off, off+len) inside the request's range? */
static bool within_request(const struct nbd_request *req, uint64_t off, uint64_t len)
{
    return off >= req->offset && len <= req->length &&
           off - req->offset <= req->length - len;
}

int nbd_decode_offset_data(const uint8_t hdr[8], uint32_t chunk_len,
                           const struct nbd_request *req, uint64_t *data_off,
                           uint32_t *data_len, const char *peer, struct err *e)
{
    if (req->type != NBD_CMD_READ)
        return err_set(e, EPROTO, "%s: data chunk in reply to %s", peer,
                       nbd_cmd_name(req->type));
    if (chunk_len <= 8)
        return err_set(e, EPROTO, "%s: data chunk of %u bytes", peer, chunk_len);
    uint64_t off = be64_read(hdr);
    uint32_t n = chunk_len - 8;
    if (!within_request(req, off, n))
        return err_set(e, EPROTO, "%s: data chunk %llu+%u outside the read %llu+%u", peer,
                       (unsigned long long)off, n, (unsigned long long)req->offset,
                       req->length);
    *data_off = off - req->offset;
    *data_len = n;
    return 0;
}

int nbd_decode_offset_hole(const uint8_t *data, uint32_t len, const struct nbd_request *req,
                           uint64_t *hole_off, uint32_t *hole_len, const char *peer,
                           struct err *e)
{
    if (req->type != NBD_CMD_READ)
        return err_set(e, EPROTO, "%s: hole chunk in reply to %s", peer,
                       nbd_cmd_name(req->type));
    if (len != 12)
        return err_set(e, EPROTO, "%s: hole chunk of %u bytes (expected 12)", peer, len);
    uint64_t off = be64_read(data);
    uint32_t n = be32_read(data + 8);
    if (n == 0 || !within_request(req, off, n))
        return err_set(e, EPROTO, "%s: hole chunk %llu+%u outside the read %llu+%u", peer,
                       (unsigned long long)off, n, (unsigned long long)req->offset,
                       req->length);
    *hole_off = off - req->offset;
    *hole_len = n;
    return 0;
}

void nbd_encode_offset_data(uint8_t out[8], uint64_t offset)
{
    be64_write(out, offset);
}

void nbd_encode_offset_hole(uint8_t out[12], uint64_t offset, uint32_t len)
{
    be64_write(out, offset);
    be32_write(out + 8, len);
}

int nbd_decode_chunk_error(const uint8_t *data, uint32_t len, uint16_t type,
                           const struct nbd_request *req, struct nbd_chunk_error *ce,
                           const char *peer, struct err *e)
{
    memset(ce, 0, sizeof(*ce));
    struct nbd_cursor c = { data, len };
    uint16_t mlen;
    if (!nbd_get32(&c, &ce->error) || !nbd_get16(&c, &mlen) || mlen > c.left ||
        mlen > NBD_MAX_ERROR_MSG)
        return err_set(e, EPROTO, "%s: malformed error chunk (%u bytes)", peer, len);
    if (ce->error == 0)
        return err_set(e, EPROTO, "%s: error chunk with error value 0", peer);
    if (!known_wire_error(ce->error))
        ce->error = NBD_EINVAL;
    sanitise_message(c.p, mlen, ce->message, sizeof(ce->message));
    c.p += mlen;
    c.left -= mlen;
    if (type == NBD_REPLY_TYPE_ERROR_OFFSET) {
        if (!nbd_get64(&c, &ce->offset) || !within_request(req, ce->offset, 1))
            return err_set(e, EPROTO, "%s: error chunk offset outside the request", peer);
        ce->has_offset = true;
    }
    if (c.left)
        return err_set(e, EPROTO, "%s: %zu stray bytes after an error chunk", peer, c.left);
    return 0;
}

void nbd_encode_chunk_error(struct nbd_buf *b, uint32_t error, const char *message,
                            bool with_offset, uint64_t offset)
{
    size_t n = strlen(message);
    if (n > NBD_MAX_ERROR_MSG)
        n = NBD_MAX_ERROR_MSG;
    nbd_buf_put32(b, error);
    nbd_buf_put16(b, (uint16_t)n);
    nbd_buf_put(b, message, n);
    if (with_offset)
        nbd_buf_put64(b, offset);
}

int nbd_decode_block_status(const uint8_t *data, uint32_t len, const struct nbd_request *req,
                            uint64_t size, uint32_t *context_id, struct nbd_extent *ext,
                            uint32_t max, uint32_t *count, const char *peer, struct err *e)
{
    if (req->type != NBD_CMD_BLOCK_STATUS)
        return err_set(e, EPROTO, "%s: block status chunk in reply to %s", peer,
                       nbd_cmd_name(req->type));
    if (len < 4 + NBD_EXTENT_SIZE || (len - 4) % NBD_EXTENT_SIZE)
        return err_set(e, EPROTO, "%s: block status chunk of %u bytes", peer, len);
    uint32_t n = (len - 4) / NBD_EXTENT_SIZE;
    if (req->offset >= size)
        return err_set(e, EPROTO, "%s: block status reply for offset %llu at or past the "
                       "end of the export", peer, (unsigned long long)req->offset);
    if ((req->flags & NBD_CMD_FLAG_REQ_ONE) && n != 1)
        return err_set(e, EPROTO, "%s: %u block status descriptors for a one-extent query",
                       peer, n);
    *context_id = be32_read(data);
    uint64_t end = req->offset;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *d = data + 4 + (size_t)i * NBD_EXTENT_SIZE;
        uint32_t l = be32_read(d), f = be32_read(d + 4);
        /* Descriptors are consecutive from the request offset; none may
         * be empty or reach past the end of the export. */
        if (l == 0 || l > size - end)
            return err_set(e, EPROTO, "%s: block status descriptor %u (length %u at %llu) "
                           "is empty or past the end of the export", peer, i, l,
                           (unsigned long long)end);
        end += l;
        if (kept < max)
            ext[kept++] = (struct nbd_extent){ .length = l, .flags = f };
    }
    *count = kept;
    return 0;
}

void nbd_encode_block_status(struct nbd_buf *b, uint32_t context_id,
                             const struct nbd_extent *ext, uint32_t count)
{
    nbd_buf_put32(b, context_id);
    for (uint32_t i = 0; i < count; i++) {
        nbd_buf_put32(b, ext[i].length);
        nbd_buf_put32(b, ext[i].flags);
    }
}
