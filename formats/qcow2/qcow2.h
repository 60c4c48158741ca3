/* qcow2: private state, on-disk layout constants and the internal API shared
 * by the files of the driver (header.c, cache.c, refcount.c, cluster.c,
 * qcow2.c) and by later modules (bitmap persistence, check).
 *
 * On-disk layout (docs/interop/qcow2.txt in QEMU), all fields big-endian:
 *
 *   header (cluster 0)   fields below, then header extensions (type, length,
 *                        data padded to 8 bytes) ending with type 0, then
 *                        the backing file name (not NUL-terminated).
 *   L1 table             l1_size 64-bit entries at l1_table_offset:
 *                        bits 9-55 = L2 table offset (cluster aligned),
 *                        bit 63 = COPIED (refcount of the L2 table is 1).
 *   L2 table             one cluster of entries, 8 bytes each (16 with
 *                        extended_l2: the standard entry then a 64-bit
 *                        subcluster bitmap).  Standard entry:
 *                        bit 63 COPIED, bit 62 COMPRESSED, bit 0 ZERO (v3,
 *                        without extended L2), bits 9-55 host offset.
 *                        Compressed: bits 0..x-1 host byte offset and bits
 *                        x..61 the number of additional 512-byte sectors,
 *                        x = 62 - (cluster_bits - 8).
 *                        Subcluster bitmap: bit i (0..31) = subcluster i is
 *                        allocated at host + i * subcluster size; bit 32 + i
 *                        = subcluster i reads as zeroes.
 *   refcount table       refcount_table_clusters clusters of 64-bit offsets
 *                        of refcount blocks (0 = none: all refcounts zero).
 *   refcount block       one cluster of (1 << refcount_order)-bit refcounts,
 *                        big-endian for widths of 8 bits and more; below 8,
 *                        entry i sits at bit (i % (8 / width)) * width of
 *                        byte i / (8 / width), least significant first (as
 *                        QEMU's get_refcount_ro0..2 read it).  Refcount block n covers clusters
 *                        [n * entries, (n + 1) * entries).
 *   snapshot table       nb_snapshots entries at snapshots_offset, each
 *                        padded to 8 bytes (see struct qcow2_snapshot).
 *
 * Locking: `lock` protects all metadata (L1, caches, refcounts, header
 * fields).  Functions named *_locked or documented "lock held" expect the
 * caller to hold it.  Data I/O to clusters that are already allocated is
 * done outside the lock, and so is the data write of a run of new
 * clusters: they are allocated (refcounts set) under the lock, written
 * without it, and linked into the L2 table under it again, so that
 * nothing refers to them before their data is written. */
#ifndef IMGTOOL_QCOW2_H
#define IMGTOOL_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"
#include "formats/qcow2/compress.h"

#define QCOW2_MAGIC                 0x514649fbu /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LENGTH      72
#define QCOW2_V3_HEADER_LENGTH      104         /* minimum for version 3 */
#define QCOW2_HEADER_LENGTH_WRITTEN 112         /* 104 + compression type, padded */
#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_MAX_BACKING_NAME      1023
#define QCOW2_MAX_L1_BYTES          (32u << 20) /* QEMU's QCOW_MAX_L1_SIZE */
#define QCOW2_MAX_REFTABLE_BYTES    (8u << 20)  /* QEMU's QCOW_MAX_REFTABLE_SIZE */
#define QCOW2_MAX_SNAPSHOTS         65536
#define QCOW2_MAX_SNAPSHOT_EXTRA    1024

/* Header extension types (qcow2.txt "Header extensions"). */
#define QCOW2_EXT_END               0x00000000u
#define QCOW2_EXT_BACKING_FORMAT    0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857u
#define QCOW2_EXT_BITMAPS           0x23852875u
#define QCOW2_EXT_CRYPTO            0x0537be77u
#define QCOW2_EXT_DATA_FILE         0x44415441u
/* imgtool's backup chain record (formats/qcow2/record.c); "imgr" */
#define QCOW2_EXT_IMGTOOL_RECORD    0x696d6772u

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ull << 1)
/* Autoclear bits this implementation keeps up to date; the others are
 * cleared on a writable open (qcow2.txt: "autoclear features").  Bitmaps:
 * every writable open marks them in use and tracks writes (bitmap.c). */
#define QCOW2_AUTOCLEAR_KNOWN       QCOW2_AUTOCLEAR_BITMAPS

/* Table entry bits. */
#define QCOW2_OFLAG_COPIED          (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED      (1ull << 62)
#define QCOW2_OFLAG_ZERO            (1ull << 0)
#define QCOW2_OFFSET_MASK           0x00fffffffffffe00ull   /* bits 9-55 */
#define QCOW2_L1_RESERVED           0x7f000000000001ffull
#define QCOW2_L2_RESERVED           0x3f000000000001feull
#define QCOW2_SUBCLUSTERS           32
#define QCOW2_BITMAP_ALL_ALLOC      0x00000000ffffffffull
#define QCOW2_BITMAP_ALL_ZERO       0xffffffff00000000ull

/* One L2 entry decoded: the standard descriptor and, with extended L2,
 * the subcluster bitmap (0 otherwise). */
struct qcow2_l2e {
    uint64_t entry;
    uint64_t bitmap;
};

/* What one (sub)cluster is, as QEMU's QCow2SubclusterType. */
enum qcow2_sc_type {
    QCOW2_SC_NORMAL,            /* data at host offset */
    QCOW2_SC_COMPRESSED,        /* whole cluster compressed */
    QCOW2_SC_ZERO_PLAIN,        /* reads zero, no host cluster */
    QCOW2_SC_ZERO_ALLOC,        /* reads zero, host cluster kept */
    QCOW2_SC_UNALLOC_PLAIN,     /* falls through to the backing file */
    QCOW2_SC_UNALLOC_ALLOC,     /* falls through, host cluster kept (ext. L2) */
    QCOW2_SC_INVALID,
};

/* A host byte range. */
struct qcow2_range {
    uint64_t offset, len;
};

/* A header extension that this driver does not interpret; written back
 * unchanged by qcow2_update_header. */
struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

/* An internal snapshot (qcow2.txt "Snapshot table"): the header fields
 * and the extra data (vm_state_size_large, disk_size, icount, then bytes
 * this driver does not know, written back unchanged). */
struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;         /* the current size when not recorded (v2) */
    uint64_t icount;            /* UINT64_MAX when not recorded */
    uint32_t extra_len;         /* extra data bytes as stored */
    uint8_t *extra_unknown;     /* extra_len - 24 bytes past icount, or NULL */
    char *id;
    char *name;
};

/* A write-back cache of cluster-sized metadata tables (L2 tables or
 * refcount blocks), least-recently-used eviction. */
struct qcow2_cache_entry {
    uint64_t offset;            /* 0 = empty slot */
    uint8_t *data;
    bool dirty;
    uint64_t lru;
};
struct qcow2_cache {
    struct qcow2_cache_entry *entries;
    size_t count;
    uint64_t clock;
    size_t last;                /* the entry qcow2_cache_get returned last */
    bool is_l2;                 /* selects the write-ordering dependency */
};

struct qcow2_state {
    pthread_mutex_t lock;
    struct blockdev *bs;        /* for bs->file, bs->filename, bs->backing */

    /* Header fields. */
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint64_t size;
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;    /* bytes of the snapshot table (its entries) */
    uint64_t incompatible, compatible, autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    enum qcow2_compression_type compression_type;

    /* Derived geometry. */
    bool extended_l2;
    uint32_t l2_entry_bytes;    /* 8 or 16 */
    uint32_t l2_bits;           /* log2(entries per L2 table) */
    uint64_t l2_entries;
    uint64_t subcluster_size;   /* cluster_size / 32 with extended L2 */
    uint32_t subclusters;       /* 32 or 1 */
    uint32_t csize_shift;       /* compressed: bit where the sector count starts */
    uint64_t csize_mask;
    uint64_t coffset_mask;
    uint32_t rb_bits;           /* log2(refcount entries per refcount block) */
    uint64_t refcount_max;

    /* Tables in host byte order. */
    uint64_t *l1;
    uint64_t *reftable;
    uint64_t reftable_entries;
    bool reftable_deferred;     /* growing: entry writes wait for the new table */

    struct qcow2_cache l2_cache;
    struct qcow2_cache rb_cache;
    /* Write ordering (as QEMU's qcow2 cache dependencies): L2 tables may be
     * written only after the refcount blocks (increments) are stable, and
     * refcount blocks (decrements) only after the L2 tables. */
    bool l2_needs_refblocks;
    bool refblocks_need_l2;

    uint64_t free_cluster_hint;     /* no free cluster below this index */
    /* Clusters chosen but not yet counted (refcount still 0) while an
     * allocation builds refcount blocks or a new refcount table: the free
     * cluster search skips them. */
    struct { uint64_t start, count; } reserved[8];
    unsigned nb_reserved;
    /* Clusters whose refcount dropped to 0 since the metadata was last
     * flushed: the reference that was dropped (an L2 entry, an L1 entry,
     * a bitmap table...) may still be on disk, so reusing one of them
     * before that flush could let a crash leave the old reference pointing
     * at new data.  The allocator flushes before handing one out (QEMU
     * orders the same way through its cache dependencies).  When more
     * ranges are freed than the array holds, every allocation flushes
     * first. */
    struct { uint64_t start, count; } pending_free[16];
    unsigned nb_pending_free;
    bool pending_free_overflow;
    uint64_t free_byte_offset;      /* next byte for compressed data, 0 = none */

    /* Header extensions and snapshots. */
    char *feature_names[3][64];     /* from the feature name table */
    struct qcow2_ext *exts;
    size_t nb_exts;
    struct qcow2_snapshot *snapshots;
    bool header_dirty_written;
    /* The image looks preallocated (more clusters counted than the file
     * has blocks): -1 not yet known; see qcow2_block_status. */
    int metadata_prealloc;      /* we set the dirty bit (unused: no lazy mode) */

    /* Write-path integrity (overlap.c). */
    struct qcow2_range *bitmap_tables;  /* the bitmap tables of the directory in use */
    size_t nb_bitmap_tables;
    bool writes_refused;            /* a write hit metadata: the image is corrupt */
    struct qcow2_overlap_index *overlap_index;  /* NULL: built at the next check */
};

/* --- header.c --- */
/* Parse and validate the header, its extensions and the snapshot table;
 * fills s and bs->size, bs->backing_name, bs->backing_format. */
int qcow2_read_header(struct qcow2_state *s, struct err *e);
/* Rewrite the header cluster from s (fields, extensions kept, backing
 * name) and flush it.  Lock held or single-threaded. */
int qcow2_update_header(struct qcow2_state *s, struct err *e);
/* blockdrv.record_get / record_set (record.c). */
const void *qcow2_record_get(struct blockdev *bs, size_t *len);
int qcow2_record_set(struct blockdev *bs, const void *data, size_t len, struct err *e);
/* Write one 64-bit header field at byte `offset` (size, incompatible
 * features, ...) once all metadata is stable, and flush it. */
int qcow2_write_header_u64(struct qcow2_state *s, uint64_t offset, uint64_t value,
                           struct err *e);
/* Encode a fresh header for create into buf (cluster_size bytes). */
int qcow2_encode_header(struct qcow2_state *s, uint8_t *buf, struct err *e);
void qcow2_free_header(struct qcow2_state *s);

/* --- cache.c --- */
int qcow2_cache_init(struct qcow2_cache *c, size_t count, uint64_t table_size, bool is_l2);
void qcow2_cache_destroy(struct qcow2_cache *c);
/* Get the table at `offset`: read from disk, or zero-filled when `fresh`
 * (a newly allocated table).  The pointer is valid until the next call on
 * the same cache. */
int qcow2_cache_get(struct qcow2_state *s, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **table, struct err *e);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table);
/* Write all dirty tables (after the tables they depend on). */
int qcow2_cache_flush(struct qcow2_state *s, struct qcow2_cache *c, struct err *e);
/* Forget a table whose cluster was freed (without writing it). */
void qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset);
/* Ordering dependencies (see struct qcow2_state). */
int qcow2_l2_depends_on_refblocks(struct qcow2_state *s, struct err *e);
int qcow2_refblocks_depend_on_l2(struct qcow2_state *s, struct err *e);
/* Write every dirty table in order and fdatasync the file. */
int qcow2_flush_metadata(struct qcow2_state *s, struct err *e);

/* --- refcount.c --- */
/* Entry i of a refcount block (or of an array in the same layout) with
 * (1 << order)-bit entries. */
uint64_t qcow2_refcount_entry_get(const uint8_t *block, uint64_t i, uint32_t order);
void qcow2_refcount_entry_set(uint8_t *block, uint64_t i, uint32_t order, uint64_t v);
int qcow2_refcount_init(struct qcow2_state *s, struct err *e);
/* Refcount of cluster `index` (0 past the refcount table). */
/* The cached refcount block holding cluster `index`'s refcount (entry
 * index & ((1 << rb_bits) - 1)), or NULL when there is none (refcount 0);
 * valid until the next use of the refcount block cache. */
int qcow2_get_refblock(struct qcow2_state *s, uint64_t index, uint8_t **block, struct err *e);
int qcow2_get_refcount(struct qcow2_state *s, uint64_t index, uint64_t *refcount,
                       struct err *e);
/* Add `delta` to the refcounts of the clusters covering [offset,
 * offset + len); fails without change on overflow/underflow. */
int qcow2_update_refcount(struct qcow2_state *s, uint64_t offset, uint64_t len, int64_t delta,
                          struct err *e);
/* Allocate `n` contiguous clusters (refcount 1 each); returns the host
 * offset.  Lock held. */
int qcow2_alloc_clusters(struct qcow2_state *s, uint64_t n, uint64_t *offset, struct err *e);
/* Drop one reference to the clusters covering [offset, offset + len). */
int qcow2_free_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len, struct err *e);
/* Byte-granular space for compressed data inside one cluster. */
int qcow2_alloc_bytes(struct qcow2_state *s, uint64_t size, uint64_t *offset, struct err *e);
/* Drop the reference(s) an L2 entry holds (normal, zero-alloc, compressed). */
int qcow2_free_l2e_clusters(struct qcow2_state *s, uint64_t entry, struct err *e);

/* --- overlap.c --- */
/* Kinds of metadata (QEMU's QCOW2_OL_*), for the overlap check. */
#define QCOW2_OL_HEADER             (1u << 0)
#define QCOW2_OL_ACTIVE_L1          (1u << 1)
#define QCOW2_OL_ACTIVE_L2          (1u << 2)
#define QCOW2_OL_REFCOUNT_TABLE     (1u << 3)
#define QCOW2_OL_REFCOUNT_BLOCK     (1u << 4)
#define QCOW2_OL_SNAPSHOT_TABLE     (1u << 5)
#define QCOW2_OL_INACTIVE_L1        (1u << 6)
#define QCOW2_OL_BITMAP_DIRECTORY   (1u << 7)
#define QCOW2_OL_BITMAP_TABLE       (1u << 8)
/* The kind of metadata (one QCOW2_OL_* bit, 0 = none) that host bytes
 * [off, off + len) overlap, leaving out the kinds in `ignore` (the
 * structure being written itself).  Lock held. */
unsigned qcow2_metadata_overlap(struct qcow2_state *s, unsigned ignore, uint64_t off,
                                uint64_t len);
/* Every change of an active L1 entry or a refcount table entry goes
 * through these, which keep the check's index current. */
void qcow2_set_l1_entry(struct qcow2_state *s, uint64_t i, uint64_t entry);
void qcow2_set_reftable_entry(struct qcow2_state *s, uint64_t i, uint64_t entry);
/* Forget the index (rebuilt at the next check): called whenever the L1
 * table, the refcount table, the snapshot list or the bitmap tables are
 * replaced as a whole. */
void qcow2_overlap_invalidate(struct qcow2_state *s);
const char *qcow2_overlap_name(unsigned bit);
/* Before writing [off, off + len): 0, or -EIO when the image was marked
 * corrupt, or when the range overlaps metadata, which marks it corrupt
 * (header bit, and every later write refused).  Lock held. */
int qcow2_pre_write_check(struct qcow2_state *s, unsigned ignore, uint64_t off, uint64_t len,
                          struct err *e);
/* transport_pwrite after qcow2_pre_write_check. */
int qcow2_pwrite_checked(struct qcow2_state *s, unsigned ignore, uint64_t off, const void *buf,
                         size_t len, struct err *e);
/* -EIO when an earlier write was refused as corrupting. */
int qcow2_refuse_if_corrupt(const struct qcow2_state *s, struct err *e);
/* The bitmap tables the header's directory uses (bitmap.c keeps it
 * current); copied. */
void qcow2_set_bitmap_tables(struct qcow2_state *s, const struct qcow2_range *tables, size_t n);

/* --- options.c --- */
extern const struct blk_option_desc qcow2_create_options[];
extern const struct blk_option_desc qcow2_amend_options[];

/* --- measure.c --- */
/* blockdrv.measure: as QEMU's qcow2_measure. */
int qcow2_measure(struct kvopts *opts, struct blockdev *in, struct blk_measure *out,
                  struct err *e);

/* --- amend.c --- */
/* blockdrv.amend: compat, refcount_bits, lazy_refcounts, size, backing. */
int qcow2_amend(struct blockdev *bs, struct kvopts *opts, const struct blk_progress *progress,
                struct err *e);

/* --- snapshot.c --- */
/* Write s->snapshots as a new snapshot table, switch the header to it and
 * free the old one. */
int qcow2_write_snapshot_table(struct qcow2_state *s, struct err *e);
/* Add `addend` (+1, -1 or 0) to the refcounts of every L2 table and
 * cluster reachable from `l1` (host order; its COPIED flags are updated
 * in place, not written) and set COPIED in the L2 tables that stay; as
 * QEMU's qcow2_update_snapshot_refcount.  Nothing is flushed: the caller
 * orders the switch that follows with qcow2_flush_metadata. */
int qcow2_update_snapshot_refcount(struct qcow2_state *s, uint64_t *l1, uint32_t l1_size,
                                   int addend, struct err *e);
/* Index of the first snapshot with that ID and/or name (NULL: any), or -1. */
int qcow2_snapshot_find(struct qcow2_state *s, const char *id, const char *name);
int qcow2_snapshot_create_locked(struct qcow2_state *s, const char *name, uint32_t date_sec,
                                 uint32_t date_nsec, struct err *e);
int qcow2_snapshot_delete_locked(struct qcow2_state *s, int index, struct err *e);
int qcow2_snapshot_apply_locked(struct qcow2_state *s, int index, struct err *e);
/* A read-only open reads as snapshot `index` until close (QEMU's
 * qcow2_snapshot_load_tmp): its L1 table replaces the active one; the
 * virtual size stays the image's, as in QEMU. */
int qcow2_snapshot_load_locked(struct qcow2_state *s, int index, struct err *e);

/* --- check.c --- */
/* blockdrv.check: verify refcounts against every reference, L1/L2 entries
 * and OFLAG_COPIED as qemu-img check does; repair with BLK_CHECK_FIX_*. */
int qcow2_check(struct blockdev *bs, struct blk_check_result *res, unsigned fix,
                struct err *e);

/* --- cluster.c --- */
int qcow2_l1_init(struct qcow2_state *s, struct err *e);
/* Each L2 table offset of the n host-order entries is cluster aligned and
 * inside the file of file_size bytes. */
int qcow2_l1_entries_check(struct qcow2_state *s, const uint64_t *l1, uint32_t n,
                           uint64_t file_size, struct err *e);
/* What a whole L2 entry is, as QEMU's qcow2_get_cluster_type (the zero
 * flag means nothing with extended L2 entries: their bitmap says it). */
enum qcow2_cluster_type {
    QCOW2_CLUSTER_UNALLOCATED,
    QCOW2_CLUSTER_ZERO_PLAIN,
    QCOW2_CLUSTER_ZERO_ALLOC,
    QCOW2_CLUSTER_NORMAL,
    QCOW2_CLUSTER_COMPRESSED,
};
enum qcow2_cluster_type qcow2_cluster_type(const struct qcow2_state *s, uint64_t entry);
/* Entry `index` of an L2 table in memory (on-disk byte order). */
struct qcow2_l2e qcow2_l2e_read(const struct qcow2_state *s, const uint8_t *table,
                                uint64_t index);
/* The host bytes a compressed cluster's entry points to: the first byte
 * and the length up to the end of its last 512-byte sector. */
void qcow2_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *offset,
                            uint64_t *bytes);
enum qcow2_sc_type qcow2_sc_type(const struct qcow2_state *s, struct qcow2_l2e l2e,
                                 unsigned sc);
uint64_t qcow2_l2e_host_offset(const struct qcow2_state *s, struct qcow2_l2e l2e);
/* Read the L2 entry for guest offset `off` (zero entry if no L2 table). */
int qcow2_get_l2e(struct qcow2_state *s, uint64_t off, struct qcow2_l2e *l2e, struct err *e);
/* Set the L2 entry for `off`, allocating or copying-on-write the L2 table. */
int qcow2_set_l2e(struct qcow2_state *s, uint64_t off, struct qcow2_l2e l2e, struct err *e);
/* The same for the n clusters from `off` (cluster aligned), which must lie
 * in one L2 table (see qcow2_l2_entries_left): one table lookup for all. */
int qcow2_get_l2e_run(struct qcow2_state *s, uint64_t off, uint64_t n, struct qcow2_l2e *l2e,
                      struct err *e);
int qcow2_set_l2e_run(struct qcow2_state *s, uint64_t off, uint64_t n,
                      const struct qcow2_l2e *l2e, struct err *e);
/* A run starting at `off` (at most `max` bytes) of one subcluster type
 * with contiguous host offsets (host offset of `off` in *host). */
int qcow2_map_run(struct qcow2_state *s, uint64_t off, uint64_t max, enum qcow2_sc_type *type,
                  uint64_t *host, uint64_t *len, struct qcow2_l2e *l2e, struct err *e);
/* Grow the L1 table to at least `entries` (new table, then header). */
int qcow2_grow_l1(struct qcow2_state *s, uint64_t entries, struct err *e);
/* Guest bytes covered by one L1 entry. */
static inline uint64_t qcow2_l1_coverage(const struct qcow2_state *s)
{
    return s->cluster_size << s->l2_bits;
}
static inline uint64_t qcow2_l1_entries_for(const struct qcow2_state *s, uint64_t size)
{
    return div_round_up(size, qcow2_l1_coverage(s));
}

/* Clusters from the one holding guest `off` to the end of its L2 table. */
static inline uint64_t qcow2_l2_entries_left(const struct qcow2_state *s, uint64_t off)
{
    return s->l2_entries - ((off >> s->cluster_bits) & (s->l2_entries - 1));
}

/* Start of the cluster that holds `offset`. */
static inline uint64_t qcow2_cluster_start(const struct qcow2_state *s, uint64_t offset)
{
    return offset & ~(s->cluster_size - 1);
}

#endif
