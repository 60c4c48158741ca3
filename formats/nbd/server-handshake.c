/* The NBD server's handshake (doc/proto.md, "Fixed newstyle negotiation"):
 * greeting, client flags, then options until NBD_OPT_GO or
 * NBD_OPT_EXPORT_NAME choose an export.  Every option's length is checked
 * before its data is read (the codec's NBD_MAX_OPTION_LEN) and its data is
 * parsed strictly; a malformed option gets NBD_REP_ERR_INVALID, a broken
 * stream (bad magic, an option too long to skip) drops the client. */
#include "nbd/server-conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap/dirty.h"

/* Options one client may send before choosing an export: enough for any
 * real client, few enough that a loop of them ends. */
#define MAX_OPTIONS 1024

size_t server_context_count(const struct nbd_server_export *exp)
{
    return CTX_FIRST_BITMAP + exp->nbitmaps;
}

static bool context_offered(const struct nbd_server_export *exp, size_t i)
{
    return i != CTX_ALLOCATION_DEPTH || exp->allocation_depth;
}

/* The name of context i ("qemu:dirty-bitmap:" + name for bitmaps) in buf. */
static const char *context_name(const struct nbd_server_export *exp, size_t i, char *buf,
                                size_t len)
{
    if (i == CTX_BASE_ALLOCATION)
        return NBD_CONTEXT_BASE_ALLOCATION;
    if (i == CTX_ALLOCATION_DEPTH)
        return NBD_CONTEXT_ALLOCATION_DEPTH;
    struct export_image img;
    export_acquire(exp, &img);
    snprintf(buf, len, "%s%s", NBD_CONTEXT_DIRTY_BITMAP,
             dirty_bitmap_name(img.bitmaps[i - CTX_FIRST_BITMAP]));
    export_release(exp);
    return buf;
}

static const struct nbd_server_export *find_export(struct server_conn *c, const char *name)
{
    for (size_t i = 0; i < c->params->nexports; i++)
        if (strcmp(c->params->exports[i].name, name) == 0)
            return &c->params->exports[i];
    return NULL;
}

static int send_reply(struct server_conn *c, uint32_t option, uint32_t type, const void *data,
                      size_t len)
{
    uint8_t hdr[NBD_OPTION_REPLY_SIZE];
    nbd_encode_option_reply(hdr, option, type, (uint32_t)len);
    /* A client that leaves in the handshake just leaves: no error. */
    if (conn_write(c, hdr, sizeof(hdr)) < 0 || (len && conn_write(c, data, len) < 0))
        return -1;
    return 0;
}

static int send_buf_reply(struct server_conn *c, uint32_t option, uint32_t type,
                          struct nbd_buf *b)
{
    if (b->failed) {
        nbd_buf_free(b);
        conn_fail(c, "out of memory");
        return -1;
    }
    int ret = send_reply(c, option, type, b->data, b->len);
    nbd_buf_free(b);
    return ret;
}

/* An error reply with a message for the client's user. */
static int send_error(struct server_conn *c, uint32_t option, uint32_t type, const char *msg)
{
    return send_reply(c, option, type, msg, strlen(msg));
}

/* The transmission flags of export x for this client. */
static uint16_t transmission_flags(const struct server_conn *c,
                                   const struct nbd_server_export *x)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_SEND_CACHE;
    if (x->writable)
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    else
        f |= NBD_FLAG_READ_ONLY;
    if (x->multi_conn)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    return f;
}

static int opt_list(struct server_conn *c, uint32_t len)
{
    if (len)
        return send_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    for (size_t i = 0; i < c->params->nexports; i++) {
        const struct nbd_server_export *x = &c->params->exports[i];
        struct nbd_buf b = { 0 };
        nbd_encode_rep_server(&b, x->name, x->description);
        if (send_buf_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, &b) < 0)
            return -1;
    }
    return send_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static int send_info(struct server_conn *c, uint32_t option, struct nbd_buf *b)
{
    return send_buf_reply(c, option, NBD_REP_INFO, b);
}

/* NBD_OPT_INFO / NBD_OPT_GO: the export's details, NBD_INFO_BLOCK_SIZE
 * always (QEMU does the same, and clients that honour it then never send
 * a request above the maximum payload). */
static int opt_info_go(struct server_conn *c, uint32_t option, const uint8_t *data,
                       uint32_t len)
{
    struct nbd_go_request g;
    struct err e = { 0 };
    if (nbd_decode_go(data, len, &g, c->peer, &e) < 0)
        return send_error(c, option, NBD_REP_ERR_INVALID, e.msg);
    const struct nbd_server_export *x = find_export(c, g.name);
    if (!x) {
        char msg[NBD_MAX_STRING + 32];
        snprintf(msg, sizeof(msg), "export '%s' not present", g.name);
        nbd_go_request_free(&g);
        return send_error(c, option, NBD_REP_ERR_UNKNOWN, msg);
    }
    uint16_t flags = transmission_flags(c, x);
    struct nbd_buf b = { 0 };
    nbd_encode_info_export(&b, export_size(x), flags);
    int ret = send_info(c, option, &b);
    for (uint16_t i = 0; ret == 0 && i < g.ninfo; i++) {
        if (g.info[i] == NBD_INFO_NAME) {
            nbd_encode_info_string(&b, NBD_INFO_NAME, x->name);
            ret = send_info(c, option, &b);
        } else if (g.info[i] == NBD_INFO_DESCRIPTION && x->description) {
            nbd_encode_info_string(&b, NBD_INFO_DESCRIPTION, x->description);
            ret = send_info(c, option, &b);
        }
    }
    nbd_go_request_free(&g);
    if (ret == 0) {
        nbd_encode_info_block_size(&b, NBD_SERVER_MIN_BLOCK, NBD_SERVER_PREF_BLOCK,
                                   NBD_SERVER_MAX_BLOCK);
        ret = send_info(c, option, &b);
    }
    if (ret < 0 || send_reply(c, option, NBD_REP_ACK, NULL, 0) < 0)
        return -1;
    if (option == NBD_OPT_GO) {
        c->exp = x;
        c->flags = flags;
        return 1;
    }
    return 0;
}

/* NBD_OPT_EXPORT_NAME: no way to report an error but closing. */
static int opt_export_name(struct server_conn *c, const uint8_t *data, uint32_t len)
{
    char *name = strndup((const char *)data, len);
    const struct nbd_server_export *x = name && !memchr(data, 0, len) ? find_export(c, name)
                                                                       : NULL;
    if (!x) {
        conn_fail(c, "NBD_OPT_EXPORT_NAME of an unknown export '%s'", name ? name : "");
        free(name);
        return -1;
    }
    free(name);
    uint8_t reply[NBD_EXPORT_NAME_REPLY_SIZE];
    c->exp = x;
    c->flags = transmission_flags(c, x);
    nbd_encode_export_name_reply(reply, export_size(x), c->flags);
    size_t n = c->no_zeroes ? NBD_EXPORT_NAME_REPLY_SHORT : NBD_EXPORT_NAME_REPLY_SIZE;
    return conn_write(c, reply, n) < 0 ? -1 : 1;
}

static int opt_structured_reply(struct server_conn *c, uint32_t len)
{
    if (len)
        return send_error(c, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID,
                          "NBD_OPT_STRUCTURED_REPLY takes no data");
    if (c->structured)
        return send_error(c, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID,
                          "structured replies already negotiated");
    c->structured = true;
    return send_reply(c, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NULL, 0);
}

/* Does query q select context i?  SET takes exact names; LIST also takes
 * a namespace prefix ("base:", "qemu:", "qemu:dirty-bitmap:"). */
static bool query_matches(const char *q, const char *name, bool list)
{
    if (strcmp(q, name) == 0)
        return true;
    if (!list)
        return false;
    size_t n = strlen(q);
    if (!n || q[n - 1] != ':')
        return false;
    /* "qemu:" lists every qemu context; "qemu:dirty-bitmap:" the bitmaps. */
    return strncmp(q, name, n) == 0;
}

static int meta_reply(struct server_conn *c, uint32_t option, const struct nbd_meta_request *m,
                      const struct nbd_server_export *x, bool list)
{
    size_t n = server_context_count(x);
    bool *chosen = calloc(n, sizeof(*chosen));
    if (!chosen) {
        conn_fail(c, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char buf[NBD_MAX_STRING + 32];
        const char *name = context_name(x, i, buf, sizeof(buf));
        for (uint32_t q = 0; context_offered(x, i) && q < m->nqueries && !chosen[i]; q++)
            chosen[i] = query_matches(m->queries[q], name, list);
        if (list && m->nqueries == 0)
            chosen[i] = context_offered(x, i);
        if (!chosen[i])
            continue;
        struct nbd_buf b = { 0 };
        nbd_encode_rep_meta_context(&b, list ? 0 : (uint32_t)i + 1, name);
        if (send_buf_reply(c, option, NBD_REP_META_CONTEXT, &b) < 0) {
            free(chosen);
            return -1;
        }
    }
    if (list) {
        free(chosen);
    } else {
        free(c->selected);
        c->selected = chosen;
        c->ncontexts = n;
        c->meta_exp = x;
    }
    return send_reply(c, option, NBD_REP_ACK, NULL, 0);
}

static int opt_meta_context(struct server_conn *c, uint32_t option, const uint8_t *data,
                            uint32_t len)
{
    bool list = option == NBD_OPT_LIST_META_CONTEXT;
    if (!list && !c->structured)
        return send_error(c, option, NBD_REP_ERR_INVALID,
                          "NBD_OPT_SET_META_CONTEXT needs structured replies first");
    struct nbd_meta_request m;
    struct err e = { 0 };
    if (nbd_decode_meta_request(data, len, &m, c->peer, &e) < 0)
        return send_error(c, option, NBD_REP_ERR_INVALID, e.msg);
    const struct nbd_server_export *x = find_export(c, m.export_name);
    int ret;
    if (!x)
        ret = send_error(c, option, NBD_REP_ERR_UNKNOWN, "no such export");
    else
        ret = meta_reply(c, option, &m, x, list);
    nbd_meta_request_free(&m);
    return ret;
}

/* One option: 1 = transmission starts, 0 = next option, -1 = close. */
static int handle_option(struct server_conn *c, uint32_t option, const uint8_t *data,
                         uint32_t len)
{
    switch (option) {
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(c, data, len);
    case NBD_OPT_ABORT:
        send_reply(c, option, NBD_REP_ACK, NULL, 0);
        return -1;
    case NBD_OPT_LIST:
        return opt_list(c, len);
    case NBD_OPT_STARTTLS:
        return send_error(c, option, NBD_REP_ERR_POLICY, "TLS not configured");
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        return opt_info_go(c, option, data, len);
    case NBD_OPT_STRUCTURED_REPLY:
        return opt_structured_reply(c, len);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta_context(c, option, data, len);
    default:
        return send_error(c, option, NBD_REP_ERR_UNSUP, "option not supported");
    }
}

static int greet(struct server_conn *c)
{
    uint8_t greeting[NBD_GREETING_SIZE], flags[4];
    nbd_encode_greeting(greeting, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (conn_write(c, greeting, sizeof(greeting)) < 0 || conn_read(c, flags, 4) < 0)
        return -1;
    uint32_t f;
    struct err e = { 0 };
    if (nbd_decode_client_flags(flags, &f, c->peer, &e) < 0) {
        conn_fail(c, "%s", e.msg);
        return -1;
    }
    c->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
    return 0;
}

int server_handshake(struct server_conn *c)
{
    if (greet(c) < 0)
        return -1;
    uint8_t *data = malloc(NBD_MAX_OPTION_LEN);
    if (!data) {
        conn_fail(c, "out of memory");
        return -1;
    }
    int ret = -1;
    for (int i = 0; i < MAX_OPTIONS; i++) {
        uint8_t hdr[NBD_OPTION_HEADER_SIZE];
        struct nbd_option o;
        struct err e = { 0 };
        if (conn_read(c, hdr, sizeof(hdr)) < 0)
            break;      /* gone between options: it asked what it wanted */
        if (nbd_decode_option(hdr, &o, c->peer, &e) < 0) {
            conn_fail(c, "%s", e.msg);
            break;
        }
        if (conn_read(c, data, o.length) < 0) {
            conn_fail(c, "the client went away in the middle of an option");
            break;
        }
        ret = handle_option(c, o.option, data, o.length);
        if (ret != 0)
            break;
        ret = -1;
        if (i == MAX_OPTIONS - 1)
            conn_fail(c, "more than %d options", MAX_OPTIONS);
    }
    free(data);
    return ret > 0 ? 0 : -1;
}
