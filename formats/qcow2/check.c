/* qcow2 check and repair, with the results and messages of qemu-img check
 * (QEMU 7.2, block/qcow2-refcount.c):
 *
 *   1. Count every reference to every host cluster in memory: the header
 *      cluster, the active L1 table and its L2 tables and data clusters
 *      (compressed data: every cluster its byte range touches), each
 *      snapshot's L1/L2 tables and data, the snapshot table, the refcount
 *      table and refcount blocks, the bitmap directory, bitmap tables and
 *      bitmap data (validated by bitmap.c: bad entries are corruptions).  The in-memory counts use the refcount
 *      block layout of the image, so a slice of them is a refcount block.
 *   2. Compare with the refcounts on disk: refcount < references is a
 *      corruption ("ERROR cluster ..."), refcount > references a leak
 *      ("Leaked cluster ...").  -r leaks lowers, -r all also raises; a
 *      refcount of 0 for a used cluster, or a broken refcount block, means
 *      the refcount structure is rebuilt from the in-memory counts (-r all).
 *   3. Check OFLAG_COPIED of every active L1 and L2 entry against the
 *      refcounts (repaired after the refcounts were).
 *   4. After a repair that left no corruption, clear the dirty and corrupt
 *      bits.
 *
 * Crash safety: refcount repairs go through the refcount-block cache and are
 * flushed before the OFLAG_COPIED repairs that rely on them; a rebuilt
 * refcount structure is written into clusters nothing references, flushed,
 * and only then does one header write switch to it.  The whole check runs
 * with the driver lock held. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2-bitmap.h"
#include "formats/qcow2/qcow2.h"

/* Reserved bits of a refcount table entry (qcow2.txt: bits 0-8). */
#define REFTABLE_RESERVED       0x1ffull

struct check {
    struct qcow2_state *s;
    struct blk_check_result *res;
    /* References per cluster, in chunks of one refcount block's worth
     * (refcount-block layout, so that a chunk is written to disk as it
     * is), sorted by chunk index and allocated when a cluster of theirs is
     * first referenced: memory follows what the image references, not the
     * file's apparent size (a sparse file, far offsets). */
    struct refs_chunk *chunks;
    size_t nb_chunks, chunks_cap;
    size_t last_chunk;          /* the chunk found last (lookups are mostly local) */
    uint64_t nb_clusters;       /* clusters counted */
    uint64_t file_size;
    bool rebuild;               /* the refcount structure must be rebuilt */
    bool corruption_signalled;  /* the "Image is corrupt" line was printed */
    bool bitmaps_incomplete;    /* the bitmaps' clusters could not all be counted */
};

/* The problem counters of a result (its messages stay as they are). */
struct counters {
    uint64_t corruptions, leaks, check_errors, corruptions_fixed, leaks_fixed;
};

static struct counters save_counters(const struct blk_check_result *r)
{
    struct counters c = { r->corruptions, r->leaks, r->check_errors, r->corruptions_fixed,
                          r->leaks_fixed };
    return c;
}

static void restore_counters(struct blk_check_result *r, struct counters c)
{
    r->corruptions = c.corruptions;
    r->leaks = c.leaks;
    r->check_errors = c.check_errors;
    r->corruptions_fixed = c.corruptions_fixed;
    r->leaks_fixed = c.leaks_fixed;
}

/* --- the in-memory reference counts --- */

struct refs_chunk {
    uint64_t index;             /* refcount block number it mirrors */
    uint8_t *counts;            /* cluster_size bytes */
};

/* Position of the first chunk with an index >= `index`. */
static size_t refs_chunk_pos(const struct check *c, uint64_t index)
{
    if (c->last_chunk < c->nb_chunks && c->chunks[c->last_chunk].index == index)
        return c->last_chunk;
    size_t lo = 0, hi = c->nb_chunks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->chunks[mid].index < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The counts of refcount block `index`, NULL when none is referenced. */
static uint8_t *refs_chunk(struct check *c, uint64_t index)
{
    size_t pos = refs_chunk_pos(c, index);
    if (pos == c->nb_chunks || c->chunks[pos].index != index)
        return NULL;
    c->last_chunk = pos;
    return c->chunks[pos].counts;
}

static uint64_t refs_get(struct check *c, uint64_t cluster)
{
    const uint8_t *counts = refs_chunk(c, cluster >> c->s->rb_bits);
    return counts ? qcow2_refcount_entry_get(counts, cluster & ((1ull << c->s->rb_bits) - 1),
                                             c->s->refcount_order) : 0;
}

static int refs_chunk_add(struct check *c, uint64_t index, uint8_t **counts, struct err *e)
{
    size_t pos = refs_chunk_pos(c, index);
    if (c->nb_chunks == c->chunks_cap) {
        size_t cap = c->chunks_cap ? 2 * c->chunks_cap : 16;
        struct refs_chunk *n = realloc(c->chunks, cap * sizeof(*n));
        if (!n)
            return err_set(e, ENOMEM, "%s: out of memory for the reference counts",
                           c->s->bs->filename);
        c->chunks = n;
        c->chunks_cap = cap;
    }
    if (!(*counts = calloc(1, c->s->cluster_size)))
        return err_set(e, ENOMEM, "%s: out of memory for the reference counts",
                       c->s->bs->filename);
    memmove(c->chunks + pos + 1, c->chunks + pos, (c->nb_chunks - pos) * sizeof(*c->chunks));
    c->chunks[pos] = (struct refs_chunk){ index, *counts };
    c->nb_chunks++;
    c->last_chunk = pos;
    return 0;
}

static int refs_set(struct check *c, uint64_t cluster, uint64_t v, struct err *e)
{
    uint64_t index = cluster >> c->s->rb_bits;
    uint8_t *counts = refs_chunk(c, index);
    int ret;
    if (!counts && v && (ret = refs_chunk_add(c, index, &counts, e)) < 0)
        return ret;
    if (counts)
        qcow2_refcount_entry_set(counts, cluster & ((1ull << c->s->rb_bits) - 1),
                                 c->s->refcount_order, v);
    return 0;
}

/* Forget every count. */
static void refs_clear(struct check *c)
{
    for (size_t i = 0; i < c->nb_chunks; i++)
        free(c->chunks[i].counts);
    c->nb_chunks = 0;
    c->last_chunk = 0;
}

/* The first cluster at or after `cluster` that may have a reference: the
 * start of the next chunk when the cluster's own has none. */
static uint64_t refs_next_candidate(struct check *c, uint64_t cluster)
{
    uint64_t index = cluster >> c->s->rb_bits;
    size_t pos = refs_chunk_pos(c, index);
    if (pos == c->nb_chunks)
        return UINT64_MAX;
    return c->chunks[pos].index == index ? cluster : c->chunks[pos].index << c->s->rb_bits;
}

/* Count `clusters` clusters (new ones zero; nothing is allocated until
 * one is referenced).  Like QEMU, at most INT_MAX clusters. */
static int refs_resize(struct check *c, uint64_t clusters, struct err *e)
{
    if (clusters > INT_MAX)
        return err_set(e, EFBIG, "%s: too many clusters to check (%" PRIu64 ")",
                       c->s->bs->filename, clusters);
    c->nb_clusters = clusters;
    return 0;
}

/* One more reference to each cluster that [offset, offset + size) touches
 * (QEMU's qcow2_inc_refcounts_imrt).  The last cluster of an image may be
 * partly past the end of the file; a range that reaches a whole cluster
 * or more past it is a corruption and is not counted. */
static int add_references(struct check *c, uint64_t offset, uint64_t size, struct err *e)
{
    struct qcow2_state *s = c->s;
    if (size == 0)
        return 0;
    if (offset > UINT64_MAX - size ||
        (offset + size > c->file_size && offset + size - c->file_size >= s->cluster_size)) {
        blk_check_report(c->res, "ERROR: counting reference for region exceeding the end of "
                         "the file by one cluster or more: offset 0x%" PRIx64 " size 0x%"
                         PRIx64, offset, size);
        c->res->corruptions++;
        return 0;
    }
    uint64_t first = offset >> s->cluster_bits, last = (offset + size - 1) >> s->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        if (k >= c->nb_clusters) {
            int ret = refs_resize(c, k + 1, e);
            if (ret < 0) {
                c->res->check_errors++;
                return ret;
            }
        }
        uint64_t n = refs_get(c, k);
        if (n == s->refcount_max) {
            blk_check_report(c->res, "ERROR: overflow cluster offset=0x%" PRIx64,
                             k << s->cluster_bits);
            blk_check_report(c->res, "Use qemu-img amend to increase the refcount entry "
                             "width or qemu-img convert to create a clean copy if the image "
                             "cannot be opened for writing");
            c->res->corruptions++;
            continue;
        }
        int ret = refs_set(c, k, n + 1, e);
        if (ret < 0) {
            c->res->check_errors++;
            return ret;
        }
    }
    return 0;
}

/* Callback form of add_references, for the bitmaps module. */
static int add_references_cb(void *opaque, uint64_t offset, uint64_t len, struct err *e)
{
    return add_references(opaque, offset, len, e);
}

/* Whether writing [offset, offset + len) would hit metadata other than L2
 * tables (overlap.c). */
static bool overlaps_metadata(const struct check *c, uint64_t offset, uint64_t len)
{
    return qcow2_metadata_overlap(c->s, QCOW2_OL_ACTIVE_L2, offset, len) != 0;
}

/* --- L1 and L2 tables --- */

static uint64_t l2_entry(const struct qcow2_state *s, const uint8_t *table, uint64_t i)
{
    return qcow2_l2e_read(s, table, i).entry;
}

static uint64_t l2_bitmap(const struct qcow2_state *s, const uint8_t *table, uint64_t i)
{
    return qcow2_l2e_read(s, table, i).bitmap;
}

/* -r all for a preallocated zero cluster at an unaligned offset: make it a
 * plain zero cluster, written at once (as QEMU's fix_l2_entry_by_zero).
 * Returns 1 when the entry was fixed, 0 when not (counted), or a negative
 * errno when the L2 table overlaps other metadata (checking it stops). */
static int fix_l2_entry_by_zero(struct check *c, uint64_t l2_offset, uint8_t *table,
                                uint64_t i, struct err *e)
{
    struct qcow2_state *s = c->s;
    uint8_t *p = table + i * s->l2_entry_bytes;
    if (s->extended_l2) {
        uint64_t bitmap = be64_read(p + 8);
        bitmap = (bitmap | bitmap << 32) & QCOW2_BITMAP_ALL_ZERO;
        be64_write(p, 0);
        be64_write(p + 8, bitmap);
    } else {
        be64_write(p, QCOW2_OFLAG_ZERO);
    }
    uint64_t at = l2_offset + i * s->l2_entry_bytes;
    if (overlaps_metadata(c, at, s->l2_entry_bytes)) {
        blk_check_report(c->res, "ERROR: Overlap check failed");
        c->res->check_errors++;
        return err_set(e, EIO, "%s: L2 table at 0x%" PRIx64 " overlaps other metadata",
                       s->bs->filename, l2_offset);
    }
    struct err we = { 0 };
    int ret = transport_pwrite(s->bs->file, at, p, s->l2_entry_bytes, &we);
    if (ret == 0)
        ret = transport_flush(s->bs->file, &we);
    if (ret < 0) {
        blk_check_report(c->res, "ERROR: Failed to overwrite L2 table entry: %s",
                         strerror(-ret));
        c->res->check_errors++;
        return 0;
    }
    qcow2_cache_forget(&s->l2_cache, l2_offset);
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 1;
}

/* A data cluster (normal or preallocated zero) of an L2 table. */
static int check_data_cluster(struct check *c, uint64_t l2_offset, uint8_t *table, uint64_t i,
                              bool frag_info, uint64_t *next_contiguous, unsigned fix,
                              struct err *e)
{
    struct qcow2_state *s = c->s;
    uint64_t entry = l2_entry(s, table, i), bitmap = l2_bitmap(s, table, i);
    uint64_t offset = entry & QCOW2_OFFSET_MASK;
    if ((bitmap >> 32) & bitmap) {
        c->res->corruptions++;
        blk_check_report(c->res, "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted "
                         "subcluster allocation bitmap", offset);
    }
    if (offset & (s->cluster_size - 1)) {
        c->res->corruptions++;
        bool has_data = s->extended_l2 ? (bitmap & QCOW2_BITMAP_ALL_ALLOC) != 0
                                       : !(entry & QCOW2_OFLAG_ZERO);
        if (has_data) {
            blk_check_report(c->res, "ERROR offset=%" PRIx64 ": Data cluster is not properly "
                             "aligned; L2 entry corrupted.", offset);
        } else {
            blk_check_report(c->res, "%s offset=%" PRIx64 ": Preallocated cluster is not "
                             "properly aligned; L2 entry corrupted.",
                             fix & BLK_CHECK_FIX_ERRORS ? "Repairing" : "ERROR", offset);
            if (fix & BLK_CHECK_FIX_ERRORS) {
                int ret = fix_l2_entry_by_zero(c, l2_offset, table, i, e);
                if (ret != 0)
                    return ret < 0 ? ret : 0;   /* fixed: the cluster is unused now */
            }
        }
    }
    if (frag_info) {
        c->res->allocated_clusters++;
        if (*next_contiguous && offset != *next_contiguous)
            c->res->fragmented_clusters++;
        *next_contiguous = offset + s->cluster_size;
    }
    return add_references(c, offset, s->cluster_size, e);
}

/* Every entry of the L2 table at l2_offset (QEMU's check_refcounts_l2). */
static int check_l2(struct check *c, uint64_t l2_offset, bool frag_info, unsigned fix,
                    struct err *e)
{
    struct qcow2_state *s = c->s;
    uint8_t *table = malloc(s->cluster_size);
    if (!table) {
        c->res->check_errors++;
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    }
    int ret = transport_pread(s->bs->file, l2_offset, table, s->cluster_size, e);
    if (ret < 0) {
        blk_check_report(c->res, "ERROR: I/O error in check_refcounts_l2");
        c->res->check_errors++;
        goto out;
    }
    uint64_t next_contiguous = 0;
    for (uint64_t i = 0; i < s->l2_entries && ret == 0; i++) {
        uint64_t entry = l2_entry(s, table, i), bitmap = l2_bitmap(s, table, i);
        enum qcow2_cluster_type type = qcow2_cluster_type(s, entry);
        if (type != QCOW2_CLUSTER_COMPRESSED && (entry & QCOW2_L2_RESERVED)) {
            blk_check_report(c->res, "ERROR found l2 entry with reserved bits set: %" PRIx64,
                             entry);
            c->res->corruptions++;
        }
        switch (type) {
        case QCOW2_CLUSTER_COMPRESSED: {
            if (entry & QCOW2_OFLAG_COPIED) {
                blk_check_report(c->res, "ERROR: coffset=0x%" PRIx64 ": copied flag must "
                                 "never be set for compressed clusters",
                                 entry & s->coffset_mask);
                entry &= ~QCOW2_OFLAG_COPIED;
                c->res->corruptions++;
            }
            if (bitmap) {
                blk_check_report(c->res, "ERROR compressed cluster %d with non-zero subcluster "
                                 "allocation bitmap, entry=0x%" PRIx64, (int)i, entry);
                c->res->corruptions++;
                break;
            }
            uint64_t coffset, bytes;
            qcow2_compressed_range(s, entry, &coffset, &bytes);
            ret = add_references(c, coffset, bytes, e);
            if (frag_info) {
                /* Compressed clusters count as fragmented, as in QEMU. */
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            break;
        }
        case QCOW2_CLUSTER_ZERO_ALLOC:
        case QCOW2_CLUSTER_NORMAL:
            ret = check_data_cluster(c, l2_offset, table, i, frag_info, &next_contiguous, fix,
                                     e);
            break;
        case QCOW2_CLUSTER_ZERO_PLAIN:
            break;
        case QCOW2_CLUSTER_UNALLOCATED:
            if (bitmap & QCOW2_BITMAP_ALL_ALLOC) {
                c->res->corruptions++;
                blk_check_report(c->res, "ERROR: Unallocated cluster has non-zero subcluster "
                                 "allocation map");
            }
            break;
        }
    }
out:
    free(table);
    return ret;
}

/* An L1 table, its L2 tables and what they reference (QEMU's
 * check_refcounts_l1).  The size was checked by the caller. */
static int check_l1(struct check *c, uint64_t l1_offset, uint32_t l1_size, bool frag_info,
                    unsigned fix, struct err *e)
{
    struct qcow2_state *s = c->s;
    uint64_t bytes = (uint64_t)l1_size * 8;
    int ret = add_references(c, l1_offset, bytes, e);
    /* Entries past the end of the file read as zero (unused): only those
     * inside it are read, so a damaged size costs no more than the file. */
    bytes = l1_offset < c->file_size ? align_down(min_u64(bytes, c->file_size - l1_offset), 8)
                                     : 0;
    if (ret < 0 || bytes == 0)
        return ret;
    l1_size = (uint32_t)(bytes / 8);
    uint8_t *l1 = malloc(bytes);
    if (!l1) {
        c->res->check_errors++;
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    }
    if ((ret = transport_pread(s->bs->file, l1_offset, l1, bytes, e)) < 0) {
        blk_check_report(c->res, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        goto out;
    }
    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t entry = be64_read(l1 + 8 * i);
        if (!entry)
            continue;
        if (entry & QCOW2_L1_RESERVED) {
            blk_check_report(c->res, "ERROR found L1 entry with reserved bits set: %" PRIx64,
                             entry);
            c->res->corruptions++;
        }
        uint64_t l2_offset = entry & QCOW2_OFFSET_MASK;
        if ((ret = add_references(c, l2_offset, s->cluster_size, e)) < 0)
            break;
        if (l2_offset & (s->cluster_size - 1)) {
            blk_check_report(c->res, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                             "aligned; L1 entry corrupted", l2_offset);
            c->res->corruptions++;
        }
        ret = check_l2(c, l2_offset, frag_info, fix, e);
    }
out:
    free(l1);
    return ret;
}

/* --- refcount blocks --- */

/* The refcount table as it is on disk (reserved bits included). */
static int read_reftable(struct check *c, uint64_t **table, struct err *e)
{
    struct qcow2_state *s = c->s;
    uint64_t bytes = (uint64_t)s->reftable_clusters << s->cluster_bits;
    uint64_t *t = malloc(bytes);
    if (!t)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = transport_pread(s->bs->file, s->reftable_offset, t, bytes, e);
    if (ret < 0) {
        free(t);
        return ret;
    }
    for (uint64_t i = 0; i < bytes / 8; i++)
        t[i] = be64_read(&t[i]);
    *table = t;
    return 0;
}

/* The end of the last cluster something references (counted so far). */
static uint64_t referenced_end(const struct check *c)
{
    uint64_t per_chunk = 1ull << c->s->rb_bits;
    for (size_t k = c->nb_chunks; k > 0; k--)
        for (uint64_t i = per_chunk; i > 0; i--)
            if (qcow2_refcount_entry_get(c->chunks[k - 1].counts, i - 1, c->s->refcount_order))
                return ((c->chunks[k - 1].index << c->s->rb_bits) + i) << c->s->cluster_bits;
    return 0;
}

/* How far -r all may grow the file for a refcount block past its end: up
 * to twice what the image references, or 1 GiB more, whichever is larger
 * (a truncated image is repaired as QEMU repairs it).  A block further out
 * covers nothing the image uses, and growing the file for it would cost
 * disk space and memory for the counts out of all proportion to the image
 * (QEMU grows a 2 KiB image to 512 GiB and counts 2^30 clusters). */
#define REPAIR_GROWTH_SLACK (1ull << 30)

static uint64_t growth_limit(const struct check *c)
{
    uint64_t need = max_u64(c->file_size, referenced_end(c));
    return need > UINT64_MAX / 4 ? UINT64_MAX : need + max_u64(need, REPAIR_GROWTH_SLACK);
}

/* -r all for a refcount block past the end of the file: grow the file so
 * that it is inside (as QEMU does), then count it; when that would grow the
 * file far beyond what its references need, rebuild the refcount structure
 * without the block instead. */
static int grow_file_for_refblock(struct check *c, uint64_t offset, struct err *e)
{
    struct qcow2_state *s = c->s;
    struct err te = { 0 };
    int ret;
    uint64_t limit = growth_limit(c);
    if (offset > limit || s->cluster_size > limit - offset) {
        blk_check_report(c->res, "ERROR refcount block at 0x%" PRIx64 " is far past the end "
                         "of the file (%" PRIu64 " bytes, references up to %" PRIu64 "): not "
                         "growing the file for it, rebuilding the refcount structure instead",
                         offset, c->file_size, referenced_end(c));
        c->rebuild = true;
        return 0;
    }
    if (offset > INT64_MAX - s->cluster_size ||
        ((offset + s->cluster_size) >> s->cluster_bits) > INT_MAX)
        ret = err_set(&te, EFBIG, "refcount block offset too large");
    else
        ret = transport_truncate(s->bs->file, offset + s->cluster_size, &te);
    if (ret == 0) {
        c->file_size = offset + s->cluster_size;
        ret = refs_resize(c, c->file_size >> s->cluster_bits, &te);
    }
    if (ret < 0) {
        c->rebuild = true;
        blk_check_report(c->res, "ERROR could not resize image: %s", strerror(-ret));
        return 0;
    }
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return add_references(c, offset, s->cluster_size, e);
}

/* Count the refcount blocks and check their entries in the refcount table
 * (QEMU's check_refblocks). */
static int check_refblocks(struct check *c, unsigned fix, struct err *e)
{
    struct qcow2_state *s = c->s;
    uint64_t *table = NULL;
    int ret = read_reftable(c, &table, e);
    if (ret < 0) {
        c->res->check_errors++;
        return ret;
    }
    uint64_t entries = ((uint64_t)s->reftable_clusters << s->cluster_bits) / 8;
    for (uint64_t i = 0; i < entries && ret == 0; i++) {
        uint64_t offset = table[i] & ~REFTABLE_RESERVED, cluster = offset >> s->cluster_bits;
        if (table[i] & REFTABLE_RESERVED) {
            blk_check_report(c->res, "ERROR refcount table entry %" PRIu64 " has reserved "
                             "bits set", i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (offset & (s->cluster_size - 1)) {
            blk_check_report(c->res, "ERROR refcount block %" PRIu64 " is not cluster "
                             "aligned; refcount table entry corrupted", i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (cluster >= c->nb_clusters) {
            c->res->corruptions++;
            blk_check_report(c->res, "%s refcount block %" PRIu64 " is outside image",
                             fix & BLK_CHECK_FIX_ERRORS ? "Repairing" : "ERROR", i);
            if (fix & BLK_CHECK_FIX_ERRORS)
                ret = grow_file_for_refblock(c, offset, e);
            continue;
        }
        if (offset == 0)
            continue;
        if ((ret = add_references(c, offset, s->cluster_size, e)) < 0)
            break;
        uint64_t n = refs_get(c, cluster);
        if (n != 1) {
            blk_check_report(c->res, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i,
                             n);
            c->res->corruptions++;
            c->rebuild = true;
        }
    }
    free(table);
    return ret;
}

/* --- counting every reference --- */

static int calculate_refcounts(struct check *c, unsigned fix, struct err *e)
{
    struct qcow2_state *s = c->s;
    int ret = transport_size(s->bs->file, &c->file_size, e);
    if (ret < 0) {
        c->res->check_errors++;
        return ret;
    }
    if ((ret = add_references(c, 0, s->cluster_size, e)) < 0 ||
        (ret = check_l1(c, s->l1_offset, s->l1_size, true, fix, e)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const struct qcow2_snapshot *sn = &s->snapshots[i];
        if (sn->l1_offset & (s->cluster_size - 1)) {
            blk_check_report(c->res, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table "
                             "is not cluster aligned; snapshot table entry corrupted", sn->id,
                             sn->name, sn->l1_offset);
            c->res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8) {
            blk_check_report(c->res, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is "
                             "too large; snapshot table entry corrupted", sn->id, sn->name,
                             sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        if ((ret = check_l1(c, sn->l1_offset, sn->l1_size, false, fix, e)) < 0)
            return ret;
    }
    if ((ret = add_references(c, s->snapshots_offset, s->snapshots_size, e)) < 0 ||
        (ret = add_references(c, s->reftable_offset,
                              (uint64_t)s->reftable_clusters << s->cluster_bits, e)) < 0)
        return ret;
    if ((ret = qcow2_bitmaps_for_each_cluster(s, add_references_cb, c, c->res,
                                              &c->bitmaps_incomplete, e)) < 0) {
        c->res->check_errors++;
        return ret;
    }
    return check_refblocks(c, fix, e);
}

/* --- comparing with the refcounts on disk --- */

/* Write the incompatible feature bits (version 3 only). */
static int write_incompatible(struct qcow2_state *s, uint64_t bits, struct err *e)
{
    int ret = qcow2_write_header_u64(s, 72, bits, e);
    if (ret == 0)
        s->incompatible = bits;
    return ret;
}

/* The refcount block holding `cluster`'s refcount on disk (NULL: none),
 * as qcow2_get_refblock.  A refcount block at an unaligned offset cannot be
 * read: like QEMU, say so once and, when repairing, mark the image corrupt
 * until the refcount structure is rebuilt. */
static int disk_refblock(struct check *c, uint64_t cluster, uint8_t **block, struct err *e)
{
    struct qcow2_state *s = c->s;
    uint64_t rt = cluster >> s->rb_bits;
    if (rt < s->reftable_entries && (s->reftable[rt] & (s->cluster_size - 1))) {
        if (!c->corruption_signalled) {
            c->corruption_signalled = true;
            if (s->bs->read_only)
                blk_check_report(c->res, "qcow2: Image is corrupt: Refblock offset %#" PRIx64
                                 " unaligned (reftable index: %#" PRIx64 "); further "
                                 "non-fatal corruption events will be suppressed",
                                 s->reftable[rt], rt);
            else
                blk_check_report(c->res, "qcow2: Marking image as corrupt: Refblock offset %#"
                                 PRIx64 " unaligned (reftable index: %#" PRIx64 "); further "
                                 "corruption events will be suppressed", s->reftable[rt], rt);
            struct err ignored = { 0 };
            if (!s->bs->read_only && s->version >= 3)
                write_incompatible(s, s->incompatible | QCOW2_INCOMPAT_CORRUPT, &ignored);
        }
        return err_set(e, EIO, "%s: refcount block %" PRIu64 " is not cluster aligned",
                       s->bs->filename, rt);
    }
    return qcow2_get_refblock(s, cluster, block, e);
}

static uint64_t refblock_entry(const struct qcow2_state *s, const uint8_t *block,
                               uint64_t cluster)
{
    return block ? qcow2_refcount_entry_get(block, cluster & ((1ull << s->rb_bits) - 1),
                                            s->refcount_order) : 0;
}

/* The refcount on disk of `cluster`. */
static int disk_refcount(struct check *c, uint64_t cluster, uint64_t *refcount, struct err *e)
{
    uint8_t *block;
    int ret = disk_refblock(c, cluster, &block, e);
    if (ret == 0)
        *refcount = refblock_entry(c->s, block, cluster);
    return ret;
}

/* Set the refcount of `cluster` from `from` to `to` on disk.  A cluster
 * that becomes free is discarded in the file, as QEMU does. */
static int set_disk_refcount(struct check *c, uint64_t cluster, uint64_t from, uint64_t to,
                             struct err *e)
{
    struct qcow2_state *s = c->s;
    while (from != to) {
        uint64_t step = from < to ? min_u64(to - from, INT64_MAX)
                                  : min_u64(from - to, INT64_MAX);
        int64_t delta = from < to ? (int64_t)step : -(int64_t)step;
        int ret = qcow2_update_refcount(s, cluster << s->cluster_bits, 1, delta, e);
        if (ret < 0)
            return ret;
        from = from < to ? from + step : from - step;
    }
    if (to == 0)
        return transport_discard(s->bs->file, cluster << s->cluster_bits, s->cluster_size, e);
    return 0;
}

/* The refcount table has no block for `cluster` (its refcount is 0). */
static bool no_disk_refblock(const struct qcow2_state *s, uint64_t cluster)
{
    uint64_t rt = cluster >> s->rb_bits;
    return rt >= s->reftable_entries || s->reftable[rt] == 0;
}

/* Compare every cluster's refcount with its references (QEMU's
 * compare_refcounts), repairing as `fix` allows; *highest is the last
 * cluster that is referenced or has a refcount. */
static void compare_refcounts(struct check *c, unsigned fix, uint64_t *highest)
{
    *highest = 0;
    /* One message buffer for the loop, filled only on failure (clearing a
     * 1 KiB buffer per cluster costs more than the comparison). */
    struct err e = { 0 };
    /* The refcount block of the clusters being compared is looked up once
     * for all of them, and again after a repair (which uses the cache). */
    uint8_t *block = NULL;
    uint64_t block_rt = UINT64_MAX;
    for (uint64_t i = 0; i < c->nb_clusters; i++) {
        if (!refs_chunk(c, i >> c->s->rb_bits) && no_disk_refblock(c->s, i)) {
            /* Neither referenced nor counted: the whole block is fine. */
            i |= (1ull << c->s->rb_bits) - 1;
            continue;
        }
        uint64_t on_disk, refs = refs_get(c, i);
        if (i >> c->s->rb_bits != block_rt) {
            int ret = disk_refblock(c, i, &block, &e);
            if (ret < 0) {
                blk_check_report(c->res, "Can't get refcount for cluster %" PRIu64 ": %s", i,
                                 strerror(-ret));
                c->res->check_errors++;
                continue;
            }
            block_rt = i >> c->s->rb_bits;
        }
        on_disk = refblock_entry(c->s, block, i);
        if (on_disk > 0 || refs > 0)
            *highest = i;
        if (on_disk == refs)
            continue;
        uint64_t *fixed = NULL;
        if (on_disk == 0)
            c->rebuild = true;
        else if (on_disk > refs && (fix & BLK_CHECK_FIX_LEAKS))
            fixed = &c->res->leaks_fixed;
        else if (on_disk < refs && (fix & BLK_CHECK_FIX_ERRORS))
            fixed = &c->res->corruptions_fixed;
        blk_check_report(c->res, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                         PRIu64, fixed ? "Repairing" : on_disk < refs ? "ERROR" : "Leaked", i,
                         on_disk, refs);
        if (fixed)
            block_rt = UINT64_MAX;      /* the repair goes through the cache */
        if (fixed && set_disk_refcount(c, i, on_disk, refs, &e) == 0) {
            (*fixed)++;
            continue;
        }
        if (on_disk < refs)
            c->res->corruptions++;
        else
            c->res->leaks++;
    }
}

/* --- rebuilding the refcount structure --- */

/* Take `count` contiguous clusters nothing references, at or after
 * *first_free (which moves to the first free cluster seen), growing the
 * counts past the end of the image when needed; they get refcount 1. */
static int alloc_in_refs(struct check *c, uint64_t count, uint64_t *first_free,
                         uint64_t *offset, struct err *e)
{
    uint64_t cluster = *first_free, run = 0;
    bool first_gap = true;
    for (; cluster < c->nb_clusters && run < count; cluster++) {
        if (refs_get(c, cluster)) {
            run = 0;
            continue;
        }
        if (first_gap) {
            *first_free = cluster;
            first_gap = false;
        }
        run++;
    }
    if (run < count) {
        int ret = refs_resize(c, cluster + count - run, e);
        if (ret < 0)
            return ret;
    }
    cluster -= run;
    for (uint64_t i = 0; i < count; i++) {
        int ret = refs_set(c, cluster + i, 1, e);
        if (ret < 0)
            return ret;
    }
    *offset = cluster << c->s->cluster_bits;
    return 0;
}

struct new_reftable {
    uint64_t *entries;          /* refcount block offsets, host order */
    uint64_t size;              /* entries (a whole number of clusters' worth) */
};

/* The refcount table and blocks being replaced by a rebuild: the counts
 * may call their clusters free (a damaged table does not reference them),
 * so the new structure may be written over them; every other kind of
 * metadata stays protected (overlap.c). */
#define OLD_REFCOUNT_STRUCTURE (QCOW2_OL_REFCOUNT_TABLE | QCOW2_OL_REFCOUNT_BLOCK)

/* Write a refcount block for every block of clusters in [first, end) that
 * has a reference, allocating the blocks that do not exist yet; each is
 * written as the slice of the in-memory counts it covers.  *grown tells
 * whether the new refcount table had to get bigger. */
static int write_refblocks(struct check *c, uint64_t first, uint64_t end,
                           struct new_reftable *rt, bool *grown, struct err *e)
{
    struct qcow2_state *s = c->s;
    uint64_t per_block = 1ull << s->rb_bits, first_free = 0;
    *grown = false;
    for (uint64_t cluster = first; cluster < end; cluster++) {
        if ((cluster = refs_next_candidate(c, cluster)) >= end)
            break;
        if (!refs_get(c, cluster))
            continue;
        uint64_t index = cluster >> s->rb_bits, start = index << s->rb_bits, offset;
        int ret;
        if (index < rt->size && rt->entries[index]) {
            offset = rt->entries[index];
        } else {
            /* Not inside a block that is already written. */
            first_free = max_u64(first_free, start);
            if ((ret = alloc_in_refs(c, 1, &first_free, &offset, e)) < 0)
                return ret;
            end = max_u64(end, (offset >> s->cluster_bits) + 1);
            if (index >= rt->size) {
                uint64_t size = align_up((index + 1) * 8, s->cluster_size) / 8;
                uint64_t *n = realloc(rt->entries, size * 8);
                if (!n)
                    return err_set(e, ENOMEM, "%s: out of memory for the refcount table",
                                   s->bs->filename);
                memset(n + rt->size, 0, (size - rt->size) * 8);
                rt->entries = n;
                rt->size = size;
                *grown = true;
            }
            rt->entries[index] = offset;
        }
        ret = qcow2_pwrite_checked(s, OLD_REFCOUNT_STRUCTURE, offset, refs_chunk(c, index),
                                   s->cluster_size, e);
        if (ret < 0)
            return ret;
        cluster = start + per_block - 1;
    }
    return 0;
}

/* Replace the refcount table and blocks with new ones built from the
 * in-memory counts (QEMU's rebuild_refcount_structure): blocks, then the
 * table, into clusters nothing references, flushed, then the header. */
static int rebuild_refcount_structure(struct check *c, struct err *e)
{
    struct qcow2_state *s = c->s;
    struct new_reftable rt = { NULL, 0 };
    uint64_t offset = 0, clusters = 0;
    bool grown;
    uint8_t *buf = NULL;
    int ret = qcow2_flush_metadata(s, e);
    if (ret == 0)
        ret = write_refblocks(c, 0, c->nb_clusters, &rt, &grown, e);
    if (ret == 0 && !grown)
        ret = err_set(e, EIO, "%s: no cluster is in use", s->bs->filename);
    /* Placing the table changes the counts of the clusters it takes, whose
     * blocks are written again; that may need a larger table. */
    while (ret == 0 && grown) {
        uint64_t first_free = 0;
        clusters = div_round_up(rt.size * 8, s->cluster_size);
        if ((ret = alloc_in_refs(c, clusters, &first_free, &offset, e)) < 0)
            break;
        ret = write_refblocks(c, offset >> s->cluster_bits,
                              (offset >> s->cluster_bits) + clusters, &rt, &grown, e);
    }
    if (ret == 0 && clusters << s->cluster_bits > QCOW2_MAX_REFTABLE_BYTES)
        ret = err_set(e, EFBIG, "%s: the rebuilt refcount table would exceed %u bytes",
                      s->bs->filename, QCOW2_MAX_REFTABLE_BYTES);
    if (ret == 0 && !(buf = calloc(clusters, s->cluster_size)))
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    if (ret < 0)
        goto out;
    for (uint64_t i = 0; i < rt.size; i++)
        be64_write(buf + 8 * i, rt.entries[i]);
    uint8_t hdr[12];
    be64_write(hdr, offset);
    be32_write(hdr + 8, (uint32_t)clusters);
    if ((ret = qcow2_pwrite_checked(s, OLD_REFCOUNT_STRUCTURE, offset, buf,
                                    clusters << s->cluster_bits, e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0 ||
        (ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, 48, hdr, sizeof(hdr), e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    /* The header points at the new structure: forget the old one. */
    for (size_t i = 0; i < s->rb_cache.count; i++)
        qcow2_cache_forget(&s->rb_cache, s->rb_cache.entries[i].offset);
    free(s->reftable);
    s->reftable = rt.entries;
    s->reftable_entries = rt.size;
    qcow2_overlap_invalidate(s);
    rt.entries = NULL;
    s->reftable_offset = offset;
    s->reftable_clusters = (uint32_t)clusters;
    s->free_cluster_hint = 1;
    s->free_byte_offset = 0;
    c->corruption_signalled = false;
out:
    free(buf);
    free(rt.entries);
    return ret;
}

/* --- OFLAG_COPIED --- */

/* COPIED must be set exactly when the refcount is 1 (QEMU's
 * check_oflag_copied), on the active L1 table and its L2 tables. */
static int check_oflag_copied(struct check *c, unsigned fix, struct err *e)
{
    struct qcow2_state *s = c->s;
    /* -r leaks repairs the flags only when the refcounts are now right. */
    bool repair = (fix & BLK_CHECK_FIX_ERRORS) ||
                  ((fix & BLK_CHECK_FIX_LEAKS) && !c->res->check_errors &&
                   !c->res->corruptions && !c->res->leaks);
    uint8_t *table = malloc(s->cluster_size);
    if (!table) {
        c->res->check_errors++;
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    }
    int ret = 0;
    /* Refcount repairs are stable before flags that rely on them. */
    if (repair && (ret = qcow2_flush_metadata(s, e)) < 0) {
        c->res->check_errors++;
        goto out;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1[i], l2_offset = l1e & QCOW2_OFFSET_MASK, refcount;
        struct err ignored = { 0 };
        if (!l2_offset)
            continue;
        if (disk_refcount(c, l2_offset >> s->cluster_bits, &refcount, &ignored) < 0)
            continue;
        if ((refcount == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
            c->res->corruptions++;
            blk_check_report(c->res, "%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%"
                             PRIx64 " refcount=%" PRIu64, repair ? "Repairing" : "ERROR",
                             (int)i, l1e, refcount);
            if (repair) {
                uint8_t buf[8];
                uint64_t fixed = refcount == 1 ? l1e | QCOW2_OFLAG_COPIED
                                               : l1e & ~QCOW2_OFLAG_COPIED;
                be64_write(buf, fixed);
                if ((ret = qcow2_pwrite_checked(s, QCOW2_OL_ACTIVE_L1, s->l1_offset + 8ull * i,
                                                buf, 8, e)) < 0) {
                    c->res->check_errors++;
                    goto out;
                }
                qcow2_set_l1_entry(s, i, fixed);
                c->res->corruptions--;
                c->res->corruptions_fixed++;
            }
        }
        if ((ret = transport_pread(s->bs->file, l2_offset, table, s->cluster_size, e)) < 0) {
            blk_check_report(c->res, "ERROR: Could not read L2 table: %s", strerror(-ret));
            c->res->check_errors++;
            goto out;
        }
        uint64_t dirty = 0;
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t entry = l2_entry(s, table, j);
            enum qcow2_cluster_type type = qcow2_cluster_type(s, entry);
            if (type != QCOW2_CLUSTER_NORMAL && type != QCOW2_CLUSTER_ZERO_ALLOC)
                continue;
            if (disk_refcount(c, (entry & QCOW2_OFFSET_MASK) >> s->cluster_bits, &refcount,
                              &ignored) < 0)
                continue;
            if ((refcount == 1) == ((entry & QCOW2_OFLAG_COPIED) != 0))
                continue;
            c->res->corruptions++;
            blk_check_report(c->res, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                             " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", entry,
                             refcount);
            if (repair) {
                be64_write(table + j * s->l2_entry_bytes,
                           refcount == 1 ? entry | QCOW2_OFLAG_COPIED
                                         : entry & ~QCOW2_OFLAG_COPIED);
                dirty++;
            }
        }
        if (!dirty)
            continue;
        if (overlaps_metadata(c, l2_offset, s->cluster_size)) {
            blk_check_report(c->res, "ERROR: Could not write L2 table; metadata overlap check "
                             "failed: %s", strerror(EIO));
            c->res->check_errors++;
            ret = err_set(e, EIO, "%s: L2 table at 0x%" PRIx64 " overlaps other metadata",
                          s->bs->filename, l2_offset);
            goto out;
        }
        if ((ret = transport_pwrite(s->bs->file, l2_offset, table, s->cluster_size, e)) < 0) {
            blk_check_report(c->res, "ERROR: Could not write L2 table: %s", strerror(-ret));
            c->res->check_errors++;
            goto out;
        }
        qcow2_cache_forget(&s->l2_cache, l2_offset);
        c->res->corruptions -= dirty;
        c->res->corruptions_fixed += dirty;
    }
    if (repair)
        ret = transport_flush(s->bs->file, e);
out:
    free(table);
    return ret;
}

/* --- the whole check --- */

/* The refcount part (QEMU's qcow2_check_refcounts). */
static int check_refcounts(struct check *c, unsigned fix, struct err *e)
{
    struct qcow2_state *s = c->s;
    struct blk_check_result *res = c->res;
    uint64_t file_size;
    int ret = transport_size(s->bs->file, &file_size, e);
    if (ret == 0)
        ret = refs_resize(c, div_round_up(file_size, s->cluster_size), e);
    if (ret < 0) {
        res->check_errors++;
        return ret;
    }
    res->total_clusters = div_round_up(s->size, s->cluster_size);
    if ((ret = calculate_refcounts(c, fix, e)) < 0)
        return ret;
    if (fix && c->bitmaps_incomplete) {
        /* Clusters that look leaked may be the bitmaps' that could not be
         * counted: freeing them, or rebuilding the refcounts without them,
         * would let new data overwrite what another reader still uses. */
        blk_check_report(res, "ERROR not repairing: the bitmaps extension cannot be read, "
                         "so the clusters it references are unknown; nothing is freed and "
                         "no refcount is changed");
        res->check_errors++;
        fix = 0;
    }
    struct counters before_compare = save_counters(res);
    uint64_t highest;
    compare_refcounts(c, 0, &highest);
    if (c->rebuild && (fix & BLK_CHECK_FIX_ERRORS)) {
        struct counters old = save_counters(res);
        uint64_t fresh_leaks = 0;
        blk_check_report(res, "Rebuilding refcount structure");
        if ((ret = rebuild_refcount_structure(c, e)) < 0) {
            res->check_errors++;
            return ret;
        }
        res->corruptions = res->leaks = 0;
        /* Refcounts that could not be read belonged to the old structure
         * (QEMU cannot rebuild in that case: it stops at the first). */
        res->check_errors = before_compare.check_errors;
        /* The references are counted again: the new structure is in use,
         * the old one is not. */
        c->rebuild = false;
        refs_clear(c);
        if ((ret = calculate_refcounts(c, 0, e)) < 0)
            return ret;
        if (fix & BLK_CHECK_FIX_LEAKS) {
            /* The old structure is leaked now: free it.  Leaks that remain
             * were made by the rebuild itself. */
            struct counters saved = save_counters(res);
            restore_counters(res, (struct counters){ 0 });
            compare_refcounts(c, BLK_CHECK_FIX_LEAKS, &highest);
            if (c->rebuild)
                blk_check_report(res, "ERROR rebuilt refcount structure is still broken");
            fresh_leaks = res->leaks;
            restore_counters(res, saved);
        }
        if (res->corruptions < old.corruptions)
            res->corruptions_fixed += old.corruptions - res->corruptions;
        if (res->leaks < old.leaks)
            res->leaks_fixed += old.leaks - res->leaks;
        res->leaks += fresh_leaks;
    } else if (fix) {
        if (c->rebuild) {
            blk_check_report(res, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            return err_set(e, EIO, "%s: Check failed: the refcount structure is broken; "
                           "repair it with 'imgtool check -r all'", s->bs->filename);
        }
        if (res->leaks || res->corruptions) {
            restore_counters(res, before_compare);
            compare_refcounts(c, fix, &highest);
        }
    }
    if ((ret = check_oflag_copied(c, fix, e)) < 0)
        return ret;
    res->image_end_offset = (highest + 1) << s->cluster_bits;
    return 0;
}

/* Bitmaps marked in use on disk were not saved cleanly: their bits may
 * miss writes.  qemu-img check says nothing about them; imgtool warns (it
 * is not a problem of the image, so it is not counted). */
static void report_inconsistent_bitmaps(struct qcow2_state *s, struct blk_check_result *res)
{
    struct prop *data = prop_new_object();
    struct err ignored = { 0 };     /* a broken directory is reported by the check */
    if (data && qcow2_bitmaps_info(s, data, &ignored) == 0) {
        const struct prop *list = prop_get(data, "bitmaps");
        for (const struct prop *bm = list ? list->first : NULL; bm; bm = bm->next) {
            const struct prop *flags = prop_get(bm, "flags"), *name = prop_get(bm, "name");
            for (const struct prop *f = flags ? flags->first : NULL; f && name; f = f->next)
                if (f->type == PROP_STRING && !strcmp(f->v.s, "in-use"))
                    blk_check_report(res, "Warning: bitmap '%s' is inconsistent (the image "
                                     "was not closed cleanly): remove it with 'imgtool "
                                     "bitmap --remove'", name->v.s);
        }
    }
    prop_free(data);
}

/* After a successful repair: clear the dirty bit (lazy refcounts) and the
 * corrupt bit, once everything else is stable. */
static int mark_clean(struct qcow2_state *s, struct err *e)
{
    uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
    if (s->version < 3 || !(s->incompatible & bits))
        return 0;
    return write_incompatible(s, s->incompatible & ~bits, e);
}

int qcow2_check(struct blockdev *bs, struct blk_check_result *res, unsigned fix,
                struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    struct check c = { .s = s, .res = res };
    pthread_mutex_lock(&s->lock);
    report_inconsistent_bitmaps(s, res);
    int ret = check_refcounts(&c, fix, e);
    if (ret == 0 && fix)
        ret = qcow2_flush_metadata(s, e);
    if (ret == 0 && fix && !res->check_errors && !res->corruptions)
        ret = mark_clean(s, e);
    pthread_mutex_unlock(&s->lock);
    refs_clear(&c);
    free(c.chunks);
    return ret;
}
