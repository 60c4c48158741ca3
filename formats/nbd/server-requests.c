/* The NBD server's transmission phase (doc/proto.md, "Transmission"): the
 * connection thread reads and validates requests and queues them, within
 * the connection's bounds (NBD_SERVER_MAX_REQUESTS, max_bytes_in_flight);
 * worker threads carry them out on the block layer, which serialises
 * overlapping ones, and send the replies in completion order. */
#include "nbd/server-conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "bitmap/dirty.h"
#include "bitmap/hbitmap.h"
#include "blockdev-bitmaps.h"

/* Descriptors per context in one block status reply: a client that wants
 * more asks again from where the reply ended (the spec allows a prefix). */
#define MAX_EXTENTS 8192
/* What a request costs in flight beyond its data (headers, bookkeeping). */
#define REQUEST_OVERHEAD 256

/* --- Replies --- */

static int send_iov(struct server_conn *c, struct iovec *iov, int n)
{
    if (atomic_load(&c->broken))
        return -1;
    pthread_mutex_lock(&c->send_lock);
    int ret = 0;
    for (int i = 0; i < n && ret == 0; i++)
        ret = conn_write(c, iov[i].iov_base, iov[i].iov_len);
    pthread_mutex_unlock(&c->send_lock);
    return ret;
}

static void send_simple(struct server_conn *c, uint64_t cookie, uint32_t error,
                        const void *data, size_t len)
{
    uint8_t hdr[NBD_SIMPLE_REPLY_SIZE];
    nbd_encode_simple_reply(hdr, error, cookie);
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)data, len } };
    send_iov(c, iov, len ? 2 : 1);
}

static void send_chunk(struct server_conn *c, uint64_t cookie, uint16_t flags, uint16_t type,
                       const void *a, size_t alen, const void *b, size_t blen)
{
    uint8_t hdr[NBD_CHUNK_HEADER_SIZE];
    nbd_encode_chunk_header(hdr, flags, type, cookie, (uint32_t)(alen + blen));
    struct iovec iov[3] = { { hdr, sizeof(hdr) }, { (void *)a, alen }, { (void *)b, blen } };
    send_iov(c, iov, blen ? 3 : alen ? 2 : 1);
}

/* An error: a structured ERROR chunk where the client expects chunks
 * (reads, block status), else a simple reply. */
static void send_error(struct server_conn *c, const struct nbd_request *r, uint32_t error,
                       const char *msg)
{
    bool chunks = c->structured && (r->type == NBD_CMD_READ ||
                                    r->type == NBD_CMD_BLOCK_STATUS);
    if (!chunks) {
        send_simple(c, r->cookie, error, NULL, 0);
        return;
    }
    struct nbd_buf b = { 0 };
    nbd_encode_chunk_error(&b, error, msg ? msg : "", false, 0);
    if (!b.failed)
        send_chunk(c, r->cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, b.data, b.len,
                   NULL, 0);
    nbd_buf_free(&b);
}

/* --- Validation --- */

static uint16_t valid_flags(const struct server_conn *c, uint16_t type)
{
    uint16_t f = NBD_CMD_FLAG_FUA;
    if (type == NBD_CMD_READ && c->structured)
        f |= NBD_CMD_FLAG_DF;
    if (type == NBD_CMD_WRITE_ZEROES)
        f |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    if (type == NBD_CMD_BLOCK_STATUS)
        f |= NBD_CMD_FLAG_REQ_ONE;
    return f;
}

static bool has_contexts(const struct server_conn *c)
{
    if (c->meta_exp != c->exp)
        return false;
    for (size_t i = 0; i < c->ncontexts; i++)
        if (c->selected[i])
            return true;
    return false;
}

static bool takes_range(uint16_t type)
{
    return type != NBD_CMD_FLUSH && type != NBD_CMD_DISC;
}

/* The wire error for a request that cannot be carried out, or 0. */
static uint32_t validate(const struct server_conn *c, const struct nbd_request *r)
{
    const struct nbd_server_export *x = c->exp;
    switch (r->type) {
    case NBD_CMD_READ: case NBD_CMD_WRITE: case NBD_CMD_DISC: case NBD_CMD_FLUSH:
    case NBD_CMD_TRIM: case NBD_CMD_CACHE: case NBD_CMD_WRITE_ZEROES:
    case NBD_CMD_BLOCK_STATUS:
        break;
    default:
        return NBD_EINVAL;
    }
    if (r->flags & ~valid_flags(c, r->type))
        return NBD_EINVAL;
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_CACHE) &&
        r->length > NBD_MAX_PAYLOAD)
        return NBD_EINVAL;
    bool writes = r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ||
                  r->type == NBD_CMD_TRIM;
    if (writes && !x->writable)
        return NBD_EPERM;
    if (takes_range(r->type) &&
        (r->offset > export_size(x) || r->length > export_size(x) - r->offset))
        return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC
                                                                           : NBD_EINVAL;
    if (r->type == NBD_CMD_BLOCK_STATUS && (!r->length || !has_contexts(c)))
        return NBD_EINVAL;
    return 0;
}

/* --- Block status --- */

struct extents {
    struct nbd_extent *ext;
    uint32_t count, max;
};

/* Append a run, merged with the last one if the flags are the same;
 * false when the array is full (the reply ends before this run). */
static bool add_extent(struct extents *x, uint64_t len, uint32_t flags)
{
    if (x->count && x->ext[x->count - 1].flags == flags) {
        x->ext[x->count - 1].length += (uint32_t)len;
        return true;
    }
    if (x->count == x->max)
        return false;
    x->ext[x->count++] = (struct nbd_extent){ (uint32_t)len, flags };
    return true;
}

static uint32_t allocation_flags(const struct blk_extent *e)
{
    return (e->flags & BLK_STATUS_DATA ? 0 : NBD_STATE_HOLE) |
           (e->flags & BLK_STATUS_ZERO ? NBD_STATE_ZERO : 0);
}

static uint32_t depth_value(const struct blk_extent *e)
{
    return e->flags & BLK_STATUS_ALLOCATED ? (uint32_t)e->depth + 1 : 0;
}

static int chain_extents(struct blockdev *bs, uint64_t off, uint64_t len, bool depth,
                         struct extents *x, struct err *e)
{
    uint64_t end = off + len;
    while (off < end) {
        struct blk_extent be;
        int ret = blk_block_status(bs, off, end - off, &be, e);
        if (ret < 0)
            return ret;
        if (!add_extent(x, be.length, depth ? depth_value(&be) : allocation_flags(&be)))
            break;
        off += be.length;
    }
    return 0;
}

static void bitmap_extents(struct blockdev *bs, const struct dirty_bitmap *bm, uint64_t off,
                           uint64_t len, struct extents *x)
{
    uint64_t end = off + len, d_off, d_len;
    blk_bitmaps_lock(bs);
    const struct hbitmap *hb = dirty_bitmap_bits(bm);
    while (off < end) {
        if (!hbitmap_next_dirty_extent(hb, off, end, &d_off, &d_len)) {
            add_extent(x, end - off, 0);
            break;
        }
        if (d_off > off && !add_extent(x, d_off - off, 0))
            break;
        if (!add_extent(x, d_len, NBD_STATE_DIRTY))
            break;
        off = d_off + d_len;
    }
    blk_bitmaps_unlock(bs);
}

static int context_extents(const struct export_image *img, size_t ctx,
                           const struct nbd_request *r, struct extents *x, struct err *e)
{
    struct blockdev *bs = img->bs;
    if (ctx == CTX_BASE_ALLOCATION || ctx == CTX_ALLOCATION_DEPTH)
        return chain_extents(bs, r->offset, r->length, ctx == CTX_ALLOCATION_DEPTH, x, e);
    bitmap_extents(bs, img->bitmaps[ctx - CTX_FIRST_BITMAP], r->offset, r->length, x);
    return 0;
}

/* One BLOCK_STATUS chunk per selected context, the last one DONE. */
static void do_block_status(struct server_conn *c, const struct export_image *img,
                            const struct nbd_request *r)
{
    struct extents x = { .max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_EXTENTS };
    x.ext = malloc(x.max * sizeof(*x.ext));
    if (!x.ext) {
        send_error(c, r, NBD_ENOMEM, "out of memory");
        return;
    }
    size_t last = 0;
    for (size_t i = 0; i < c->ncontexts; i++)
        if (c->selected[i])
            last = i;
    for (size_t i = 0; i <= last; i++) {
        if (!c->selected[i])
            continue;
        struct err e = { 0 };
        x.count = 0;
        int ret = context_extents(img, i, r, &x, &e);
        if (ret < 0) {
            send_error(c, r, nbd_errno_to_wire(-ret), e.msg);
            break;
        }
        struct nbd_buf b = { 0 };
        nbd_encode_block_status(&b, (uint32_t)i + 1, x.ext, x.count);
        if (b.failed) {
            send_error(c, r, NBD_ENOMEM, "out of memory");
            break;
        }
        send_chunk(c, r->cookie, i == last ? NBD_REPLY_FLAG_DONE : 0,
                   NBD_REPLY_TYPE_BLOCK_STATUS, b.data, b.len, NULL, 0);
        nbd_buf_free(&b);
    }
    free(x.ext);
}

/* --- Carrying requests out --- */

static void do_read(struct server_conn *c, struct blockdev *bs, const struct nbd_request *r)
{
    uint8_t *buf = malloc(r->length ? r->length : 1);
    struct err e = { 0 };
    int ret = buf ? blk_pread(bs, r->offset, buf, r->length, &e)
                  : err_set(&e, ENOMEM, "out of memory");
    if (ret < 0) {
        send_error(c, r, nbd_errno_to_wire(-ret), e.msg);
    } else if (!c->structured) {
        send_simple(c, r->cookie, 0, buf, r->length);
    } else {
        uint8_t off[8];
        nbd_encode_offset_data(off, r->offset);
        send_chunk(c, r->cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, off,
                   sizeof(off), buf, r->length);
    }
    free(buf);
}

/* Whether [off, off + len) reads as zeroes already (block status). */
static bool reads_zero(struct blockdev *bs, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    while (off < end) {
        struct blk_extent ext;
        struct err e = { 0 };
        if (blk_block_status(bs, off, end - off, &ext, &e) < 0 ||
            !(ext.flags & BLK_STATUS_ZERO))
            return false;
        off += ext.length;
    }
    return true;
}

/* FAST_ZERO promises no slow fallback: whole clusters are zeroed in the
 * metadata alone, and a range that reads as zeroes already costs nothing;
 * anything else would write zero buffers, so the client is told ENOTSUP
 * and writes the zeroes itself, as the spec intends. */
static bool zeroes_fast(struct blockdev *bs, const struct nbd_request *r)
{
    uint64_t a = blk_write_alignment(bs);
    if (r->offset % a == 0 && (r->length % a == 0 || r->offset + r->length == bs->size))
        return true;
    return reads_zero(bs, r->offset, r->length);
}

static int do_write_zeroes(struct server_conn *c, struct blockdev *bs,
                           const struct nbd_request *r, struct err *e)
{
    if ((r->flags & NBD_CMD_FLAG_FAST_ZERO) && !zeroes_fast(bs, r))
        return err_set(e, ENOTSUP, "zeroing this range is not fast");
    unsigned flags = !(r->flags & NBD_CMD_FLAG_NO_HOLE) && c->exp->unmap ? BLK_ZERO_MAY_UNMAP
                                                                         : 0;
    return blk_write_zeroes(bs, r->offset, r->length, flags, e);
}

/* Requests answered with a simple reply: 0 or a negative errno. */
static int do_simple(struct server_conn *c, struct blockdev *bs, const struct server_request *q,
                     struct err *e)
{
    const struct nbd_request *r = &q->req;
    int ret = 0;
    switch (r->type) {
    case NBD_CMD_WRITE:
        ret = blk_pwrite(bs, r->offset, q->payload, r->length, e);
        break;
    case NBD_CMD_WRITE_ZEROES:
        ret = do_write_zeroes(c, bs, r, e);
        break;
    case NBD_CMD_TRIM:
        if (c->exp->unmap)
            ret = blk_discard(bs, r->offset, r->length, e);
        break;
    case NBD_CMD_FLUSH:
        ret = blk_flush(bs, e);
        break;
    case NBD_CMD_CACHE:
        break;      /* a hint; the page cache does the prefetching */
    }
    if (ret == 0 && (r->flags & NBD_CMD_FLAG_FUA) && r->type != NBD_CMD_FLUSH)
        ret = blk_flush(bs, e);
    return ret;
}

/* The image is held from before the request starts until its reply is
 * sent, so that a quiesced export has no request half done (server.h). */
static void execute(struct server_conn *c, const struct server_request *q)
{
    const struct nbd_request *r = &q->req;
    if (q->error) {
        send_error(c, r, q->error, "invalid request");
        return;
    }
    struct export_image img;
    export_acquire(c->exp, &img);
    if (r->type == NBD_CMD_READ) {
        do_read(c, img.bs, r);
    } else if (r->type == NBD_CMD_BLOCK_STATUS) {
        do_block_status(c, &img, r);
    } else {
        struct err e = { 0 };
        int ret = do_simple(c, img.bs, q, &e);
        send_simple(c, r->cookie, ret < 0 ? nbd_errno_to_wire(-ret) : 0, NULL, 0);
    }
    export_release(c->exp);
}

/* --- The queue --- */

static struct server_request *take_request(struct server_conn *c)
{
    pthread_mutex_lock(&c->lock);
    while (!c->head && !c->reader_done)
        pthread_cond_wait(&c->changed, &c->lock);
    struct server_request *q = c->head;
    if (q && !(c->head = q->next))
        c->tail = NULL;
    pthread_mutex_unlock(&c->lock);
    return q;
}

/* Write payloads are recycled: a client's writes are mostly of one size,
 * and a buffer malloc'd for each one and freed by a worker makes glibc
 * give the pages back and fault them in again (zeroed) for the next one,
 * a page fault per 4 KiB received.  Kept per connection: at most
 * SERVER_SPARE_PAYLOADS buffers of up to SPARE_MAX bytes, each reused for
 * a write of at least half its size. */
enum { SPARE_MAX = 1u << 20 };

static uint8_t *take_payload(struct server_conn *c, size_t len, size_t *size)
{
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < c->nspare; i++) {
        if (c->spare_size[i] >= len && c->spare_size[i] / 2 <= len) {
            uint8_t *buf = c->spare[i];
            *size = c->spare_size[i];
            c->nspare--;
            c->spare[i] = c->spare[c->nspare];
            c->spare_size[i] = c->spare_size[c->nspare];
            pthread_mutex_unlock(&c->lock);
            return buf;
        }
    }
    pthread_mutex_unlock(&c->lock);
    *size = len;
    return malloc(len);
}

/* Keep q's payload for a later write, or free it (lock held). */
static void put_payload_locked(struct server_conn *c, struct server_request *q)
{
    if (q->payload && q->payload_size <= SPARE_MAX && c->nspare < SERVER_SPARE_PAYLOADS) {
        c->spare[c->nspare] = q->payload;
        c->spare_size[c->nspare++] = q->payload_size;
    } else {
        free(q->payload);
    }
    q->payload = NULL;
}

static void free_spares(struct server_conn *c)
{
    while (c->nspare)
        free(c->spare[--c->nspare]);
}

static void finish_request(struct server_conn *c, struct server_request *q)
{
    pthread_mutex_lock(&c->lock);
    c->in_flight--;
    c->bytes_in_flight -= q->cost;
    put_payload_locked(c, q);
    pthread_cond_broadcast(&c->changed);
    pthread_mutex_unlock(&c->lock);
    free(q);
}

static void *worker_main(void *arg)
{
    struct server_conn *c = arg;
    struct server_request *q;
    while ((q = take_request(c))) {
        execute(c, q);
        finish_request(c, q);
    }
    return NULL;
}

/* Wait until the connection has room for a request of `cost` bytes (a
 * request larger than the whole budget runs alone). */
static void reserve(struct server_conn *c, size_t cost)
{
    size_t max = c->params->max_bytes_in_flight ? c->params->max_bytes_in_flight : 64u << 20;
    pthread_mutex_lock(&c->lock);
    while (c->in_flight >= NBD_SERVER_MAX_REQUESTS ||
           (c->in_flight && c->bytes_in_flight + cost > max))
        pthread_cond_wait(&c->changed, &c->lock);
    c->in_flight++;
    c->bytes_in_flight += cost;
    pthread_mutex_unlock(&c->lock);
}

static void enqueue(struct server_conn *c, struct server_request *q)
{
    pthread_mutex_lock(&c->lock);
    if (c->tail)
        c->tail->next = q;
    else
        c->head = q;
    c->tail = q;
    pthread_cond_signal(&c->changed);
    pthread_mutex_unlock(&c->lock);
}

static void unreserve(struct server_conn *c, size_t cost)
{
    pthread_mutex_lock(&c->lock);
    c->in_flight--;
    c->bytes_in_flight -= cost;
    pthread_cond_broadcast(&c->changed);
    pthread_mutex_unlock(&c->lock);
}

/* Read one request (and a write's payload) into a queued entry: 1 = go
 * on, 0 = the client disconnected (NBD_CMD_DISC or EOF), -1 = dropped. */
static int read_request(struct server_conn *c)
{
    uint8_t hdr[NBD_REQUEST_SIZE];
    struct err e = { 0 };
    struct nbd_request r;
    if (conn_read(c, hdr, sizeof(hdr)) < 0)
        return 0;       /* EOF between requests: a disconnect without DISC */
    if (nbd_decode_request(hdr, &r, c->peer, &e) < 0) {
        conn_fail(c, "%s", e.msg);
        return -1;
    }
    if (r.type == NBD_CMD_DISC)
        return 0;
    if (r.type == NBD_CMD_WRITE && r.length > NBD_MAX_PAYLOAD) {
        /* Its payload cannot be skipped within bounded memory and time. */
        conn_fail(c, "write of %u bytes (limit %u)", r.length, NBD_MAX_PAYLOAD);
        return -1;
    }
    struct server_request *q = calloc(1, sizeof(*q));
    if (!q) {
        conn_fail(c, "out of memory");
        return -1;
    }
    q->req = r;
    q->error = validate(c, &r);
    /* A read refused as too long allocates nothing. */
    bool data = r.type == NBD_CMD_WRITE || (r.type == NBD_CMD_READ && !q->error);
    q->cost = REQUEST_OVERHEAD + (data ? r.length : 0);
    reserve(c, q->cost);
    if (r.type == NBD_CMD_WRITE) {
        q->payload = take_payload(c, r.length ? r.length : 1, &q->payload_size);
        if (!q->payload || conn_read(c, q->payload, r.length) < 0) {
            conn_fail(c, q->payload ? "the client went away in a write" : "out of memory");
            unreserve(c, q->cost);
            free(q->payload);
            free(q);
            return -1;
        }
    }
    enqueue(c, q);
    return 1;
}

void server_transmission(struct server_conn *c)
{
    unsigned nworkers = c->params->workers ? c->params->workers : 4;
    pthread_t *workers = calloc(nworkers, sizeof(*workers));
    unsigned started = 0;
    while (workers && started < nworkers &&
           pthread_create(&workers[started], NULL, worker_main, c) == 0)
        started++;
    if (!started) {
        conn_fail(c, "cannot start worker threads");
        free(workers);
        return;
    }
    while (!atomic_load(&c->broken) && read_request(c) > 0)
        ;
    pthread_mutex_lock(&c->lock);
    c->reader_done = true;
    pthread_cond_broadcast(&c->changed);
    pthread_mutex_unlock(&c->lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(workers[i], NULL);
    free(workers);
    free_spares(c);
    if (atomic_load(&c->broken))
        conn_fail(c, "the client went away before its replies were sent");
}
