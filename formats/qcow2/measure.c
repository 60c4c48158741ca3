/* qcow2 measure: how many bytes a new qcow2 image needs, computed as
 * QEMU's qcow2_measure does so that `imgtool measure` prints the same
 * numbers as `qemu-img measure`.
 *
 * The layout math (qcow2.txt): one header cluster; L2 tables for every
 * cluster of the (cluster-aligned) disk; an L1 table rounded up to whole
 * clusters; and refcount blocks and table clusters counting every host
 * cluster including themselves, found as a fixed point.  `required` is the
 * fully allocated size minus the data clusters the source does not use:
 * metadata is always counted in full, as QEMU does. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/blockdev-bitmaps.h"
#include "formats/qcow2/qcow2.h"

#define L2E_SIZE_NORMAL     8
#define L2E_SIZE_EXTENDED   16
#define MIN_CLUSTER_SIZE_EXTENDED_L2 16384
/* Bitmap directory entries: a 24-byte header, the name, padded to 8. */
#define BITMAP_DIR_ENTRY_HEADER 24
#define BITMAP_TABLE_ENTRY_SIZE 8

struct measure_opts {
    bool extended_l2, has_backing, prealloc_data;
    uint64_t cluster_size;
    uint32_t version;
    uint64_t refcount_bits;
    uint64_t size;
};

static int get_number(struct kvopts *opts, const char *key, uint64_t def, uint64_t *out,
                      struct err *e)
{
    const char *v = kvopts_get(opts, key);
    *out = def;
    if (!v)
        return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 0);
    if (errno || end == v || *end || v[0] == '-')
        return err_set(e, EINVAL, "Parameter '%s' expects a number", key);
    *out = n;
    return 0;
}

/* The checks and messages of QEMU's qcow2_opt_get_*_del, in its order. */
static int parse_geometry(struct kvopts *opts, struct measure_opts *m, struct err *e)
{
    int ret;
    if ((ret = kvopts_get_bool(opts, "extended_l2", false, &m->extended_l2, e)) < 0 ||
        (ret = kvopts_get_size(opts, "cluster_size", 65536, &m->cluster_size, e)) < 0)
        return ret;
    if (!is_power_of_2(m->cluster_size) || m->cluster_size < (1u << QCOW2_MIN_CLUSTER_BITS) ||
        m->cluster_size > (1u << QCOW2_MAX_CLUSTER_BITS))
        return err_set(e, EINVAL, "Cluster size must be a power of two between %u and %uk",
                       1u << QCOW2_MIN_CLUSTER_BITS, 1u << (QCOW2_MAX_CLUSTER_BITS - 10));
    if (m->extended_l2 && m->cluster_size < MIN_CLUSTER_SIZE_EXTENDED_L2)
        return err_set(e, EINVAL, "Extended L2 entries are only supported with cluster sizes "
                       "of at least %u bytes", MIN_CLUSTER_SIZE_EXTENDED_L2);
    const char *compat = kvopts_get(opts, "compat");
    if (!compat || !strcmp(compat, "1.1") || !strcmp(compat, "v3"))
        m->version = 3;
    else if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
        m->version = 2;
    else
        return err_set(e, EINVAL, "Invalid compatibility level: '%s'", compat);
    if ((ret = get_number(opts, "refcount_bits", 16, &m->refcount_bits, e)) < 0)
        return ret;
    if (m->refcount_bits > 64 || !is_power_of_2(m->refcount_bits))
        return err_set(e, EINVAL, "Refcount width must be a power of two and may not exceed "
                       "64 bits");
    if (m->version < 3 && m->refcount_bits != 16)
        return err_set(e, EINVAL, "Different refcount widths than 16 bits require "
                       "compatibility level 1.1 or above (use compat=1.1 or greater)");
    return 0;
}

static int parse_measure_opts(struct kvopts *opts, struct measure_opts *m, struct err *e)
{
    int ret = parse_geometry(opts, m, e);
    if (ret < 0)
        return ret;
    const char *prealloc = kvopts_get(opts, "preallocation");
    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "metadata") &&
        strcmp(prealloc, "falloc") && strcmp(prealloc, "full"))
        return err_set(e, EINVAL, "Invalid parameter '%s'", prealloc);
    /* Metadata is always counted; falloc and full also count every data
     * cluster. */
    m->prealloc_data = prealloc && (!strcmp(prealloc, "falloc") || !strcmp(prealloc, "full"));
    m->has_backing = kvopts_get(opts, "backing_file") != NULL;
    if ((ret = kvopts_get_size(opts, "size", 0, &m->size, e)) < 0)
        return ret;
    if (m->size > (uint64_t)INT64_MAX)
        return err_set(e, EINVAL, "Parameter 'size' is too large");
    return kvopts_check_known(opts, qcow2_create_options, e);
}

/* Refcount blocks and refcount table clusters needed to count `clusters`
 * host clusters plus themselves: iterate to the fixed point (QEMU's
 * qcow2_refcount_metadata_size without the generous increase). */
static uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
                                       uint64_t refcount_bits)
{
    uint64_t per_table_cluster = cluster_size / 8;
    uint64_t per_block = cluster_size * 8 / refcount_bits;
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

/* Size of a fully allocated image of `size` (cluster aligned) bytes. */
static uint64_t prealloc_size(const struct measure_opts *m, uint64_t size)
{
    uint64_t cs = m->cluster_size;
    uint64_t l2e = m->extended_l2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL;
    uint64_t meta = cs;                                     /* header */
    uint64_t nl2e = align_up(size / cs, cs / l2e);
    meta += nl2e * l2e;                                     /* L2 tables */
    uint64_t nl1e = align_up(nl2e * l2e / cs, cs / 8);
    meta += nl1e * 8;                                       /* L1 table */
    meta += refcount_metadata_size((meta + size) / cs, cs, m->refcount_bits);
    return meta + size;
}

/* Bytes of the clusters of `in` (through its chain) that hold data: every
 * cluster with a byte that reads as stored data, not zeroes. */
static int data_clusters_bytes(struct blockdev *in, uint64_t cluster_size, uint64_t *out,
                               struct err *e)
{
    uint64_t required = 0;
    for (uint64_t off = 0; off < in->size;) {
        struct blk_extent ext;
        int ret = blk_block_status_host(in, off, in->size - off, &ext, e);
        if (ret < 0)
            return ret;
        uint64_t end = off + ext.length;
        if ((ext.flags & BLK_STATUS_DATA) && !(ext.flags & BLK_STATUS_ZERO)) {
            end = align_up(end, cluster_size);
            required += end - align_down(off, cluster_size);
        }
        off = end;
    }
    *out = required;
    return 0;
}

/* Room for the persistent bitmaps of `in` in a new image: each bitmap's
 * data clusters (as if all dirty) and table, plus the directory (QEMU's
 * qcow2_get_persistent_dirty_bitmap_size). */
static int bitmaps_size(struct blockdev *in, uint64_t cluster_size, uint64_t *out,
                        struct err *e)
{
    int ret = blk_bitmaps_load(in, e);
    if (ret < 0)
        return ret;
    uint64_t total = 0, dir = 0;
    for (size_t i = 0; i < blk_bitmap_count(in); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(in, i);
        if (!dirty_bitmap_persistent(bm))
            continue;
        uint64_t bits = div_round_up(dirty_bitmap_size(bm), dirty_bitmap_granularity(bm));
        uint64_t clusters = div_round_up(div_round_up(bits, 8), cluster_size);
        total += clusters * cluster_size;
        total += align_up(clusters * BITMAP_TABLE_ENTRY_SIZE, cluster_size);
        dir += align_up(BITMAP_DIR_ENTRY_HEADER + strlen(dirty_bitmap_name(bm)), 8);
    }
    *out = total + align_up(dir, cluster_size);
    return 0;
}

int qcow2_measure(struct kvopts *opts, struct blockdev *in, struct blk_measure *out,
                  struct err *e)
{
    struct measure_opts m;
    int ret = parse_measure_opts(opts, &m, e);
    if (ret < 0)
        return ret;
    uint64_t cs = m.cluster_size;
    uint64_t l2e = m.extended_l2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL;
    uint64_t size = align_up(m.size, cs);
    /* QEMU checks the size given in the options, before the source's. */
    if (div_round_up(size / cs, cs / l2e) * 8 > QCOW2_MAX_L1_BYTES)
        return err_set(e, EFBIG, "The image size is too large (try using a larger cluster "
                       "size)");
    uint64_t required = 0;
    if (in) {
        if (in->size > (uint64_t)INT64_MAX - cs)
            return err_set(e, EFBIG, "%s: image size is too large", in->filename);
        size = align_up(in->size, cs);
        /* With a backing file, nothing is known about what it shares with
         * the source: count every cluster. */
        if (m.has_backing)
            required = size;
        else if ((ret = data_clusters_bytes(in, cs, &required, e)) < 0)
            return ret;
    }
    if (m.prealloc_data)
        required = size;
    out->fully_allocated = prealloc_size(&m, size);
    out->required = out->fully_allocated - size + required;
    out->has_bitmaps = m.version >= 3 && in && blk_bitmaps_storable(in);
    out->bitmaps = 0;
    if (out->has_bitmaps && (ret = bitmaps_size(in, cs, &out->bitmaps, e)) < 0)
        return ret;
    return 0;
}
