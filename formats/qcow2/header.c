/* qcow2 header: parse and validate the header, its extensions and the
 * snapshot table; rewrite the header cluster (qcow2.txt "Header" and
 * "Header extensions"). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

static const char *const feature_type_names[3] = { "incompatible", "compatible",
                                                   "autoclear" };

/* Names QEMU writes in its feature name table (qcow2.txt "Feature name
 * table"); also used to name features in errors when a file has none. */
static const struct {
    uint8_t type, bit;
    const char *name;
} known_features[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

static int corrupt(struct qcow2_state *s, struct err *e, const char *what)
{
    return err_set(e, EINVAL, "%s: invalid qcow2 header: %s", s->bs->filename, what);
}

static int parse_feature_table(struct qcow2_state *s, const uint8_t *d, uint32_t len)
{
    for (uint32_t i = 0; i + 48 <= len; i += 48) {
        uint8_t type = d[i], bit = d[i + 1];
        if (type > 2 || bit > 63)
            continue;
        char name[47];
        memcpy(name, d + i + 2, 46);
        name[46] = '\0';
        free(s->feature_names[type][bit]);
        s->feature_names[type][bit] = strdup(name);
    }
    return 0;
}

static int keep_extension(struct qcow2_state *s, uint32_t type, const uint8_t *d, uint32_t len,
                          struct err *e)
{
    struct qcow2_ext *n = realloc(s->exts, (s->nb_exts + 1) * sizeof(*n));
    if (!n)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    s->exts = n;
    n[s->nb_exts].type = type;
    n[s->nb_exts].len = len;
    n[s->nb_exts].data = malloc(len ? len : 1);
    if (!n[s->nb_exts].data)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    memcpy(n[s->nb_exts].data, d, len);
    s->nb_exts++;
    return 0;
}

/* Walk the extensions in buf[start, end). */
static int parse_extensions(struct qcow2_state *s, const uint8_t *buf, uint64_t start,
                            uint64_t end, struct err *e)
{
    uint64_t off = start;
    while (off < end) {
        if (end - off < 8)
            return corrupt(s, e, "header extension header past the end of the header area");
        uint32_t type = be32_read(buf + off), len = be32_read(buf + off + 4);
        off += 8;
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - off)
            return err_set(e, EINVAL, "%s: invalid qcow2 header: header extension 0x%08x "
                           "is too large (%u bytes)", s->bs->filename, type, len);
        const uint8_t *d = buf + off;
        int ret = 0;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len >= 16)
                return err_set(e, EINVAL, "%s: invalid qcow2 header: backing format "
                               "extension is too long (%u bytes)", s->bs->filename, len);
            free(s->bs->backing_format);
            s->bs->backing_format = strndup((const char *)d, len);
            if (!s->bs->backing_format)
                return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            parse_feature_table(s, d, len);
            break;
        case QCOW2_EXT_CRYPTO:
            return err_set(e, ENOTSUP, "%s: encrypted qcow2 images are not supported",
                           s->bs->filename);
        case QCOW2_EXT_DATA_FILE:
            return err_set(e, ENOTSUP, "%s: qcow2 images with an external data file are "
                           "not supported", s->bs->filename);
        default:
            ret = keep_extension(s, type, d, len, e);
            break;
        }
        if (ret < 0)
            return ret;
        /* Each extension's data is padded to a multiple of 8 bytes. */
        uint64_t padded = align_up(len, 8);
        if (padded > end - off)
            return 0;
        off += padded;
    }
    return 0;
}

static const char *feature_name(struct qcow2_state *s, int type, int bit)
{
    if (s->feature_names[type][bit] && s->feature_names[type][bit][0])
        return s->feature_names[type][bit];
    for (size_t i = 0; i < sizeof(known_features) / sizeof(known_features[0]); i++)
        if (known_features[i].type == type && known_features[i].bit == bit)
            return known_features[i].name;
    return NULL;
}

static int refuse_unknown_incompatible(struct qcow2_state *s, uint64_t unknown, struct err *e)
{
    char list[512] = "";
    for (int bit = 0; bit < 64; bit++) {
        if (!(unknown & (1ull << bit)))
            continue;
        const char *name = feature_name(s, 0, bit);
        char one[96];
        if (name)
            snprintf(one, sizeof(one), "%s", name);
        else
            snprintf(one, sizeof(one), "unknown %s feature bit %d", feature_type_names[0], bit);
        if (list[0])
            strncat(list, ", ", sizeof(list) - strlen(list) - 1);
        strncat(list, one, sizeof(list) - strlen(list) - 1);
    }
    return err_set(e, ENOTSUP, "%s: unsupported qcow2 feature(s): %s", s->bs->filename, list);
}

/* Validate that a table of `bytes` at `offset` is cluster aligned and
 * inside the file. */
static int check_table(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
                       uint64_t file_size, const char *what, struct err *e)
{
    if (offset & (s->cluster_size - 1))
        return err_set(e, EINVAL, "%s: invalid qcow2 header: %s offset 0x%llx is not "
                       "cluster aligned", s->bs->filename, what, (unsigned long long)offset);
    if (bytes && (offset > file_size || bytes > file_size - offset))
        return err_set(e, EINVAL, "%s: invalid qcow2 header: %s (0x%llx + %llu bytes) is "
                       "past the end of the file (%llu bytes)", s->bs->filename, what,
                       (unsigned long long)offset, (unsigned long long)bytes,
                       (unsigned long long)file_size);
    return 0;
}

static void free_snapshots(struct qcow2_state *s)
{
    if (!s->snapshots)
        return;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        free(s->snapshots[i].id);
        free(s->snapshots[i].name);
        free(s->snapshots[i].extra_unknown);
    }
    free(s->snapshots);
    s->snapshots = NULL;
}

/* Snapshot table (qcow2.txt "Snapshot table"); read only for info and to
 * validate; never rewritten. */
static int read_snapshots(struct qcow2_state *s, uint64_t file_size, struct err *e)
{
    qcow2_overlap_invalidate(s);
    if (s->nb_snapshots == 0)
        return 0;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: too many snapshots (%u)",
                       s->bs->filename, s->nb_snapshots);
    int ret = check_table(s, s->snapshots_offset, 40, file_size, "snapshot table", e);
    if (ret < 0)
        return ret;
    s->snapshots = calloc(s->nb_snapshots, sizeof(*s->snapshots));
    if (!s->snapshots)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    uint64_t off = s->snapshots_offset;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t h[40], extra[24] = { 0 };
        struct qcow2_snapshot *sn = &s->snapshots[i];
        if (off > file_size || file_size - off < sizeof(h))
            return err_set(e, EINVAL, "%s: snapshot table entry %u is past the end of "
                           "the file", s->bs->filename, i);
        if ((ret = transport_pread(s->bs->file, off, h, sizeof(h), e)) < 0)
            return ret;
        sn->l1_offset = be64_read(h);
        sn->l1_size = be32_read(h + 8);
        uint16_t id_len = be16_read(h + 12), name_len = be16_read(h + 14);
        sn->date_sec = be32_read(h + 16);
        sn->date_nsec = be32_read(h + 20);
        sn->vm_clock_nsec = be64_read(h + 24);
        sn->vm_state_size = be32_read(h + 32);
        uint32_t extra_len = be32_read(h + 36);
        if (extra_len > QCOW2_MAX_SNAPSHOT_EXTRA)
            return err_set(e, EINVAL, "%s: snapshot %u: extra data too large (%u bytes)",
                           s->bs->filename, i, extra_len);
        off += sizeof(h);
        if (extra_len && (ret = transport_pread(s->bs->file, off,
                                               extra, extra_len < 24 ? extra_len : 24, e)) < 0)
            return ret;
        if (extra_len >= 8)
            sn->vm_state_size = be64_read(extra);
        sn->disk_size = extra_len >= 16 ? be64_read(extra + 8) : s->size;
        sn->icount = extra_len >= 24 ? be64_read(extra + 16) : UINT64_MAX;
        sn->extra_len = extra_len;
        if (extra_len > 24) {
            if (!(sn->extra_unknown = malloc(extra_len - 24)))
                return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
            if ((ret = transport_pread(s->bs->file, off + 24, sn->extra_unknown,
                                      extra_len - 24, e)) < 0)
                return ret;
        }
        off += extra_len;
        sn->id = calloc(1, (size_t)id_len + 1);
        sn->name = calloc(1, (size_t)name_len + 1);
        if (!sn->id || !sn->name)
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        if (off + id_len + name_len > file_size)
            return err_set(e, EINVAL, "%s: snapshot table entry %u is past the end of "
                           "the file", s->bs->filename, i);
        if ((ret = transport_pread(s->bs->file, off, sn->id, id_len, e)) < 0 ||
            (ret = transport_pread(s->bs->file, off + id_len, sn->name, name_len, e)) < 0)
            return ret;
        /* As QEMU counts it: up to the last name, without its padding. */
        s->snapshots_size = off + id_len + name_len - s->snapshots_offset;
        off = align_up(off + id_len + name_len, 8);
        /* check (BLK_OPEN_CHECK) reports bad snapshot L1 tables itself. */
        if (s->bs->open_flags & BLK_OPEN_CHECK)
            continue;
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8)
            return err_set(e, EINVAL, "%s: snapshot %s: L1 table too large", s->bs->filename,
                           sn->id);
        if ((ret = check_table(s, sn->l1_offset, (uint64_t)sn->l1_size * 8, file_size,
                               "snapshot L1 table", e)) < 0)
            return ret;
    }
    return 0;
}

int qcow2_read_header(struct qcow2_state *s, struct err *e)
{
    struct blockdev *bs = s->bs;
    uint64_t file_size;
    int ret = transport_size(bs->file, &file_size, e);
    if (ret < 0)
        return ret;
    uint8_t h[QCOW2_V3_HEADER_LENGTH + 8] = { 0 };
    if (file_size < QCOW2_V2_HEADER_LENGTH)
        return err_set(e, EINVAL, "%s: file too small for a qcow2 header (%llu bytes)",
                       bs->filename, (unsigned long long)file_size);
    if ((ret = transport_pread(bs->file, 0, h, sizeof(h), e)) < 0)
        return ret;
    if (be32_read(h) != QCOW2_MAGIC)
        return err_set(e, EINVAL, "%s: not a qcow2 image (bad magic)", bs->filename);
    s->version = be32_read(h + 4);
    if (s->version != 2 && s->version != 3)
        return err_set(e, ENOTSUP, "%s: unsupported qcow2 version %u", bs->filename,
                       s->version);
    uint64_t backing_offset = be64_read(h + 8);
    uint32_t backing_len = be32_read(h + 16);
    s->cluster_bits = be32_read(h + 20);
    s->size = be64_read(h + 24);
    uint32_t crypt = be32_read(h + 32);
    s->l1_size = be32_read(h + 36);
    s->l1_offset = be64_read(h + 40);
    s->reftable_offset = be64_read(h + 48);
    s->reftable_clusters = be32_read(h + 56);
    s->nb_snapshots = be32_read(h + 60);
    s->snapshots_offset = be64_read(h + 64);
    if (s->version == 2) {
        s->incompatible = s->compatible = s->autoclear = 0;
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_LENGTH;
    } else {
        s->incompatible = be64_read(h + 72);
        s->compatible = be64_read(h + 80);
        s->autoclear = be64_read(h + 88);
        s->refcount_order = be32_read(h + 96);
        s->header_length = be32_read(h + 100);
    }

    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: cluster_bits %u is not between "
                       "%d and %d", bs->filename, s->cluster_bits, QCOW2_MIN_CLUSTER_BITS,
                       QCOW2_MAX_CLUSTER_BITS);
    s->cluster_size = 1ull << s->cluster_bits;
    if (s->version == 3 && s->header_length < QCOW2_V3_HEADER_LENGTH)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: header_length %u is too small "
                       "(at least %d)", bs->filename, s->header_length,
                       QCOW2_V3_HEADER_LENGTH);
    if (s->header_length > s->cluster_size)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: header_length %u exceeds the "
                       "cluster size", bs->filename, s->header_length);
    if (s->version == 3 && s->header_length % 8)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: header_length %u is not a "
                       "multiple of 8", bs->filename, s->header_length);
    if (s->refcount_order > 6)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: refcount_order %u is larger "
                       "than 6", bs->filename, s->refcount_order);
    if (crypt)
        return err_set(e, ENOTSUP, "%s: encrypted qcow2 images are not supported "
                       "(crypt_method %u)", bs->filename, crypt);

    /* Features, after the feature table is known (so errors name them). */
    uint64_t ext_end = s->cluster_size;
    if (backing_offset) {
        if (backing_len > QCOW2_MAX_BACKING_NAME)
            return err_set(e, EINVAL, "%s: invalid qcow2 header: backing file name too long "
                           "(%u bytes)", bs->filename, backing_len);
        if (backing_offset > s->cluster_size ||
            backing_len > s->cluster_size - backing_offset)
            return err_set(e, EINVAL, "%s: invalid qcow2 header: backing file name at "
                           "0x%llx+%u is outside the header cluster", bs->filename,
                           (unsigned long long)backing_offset, backing_len);
        ext_end = backing_offset;
    }
    uint8_t *cluster0 = calloc(1, s->cluster_size);
    if (!cluster0)
        return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    if ((ret = transport_pread(bs->file, 0, cluster0, s->cluster_size, e)) < 0)
        goto out;
    if (s->version == 3 && s->header_length > QCOW2_V3_HEADER_LENGTH)
        s->compression_type = cluster0[104];
    if (s->version == 3 &&
        (ret = parse_extensions(s, cluster0, s->header_length, ext_end, e)) < 0)
        goto out;
    if (s->version == 2 &&
        (ret = parse_extensions(s, cluster0, QCOW2_V2_HEADER_LENGTH, ext_end, e)) < 0)
        goto out;
    if (backing_offset) {
        free(bs->backing_name);
        bs->backing_name = strndup((const char *)cluster0 + backing_offset, backing_len);
        if (!bs->backing_name) {
            ret = err_set(e, ENOMEM, "%s: out of memory", bs->filename);
            goto out;
        }
    }
    if (s->incompatible & ~QCOW2_INCOMPAT_KNOWN) {
        ret = refuse_unknown_incompatible(s, s->incompatible & ~QCOW2_INCOMPAT_KNOWN, e);
        goto out;
    }
    if (s->incompatible & QCOW2_INCOMPAT_DATA_FILE) {
        ret = err_set(e, ENOTSUP, "%s: qcow2 images with an external data file are not "
                      "supported", bs->filename);
        goto out;
    }
    if (s->incompatible & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->compression_type == QCOW2_COMPRESSION_ZLIB) {
            ret = corrupt(s, e, "compression type bit set but the type is zlib");
            goto out;
        }
    } else if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        ret = corrupt(s, e, "non-zlib compression type without the compression type bit");
        goto out;
    }
    if (s->compression_type > QCOW2_COMPRESSION_ZSTD) {
        ret = err_set(e, ENOTSUP, "%s: unknown qcow2 compression type %u", bs->filename,
                      (unsigned)s->compression_type);
        goto out;
    }
    ret = 0;
out:
    free(cluster0);
    if (ret < 0)
        return ret;

    /* Geometry. */
    s->extended_l2 = s->incompatible & QCOW2_INCOMPAT_EXTL2;
    if (s->extended_l2 && s->cluster_bits < 14)
        return corrupt(s, e, "extended L2 entries need clusters of at least 16 KiB");
    s->l2_entry_bytes = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->l2_entries = 1ull << s->l2_bits;
    s->subclusters = s->extended_l2 ? QCOW2_SUBCLUSTERS : 1;
    s->subcluster_size = s->cluster_size / s->subclusters;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (1ull << s->csize_shift) - 1;
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->refcount_max = s->refcount_order == 6 ? UINT64_MAX
                                             : (1ull << (1u << s->refcount_order)) - 1;

    if (s->size > (uint64_t)INT64_MAX)
        return corrupt(s, e, "virtual size too large");
    if (s->l1_size > QCOW2_MAX_L1_BYTES / 8)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: L1 table too large (%u "
                       "entries)", bs->filename, s->l1_size);
    if (qcow2_l1_entries_for(s, s->size) > s->l1_size)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: L1 table too small (%u entries) "
                       "for the virtual size %llu", bs->filename, s->l1_size,
                       (unsigned long long)s->size);
    if ((ret = check_table(s, s->l1_offset, (uint64_t)s->l1_size * 8, file_size, "L1 table",
                           e)) < 0)
        return ret;
    if (s->reftable_clusters == 0 ||
        (uint64_t)s->reftable_clusters > QCOW2_MAX_REFTABLE_BYTES / s->cluster_size)
        return err_set(e, EINVAL, "%s: invalid qcow2 header: refcount table size %u "
                       "clusters is out of range", bs->filename, s->reftable_clusters);
    if ((ret = check_table(s, s->reftable_offset,
                           (uint64_t)s->reftable_clusters << s->cluster_bits, file_size,
                           "refcount table", e)) < 0)
        return ret;
    if (s->reftable_offset == 0)
        return corrupt(s, e, "refcount table at offset 0");
    if ((ret = read_snapshots(s, file_size, e)) < 0)
        return ret;
    bs->size = s->size;
    return 0;
}

void qcow2_free_header(struct qcow2_state *s)
{
    for (int t = 0; t < 3; t++)
        for (int b = 0; b < 64; b++) {
            free(s->feature_names[t][b]);
            s->feature_names[t][b] = NULL;
        }
    for (size_t i = 0; i < s->nb_exts; i++)
        free(s->exts[i].data);
    free(s->exts);
    s->exts = NULL;
    s->nb_exts = 0;
    free_snapshots(s);
}

/* Append one extension at *pos; -ENOSPC if it does not fit before `end`. */
static int put_extension(uint8_t *buf, size_t *pos, size_t end, uint32_t type,
                         const void *data, uint32_t len)
{
    size_t need = 8 + align_up(len, 8);
    if (*pos > end || end - *pos < need)
        return -ENOSPC;
    be32_write(buf + *pos, type);
    be32_write(buf + *pos + 4, len);
    memset(buf + *pos + 8, 0, align_up(len, 8));
    if (len)
        memcpy(buf + *pos + 8, data, len);
    *pos += need;
    return 0;
}

int qcow2_encode_header(struct qcow2_state *s, uint8_t *buf, struct err *e)
{
    struct blockdev *bs = s->bs;
    size_t cs = s->cluster_size;
    memset(buf, 0, cs);
    size_t hlen = s->version == 2 ? QCOW2_V2_HEADER_LENGTH : QCOW2_HEADER_LENGTH_WRITTEN;
    if (s->version == 3 && s->header_length > hlen)
        hlen = s->header_length;   /* keep a longer header's unknown fields zeroed */
    be32_write(buf, QCOW2_MAGIC);
    be32_write(buf + 4, s->version);
    be32_write(buf + 20, s->cluster_bits);
    be64_write(buf + 24, s->size);
    be32_write(buf + 36, s->l1_size);
    be64_write(buf + 40, s->l1_offset);
    be64_write(buf + 48, s->reftable_offset);
    be32_write(buf + 56, s->reftable_clusters);
    be32_write(buf + 60, s->nb_snapshots);
    be64_write(buf + 64, s->snapshots_offset);
    if (s->version == 3) {
        be64_write(buf + 72, s->incompatible);
        be64_write(buf + 80, s->compatible);
        be64_write(buf + 88, s->autoclear);
        be32_write(buf + 96, s->refcount_order);
        be32_write(buf + 100, (uint32_t)hlen);
        buf[104] = (uint8_t)s->compression_type;
    }
    size_t name_len = bs->backing_name ? strlen(bs->backing_name) : 0;
    if (name_len > QCOW2_MAX_BACKING_NAME)
        return err_set(e, EINVAL, "%s: backing file name too long (%zu bytes, at most %d)",
                       bs->filename, name_len, QCOW2_MAX_BACKING_NAME);
    /* Extensions end 8 bytes (end marker) + the backing name before the
     * end of the cluster. */
    if (cs < hlen + 8 + name_len)
        return err_set(e, ENOSPC, "%s: backing file name does not fit in the header cluster",
                       bs->filename);
    size_t end = cs - 8 - name_len, pos = hlen;
    int ret = 0;
    if (bs->backing_format && bs->backing_format[0] && name_len)
        ret = put_extension(buf, &pos, end, QCOW2_EXT_BACKING_FORMAT, bs->backing_format,
                            (uint32_t)strlen(bs->backing_format));
    for (size_t i = 0; ret == 0 && i < s->nb_exts; i++)
        ret = put_extension(buf, &pos, end, s->exts[i].type, s->exts[i].data, s->exts[i].len);
    if (ret < 0)
        return err_set(e, ENOSPC, "%s: header extensions do not fit in the header cluster",
                       bs->filename);
    if (s->version == 3) {
        /* The feature name table is informative: written when it fits, as
         * QEMU does. */
        uint8_t table[sizeof(known_features) / sizeof(known_features[0]) * 48];
        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < sizeof(known_features) / sizeof(known_features[0]); i++) {
            table[i * 48] = known_features[i].type;
            table[i * 48 + 1] = known_features[i].bit;
            memcpy(table + i * 48 + 2, known_features[i].name,
                   strlen(known_features[i].name));
        }
        put_extension(buf, &pos, end, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    }
    pos += 8;   /* end marker: zeroes */
    if (name_len) {
        be64_write(buf + 8, pos);
        be32_write(buf + 16, (uint32_t)name_len);
        memcpy(buf + pos, bs->backing_name, name_len);
    }
    return 0;
}

int qcow2_write_header_u64(struct qcow2_state *s, uint64_t offset, uint64_t value,
                           struct err *e)
{
    uint8_t buf[8];
    be64_write(buf, value);
    int ret = qcow2_flush_metadata(s, e);
    if (ret == 0)
        ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, offset, buf, 8, e);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
    return ret;
}

int qcow2_update_header(struct qcow2_state *s, struct err *e)
{
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    int ret = qcow2_encode_header(s, buf, e);
    if (ret == 0)
        ret = qcow2_pwrite_checked(s, QCOW2_OL_HEADER, 0, buf, s->cluster_size, e);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
    free(buf);
    return ret;
}
