/* The NBD client (nbd.h): the handshake, connections with a reader thread
 * that matches replies to requests by cookie, and the NBD transport.
 *
 * Concurrency: any thread may issue a request.  It takes a free slot of
 * the connection (waiting while NBD_MAX_INFLIGHT are in flight), sends
 * under send_mu and sleeps on the slot's condition; the reader thread is
 * the only one that reads the socket and completes slots.  When the
 * connection fails (EOF, protocol violation, timeout) the reader completes
 * every slot with the error and later requests fail at once. */
#include "nbd/nbd.h"
#include "nbd/extent-cache.h"
#include "nbd/proto.h"
#include "nbd/socket.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NBD_MAX_INFLIGHT  64
#define NBD_SPLIT_WINDOW  16        /* pieces of one split request in flight */
#define NBD_MAX_CONNS     16
#define NBD_MAX_CONTEXTS  32
#define NBD_EXTRA_CONN_TIMEOUT 2    /* seconds, for multi-conn's extra connections */
#define NBD_DEFAULT_MAX_BLOCK (32u << 20)   /* spec: without constraints, 32 MiB */
/* Reads and writes go out in requests of at most this size, however large
 * the caller's buffer: a request's payload then stays in the CPU's cache
 * (L2, 512 KiB to 2 MiB a core) between the copy in and the copy out, on
 * the server (file into its buffer, buffer into the socket) and here
 * (socket into the buffer).  2 MiB requests from qemu-nbd cost both sides
 * about twice the CPU time (4 GiB raw into a file, 2 CPUs: the server
 * ~2.0 s instead of ~0.9 s); nbdcopy's requests are 256 KiB. */
#define NBD_PIECE_SIZE    (512u << 10)
/* Zero and trim carry no payload: larger requests, aligned to 1 MiB. */
#define NBD_MAX_ZERO_LEN  (0xffffffffu & ~((1u << 20) - 1))

struct read_piece {
    uint64_t off, len;
};

struct nbd_slot {
    bool used, done;
    uint64_t cookie;
    struct nbd_request req;
    /* READ: where the data goes; coverage of the chunks received. */
    const struct iovec *iov;
    int iovcnt;
    uint64_t covered;
    struct read_piece *pieces;
    size_t npieces, cap_pieces;
    /* BLOCK_STATUS: the context wanted and the descriptors received. */
    uint32_t want_context;
    struct nbd_extent *ext;
    uint32_t maxext, next;
    bool got_status;
    /* Result. */
    int error;              /* positive errno */
    char msg[512];
    pthread_cond_t cond;
};

struct nbd_conn {
    int fd;
    const char *peer;
    unsigned timeout;
    bool structured;
    uint32_t ctx_id[NBD_MAX_CONTEXTS];
    bool ctx_ok[NBD_MAX_CONTEXTS];
    struct nbd_export_info info;
    pthread_t reader;
    bool reader_started;
    pthread_mutex_t mu;         /* slots, inflight, dead, last_activity */
    pthread_mutex_t send_mu;    /* one request on the wire at a time */
    pthread_cond_t slot_free;
    struct nbd_slot slots[NBD_MAX_INFLIGHT];
    unsigned inflight;
    uint64_t generation;
    time_t last_activity;
    bool dead;
    int dead_errno;
    char dead_msg[512];
    uint32_t max_payload;
};

struct nbd_transport {
    struct transport tp;
    char *uri_text;             /* as the user wrote it: names the peer in messages */
    char *canonical;            /* QEMU's spelling: tp.name */
    struct nbd_uri uri;
    struct nbd_conn *conns[NBD_MAX_CONNS];
    unsigned nconns;
    atomic_uint next_conn;
    bool writable;
    uint64_t size;
    uint16_t flags;
    uint32_t min_block, max_block;
    uint32_t request_size;      /* pieces of reads and writes (NBD_PIECE_SIZE) */
    /* Contexts: [0] base:allocation, then the extras asked for, then the
     * qemu: contexts the server lists (owned, from owned_from on). */
    const char *contexts[NBD_MAX_CONTEXTS];
    unsigned ncontexts, owned_from;
    struct nbd_extent_cache cache;
};

static struct nbd_transport *to_nbd(struct transport *t)
{
    return (struct nbd_transport *)t;
}

/* --- Connection failure --- */

static void complete_slot(struct nbd_conn *c, struct nbd_slot *s)
{
    s->done = true;
    pthread_cond_signal(&s->cond);
    (void)c;
}

/* Fail the connection and every request on it (called with c->mu held). */
static void fail_conn_locked(struct nbd_conn *c, int err, const char *msg)
{
    if (!c->dead) {
        c->dead = true;
        c->dead_errno = err;
        snprintf(c->dead_msg, sizeof(c->dead_msg), "%s", msg);
    }
    for (unsigned i = 0; i < NBD_MAX_INFLIGHT; i++) {
        struct nbd_slot *s = &c->slots[i];
        if (s->used && !s->done) {
            if (!s->error) {
                s->error = c->dead_errno;
                snprintf(s->msg, sizeof(s->msg), "%s", c->dead_msg);
            }
            complete_slot(c, s);
        }
    }
    pthread_cond_broadcast(&c->slot_free);
}

static void fail_conn(struct nbd_conn *c, int err, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    fail_conn_locked(c, err, msg);
    pthread_mutex_unlock(&c->mu);
    shutdown(c->fd, SHUT_RDWR);
}

/* --- The reader thread --- */

/* Wait for the next reply: an idle connection may stay silent forever, a
 * busy one at most c->timeout seconds since it last made progress. */
static int reader_read(struct nbd_conn *c, void *buf, size_t n, struct err *e)
{
    for (;;) {
        int ret = nbd_socket_read(c->fd, buf, 1, 1, c->peer, e);
        if (ret == 0)
            break;
        if (ret != -ETIMEDOUT)
            return ret;
        pthread_mutex_lock(&c->mu);
        bool expired = c->inflight > 0 && time(NULL) - c->last_activity >= (time_t)c->timeout;
        pthread_mutex_unlock(&c->mu);
        if (expired)
            return err_set(e, ETIMEDOUT, "%s: no reply from the server for %u s (timeout)",
                           c->peer, c->timeout);
    }
    int ret = n > 1 ? nbd_socket_read(c->fd, (uint8_t *)buf + 1, n - 1, c->timeout, c->peer, e)
                    : 0;
    pthread_mutex_lock(&c->mu);
    c->last_activity = time(NULL);
    pthread_mutex_unlock(&c->mu);
    return ret;
}

/* Read `len` bytes of payload into the slot's iovec at `skip`. */
static int read_into_iov(struct nbd_conn *c, struct nbd_slot *s, uint64_t skip, uint64_t len,
                         struct err *e)
{
    for (int i = 0; i < s->iovcnt && len; i++) {
        if (skip >= s->iov[i].iov_len) {
            skip -= s->iov[i].iov_len;
            continue;
        }
        size_t n = (size_t)min_u64(s->iov[i].iov_len - skip, len);
        int ret = nbd_socket_read(c->fd, (uint8_t *)s->iov[i].iov_base + skip, n, c->timeout,
                                  c->peer, e);
        if (ret < 0)
            return ret;
        len -= n;
        skip = 0;
    }
    return 0;
}

static void zero_iov(struct nbd_slot *s, uint64_t skip, uint64_t len)
{
    for (int i = 0; i < s->iovcnt && len; i++) {
        if (skip >= s->iov[i].iov_len) {
            skip -= s->iov[i].iov_len;
            continue;
        }
        size_t n = (size_t)min_u64(s->iov[i].iov_len - skip, len);
        memset((uint8_t *)s->iov[i].iov_base + skip, 0, n);
        len -= n;
        skip = 0;
    }
}

/* Data and hole chunks of a read must not overlap (spec: "the server MUST
 * NOT send chunks that overlap"); together they must cover the request. */
static int add_read_piece(struct nbd_conn *c, struct nbd_slot *s, uint64_t off, uint64_t len,
                          struct err *e)
{
    for (size_t i = 0; i < s->npieces; i++) {
        const struct read_piece *p = &s->pieces[i];
        if (off < p->off + p->len && p->off < off + len)
            return err_set(e, EPROTO, "%s: overlapping read reply chunks at offset %llu",
                           c->peer, (unsigned long long)(s->req.offset + off));
    }
    if (s->npieces == s->cap_pieces) {
        size_t cap = s->cap_pieces ? s->cap_pieces * 2 : 8;
        struct read_piece *np = realloc(s->pieces, cap * sizeof(*np));
        if (!np)
            return err_set(e, ENOMEM, "%s: out of memory", c->peer);
        s->pieces = np;
        s->cap_pieces = cap;
    }
    s->pieces[s->npieces++] = (struct read_piece){ off, len };
    s->covered += len;
    return 0;
}

static void slot_error(struct nbd_slot *s, int err, const char *peer, const char *detail)
{
    if (s->error)
        return;     /* the first error chunk is the one to report */
    s->error = err;
    snprintf(s->msg, sizeof(s->msg), "%s: %s at offset %llu failed: %s", peer,
             nbd_cmd_name(s->req.type), (unsigned long long)s->req.offset, detail);
}

static int handle_simple(struct nbd_conn *c, struct nbd_slot *s, const struct nbd_reply *r,
                         struct err *e)
{
    if (r->error) {
        slot_error(s, nbd_errno_from_wire(r->error), c->peer,
                   strerror(nbd_errno_from_wire(r->error)));
        return 0;
    }
    if (s->req.type == NBD_CMD_READ) {
        if (c->structured)
            return err_set(e, EPROTO, "%s: simple reply with data to a read after "
                           "structured replies were negotiated", c->peer);
        s->covered = s->req.length;
        return read_into_iov(c, s, 0, s->req.length, e);
    }
    if (s->req.type == NBD_CMD_BLOCK_STATUS)
        return err_set(e, EPROTO, "%s: simple reply without status to a block status "
                       "query", c->peer);
    return 0;
}

static int read_payload(struct nbd_conn *c, uint32_t len, uint8_t **out, struct err *e)
{
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", c->peer);
    int ret = nbd_socket_read(c->fd, buf, len, c->timeout, c->peer, e);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

static int handle_status_chunk(struct nbd_conn *c, struct nbd_slot *s, const uint8_t *p,
                               uint32_t len, uint64_t size, struct err *e)
{
    uint32_t id = len >= 4 ? be32_read(p) : 0;
    bool known = false;
    for (unsigned i = 0; i < NBD_MAX_CONTEXTS; i++)
        known |= c->ctx_ok[i] && c->ctx_id[i] == id;
    if (!known)
        return err_set(e, EPROTO, "%s: block status for context id %u, which was not "
                       "negotiated", c->peer, id);
    if (id != s->want_context)
        return 0;   /* a context we did not ask about in this request */
    if (s->got_status)
        return err_set(e, EPROTO, "%s: two block status chunks for one context", c->peer);
    uint32_t cid, count;
    int ret = nbd_decode_block_status(p, len, &s->req, size, &cid, s->ext, s->maxext, &count,
                                      c->peer, e);
    if (ret == 0) {
        s->next = count;
        s->got_status = true;
    }
    return ret;
}

static int handle_chunk(struct nbd_conn *c, struct nbd_slot *s, const struct nbd_reply *r,
                        uint64_t size, struct err *e)
{
    if (!c->structured)
        return err_set(e, EPROTO, "%s: structured reply chunk that was not negotiated",
                       c->peer);
    int ret = 0;
    uint8_t *p = NULL;
    if (r->type == NBD_REPLY_TYPE_OFFSET_DATA) {
        uint8_t hdr[8];
        uint64_t off;
        uint32_t n;
        if (r->length < 8)
            return err_set(e, EPROTO, "%s: data chunk of %u bytes", c->peer, r->length);
        if ((ret = nbd_socket_read(c->fd, hdr, 8, c->timeout, c->peer, e)) < 0 ||
            (ret = nbd_decode_offset_data(hdr, r->length, &s->req, &off, &n, c->peer, e)) < 0 ||
            (ret = add_read_piece(c, s, off, n, e)) < 0)
            return ret;
        return read_into_iov(c, s, off, n, e);
    }
    if (r->type == NBD_REPLY_TYPE_NONE)
        return 0;
    if ((ret = read_payload(c, r->length, &p, e)) < 0)
        return ret;
    if (r->type == NBD_REPLY_TYPE_OFFSET_HOLE) {
        uint64_t off;
        uint32_t n;
        if ((ret = nbd_decode_offset_hole(p, r->length, &s->req, &off, &n, c->peer, e)) == 0 &&
            (ret = add_read_piece(c, s, off, n, e)) == 0)
            zero_iov(s, off, n);
    } else if (r->type == NBD_REPLY_TYPE_BLOCK_STATUS) {
        ret = handle_status_chunk(c, s, p, r->length, size, e);
    } else if (NBD_REPLY_TYPE_IS_ERROR(r->type)) {
        struct nbd_chunk_error ce;
        uint16_t t = r->type == NBD_REPLY_TYPE_ERROR_OFFSET ? r->type : NBD_REPLY_TYPE_ERROR;
        if ((ret = nbd_decode_chunk_error(p, r->length, t, &s->req, &ce, c->peer, e)) == 0) {
            int err = nbd_errno_from_wire(ce.error);
            char detail[384];
            snprintf(detail, sizeof(detail), "%s%s%s", strerror(err), ce.message[0] ? ": " : "",
                     ce.message);
            slot_error(s, err, c->peer, detail);
        }
    } else {
        ret = err_set(e, EPROTO, "%s: unknown reply chunk type %u", c->peer, r->type);
    }
    free(p);
    return ret;
}

/* The request is answered: check that a successful one got what it needs. */
static int finish_slot(struct nbd_conn *c, struct nbd_slot *s, struct err *e)
{
    if (s->error)
        return 0;
    if (s->req.type == NBD_CMD_READ && s->covered != s->req.length)
        return err_set(e, EPROTO, "%s: read reply covers %llu of %u bytes", c->peer,
                       (unsigned long long)s->covered, s->req.length);
    if (s->req.type == NBD_CMD_BLOCK_STATUS && !s->got_status)
        return err_set(e, EPROTO, "%s: block status reply without the context asked for",
                       c->peer);
    return 0;
}

static struct nbd_slot *find_slot(struct nbd_conn *c, uint64_t cookie)
{
    struct nbd_slot *s = &c->slots[cookie % NBD_MAX_INFLIGHT];
    pthread_mutex_lock(&c->mu);
    bool ok = s->used && !s->done && s->cookie == cookie;
    pthread_mutex_unlock(&c->mu);
    return ok ? s : NULL;
}

static int read_one_reply(struct nbd_conn *c, uint64_t size, struct err *e)
{
    uint8_t h[NBD_CHUNK_HEADER_SIZE];
    int ret = reader_read(c, h, 4, e);
    if (ret < 0)
        return ret;
    size_t hs = nbd_reply_header_size(h, c->peer, e);
    if (hs == 0)
        return -EPROTO;
    if ((ret = nbd_socket_read(c->fd, h + 4, hs - 4, c->timeout, c->peer, e)) < 0)
        return ret;
    struct nbd_reply r;
    if ((ret = nbd_decode_reply_header(h, hs, c->max_payload, &r, c->peer, e)) < 0)
        return ret;
    struct nbd_slot *s = find_slot(c, r.cookie);
    if (!s)
        return err_set(e, EPROTO, "%s: reply for a request that was not sent (cookie %llu)",
                       c->peer, (unsigned long long)r.cookie);
    ret = r.structured ? handle_chunk(c, s, &r, size, e) : handle_simple(c, s, &r, e);
    if (ret == 0 && (r.flags & NBD_REPLY_FLAG_DONE))
        ret = finish_slot(c, s, e);
    if (ret < 0)
        return ret;
    if (r.flags & NBD_REPLY_FLAG_DONE) {
        pthread_mutex_lock(&c->mu);
        complete_slot(c, s);
        pthread_mutex_unlock(&c->mu);
    }
    return 0;
}

static void *reader_main(void *arg)
{
    struct nbd_conn *c = arg;
    struct err e = { 0 };
    for (;;) {
        int ret = read_one_reply(c, c->info.size, &e);
        if (ret < 0) {
            fail_conn(c, -ret, e.msg);
            return NULL;
        }
    }
}

/* --- Issuing requests --- */

/* A free slot of c, waiting for one while all are in flight (or, unless
 * `wait`, returning NULL at once; *busy then says why).  NULL when the
 * connection failed.  A caller that holds slots whose replies it has not
 * collected must not wait: it could wait for its own slots forever. */
static struct nbd_slot *take_slot_if(struct nbd_conn *c, bool wait, bool *busy)
{
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (busy)
            *busy = false;
        if (c->dead) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        if (c->inflight < NBD_MAX_INFLIGHT)
            break;
        if (!wait) {
            *busy = true;
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        pthread_cond_wait(&c->slot_free, &c->mu);
    }
    struct nbd_slot *s = NULL;
    for (unsigned i = 0; i < NBD_MAX_INFLIGHT; i++)
        if (!c->slots[i].used) {
            s = &c->slots[i];
            c->generation++;
            /* cookie % NBD_MAX_INFLIGHT is the slot's index */
            s->cookie = c->generation * NBD_MAX_INFLIGHT + i;
            break;
        }
    s->used = true;
    s->done = false;
    s->error = 0;
    s->msg[0] = '\0';
    s->covered = 0;
    s->npieces = 0;
    s->got_status = false;
    s->next = 0;
    c->inflight++;
    if (c->inflight == 1)
        c->last_activity = time(NULL);
    pthread_mutex_unlock(&c->mu);
    return s;
}

static struct nbd_slot *take_slot(struct nbd_conn *c)
{
    return take_slot_if(c, true, NULL);
}

static void release_slot(struct nbd_conn *c, struct nbd_slot *s)
{
    pthread_mutex_lock(&c->mu);
    s->used = false;
    c->inflight--;
    pthread_cond_signal(&c->slot_free);
    pthread_mutex_unlock(&c->mu);
}

static int conn_dead_error(struct nbd_conn *c, struct err *e)
{
    pthread_mutex_lock(&c->mu);
    int err = c->dead_errno ? c->dead_errno : EIO;
    err_set(e, err, "%s", c->dead_msg[0] ? c->dead_msg : "connection failed");
    pthread_mutex_unlock(&c->mu);
    return -err;
}

/* Send the request of slot `s` (prepared by the caller through take_slot),
 * with `payload` for writes.  Whatever happens, the slot completes: a
 * failed send fails the connection and every slot on it. */
static void send_request(struct nbd_conn *c, struct nbd_slot *s, const struct iovec *payload,
                         int npayload)
{
    uint8_t hdr[NBD_REQUEST_SIZE];
    s->req.cookie = s->cookie;
    nbd_encode_request(hdr, &s->req);
    struct iovec iov[1 + 64];
    int n = 0;
    iov[n++] = (struct iovec){ hdr, sizeof(hdr) };
    for (int i = 0; i < npayload && n < 65; i++)
        iov[n++] = payload[i];
    struct err se = { 0 };
    pthread_mutex_lock(&c->send_mu);
    int ret = nbd_socket_writev(c->fd, iov, n, c->peer, &se);
    pthread_mutex_unlock(&c->send_mu);
    if (ret < 0) {
        fail_conn(c, -ret, se.msg);
    } else {
        pthread_mutex_lock(&c->mu);
        c->last_activity = time(NULL);
        pthread_mutex_unlock(&c->mu);
    }
}

/* Wait for the reply of a sent request, collect its result, free the slot. */
static int wait_request(struct nbd_conn *c, struct nbd_slot *s, struct err *e)
{
    pthread_mutex_lock(&c->mu);
    while (!s->done)
        pthread_cond_wait(&s->cond, &c->mu);
    pthread_mutex_unlock(&c->mu);
    int ret = s->error ? err_set(e, s->error, "%s", s->msg) : 0;
    release_slot(c, s);
    return ret;
}

static int run_request(struct nbd_conn *c, struct nbd_slot *s, const struct iovec *payload,
                       int npayload, struct err *e)
{
    send_request(c, s, payload, npayload);
    return wait_request(c, s, e);
}

static struct nbd_conn *pick_conn(struct nbd_transport *nt)
{
    unsigned i = atomic_fetch_add(&nt->next_conn, 1);
    return nt->conns[i % nt->nconns];
}

static void cache_invalidate(struct nbd_transport *nt);

/* A request with no reply data.  Those that change the export forget the
 * cached block status before they are sent and again when they are done,
 * so that no reply to a query that overlapped them stays cached. */
static int simple_request(struct nbd_transport *nt, uint16_t type, uint16_t flags,
                          uint64_t off, uint32_t len, const struct iovec *payload,
                          int npayload, struct err *e)
{
    bool changes = type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES ||
                   type == NBD_CMD_TRIM;
    if (changes)
        cache_invalidate(nt);
    struct nbd_conn *c = pick_conn(nt);
    struct nbd_slot *s = take_slot(c);
    if (!s)
        return conn_dead_error(c, e);
    s->req = (struct nbd_request){ .flags = flags, .type = type, .offset = off,
                                   .length = len };
    int ret = run_request(c, s, payload, npayload, e);
    if (changes)
        cache_invalidate(nt);
    return ret;
}

/* --- Handshake --- */

static int send_option(struct nbd_conn *c, uint32_t opt, const struct nbd_buf *data,
                       struct err *e)
{
    if (data && data->failed)
        return err_set(e, ENOMEM, "%s: out of memory", c->peer);
    uint8_t h[NBD_OPTION_HEADER_SIZE];
    nbd_encode_option(h, opt, data ? (uint32_t)data->len : 0);
    struct iovec iov[2] = { { h, sizeof(h) }, { data ? data->data : NULL, data ? data->len : 0 } };
    return nbd_socket_writev(c->fd, iov, data && data->len ? 2 : 1, c->peer, e);
}

/* One option reply: header plus its payload (malloc'ed, NUL-padded). */
static int read_option_reply(struct nbd_conn *c, uint32_t opt, struct nbd_option_reply *r,
                             uint8_t **payload, struct err *e)
{
    uint8_t h[NBD_OPTION_REPLY_SIZE];
    int ret = nbd_socket_read(c->fd, h, sizeof(h), c->timeout, c->peer, e);
    if (ret < 0 || (ret = nbd_decode_option_reply(h, opt, r, c->peer, e)) < 0)
        return ret;
    *payload = calloc(1, r->length + 1);
    if (!*payload)
        return err_set(e, ENOMEM, "%s: out of memory", c->peer);
    if ((ret = nbd_socket_read(c->fd, *payload, r->length, c->timeout, c->peer, e)) < 0) {
        free(*payload);
        *payload = NULL;
    }
    return ret;
}

static int option_error(struct nbd_conn *c, uint32_t opt, const struct nbd_option_reply *r,
                        const uint8_t *p, const char *export_name, struct err *e)
{
    char msg[256];
    nbd_decode_rep_error_message(p, r->length, msg, sizeof(msg));
    const char *sep = msg[0] ? ": " : "";
    if (r->type == NBD_REP_ERR_UNKNOWN)
        return err_set(e, ENOENT, "%s: the server has no export '%s'%s%s", c->peer,
                       export_name, sep, msg);
    if (r->type == NBD_REP_ERR_TLS_REQD)
        return err_set(e, EACCES, "%s: the server requires TLS, which imgtool does not "
                       "speak; bridge it with a local proxy (e.g. nbdkit -U SOCK nbd "
                       "uri=nbds://... tls=require, or stunnel)%s%s", c->peer, sep, msg);
    if (!(r->type & NBD_REP_ERR_BIT))
        return err_set(e, EPROTO, "%s: unexpected reply %u to %s", c->peer, r->type,
                       nbd_option_name(opt));
    return err_set(e, r->type == NBD_REP_ERR_POLICY ? EACCES : EIO, "%s: %s refused (%s)%s%s",
                   c->peer, nbd_option_name(opt), nbd_rep_name(r->type), sep, msg);
}

static int negotiate_structured(struct nbd_conn *c, struct err *e)
{
    int ret = send_option(c, NBD_OPT_STRUCTURED_REPLY, NULL, e);
    struct nbd_option_reply r;
    uint8_t *p = NULL;
    if (ret < 0 || (ret = read_option_reply(c, NBD_OPT_STRUCTURED_REPLY, &r, &p, e)) < 0)
        return ret;
    free(p);
    if (r.type == NBD_REP_ACK) {
        if (r.length)
            return err_set(e, EPROTO, "%s: NBD_REP_ACK with %u bytes", c->peer, r.length);
        c->structured = true;
    } else if (!(r.type & NBD_REP_ERR_BIT)) {
        return err_set(e, EPROTO, "%s: unexpected reply %u to NBD_OPT_STRUCTURED_REPLY",
                       c->peer, r.type);
    }
    return 0;
}

/* NBD_OPT_SET_META_CONTEXT (or LIST with names == NULL queries): the
 * replies until NBD_REP_ACK.  For SET, each returned name must be one we
 * asked for; for LIST, `list` collects them. */
static int meta_context_exchange(struct nbd_conn *c, uint32_t opt, const char *export_name,
                                 const char *const *queries, unsigned nq, char ***list,
                                 size_t *nlist, struct err *e)
{
    struct nbd_buf b = { 0 };
    nbd_encode_meta_request(&b, export_name, queries, nq);
    int ret = send_option(c, opt, &b, e);
    nbd_buf_free(&b);
    for (unsigned replies = 0; ret == 0; replies++) {
        struct nbd_option_reply r;
        uint8_t *p = NULL;
        if ((ret = read_option_reply(c, opt, &r, &p, e)) < 0)
            break;
        if (r.type == NBD_REP_ACK || (r.type & NBD_REP_ERR_BIT)) {
            if (r.type != NBD_REP_ACK && r.type != NBD_REP_ERR_UNSUP)
                ret = option_error(c, opt, &r, p, export_name, e);
            free(p);
            break;
        }
        uint32_t id;
        char *name = NULL;
        if (r.type != NBD_REP_META_CONTEXT || replies >= 4096)
            ret = err_set(e, EPROTO, "%s: unexpected reply %u to %s", c->peer, r.type,
                          nbd_option_name(opt));
        else
            ret = nbd_decode_rep_meta_context(p, r.length, &id, &name, c->peer, e);
        free(p);
        if (ret < 0)
            break;
        if (list) {
            char **nl = realloc(*list, sizeof(*nl) * (*nlist + 2));
            if (!nl) {
                free(name);
                ret = err_set(e, ENOMEM, "out of memory");
                break;
            }
            *list = nl;
            nl[(*nlist)++] = name;
            nl[*nlist] = NULL;
            continue;
        }
        unsigned i = 0;
        while (i < nq && strcmp(queries[i], name) != 0)
            i++;
        if (i == nq)
            ret = err_set(e, EPROTO, "%s: the server agreed to context '%s', which was not "
                          "asked for", c->peer, name);
        else {
            c->ctx_ok[i] = true;
            c->ctx_id[i] = id;
        }
        free(name);
    }
    return ret;
}

static int negotiate_go(struct nbd_conn *c, const char *export_name, struct err *e)
{
    uint16_t want[] = { NBD_INFO_BLOCK_SIZE };
    struct nbd_buf b = { 0 };
    nbd_encode_go(&b, export_name, want, 1);
    int ret = send_option(c, NBD_OPT_GO, &b, e);
    nbd_buf_free(&b);
    for (unsigned replies = 0; ret == 0; replies++) {
        struct nbd_option_reply r;
        uint8_t *p = NULL;
        if ((ret = read_option_reply(c, NBD_OPT_GO, &r, &p, e)) < 0)
            break;
        if (r.type == NBD_REP_INFO && replies < 4096) {
            ret = nbd_decode_info(p, r.length, &c->info, c->peer, e);
        } else if (r.type == NBD_REP_ACK) {
            if (!c->info.have_export)
                ret = err_set(e, EPROTO, "%s: NBD_OPT_GO acknowledged without "
                              "NBD_INFO_EXPORT", c->peer);
            free(p);
            return ret;
        } else {
            ret = option_error(c, NBD_OPT_GO, &r, p, export_name, e);
        }
        free(p);
    }
    return ret;
}

static int handshake(struct nbd_conn *c, const char *export_name, const char *const *contexts,
                     unsigned ncontexts, bool want_list, char ***list, size_t *nlist,
                     struct err *e)
{
    uint8_t g[NBD_GREETING_SIZE];
    uint16_t sflags;
    int ret = nbd_socket_read(c->fd, g, sizeof(g), c->timeout, c->peer, e);
    if (ret < 0 || (ret = nbd_decode_greeting(g, &sflags, c->peer, e)) < 0)
        return ret;
    uint8_t cf[4];
    be32_write(cf, NBD_FLAG_C_FIXED_NEWSTYLE | (sflags & NBD_FLAG_NO_ZEROES ?
                                                NBD_FLAG_C_NO_ZEROES : 0));
    if ((ret = nbd_socket_write(c->fd, cf, 4, c->peer, e)) < 0 ||
        (ret = negotiate_structured(c, e)) < 0)
        return ret;
    if (want_list) {
        if (!c->structured)
            return err_set(e, ENOTSUP, "%s: the server has no meta contexts (no structured "
                           "replies)", c->peer);
        return meta_context_exchange(c, NBD_OPT_LIST_META_CONTEXT, export_name, NULL, 0, list,
                                     nlist, e);
    }
    if (c->structured && ncontexts &&
        (ret = meta_context_exchange(c, NBD_OPT_SET_META_CONTEXT, export_name, contexts,
                                     ncontexts, NULL, NULL, e)) < 0)
        return ret;
    return negotiate_go(c, export_name, e);
}

static void conn_free(struct nbd_conn *c)
{
    if (!c)
        return;
    if (c->reader_started) {
        pthread_mutex_lock(&c->mu);
        bool dead = c->dead;
        pthread_mutex_unlock(&c->mu);
        if (!dead) {
            /* NBD_CMD_DISC: the soft disconnect; no reply comes. */
            uint8_t hdr[NBD_REQUEST_SIZE];
            struct nbd_request r = { .type = NBD_CMD_DISC };
            struct err ignored;
            nbd_encode_request(hdr, &r);
            pthread_mutex_lock(&c->send_mu);
            nbd_socket_write(c->fd, hdr, sizeof(hdr), c->peer, &ignored);
            pthread_mutex_unlock(&c->send_mu);
            pthread_mutex_lock(&c->mu);
            c->dead = true;
            snprintf(c->dead_msg, sizeof(c->dead_msg), "%s: disconnected", c->peer);
            pthread_mutex_unlock(&c->mu);
        }
        shutdown(c->fd, SHUT_RDWR);
        pthread_join(c->reader, NULL);
    }
    if (c->fd >= 0)
        close(c->fd);
    for (unsigned i = 0; i < NBD_MAX_INFLIGHT; i++) {
        pthread_cond_destroy(&c->slots[i].cond);
        free(c->slots[i].pieces);
    }
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->send_mu);
    pthread_cond_destroy(&c->slot_free);
    nbd_export_info_free(&c->info);
    free(c);
}

static int conn_open(const struct nbd_uri *u, const char *peer, unsigned timeout,
                     const char *const *contexts, unsigned ncontexts, bool want_list,
                     char ***list, size_t *nlist, struct nbd_conn **out, struct err *e)
{
    struct nbd_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return err_set(e, ENOMEM, "%s: out of memory", peer);
    c->fd = -1;
    c->peer = peer;
    c->timeout = timeout;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->send_mu, NULL);
    pthread_cond_init(&c->slot_free, NULL);
    for (unsigned i = 0; i < NBD_MAX_INFLIGHT; i++)
        pthread_cond_init(&c->slots[i].cond, NULL);
    int ret = nbd_socket_connect(u, timeout, peer, e);
    if (ret >= 0) {
        c->fd = ret;
        ret = handshake(c, u->export_name, contexts, ncontexts, want_list, list, nlist, e);
    }
    if (ret < 0) {
        conn_free(c);
        return ret;
    }
    *out = c;
    return 0;
}

static int conn_start(struct nbd_conn *c, uint32_t max_payload, struct err *e)
{
    c->max_payload = max_payload;
    c->last_activity = time(NULL);
    int ret = pthread_create(&c->reader, NULL, reader_main, c);
    if (ret != 0)
        return err_errno(e, ret, "%s: cannot start the reader thread", c->peer);
    c->reader_started = true;
    return 0;
}

/* The contexts to ask for: base:allocation, the extras of the options,
 * and every qemu: context the server lists for the export (its dirty
 * bitmaps and allocation depth), so that the transport can offer the
 * export's bitmaps without knowing their names in advance. */
static int discover_contexts(struct nbd_transport *nt, unsigned timeout, struct err *e)
{
    struct nbd_conn *c;
    char **names = NULL;
    size_t n = 0;
    int ret = conn_open(&nt->uri, nt->uri_text, timeout, NULL, 0, true, &names, &n, &c, e);
    if (ret == -ENOTSUP) {
        err_clear(e);       /* no structured replies: no contexts at all */
        return 0;
    }
    if (ret < 0)
        return ret;
    struct err ignored;
    send_option(c, NBD_OPT_ABORT, NULL, &ignored);
    conn_free(c);
    for (size_t i = 0; i < n; i++) {
        bool have = false;
        for (unsigned j = 0; j < nt->ncontexts; j++)
            have |= strcmp(nt->contexts[j], names[i]) == 0;
        if (!have && strncmp(names[i], "qemu:", 5) == 0 && nt->ncontexts < NBD_MAX_CONTEXTS) {
            nt->contexts[nt->ncontexts++] = names[i];
            names[i] = NULL;
        }
        free(names[i]);
    }
    free(names);
    return 0;
}

/* --- The transport --- */

static void nbd_tp_close(struct transport *t)
{
    struct nbd_transport *nt = to_nbd(t);
    for (unsigned i = 0; i < nt->nconns; i++)
        conn_free(nt->conns[i]);
    nbd_extent_cache_destroy(&nt->cache);
    for (unsigned i = nt->owned_from; i < nt->ncontexts; i++)
        free((char *)nt->contexts[i]);
    nbd_uri_free(&nt->uri);
    free(nt->uri_text);
    free(nt->canonical);
    free(nt);
}

static void cache_invalidate(struct nbd_transport *nt)
{
    nbd_extent_cache_invalidate(&nt->cache);
}

/* An iovec for [skip, skip + len) of iov (malloc'ed array). */
static struct iovec *iov_slice(const struct iovec *iov, int iovcnt, uint64_t skip, uint64_t len,
                               int *n)
{
    struct iovec *out = malloc(sizeof(*out) * (size_t)(iovcnt ? iovcnt : 1));
    *n = 0;
    if (!out)
        return NULL;
    for (int i = 0; i < iovcnt && len; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        size_t m = (size_t)min_u64(iov[i].iov_len - skip, len);
        out[(*n)++] = (struct iovec){ (uint8_t *)iov[i].iov_base + skip, m };
        len -= m;
        skip = 0;
    }
    return out;
}

/* One piece of a split request, in flight. */
struct split_piece {
    struct nbd_conn *c;
    struct nbd_slot *s;
    struct iovec *part;         /* malloc'ed slice of the caller's iovec, or NULL */
};

/* Send the piece [off+done, off+done+n) of a READ or WRITE; false when no
 * slot is free without waiting (`wait` false) or the connection failed
 * (*ret < 0 then). */
static bool send_piece(struct nbd_transport *nt, uint16_t type, uint64_t off,
                       const struct iovec *iov, int iovcnt, uint64_t done, uint32_t n,
                       bool whole, bool wait, struct split_piece *p, int *ret, struct err *e)
{
    int cnt = iovcnt;
    p->part = NULL;
    if (!whole && !(p->part = iov_slice(iov, iovcnt, done, n, &cnt))) {
        *ret = err_set(e, ENOMEM, "out of memory");
        return false;
    }
    const struct iovec *v = p->part ? p->part : iov;
    if (type == NBD_CMD_WRITE && cnt > 64) {
        *ret = err_set(e, EINVAL, "%s: too many buffers in one write", nt->uri_text);
        free(p->part);
        return false;
    }
    bool busy;
    p->c = pick_conn(nt);
    p->s = take_slot_if(p->c, wait, &busy);
    if (!p->s) {
        if (!busy)
            *ret = conn_dead_error(p->c, e);
        free(p->part);
        return false;
    }
    p->s->req = (struct nbd_request){ .type = type, .offset = off + done, .length = n };
    if (type == NBD_CMD_READ) {
        p->s->iov = v;
        p->s->iovcnt = cnt;
    }
    send_request(p->c, p->s, type == NBD_CMD_WRITE ? v : NULL, type == NBD_CMD_WRITE ? cnt : 0);
    return true;
}

/* A READ or WRITE of len bytes at off (aligned to the minimum block size):
 * requests of at most request_size (within the server's maximum), up to
 * NBD_SPLIT_WINDOW of them in flight at once (spread over the connections)
 * rather than one round trip after the other.  The first error is
 * returned once every piece sent has been answered. */
static int split_request(struct nbd_transport *nt, uint16_t type, uint64_t off,
                         const struct iovec *iov, int iovcnt, uint64_t len, struct err *e)
{
    struct split_piece win[NBD_SPLIT_WINDOW];
    unsigned head = 0, count = 0;
    uint64_t done = 0;
    int ret = 0;
    if (type == NBD_CMD_WRITE)
        cache_invalidate(nt);
    while ((done < len && ret == 0) || count) {
        if (done < len && ret == 0 && count < NBD_SPLIT_WINDOW) {
            uint32_t n = (uint32_t)min_u64(len - done, nt->request_size);
            struct split_piece *p = &win[(head + count) % NBD_SPLIT_WINDOW];
            /* Holding slots, never wait for one: collect a reply instead. */
            if (send_piece(nt, type, off, iov, iovcnt, done, n, n == len, count == 0, p, &ret,
                           e)) {
                count++;
                done += n;
                continue;
            }
            if (ret < 0 || count == 0)
                continue;
        }
        struct split_piece *p = &win[head];
        struct err pe = { 0 };
        int r = wait_request(p->c, p->s, ret < 0 ? &pe : e);
        free(p->part);
        if (r < 0 && ret == 0)
            ret = r;
        head = (head + 1) % NBD_SPLIT_WINDOW;
        count--;
    }
    if (type == NBD_CMD_WRITE)
        cache_invalidate(nt);
    return ret;
}

static bool is_aligned(const struct nbd_transport *nt, uint64_t off, uint64_t len)
{
    return off % nt->min_block == 0 && len % nt->min_block == 0;
}

/* Below the server's minimum block size: whole blocks through a bounce
 * buffer (NBD_INFO_BLOCK_SIZE; the export's size is a multiple of it). */
static int bounce_range(struct nbd_transport *nt, uint64_t off, uint64_t len,
                        uint64_t *aoff, uint64_t *alen, uint8_t **buf, struct err *e)
{
    *aoff = align_down(off, nt->min_block);
    uint64_t end = min_u64(align_up(off + len, nt->min_block), nt->size);
    *alen = end - *aoff;
    *buf = malloc(*alen ? *alen : 1);
    if (!*buf)
        return err_set(e, ENOMEM, "out of memory");
    return 0;
}

static int nbd_tp_preadv(struct transport *t, uint64_t off, const struct iovec *iov,
                         int iovcnt, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    uint64_t len = iov_size(iov, iovcnt);
    if (len == 0)
        return 0;
    if (is_aligned(nt, off, len))
        return split_request(nt, NBD_CMD_READ, off, iov, iovcnt, len, e);
    uint64_t aoff, alen;
    uint8_t *buf;
    int ret = bounce_range(nt, off, len, &aoff, &alen, &buf, e);
    if (ret < 0)
        return ret;
    struct iovec b = { buf, alen };
    if ((ret = split_request(nt, NBD_CMD_READ, aoff, &b, 1, alen, e)) == 0) {
        uint64_t skip = off - aoff;
        for (int i = 0; i < iovcnt; i++) {
            memcpy(iov[i].iov_base, buf + skip, iov[i].iov_len);
            skip += iov[i].iov_len;
        }
    }
    free(buf);
    return ret;
}

static int check_writable(struct nbd_transport *nt, struct err *e)
{
    if (!nt->writable)
        return err_set(e, EROFS, "%s: opened read-only", nt->uri_text);
    return 0;
}

static int nbd_tp_pwritev(struct transport *t, uint64_t off, const struct iovec *iov,
                          int iovcnt, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    int ret = check_writable(nt, e);
    if (ret < 0)
        return ret;
    uint64_t len = iov_size(iov, iovcnt);
    if (len == 0)
        return 0;
    if (is_aligned(nt, off, len))
        return split_request(nt, NBD_CMD_WRITE, off, iov, iovcnt, len, e);
    /* Read-modify-write of the partial blocks at both ends.  Overlapping
     * writes are serialised above us (blockdev.h), so the blocks read
     * here do not change before they are written back. */
    uint64_t aoff, alen;
    uint8_t *buf;
    if ((ret = bounce_range(nt, off, len, &aoff, &alen, &buf, e)) < 0)
        return ret;
    struct iovec head = { buf, nt->min_block };
    struct iovec tail = { buf + alen - nt->min_block, nt->min_block };
    ret = split_request(nt, NBD_CMD_READ, aoff, &head, 1, nt->min_block, e);
    if (ret == 0 && alen > nt->min_block)
        ret = split_request(nt, NBD_CMD_READ, aoff + alen - nt->min_block, &tail, 1,
                            nt->min_block, e);
    if (ret == 0) {
        uint64_t skip = off - aoff;
        for (int i = 0; i < iovcnt; i++) {
            memcpy(buf + skip, iov[i].iov_base, iov[i].iov_len);
            skip += iov[i].iov_len;
        }
        struct iovec b = { buf, alen };
        ret = split_request(nt, NBD_CMD_WRITE, aoff, &b, 1, alen, e);
    }
    free(buf);
    return ret;
}

static int write_zero_buffers(struct nbd_transport *nt, uint64_t off, uint64_t len,
                              struct err *e)
{
    size_t chunk = (size_t)min_u64(nt->max_block, 1u << 20);
    uint8_t *z = calloc(1, chunk);
    if (!z)
        return err_set(e, ENOMEM, "out of memory");
    int ret = 0;
    for (uint64_t done = 0; done < len && ret == 0;) {
        size_t n = (size_t)min_u64(len - done, chunk);
        struct iovec v = { z, n };
        ret = nbd_tp_pwritev(&nt->tp, off + done, &v, 1, e);
        done += n;
    }
    free(z);
    return ret;
}

/* Zero and trim: requests without payload, split and aligned. */
static int ranged_command(struct nbd_transport *nt, uint16_t type, uint16_t flags, uint64_t off,
                          uint64_t len, struct err *e)
{
    uint32_t maxlen = (uint32_t)align_down(NBD_MAX_ZERO_LEN, nt->min_block);
    for (uint64_t done = 0; done < len;) {
        uint32_t n = (uint32_t)min_u64(len - done, maxlen);
        int ret = simple_request(nt, type, flags, off + done, n, NULL, 0, e);
        if (ret < 0)
            return ret;
        done += n;
    }
    return 0;
}

static int nbd_tp_write_zeroes(struct transport *t, uint64_t off, uint64_t len, unsigned flags,
                               struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    int ret = check_writable(nt, e);
    if (ret < 0 || len == 0)
        return ret;
    bool fast = flags & TRANSPORT_ZERO_FAST;
    if (!(nt->flags & NBD_FLAG_SEND_WRITE_ZEROES) ||
        (fast && !(nt->flags & NBD_FLAG_SEND_FAST_ZERO))) {
        if (fast)
            return err_set(e, ENOTSUP, "%s: the server cannot zero fast", nt->uri_text);
        return write_zero_buffers(nt, off, len, e);
    }
    /* Unaligned edges are written as data; the middle is zeroed.  A fast
     * zero writes no data at all, or fails. */
    uint64_t a = align_up(off, nt->min_block), b = align_down(off + len, nt->min_block);
    if (fast && (a != off || b != off + len))
        return err_set(e, ENOTSUP, "%s: cannot zero a range that is not aligned to %u bytes "
                       "fast", nt->uri_text, nt->min_block);
    if (a >= b)
        return write_zero_buffers(nt, off, len, e);
    if (a > off && (ret = write_zero_buffers(nt, off, a - off, e)) < 0)
        return ret;
    uint16_t cf = (flags & TRANSPORT_ZERO_MAY_UNMAP ? 0 : NBD_CMD_FLAG_NO_HOLE) |
                  (fast ? NBD_CMD_FLAG_FAST_ZERO : 0);
    if ((ret = ranged_command(nt, NBD_CMD_WRITE_ZEROES, cf, a, b - a, e)) < 0)
        return ret;
    if (off + len > b)
        ret = write_zero_buffers(nt, b, off + len - b, e);
    return ret;
}

static int nbd_tp_discard(struct transport *t, uint64_t off, uint64_t len, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    int ret = check_writable(nt, e);
    if (ret < 0 || !(nt->flags & NBD_FLAG_SEND_TRIM))
        return ret;     /* discard is a hint */
    uint64_t a = align_up(off, nt->min_block), b = align_down(off + len, nt->min_block);
    return a < b ? ranged_command(nt, NBD_CMD_TRIM, 0, a, b - a, e) : 0;
}

static int nbd_tp_flush(struct transport *t, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    if (!nt->writable || !(nt->flags & NBD_FLAG_SEND_FLUSH))
        return 0;
    /* With multi-conn, a flush on one connection covers the writes
     * completed on all of them (NBD_FLAG_CAN_MULTI_CONN). */
    return simple_request(nt, NBD_CMD_FLUSH, 0, 0, 0, NULL, 0, e);
}

static int nbd_tp_size(struct transport *t, uint64_t *size, struct err *e)
{
    (void)e;
    *size = to_nbd(t)->size;
    return 0;
}

static int nbd_tp_truncate(struct transport *t, uint64_t size, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    if (size == nt->size)
        return 0;
    return err_set(e, ENOTSUP, "%s: an NBD export cannot be resized", nt->uri_text);
}

static int context_index(struct nbd_transport *nt, const char *name)
{
    for (unsigned i = 0; i < nt->ncontexts; i++)
        if (strcmp(nt->contexts[i], name) == 0)
            return nt->conns[0]->ctx_ok[i] ? (int)i : -1;
    return -1;
}

/* Ask the server about `off` for context `ci`: the descriptor at `off`
 * answers (flags, run), and the whole reply goes into the cache. */
static int query_status(struct nbd_transport *nt, int ci, uint64_t off, uint64_t bytes,
                        uint32_t *flags, uint64_t *run, struct err *e)
{
    struct nbd_conn *c = pick_conn(nt);
    struct nbd_extent *ext = malloc(sizeof(*ext) * NBD_CACHE_EXTENTS);
    if (!ext)
        return err_set(e, ENOMEM, "out of memory");
    struct nbd_slot *s = take_slot(c);
    if (!s) {
        free(ext);
        return conn_dead_error(c, e);
    }
    /* Not just `bytes`: as much as one request can cover (to the end of
     * the export), so that the extents after this one come in the same
     * reply.  A walk over the export (a copy, map, the runs of a dirty
     * bitmap) then costs one round trip per reply, not one per extent
     * (each dirty range of an incremental backup would otherwise pay
     * one).  The server may answer with less (proto.md). */
    uint32_t len = (uint32_t)min_u64(nt->size - off, align_down(0xffffffffu, nt->min_block));
    s->req = (struct nbd_request){ .type = NBD_CMD_BLOCK_STATUS, .offset = off, .length = len };
    s->want_context = c->ctx_id[ci];
    s->ext = ext;
    s->maxext = NBD_CACHE_EXTENTS;
    uint64_t generation = nbd_extent_cache_generation(&nt->cache);
    int ret = run_request(c, s, NULL, 0, e);
    /* The decoder checked that the descriptors start at `off` and that
     * there is at least one. */
    if (ret == 0) {
        *flags = ext[0].flags;
        *run = min_u64(ext[0].length, bytes);
    }
    if (ret == 0 && nbd_extent_cache_store(&nt->cache, generation, ci, off, ext, s->next) < 0)
        ret = err_set(e, ENOMEM, "out of memory");
    free(ext);
    return ret;
}

static int context_status(struct nbd_transport *nt, int ci, uint64_t off, uint64_t bytes,
                          uint32_t *flags, uint64_t *run, struct err *e)
{
    if (off >= nt->size || bytes == 0)
        return err_set(e, EINVAL, "%s: block status beyond the end", nt->uri_text);
    bytes = min_u64(bytes, nt->size - off);
    if (nbd_extent_cache_lookup(&nt->cache, ci, off, bytes, flags, run))
        return 0;
    return query_status(nt, ci, off, bytes, flags, run, e);
}

int nbd_context_status(struct transport *t, const char *context, uint64_t off, uint64_t bytes,
                       uint32_t *flags, uint64_t *run, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    int ci = context_index(nt, context);
    if (ci < 0)
        return err_set(e, ENOENT, "%s: the server does not offer the context '%s'",
                       nt->uri_text, context);
    return context_status(nt, ci, off, bytes, flags, run, e);
}

static int nbd_tp_data_status(struct transport *t, uint64_t off, uint64_t bytes,
                              unsigned *flags, uint64_t *run, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    int ci = context_index(nt, NBD_CONTEXT_BASE_ALLOCATION);
    if (ci < 0) {
        /* No block status: everything is data, as QEMU assumes. */
        *flags = TRANSPORT_DATA;
        *run = bytes;
        return 0;
    }
    uint32_t f;
    int ret = context_status(nt, ci, off, bytes, &f, run, e);
    if (ret == 0)
        *flags = (f & NBD_STATE_HOLE ? 0 : TRANSPORT_DATA) |
                 (f & NBD_STATE_ZERO ? TRANSPORT_ZERO : 0);
    return ret;
}

/* The export's dirty bitmaps: its qemu:dirty-bitmap:NAME contexts. */
static int nbd_tp_dirty_bitmaps(struct transport *t, char ***names, size_t *count,
                                struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    size_t plen = strlen(NBD_CONTEXT_DIRTY_BITMAP);
    *count = 0;
    *names = calloc(nt->ncontexts + 1, sizeof(char *));
    if (!*names)
        return err_set(e, ENOMEM, "out of memory");
    for (unsigned i = 0; i < nt->ncontexts; i++) {
        if (!nt->conns[0]->ctx_ok[i] ||
            strncmp(nt->contexts[i], NBD_CONTEXT_DIRTY_BITMAP, plen) != 0)
            continue;
        if (!((*names)[*count] = strdup(nt->contexts[i] + plen)))
            return err_set(e, ENOMEM, "out of memory");     /* the caller frees *names */
        (*count)++;
    }
    return 0;
}

static int nbd_tp_dirty_status(struct transport *t, const char *bitmap, uint64_t off,
                               uint64_t bytes, bool *dirty, uint64_t *run, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    char ctx[NBD_MAX_STRING + 32];
    snprintf(ctx, sizeof(ctx), "%s%s", NBD_CONTEXT_DIRTY_BITMAP, bitmap);
    uint32_t f;
    int ret = nbd_context_status(t, ctx, off, bytes, &f, run, e);
    if (ret == -ENOENT)
        err_set(e, ENOENT, "%s: the server offers no bitmap '%s' (no context %s)",
                nt->uri_text, bitmap, ctx);
    if (ret == 0)
        *dirty = f & NBD_STATE_DIRTY;
    return ret;
}

/* qemu:allocation-depth (QEMU's docs/interop/nbd.rst): the descriptor's
 * flags are the depth of the layer that allocates the run: 0 none, 1 the
 * export's top layer, 2 and more its backing files. */
static int nbd_tp_top_layer_status(struct transport *t, uint64_t off, uint64_t bytes,
                                   bool *top, uint64_t *run, struct err *e)
{
    struct nbd_transport *nt = to_nbd(t);
    int ci = context_index(nt, NBD_CONTEXT_ALLOCATION_DEPTH);
    if (ci < 0)
        return -ENOTSUP;
    uint32_t depth;
    int ret = context_status(nt, ci, off, bytes, &depth, run, e);
    if (ret == 0)
        *top = depth == 1;
    return ret;
}

static bool nbd_tp_can_zero_fast(struct transport *t)
{
    struct nbd_transport *nt = to_nbd(t);
    return nt->writable && (nt->flags & NBD_FLAG_SEND_WRITE_ZEROES) &&
           (nt->flags & NBD_FLAG_SEND_FAST_ZERO);
}

static bool nbd_tp_is_named(struct transport *t, const char *name)
{
    struct nbd_uri u;
    struct err ignored;
    if (nbd_uri_parse(name, &u, &ignored) < 0)
        return false;
    bool same = nbd_uri_same(&to_nbd(t)->uri, &u);
    nbd_uri_free(&u);
    return same;
}

static bool nbd_tp_same(struct transport *a, struct transport *b)
{
    return nbd_uri_same(&to_nbd(a)->uri, &to_nbd(b)->uri);
}

static const struct transport_ops nbd_transport_ops = {
    .name = "nbd",
    .preadv = nbd_tp_preadv,
    .pwritev = nbd_tp_pwritev,
    .flush = nbd_tp_flush,
    .size = nbd_tp_size,
    .truncate = nbd_tp_truncate,
    .write_zeroes = nbd_tp_write_zeroes,
    .discard = nbd_tp_discard,
    .data_status = nbd_tp_data_status,
    .dirty_bitmaps = nbd_tp_dirty_bitmaps,
    .dirty_status = nbd_tp_dirty_status,
    .top_layer_status = nbd_tp_top_layer_status,
    .can_zero_fast = nbd_tp_can_zero_fast,
    .is_named = nbd_tp_is_named,
    .same = nbd_tp_same,
    .close = nbd_tp_close,
};

bool nbd_is_transport(const struct transport *t)
{
    return t && t->ops == &nbd_transport_ops;
}

uint16_t nbd_transport_flags(const struct transport *t)
{
    return ((const struct nbd_transport *)t)->flags;
}

unsigned nbd_transport_connections(const struct transport *t)
{
    return ((const struct nbd_transport *)t)->nconns;
}

/* The first connection decides the export's parameters; the others must
 * agree (the same export of a multi-conn server). */
static int adopt_export(struct nbd_transport *nt, struct nbd_conn *c, struct err *e)
{
    const struct nbd_export_info *x = &c->info;
    if (nt->nconns == 0) {
        nt->size = x->size;
        nt->flags = x->flags;
        nt->min_block = x->have_block_size ? x->min_block : 1;
        nt->max_block = x->have_block_size ? x->max_block : NBD_DEFAULT_MAX_BLOCK;
        if (nt->max_block > NBD_MAX_PAYLOAD)
            nt->max_block = NBD_MAX_PAYLOAD;
        nt->max_block = (uint32_t)align_down(nt->max_block, nt->min_block);
        /* Whole preferred blocks (a power of two, spec), never below it. */
        uint32_t pref = x->have_block_size ? x->pref_block : 1;
        nt->request_size = (uint32_t)min_u64(max_u64(NBD_PIECE_SIZE, pref), nt->max_block);
        nt->request_size = (uint32_t)max_u64(align_down(nt->request_size, nt->min_block),
                                             nt->min_block);
        if (nt->writable && (x->flags & NBD_FLAG_READ_ONLY))
            return err_set(e, EROFS, "%s: the export is read-only", nt->uri_text);
        return 0;
    }
    if (x->size != nt->size || x->flags != nt->flags)
        return err_set(e, EPROTO, "%s: connection %u sees a different export (size or flags)",
                       nt->uri_text, nt->nconns + 1);
    return 0;
}

static int open_connections(struct nbd_transport *nt, const struct transport_opts *o,
                            struct err *e)
{
    unsigned want = o->nbd_connections ? o->nbd_connections : 1;
    if (want > NBD_MAX_CONNS)
        want = NBD_MAX_CONNS;
    unsigned timeout = o->nbd_timeout ? o->nbd_timeout : NBD_DEFAULT_TIMEOUT;
    for (unsigned i = 0; i < want; i++) {
        struct nbd_conn *c;
        /* Connections beyond the first are an optimisation: a server at
         * its client limit (qemu-nbd -e) does not answer them, so they get
         * a short handshake timeout and their failure is no error. */
        struct err extra_err;
        struct err *ce = i ? &extra_err : e;
        int ret = conn_open(&nt->uri, nt->uri_text, i ? NBD_EXTRA_CONN_TIMEOUT : timeout,
                            nt->contexts, nt->ncontexts, false, NULL, NULL, &c, ce);
        if (ret == 0 && (ret = adopt_export(nt, c, ce)) < 0)
            conn_free(c);
        if (ret < 0 && i)
            break;
        if (ret < 0)
            return ret;
        c->timeout = timeout;
        nt->conns[nt->nconns++] = c;
        /* Several connections only where the server says they are
         * consistent with each other; otherwise one is all we use. */
        if (!(nt->flags & NBD_FLAG_CAN_MULTI_CONN))
            break;
    }
    uint32_t max_payload = nt->max_block;
    for (unsigned i = 0; i < nt->nconns; i++) {
        int ret = conn_start(nt->conns[i], max_payload, e);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int nbd_transport_open(const char *uri, bool writable, const struct transport_opts *o,
                       struct transport **out, struct err *e)
{
    struct nbd_transport *nt = calloc(1, sizeof(*nt));
    if (!nt || !(nt->uri_text = strdup(uri))) {
        free(nt);
        return err_set(e, ENOMEM, "%s: out of memory", uri);
    }
    nt->tp.ops = &nbd_transport_ops;
    nt->tp.name = nt->uri_text;
    nt->writable = writable;
    nbd_extent_cache_init(&nt->cache);
    nt->contexts[nt->ncontexts++] = NBD_CONTEXT_BASE_ALLOCATION;
    for (const char *const *c = o->nbd_contexts; c && *c; c++)
        if (nt->ncontexts < NBD_MAX_CONTEXTS)
            nt->contexts[nt->ncontexts++] = *c;
    nt->owned_from = nt->ncontexts;
    unsigned extras = nt->ncontexts;
    int ret = nbd_uri_parse(uri, &nt->uri, e);
    if (ret == 0 && !(nt->canonical = nbd_uri_canonical(&nt->uri)))
        ret = err_set(e, ENOMEM, "out of memory");
    if (ret == 0)
        ret = discover_contexts(nt, o->nbd_timeout ? o->nbd_timeout : NBD_DEFAULT_TIMEOUT, e);
    if (ret == 0) {
        nt->tp.name = nt->canonical;
        ret = open_connections(nt, o, e);
    }
    /* Contexts asked for beyond base:allocation must exist. */
    for (unsigned i = 1; ret == 0 && i < extras; i++)
        if (!nt->conns[0]->ctx_ok[i])
            ret = err_set(e, ENOENT, "%s: the server does not offer the context '%s'", uri,
                          nt->contexts[i]);
    if (ret < 0) {
        nbd_tp_close(&nt->tp);
        return ret;
    }
    *out = &nt->tp;
    return 0;
}

int nbd_list_meta_contexts(const char *uri, const struct transport_opts *o, char ***names,
                           struct err *e)
{
    struct nbd_uri u;
    int ret = nbd_uri_parse(uri, &u, e);
    if (ret < 0)
        return ret;
    unsigned timeout = o && o->nbd_timeout ? o->nbd_timeout : NBD_DEFAULT_TIMEOUT;
    size_t n = 0;
    *names = NULL;
    struct nbd_conn *c;
    ret = conn_open(&u, uri, timeout, NULL, 0, true, names, &n, &c, e);
    if (ret == 0) {
        /* Still negotiating: NBD_OPT_ABORT is the polite way out. */
        struct err ignored;
        send_option(c, NBD_OPT_ABORT, NULL, &ignored);
        conn_free(c);
    }
    if (ret == 0 && !*names && !(*names = calloc(1, sizeof(char *))))
        ret = err_set(e, ENOMEM, "out of memory");
    if (ret < 0) {
        for (size_t i = 0; *names && i < n; i++)
            free((*names)[i]);
        free(*names);
        *names = NULL;
    }
    nbd_uri_free(&u);
    return ret;
}
