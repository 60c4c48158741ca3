/* qcow2 write-path integrity, as QEMU's qcow2_check_metadata_overlap and
 * qcow2_signal_corruption: before a data write or a metadata write-back,
 * the host range is checked against every metadata structure (header,
 * active L1 and L2 tables, refcount table and blocks, snapshot table and
 * the snapshots' L1 tables, bitmap directory and bitmap tables).  A hit
 * means the image is damaged (an L2 entry or a refcount says a cluster is
 * free or data while it holds metadata): the write is refused, the corrupt
 * bit is set in the header (version 3) and every later write is refused,
 * so that the damage is not spread.  Lock held.
 *
 * The check runs before every data write, so it must not walk the L1 and
 * refcount tables (thousands of entries): the L2 tables and refcount
 * blocks are kept in sorted arrays of offsets, updated as entries change
 * (qcow2_set_l1_entry, qcow2_set_reftable_entry), and the snapshots' L1
 * tables and the bitmap tables in arrays sorted by start with the largest
 * end so far, rebuilt when they change (qcow2_overlap_invalidate): a check
 * is a few binary searches.  A hit found through the index is confirmed
 * by walking the tables themselves (a hit is rare: the image is damaged),
 * so a stale index can never refuse a good write. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

static const struct {
    unsigned bit;
    const char *name;
} overlap_names[] = {
    { QCOW2_OL_HEADER, "qcow2_header" },
    { QCOW2_OL_ACTIVE_L1, "active L1 table" },
    { QCOW2_OL_ACTIVE_L2, "active L2 table" },
    { QCOW2_OL_REFCOUNT_TABLE, "refcount table" },
    { QCOW2_OL_REFCOUNT_BLOCK, "refcount block" },
    { QCOW2_OL_SNAPSHOT_TABLE, "snapshot table" },
    { QCOW2_OL_INACTIVE_L1, "inactive L1 table" },
    { QCOW2_OL_BITMAP_DIRECTORY, "bitmap directory" },
    { QCOW2_OL_BITMAP_TABLE, "bitmap table" },
};

const char *qcow2_overlap_name(unsigned bit)
{
    for (size_t i = 0; i < sizeof(overlap_names) / sizeof(overlap_names[0]); i++)
        if (overlap_names[i].bit == bit)
            return overlap_names[i].name;
    return "metadata";
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* Table ranges are whole clusters, as QEMU rounds them. */
static uint64_t cluster_bytes(const struct qcow2_state *s, uint64_t bytes)
{
    return align_up(bytes, s->cluster_size);
}

static bool hits_active_l2(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (l2 && overlaps(off, len, l2, s->cluster_size))
            return true;
    }
    return false;
}

static bool hits_refcount_block(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t rb = s->reftable[i] & ~(s->cluster_size - 1);
        if (rb && overlaps(off, len, rb, s->cluster_size))
            return true;
    }
    return false;
}

static bool hits_inactive_l1(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (overlaps(off, len, s->snapshots[i].l1_offset,
                     cluster_bytes(s, (uint64_t)s->snapshots[i].l1_size * 8)))
            return true;
    return false;
}

static bool hits_bitmap_directory(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    if (s->version < 3 || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return false;
    for (size_t i = 0; i < s->nb_exts; i++)
        if (s->exts[i].type == QCOW2_EXT_BITMAPS && s->exts[i].len >= 24 &&
            overlaps(off, len, be64_read(s->exts[i].data + 16),
                     cluster_bytes(s, be64_read(s->exts[i].data + 8))))
            return true;
    return false;
}

static bool hits_bitmap_table(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
    for (size_t i = 0; i < s->nb_bitmap_tables; i++)
        if (overlaps(off, len, s->bitmap_tables[i].offset,
                     cluster_bytes(s, s->bitmap_tables[i].len)))
            return true;
    return false;
}

/* --- The index --- */

/* A sorted multiset of cluster offsets (two L1 entries of a damaged image
 * may name one L2 table). */
struct offset_set {
    uint64_t *v;
    size_t n, cap;
};

/* Ranges sorted by start; max_end[i] is the largest end of ranges 0..i. */
struct range_set {
    struct qcow2_range *r;
    uint64_t *max_end;
    size_t n;
};

struct qcow2_overlap_index {
    struct offset_set l2, refblocks;
    struct range_set inactive_l1, bitmap_tables;
};

/* Index of the first element >= x. */
static size_t lower_bound(const uint64_t *v, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int offset_set_insert(struct offset_set *set, uint64_t x)
{
    if (set->n == set->cap) {
        size_t cap = set->cap ? 2 * set->cap : 64;
        uint64_t *v = realloc(set->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        set->v = v;
        set->cap = cap;
    }
    size_t i = lower_bound(set->v, set->n, x);
    memmove(set->v + i + 1, set->v + i, (set->n - i) * sizeof(*set->v));
    set->v[i] = x;
    set->n++;
    return 0;
}

static void offset_set_remove(struct offset_set *set, uint64_t x)
{
    size_t i = lower_bound(set->v, set->n, x);
    if (i == set->n || set->v[i] != x)
        return;
    memmove(set->v + i, set->v + i + 1, (set->n - i - 1) * sizeof(*set->v));
    set->n--;
}

/* Whether a cluster starting at one of the offsets meets [off, off + len):
 * the first cluster that ends after `off` starts before off + len. */
static bool offset_set_hits(const struct offset_set *set, uint64_t cluster_size, uint64_t off,
                            uint64_t len)
{
    uint64_t from = off >= cluster_size ? off - cluster_size + 1 : 0;
    size_t i = lower_bound(set->v, set->n, from);
    return i < set->n && (set->v[i] < off || set->v[i] - off < len);
}

/* Fill from `n` values of which the zero ones are left out. */
static int offset_set_build(struct offset_set *set, const uint64_t *values, uint64_t n,
                            uint64_t mask)
{
    set->v = malloc((n ? n : 1) * sizeof(*set->v));
    if (!set->v)
        return -ENOMEM;
    set->cap = n ? n : 1;
    for (uint64_t i = 0; i < n; i++)
        if (values[i] & mask)
            set->v[set->n++] = values[i] & mask;
    qsort(set->v, set->n, sizeof(*set->v), compare_u64);
    return 0;
}

static int compare_range_start(const void *a, const void *b)
{
    return compare_u64(&((const struct qcow2_range *)a)->offset,
                       &((const struct qcow2_range *)b)->offset);
}

/* Take `r` (n ranges, empty ones already left out) and sort it. */
static int range_set_build(struct range_set *set, struct qcow2_range *r, size_t n)
{
    set->r = r;
    set->n = n;
    set->max_end = malloc((n ? n : 1) * sizeof(*set->max_end));
    if (!set->max_end)
        return -ENOMEM;
    qsort(r, n, sizeof(*r), compare_range_start);
    for (size_t i = 0; i < n; i++) {
        uint64_t end = r[i].offset + r[i].len;
        set->max_end[i] = i && set->max_end[i - 1] > end ? set->max_end[i - 1] : end;
    }
    return 0;
}

/* Some range starts before off + len and ends after off. */
static bool range_set_hits(const struct range_set *set, uint64_t off, uint64_t len)
{
    size_t lo = 0, hi = set->n;
    while (lo < hi) {           /* ranges [0, lo) start before off + len */
        size_t mid = lo + (hi - lo) / 2;
        if (set->r[mid].offset - off < len || set->r[mid].offset < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo && set->max_end[lo - 1] > off;
}

static int build_inactive_l1(const struct qcow2_state *s, struct range_set *set)
{
    struct qcow2_range *r = malloc((s->nb_snapshots ? s->nb_snapshots : 1) * sizeof(*r));
    size_t n = 0;
    if (!r)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        struct qcow2_range one = { s->snapshots[i].l1_offset,
                                   cluster_bytes(s, (uint64_t)s->snapshots[i].l1_size * 8) };
        if (one.len)
            r[n++] = one;
    }
    return range_set_build(set, r, n);
}

static int build_bitmap_tables(const struct qcow2_state *s, struct range_set *set)
{
    size_t count = s->nb_bitmap_tables;
    struct qcow2_range *r = malloc((count ? count : 1) * sizeof(*r));
    size_t n = 0;
    if (!r)
        return -ENOMEM;
    for (size_t i = 0; i < count; i++) {
        struct qcow2_range one = { s->bitmap_tables[i].offset,
                                   cluster_bytes(s, s->bitmap_tables[i].len) };
        if (one.len)
            r[n++] = one;
    }
    return range_set_build(set, r, n);
}

static void free_index(struct qcow2_overlap_index *ix)
{
    if (!ix)
        return;
    free(ix->l2.v);
    free(ix->refblocks.v);
    free(ix->inactive_l1.r);
    free(ix->inactive_l1.max_end);
    free(ix->bitmap_tables.r);
    free(ix->bitmap_tables.max_end);
    free(ix);
}

void qcow2_overlap_invalidate(struct qcow2_state *s)
{
    free_index(s->overlap_index);
    s->overlap_index = NULL;
}

/* The index, built when missing; NULL when out of memory (the check then
 * walks the tables). */
static struct qcow2_overlap_index *get_index(struct qcow2_state *s)
{
    if (s->overlap_index)
        return s->overlap_index;
    struct qcow2_overlap_index *ix = calloc(1, sizeof(*ix));
    if (!ix || offset_set_build(&ix->l2, s->l1, s->l1_size, QCOW2_OFFSET_MASK) < 0 ||
        offset_set_build(&ix->refblocks, s->reftable, s->reftable_entries,
                         ~(s->cluster_size - 1)) < 0 ||
        build_inactive_l1(s, &ix->inactive_l1) < 0 ||
        build_bitmap_tables(s, &ix->bitmap_tables) < 0) {
        free_index(ix);
        return NULL;
    }
    return s->overlap_index = ix;
}

/* Replace `old` by `new` (cluster offsets, 0 = none) in a set. */
static void update_offset_set(struct qcow2_state *s, struct offset_set *set, uint64_t old,
                              uint64_t new)
{
    if (old == new)
        return;
    if (old)
        offset_set_remove(set, old);
    if (new && offset_set_insert(set, new) < 0)
        qcow2_overlap_invalidate(s);    /* rebuilt (or walked) at the next check */
}

void qcow2_set_l1_entry(struct qcow2_state *s, uint64_t i, uint64_t entry)
{
    uint64_t old = s->l1[i] & QCOW2_OFFSET_MASK;
    s->l1[i] = entry;
    if (s->overlap_index)
        update_offset_set(s, &s->overlap_index->l2, old, entry & QCOW2_OFFSET_MASK);
}

void qcow2_set_reftable_entry(struct qcow2_state *s, uint64_t i, uint64_t entry)
{
    uint64_t mask = ~(s->cluster_size - 1), old = s->reftable[i] & mask;
    s->reftable[i] = entry;
    if (s->overlap_index)
        update_offset_set(s, &s->overlap_index->refblocks, old, entry & mask);
}

/* The kinds found in tables: through the index, confirmed by the walk. */
static unsigned indexed_overlap(struct qcow2_state *s, unsigned check, uint64_t off,
                                uint64_t len)
{
    struct qcow2_overlap_index *ix = get_index(s);
    if ((check & QCOW2_OL_INACTIVE_L1) && (!ix || range_set_hits(&ix->inactive_l1, off, len)) &&
        hits_inactive_l1(s, off, len))
        return QCOW2_OL_INACTIVE_L1;
    if ((check & QCOW2_OL_BITMAP_DIRECTORY) && hits_bitmap_directory(s, off, len))
        return QCOW2_OL_BITMAP_DIRECTORY;
    if ((check & QCOW2_OL_BITMAP_TABLE) &&
        (!ix || range_set_hits(&ix->bitmap_tables, off, len)) && hits_bitmap_table(s, off, len))
        return QCOW2_OL_BITMAP_TABLE;
    if ((check & QCOW2_OL_REFCOUNT_BLOCK) &&
        (!ix || offset_set_hits(&ix->refblocks, s->cluster_size, off, len)) &&
        hits_refcount_block(s, off, len))
        return QCOW2_OL_REFCOUNT_BLOCK;
    if ((check & QCOW2_OL_ACTIVE_L2) &&
        (!ix || offset_set_hits(&ix->l2, s->cluster_size, off, len)) &&
        hits_active_l2(s, off, len))
        return QCOW2_OL_ACTIVE_L2;
    return 0;
}

unsigned qcow2_metadata_overlap(struct qcow2_state *s, unsigned ignore, uint64_t off,
                                uint64_t len)
{
    unsigned check = ~ignore;
    if ((check & QCOW2_OL_HEADER) && overlaps(off, len, 0, s->cluster_size))
        return QCOW2_OL_HEADER;
    if ((check & QCOW2_OL_ACTIVE_L1) &&
        overlaps(off, len, s->l1_offset, cluster_bytes(s, (uint64_t)s->l1_size * 8)))
        return QCOW2_OL_ACTIVE_L1;
    if ((check & QCOW2_OL_REFCOUNT_TABLE) &&
        overlaps(off, len, s->reftable_offset, (uint64_t)s->reftable_clusters << s->cluster_bits))
        return QCOW2_OL_REFCOUNT_TABLE;
    if ((check & QCOW2_OL_SNAPSHOT_TABLE) &&
        overlaps(off, len, s->snapshots_offset, cluster_bytes(s, s->snapshots_size)))
        return QCOW2_OL_SNAPSHOT_TABLE;
    return len ? indexed_overlap(s, check, off, len) : 0;
}

/* Set the corrupt bit (version 3: version 2 has no feature bits, the image
 * is only refused for the rest of this open, as QEMU does).  Best effort:
 * the write is refused whether or not the bit reaches the disk. */
static void mark_corrupt(struct qcow2_state *s)
{
    s->writes_refused = true;
    if (s->version < 3 || (s->incompatible & QCOW2_INCOMPAT_CORRUPT))
        return;
    uint8_t buf[8];
    struct err ignored = { 0 };
    be64_write(buf, s->incompatible | QCOW2_INCOMPAT_CORRUPT);
    if (transport_pwrite(s->bs->file, 72, buf, 8, &ignored) == 0 &&
        transport_flush(s->bs->file, &ignored) == 0)
        s->incompatible |= QCOW2_INCOMPAT_CORRUPT;
}

int qcow2_refuse_if_corrupt(const struct qcow2_state *s, struct err *e)
{
    if (!s->writes_refused)
        return 0;
    return err_set(e, EIO, "%s: the image was marked corrupt: writes are refused (run "
                   "'imgtool check -r all')", s->bs->filename);
}

int qcow2_pre_write_check(struct qcow2_state *s, unsigned ignore, uint64_t off, uint64_t len,
                          struct err *e)
{
    int ret = qcow2_refuse_if_corrupt(s, e);
    if (ret < 0)
        return ret;
    unsigned hit = qcow2_metadata_overlap(s, ignore, off, len);
    if (!hit)
        return 0;
    mark_corrupt(s);
    return err_set(e, EIO, "qcow2: Marking image as corrupt: %s: Preventing invalid write on "
                   "metadata (overlaps with %s) at offset 0x%llx, %llu bytes; further writes "
                   "are refused", s->bs->filename, qcow2_overlap_name(hit),
                   (unsigned long long)off, (unsigned long long)len);
}

int qcow2_pwrite_checked(struct qcow2_state *s, unsigned ignore, uint64_t off, const void *buf,
                         size_t len, struct err *e)
{
    int ret = qcow2_pre_write_check(s, ignore, off, len, e);
    return ret < 0 ? ret : transport_pwrite(s->bs->file, off, buf, len, e);
}

void qcow2_set_bitmap_tables(struct qcow2_state *s, const struct qcow2_range *tables, size_t n)
{
    struct qcow2_range *copy = n ? malloc(n * sizeof(*copy)) : NULL;
    free(s->bitmap_tables);
    s->bitmap_tables = copy;
    s->nb_bitmap_tables = copy ? n : 0;
    if (copy)
        memcpy(copy, tables, n * sizeof(*copy));
    qcow2_overlap_invalidate(s);
}
