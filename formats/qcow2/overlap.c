/* qcow2 write-path integrity, as QEMU's qcow2_check_metadata_overlap and
 * qcow2_signal_corruption: before a data write or a metadata write-back,
 * the host range is checked against every metadata structure (header,
 * active L1 and L2 tables, refcount table and blocks, snapshot table and
 * the snapshots' L1 tables, bitmap directory and bitmap tables).  A hit
 * means the image is damaged (an L2 entry or a refcount says a cluster is
 * free or data while it holds metadata): the write is refused, the corrupt
 * bit is set in the header (version 3) and every later write is refused,
 * so that the damage is not spread.  Lock held. */
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

unsigned qcow2_metadata_overlap(const struct qcow2_state *s, unsigned ignore, uint64_t off,
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
    if ((check & QCOW2_OL_INACTIVE_L1) && hits_inactive_l1(s, off, len))
        return QCOW2_OL_INACTIVE_L1;
    if ((check & QCOW2_OL_BITMAP_DIRECTORY) && hits_bitmap_directory(s, off, len))
        return QCOW2_OL_BITMAP_DIRECTORY;
    if ((check & QCOW2_OL_BITMAP_TABLE) && hits_bitmap_table(s, off, len))
        return QCOW2_OL_BITMAP_TABLE;
    if ((check & QCOW2_OL_REFCOUNT_BLOCK) && hits_refcount_block(s, off, len))
        return QCOW2_OL_REFCOUNT_BLOCK;
    if ((check & QCOW2_OL_ACTIVE_L2) && hits_active_l2(s, off, len))
        return QCOW2_OL_ACTIVE_L2;
    return 0;
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
}
