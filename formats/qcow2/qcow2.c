/* The qcow2 block driver (the vtable): open/close, create, reads through
 * the cluster map and the backing chain, allocating writes with
 * copy-on-write, zero writes, discard, truncate, compressed writes, info.
 * The pieces live in header.c, cache.c, refcount.c and cluster.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "formats/qcow2/qcow2-bitmap.h"

#define QCOW2_L2_CACHE_BYTES    (8u << 20)  /* default L2 cache size */
#define QCOW2_L2_CACHE_MAX      64  /* tables, unless l2_cache_bytes says more */
#define QCOW2_L2_CACHE_LIMIT    1024    /* tables at most: the cache is searched linearly */
#define QCOW2_RB_CACHE_ENTRIES  8

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    return len >= 8 && be32_read(buf) == QCOW2_MAGIC && be32_read(buf + 4) >= 2 ? 100 : 0;
}

static bool has_backing(const struct blockdev *bs)
{
    return bs->backing || (bs->backing_name && bs->backing_name[0]);
}

static void free_state(struct qcow2_state *s)
{
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->rb_cache);
    qcow2_free_header(s);
    free(s->l1);
    free(s->reftable);
    free(s->bitmap_tables);
    qcow2_overlap_invalidate(s);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* How many L2 tables to cache: QCOW2_L2_CACHE_BYTES' worth (4..64 tables),
 * or what the l2_cache_bytes open option asks for (4..1024 tables), as
 * QEMU's l2-cache-size option sizes its cache.  Each cached table covers
 * cluster_size / 8 clusters. */
static int l2_cache_tables(struct blockdev *bs, uint32_t cluster_size, size_t *count,
                           struct err *e)
{
    (void)e;
    uint64_t bytes = QCOW2_L2_CACHE_BYTES, max = QCOW2_L2_CACHE_MAX;
    if (bs->opts.l2_cache_bytes) {
        bytes = bs->opts.l2_cache_bytes;
        max = QCOW2_L2_CACHE_LIMIT;
    }
    uint64_t n = bytes / cluster_size;
    *count = (size_t)(n < 4 ? 4 : n > max ? max : n);
    return 0;
}

static int open_state(struct blockdev *bs, struct qcow2_state **out, struct err *e)
{
    struct qcow2_state *s = calloc(1, sizeof(*s));
    if (!s)
        return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    pthread_mutex_init(&s->lock, NULL);
    s->bs = bs;
    s->free_cluster_hint = 1;
    s->metadata_prealloc = -1;
    int ret = qcow2_read_header(s, e);
    if (ret < 0)
        goto fail;
    /* check (BLK_OPEN_CHECK) opens damaged images to repair them. */
    bool repairing = bs->open_flags & BLK_OPEN_CHECK;
    if (!bs->read_only && !repairing && (s->incompatible & QCOW2_INCOMPAT_CORRUPT)) {
        ret = err_set(e, EROFS, "%s: image is marked corrupt: open it read-only, or repair it "
                      "with 'imgtool check -r all'", bs->filename);
        goto fail;
    }
    if (!bs->read_only && !repairing && (s->incompatible & QCOW2_INCOMPAT_DIRTY)) {
        ret = err_set(e, EROFS, "%s: image was not closed cleanly (dirty bit set, lazy "
                      "refcounts): repair it with 'imgtool check -r all' or 'qemu-img check "
                      "-r all', or open it read-only", bs->filename);
        goto fail;
    }
    size_t l2_count = 0;
    if ((ret = l2_cache_tables(bs, s->cluster_size, &l2_count, e)) < 0)
        goto fail;
    if ((ret = qcow2_refcount_init(s, e)) < 0 || (ret = qcow2_l1_init(s, e)) < 0)
        goto fail;
    if (qcow2_cache_init(&s->l2_cache, l2_count, s->cluster_size, true) < 0 ||
        qcow2_cache_init(&s->rb_cache, QCOW2_RB_CACHE_ENTRIES, s->cluster_size, false) < 0) {
        ret = err_set(e, ENOMEM, "%s: out of memory for the metadata caches", bs->filename);
        goto fail;
    }
    if (!bs->read_only && s->version == 3 && (s->autoclear & ~QCOW2_AUTOCLEAR_KNOWN)) {
        /* Autoclear features we do not maintain become invalid as soon as
         * we write: clear them, as QEMU does. */
        s->autoclear &= QCOW2_AUTOCLEAR_KNOWN;
        if ((ret = qcow2_update_header(s, e)) < 0)
            goto fail;
    }
    *out = s;
    return 0;
fail:
    free_state(s);
    return ret;
}

static int qcow2_open(struct blockdev *bs, struct err *e)
{
    struct qcow2_state *s;
    int ret = open_state(bs, &s, e);
    if (ret == 0)
        bs->opaque = s;
    return ret;
}

static void qcow2_close(struct blockdev *bs)
{
    struct qcow2_state *s = bs->opaque;
    if (!s)
        return;
    if (!bs->read_only) {
        struct err e = { 0 };
        qcow2_flush_metadata(s, &e);    /* errors were reported by blk_flush already */
    }
    free_state(s);
    bs->opaque = NULL;
}

/* --- iovec helpers --- */

/* The part [pos, pos + len) of an iovec, in `out` (iovcnt entries). */
static int iov_slice(const struct iovec *iov, int iovcnt, size_t pos, size_t len,
                     struct iovec *out)
{
    int n = 0;
    for (int i = 0; i < iovcnt && len; i++) {
        if (pos >= iov[i].iov_len) {
            pos -= iov[i].iov_len;
            continue;
        }
        size_t take = min_u64(iov[i].iov_len - pos, len);
        out[n].iov_base = (char *)iov[i].iov_base + pos;
        out[n].iov_len = take;
        n++;
        len -= take;
        pos = 0;
    }
    return n;
}

static void iov_copy_in(const struct iovec *iov, int iovcnt, size_t pos, const void *src,
                        size_t len)
{
    const char *p = src;
    for (int i = 0; i < iovcnt && len; i++) {
        if (pos >= iov[i].iov_len) {
            pos -= iov[i].iov_len;
            continue;
        }
        size_t take = min_u64(iov[i].iov_len - pos, len);
        memcpy((char *)iov[i].iov_base + pos, p, take);
        p += take;
        len -= take;
        pos = 0;
    }
}

/* --- reads --- */

static int read_compressed_cluster(struct qcow2_state *s, struct qcow2_l2e l2e, uint8_t *out,
                                   struct err *e)
{
    uint64_t coff, csize;
    qcow2_compressed_range(s, l2e.entry, &coff, &csize);
    uint8_t *in = malloc(csize);
    if (!in)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = transport_pread(s->bs->file, coff, in, csize, e);
    if (ret == 0) {
        ret = qcow2_decompress(s->compression_type, in, csize, out, s->cluster_size, e);
        if (ret < 0)
            err_prefix(e, "%s: compressed cluster at 0x%llx: ", s->bs->filename,
                       (unsigned long long)coff);
    }
    free(in);
    return ret;
}

/* Read guest bytes [off, off + len) into iov.  With `locked` the caller
 * holds the lock (copy-on-write); otherwise the lock is taken only to look
 * up the mapping. */
static int read_range(struct qcow2_state *s, uint64_t off, const struct iovec *iov, int iovcnt,
                      bool locked, struct err *e)
{
    size_t len = iov_size(iov, iovcnt), done = 0;
    struct iovec *part = malloc(sizeof(*part) * (size_t)(iovcnt > 0 ? iovcnt : 1));
    uint8_t *cbuf = NULL;
    if (!part)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = 0;
    while (done < len && ret == 0) {
        enum qcow2_sc_type type;
        uint64_t host, run;
        struct qcow2_l2e l2e;
        if (!locked)
            pthread_mutex_lock(&s->lock);
        ret = qcow2_map_run(s, off + done, len - done, &type, &host, &run, &l2e, e);
        if (!locked)
            pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            break;
        int n = iov_slice(iov, iovcnt, done, run, part);
        switch (type) {
        case QCOW2_SC_NORMAL:
            ret = transport_preadv(s->bs->file, host, part, n, e);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            iov_memset(part, n, 0, 0, run);
            break;
        case QCOW2_SC_UNALLOC_PLAIN:
        case QCOW2_SC_UNALLOC_ALLOC:
            ret = blk_read_backing(s->bs, off + done, part, n, e);
            break;
        case QCOW2_SC_COMPRESSED:
            if (!cbuf && !(cbuf = malloc(s->cluster_size))) {
                ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
                break;
            }
            ret = read_compressed_cluster(s, l2e, cbuf, e);
            if (ret == 0)
                iov_copy_in(part, n, 0, cbuf + ((off + done) & (s->cluster_size - 1)), run);
            break;
        default:
            ret = err_set(e, EIO, "%s: invalid cluster type", s->bs->filename);
            break;
        }
        done += run;
    }
    free(part);
    free(cbuf);
    return ret;
}

static int read_buf_locked(struct qcow2_state *s, uint64_t off, void *buf, size_t len,
                           struct err *e)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    return len ? read_range(s, off, &iov, 1, true, e) : 0;
}

static int qcow2_preadv(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                        struct err *e)
{
    return read_range(bs->opaque, off, iov, iovcnt, false, e);
}

/* --- writes --- */

static bool range_is_normal(struct qcow2_state *s, struct qcow2_l2e l2e, uint64_t a,
                            uint64_t b)
{
    for (uint64_t sc = a / s->subcluster_size; sc <= (b - 1) / s->subcluster_size; sc++)
        if (qcow2_sc_type(s, l2e, (unsigned)sc) != QCOW2_SC_NORMAL)
            return false;
    return true;
}

/* Subclusters [a, b) (byte offsets in the cluster, already subcluster
 * aligned) are now allocated and not zero. */
static uint64_t bitmap_mark_allocated(struct qcow2_state *s, uint64_t bitmap, uint64_t a,
                                      uint64_t b)
{
    for (uint64_t sc = a / s->subcluster_size; sc < b / s->subcluster_size; sc++) {
        bitmap |= 1ull << sc;
        bitmap &= ~(1ull << (32 + sc));
    }
    return bitmap;
}

/* Write [a, b) of the cluster at guest `cstart` to host cluster `host`,
 * widened to whole subclusters, filling the widened parts with the
 * cluster's current contents (from the backing file, zeroes, ...). */
static int write_widened(struct qcow2_state *s, uint64_t cstart, uint64_t host, uint64_t a,
                         uint64_t b, const uint8_t *data, uint64_t wa, uint64_t wb,
                         struct err *e)
{
    uint8_t *tmp = malloc(wb - wa);
    if (!tmp)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = read_buf_locked(s, cstart + wa, tmp, a - wa, e);
    if (ret == 0)
        ret = read_buf_locked(s, cstart + b, tmp + (b - wa), wb - b, e);
    if (ret == 0) {
        memcpy(tmp + (a - wa), data, b - a);
        ret = qcow2_pwrite_checked(s, 0, host + wa, tmp, wb - wa, e);
    }
    free(tmp);
    return ret;
}

/* Write `len` bytes at guest `off`, all inside one cluster. */
static int write_in_cluster(struct qcow2_state *s, uint64_t off, const uint8_t *data,
                            uint64_t len, struct err *e)
{
    uint64_t cstart = qcow2_cluster_start(s, off);
    uint64_t a = off - cstart, b = a + len;
    uint64_t scs = s->subcluster_size;
    uint64_t wa = align_down(a, scs), wb = align_up(b, scs);
    struct qcow2_l2e old, l2e;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_get_l2e(s, cstart, &old, e);
    if (ret < 0)
        goto out;
    uint64_t host = old.entry & QCOW2_OFFSET_MASK;
    bool compressed = old.entry & QCOW2_OFLAG_COMPRESSED;
    if (!compressed && host && (old.entry & QCOW2_OFLAG_COPIED)) {
        if (range_is_normal(s, old, a, b)) {
            /* Already ours: plain data write, outside the lock (the
             * overlap check needs it). */
            ret = qcow2_pre_write_check(s, 0, host + a, len, e);
            pthread_mutex_unlock(&s->lock);
            return ret < 0 ? ret : transport_pwrite(s->bs->file, host + a, data, len, e);
        }
        /* Our cluster, but some subclusters read as zero or fall through. */
        if ((ret = write_widened(s, cstart, host, a, b, data, wa, wb, e)) < 0)
            goto out;
        l2e.entry = host | QCOW2_OFLAG_COPIED;
        l2e.bitmap = s->extended_l2 ? bitmap_mark_allocated(s, old.bitmap, wa, wb) : 0;
        /* The data must be stable before the entry that marks it valid. */
        if ((ret = qcow2_l2_depends_on_refblocks(s, e)) == 0)
            ret = qcow2_set_l2e(s, cstart, l2e, e);
        goto out;
    }
    uint64_t new_host;
    if ((ret = qcow2_alloc_clusters(s, 1, &new_host, e)) < 0)
        goto out;
    if (s->extended_l2 && !host && !compressed) {
        /* Only the touched subclusters are written; the others keep their
         * zero or unallocated state. */
        ret = write_widened(s, cstart, new_host, a, b, data, wa, wb, e);
        l2e.bitmap = bitmap_mark_allocated(s, old.bitmap, wa, wb);
    } else {
        ret = write_widened(s, cstart, new_host, a, b, data, 0, s->cluster_size, e);
        l2e.bitmap = s->extended_l2 ? QCOW2_BITMAP_ALL_ALLOC : 0;
    }
    l2e.entry = new_host | QCOW2_OFLAG_COPIED;
    if (ret < 0 || (ret = qcow2_l2_depends_on_refblocks(s, e)) < 0 ||
        (ret = qcow2_set_l2e(s, cstart, l2e, e)) < 0)
        goto out;
    if (host || compressed)
        ret = qcow2_free_l2e_clusters(s, old.entry, e);
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Write `len` bytes (at most one cluster) at guest `off` from position
 * `pos` of iov through write_in_cluster, gathering them first when they
 * span several iovec entries.  `part` has room for iovcnt entries. */
static int write_partial(struct qcow2_state *s, uint64_t off, const struct iovec *iov,
                         int iovcnt, size_t pos, uint64_t len, struct iovec *part,
                         struct err *e)
{
    int n = iov_slice(iov, iovcnt, pos, len, part);
    if (n == 1)
        return write_in_cluster(s, off, part[0].iov_base, len, e);
    uint8_t *buf = malloc(len);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    size_t done = 0;
    for (int i = 0; i < n; i++) {
        memcpy(buf + done, part[i].iov_base, part[i].iov_len);
        done += part[i].iov_len;
    }
    int ret = write_in_cluster(s, off, buf, len, e);
    free(buf);
    return ret;
}

/* Clusters one step of a write handles at most (bounds the entry arrays:
 * 16 MiB of data with 64 KiB clusters). */
#define WRITE_RUN_MAX 256

/* Writing a whole cluster needs a new cluster unless it has one of its
 * own (not compressed, not shared). */
static bool needs_new_cluster(struct qcow2_l2e l2e)
{
    return (l2e.entry & QCOW2_OFLAG_COMPRESSED) || !(l2e.entry & QCOW2_OFFSET_MASK) ||
           !(l2e.entry & QCOW2_OFLAG_COPIED);
}

/* The entry of a cluster written whole at `host`. */
static struct qcow2_l2e data_l2e(const struct qcow2_state *s, uint64_t host)
{
    struct qcow2_l2e l2e = { host | QCOW2_OFLAG_COPIED,
                             s->extended_l2 ? QCOW2_BITMAP_ALL_ALLOC : 0 };
    return l2e;
}

/* The n clusters from guest `off`, ours at `host` on, were written whole
 * in place: those whose entries said zero or unallocated (subclusters)
 * read the data from now on (lock held).  An entry that no longer points
 * at the cluster written (changed meanwhile) is left alone. */
static int mark_written_in_place(struct qcow2_state *s, uint64_t off, uint64_t n,
                                 uint64_t host, struct err *e)
{
    struct qcow2_l2e l2e[WRITE_RUN_MAX];
    /* The data reaches the disk before the L2 table that marks it valid. */
    int ret = qcow2_l2_depends_on_refblocks(s, e);
    if (ret == 0)
        ret = qcow2_get_l2e_run(s, off, n, l2e, e);
    if (ret < 0)
        return ret;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t h = host + (k << s->cluster_bits);
        if (!needs_new_cluster(l2e[k]) && (l2e[k].entry & QCOW2_OFFSET_MASK) == h)
            l2e[k] = data_l2e(s, h);
    }
    return qcow2_set_l2e_run(s, off, n, l2e, e);
}

/* Give back n clusters from `host` that nothing refers to (a write that
 * failed before linking them); a failure only leaks them. */
static void unallocate_clusters(struct qcow2_state *s, uint64_t host, uint64_t n)
{
    struct err ignored = { 0 };
    qcow2_free_clusters(s, host, n << s->cluster_bits, &ignored);
}

/* Point the entries of the n clusters from guest `off` at the new clusters
 * from `host`, whose data is written, then drop the references the
 * entries held (lock held).  The entries are read again here: they are
 * what this write replaces, even if they changed while the data was
 * written without the lock. */
static int link_new_clusters(struct qcow2_state *s, uint64_t off, uint64_t n, uint64_t host,
                             struct err *e)
{
    struct qcow2_l2e old[WRITE_RUN_MAX], l2e[WRITE_RUN_MAX];
    for (uint64_t k = 0; k < n; k++)
        l2e[k] = data_l2e(s, host + (k << s->cluster_bits));
    /* Data and refcounts reach the disk before the L2 table that uses
     * them (the next write of the L2 cache flushes first). */
    int ret = qcow2_l2_depends_on_refblocks(s, e);
    if (ret == 0)
        ret = qcow2_get_l2e_run(s, off, n, old, e);
    if (ret == 0)
        ret = qcow2_set_l2e_run(s, off, n, l2e, e);
    if (ret < 0) {
        unallocate_clusters(s, host, n);    /* no entry was changed */
        return ret;
    }
    for (uint64_t k = 0; k < n; k++)
        if ((old[k].entry & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)) &&
            (ret = qcow2_free_l2e_clusters(s, old[k].entry, e)) < 0)
            return ret;
    return 0;
}

/* Where the data of a run of whole clusters comes from: position `pos`
 * of an iovec (`part` has room for iovcnt entries), or, for copy
 * offloading (copy_range_to), `pos` bytes past `from_off` of transport
 * `from`. */
struct run_source {
    const struct iovec *iov;
    int iovcnt;
    struct iovec *part;
    struct transport *from;
    uint64_t from_off;
};

/* Put `len` bytes from position `pos` of the source at host offset `host`
 * (without the lock). */
static int put_run_data(struct qcow2_state *s, const struct run_source *src, size_t pos,
                        uint64_t host, uint64_t len, struct err *e)
{
    if (src->from)
        return transport_copy_range(s->bs->file, host, src->from, src->from_off + pos, len, e);
    int nparts = iov_slice(src->iov, src->iovcnt, pos, len, src->part);
    return transport_pwritev(s->bs->file, host, src->part, nparts, e);
}

/* Write whole clusters at guest `off` (cluster aligned), at most `max` of
 * them, from position `pos` of `src`; *done is set to the number of
 * clusters written.  One step handles a run of clusters of one L2 table
 * that need the same treatment, with one data write:
 *   - our own clusters at contiguous host offsets: written in place (then
 *     the entries of those that read as zeroes are updated);
 *   - clusters that need new ones: that many contiguous clusters are
 *     allocated (refcounts set) under the lock, the data is written to
 *     them without it, so that other requests go on meanwhile, then the L2
 *     entries are linked under the lock (crash safe: nothing refers to the
 *     new clusters until their data is written, and the L2 table reaches
 *     the disk only after the data and the refcounts). */
static int write_cluster_run(struct qcow2_state *s, uint64_t off, uint64_t max,
                             const struct run_source *src, size_t pos, uint64_t *done,
                             struct err *e)
{
    struct qcow2_l2e old[WRITE_RUN_MAX];
    uint64_t n = min_u64(min_u64(max, WRITE_RUN_MAX), qcow2_l2_entries_left(s, off));
    *done = 1;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_get_l2e_run(s, off, n, old, e);
    if (ret < 0)
        goto unlock;
    bool allocate = needs_new_cluster(old[0]);
    uint64_t host = old[0].entry & QCOW2_OFFSET_MASK;
    bool update = !allocate && !range_is_normal(s, old[0], 0, s->cluster_size);
    uint64_t count = 1;
    for (; count < n && needs_new_cluster(old[count]) == allocate; count++) {
        if (allocate)
            continue;
        if ((old[count].entry & QCOW2_OFFSET_MASK) != host + (count << s->cluster_bits))
            break;
        update |= !range_is_normal(s, old[count], 0, s->cluster_size);
    }
    *done = count;
    if (allocate && (ret = qcow2_alloc_clusters(s, count, &host, e)) < 0)
        goto unlock;
    if ((ret = qcow2_pre_write_check(s, 0, host, count << s->cluster_bits, e)) < 0) {
        if (allocate)
            unallocate_clusters(s, host, count);
        goto unlock;
    }
    pthread_mutex_unlock(&s->lock);
    ret = put_run_data(s, src, pos, host, count << s->cluster_bits, e);
    if (!allocate && (ret < 0 || !update))
        return ret;
    pthread_mutex_lock(&s->lock);
    if (!allocate)
        ret = mark_written_in_place(s, off, count, host, e);
    else if (ret == 0)
        ret = link_new_clusters(s, off, count, host, e);
    else
        unallocate_clusters(s, host, count);
unlock:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Write guest bytes [off, off + size of iov): whole clusters in runs
 * (write_cluster_run), partial ones through write_in_cluster. */
static int write_iov(struct qcow2_state *s, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e)
{
    size_t len = iov_size(iov, iovcnt), pos = 0;
    struct iovec *part = malloc(sizeof(*part) * (size_t)(iovcnt > 0 ? iovcnt : 1));
    if (!part)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    struct run_source src = { .iov = iov, .iovcnt = iovcnt, .part = part };
    uint64_t cs = s->cluster_size;
    int ret = 0;
    while (pos < len && ret == 0) {
        uint64_t at = off + pos, in_cluster = at & (cs - 1);
        uint64_t n = min_u64(len - pos, cs - in_cluster);
        if (n < cs) {
            ret = write_partial(s, at, iov, iovcnt, pos, n, part, e);
        } else {
            uint64_t clusters;
            ret = write_cluster_run(s, at, (len - pos) >> s->cluster_bits, &src, pos,
                                    &clusters, e);
            n = clusters << s->cluster_bits;
        }
        pos += n;
    }
    free(part);
    return ret;
}

static int write_buf(struct qcow2_state *s, uint64_t off, const void *data, uint64_t len,
                     struct err *e)
{
    struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
    return write_iov(s, off, &iov, 1, e);
}

/* Writes stop once one was refused as corrupting (overlap.c). */
static int refuse_if_corrupt(struct qcow2_state *s, struct err *e)
{
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_refuse_if_corrupt(s, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int qcow2_pwritev(struct blockdev *bs, uint64_t off, const struct iovec *iov,
                         int iovcnt, struct err *e)
{
    int ret = refuse_if_corrupt(bs->opaque, e);
    return ret < 0 ? ret : write_iov(bs->opaque, off, iov, iovcnt, e);
}

/* A piece of an offloaded copy that is not whole clusters: read from
 * `from` and written as any write (merged with the cluster's other
 * bytes). */
static int copy_through_buffer(struct qcow2_state *s, uint64_t off, uint64_t len,
                               struct transport *from, uint64_t from_off, struct err *e)
{
    uint8_t *buf = malloc(len);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = transport_pread(from, from_off, buf, len, e);
    if (ret == 0)
        ret = write_buf(s, off, buf, len, e);
    free(buf);
    return ret;
}

/* convert -C: the whole clusters of the range are placed as a write
 * places them and filled by the kernel from `from`; the partial clusters
 * at its edges (at most two) go through a buffer. */
static int qcow2_copy_range_to(struct blockdev *bs, uint64_t off, uint64_t len,
                               struct transport *from, uint64_t from_off, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    int ret = refuse_if_corrupt(s, e);
    uint64_t a = min_u64(align_up(off, s->cluster_size), off + len);
    uint64_t b = max_u64(align_down(off + len, s->cluster_size), a);
    if (ret == 0 && a > off)
        ret = copy_through_buffer(s, off, a - off, from, from_off, e);
    struct run_source src = { .from = from, .from_off = from_off + (a - off) };
    for (uint64_t pos = 0; pos < b - a && ret == 0;) {
        uint64_t clusters;
        ret = write_cluster_run(s, a + pos, (b - a - pos) >> s->cluster_bits, &src, pos,
                                &clusters, e);
        pos += clusters << s->cluster_bits;
    }
    if (ret == 0 && off + len > b)
        ret = copy_through_buffer(s, b, off + len - b, from, from_off + (b - off), e);
    return ret;
}

/* Write real zeroes (when the metadata cannot express them). */
static int write_zero_buffer(struct qcow2_state *s, uint64_t off, uint64_t len, struct err *e)
{
    uint8_t *zero = calloc(1, s->cluster_size);
    if (!zero)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = 0;
    while (len && ret == 0) {
        uint64_t n = min_u64(len, s->cluster_size - (off & (s->cluster_size - 1)));
        ret = write_in_cluster(s, off, zero, n, e);
        off += n;
        len -= n;
    }
    free(zero);
    return ret;
}

/* Replace the entry of cluster `cstart` (lock held); the old clusters are
 * released after the new entry when `release` is set. */
static int replace_l2e(struct qcow2_state *s, uint64_t cstart, struct qcow2_l2e old,
                       struct qcow2_l2e l2e, bool release, struct err *e)
{
    if (old.entry == l2e.entry && old.bitmap == l2e.bitmap)
        return 0;
    int ret = qcow2_set_l2e(s, cstart, l2e, e);
    if (ret == 0 && release)
        ret = qcow2_free_l2e_clusters(s, old.entry, e);
    return ret;
}

/* A whole cluster reads as zeroes from now on (v3), as QEMU's
 * zero_in_l2_slice. */
static int zero_cluster(struct qcow2_state *s, uint64_t cstart, unsigned flags, struct err *e)
{
    struct qcow2_l2e old, l2e;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_get_l2e(s, cstart, &old, e);
    if (ret == 0) {
        bool compressed = old.entry & QCOW2_OFLAG_COMPRESSED;
        bool allocated = compressed || (old.entry & QCOW2_OFFSET_MASK);
        bool unmap = compressed || ((flags & BLK_ZERO_MAY_UNMAP) && allocated);
        l2e.entry = unmap ? 0 : old.entry;
        l2e.bitmap = old.bitmap;
        if (s->extended_l2)
            l2e.bitmap = QCOW2_BITMAP_ALL_ZERO;
        else
            l2e.entry |= QCOW2_OFLAG_ZERO;
        ret = replace_l2e(s, cstart, old, l2e, unmap, e);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Whole subclusters [a, b) of one cluster read as zeroes (extended L2). */
static int zero_subclusters(struct qcow2_state *s, uint64_t cstart, uint64_t a, uint64_t b,
                            struct err *e)
{
    struct qcow2_l2e old, l2e;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_get_l2e(s, cstart, &old, e);
    if (ret == 0 && (old.entry & QCOW2_OFLAG_COMPRESSED)) {
        pthread_mutex_unlock(&s->lock);
        return write_zero_buffer(s, cstart + a, b - a, e);
    }
    if (ret == 0) {
        l2e = old;
        for (uint64_t sc = a / s->subcluster_size; sc < b / s->subcluster_size; sc++) {
            l2e.bitmap |= 1ull << (32 + sc);
            l2e.bitmap &= ~(1ull << sc);
        }
        ret = replace_l2e(s, cstart, old, l2e, false, e);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Deallocate one whole cluster (v2 zero writes without a backing file). */
static int deallocate_cluster(struct qcow2_state *s, uint64_t cstart, struct err *e)
{
    struct qcow2_l2e old, none = { 0, 0 };
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_get_l2e(s, cstart, &old, e);
    if (ret == 0)
        ret = replace_l2e(s, cstart, old, none,
                          (old.entry & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)) != 0, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* After commit (QEMU's qcow2_make_empty, the cluster-by-cluster way):
 * every cluster unallocated, its host cluster freed, so the image reads
 * through to its backing file.  L2 tables stay (all entries zero). */
static int qcow2_make_empty(struct blockdev *bs, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t coverage = qcow2_l1_coverage(s);
    int ret = refuse_if_corrupt(s, e);
    if (ret < 0)
        return ret;
    for (uint64_t i = 0; i < s->l1_size; i++) {
        if (!(s->l1[i] & QCOW2_OFFSET_MASK))
            continue;   /* no L2 table: nothing allocated there */
        uint64_t end = min_u64(bs->size, (i + 1) * coverage);
        for (uint64_t c = i * coverage; c < end; c += s->cluster_size)
            if ((ret = deallocate_cluster(s, c, e)) < 0)
                return ret;
    }
    return 0;
}

static int qcow2_write_zeroes(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                              struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t end = off + len;
    int ret = refuse_if_corrupt(s, e);
    while (off < end && ret == 0) {
        uint64_t cstart = qcow2_cluster_start(s, off);
        uint64_t cend = cstart + s->cluster_size;
        uint64_t n = min_u64(end, cend) - off;
        /* The tail of the last cluster past the disk end counts as covered. */
        bool whole = off == cstart && (n == s->cluster_size || off + n == bs->size);
        if (s->version < 3) {
            if (whole && !has_backing(bs))
                ret = deallocate_cluster(s, cstart, e);
            else
                ret = write_zero_buffer(s, off, n, e);
        } else if (whole) {
            ret = zero_cluster(s, cstart, flags, e);
        } else if (s->extended_l2) {
            uint64_t a = off - cstart, b = a + n;
            uint64_t za = align_up(a, s->subcluster_size);
            uint64_t zb = off + n == bs->size ? align_up(b, s->subcluster_size)
                                              : align_down(b, s->subcluster_size);
            if (za >= zb) {
                ret = write_zero_buffer(s, off, n, e);
            } else {
                if (za > a)
                    ret = write_zero_buffer(s, off, za - a, e);
                if (ret == 0)
                    ret = zero_subclusters(s, cstart, za, zb, e);
                if (ret == 0 && b > zb)
                    ret = write_zero_buffer(s, cstart + zb, b - zb, e);
            }
        } else {
            ret = write_zero_buffer(s, off, n, e);
        }
        off += n;
    }
    return ret;
}

/* QEMU's discard: whole clusters only (partial ones are ignored, except a
 * partial last cluster of the disk); v3 marks them zero when that differs
 * from what unallocated would read, v2 without a backing file
 * deallocates. */
static int qcow2_discard(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    /* v2 cannot mark clusters zero: discarding would expose the backing
     * file's data, so QEMU ignores discards there. */
    if (s->version < 3 && has_backing(bs))
        return 0;
    int ret = refuse_if_corrupt(s, e);
    if (ret < 0)
        return ret;
    uint64_t end = off + len;
    uint64_t first = align_up(off, s->cluster_size);
    uint64_t last = end == bs->size ? end : align_down(end, s->cluster_size);
    for (uint64_t c = first; c < last; c += s->cluster_size) {
        struct qcow2_l2e old, l2e = { 0, 0 };
        pthread_mutex_lock(&s->lock);
        ret = qcow2_get_l2e(s, c, &old, e);
        if (ret == 0) {
            bool allocated = old.entry & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED);
            if (s->version < 3) {
                l2e.entry = 0;
            } else if (has_backing(bs) || allocated) {
                if (s->extended_l2)
                    l2e.bitmap = QCOW2_BITMAP_ALL_ZERO;
                else
                    l2e.entry = QCOW2_OFLAG_ZERO;
            } else {
                l2e = old;
            }
            ret = replace_l2e(s, c, old, l2e, allocated, e);
        }
        pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int qcow2_flush(struct blockdev *bs, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_flush_metadata(s, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int write_size_field(struct qcow2_state *s, uint64_t size, struct err *e)
{
    int ret = qcow2_write_header_u64(s, 24, size, e);
    if (ret == 0)
        s->size = s->bs->size = size;
    return ret;
}

/* Shrinking: drop every cluster past the new end (whole clusters; the
 * partial last one stays, as in QEMU), then the L2 tables past it. */
static int shrink(struct qcow2_state *s, uint64_t size, struct err *e)
{
    uint64_t keep = align_up(size, s->cluster_size);
    for (uint64_t c = keep; c < s->size; c += s->cluster_size) {
        struct qcow2_l2e old, none = { 0, 0 };
        int ret = qcow2_get_l2e(s, c, &old, e);
        if (ret == 0)
            ret = replace_l2e(s, c, old, none,
                              (old.entry & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)) != 0,
                              e);
        if (ret < 0)
            return ret;
    }
    int ret = write_size_field(s, size, e);
    if (ret < 0)
        return ret;
    for (uint64_t i = qcow2_l1_entries_for(s, size); i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        uint8_t zero[8] = { 0 };
        qcow2_set_l1_entry(s, i, 0);
        if ((ret = qcow2_pwrite_checked(s, QCOW2_OL_ACTIVE_L1, s->l1_offset + i * 8, zero, 8,
                                        e)) < 0 ||
            (ret = transport_flush(s->bs->file, e)) < 0)
            return ret;
        qcow2_cache_forget(&s->l2_cache, l2);
        if ((ret = qcow2_free_clusters(s, l2, s->cluster_size, e)) < 0)
            return ret;
    }
    return qcow2_flush_metadata(s, e);
}

static int truncate_locked(struct qcow2_state *s, uint64_t size, struct err *e)
{
    /* Growing only adds clusters the snapshots do not have (the active L1
     * table is the image's own, snapshots keep their copies and record
     * their disk size); a v2 snapshot has no disk size, so QEMU refuses. */
    if (s->nb_snapshots && s->version < 3)
        return err_set(e, ENOTSUP, "%s: Can't resize a v2 image which has snapshots",
                       s->bs->filename);
    if (s->nb_snapshots && size < s->size)
        return err_set(e, ENOTSUP, "%s: cannot shrink a qcow2 image with internal snapshots",
                       s->bs->filename);
    if (size > (uint64_t)INT64_MAX)
        return err_set(e, EFBIG, "%s: size too large", s->bs->filename);
    if (size < s->size)
        return shrink(s, size, e);
    int ret = qcow2_grow_l1(s, qcow2_l1_entries_for(s, size), e);
    if (ret == 0)
        ret = write_size_field(s, size, e);
    return ret;
}

/* QEMU's bdrv_co_truncate zero-fills the grown area when the backing file
 * would otherwise show through it (BDRV_REQ_ZERO_WRITE): qemu-img resize
 * and commit into a smaller base.  Opened without its backing file, the
 * image is assumed to have a large one. */
static bool grown_area_needs_zeroes(struct blockdev *bs, uint64_t old_size, uint64_t size)
{
    return size > old_size && has_backing(bs) &&
           (!bs->backing || bs->backing->size > old_size);
}

/* The grown area [old size, size) reads as zeroes before the new size is
 * written, as QEMU's qcow2_co_truncate with BDRV_REQ_ZERO_WRITE: explicit
 * zeroes up to the next (sub)cluster boundary, zero clusters (or
 * subclusters) from there to the end of the last cluster.  A crash leaves
 * the old size (with zero entries past it, which nothing reads) or the new
 * one reading zeroes, never the backing file's data. */
static int zero_grown_area(struct blockdev *bs, uint64_t size, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_grow_l1(s, qcow2_l1_entries_for(s, size), e);
    pthread_mutex_unlock(&s->lock);
    uint64_t end = align_up(size, s->cluster_size);
    if (ret == 0)
        ret = qcow2_write_zeroes(bs, s->size, end - s->size, 0, e);
    if (ret == 0)
        ret = qcow2_flush(bs, e);
    return ret;
}

/* The partial last cluster may hold bytes from before a shrink: the grown
 * part must read as zeroes (QEMU 7.2 leaves them). */
static int zero_stale_tail(struct qcow2_state *s, uint64_t size, struct err *e)
{
    uint64_t tail_end = min_u64(size, align_up(s->size, s->cluster_size));
    if (size > s->size && tail_end > s->size)
        return write_zero_buffer(s, s->size, tail_end - s->size, e);
    return 0;
}

static int qcow2_truncate(struct blockdev *bs, uint64_t size, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    if (size % 512)
        return err_set(e, EINVAL, "%s: The new size must be a multiple of 512", bs->filename);
    bool zero_grown = grown_area_needs_zeroes(bs, s->size, size);
    if (zero_grown && s->version < 3)
        return err_set(e, ENOTSUP, "%s: cannot grow a compat=0.10 image over a larger "
                       "backing file: the new area would show the backing file's data and "
                       "version 2 has no zero clusters (qemu-img refuses too; use compat=1.1)",
                       bs->filename);
    int ret = refuse_if_corrupt(s, e);
    if (ret < 0)
        return ret;
    if (!s->nb_snapshots || s->version >= 3)    /* truncate_locked refuses the rest */
        ret = zero_grown ? zero_grown_area(bs, size, e) : zero_stale_tail(s, size, e);
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&s->lock);
    ret = truncate_locked(s, size, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* QEMU's qcow2_detect_metadata_preallocation: an image whose file has
 * clearly fewer allocated blocks than it has clusters in use (at least
 * 10/9, and 2 more) was preallocated, and its data clusters may be holes
 * that read as zeroes.  Lock held; on error: not preallocated. */
static bool detect_metadata_preallocation(struct qcow2_state *s)
{
    struct err e;
    uint64_t file_size, allocated;
    if (transport_size(s->bs->file, &file_size, &e) < 0 ||
        transport_allocated_size(s->bs->file, &allocated, &e) < 0)
        return false;
    uint64_t real = allocated / s->cluster_size;
    uint64_t threshold = max_u64(real * 10 / 9, real + 2);
    uint64_t end = div_round_up(file_size, s->cluster_size), count = 0;
    for (uint64_t i = 0; i < end && count < threshold; i++) {
        uint64_t refcount;
        if (qcow2_get_refcount(s, i, &refcount, &e) < 0)
            return false;
        count += refcount != 0;
    }
    return count >= threshold;
}

static int qcow2_block_status(struct blockdev *bs, uint64_t off, uint64_t bytes,
                              struct blk_extent *ext, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    enum qcow2_sc_type type;
    uint64_t host, run;
    struct qcow2_l2e l2e;
    pthread_mutex_lock(&s->lock);
    if (s->metadata_prealloc < 0)
        s->metadata_prealloc = detect_metadata_preallocation(s);
    int ret = qcow2_map_run(s, off, bytes, &type, &host, &run, &l2e, e);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    ext->length = run;
    switch (type) {
    case QCOW2_SC_NORMAL:
        ext->flags = BLK_STATUS_DATA | BLK_STATUS_ALLOCATED | BLK_STATUS_OFFSET;
        break;
    case QCOW2_SC_COMPRESSED:
        ext->flags = BLK_STATUS_DATA | BLK_STATUS_ALLOCATED;
        break;
    case QCOW2_SC_ZERO_PLAIN:
        ext->flags = BLK_STATUS_ZERO | BLK_STATUS_ALLOCATED;
        break;
    case QCOW2_SC_ZERO_ALLOC:
        /* QEMU reports the host offset of preallocated zero clusters. */
        ext->flags = BLK_STATUS_ZERO | BLK_STATUS_ALLOCATED | BLK_STATUS_OFFSET;
        break;
    case QCOW2_SC_UNALLOC_ALLOC:
        ext->flags = BLK_STATUS_OFFSET;
        break;
    default:
        ext->flags = 0;
        break;
    }
    if (s->metadata_prealloc && type == QCOW2_SC_NORMAL)
        ext->flags |= BLK_STATUS_RECURSE;
    ext->host_offset = host;
    return 0;
}

/* Compressed clusters stored together: up to this many bytes of guest
 * data are compressed, then their bytes allocated under one hold of the
 * lock, written with one pwritev per contiguous stretch (not one small
 * write per cluster: concurrent writers queue on the host file's lock)
 * and linked into the L2 tables under one more hold. */
#define COMPRESS_BATCH_BYTES (2u << 20)

struct compressed_batch {
    size_t n, cap;              /* clusters held, room for */
    uint8_t *data;              /* cap slots of cluster_size: compressed bytes */
    uint64_t *guest, *host;     /* guest cluster offset, allocated host offset */
    size_t *len;                /* compressed bytes */
    struct iovec *iov;          /* 2 * cap: data, and zeroes between clusters */
    uint8_t *zero;              /* a cluster of zeroes */
};

static int batch_init(struct qcow2_state *s, struct compressed_batch *b, struct err *e)
{
    b->n = 0;
    b->cap = (size_t)max_u64(1, COMPRESS_BATCH_BYTES >> s->cluster_bits);
    b->data = malloc(b->cap << s->cluster_bits);
    b->guest = malloc(b->cap * sizeof(*b->guest));
    b->host = malloc(b->cap * sizeof(*b->host));
    b->len = malloc(b->cap * sizeof(*b->len));
    b->iov = malloc(2 * b->cap * sizeof(*b->iov));
    b->zero = calloc(1, s->cluster_size);
    if (!b->data || !b->guest || !b->host || !b->len || !b->iov || !b->zero)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    return 0;
}

static void batch_free(struct compressed_batch *b)
{
    free(b->data);
    free(b->guest);
    free(b->host);
    free(b->len);
    free(b->iov);
    free(b->zero);
}

/* Allocate the batch's bytes (lock held), as QEMU allocates each
 * compressed cluster, and check that they overlap no metadata. */
static int batch_allocate(struct qcow2_state *s, struct compressed_batch *b, struct err *e)
{
    for (size_t i = 0; i < b->n; i++) {
        int ret = qcow2_alloc_bytes(s, b->len[i], &b->host[i], e);
        if (ret == 0)
            ret = qcow2_pre_write_check(s, 0, b->host[i], b->len[i], e);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Whether allocation j starts where allocation j - 1 ended, or at the
 * start of the next host cluster: qcow2_alloc_bytes moves on to a new
 * cluster when one does not fit the rest of the current one, and the rest
 * of that one is then never allocated (all of the batch was allocated in
 * one hold of the lock), so it may be written with zeroes to make the two
 * one request. */
static bool batch_follows(const struct qcow2_state *s, const struct compressed_batch *b,
                          size_t j)
{
    uint64_t end = b->host[j - 1] + b->len[j - 1];
    return b->host[j] == end || b->host[j] == align_up(end, s->cluster_size);
}

/* Write the batch's data, contiguous allocations in one request each. */
static int batch_write(struct qcow2_state *s, struct compressed_batch *b, struct err *e)
{
    for (size_t i = 0; i < b->n;) {
        int niov = 0;
        size_t j = i;
        do {
            if (j > i && b->host[j] != b->host[j - 1] + b->len[j - 1])
                b->iov[niov++] = (struct iovec){ b->zero,
                                                 b->host[j] - b->host[j - 1] - b->len[j - 1] };
            b->iov[niov++] = (struct iovec){ b->data + (j << s->cluster_bits), b->len[j] };
            j++;
        } while (j < b->n && batch_follows(s, b, j));
        int ret = transport_pwritev(s->bs->file, b->host[i], b->iov, niov, e);
        if (ret < 0)
            return ret;
        i = j;
    }
    return 0;
}

/* Point the L2 entries at the written data (lock held); the data and its
 * refcounts reach the disk before the L2 tables. */
static int batch_link(struct qcow2_state *s, struct compressed_batch *b, struct err *e)
{
    int ret = qcow2_l2_depends_on_refblocks(s, e);
    for (size_t i = 0; i < b->n && ret == 0; i++) {
        struct qcow2_l2e old, l2e = { 0, 0 };
        uint64_t coff = b->host[i], sectors = ((coff + b->len[i] - 1) >> 9) - (coff >> 9);
        l2e.entry = coff | QCOW2_OFLAG_COMPRESSED | (sectors << s->csize_shift);
        if ((ret = qcow2_get_l2e(s, b->guest[i], &old, e)) == 0)
            ret = replace_l2e(s, b->guest[i], old, l2e,
                              (old.entry & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)) != 0,
                              e);
    }
    return ret;
}

/* Store the batch as QEMU stores a compressed cluster: its bytes are
 * allocated under the lock, written without it (other threads compress
 * and store meanwhile; the block layer keeps every other request off
 * these guest clusters), and linked under the lock once written, so that
 * nothing refers to them before they hold the data.  A failure after the
 * allocation leaks the bytes (check -r leaks reclaims them). */
static int batch_store(struct qcow2_state *s, struct compressed_batch *b, struct err *e)
{
    if (!b->n)
        return 0;
    pthread_mutex_lock(&s->lock);
    int ret = batch_allocate(s, b, e);
    pthread_mutex_unlock(&s->lock);
    if (ret == 0)
        ret = batch_write(s, b, e);
    if (ret == 0) {
        pthread_mutex_lock(&s->lock);
        ret = batch_link(s, b, e);
        pthread_mutex_unlock(&s->lock);
    }
    b->n = 0;
    return ret;
}

/* Clusters that do not compress are written plainly, consecutive ones in
 * one write: [off, off + len) from src. */
struct plain_run {
    uint64_t off, len;
    const uint8_t *src;
};

static int plain_flush(struct qcow2_state *s, struct plain_run *p, struct err *e)
{
    int ret = p->len ? write_buf(s, p->off, p->src, p->len, e) : 0;
    p->len = 0;
    return ret;
}

static int plain_add(struct qcow2_state *s, struct plain_run *p, uint64_t off,
                     const uint8_t *src, uint64_t n, struct err *e)
{
    if (p->len && p->off + p->len != off) {
        int ret = plain_flush(s, p, e);
        if (ret < 0)
            return ret;
    }
    if (!p->len) {
        p->off = off;
        p->src = src;
    }
    p->len += n;
    return 0;
}

/* Compress the cluster at guest `off` (n bytes of src: a whole cluster, or
 * the disk's short last one) into the batch, storing the batch when full;
 * one that does not compress joins the plain run. */
static int compress_cluster(struct qcow2_state *s, struct qcow2_compressor *comp,
                            struct compressed_batch *b, struct plain_run *plain,
                            uint8_t *pad, uint64_t off, const uint8_t *src, uint64_t n,
                            struct err *e)
{
    /* A short last cluster is compressed padded with zeroes, as QEMU.
     * QEMU's room for the result is a byte short of a cluster: with the
     * same room, the same clusters stay uncompressed (zlib output of
     * cluster_size - 1 bytes does not fit, see qcow2_compress). */
    const uint8_t *cluster = src;
    if (n < s->cluster_size) {
        memcpy(pad, src, n);
        memset(pad + n, 0, s->cluster_size - n);
        cluster = pad;
    }
    uint8_t *slot = b->data + (b->n << s->cluster_bits);
    ssize_t clen = qcow2_compressor_run(comp, cluster, s->cluster_size, slot,
                                        s->cluster_size - 1, e);
    if (clen == -ENOSPC) {
        err_clear(e);
        return plain_add(s, plain, off, src, n, e);
    }
    if (clen < 0)
        return (int)clen;
    b->guest[b->n] = off;
    b->len[b->n++] = (size_t)clen;
    return b->n == b->cap ? batch_store(s, b, e) : 0;
}

/* One compression context serves every cluster of the call (the copy
 * engine passes runs of clusters). */
static int qcow2_pwrite_compressed(struct blockdev *bs, uint64_t off, const void *buf,
                                   size_t len, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    struct compressed_batch b = { 0 };
    struct plain_run plain = { 0 };
    struct qcow2_compressor *comp = NULL;
    uint8_t *pad = malloc(s->cluster_size);
    int ret = pad ? batch_init(s, &b, e) : err_set(e, ENOMEM, "%s: out of memory",
                                                   bs->filename);
    if (ret == 0)
        ret = qcow2_compressor_open(s->compression_type, &comp, e);
    const uint8_t *src = buf;
    while (len && ret == 0) {
        uint64_t n = min_u64(len, s->cluster_size - (off & (s->cluster_size - 1)));
        if ((off & (s->cluster_size - 1)) || (n < s->cluster_size && off + n != bs->size))
            ret = err_set(e, EINVAL, "%s: compressed write at %llu+%llu is not cluster "
                          "aligned", bs->filename, (unsigned long long)off,
                          (unsigned long long)n);
        else
            ret = compress_cluster(s, comp, &b, &plain, pad, off, src, n, e);
        off += n;
        src += n;
        len -= n;
    }
    if (ret == 0)
        ret = plain_flush(s, &plain, e);
    if (ret == 0)
        ret = batch_store(s, &b, e);
    qcow2_compressor_close(comp);
    batch_free(&b);
    free(pad);
    return ret;
}

static uint32_t qcow2_write_alignment(struct blockdev *bs)
{
    struct qcow2_state *s = bs->opaque;
    return (uint32_t)s->cluster_size;
}

static int qcow2_set_backing(struct blockdev *bs, const char *name, const char *format,
                             struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    char *old_name = bs->backing_name, *old_format = bs->backing_format;
    bs->backing_name = name && name[0] ? strdup(name) : NULL;
    bs->backing_format = format && name && name[0] ? strdup(format) : NULL;
    int ret;
    if ((name && name[0] && !bs->backing_name) || (format && name && name[0] &&
                                                   !bs->backing_format))
        ret = err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    else
        ret = qcow2_update_header(s, e);
    if (ret < 0) {
        free(bs->backing_name);
        free(bs->backing_format);
        bs->backing_name = old_name;
        bs->backing_format = old_format;
        return ret;
    }
    free(old_name);
    free(old_format);
    return 0;
}

static int qcow2_get_info(struct blockdev *bs, struct prop *info, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    prop_add_uint(info, "cluster-size", s->cluster_size);
    struct prop *spec = prop_add_object(info, "format-specific");
    prop_add_string(spec, "type", "qcow2");
    struct prop *data = prop_add_object(spec, "data");
    prop_add_string(data, "compat", s->version == 2 ? "0.10" : "1.1");
    prop_add_string(data, "compression-type",
                    s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    if (s->version >= 3)
        prop_add_bool(data, "lazy-refcounts", s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS);
    int ret = qcow2_bitmaps_info(s, data, e);
    if (ret < 0)
        return ret;
    prop_add_uint(data, "refcount-bits", 1ull << s->refcount_order);
    if (s->version >= 3) {
        prop_add_bool(data, "corrupt", s->incompatible & QCOW2_INCOMPAT_CORRUPT);
        prop_add_bool(data, "extended-l2", s->extended_l2);
    }
    prop_add_bool(info, "dirty-flag", s->incompatible & QCOW2_INCOMPAT_DIRTY);
    if (s->nb_snapshots) {
        struct prop *list = prop_add_array(info, "snapshots");
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            const struct qcow2_snapshot *sn = &s->snapshots[i];
            struct prop *o = prop_add_object(list, NULL);
            if (sn->icount != UINT64_MAX)
                prop_add_uint(o, "icount", sn->icount);
            prop_add_uint(o, "vm-clock-nsec", sn->vm_clock_nsec % 1000000000ull);
            prop_add_string(o, "name", sn->name);
            prop_add_uint(o, "date-sec", sn->date_sec);
            prop_add_uint(o, "date-nsec", sn->date_nsec);
            prop_add_uint(o, "vm-clock-sec", sn->vm_clock_nsec / 1000000000ull);
            prop_add_string(o, "id", sn->id);
            prop_add_uint(o, "vm-state-size", sn->vm_state_size);
        }
    }
    if (prop_failed(info))
        return err_set(e, ENOMEM, "out of memory");
    return 0;
}

/* --- create --- */

struct create_opts {
    uint64_t cluster_size;
    uint32_t version;
    uint64_t refcount_bits;
    bool lazy_refcounts, extended_l2;
    enum blk_prealloc prealloc;
    enum qcow2_compression_type compression;
};

static int parse_create_opts(const struct blk_create_params *p, struct create_opts *o,
                             struct err *e)
{
    const char *f = p->filename;
    int ret;
    if ((ret = kvopts_get_size(p->opts, "cluster_size", 65536, &o->cluster_size, e)) < 0)
        return ret;
    if (!is_power_of_2(o->cluster_size) || o->cluster_size < 512 ||
        o->cluster_size > (2u << 20))
        return err_set(e, EINVAL, "%s: Cluster size must be a power of two between 512 and "
                       "2048k", f);
    const char *compat = kvopts_get(p->opts, "compat");
    if (!compat || !strcmp(compat, "1.1") || !strcmp(compat, "v3"))
        o->version = 3;
    else if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
        o->version = 2;
    else
        return err_set(e, EINVAL, "%s: Parameter 'compat' does not accept value '%s' (use "
                       "0.10 or 1.1)", f, compat);
    if ((ret = kvopts_get_size(p->opts, "refcount_bits", 16, &o->refcount_bits, e)) < 0)
        return ret;
    if (!is_power_of_2(o->refcount_bits) || o->refcount_bits > 64)
        return err_set(e, EINVAL, "%s: Refcount width must be a power of two and may not "
                       "exceed 64 bits", f);
    if ((ret = kvopts_get_bool(p->opts, "lazy_refcounts", false, &o->lazy_refcounts, e)) < 0 ||
        (ret = kvopts_get_bool(p->opts, "extended_l2", false, &o->extended_l2, e)) < 0)
        return ret;
    const char *ctype = kvopts_get(p->opts, "compression_type");
    if (!ctype || !strcmp(ctype, "zlib"))
        o->compression = QCOW2_COMPRESSION_ZLIB;
    else if (!strcmp(ctype, "zstd"))
        o->compression = QCOW2_COMPRESSION_ZSTD;
    else
        return err_set(e, EINVAL, "%s: Parameter 'compression_type' does not accept value "
                       "'%s' (use zlib or zstd)", f, ctype);
    const char *prealloc = kvopts_get(p->opts, "preallocation");
    o->prealloc = BLK_PREALLOC_OFF;
    if (prealloc && blk_parse_prealloc(prealloc, &o->prealloc) < 0)
        return err_set(e, EINVAL, "%s: Parameter 'preallocation' does not accept value '%s' "
                       "(use off, metadata, falloc or full)", f, prealloc);
    /* -b/-F arrive in p; the -o spellings were consumed by the command. */
    kvopts_get(p->opts, "backing_file");
    kvopts_get(p->opts, "backing_fmt");
    if ((ret = kvopts_check_unused(p->opts, "qcow2", e)) < 0)
        return ret;
    if (o->version == 2) {
        const char *v3 = "require compatibility level 1.1 or above (use compat=1.1)";
        if (o->refcount_bits != 16)
            return err_set(e, EINVAL, "%s: Different refcount widths than 16 bits %s", f, v3);
        if (o->lazy_refcounts)
            return err_set(e, EINVAL, "%s: Lazy refcounts %s", f, v3);
        if (o->extended_l2)
            return err_set(e, EINVAL, "%s: Extended L2 entries %s", f, v3);
        if (o->compression != QCOW2_COMPRESSION_ZLIB)
            return err_set(e, EINVAL, "%s: Non-zlib compression type %s", f, v3);
    }
    if (o->extended_l2 && o->cluster_size < 16384)
        return err_set(e, EINVAL, "%s: Extended L2 entries are only supported with cluster "
                       "sizes of at least 16384 bytes", f);
    if (p->backing_file && o->prealloc != BLK_PREALLOC_OFF)
        return err_set(e, EINVAL, "%s: Backing file and preallocation can only be used at "
                       "the same time if extended_l2 is on", f);
    return 0;
}

static int add_run(uint64_t (**runs)[2], size_t *n, uint64_t start, uint64_t end,
                   struct err *e)
{
    uint64_t (*more)[2] = realloc(*runs, sizeof(**runs) * (*n + 1));
    if (!more)
        return err_set(e, ENOMEM, "out of memory");
    more[*n][0] = start;
    more[*n][1] = end;
    *runs = more;
    (*n)++;
    return 0;
}

/* Preallocation: every cluster gets a host cluster, left unwritten
 * (metadata: it reads as zeroes from the sparse file), or then allocated
 * in the file (falloc: fallocate; full: written with zeroes), as QEMU's
 * preallocation modes.  The data clusters' host runs are allocated once
 * the metadata is flushed, skipping the L2 tables and refcount blocks
 * allocated between them. */
static int preallocate(struct qcow2_state *s, enum blk_prealloc mode, uint64_t start,
                       uint64_t end, struct err *e)
{
    uint64_t end_of_data = 0, run_start = 0, run_end = 0;
    uint64_t (*runs)[2] = NULL;
    size_t nruns = 0;
    int ret = 0;
    uint64_t l2_span = qcow2_l1_coverage(s);
    /* A cluster only partly new holds old contents (maybe its backing
     * file's): left as it is. */
    start = align_up(start, s->cluster_size);
    for (uint64_t off = start; off < end && ret == 0; off += s->cluster_size) {
        uint64_t host;
        struct qcow2_l2e l2e = { 0, 0 };
        if ((ret = qcow2_get_l2e(s, off, &l2e, e)) < 0)
            break;
        if (l2e.entry & ~QCOW2_OFLAG_COPIED)
            continue;       /* allocated (or a zero cluster) already */
        /* The L2 table first, then its data clusters, as QEMU lays them
         * out (the data of one table is then contiguous). */
        if ((off == start || off % l2_span == 0) && (ret = qcow2_set_l2e(s, off, l2e, e)) < 0)
            break;
        if ((ret = qcow2_alloc_clusters(s, 1, &host, e)) < 0)
            break;
        l2e.entry = host | QCOW2_OFLAG_COPIED;
        l2e.bitmap = s->extended_l2 ? QCOW2_BITMAP_ALL_ALLOC : 0;
        if ((ret = qcow2_l2_depends_on_refblocks(s, e)) < 0 ||
            (ret = qcow2_set_l2e(s, off, l2e, e)) < 0)
            break;
        end_of_data = max_u64(end_of_data, host + s->cluster_size);
        if (mode == BLK_PREALLOC_METADATA || host == run_end) {
            run_end = host + s->cluster_size;
            continue;
        }
        if (run_end > run_start && (ret = add_run(&runs, &nruns, run_start, run_end, e)) < 0)
            break;
        run_start = host;
        run_end = host + s->cluster_size;
    }
    if (ret == 0 && mode != BLK_PREALLOC_METADATA && run_end > run_start)
        ret = add_run(&runs, &nruns, run_start, run_end, e);
    if (ret == 0)
        ret = qcow2_flush_metadata(s, e);
    uint64_t file_size;
    if (ret == 0)
        ret = transport_size(s->bs->file, &file_size, e);
    if (ret == 0 && file_size < end_of_data)
        ret = transport_truncate(s->bs->file, end_of_data, e);
    for (size_t i = 0; i < nruns && ret == 0; i++)
        ret = transport_preallocate(s->bs->file, runs[i][0], runs[i][1] - runs[i][0],
                                   mode == BLK_PREALLOC_FULL, e);
    free(runs);
    return ret;
}

static int qcow2_create(struct transport *file, const struct blk_create_params *p,
                        struct err *e)
{
    struct create_opts o;
    int ret = parse_create_opts(p, &o, e);
    if (ret < 0)
        return ret;
    struct blockdev bs = {
        .filename = (char *)p->filename, .file = file, .read_only = false,
        .backing_name = (char *)p->backing_file, .backing_format = (char *)p->backing_format,
    };
    /* Cluster 0 header, 1 refcount table, 2 refcount block: the minimal
     * image, then the driver itself grows it to the size (L1 table). */
    struct qcow2_state h = { .bs = &bs };
    h.version = o.version;
    h.cluster_bits = (uint32_t)__builtin_ctzll(o.cluster_size);
    h.cluster_size = o.cluster_size;
    h.reftable_offset = o.cluster_size;
    h.reftable_clusters = 1;
    h.refcount_order = (uint32_t)__builtin_ctzll(o.refcount_bits);
    h.compression_type = o.compression;
    if (o.extended_l2)
        h.incompatible |= QCOW2_INCOMPAT_EXTL2;
    if (o.compression != QCOW2_COMPRESSION_ZLIB)
        h.incompatible |= QCOW2_INCOMPAT_COMPRESSION;
    if (o.lazy_refcounts)
        h.compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    h.header_length = o.version == 3 ? QCOW2_HEADER_LENGTH_WRITTEN : QCOW2_V2_HEADER_LENGTH;
    uint8_t *buf = calloc(3, o.cluster_size);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", p->filename);
    ret = qcow2_encode_header(&h, buf, e);
    /* From here on the backing file name and format are the ones
     * open_state reads back from the header, owned by bs. */
    bs.backing_name = bs.backing_format = NULL;
    if (ret < 0)
        goto out;
    be64_write(buf + o.cluster_size, 2 * o.cluster_size);
    if ((ret = transport_pwrite(file, 0, buf, 3 * o.cluster_size, e)) < 0 ||
        (ret = transport_flush(file, e)) < 0)
        goto out;
    struct qcow2_state *s;
    if ((ret = open_state(&bs, &s, e)) < 0)
        goto out;
    /* Nobody else sees the image yet; the lock is taken all the same, as
     * the functions below expect it. */
    pthread_mutex_lock(&s->lock);
    ret = qcow2_update_refcount(s, 0, 3 * o.cluster_size, 1, e);
    if (ret == 0 && p->size)
        ret = truncate_locked(s, p->size, e);
    if (ret == 0 && o.prealloc != BLK_PREALLOC_OFF)
        ret = preallocate(s, o.prealloc, 0, s->size, e);
    if (ret == 0)
        ret = qcow2_flush_metadata(s, e);
    pthread_mutex_unlock(&s->lock);
    free_state(s);
out:
    free(bs.backing_name);      /* also when open_state failed after reading them */
    free(bs.backing_format);
    free(buf);
    return ret;
}

/* --- internal snapshots (snapshot.c) --- */

static int qcow2_snapshot_create(struct blockdev *bs, const char *name, uint32_t date_sec,
                                 uint32_t date_nsec, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = qcow2_snapshot_create_locked(s, name, date_sec, date_nsec, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int qcow2_snapshot_delete(struct blockdev *bs, const char *name, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int i = qcow2_snapshot_find(s, NULL, name);
    int ret = i < 0 ? err_set(e, ENOENT, "%s: snapshot '%s' not found", bs->filename, name)
                    : qcow2_snapshot_delete_locked(s, i, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* By ID first, then by name, as QEMU's find_snapshot_by_id_or_name. */
static int qcow2_snapshot_apply(struct blockdev *bs, const char *id_or_name, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int i = qcow2_snapshot_find(s, id_or_name, NULL);
    if (i < 0)
        i = qcow2_snapshot_find(s, NULL, id_or_name);
    int ret = i < 0 ? err_set(e, ENOENT, "%s: snapshot '%s' not found", bs->filename,
                              id_or_name)
                    : qcow2_snapshot_apply_locked(s, i, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ID and name as QEMU's find_snapshot_by_id_and_name: both must match
 * when both are given. */
static int qcow2_snapshot_load(struct blockdev *bs, const char *id, const char *name,
                               struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int i = qcow2_snapshot_find(s, id, name);
    int ret = i < 0 ? -ENOENT : qcow2_snapshot_load_locked(s, i, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Bitmaps need the version 3 header extension. */
static bool qcow2_bitmaps_persistent(struct blockdev *bs)
{
    struct qcow2_state *s = bs->opaque;
    return s->version >= 3;
}

static int qcow2_preallocate(struct blockdev *bs, uint64_t off, uint64_t len,
                             enum blk_prealloc mode, struct err *e)
{
    return preallocate(bs->opaque, mode, off, off + len, e);
}

const struct blockdrv blockdrv_qcow2 = {
    .name = "qcow2",
    .create_options = qcow2_create_options,
    .amend_options = qcow2_amend_options,
    .measure = qcow2_measure,
    .bitmaps_persistent = qcow2_bitmaps_persistent,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_load = qcow2_snapshot_load,
    .amend = qcow2_amend,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create = qcow2_create,
    .preadv = qcow2_preadv,
    .pwritev = qcow2_pwritev,
    .block_status = qcow2_block_status,
    .write_zeroes = qcow2_write_zeroes,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .truncate = qcow2_truncate,
    .preallocate = qcow2_preallocate,
    .get_info = qcow2_get_info,
    .set_backing = qcow2_set_backing,
    .make_empty = qcow2_make_empty,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .copy_range_to = qcow2_copy_range_to,
    .write_alignment = qcow2_write_alignment,
    .check = qcow2_check,
    .bitmaps_load = qcow2_bitmaps_load,
    .bitmaps_store = qcow2_bitmaps_store,
    .bitmap_check_new = qcow2_bitmap_check_new,
    .record_get = qcow2_record_get,
    .record_set = qcow2_record_set,
};
