/* qcow2 amend: change compat (0.10 <-> 1.1), refcount_bits, lazy_refcounts,
 * the size and the backing file of an existing image, in QEMU's order
 * (qcow2_amend_options): upgrade first, then the refcount width, lazy
 * refcounts, size, and downgrade last.  Unlike QEMU every precondition is
 * checked before anything changes, so a refused amend leaves the image
 * as it was. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/blockdev-bitmaps.h"
#include "formats/qcow2/qcow2.h"

struct amend_opts {
    uint32_t version;
    uint64_t refcount_bits;
    bool lazy_refcounts;
    bool set_size;
    uint64_t size;
    const char *backing_file, *backing_fmt;
};

static int parse_amend_opts(struct qcow2_state *s, struct kvopts *opts, struct amend_opts *o,
                            struct err *e)
{
    const char *f = s->bs->filename;
    o->version = s->version;
    const char *compat = kvopts_get(opts, "compat");
    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2")))
        o->version = 2;
    else if (compat && (!strcmp(compat, "1.1") || !strcmp(compat, "v3")))
        o->version = 3;
    else if (compat)
        return err_set(e, EINVAL, "%s: Unknown compatibility level %s", f, compat);
    const char *bits = kvopts_get(opts, "refcount_bits");
    o->refcount_bits = 1ull << s->refcount_order;
    if (bits) {
        char *end;
        o->refcount_bits = strtoull(bits, &end, 10);
        if (*end || end == bits || !is_power_of_2(o->refcount_bits) || o->refcount_bits > 64)
            return err_set(e, EINVAL, "%s: Refcount width must be a power of two and may not "
                           "exceed 64 bits", f);
    }
    int ret = kvopts_get_bool(opts, "lazy_refcounts", s->compatible &
                              QCOW2_COMPAT_LAZY_REFCOUNTS, &o->lazy_refcounts, e);
    if (ret < 0)
        return ret;
    o->set_size = kvopts_get(opts, "size") != NULL;
    if ((ret = kvopts_get_size(opts, "size", 0, &o->size, e)) < 0)
        return ret;
    o->backing_file = kvopts_get(opts, "backing_file");
    o->backing_fmt = kvopts_get(opts, "backing_fmt");
    if (o->backing_fmt && !o->backing_file && !s->bs->backing_name)
        return err_set(e, EINVAL, "%s: backing_fmt needs a backing file", f);
    return 0;
}

/* Progress over the operations (upgrade, refcount width, downgrade), each
 * counted as 1000 units, as QEMU's amend status callback does. */
struct amend_progress {
    const struct blk_progress *p;
    uint64_t ops, current;
};

static void report(struct amend_progress *ap, uint64_t done, uint64_t total)
{
    if (ap->p && ap->p->fn && ap->ops)
        ap->p->fn(ap->p->opaque, ap->current * 1000 + (total ? done * 1000 / total : 1000),
                  ap->ops * 1000);
}

static void next_op(struct amend_progress *ap)
{
    report(ap, 1, 1);
    ap->current++;
}

/* --- scans of the L2 tables --- */

/* Call fn on every L2 entry reachable from `l1`; stops at the first
 * non-zero return. */
static int for_each_l2e(struct qcow2_state *s, const uint64_t *l1, uint32_t n,
                        int (*fn)(struct qcow2_state *s, uint64_t entry), struct err *e)
{
    for (uint32_t i = 0; i < n; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        uint8_t *table;
        if (!l2)
            continue;
        int ret = qcow2_cache_get(s, &s->l2_cache, l2, false, &table, e);
        if (ret < 0)
            return ret;
        for (uint64_t j = 0; j < s->l2_entries; j++)
            if ((ret = fn(s, be64_read(table + j * s->l2_entry_bytes))) != 0)
                return ret;
    }
    return 0;
}

static int is_compressed(struct qcow2_state *s, uint64_t entry)
{
    return (entry & QCOW2_OFLAG_COMPRESSED) != 0;
}

static int is_zero(struct qcow2_state *s, uint64_t entry)
{
    return !s->extended_l2 && !(entry & QCOW2_OFLAG_COMPRESSED) && (entry & QCOW2_OFLAG_ZERO);
}

static int snapshots_have_zero_clusters(struct qcow2_state *s, struct err *e)
{
    for (uint32_t k = 0; k < s->nb_snapshots; k++) {
        const struct qcow2_snapshot *sn = &s->snapshots[k];
        uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, 8);
        if (!l1)
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        int ret = sn->l1_size ? transport_pread(s->bs->file, sn->l1_offset, l1,
                                               (size_t)sn->l1_size * 8, e) : 0;
        for (uint32_t i = 0; ret == 0 && i < sn->l1_size; i++)
            l1[i] = be64_read(&l1[i]);
        if (ret == 0)
            ret = for_each_l2e(s, l1, sn->l1_size, is_zero, e);
        free(l1);
        if (ret != 0)
            return ret;
    }
    return 0;
}

/* --- checks before anything changes --- */

static int check_downgrade(struct qcow2_state *s, const struct amend_opts *o, struct err *e)
{
    const char *f = s->bs->filename;
    if (o->refcount_bits != 16)
        return err_set(e, ENOTSUP, "%s: compat=0.10 requires refcount_bits=16", f);
    if (o->lazy_refcounts)
        return err_set(e, EINVAL, "%s: Lazy refcounts only supported with compatibility level "
                       "1.1 and above (use compat=1.1 or greater)", f);
    uint64_t size = o->set_size ? o->size : s->size;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (s->snapshots[i].vm_state_size > UINT32_MAX || s->snapshots[i].disk_size != size)
            return err_set(e, ENOTSUP, "%s: Internal snapshots prevent downgrade of image", f);
    uint64_t incompat = s->incompatible & ~(QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_DIRTY);
    if (incompat)
        return err_set(e, ENOTSUP, "%s: Cannot downgrade an image with incompatible features "
                       "0x%llx set", f, (unsigned long long)incompat);
    /* QEMU 7.2 downgrades and leaves the bitmaps to be found inconsistent
     * (and their clusters leaked); refuse instead, nothing is lost. */
    if (blk_bitmap_count(s->bs))
        return err_set(e, ENOTSUP, "%s: Cannot downgrade an image with persistent bitmaps "
                       "(remove them first with 'imgtool bitmap --remove')", f);
    int ret;
    if ((s->incompatible & QCOW2_INCOMPAT_COMPRESSION) &&
        (ret = for_each_l2e(s, s->l1, s->l1_size, is_compressed, e)) != 0)
        return ret < 0 ? ret : err_set(e, ENOTSUP, "%s: Cannot downgrade an image with zstd "
                                       "compression type and existing compressed clusters", f);
    if ((ret = snapshots_have_zero_clusters(s, e)) != 0)
        return ret < 0 ? ret : err_set(e, ENOTSUP, "%s: Cannot downgrade: an internal "
                                       "snapshot has zero clusters (delete it first)", f);
    return 0;
}

static int check_amend(struct qcow2_state *s, const struct amend_opts *o, struct err *e)
{
    const char *f = s->bs->filename;
    if (o->version < 3 && o->refcount_bits != 16 && o->refcount_bits != (1ull << s->refcount_order))
        return err_set(e, EINVAL, "%s: Refcount widths other than 16 bits require "
                       "compatibility level 1.1 or above (use compat=1.1 or greater)", f);
    if (o->version < 3 && o->lazy_refcounts)
        return err_set(e, EINVAL, "%s: Lazy refcounts only supported with compatibility level "
                       "1.1 and above (use compat=1.1 or greater)", f);
    if (o->version < s->version)
        return check_downgrade(s, o, e);
    return 0;
}

/* --- refcount width --- */

/* The old refcount blocks, sorted, to tell them apart in one lookup. */
struct old_refblocks {
    uint64_t *offsets;
    size_t count;
};

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int collect_refblocks(struct qcow2_state *s, struct old_refblocks *rb, struct err *e)
{
    rb->count = 0;
    rb->offsets = malloc((s->reftable_entries ? s->reftable_entries : 1) * sizeof(uint64_t));
    if (!rb->offsets)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i])
            rb->offsets[rb->count++] = s->reftable[i];
    qsort(rb->offsets, rb->count, sizeof(uint64_t), compare_u64);
    return 0;
}

/* Clusters that hold the refcount structure itself. */
static bool is_refcount_metadata(struct qcow2_state *s, const struct old_refblocks *rb,
                                 uint64_t index)
{
    uint64_t off = index << s->cluster_bits;
    if (off >= s->reftable_offset &&
        off < s->reftable_offset + ((uint64_t)s->reftable_clusters << s->cluster_bits))
        return true;
    return bsearch(&off, rb->offsets, rb->count, sizeof(uint64_t), compare_u64) != NULL;
}

/* One past the last cluster with a non-zero refcount. */
static int refcount_end(struct qcow2_state *s, uint64_t *end, struct err *e)
{
    *end = 0;
    for (uint64_t rt = s->reftable_entries; rt-- > 0 && !*end;) {
        if (!s->reftable[rt])
            continue;
        for (uint64_t i = (rt + 1) << s->rb_bits; i-- > rt << s->rb_bits;) {
            uint64_t rc;
            int ret = qcow2_get_refcount(s, i, &rc, e);
            if (ret < 0)
                return ret;
            if (rc) {
                *end = i + 1;
                break;
            }
        }
    }
    return 0;
}

/* Where the new structure goes (from cluster `start`: table, then dense
 * refcount blocks) and how big it is: the fixed point where the blocks
 * also count the table and themselves. */
static void new_refcount_layout(struct qcow2_state *s, uint64_t start, uint32_t order,
                                uint64_t *table_clusters, uint64_t *blocks)
{
    uint64_t per_block = (s->cluster_size * 8) >> order, t = 0, b = 0, last;
    do {
        last = t + b;
        b = div_round_up(start + t + b, per_block);
        t = div_round_up(b * 8, s->cluster_size);
    } while (t + b != last);
    *table_clusters = t;
    *blocks = b;
}

/* Fill refcount block `b` of the new width: the old refcounts, except the
 * old refcount structure (free once the header is switched), and 1 for
 * the new structure from cluster `start`. */
static int fill_new_block(struct qcow2_state *s, const struct old_refblocks *rb, uint8_t *buf,
                          uint64_t b, uint32_t order, uint64_t used_end, uint64_t start,
                          uint64_t end, struct err *e)
{
    uint64_t per_block = (s->cluster_size * 8) >> order;
    uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    memset(buf, 0, s->cluster_size);
    for (uint64_t k = 0; k < per_block; k++) {
        uint64_t i = b * per_block + k, rc = 0;
        if (i >= start && i < end) {
            rc = 1;
        } else if (i < used_end && !is_refcount_metadata(s, rb, i)) {
            int ret = qcow2_get_refcount(s, i, &rc, e);
            if (ret < 0)
                return ret;
            if (rc > max)
                return err_set(e, EINVAL, "%s: Cannot decrease refcount entry width to %u "
                               "bits: Cluster at offset %#llx has a refcount of %llu",
                               s->bs->filename, 1u << order,
                               (unsigned long long)(i << s->cluster_bits),
                               (unsigned long long)rc);
        }
        qcow2_refcount_entry_set(buf, k, order, rc);
    }
    return 0;
}

static void forget_refblocks(struct qcow2_state *s)
{
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i])
            qcow2_cache_forget(&s->rb_cache, s->reftable[i]);
}

/* Rewrite the refcount table and blocks with (1 << order)-bit entries:
 * written past everything in use and flushed, then the header switched
 * (reftable offset and size, refcount_order: one header write), so that a
 * crash leaves the old structure or the new one. */
static int change_refcount_order(struct qcow2_state *s, uint32_t order, struct amend_progress *ap,
                                 struct err *e)
{
    uint64_t file_size, used_end, t, b;
    int ret;
    if ((ret = qcow2_flush_metadata(s, e)) < 0 ||
        (ret = transport_size(s->bs->file, &file_size, e)) < 0 ||
        (ret = refcount_end(s, &used_end, e)) < 0)
        return ret;
    uint64_t start = max_u64(used_end, div_round_up(file_size, s->cluster_size));
    new_refcount_layout(s, start, order, &t, &b);
    if (t * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return err_set(e, EFBIG, "%s: the new refcount table would be too large",
                       s->bs->filename);
    uint64_t end = start + t + b;
    struct old_refblocks rb = { NULL, 0 };
    uint8_t *buf = malloc(s->cluster_size), *table = calloc(t, s->cluster_size);
    if (!buf || !table) {
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        goto out;
    }
    if ((ret = collect_refblocks(s, &rb, e)) < 0)
        goto out;
    for (uint64_t i = 0; i < b; i++) {
        uint64_t at = (start + t + i) << s->cluster_bits;
        be64_write(table + 8 * i, at);
        if ((ret = fill_new_block(s, &rb, buf, i, order, used_end, start, end, e)) < 0 ||
            (ret = qcow2_pwrite_checked(s, 0, at, buf, s->cluster_size, e)) < 0)
            goto out;
        report(ap, i + 1, b);
    }
    if ((ret = qcow2_pwrite_checked(s, 0, start << s->cluster_bits, table,
                                    t << s->cluster_bits, e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    forget_refblocks(s);
    uint64_t old_offset = s->reftable_offset;
    uint32_t old_clusters = s->reftable_clusters, old_order = s->refcount_order;
    s->reftable_offset = start << s->cluster_bits;
    s->reftable_clusters = (uint32_t)t;
    s->refcount_order = order;
    if ((ret = qcow2_update_header(s, e)) < 0) {
        s->reftable_offset = old_offset;
        s->reftable_clusters = old_clusters;
        s->refcount_order = old_order;
        goto out;
    }
    s->rb_bits = s->cluster_bits + 3 - order;
    s->refcount_max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    s->free_cluster_hint = 1;
    s->free_byte_offset = 0;
    free(s->reftable);
    s->reftable = NULL;
    ret = qcow2_refcount_init(s, e);
out:
    free(rb.offsets);
    free(buf);
    free(table);
    return ret;
}

/* --- compat --- */

static int upgrade(struct qcow2_state *s, struct err *e)
{
    /* v3 snapshots carry the 64-bit VM state size and the disk size:
     * rewrite the table if one lacks them, as QEMU does. */
    bool rewrite = false;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (s->snapshots[i].extra_len < 16) {
            s->snapshots[i].extra_len = 24;
            rewrite = true;
        }
    int ret = rewrite ? qcow2_write_snapshot_table(s, e) : 0;
    if (ret < 0)
        return ret;
    s->version = 3;
    s->refcount_order = 4;
    s->header_length = QCOW2_HEADER_LENGTH_WRITTEN;
    if ((ret = qcow2_update_header(s, e)) < 0)
        s->version = 2;
    return ret;
}

/* v2 has no zero flag: a zero cluster becomes unallocated (no backing
 * file), or a cluster of zeroes (QEMU's qcow2_expand_zero_clusters). */
static int expand_zero_entry(struct qcow2_state *s, struct qcow2_l2e *l2e, uint64_t *drop,
                             bool *changed, struct err *e)
{
    uint64_t host = l2e->entry & QCOW2_OFFSET_MASK;
    *drop = 0;
    if (!is_zero(s, l2e->entry))
        return 0;
    *changed = true;
    if (!host && !s->bs->backing_name) {
        l2e->entry = 0;
        return 0;
    }
    /* A zero cluster still shared with a snapshot keeps its data there. */
    if (host && !(l2e->entry & QCOW2_OFLAG_COPIED)) {
        *drop = host;
        host = 0;
    }
    int ret;
    if (!host && (ret = qcow2_alloc_clusters(s, 1, &host, e)) < 0)
        return ret;
    if ((ret = transport_write_zeroes(s->bs->file, host, s->cluster_size, 0, e)) < 0)
        return ret;
    l2e->entry = host | QCOW2_OFLAG_COPIED;
    return 0;
}

static int expand_zero_clusters(struct qcow2_state *s, struct amend_progress *ap, struct err *e)
{
    struct qcow2_l2e *run = calloc(s->l2_entries, sizeof(*run));
    uint64_t *drop = calloc(s->l2_entries, sizeof(*drop));
    int ret = 0;
    if (!run || !drop) {
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        goto out;
    }
    for (uint32_t i = 0; ret == 0 && i < s->l1_size; i++) {
        report(ap, i, s->l1_size);
        if (!(s->l1[i] & QCOW2_OFFSET_MASK))
            continue;
        uint64_t off = (uint64_t)i * qcow2_l1_coverage(s);
        bool changed = false;
        if ((ret = qcow2_get_l2e_run(s, off, s->l2_entries, run, e)) < 0)
            break;
        for (uint64_t j = 0; ret == 0 && j < s->l2_entries; j++)
            ret = expand_zero_entry(s, &run[j], &drop[j], &changed, e);
        if (ret < 0 || !changed)
            continue;
        /* The zeroes are on disk before an entry points to them. */
        if ((ret = transport_flush(s->bs->file, e)) < 0 ||
            (ret = qcow2_l2_depends_on_refblocks(s, e)) < 0 ||
            (ret = qcow2_set_l2e_run(s, off, s->l2_entries, run, e)) < 0)
            break;
        for (uint64_t j = 0; ret == 0 && j < s->l2_entries; j++)
            if (drop[j])
                ret = qcow2_free_clusters(s, drop[j], s->cluster_size, e);
    }
    if (ret == 0)
        ret = qcow2_flush_metadata(s, e);
out:
    free(run);
    free(drop);
    return ret;
}

static int downgrade(struct qcow2_state *s, struct amend_progress *ap, struct err *e)
{
    int ret = expand_zero_clusters(s, ap, e);
    if (ret < 0)
        return ret;
    s->version = 2;
    s->header_length = QCOW2_V2_HEADER_LENGTH;
    s->compatible = 0;
    s->autoclear = 0;
    s->incompatible = 0;
    s->compression_type = QCOW2_COMPRESSION_ZLIB;
    return qcow2_update_header(s, e);
}

/* --- the whole amend --- */

static int amend_locked(struct qcow2_state *s, const struct amend_opts *o,
                        struct amend_progress *ap, struct err *e)
{
    int ret = 0;
    if (o->version > s->version) {
        if ((ret = upgrade(s, e)) < 0)
            return ret;
        next_op(ap);
    }
    if (o->refcount_bits != (1ull << s->refcount_order)) {
        ret = change_refcount_order(s, (uint32_t)__builtin_ctzll(o->refcount_bits), ap, e);
        if (ret < 0)
            return ret;
        next_op(ap);
    }
    bool lazy = s->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS;
    if (s->version >= 3 && o->lazy_refcounts != lazy) {
        s->compatible ^= QCOW2_COMPAT_LAZY_REFCOUNTS;
        if ((ret = qcow2_update_header(s, e)) < 0)
            s->compatible ^= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    return ret;
}

int qcow2_amend(struct blockdev *bs, struct kvopts *opts, const struct blk_progress *progress,
                struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    struct amend_opts o;
    struct amend_progress ap = { progress, 0, 0 };
    pthread_mutex_lock(&s->lock);
    int ret = parse_amend_opts(s, opts, &o, e);
    if (ret == 0)
        ret = check_amend(s, &o, e);
    if (ret == 0) {
        ap.ops = (o.version != s->version) + (o.refcount_bits != (1ull << s->refcount_order));
        ret = amend_locked(s, &o, &ap, e);
    }
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && o.backing_file)
        ret = bs->drv->set_backing(bs, o.backing_file, o.backing_fmt, e);
    else if (ret == 0 && o.backing_fmt)
        ret = bs->drv->set_backing(bs, bs->backing_name, o.backing_fmt, e);
    if (ret == 0 && o.set_size && o.size != bs->size)
        ret = blk_truncate(bs, o.size, e);
    if (ret == 0 && o.version < s->version) {
        pthread_mutex_lock(&s->lock);
        ret = downgrade(s, &ap, e);
        pthread_mutex_unlock(&s->lock);
        next_op(&ap);
    }
    return ret;
}
