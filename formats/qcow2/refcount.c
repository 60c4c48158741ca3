/* qcow2 refcounts: the refcount table and refcount blocks of any width
 * (refcount_order 0..6), cluster allocation and freeing, byte-granular
 * allocation for compressed clusters, and growing the refcount table
 * (qcow2.txt "Cluster mapping" / "refcount table").  Lock held throughout. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

uint64_t qcow2_refcount_entry_get(const uint8_t *block, uint64_t i, uint32_t order)
{
    switch (order) {
    case 0: return (block[i / 8] >> (i % 8)) & 1;
    case 1: return (block[i / 4] >> (2 * (i % 4))) & 3;
    case 2: return (block[i / 2] >> (4 * (i % 2))) & 15;
    case 3: return block[i];
    case 4: return be16_read(block + 2 * i);
    case 5: return be32_read(block + 4 * i);
    default: return be64_read(block + 8 * i);
    }
}

void qcow2_refcount_entry_set(uint8_t *block, uint64_t i, uint32_t order, uint64_t v)
{
    unsigned shift, mask;
    switch (order) {
    case 0: shift = i % 8; mask = 1; block += i / 8; break;
    case 1: shift = 2 * (i % 4); mask = 3; block += i / 4; break;
    case 2: shift = 4 * (i % 2); mask = 15; block += i / 2; break;
    case 3: block[i] = (uint8_t)v; return;
    case 4: be16_write(block + 2 * i, (uint16_t)v); return;
    case 5: be32_write(block + 4 * i, (uint32_t)v); return;
    default: be64_write(block + 8 * i, v); return;
    }
    *block = (uint8_t)((*block & ~(mask << shift)) | ((v & mask) << shift));
}

int qcow2_refcount_init(struct qcow2_state *s, struct err *e)
{
    uint64_t file_size;
    int ret = transport_size(s->bs->file, &file_size, e);
    if (ret < 0)
        return ret;
    uint64_t bytes = (uint64_t)s->reftable_clusters << s->cluster_bits;
    qcow2_overlap_invalidate(s);
    s->reftable_entries = bytes / 8;
    s->reftable = malloc(bytes);
    if (!s->reftable)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    if ((ret = transport_pread(s->bs->file, s->reftable_offset, s->reftable, bytes, e)) < 0)
        return ret;
    /* check (BLK_OPEN_CHECK) reports bad entries itself; the functions
     * below refuse to use an unaligned refcount block. */
    bool checking = s->bs->open_flags & BLK_OPEN_CHECK;
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t v = be64_read(&s->reftable[i]);
        uint64_t off = v & ~511ull;
        s->reftable[i] = off;
        if (checking)
            continue;
        if (off & (s->cluster_size - 1))
            return err_set(e, EINVAL, "%s: refcount block offset 0x%llx is not cluster "
                           "aligned (refcount table index %llu)", s->bs->filename,
                           (unsigned long long)off, (unsigned long long)i);
        if (off && (off > file_size || s->cluster_size > file_size - off))
            return err_set(e, EINVAL, "%s: refcount block offset 0x%llx is past the end of "
                           "the file (refcount table index %llu)", s->bs->filename,
                           (unsigned long long)off, (unsigned long long)i);
    }
    return 0;
}

/* The refcount block for refcount table index rt, which must be cluster
 * aligned (only a check open keeps unaligned entries). */
static int refblock_offset(struct qcow2_state *s, uint64_t rt, uint64_t *offset, struct err *e)
{
    *offset = s->reftable[rt];
    if (*offset & (s->cluster_size - 1))
        return err_set(e, EIO, "%s: refcount block offset 0x%llx is not cluster aligned "
                       "(refcount table index %llu); run 'imgtool check -r all'",
                       s->bs->filename, (unsigned long long)*offset, (unsigned long long)rt);
    return 0;
}

/* The cached refcount block for refcount table index rt, or *block = NULL
 * when there is none (all of its clusters have refcount 0).  The pointer
 * is valid until the next use of the refcount block cache. */
static int refblock_get(struct qcow2_state *s, uint64_t rt, uint8_t **block, struct err *e)
{
    *block = NULL;
    if (rt >= s->reftable_entries || !s->reftable[rt])
        return 0;
    uint64_t rb;
    int ret = refblock_offset(s, rt, &rb, e);
    if (ret < 0)
        return ret;
    return qcow2_cache_get(s, &s->rb_cache, rb, false, block, e);
}

int qcow2_get_refblock(struct qcow2_state *s, uint64_t index, uint8_t **block, struct err *e)
{
    return refblock_get(s, index >> s->rb_bits, block, e);
}

int qcow2_get_refcount(struct qcow2_state *s, uint64_t index, uint64_t *refcount,
                       struct err *e)
{
    uint8_t *block;
    int ret = refblock_get(s, index >> s->rb_bits, &block, e);
    if (ret < 0)
        return ret;
    *refcount = block ? qcow2_refcount_entry_get(block, index & ((1ull << s->rb_bits) - 1),
                                                 s->refcount_order) : 0;
    return 0;
}

static bool is_reserved(const struct qcow2_state *s, uint64_t index)
{
    for (unsigned i = 0; i < s->nb_reserved; i++)
        if (index >= s->reserved[i].start && index - s->reserved[i].start < s->reserved[i].count)
            return true;
    return false;
}

static int push_reserved(struct qcow2_state *s, uint64_t start, uint64_t count, struct err *e)
{
    if (s->nb_reserved == sizeof(s->reserved) / sizeof(s->reserved[0]))
        return err_set(e, EIO, "%s: refcount structure allocation nested too deeply",
                       s->bs->filename);
    s->reserved[s->nb_reserved].start = start;
    s->reserved[s->nb_reserved].count = count;
    s->nb_reserved++;
    return 0;
}

/* Cluster `index` became free: remember it until the next metadata flush
 * (see pending_free in struct qcow2_state). */
static void note_pending_free(struct qcow2_state *s, uint64_t index)
{
    unsigned n = s->nb_pending_free;
    if (n && s->pending_free[n - 1].start + s->pending_free[n - 1].count == index) {
        s->pending_free[n - 1].count++;
        return;
    }
    if (n == sizeof(s->pending_free) / sizeof(s->pending_free[0])) {
        s->pending_free_overflow = true;
        return;
    }
    s->pending_free[n].start = index;
    s->pending_free[n].count = 1;
    s->nb_pending_free++;
}

static bool run_is_pending_free(const struct qcow2_state *s, uint64_t start, uint64_t n)
{
    if (s->pending_free_overflow)
        return true;
    for (unsigned i = 0; i < s->nb_pending_free; i++)
        if (start < s->pending_free[i].start + s->pending_free[i].count &&
            s->pending_free[i].start < start + n)
            return true;
    return false;
}

/* The run [start, start + n) is about to be reused: if some of it was freed
 * since the last metadata flush, flush now, so that the metadata that
 * dropped the old references is on disk before anything new is written
 * there (item: freed clusters are not reused before that is durable). */
static int make_frees_durable(struct qcow2_state *s, uint64_t start, uint64_t n, struct err *e)
{
    if (!s->nb_pending_free && !s->pending_free_overflow)
        return 0;
    if (!run_is_pending_free(s, start, n))
        return 0;
    return qcow2_flush_metadata(s, e);
}

/* First run of n free clusters at or after the hint, reading each
 * refcount block once.  The hint moves to the first free cluster seen
 * (counting reserved ones as free: they may be given back), so that the
 * next search skips what is in use instead of scanning it again (QEMU's
 * free_cluster_index). */
static int find_free_clusters(struct qcow2_state *s, uint64_t n, uint64_t *start, struct err *e)
{
    uint64_t limit = UINT64_MAX >> s->cluster_bits;
    uint64_t mask = (1ull << s->rb_bits) - 1;
    uint64_t run = 0, first_free = 0;
    for (uint64_t i = max_u64(s->free_cluster_hint, 1); i < limit;) {
        uint64_t rt = i >> s->rb_bits;
        uint64_t block_end = min_u64((rt + 1) << s->rb_bits, limit);
        uint8_t *block;
        int ret = refblock_get(s, rt, &block, e);
        if (ret < 0)
            return ret;
        for (; i < block_end; i++) {
            if (block && qcow2_refcount_entry_get(block, i & mask, s->refcount_order)) {
                run = 0;
                continue;
            }
            if (!first_free)
                first_free = i;
            if (s->nb_reserved && is_reserved(s, i)) {
                run = 0;
                continue;
            }
            if (++run == n) {
                *start = i + 1 - n;
                s->free_cluster_hint = first_free == *start ? i + 1 : first_free;
                return make_frees_durable(s, *start, n, e);
            }
        }
    }
    return err_set(e, ENOSPC, "%s: no free clusters", s->bs->filename);
}

static int write_reftable_entry(struct qcow2_state *s, uint64_t rt, struct err *e)
{
    if (s->reftable_deferred)
        return 0;
    uint8_t buf[8];
    be64_write(buf, s->reftable[rt]);
    return qcow2_pwrite_checked(s, QCOW2_OL_REFCOUNT_TABLE, s->reftable_offset + rt * 8, buf, 8,
                                e);
}

static int grow_reftable(struct qcow2_state *s, uint64_t min_entries, struct err *e);

/* Make sure refcount block `rt` exists: the new block is written (and
 * synced) before the refcount table entry that points to it. */
static int ensure_refblock(struct qcow2_state *s, uint64_t rt, struct err *e)
{
    int ret;
    if (rt >= s->reftable_entries) {
        if (s->reftable_deferred)
            return err_set(e, EIO, "%s: refcount table growth did not cover the new "
                           "refcount blocks", s->bs->filename);
        if ((ret = grow_reftable(s, rt + 1, e)) < 0)
            return ret;
    }
    if (s->reftable[rt])
        return 0;
    uint64_t b;
    if ((ret = find_free_clusters(s, 1, &b, e)) < 0)
        return ret;
    uint64_t rt_b = b >> s->rb_bits;
    uint64_t b_offset = b << s->cluster_bits;
    uint8_t *block;
    if (rt_b != rt) {
        /* The new block's own refcount lives in another block, which may
         * have to be created first; keep b out of that search. */
        if ((ret = push_reserved(s, b, 1, e)) < 0)
            return ret;
        ret = ensure_refblock(s, rt_b, e);
        if (ret == 0)
            ret = qcow2_update_refcount(s, b_offset, 1, 1, e);
        s->nb_reserved--;
        if (ret < 0)
            return ret;
    }
    if ((ret = qcow2_cache_get(s, &s->rb_cache, b_offset, true, &block, e)) < 0)
        return ret;
    if (rt_b == rt)     /* the block describes itself */
        qcow2_refcount_entry_set(block, b & ((1ull << s->rb_bits) - 1), s->refcount_order,
                                 1);
    if ((ret = qcow2_cache_flush(s, &s->rb_cache, e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        return ret;
    qcow2_set_reftable_entry(s, rt, b_offset);
    return write_reftable_entry(s, rt, e);
}

/* Move the refcount table to a larger place (qcow2.txt: the table is
 * contiguous): build it in memory, count its clusters (creating refcount
 * blocks as needed, which only update the in-memory table), write it,
 * then point the header at it, then free the old one. */
static int grow_reftable(struct qcow2_state *s, uint64_t min_entries, struct err *e)
{
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t entries = max_u64(min_entries, s->reftable_entries * 2);
    uint64_t clusters, start;
    int ret;
    for (;;) {
        clusters = div_round_up(entries, per_cluster);
        if (clusters << s->cluster_bits > QCOW2_MAX_REFTABLE_BYTES)
            return err_set(e, EFBIG, "%s: the refcount table would exceed %u bytes",
                           s->bs->filename, QCOW2_MAX_REFTABLE_BYTES);
        uint64_t saved_hint = s->free_cluster_hint;
        if ((ret = find_free_clusters(s, clusters, &start, e)) < 0)
            return ret;
        s->free_cluster_hint = saved_hint;
        /* Room for the table itself, the refcount blocks describing it and
         * theirs: twice the table plus two blocks' worth of clusters. */
        uint64_t last = start + 2 * clusters + 2 * (1ull << s->rb_bits);
        uint64_t need = (last >> s->rb_bits) + 1;
        if (need <= clusters * per_cluster) {
            entries = clusters * per_cluster;
            break;
        }
        entries = need;
    }
    uint64_t *table = calloc(entries, sizeof(uint64_t));
    if (!table)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    memcpy(table, s->reftable, s->reftable_entries * sizeof(uint64_t));
    uint64_t *old_table = s->reftable, old_entries = s->reftable_entries;
    uint64_t old_offset = s->reftable_offset, old_clusters = s->reftable_clusters;
    s->reftable = table;
    s->reftable_entries = entries;
    qcow2_overlap_invalidate(s);
    s->reftable_deferred = true;
    if ((ret = push_reserved(s, start, clusters, e)) == 0) {
        ret = qcow2_update_refcount(s, start << s->cluster_bits, clusters << s->cluster_bits,
                                    1, e);
        s->nb_reserved--;
    }
    s->reftable_deferred = false;
    if (ret < 0)
        goto undo;
    ret = qcow2_cache_flush(s, &s->rb_cache, e);
    uint8_t *buf = NULL;
    if (ret == 0 && !(buf = calloc(clusters, s->cluster_size)))
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    if (ret < 0)
        goto undo;
    for (uint64_t i = 0; i < entries; i++)
        be64_write(buf + 8 * i, table[i]);
    ret = qcow2_pwrite_checked(s, 0, start << s->cluster_bits, buf, clusters << s->cluster_bits,
                               e);
    free(buf);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
    if (ret < 0)
        goto undo;
    uint8_t hdr[12];
    be64_write(hdr, start << s->cluster_bits);
    be32_write(hdr + 8, (uint32_t)clusters);
    if ((ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, 48, hdr, sizeof(hdr), e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto undo;
    s->reftable_offset = start << s->cluster_bits;
    s->reftable_clusters = (uint32_t)clusters;
    free(old_table);
    return qcow2_free_clusters(s, old_offset, (uint64_t)old_clusters << s->cluster_bits, e);
undo:
    /* The header still points at the old table; whatever was allocated
     * for the new one leaks. */
    free(table);
    s->reftable = old_table;
    s->reftable_entries = old_entries;
    qcow2_overlap_invalidate(s);
    return ret;
}

/* The refcount change of cluster i (old value `old`) is impossible. */
static int refcount_change_error(struct qcow2_state *s, uint64_t i, int64_t delta, uint64_t old,
                                 struct err *e)
{
    return err_set(e, EIO, "%s: refcount of cluster 0x%llx would %s (is %llu); run 'imgtool "
                   "check -r all'", s->bs->filename, (unsigned long long)(i << s->cluster_bits),
                   delta < 0 ? "drop below zero" : "overflow", (unsigned long long)old);
}

/* Clusters [first, last] in two passes over each refcount block: check
 * that every refcount can take the change, then apply it (so a failure
 * changes nothing), one cache lookup per block rather than per cluster. */
int qcow2_update_refcount(struct qcow2_state *s, uint64_t offset, uint64_t len, int64_t delta,
                          struct err *e)
{
    if (len == 0)
        return 0;
    uint64_t first = offset >> s->cluster_bits;
    uint64_t last = (offset + len - 1) >> s->cluster_bits;
    uint64_t mask = (1ull << s->rb_bits) - 1;
    uint64_t magnitude = delta < 0 ? -(uint64_t)delta : (uint64_t)delta;
    int ret;
    for (uint64_t i = first; i <= last;) {
        uint64_t end = min_u64(last, i | mask);
        uint8_t *block;
        if ((ret = refblock_get(s, i >> s->rb_bits, &block, e)) < 0)
            return ret;
        for (; i <= end; i++) {
            uint64_t old = block ? qcow2_refcount_entry_get(block, i & mask,
                                                            s->refcount_order) : 0;
            if (delta < 0 ? old < magnitude : s->refcount_max - old < magnitude)
                return refcount_change_error(s, i, delta, old, e);
        }
    }
    for (uint64_t i = first; i <= last;) {
        uint64_t rt = i >> s->rb_bits, end = min_u64(last, i | mask);
        uint8_t *block;
        /* Creating the block may grow the refcount table: look up both
         * afterwards. */
        uint64_t rb;
        if ((ret = ensure_refblock(s, rt, e)) < 0 || (ret = refblock_offset(s, rt, &rb, e)) < 0 ||
            (ret = qcow2_cache_get(s, &s->rb_cache, rb, false, &block, e)) < 0)
            return ret;
        for (; i <= end; i++) {
            uint64_t v = qcow2_refcount_entry_get(block, i & mask, s->refcount_order) +
                         (uint64_t)delta;
            qcow2_refcount_entry_set(block, i & mask, s->refcount_order, v);
            if (v == 0) {
                note_pending_free(s, i);
                if (i < s->free_cluster_hint)
                    s->free_cluster_hint = i;
                if (s->free_byte_offset && (s->free_byte_offset >> s->cluster_bits) == i)
                    s->free_byte_offset = 0;
            }
        }
        qcow2_cache_mark_dirty(&s->rb_cache, block);
    }
    return 0;
}

int qcow2_alloc_clusters(struct qcow2_state *s, uint64_t n, uint64_t *offset, struct err *e)
{
    uint64_t start;
    int ret = find_free_clusters(s, n, &start, e);
    if (ret < 0)
        return ret;
    if ((ret = push_reserved(s, start, n, e)) < 0)
        return ret;
    ret = qcow2_update_refcount(s, start << s->cluster_bits, n << s->cluster_bits, 1, e);
    s->nb_reserved--;
    if (ret < 0)
        return ret;
    *offset = start << s->cluster_bits;
    return 0;
}

int qcow2_free_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len, struct err *e)
{
    /* The references were dropped first; they must be on disk before the
     * refcount says the cluster is free. */
    int ret = qcow2_refblocks_depend_on_l2(s, e);
    if (ret < 0)
        return ret;
    return qcow2_update_refcount(s, offset, len, -1, e);
}

int qcow2_free_l2e_clusters(struct qcow2_state *s, uint64_t entry, struct err *e)
{
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t off, bytes;
        qcow2_compressed_range(s, entry, &off, &bytes);
        return qcow2_free_clusters(s, off, bytes, e);
    }
    uint64_t off = entry & QCOW2_OFFSET_MASK;
    return off ? qcow2_free_clusters(s, off, s->cluster_size, e) : 0;
}

int qcow2_alloc_bytes(struct qcow2_state *s, uint64_t size, uint64_t *offset, struct err *e)
{
    uint64_t fb = s->free_byte_offset;
    int ret;
    if (fb && (fb & (s->cluster_size - 1)) + size <= s->cluster_size) {
        uint64_t rc;
        if ((ret = qcow2_get_refcount(s, fb >> s->cluster_bits, &rc, e)) < 0)
            return ret;
        if (rc > 0 && rc < s->refcount_max) {
            if ((ret = qcow2_update_refcount(s, fb, 1, 1, e)) < 0)
                return ret;
            *offset = fb;
            goto done;
        }
    }
    if ((ret = qcow2_alloc_clusters(s, 1, offset, e)) < 0)
        return ret;
done:
    s->free_byte_offset = *offset + size;
    if ((s->free_byte_offset & (s->cluster_size - 1)) == 0)
        s->free_byte_offset = 0;
    return 0;
}
