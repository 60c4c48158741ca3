/* qcow2 persistent dirty bitmaps (see qcow2-bitmap.h for the layout).
 *
 * Loading validates every directory entry and bitmap table entry before
 * use, with QEMU's limits.  Storing never changes a structure the header
 * points to: the bitmap data, the bitmap tables and the directory go into
 * newly allocated clusters, the refcounts and data are flushed, and then one
 * header write switches the bitmaps extension to the new directory; only
 * after that are the old clusters freed.  A crash therefore leaves the old
 * set or the new one, plus leaked clusters at worst.  Marking the bitmaps
 * in use when an image is opened for writing is the same switch with the
 * old tables kept. */
#include "formats/qcow2/qcow2-bitmap.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap/dirty.h"
#include "formats/blockdev-bitmaps.h"
#include "formats/qcow2/qcow2.h"

#define EXT_SIZE            24      /* the bitmaps extension's data */
#define ENTRY_HEADER_SIZE   24      /* a directory entry before extra data and name */
#define FLAG_IN_USE         (1u << 0)
#define FLAG_AUTO           (1u << 1)
#define FLAGS_KNOWN         (FLAG_IN_USE | FLAG_AUTO)
#define TYPE_DIRTY_TRACKING 1
#define TABLE_RESERVED      0xff000000000001feull   /* bits 1-8 and 56-63 */
#define TABLE_OFFSET        0x00fffffffffffe00ull   /* bits 9-55 */
#define TABLE_ALL_ONES      1ull                    /* bit 0, offset 0 */

/* One directory entry. */
struct bitmap_entry {
    uint64_t table_offset;
    uint32_t table_size;        /* entries */
    uint32_t flags;
    uint8_t granularity_bits;
    char *name;
    bool keep;                  /* old entry: the new directory still uses its clusters */
    bool written;               /* new entry: its clusters were just written */
};

/* The bitmaps extension and its directory, as found in the file. */
struct bitmap_dir {
    bool valid;                 /* v3, extension present, autoclear bit set */
    uint32_t count;
    uint64_t offset, size;
    struct bitmap_entry *entries;
};

static void dir_free(struct bitmap_dir *dir)
{
    for (uint32_t i = 0; dir->entries && i < dir->count; i++)
        free(dir->entries[i].name);
    free(dir->entries);
    memset(dir, 0, sizeof(*dir));
}

static int find_ext(const struct qcow2_state *s)
{
    for (size_t i = 0; i < s->nb_exts; i++)
        if (s->exts[i].type == QCOW2_EXT_BITMAPS)
            return (int)i;
    return -1;
}

static int bad_ext(struct qcow2_state *s, struct err *e, const char *what)
{
    return err_set(e, EINVAL, "%s: invalid bitmaps extension: %s", s->bs->filename, what);
}

/* Bytes of bitmap data for a disk, and clusters of it (= table entries). */
static uint64_t data_bytes(uint64_t disk_size, unsigned granularity_bits)
{
    return div_round_up(div_round_up(disk_size, 1ull << granularity_bits), 8);
}

static uint64_t table_entries(const struct qcow2_state *s, uint64_t disk_size,
                              unsigned granularity_bits)
{
    return div_round_up(data_bytes(disk_size, granularity_bits), s->cluster_size);
}

/* QEMU's limits on the space a bitmap takes (BME_MAX_TABLE_SIZE and
 * BME_MAX_PHYS_SIZE). */
static bool table_size_ok(const struct qcow2_state *s, uint64_t entries)
{
    return entries <= QCOW2_BITMAP_MAX_TABLE_SIZE &&
           entries <= QCOW2_BITMAP_MAX_DATA_SIZE / s->cluster_size;
}

static uint64_t entry_size(size_t name_len)
{
    return align_up(ENTRY_HEADER_SIZE + name_len, 8);
}

/* Read the extension (qcow2.txt "Bitmaps extension"), validated as QEMU
 * does when it opens an image.  dir->valid stays false when there is none,
 * or when QEMU would ignore it (version 2, or autoclear bit 0 clear: a
 * program that does not know bitmaps wrote the image since). */
static int read_ext(struct qcow2_state *s, uint64_t file_size, struct bitmap_dir *dir,
                    struct err *e)
{
    memset(dir, 0, sizeof(*dir));
    int i = find_ext(s);
    if (i < 0 || s->version < 3 || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    const struct qcow2_ext *x = &s->exts[i];
    if (x->len != EXT_SIZE)
        return bad_ext(s, e, "length is not 24 bytes");
    if (be32_read(x->data + 4) != 0)
        return bad_ext(s, e, "reserved field is not zero");
    dir->count = be32_read(x->data);
    dir->size = be64_read(x->data + 8);
    dir->offset = be64_read(x->data + 16);
    if (dir->count == 0)
        return bad_ext(s, e, "zero bitmaps");
    if (dir->count > QCOW2_BITMAP_MAX_COUNT)
        return err_set(e, EINVAL, "%s: invalid bitmaps extension: %" PRIu32 " bitmaps, more "
                       "than the %d QEMU supports", s->bs->filename, dir->count,
                       QCOW2_BITMAP_MAX_COUNT);
    if (dir->size == 0 || dir->size > QCOW2_BITMAP_MAX_DIRECTORY_SIZE)
        return err_set(e, EINVAL, "%s: invalid bitmaps extension: directory size %" PRIu64
                       " is not between 1 and %u", s->bs->filename, dir->size,
                       QCOW2_BITMAP_MAX_DIRECTORY_SIZE);
    if (dir->offset == 0 || dir->offset & (s->cluster_size - 1))
        return err_set(e, EINVAL, "%s: invalid bitmaps extension: directory offset 0x%" PRIx64
                       " is not cluster aligned", s->bs->filename, dir->offset);
    if (dir->offset > file_size || dir->size > file_size - dir->offset)
        return err_set(e, EINVAL, "%s: invalid bitmaps extension: directory 0x%" PRIx64
                       "+%" PRIu64 " is past the end of the file", s->bs->filename,
                       dir->offset, dir->size);
    dir->valid = true;
    return 0;
}

/* Validate one directory entry (qcow2.txt "Bitmap directory", with QEMU's
 * check_dir_entry rules). */
static int check_entry(struct qcow2_state *s, const struct bitmap_entry *en, uint8_t type,
                       uint64_t file_size, struct err *e)
{
    const char *f = s->bs->filename, *n = en->name;
    if (type != TYPE_DIRTY_TRACKING)
        return err_set(e, EINVAL, "%s: bitmap '%s': unknown type %u", f, n, type);
    if (en->flags & ~FLAGS_KNOWN)
        return err_set(e, ENOTSUP, "%s: bitmap '%s': unknown flags 0x%" PRIx32, f, n,
                       en->flags & ~FLAGS_KNOWN);
    if (en->granularity_bits < QCOW2_BITMAP_MIN_GRANULARITY_BITS ||
        en->granularity_bits > QCOW2_BITMAP_MAX_GRANULARITY_BITS)
        return err_set(e, EINVAL, "%s: bitmap '%s': granularity_bits %u is not between %d "
                       "and %d", f, n, en->granularity_bits, QCOW2_BITMAP_MIN_GRANULARITY_BITS,
                       QCOW2_BITMAP_MAX_GRANULARITY_BITS);
    if (en->table_size == 0 || !table_size_ok(s, en->table_size))
        return err_set(e, EINVAL, "%s: bitmap '%s': bitmap table size %" PRIu32 " is out of "
                       "range", f, n, en->table_size);
    if (en->table_offset == 0 || en->table_offset & (s->cluster_size - 1))
        return err_set(e, EINVAL, "%s: bitmap '%s': bitmap table offset 0x%" PRIx64 " is not "
                       "cluster aligned", f, n, en->table_offset);
    uint64_t bytes = (uint64_t)en->table_size * 8;
    if (en->table_offset > file_size || bytes > file_size - en->table_offset)
        return err_set(e, EINVAL, "%s: bitmap '%s': bitmap table 0x%" PRIx64 "+%" PRIu64
                       " is past the end of the file", f, n, en->table_offset, bytes);
    /* A bitmap saved correctly covers exactly the disk; one in use may
     * predate a resize. */
    if (!(en->flags & FLAG_IN_USE) &&
        en->table_size != table_entries(s, s->size, en->granularity_bits))
        return err_set(e, EINVAL, "%s: bitmap '%s': bitmap table has %" PRIu32 " entries, "
                       "the disk size needs %" PRIu64, f, n, en->table_size,
                       table_entries(s, s->size, en->granularity_bits));
    /* The in-memory bitmap is sized by the disk: keep it within QEMU's
     * limit too (in-use bitmaps included, they are kept in memory). */
    if (!table_size_ok(s, table_entries(s, s->size, en->granularity_bits)))
        return err_set(e, EINVAL, "%s: bitmap '%s': granularity %llu is too fine for the "
                       "disk size", f, n, 1ull << en->granularity_bits);
    return 0;
}

/* Parse the directory.  `as_qemu` accepts what QEMU accepts but imgtool
 * cannot load (names with a NUL byte, two bitmaps of the same name), for
 * check to count the clusters another reader still uses. */
static int parse_dir(struct qcow2_state *s, struct bitmap_dir *dir, const uint8_t *buf,
                     uint64_t file_size, bool as_qemu, struct err *e)
{
    dir->entries = calloc(dir->count, sizeof(*dir->entries));
    if (!dir->entries)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < dir->count; i++) {
        if (dir->size - pos < ENTRY_HEADER_SIZE)
            return err_set(e, EINVAL, "%s: bitmap directory is shorter than its %" PRIu32
                           " entries", s->bs->filename, dir->count);
        const uint8_t *p = buf + pos;
        struct bitmap_entry *en = &dir->entries[i];
        en->table_offset = be64_read(p);
        en->table_size = be32_read(p + 8);
        en->flags = be32_read(p + 12);
        uint8_t type = p[16];
        en->granularity_bits = p[17];
        uint16_t name_size = be16_read(p + 18);
        uint32_t extra = be32_read(p + 20);
        uint64_t total = align_up(ENTRY_HEADER_SIZE + (uint64_t)extra + name_size, 8);
        if (total > dir->size - pos)
            return err_set(e, EINVAL, "%s: bitmap directory entry %" PRIu32 " runs past the "
                           "end of the directory", s->bs->filename, i);
        /* QEMU defines no extra data and refuses any (the spec lets the
         * extra_data_compatible flag, which QEMU also refuses, decide). */
        if (extra)
            return err_set(e, ENOTSUP, "%s: bitmap directory entry %" PRIu32 ": extra data "
                           "is not supported", s->bs->filename, i);
        if (name_size == 0 || name_size > QCOW2_BITMAP_MAX_NAME_SIZE)
            return err_set(e, EINVAL, "%s: bitmap directory entry %" PRIu32 ": name size %u "
                           "is not between 1 and %d", s->bs->filename, i, name_size,
                           QCOW2_BITMAP_MAX_NAME_SIZE);
        const char *name = (const char *)p + ENTRY_HEADER_SIZE + extra;
        if (!as_qemu && !dirty_bitmap_name_valid(name, name_size))
            return err_set(e, EINVAL, "%s: bitmap directory entry %" PRIu32 ": the name "
                           "contains a NUL byte", s->bs->filename, i);
        if (!(en->name = strndup(name, name_size)))
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        for (uint32_t j = 0; j < i && !as_qemu; j++)
            if (strcmp(dir->entries[j].name, en->name) == 0)
                return err_set(e, EINVAL, "%s: two bitmaps are named '%s'", s->bs->filename,
                               en->name);
        int ret = check_entry(s, en, type, file_size, e);
        if (ret < 0)
            return ret;
        pos += total;
    }
    if (pos != dir->size)
        return err_set(e, EINVAL, "%s: bitmap directory has %" PRIu64 " bytes after its %"
                       PRIu32 " entries", s->bs->filename, dir->size - pos, dir->count);
    return 0;
}

/* Tell the overlap check (overlap.c) which bitmap tables the header's
 * directory uses. */
static void note_tables(struct qcow2_state *s, const struct bitmap_entry *entries,
                        uint32_t count)
{
    struct qcow2_range *r = count ? calloc(count, sizeof(*r)) : NULL;
    if (count && !r)
        return;     /* the check keeps the tables it knew */
    for (uint32_t i = 0; i < count; i++) {
        r[i].offset = entries[i].table_offset;
        r[i].len = (uint64_t)entries[i].table_size * 8;
    }
    qcow2_set_bitmap_tables(s, r, count);
    free(r);
}

/* The image's bitmaps extension and directory, validated (see parse_dir
 * for `as_qemu`); dir->valid is false when there are no bitmaps to use.
 * Lock held. */
static int read_dir_mode(struct qcow2_state *s, struct bitmap_dir *dir, bool as_qemu,
                         struct err *e)
{
    uint64_t file_size;
    int ret = transport_size(s->bs->file, &file_size, e);
    if (ret < 0 || (ret = read_ext(s, file_size, dir, e)) < 0 || !dir->valid)
        return ret;
    uint8_t *buf = malloc(dir->size);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory for the bitmap directory",
                       s->bs->filename);
    ret = transport_pread(s->bs->file, dir->offset, buf, dir->size, e);
    if (ret == 0)
        ret = parse_dir(s, dir, buf, file_size, as_qemu, e);
    free(buf);
    if (ret < 0)
        dir_free(dir);
    else
        note_tables(s, dir->entries, dir->count);
    return ret;
}

static int read_dir(struct qcow2_state *s, struct bitmap_dir *dir, struct err *e)
{
    return read_dir_mode(s, dir, false, e);
}

/* Check one bitmap table entry (qcow2.txt "Bitmap table"). */
static int check_table_entry(struct qcow2_state *s, const struct bitmap_entry *en, uint32_t i,
                             uint64_t v, uint64_t file_size, struct err *e)
{
    uint64_t off = v & TABLE_OFFSET;
    if ((v & TABLE_RESERVED) || (off && (v & TABLE_ALL_ONES)) || (off & (s->cluster_size - 1)))
        return err_set(e, EINVAL, "%s: bitmap '%s': bitmap table entry %" PRIu32 " (0x%016"
                       PRIx64 ") is invalid", s->bs->filename, en->name, i, v);
    if (off && (off > file_size || s->cluster_size > file_size - off))
        return err_set(e, EINVAL, "%s: bitmap '%s': data cluster 0x%" PRIx64 " is past the "
                       "end of the file", s->bs->filename, en->name, off);
    return 0;
}

/* Read a bitmap table (host byte order), entries not yet checked. */
static int read_table(struct qcow2_state *s, const struct bitmap_entry *en, uint64_t **out,
                      struct err *e)
{
    uint64_t *t = malloc((size_t)en->table_size * 8);
    if (!t)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = transport_pread(s->bs->file, en->table_offset, t, (size_t)en->table_size * 8, e);
    if (ret < 0) {
        free(t);
        return ret;
    }
    for (uint32_t i = 0; i < en->table_size; i++)
        t[i] = be64_read(&t[i]);
    *out = t;
    return 0;
}

/* Disk bytes described by one cluster of bitmap data. */
static uint64_t bytes_per_data_cluster(const struct qcow2_state *s, uint64_t granularity)
{
    return granularity * 8 * s->cluster_size;
}

static int load_data(struct qcow2_state *s, const struct bitmap_entry *en, struct hbitmap *hb,
                     uint64_t file_size, struct err *e)
{
    uint64_t *table;
    int ret = read_table(s, en, &table, e);
    if (ret < 0)
        return ret;
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    uint64_t limit = bytes_per_data_cluster(s, hbitmap_granularity(hb));
    for (uint32_t i = 0; ret == 0 && i < en->table_size; i++) {
        uint64_t off = i * limit, len = min_u64(limit, s->size - off);
        uint64_t v = table[i], data = v & TABLE_OFFSET;
        if ((ret = check_table_entry(s, en, i, v, file_size, e)) < 0)
            break;
        if (data) {
            ret = transport_pread(s->bs->file, data, buf, s->cluster_size, e);
            if (ret == 0)
                hbitmap_deserialize_part(hb, buf, off, len);
        } else if (v & TABLE_ALL_ONES) {
            hbitmap_deserialize_ones(hb, off, len);
        }
    }
    free(buf);
    free(table);
    return ret;
}

/* Create the in-memory bitmap for a directory entry: enabled iff auto;
 * in use means not saved correctly, so inconsistent and its data unread. */
static int load_bitmap(struct qcow2_state *s, const struct bitmap_entry *en, uint64_t file_size,
                       struct dirty_bitmap **out, struct err *e)
{
    struct dirty_bitmap *bm;
    int ret = dirty_bitmap_new(en->name, s->size, 1u << en->granularity_bits, &bm, e);
    if (ret < 0) {
        err_prefix(e, "%s: ", s->bs->filename);
        return ret;
    }
    dirty_bitmap_set_persistent(bm, true);
    dirty_bitmap_set_enabled(bm, en->flags & FLAG_AUTO, e);
    if (en->flags & FLAG_IN_USE) {
        dirty_bitmap_set_inconsistent(bm, true);
    } else {
        struct hbitmap *hb;
        ret = dirty_bitmap_bits_for_load(bm, &hb, e);
        if (ret == 0)
            ret = load_data(s, en, hb, file_size, e);
        if (ret < 0) {
            dirty_bitmap_free(bm);
            return ret;
        }
    }
    *out = bm;
    return 0;
}

static int encode_dir(struct qcow2_state *s, const struct bitmap_entry *entries, uint32_t count,
                      uint8_t **out, uint64_t *size, struct err *e)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++)
        total += entry_size(strlen(entries[i].name));
    uint8_t *buf = calloc(1, align_up(total, s->cluster_size));
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < count; i++) {
        const struct bitmap_entry *en = &entries[i];
        size_t name_len = strlen(en->name);
        uint8_t *p = buf + pos;
        be64_write(p, en->table_offset);
        be32_write(p + 8, en->table_size);
        be32_write(p + 12, en->flags);
        p[16] = TYPE_DIRTY_TRACKING;
        p[17] = en->granularity_bits;
        be16_write(p + 18, (uint16_t)name_len);
        be32_write(p + 20, 0);
        memcpy(p + ENTRY_HEADER_SIZE, en->name, name_len);
        pos += entry_size(name_len);
    }
    *out = buf;
    *size = total;
    return 0;
}

/* Replace (data != NULL) or remove the bitmaps extension in s->exts and set
 * autoclear bit 0 to match.  Returns the previous state in *saved for
 * restore_ext() (the saved data is freed by forget_saved_ext()). */
struct saved_ext {
    bool had;
    size_t index;
    struct qcow2_ext ext;
    uint64_t autoclear;
};

static int set_ext(struct qcow2_state *s, uint8_t *data, struct saved_ext *saved,
                   struct err *e)
{
    int i = find_ext(s);
    *saved = (struct saved_ext){ .had = i >= 0, .index = i >= 0 ? (size_t)i : 0,
                                 .autoclear = s->autoclear };
    if (i >= 0)
        saved->ext = s->exts[i];
    if (data && i >= 0) {
        s->exts[i].data = data;
        s->exts[i].len = EXT_SIZE;
    } else if (data) {
        struct qcow2_ext *n = realloc(s->exts, (s->nb_exts + 1) * sizeof(*n));
        if (!n)
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        s->exts = n;
        s->exts[s->nb_exts++] = (struct qcow2_ext){ QCOW2_EXT_BITMAPS, EXT_SIZE, data };
    } else if (i >= 0) {
        memmove(&s->exts[i], &s->exts[i + 1], (s->nb_exts - (size_t)i - 1) * sizeof(*s->exts));
        s->nb_exts--;
    }
    if (data)
        s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
    else
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    return 0;
}

static void restore_ext(struct qcow2_state *s, const struct saved_ext *saved)
{
    int i = find_ext(s);
    if (i >= 0) {
        free(s->exts[i].data);
        memmove(&s->exts[i], &s->exts[i + 1], (s->nb_exts - (size_t)i - 1) * sizeof(*s->exts));
        s->nb_exts--;
    }
    if (saved->had) {
        /* Room is there: the array never shrinks. */
        memmove(&s->exts[saved->index + 1], &s->exts[saved->index],
                (s->nb_exts - saved->index) * sizeof(*s->exts));
        s->exts[saved->index] = saved->ext;
        s->nb_exts++;
    }
    s->autoclear = saved->autoclear;
}

/* Make the header point at a new directory holding `entries` (none: remove
 * the extension): directory into new clusters, flush (refcounts and data
 * on disk), then one header update.  *header_tried tells the caller that a
 * failure happened while the header was being written, when nothing that
 * either header may point to can be freed.  Lock held. */
static int switch_dir(struct qcow2_state *s, const struct bitmap_entry *entries, uint32_t count,
                      bool *header_tried, struct err *e)
{
    uint8_t *buf = NULL, *ext = NULL;
    uint64_t size = 0, offset = 0;
    int ret = 0;
    *header_tried = false;
    if (count) {
        if ((ret = encode_dir(s, entries, count, &buf, &size, e)) < 0)
            return ret;
        uint64_t clusters = div_round_up(size, s->cluster_size);
        if ((ret = qcow2_alloc_clusters(s, clusters, &offset, e)) < 0)
            goto out;
        ret = qcow2_pwrite_checked(s, 0, offset, buf, clusters * s->cluster_size, e);
        if (ret == 0)
            ret = qcow2_flush_metadata(s, e);
        if (ret < 0)
            goto free_dir;
        if (!(ext = malloc(EXT_SIZE))) {
            ret = err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
            goto free_dir;
        }
        be32_write(ext, count);
        be32_write(ext + 4, 0);
        be64_write(ext + 8, size);
        be64_write(ext + 16, offset);
    }
    struct saved_ext saved;
    if ((ret = set_ext(s, ext, &saved, e)) < 0) {
        free(ext);
        goto free_dir;
    }
    *header_tried = true;
    if ((ret = qcow2_update_header(s, e)) < 0) {
        restore_ext(s, &saved);
        goto out;
    }
    note_tables(s, entries, count);
    if (saved.had)
        free(saved.ext.data);
    goto out;
free_dir:
    if (offset) {
        struct err ignored = { 0 };
        qcow2_free_clusters(s, offset, size, &ignored);
    }
out:
    free(buf);
    return ret;
}

/* Drop the clusters of a bitmap that no directory uses any more: its data
 * clusters and its table.  Best effort: whatever fails leaks.  Lock held. */
static void free_bitmap_clusters(struct qcow2_state *s, const struct bitmap_entry *en,
                                 uint64_t file_size)
{
    struct err ignored = { 0 };
    uint64_t *table;
    if (read_table(s, en, &table, &ignored) < 0)
        return;
    for (uint32_t i = 0; i < en->table_size; i++)
        if (check_table_entry(s, en, i, table[i], file_size, &ignored) == 0 &&
            (table[i] & TABLE_OFFSET))
            qcow2_free_clusters(s, table[i] & TABLE_OFFSET, s->cluster_size, &ignored);
    free(table);
    qcow2_free_clusters(s, en->table_offset, (uint64_t)en->table_size * 8, &ignored);
}

int qcow2_bitmaps_load(struct blockdev *bs, bool mark_in_use, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    struct bitmap_dir dir;
    uint64_t file_size;
    pthread_mutex_lock(&s->lock);
    int ret = transport_size(bs->file, &file_size, e);
    if (ret == 0)
        ret = read_dir(s, &dir, e);
    if (ret < 0)
        goto unlock;
    bool any_consistent = false;
    for (uint32_t i = 0; i < dir.count; i++) {
        struct dirty_bitmap *bm;
        if ((ret = load_bitmap(s, &dir.entries[i], file_size, &bm, e)) < 0 ||
            (ret = blk_bitmap_attach(bs, bm, e)) < 0)
            goto out;
        if (!(dir.entries[i].flags & FLAG_IN_USE)) {
            dir.entries[i].flags |= FLAG_IN_USE;
            any_consistent = true;
        }
    }
    if (mark_in_use && any_consistent) {
        /* The same tables under a directory that says "in use". */
        bool header_tried;
        uint64_t old_offset = dir.offset, old_size = dir.size;
        ret = switch_dir(s, dir.entries, dir.count, &header_tried, e);
        if (ret < 0) {
            err_prefix(e, "%s: cannot mark the bitmaps in use: ", bs->filename);
            goto out;
        }
        /* Written now, so that a crash in the session leaks nothing. */
        struct err ignored = { 0 };
        if (qcow2_free_clusters(s, old_offset, old_size, &ignored) == 0)
            qcow2_flush_metadata(s, &ignored);
    }
out:
    dir_free(&dir);
unlock:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* The bitmap table entry for the part [off, off + len) of the disk: 0 when
 * it is all clean, all-ones when it is all dirty and `whole` (every bit of
 * the data cluster is a granule of the disk: the tail bits of the last
 * cluster must read as zero), else a new data cluster holding the bits. */
static int write_data_cluster(struct qcow2_state *s, const struct hbitmap *hb, uint64_t off,
                              uint64_t len, bool whole, uint8_t *buf, uint64_t *entry,
                              struct err *e)
{
    *entry = 0;
    if (hbitmap_next_dirty(hb, off, len) < 0)
        return 0;
    if (whole && hbitmap_next_clean(hb, off, len) < 0) {
        *entry = TABLE_ALL_ONES;
        return 0;
    }
    uint64_t data, used = hbitmap_serialization_size(hb, off, len);
    int ret = qcow2_alloc_clusters(s, 1, &data, e);
    if (ret < 0)
        return ret;
    hbitmap_serialize_part(hb, buf, off, len);
    memset(buf + used, 0, s->cluster_size - used);
    if ((ret = qcow2_pwrite_checked(s, 0, data, buf, s->cluster_size, e)) < 0) {
        struct err ignored = { 0 };
        qcow2_free_clusters(s, data, s->cluster_size, &ignored);
        return ret;
    }
    *entry = data;
    return 0;
}

/* Write one bitmap's data and table into new clusters.  On failure
 * nothing stays allocated. */
static int write_bitmap(struct qcow2_state *s, const struct dirty_bitmap *bm,
                        struct bitmap_entry *en, uint8_t *buf, struct err *e)
{
    const struct hbitmap *hb = dirty_bitmap_bits(bm);
    uint64_t size = hbitmap_size(hb), cs = s->cluster_size;
    uint64_t limit = bytes_per_data_cluster(s, hbitmap_granularity(hb));
    uint32_t n = (uint32_t)table_entries(s, size, en->granularity_bits);
    uint64_t table_bytes = align_up((uint64_t)n * 8, cs), table_offset = 0;
    uint8_t *table = calloc(1, table_bytes);
    if (!table)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = 0;
    for (uint32_t i = 0; ret == 0 && i < n; i++) {
        uint64_t off = i * limit, v;
        ret = write_data_cluster(s, hb, off, min_u64(limit, size - off), off + limit <= size,
                                 buf, &v, e);
        if (ret == 0)
            be64_write(table + (size_t)i * 8, v);
    }
    if (ret == 0 && (ret = qcow2_alloc_clusters(s, table_bytes / cs, &table_offset, e)) == 0 &&
        (ret = qcow2_pwrite_checked(s, 0, table_offset, table, table_bytes, e)) == 0) {
        en->table_offset = table_offset;
        en->table_size = n;
    } else {
        struct err ignored = { 0 };
        for (uint32_t i = 0; i < n; i++) {
            uint64_t data = be64_read(table + (size_t)i * 8) & TABLE_OFFSET;
            if (data)
                qcow2_free_clusters(s, data, cs, &ignored);
        }
        if (table_offset)
            qcow2_free_clusters(s, table_offset, table_bytes, &ignored);
        err_prefix(e, "bitmap '%s': ", dirty_bitmap_name(bm));
    }
    free(table);
    return ret;
}

/* Can this set of persistent bitmaps be stored (QEMU's limits)? */
static int check_set(struct blockdev *bs, uint32_t count, uint64_t dir_size, struct err *e)
{
    if (count > QCOW2_BITMAP_MAX_COUNT)
        return err_set(e, EINVAL, "%s: too many bitmaps (%" PRIu32 ", at most %d)",
                       bs->filename, count, QCOW2_BITMAP_MAX_COUNT);
    if (dir_size > QCOW2_BITMAP_MAX_DIRECTORY_SIZE)
        return err_set(e, EINVAL, "%s: the bitmap directory would be too large (%" PRIu64
                       " bytes, at most %u)", bs->filename, dir_size,
                       QCOW2_BITMAP_MAX_DIRECTORY_SIZE);
    return 0;
}

static int check_bitmap(struct blockdev *bs, const char *name, uint32_t granularity,
                        struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    if (s->version < 3)
        return err_set(e, ENOTSUP, "%s: qcow2 version 2 (compat=0.10) images cannot store "
                       "bitmaps", bs->filename);
    if (strlen(name) > QCOW2_BITMAP_MAX_NAME_SIZE)
        return err_set(e, EINVAL, "%s: bitmap name is longer than %d bytes", bs->filename,
                       QCOW2_BITMAP_MAX_NAME_SIZE);
    unsigned bits = (unsigned)__builtin_ctz(granularity);
    if (!is_power_of_2(granularity) || bits < QCOW2_BITMAP_MIN_GRANULARITY_BITS ||
        bits > QCOW2_BITMAP_MAX_GRANULARITY_BITS)
        return err_set(e, EINVAL, "%s: bitmap '%s': granularity %" PRIu32 " is not a power "
                       "of two between 512 and 2G", bs->filename, name, granularity);
    if (bs->size == 0)
        return err_set(e, EINVAL, "%s: bitmap '%s': an empty disk cannot have bitmaps",
                       bs->filename, name);
    if (!table_size_ok(s, table_entries(s, bs->size, bits)))
        return err_set(e, EINVAL, "%s: bitmap '%s' would take more than %u MiB in the "
                       "image; use a larger granularity", bs->filename, name,
                       QCOW2_BITMAP_MAX_DATA_SIZE >> 20);
    return 0;
}

int qcow2_bitmap_check_new(struct blockdev *bs, const char *name, uint32_t granularity,
                           struct err *e)
{
    int ret = check_bitmap(bs, name, granularity, e);
    if (ret < 0)
        return ret;
    uint32_t count = 1;
    uint64_t dir_size = entry_size(strlen(name));
    for (size_t i = 0; i < blk_bitmap_count(bs); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(bs, i);
        if (dirty_bitmap_persistent(bm)) {
            count++;
            dir_size += entry_size(strlen(dirty_bitmap_name(bm)));
        }
    }
    return check_set(bs, count, dir_size, e);
}

static struct bitmap_entry *find_entry(struct bitmap_dir *dir, const char *name)
{
    for (uint32_t i = 0; i < dir->count; i++)
        if (strcmp(dir->entries[i].name, name) == 0)
            return &dir->entries[i];
    return NULL;
}

/* The new directory: written bitmaps, and inconsistent ones kept as they
 * are on disk.  On failure the clusters written so far are freed. */
static int write_set(struct blockdev *bs, struct bitmap_dir *old, bool in_use,
                     struct bitmap_entry *entries, uint32_t *count, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    int ret = 0;
    *count = 0;
    for (size_t i = 0; i < blk_bitmap_count(bs); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(bs, i);
        if (!dirty_bitmap_persistent(bm))
            continue;
        struct bitmap_entry *en = &entries[*count];
        if (dirty_bitmap_inconsistent(bm)) {
            /* Nothing trustworthy to write: keep its entry, still in use
             * (a bitmap that never reached the disk is simply dropped). */
            struct bitmap_entry *on_disk = find_entry(old, dirty_bitmap_name(bm));
            if (!on_disk)
                continue;
            *en = *on_disk;
            en->flags |= FLAG_IN_USE;
            on_disk->keep = true;
            (*count)++;
            continue;
        }
        en->name = (char *)dirty_bitmap_name(bm);
        en->granularity_bits = (uint8_t)__builtin_ctz(dirty_bitmap_granularity(bm));
        bool mark_in_use = in_use && !dirty_bitmap_write_ahead(bm);
        en->flags = (dirty_bitmap_enabled(bm) ? FLAG_AUTO : 0) | (mark_in_use ? FLAG_IN_USE : 0);
        if ((ret = write_bitmap(s, bm, en, buf, e)) < 0)
            break;
        en->written = true;
        (*count)++;
    }
    free(buf);
    if (ret < 0) {
        uint64_t file_size = 0;
        struct err ignored = { 0 };
        transport_size(bs->file, &file_size, &ignored);
        for (uint32_t i = 0; i < *count; i++)
            if (entries[i].written)
                free_bitmap_clusters(s, &entries[i], file_size);
    }
    return ret;
}

static int store_locked(struct blockdev *bs, bool in_use, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    uint32_t count = 0;
    uint64_t dir_size = 0;
    int ret = qcow2_refuse_if_corrupt(s, e);
    if (ret < 0)
        return ret;
    for (size_t i = 0; i < blk_bitmap_count(bs); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(bs, i);
        if (!dirty_bitmap_persistent(bm))
            continue;
        if ((ret = check_bitmap(bs, dirty_bitmap_name(bm), dirty_bitmap_granularity(bm),
                                e)) < 0)
            return ret;
        count++;
        dir_size += entry_size(strlen(dirty_bitmap_name(bm)));
    }
    ret = check_set(bs, count, dir_size, e);
    if (ret < 0)
        return ret;
    if (count == 0 && find_ext(s) < 0 && !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;   /* no bitmaps before or after */
    /* Pending metadata first, so that no cluster freed earlier is reused
     * while an old reference to it may still be on disk. */
    if ((ret = qcow2_flush_metadata(s, e)) < 0)
        return ret;
    struct bitmap_dir old;
    if ((ret = read_dir(s, &old, e)) < 0)
        return ret;
    uint64_t file_size;
    struct bitmap_entry *entries = calloc(count ? count : 1, sizeof(*entries));
    if (!entries) {
        ret = err_set(e, ENOMEM, "%s: out of memory", bs->filename);
        goto out;
    }
    if ((ret = transport_size(bs->file, &file_size, e)) < 0 ||
        (ret = write_set(bs, &old, in_use, entries, &count, e)) < 0)
        goto out;
    bool header_tried;
    if ((ret = switch_dir(s, entries, count, &header_tried, e)) < 0) {
        if (!header_tried)
            for (uint32_t i = 0; i < count; i++)
                if (entries[i].written)
                    free_bitmap_clusters(s, &entries[i], file_size);
        goto out;
    }
    /* The header points at the new set: the old one can go. */
    if (old.valid) {
        struct err ignored = { 0 };
        qcow2_free_clusters(s, old.offset, old.size, &ignored);
        for (uint32_t i = 0; i < old.count; i++)
            if (!old.entries[i].keep)
                free_bitmap_clusters(s, &old.entries[i], file_size);
    }
out:
    free(entries);
    dir_free(&old);
    return ret;
}

int qcow2_bitmaps_store(struct blockdev *bs, bool in_use, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int ret = store_locked(bs, in_use, e);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_bitmaps_info(struct qcow2_state *s, struct prop *data, struct err *e)
{
    struct bitmap_dir dir;
    int ret = read_dir(s, &dir, e);
    if (ret < 0 || !dir.valid)
        return ret;
    struct prop *list = prop_add_array(data, "bitmaps");
    for (uint32_t i = 0; i < dir.count; i++) {
        const struct bitmap_entry *en = &dir.entries[i];
        struct prop *o = prop_add_object(list, NULL);
        struct prop *flags = prop_add_array(o, "flags");
        if (en->flags & FLAG_IN_USE)
            prop_add_string(flags, NULL, "in-use");
        if (en->flags & FLAG_AUTO)
            prop_add_string(flags, NULL, "auto");
        prop_add_string(o, "name", en->name);
        prop_add_uint(o, "granularity", 1ull << en->granularity_bits);
    }
    dir_free(&dir);
    return prop_failed(data) ? err_set(e, ENOMEM, "out of memory") : 0;
}

int qcow2_bitmaps_for_each_cluster(struct qcow2_state *s,
                                   int (*ref)(void *opaque, uint64_t offset, uint64_t len,
                                              struct err *e),
                                   void *opaque, struct blk_check_result *res, bool *incomplete,
                                   struct err *e)
{
    struct bitmap_dir dir;
    *incomplete = false;
    uint64_t file_size;
    int ret = transport_size(s->bs->file, &file_size, e);
    if (ret == 0)
        ret = read_ext(s, file_size, &dir, e);
    if (ret == -EINVAL) {
        res->corruptions++;
        blk_check_report(res, "ERROR %s", e->msg);
        err_clear(e);
        *incomplete = true;
        return 0;
    }
    if (ret < 0 || !dir.valid)
        return ret;
    if ((ret = ref(opaque, dir.offset, dir.size, e)) < 0)
        return ret;
    if ((ret = read_dir(s, &dir, e)) == -EINVAL || ret == -ENOTSUP) {
        /* What imgtool cannot load but QEMU reads still counts: another
         * reader uses those clusters. */
        struct err strict = *e;
        err_clear(e);
        if ((ret = read_dir_mode(s, &dir, true, e)) == 0)
            blk_check_report(res, "Warning: %s: imgtool cannot load these bitmaps; "
                             "their clusters are counted as in use", strict.msg);
    }
    if (ret < 0) {
        if (ret != -EINVAL && ret != -ENOTSUP)
            return ret;
        res->corruptions++;
        blk_check_report(res, "ERROR %s", e->msg);
        err_clear(e);
        *incomplete = true;
        return 0;
    }
    for (uint32_t i = 0; ret == 0 && i < dir.count; i++) {
        const struct bitmap_entry *en = &dir.entries[i];
        uint64_t *table;
        if ((ret = ref(opaque, en->table_offset, (uint64_t)en->table_size * 8, e)) < 0 ||
            (ret = read_table(s, en, &table, e)) < 0)
            break;
        for (uint32_t j = 0; ret == 0 && j < en->table_size; j++) {
            struct err bad = { 0 };
            if (check_table_entry(s, en, j, table[j], file_size, &bad) < 0) {
                res->corruptions++;
                blk_check_report(res, "ERROR %s", bad.msg);
            } else if (table[j] & TABLE_OFFSET) {
                ret = ref(opaque, table[j] & TABLE_OFFSET, s->cluster_size, e);
            }
        }
        free(table);
    }
    dir_free(&dir);
    return ret;
}
