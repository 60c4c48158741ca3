/* qcow2 internal snapshots (qcow2.txt "Snapshots"): the snapshot table,
 * and create / delete / apply as QEMU's block/qcow2-snapshot.c does them.
 *
 * A snapshot is a copy of the active L1 table plus one more reference to
 * every L2 table and data cluster it reaches: a cluster's refcount is the
 * number of L1 tables that reach it, and QCOW2_OFLAG_COPIED in the active
 * L1/L2 entries says "refcount 1, write in place" (otherwise writes copy
 * the cluster first).  Crash ordering: new tables and refcount increments
 * are written and flushed before the snapshot table or header points to
 * them, and references are dropped only after the switch, so a crash
 * leaves at worst leaked clusters.  Lock held throughout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

#define SNAPSHOT_HEADER_SIZE 40
#define SNAPSHOT_EXTRA_SIZE  24     /* vm_state_size_large, disk_size, icount */

static uint64_t entry_size(const struct qcow2_snapshot *sn)
{
    uint32_t extra = sn->extra_len > SNAPSHOT_EXTRA_SIZE ? sn->extra_len : SNAPSHOT_EXTRA_SIZE;
    return SNAPSHOT_HEADER_SIZE + extra + strlen(sn->id) + strlen(sn->name);
}

/* Bytes of the table as QEMU counts them: entries padded to 8 bytes,
 * except the last. */
static uint64_t table_size(const struct qcow2_state *s)
{
    uint64_t size = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        size = align_up(size, 8) + entry_size(&s->snapshots[i]);
    return size;
}

static void encode_entry(const struct qcow2_snapshot *sn, uint8_t *p)
{
    size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
    uint32_t extra = sn->extra_len > SNAPSHOT_EXTRA_SIZE ? sn->extra_len : SNAPSHOT_EXTRA_SIZE;
    be64_write(p, sn->l1_offset);
    be32_write(p + 8, sn->l1_size);
    be16_write(p + 12, (uint16_t)id_len);
    be16_write(p + 14, (uint16_t)name_len);
    be32_write(p + 16, sn->date_sec);
    be32_write(p + 20, sn->date_nsec);
    be64_write(p + 24, sn->vm_clock_nsec);
    /* A VM state of 4 GiB or more: older readers see a disk-only snapshot
     * rather than a truncated size, as QEMU writes it. */
    be32_write(p + 32, sn->vm_state_size <= UINT32_MAX ? (uint32_t)sn->vm_state_size : 0);
    be32_write(p + 36, extra);
    p += SNAPSHOT_HEADER_SIZE;
    be64_write(p, sn->vm_state_size);
    be64_write(p + 8, sn->disk_size);
    be64_write(p + 16, sn->icount);
    if (extra > SNAPSHOT_EXTRA_SIZE)
        memcpy(p + SNAPSHOT_EXTRA_SIZE, sn->extra_unknown, extra - SNAPSHOT_EXTRA_SIZE);
    p += extra;
    memcpy(p, sn->id, id_len);
    memcpy(p + id_len, sn->name, name_len);
}

int qcow2_write_snapshot_table(struct qcow2_state *s, struct err *e)
{
    uint64_t size = table_size(s), offset = 0;
    uint64_t clusters = div_round_up(size, s->cluster_size);
    uint8_t *buf = NULL;
    int ret = 0;
    qcow2_overlap_invalidate(s);    /* the caller changed the list */
    if (clusters) {
        if (!(buf = calloc(clusters, s->cluster_size)))
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        uint64_t pos = 0;
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            pos = align_up(pos, 8);
            encode_entry(&s->snapshots[i], buf + pos);
            pos += entry_size(&s->snapshots[i]);
        }
        if ((ret = qcow2_alloc_clusters(s, clusters, &offset, e)) < 0 ||
            (ret = qcow2_pwrite_checked(s, 0, offset, buf, size, e)) < 0)
            goto out;
    }
    /* The new table and its refcounts are stable before the header points
     * to it (nb_snapshots and snapshots_offset share one sector). */
    uint8_t hdr[12];
    be32_write(hdr, s->nb_snapshots);
    be64_write(hdr + 4, offset);
    if ((ret = qcow2_flush_metadata(s, e)) < 0 ||
        (ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, 60, hdr, sizeof(hdr), e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    uint64_t old_offset = s->snapshots_offset, old_size = s->snapshots_size;
    s->snapshots_offset = offset;
    s->snapshots_size = size;
    if (old_offset && old_size)
        ret = qcow2_free_clusters(s, old_offset, old_size, e);
out:
    free(buf);
    return ret;
}

/* Add `addend` (-1, 0, +1) to the refcount of one L2 entry's cluster(s);
 * *refcount is then what decides COPIED (compressed: never). */
static int update_l2e_refcount(struct qcow2_state *s, uint64_t entry, int addend,
                               uint64_t *refcount, struct err *e)
{
    *refcount = 0;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t off = entry & s->coffset_mask;
        uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
        *refcount = 2;
        return addend ? qcow2_update_refcount(s, off & ~511ull, sectors * 512, addend, e) : 0;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    if (!host)
        return 0;   /* unallocated or zero without a host cluster */
    if (host & (s->cluster_size - 1))
        return err_set(e, EIO, "%s: cluster offset 0x%llx unaligned; run 'imgtool check -r "
                       "all'", s->bs->filename, (unsigned long long)host);
    int ret = addend ? qcow2_update_refcount(s, host, s->cluster_size, addend, e) : 0;
    if (ret == 0)
        ret = qcow2_get_refcount(s, host >> s->cluster_bits, refcount, e);
    return ret;
}

static uint64_t l2_entry_at(const struct qcow2_state *s, const uint8_t *table, uint64_t j)
{
    return be64_read(table + j * s->l2_entry_bytes);
}

/* One L2 table of an L1 table being referenced once more (+1), once less
 * (-1) or re-flagged (0): its clusters' refcounts, then COPIED in its
 * entries.  A table that loses its last reference is not rewritten. */
static int update_l2_table(struct qcow2_state *s, uint64_t l2_offset, int addend, bool dying,
                           struct err *e)
{
    uint8_t *table;
    int ret = qcow2_cache_get(s, &s->l2_cache, l2_offset, false, &table, e);
    if (ret < 0)
        return ret;
    uint8_t *copy = malloc(s->cluster_size);
    if (!copy)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    memcpy(copy, table, s->cluster_size);
    bool changed = false;
    for (uint64_t j = 0; j < s->l2_entries; j++) {
        uint64_t old = l2_entry_at(s, copy, j), refcount;
        if ((ret = update_l2e_refcount(s, old, addend, &refcount, e)) < 0)
            goto out;
        uint64_t entry = (old & ~QCOW2_OFLAG_COPIED) | (refcount == 1 ? QCOW2_OFLAG_COPIED : 0);
        if (entry != old && !dying) {
            be64_write(copy + j * s->l2_entry_bytes, entry);
            changed = true;
        }
    }
    if (changed) {
        /* COPIED may be set only once the refcount of 1 is on disk, and a
         * new reference is counted before the flag says "shared". */
        if ((ret = qcow2_l2_depends_on_refblocks(s, e)) < 0)
            goto out;
        if ((ret = qcow2_cache_get(s, &s->l2_cache, l2_offset, false, &table, e)) < 0)
            goto out;
        memcpy(table, copy, s->cluster_size);
        qcow2_cache_mark_dirty(&s->l2_cache, table);
    }
out:
    free(copy);
    return ret;
}

int qcow2_update_snapshot_refcount(struct qcow2_state *s, uint64_t *l1, uint32_t l1_size,
                                   int addend, struct err *e)
{
    int ret;
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK, refcount;
        if (!l2)
            continue;
        if (l2 & (s->cluster_size - 1))
            return err_set(e, EIO, "%s: L2 table offset 0x%llx unaligned; run 'imgtool check "
                           "-r all'", s->bs->filename, (unsigned long long)l2);
        if ((ret = qcow2_get_refcount(s, l2 >> s->cluster_bits, &refcount, e)) < 0)
            return ret;
        bool dying = addend < 0 && refcount == 1;
        if ((ret = update_l2_table(s, l2, addend, dying, e)) < 0)
            return ret;
        if (addend && (ret = qcow2_update_refcount(s, l2, s->cluster_size, addend, e)) < 0)
            return ret;
        if (dying) {
            qcow2_cache_forget(&s->l2_cache, l2);
            continue;
        }
        if ((ret = qcow2_get_refcount(s, l2 >> s->cluster_bits, &refcount, e)) < 0)
            return ret;
        l1[i] = l2 | (refcount == 1 ? QCOW2_OFLAG_COPIED : 0);
    }
    return 0;
}

/* --- The operations --- */

int qcow2_snapshot_find(struct qcow2_state *s, const char *id, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if ((!id || !strcmp(s->snapshots[i].id, id)) &&
            (!name || !strcmp(s->snapshots[i].name, name)))
            return (int)i;
    return -1;
}

/* Write an L1 table: `ignore` is QCOW2_OL_ACTIVE_L1 when it is the active
 * table rewritten in place, 0 for a copy in newly allocated clusters. */
static int write_l1(struct qcow2_state *s, unsigned ignore, uint64_t offset, const uint64_t *l1,
                    uint32_t n, uint64_t bytes, struct err *e)
{
    uint8_t *buf = calloc(1, bytes ? bytes : 1);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    for (uint32_t i = 0; i < n; i++)
        be64_write(buf + 8 * i, l1[i]);
    int ret = bytes ? qcow2_pwrite_checked(s, ignore, offset, buf, bytes, e) : 0;
    free(buf);
    return ret;
}

static int read_l1(struct qcow2_state *s, const struct qcow2_snapshot *sn, uint64_t entries,
                   uint64_t **out, struct err *e)
{
    uint64_t *l1 = calloc(entries ? entries : 1, 8);
    if (!l1)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = sn->l1_size ? transport_pread(s->bs->file, sn->l1_offset, l1,
                                           (size_t)sn->l1_size * 8, e) : 0;
    for (uint32_t i = 0; ret == 0 && i < sn->l1_size; i++)
        l1[i] = be64_read(&l1[i]);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    *out = l1;
    return 0;
}

/* Snapshot IDs are numbers: one more than the largest. */
static void new_snapshot_id(const struct qcow2_state *s, char *buf, size_t len)
{
    unsigned long max = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long id = strtoul(s->snapshots[i].id, NULL, 10);
        if (id > max)
            max = id;
    }
    snprintf(buf, len, "%lu", max + 1);
}

static int append_snapshot(struct qcow2_state *s, struct qcow2_snapshot *sn, struct err *e)
{
    struct qcow2_snapshot *list = realloc(s->snapshots, (s->nb_snapshots + 1) * sizeof(*list));
    if (!list)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    s->snapshots = list;
    list[s->nb_snapshots++] = *sn;
    int ret = qcow2_write_snapshot_table(s, e);
    if (ret < 0) {
        s->nb_snapshots--;     /* the entry's strings stay with the caller */
        qcow2_overlap_invalidate(s);
    }
    return ret;
}

int qcow2_snapshot_create_locked(struct qcow2_state *s, const char *name, uint32_t date_sec,
                                 uint32_t date_nsec, struct err *e)
{
    char id[24];
    new_snapshot_id(s, id, sizeof(id));
    if (strlen(name) > UINT16_MAX)
        return err_set(e, EINVAL, "%s: snapshot name too long", s->bs->filename);
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
        return err_set(e, EFBIG, "%s: too many snapshots", s->bs->filename);
    struct qcow2_snapshot sn = {
        .l1_size = s->l1_size, .date_sec = date_sec, .date_nsec = date_nsec,
        .disk_size = s->size, .icount = 0, .extra_len = SNAPSHOT_EXTRA_SIZE,
        .id = strdup(id), .name = strdup(name),
    };
    int ret;
    if (!sn.id || !sn.name) {
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        goto fail;
    }
    /* The copy of the active L1 table, as it is (QEMU copies its COPIED
     * flags too), then one more reference to all it reaches. */
    uint64_t bytes = (uint64_t)s->l1_size * 8;
    if (bytes && ((ret = qcow2_alloc_clusters(s, div_round_up(bytes, s->cluster_size),
                                              &sn.l1_offset, e)) < 0 ||
                  (ret = write_l1(s, 0, sn.l1_offset, s->l1, s->l1_size, bytes, e)) < 0))
        goto fail;
    /* Clearing COPIED in the active tables is safe at any time; the table
     * write flushes everything before the header points to the snapshot. */
    if ((ret = qcow2_update_snapshot_refcount(s, s->l1, s->l1_size, 1, e)) < 0 ||
        (ret = write_l1(s, QCOW2_OL_ACTIVE_L1, s->l1_offset, s->l1, s->l1_size, bytes, e)) < 0 ||
        (ret = append_snapshot(s, &sn, e)) < 0)
        goto fail;
    return 0;
fail:
    free(sn.id);
    free(sn.name);
    return ret;
}

static void free_snapshot_fields(struct qcow2_snapshot *sn)
{
    free(sn->id);
    free(sn->name);
    free(sn->extra_unknown);
}

int qcow2_snapshot_delete_locked(struct qcow2_state *s, int index, struct err *e)
{
    struct qcow2_snapshot sn = s->snapshots[index];
    uint64_t *l1;
    int ret = read_l1(s, &sn, sn.l1_size, &l1, e);
    if (ret < 0)
        return ret;
    memmove(&s->snapshots[index], &s->snapshots[index + 1],
            (s->nb_snapshots - (uint32_t)index - 1) * sizeof(sn));
    s->nb_snapshots--;
    if ((ret = qcow2_write_snapshot_table(s, e)) < 0) {
        memmove(&s->snapshots[index + 1], &s->snapshots[index],
                (s->nb_snapshots - (uint32_t)index) * sizeof(sn));
        s->snapshots[index] = sn;
        s->nb_snapshots++;
        qcow2_overlap_invalidate(s);
        free(l1);
        return ret;
    }
    free_snapshot_fields(&sn);
    /* The snapshot is gone from the table: from here a failure leaks
     * clusters at worst. */
    ret = qcow2_update_snapshot_refcount(s, l1, sn.l1_size, -1, e);
    /* Nothing refers to the old L1 table since the table switch. */
    if (ret == 0 && sn.l1_size)
        ret = qcow2_update_refcount(s, sn.l1_offset, (uint64_t)sn.l1_size * 8, -1, e);
    /* Clusters now referenced once become COPIED in the active tables,
     * written once their refcounts are stable. */
    if (ret == 0)
        ret = qcow2_update_snapshot_refcount(s, s->l1, s->l1_size, 0, e);
    if (ret == 0)
        ret = qcow2_flush_metadata(s, e);
    if (ret == 0)
        ret = write_l1(s, QCOW2_OL_ACTIVE_L1, s->l1_offset, s->l1, s->l1_size,
                       (uint64_t)s->l1_size * 8, e);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
    free(l1);
    return ret;
}

/* Make the snapshot's L1 table the active one: the new active table is
 * written to new clusters and the header switched to it (one sector), so
 * that a crash leaves either the old or the new state. */
int qcow2_snapshot_apply_locked(struct qcow2_state *s, int index, struct err *e)
{
    const struct qcow2_snapshot *sn = &s->snapshots[index];
    uint32_t n = sn->l1_size > s->l1_size ? sn->l1_size : s->l1_size;
    uint64_t *l1;
    int ret = read_l1(s, sn, n, &l1, e);
    if (ret < 0)
        return ret;
    uint64_t bytes = align_up((uint64_t)n * 8, s->cluster_size), offset = 0;
    if ((ret = qcow2_update_snapshot_refcount(s, l1, n, 1, e)) < 0 ||
        (bytes && (ret = qcow2_alloc_clusters(s, bytes / s->cluster_size, &offset, e)) < 0) ||
        (ret = write_l1(s, 0, offset, l1, n, bytes, e)) < 0 ||
        (ret = qcow2_flush_metadata(s, e)) < 0)
        goto out;
    /* size (24), crypt_method (32, always 0 here), l1_size (36),
     * l1_table_offset (40): one sector. */
    uint8_t hdr[24] = { 0 };
    be64_write(hdr, sn->disk_size);
    be32_write(hdr + 12, n);
    be64_write(hdr + 16, offset);
    if ((ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, 24, hdr, sizeof(hdr), e)) < 0 ||
        (ret = transport_flush(s->bs->file, e)) < 0)
        goto out;
    uint64_t *old = s->l1;
    uint32_t old_size = s->l1_size;
    uint64_t old_offset = s->l1_offset;
    s->l1 = l1;
    s->l1_size = n;
    qcow2_overlap_invalidate(s);
    s->l1_offset = offset;
    s->size = sn->disk_size;
    s->bs->size = sn->disk_size;
    l1 = old;
    /* Drop the old active table's references, then the flags of the new
     * one (clusters that were shared with it only may be COPIED now). */
    ret = qcow2_update_snapshot_refcount(s, old, old_size, -1, e);
    if (ret == 0 && old_size)
        ret = qcow2_update_refcount(s, old_offset, align_up((uint64_t)old_size * 8,
                                                            s->cluster_size), -1, e);
    if (ret == 0)
        ret = qcow2_update_snapshot_refcount(s, s->l1, s->l1_size, 0, e);
    if (ret == 0)
        ret = qcow2_flush_metadata(s, e);
    if (ret == 0)
        ret = write_l1(s, QCOW2_OL_ACTIVE_L1, s->l1_offset, s->l1, s->l1_size, bytes, e);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
out:
    free(l1);
    return ret;
}

int qcow2_snapshot_load_locked(struct qcow2_state *s, int index, struct err *e)
{
    const struct qcow2_snapshot *sn = &s->snapshots[index];
    /* Entries past the snapshot's table read as unallocated: the disk may
     * have grown since. */
    uint32_t n = sn->l1_size > s->l1_size ? sn->l1_size : s->l1_size;
    uint64_t file_size, *l1;
    int ret = transport_size(s->bs->file, &file_size, e);
    if (ret < 0 || (ret = read_l1(s, sn, n, &l1, e)) < 0)
        return ret;
    if ((ret = qcow2_l1_entries_check(s, l1, sn->l1_size, file_size, e)) < 0) {
        err_prefix(e, "snapshot '%s': ", sn->name);
        free(l1);
        return ret;
    }
    free(s->l1);
    s->l1 = l1;
    s->l1_size = n;
    qcow2_overlap_invalidate(s);
    return 0;
}
