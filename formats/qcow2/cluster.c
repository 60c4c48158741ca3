/* qcow2 cluster mapping: the L1 table, L2 tables through the L2 cache,
 * subcluster types, and copy-on-write of shared L2 tables (qcow2.txt
 * "Cluster mapping", "Extended L2 Entries").  Lock held throughout. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

int qcow2_l1_init(struct qcow2_state *s, struct err *e)
{
    uint64_t file_size;
    int ret = transport_size(s->bs->file, &file_size, e);
    if (ret < 0)
        return ret;
    qcow2_overlap_invalidate(s);
    s->l1 = calloc(s->l1_size ? s->l1_size : 1, sizeof(uint64_t));
    if (!s->l1)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    if (s->l1_size &&
        (ret = transport_pread(s->bs->file, s->l1_offset, s->l1, (size_t)s->l1_size * 8, e)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->l1_size; i++)
        s->l1[i] = be64_read(&s->l1[i]);
    /* check (BLK_OPEN_CHECK) validates the entries itself, as qemu-img
     * check does, and never reads guest data through them. */
    if (s->bs->open_flags & BLK_OPEN_CHECK)
        return 0;
    return qcow2_l1_entries_check(s, s->l1, s->l1_size, file_size, e);
}

int qcow2_l1_entries_check(struct qcow2_state *s, const uint64_t *l1, uint32_t n,
                           uint64_t file_size, struct err *e)
{
    for (uint32_t i = 0; i < n; i++) {
        uint64_t off = l1[i] & QCOW2_OFFSET_MASK;
        if (off & (s->cluster_size - 1))
            return err_set(e, EINVAL, "%s: L2 table offset 0x%llx is not cluster aligned "
                           "(L1 index %u)", s->bs->filename, (unsigned long long)off, i);
        if (off && (off > file_size || s->cluster_size > file_size - off))
            return err_set(e, EINVAL, "%s: L2 table offset 0x%llx is past the end of the "
                           "file (L1 index %u)", s->bs->filename, (unsigned long long)off, i);
    }
    return 0;
}

uint64_t qcow2_l2e_host_offset(const struct qcow2_state *s, struct qcow2_l2e l2e)
{
    if (l2e.entry & QCOW2_OFLAG_COMPRESSED)
        return l2e.entry & s->coffset_mask;
    return l2e.entry & QCOW2_OFFSET_MASK;
}

enum qcow2_cluster_type qcow2_cluster_type(const struct qcow2_state *s, uint64_t entry)
{
    if (entry & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_CLUSTER_COMPRESSED;
    bool host = entry & QCOW2_OFFSET_MASK;
    if ((entry & QCOW2_OFLAG_ZERO) && !s->extended_l2)
        return host ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
    return host ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
}

void qcow2_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *offset,
                            uint64_t *bytes)
{
    uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
    *offset = entry & s->coffset_mask;
    *bytes = sectors * 512 - (*offset & 511);
}

enum qcow2_sc_type qcow2_sc_type(const struct qcow2_state *s, struct qcow2_l2e l2e, unsigned sc)
{
    if (!s->extended_l2) {
        /* The whole cluster is one subcluster. */
        static const enum qcow2_sc_type whole[] = {
            [QCOW2_CLUSTER_UNALLOCATED] = QCOW2_SC_UNALLOC_PLAIN,
            [QCOW2_CLUSTER_ZERO_PLAIN] = QCOW2_SC_ZERO_PLAIN,
            [QCOW2_CLUSTER_ZERO_ALLOC] = QCOW2_SC_ZERO_ALLOC,
            [QCOW2_CLUSTER_NORMAL] = QCOW2_SC_NORMAL,
            [QCOW2_CLUSTER_COMPRESSED] = QCOW2_SC_COMPRESSED,
        };
        return whole[qcow2_cluster_type(s, l2e.entry)];
    }
    if (l2e.entry & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_SC_COMPRESSED;
    uint64_t host = l2e.entry & QCOW2_OFFSET_MASK;
    uint64_t alloc = l2e.bitmap & QCOW2_BITMAP_ALL_ALLOC, zero = l2e.bitmap >> 32;
    if (host) {
        if (alloc & zero)
            return QCOW2_SC_INVALID;
        if (zero & (1ull << sc))
            return QCOW2_SC_ZERO_ALLOC;
        return (alloc & (1ull << sc)) ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOC_ALLOC;
    }
    if (alloc)
        return QCOW2_SC_INVALID;
    return (zero & (1ull << sc)) ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOC_PLAIN;
}

struct qcow2_l2e qcow2_l2e_read(const struct qcow2_state *s, const uint8_t *table,
                                uint64_t index)
{
    const uint8_t *p = table + index * s->l2_entry_bytes;
    struct qcow2_l2e l2e = { be64_read(p), s->extended_l2 ? be64_read(p + 8) : 0 };
    return l2e;
}

static void l2e_write(const struct qcow2_state *s, uint8_t *table, uint64_t index,
                      struct qcow2_l2e l2e)
{
    uint8_t *p = table + index * s->l2_entry_bytes;
    be64_write(p, l2e.entry);
    if (s->extended_l2)
        be64_write(p + 8, l2e.bitmap);
}

static uint64_t l1_index_of(const struct qcow2_state *s, uint64_t off)
{
    return off >> (s->cluster_bits + s->l2_bits);
}

static uint64_t l2_index_of(const struct qcow2_state *s, uint64_t off)
{
    return (off >> s->cluster_bits) & (s->l2_entries - 1);
}

/* Check an entry before its offset is used (the file size bound is left
 * to the reads, which return zeroes past the end as QEMU's do). */
static int validate_l2e(struct qcow2_state *s, uint64_t off, struct qcow2_l2e l2e,
                        struct err *e)
{
    if (l2e.entry & QCOW2_OFLAG_COMPRESSED) {
        if (s->extended_l2 && l2e.bitmap)
            return err_set(e, EIO, "%s: compressed cluster at guest offset 0x%llx has a "
                           "subcluster bitmap; run 'imgtool check -r all'", s->bs->filename,
                           (unsigned long long)off);
        return 0;
    }
    uint64_t host = l2e.entry & QCOW2_OFFSET_MASK;
    if (host & (s->cluster_size - 1))
        return err_set(e, EIO, "%s: cluster offset 0x%llx for guest offset 0x%llx is not "
                       "cluster aligned; run 'imgtool check -r all'", s->bs->filename,
                       (unsigned long long)host, (unsigned long long)off);
    return 0;
}

/* The L2 table for `off`, or *table = NULL when none is allocated. */
static int get_l2_table(struct qcow2_state *s, uint64_t off, uint8_t **table, struct err *e)
{
    uint64_t i = l1_index_of(s, off);
    *table = NULL;
    if (i >= s->l1_size)
        return 0;
    uint64_t l2_off = s->l1[i] & QCOW2_OFFSET_MASK;
    if (!l2_off)
        return 0;
    return qcow2_cache_get(s, &s->l2_cache, l2_off, false, table, e);
}

int qcow2_get_l2e_run(struct qcow2_state *s, uint64_t off, uint64_t n, struct qcow2_l2e *l2e,
                      struct err *e)
{
    uint64_t first = l2_index_of(s, off);
    if (n > s->l2_entries - first)
        return err_set(e, EIO, "%s: %llu L2 entries at guest offset 0x%llx cross an L2 table",
                       s->bs->filename, (unsigned long long)n, (unsigned long long)off);
    uint8_t *table;
    int ret = get_l2_table(s, off, &table, e);
    if (ret < 0)
        return ret;
    for (uint64_t k = 0; k < n; k++) {
        if (table) {
            l2e[k] = qcow2_l2e_read(s, table, first + k);
        } else {
            l2e[k].entry = l2e[k].bitmap = 0;
        }
        if ((ret = validate_l2e(s, off + (k << s->cluster_bits), l2e[k], e)) < 0)
            return ret;
    }
    return 0;
}

int qcow2_get_l2e(struct qcow2_state *s, uint64_t off, struct qcow2_l2e *l2e, struct err *e)
{
    return qcow2_get_l2e_run(s, off, 1, l2e, e);
}

static int write_l1_entry(struct qcow2_state *s, uint64_t i, struct err *e)
{
    uint8_t buf[8];
    be64_write(buf, s->l1[i]);
    return qcow2_pwrite_checked(s, QCOW2_OL_ACTIVE_L1, s->l1_offset + i * 8, buf, 8, e);
}

/* A new L2 table for L1 entry i (copy of the shared old one, if any):
 * refcounts, then the table, then the L1 entry, then the old table's
 * reference is dropped. */
static int allocate_l2_table(struct qcow2_state *s, uint64_t i, uint8_t **table, struct err *e)
{
    uint64_t old = s->l1[i] & QCOW2_OFFSET_MASK;
    uint8_t *copy = NULL;
    int ret;
    if (old) {
        uint8_t *t;
        if (!(copy = malloc(s->cluster_size)))
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        if ((ret = qcow2_cache_get(s, &s->l2_cache, old, false, &t, e)) < 0)
            goto out;
        memcpy(copy, t, s->cluster_size);
    }
    uint64_t n;
    if ((ret = qcow2_alloc_clusters(s, 1, &n, e)) < 0 ||
        (ret = qcow2_l2_depends_on_refblocks(s, e)) < 0 ||
        (ret = qcow2_cache_get(s, &s->l2_cache, n, true, table, e)) < 0)
        goto out;
    if (copy)
        memcpy(*table, copy, s->cluster_size);
    if ((ret = qcow2_cache_flush(s, &s->l2_cache, e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    qcow2_set_l1_entry(s, i, n | QCOW2_OFLAG_COPIED);
    if ((ret = write_l1_entry(s, i, e)) < 0)
        goto out;
    if (old) {
        /* The L1 entry must be stable before the old table loses a
         * reference (it stays in use by a snapshot). */
        if ((ret = transport_flush(s->bs->file, e)) == 0)
            ret = qcow2_free_clusters(s, old, s->cluster_size, e);
        /* The table pointer may be stale if freeing evicted nothing; get
         * it again to be safe. */
        if (ret == 0)
            ret = qcow2_cache_get(s, &s->l2_cache, n, false, table, e);
    }
out:
    free(copy);
    return ret;
}

int qcow2_set_l2e_run(struct qcow2_state *s, uint64_t off, uint64_t n,
                      const struct qcow2_l2e *l2e, struct err *e)
{
    uint64_t i = l1_index_of(s, off), first = l2_index_of(s, off);
    if (i >= s->l1_size)
        return err_set(e, EIO, "%s: guest offset 0x%llx is beyond the L1 table",
                       s->bs->filename, (unsigned long long)off);
    if (n > s->l2_entries - first)
        return err_set(e, EIO, "%s: %llu L2 entries at guest offset 0x%llx cross an L2 table",
                       s->bs->filename, (unsigned long long)n, (unsigned long long)off);
    uint8_t *table;
    int ret;
    if ((s->l1[i] & QCOW2_OFFSET_MASK) && (s->l1[i] & QCOW2_OFLAG_COPIED))
        ret = qcow2_cache_get(s, &s->l2_cache, s->l1[i] & QCOW2_OFFSET_MASK, false, &table, e);
    else
        ret = allocate_l2_table(s, i, &table, e);
    if (ret < 0)
        return ret;
    for (uint64_t k = 0; k < n; k++)
        l2e_write(s, table, first + k, l2e[k]);
    qcow2_cache_mark_dirty(&s->l2_cache, table);
    return 0;
}

int qcow2_set_l2e(struct qcow2_state *s, uint64_t off, struct qcow2_l2e l2e, struct err *e)
{
    return qcow2_set_l2e_run(s, off, 1, &l2e, e);
}

int qcow2_map_run(struct qcow2_state *s, uint64_t off, uint64_t max, enum qcow2_sc_type *type,
                  uint64_t *host, uint64_t *len, struct qcow2_l2e *l2e_out, struct err *e)
{
    uint64_t l2_span = qcow2_l1_coverage(s);
    uint64_t end = off + min_u64(max, l2_span - (off & (l2_span - 1)));
    uint8_t *table;
    int ret = get_l2_table(s, off, &table, e);
    if (ret < 0)
        return ret;
    if (!table) {
        *type = QCOW2_SC_UNALLOC_PLAIN;
        *host = 0;
        *len = end - off;
        l2e_out->entry = l2e_out->bitmap = 0;
        return 0;
    }
    uint64_t cur = off;
    bool first = true;
    while (cur < end) {
        uint64_t cstart = qcow2_cluster_start(s, cur);
        struct qcow2_l2e l2e = qcow2_l2e_read(s, table, l2_index_of(s, cur));
        if ((ret = validate_l2e(s, cur, l2e, e)) < 0)
            return ret;
        uint64_t base = l2e.entry & QCOW2_OFFSET_MASK;
        for (unsigned sc = (unsigned)((cur - cstart) / s->subcluster_size);
             sc < s->subclusters && cur < end; sc++) {
            enum qcow2_sc_type t = qcow2_sc_type(s, l2e, sc);
            if (t == QCOW2_SC_INVALID)
                return err_set(e, EIO, "%s: invalid subcluster bitmap 0x%016llx for guest "
                               "offset 0x%llx; run 'imgtool check -r all'", s->bs->filename,
                               (unsigned long long)l2e.bitmap, (unsigned long long)cur);
            bool has_host = t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
                            t == QCOW2_SC_UNALLOC_ALLOC;
            uint64_t h = has_host ? base + (cur - cstart) : 0;
            if (first) {
                *type = t;
                *host = h;
                *l2e_out = l2e;
                first = false;
            } else if (t != *type || t == QCOW2_SC_COMPRESSED ||
                       (has_host && h != *host + (cur - off))) {
                *len = cur - off;
                return 0;
            }
            cur = min_u64(cstart + (sc + 1) * s->subcluster_size, end);
        }
    }
    *len = cur - off;
    return 0;
}

int qcow2_grow_l1(struct qcow2_state *s, uint64_t entries, struct err *e)
{
    if (entries <= s->l1_size)
        return 0;
    if (entries > QCOW2_MAX_L1_BYTES / 8)
        return err_set(e, EFBIG, "%s: the L1 table would exceed %u bytes (image too large)",
                       s->bs->filename, QCOW2_MAX_L1_BYTES);
    uint64_t bytes = align_up(entries * 8, s->cluster_size);
    uint64_t *l1 = calloc(1, bytes);
    uint8_t *buf = calloc(1, bytes);
    int ret;
    if (!l1 || !buf) {
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        goto out;
    }
    memcpy(l1, s->l1, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; i < s->l1_size; i++)
        be64_write(buf + 8 * i, s->l1[i]);
    uint64_t offset;
    if ((ret = qcow2_alloc_clusters(s, bytes >> s->cluster_bits, &offset, e)) < 0 ||
        (ret = qcow2_flush_metadata(s, e)) < 0 ||
        (ret = qcow2_pwrite_checked(s, 0, offset, buf, bytes, e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    uint8_t hdr[12];
    be32_write(hdr, (uint32_t)entries);
    be64_write(hdr + 4, offset);
    if ((ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, 36, hdr, sizeof(hdr), e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    uint64_t old_offset = s->l1_offset, old_bytes = align_up((uint64_t)s->l1_size * 8,
                                                             s->cluster_size);
    free(s->l1);
    s->l1 = l1;
    l1 = NULL;
    s->l1_offset = offset;
    s->l1_size = (uint32_t)entries;
    qcow2_overlap_invalidate(s);
    if (old_offset && old_bytes)
        ret = qcow2_free_clusters(s, old_offset, old_bytes, e);
out:
    free(l1);
    free(buf);
    return ret;
}
