/* Backup chain records: encoding, the predecessor check, and the updates
 * made by a backup (see chain.h for the design and the on-disk form). */
#include "mirror/chain.h"

#include "formats/blockdev-bitmaps.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define RECORD_HEADER 24
#define ENTRY_HEADER 56
#define MAX_BITMAP_NAME 1023
#define MAX_FILE_NAME 4095

static bool id_is_zero(const struct chain_id *id)
{
    static const struct chain_id zero;
    return !memcmp(id, &zero, sizeof(zero));
}

static bool id_equal(const struct chain_id *a, const struct chain_id *b)
{
    return !memcmp(a, b, sizeof(*a));
}

static int new_id(struct chain_id *id, struct err *e)
{
    ssize_t got = getrandom(id->b, sizeof(id->b), 0);
    if (got != (ssize_t)sizeof(id->b))
        return err_errno(e, got < 0 ? errno : EIO, "cannot get random bytes for a backup id");
    return 0;
}

static void entry_free(struct chain_entry *en)
{
    free(en->bitmap);
    free(en->file);
    en->bitmap = en->file = NULL;
}

void chain_record_free(struct chain_record *r)
{
    for (size_t i = 0; i < r->n; i++)
        entry_free(&r->entries[i]);
    free(r->entries);
    memset(r, 0, sizeof(*r));
}

struct chain_entry *chain_record_find(const struct chain_record *r, enum chain_entry_kind kind,
                                      const char *bitmap)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->entries[i].kind == kind && (!bitmap || !strcmp(r->entries[i].bitmap, bitmap)))
            return &r->entries[i];
    return NULL;
}

/* A name field of the record: no NUL inside, within its limit. */
static char *decode_name(const uint8_t *d, size_t len, size_t max)
{
    if (len > max || memchr(d, '\0', len))
        return NULL;
    return strndup((const char *)d, len);
}

static int decode_entry(const uint8_t *d, size_t avail, struct chain_entry *en, size_t *used)
{
    if (avail < ENTRY_HEADER)
        return -1;
    size_t blen = be16_read(d + 2), flen = be16_read(d + 4);
    if (d[0] != CHAIN_ENTRY_SYNC && d[0] != CHAIN_ENTRY_BACKUP)
        return -1;
    if (d[0] == CHAIN_ENTRY_BACKUP && (d[1] < CHAIN_FULL || d[1] > CHAIN_DIFFERENTIAL))
        return -1;
    if ((d[0] == CHAIN_ENTRY_SYNC && (d[1] || !blen)) || be16_read(d + 6) ||
        avail - ENTRY_HEADER < blen + flen)
        return -1;
    en->kind = d[0];
    en->backup_kind = d[1];
    en->generation = be64_read(d + 8);
    en->size = be64_read(d + 16);
    memcpy(en->id.b, d + 24, 16);
    memcpy(en->prev.b, d + 40, 16);
    en->bitmap = decode_name(d + ENTRY_HEADER, blen, MAX_BITMAP_NAME);
    en->file = decode_name(d + ENTRY_HEADER + blen, flen, MAX_FILE_NAME);
    *used = ENTRY_HEADER + blen + flen;
    return en->bitmap && en->file ? 0 : -1;
}

static int decode_record(const uint8_t *d, size_t len, struct chain_record *r)
{
    if (len < RECORD_HEADER || be32_read(d) != CHAIN_RECORD_VERSION)
        return -1;
    memcpy(r->disk.b, d + 4, 16);
    uint32_t n = be32_read(d + 20);
    if (n > CHAIN_MAX_ENTRIES)
        return -1;
    r->entries = calloc(n ? n : 1, sizeof(*r->entries));
    if (!r->entries)
        return -ENOMEM;
    size_t off = RECORD_HEADER, used;
    for (r->n = 0; r->n < n; r->n++) {
        if (decode_entry(d + off, len - off, &r->entries[r->n], &used) < 0) {
            r->n++;     /* free what it holds */
            return -1;
        }
        off += used;
    }
    return off == len ? 0 : -1;
}

int chain_record_load(struct blockdev *bs, struct chain_record *r, struct err *e)
{
    memset(r, 0, sizeof(*r));
    size_t len;
    const uint8_t *d = blk_record_get(bs, &len);
    if (!d)
        return 0;
    int ret = decode_record(d, len, r);
    if (ret == 0)
        return 0;
    chain_record_free(r);
    if (ret == -ENOMEM)
        return err_set(e, ENOMEM, "out of memory");
    return err_set(e, EINVAL, "%s: the backup chain record (%zu bytes) is damaged or of a "
                   "newer imgtool", bs->filename, len);
}

static size_t encoded_size(const struct chain_record *r)
{
    size_t len = RECORD_HEADER;
    for (size_t i = 0; i < r->n; i++)
        len += ENTRY_HEADER + strlen(r->entries[i].bitmap) + strlen(r->entries[i].file);
    return len;
}

static void encode_entry(const struct chain_entry *en, uint8_t *d)
{
    size_t blen = strlen(en->bitmap), flen = strlen(en->file);
    memset(d, 0, ENTRY_HEADER);
    d[0] = (uint8_t)en->kind;
    d[1] = en->kind == CHAIN_ENTRY_BACKUP ? (uint8_t)en->backup_kind : 0;
    be16_write(d + 2, (uint16_t)blen);
    be16_write(d + 4, (uint16_t)flen);
    be64_write(d + 8, en->generation);
    be64_write(d + 16, en->size);
    memcpy(d + 24, en->id.b, 16);
    memcpy(d + 40, en->prev.b, 16);
    memcpy(d + ENTRY_HEADER, en->bitmap, blen);
    memcpy(d + ENTRY_HEADER + blen, en->file, flen);
}

int chain_record_store(struct blockdev *bs, const struct chain_record *r, struct err *e)
{
    if (!r->n)
        return blk_record_set(bs, NULL, 0, e);
    if (r->n > CHAIN_MAX_ENTRIES)
        return err_set(e, ENOSPC, "%s: more than %d bitmaps in the backup chain record",
                       bs->filename, CHAIN_MAX_ENTRIES);
    for (size_t i = 0; i < r->n; i++)
        if (strlen(r->entries[i].bitmap) > MAX_BITMAP_NAME ||
            strlen(r->entries[i].file) > MAX_FILE_NAME)
            return err_set(e, ENAMETOOLONG, "%s: a name in the backup chain record is too "
                           "long", bs->filename);
    size_t len = encoded_size(r);
    uint8_t *d = malloc(len);
    if (!d)
        return err_set(e, ENOMEM, "out of memory");
    be32_write(d, CHAIN_RECORD_VERSION);
    memcpy(d + 4, r->disk.b, 16);
    be32_write(d + 20, (uint32_t)r->n);
    size_t off = RECORD_HEADER;
    for (size_t i = 0; i < r->n; i++) {
        encode_entry(&r->entries[i], d + off);
        off += ENTRY_HEADER + strlen(r->entries[i].bitmap) + strlen(r->entries[i].file);
    }
    int ret = blk_record_set(bs, d, len, e);
    free(d);
    return ret;
}

/* Absolute name of a file that may not exist yet (its directory does). */
static char *absolute_name(const char *path)
{
    if (blk_name_is_network(path))
        return strdup(path);    /* a URI names the disk wherever we run */
    char *copy = strdup(path), *base_copy = strdup(path);
    char *dir = copy ? realpath(dirname(copy), NULL) : NULL, *out = NULL;
    if (dir && base_copy) {
        const char *base = basename(base_copy);
        size_t len = strlen(dir) + strlen(base) + 2;
        if ((out = malloc(len)))
            snprintf(out, len, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", base);
    }
    free(dir);
    free(copy);
    free(base_copy);
    return out;
}

/* The predecessor checks that need only its own record: what a source
 * without a record (NBD) allows. */
static int check_predecessor_alone(const struct chain_params *p, struct blockdev *src,
                                   struct blockdev *prev, const struct chain_entry *pb,
                                   struct err *e)
{
    if (!pb)
        return err_set(e, EINVAL, "%s: has no backup record (not a backup made by imgtool "
                       "export, or a copy that dropped it); use --force if it is the last "
                       "backup of %s", prev->filename, src->filename);
    if (p->kind == CHAIN_DIFFERENTIAL && pb->backup_kind != CHAIN_FULL)
        return err_set(e, EINVAL, "%s: not a full backup, which a differential backup needs "
                       "(or --force)", prev->filename);
    if (p->kind == CHAIN_INCREMENTAL && pb->bitmap[0] && strcmp(pb->bitmap, p->bitmap))
        return err_set(e, EINVAL, "%s: a backup following bitmap '%s', not '%s' (or --force)",
                       prev->filename, pb->bitmap, p->bitmap);
    return 0;
}

/* The full check: `prev` must be the backup the bitmap counts from. */
static int check_predecessor(struct chain_state *st, struct blockdev *src,
                             struct blockdev *prev, const struct chain_entry *pb,
                             const struct chain_record *pr, struct err *e)
{
    const struct chain_params *p = st->p;
    const struct chain_entry *sync = chain_record_find(&st->disk, CHAIN_ENTRY_SYNC, p->bitmap);
    if (!sync && !src->drv->record_set)
        return check_predecessor_alone(p, src, prev, pb, e);
    if (!sync)
        return err_set(e, EINVAL, "%s: bitmap '%s' has no backup record (no imgtool export "
                       "started it, or another job cleared it since): take a full backup "
                       "(or --force)", src->filename, p->bitmap);
    if (pb && id_equal(&pb->id, &sync->id))
        return 0;
    const char *why = !pb ? "has no backup record (a copy made by qemu-img convert?)"
                      : !id_equal(&pr->disk, &st->disk.disk) ? "a backup of another disk"
                      : "not the last backup";
    return err_set(e, EINVAL, "%s: %s; bitmap '%s' of %s counts from %s: give that as "
                   "--backing (or --force)", prev->filename, why, p->bitmap, src->filename,
                   sync->file);
}

static int init_backup_entry(struct chain_state *st, struct blockdev *src, const char *target,
                             struct err *e)
{
    const struct chain_params *p = st->p;
    struct chain_entry *b = &st->backup;
    b->kind = CHAIN_ENTRY_BACKUP;
    b->backup_kind = p->kind;
    b->size = src->size;
    b->bitmap = strdup(p->bitmap ? p->bitmap : "");
    /* A source that is no local file (an NBD URI) keeps its name. */
    b->file = absolute_name(src->filename);
    if (!b->file)
        b->file = strdup(src->filename);
    st->target_file = absolute_name(target);
    if (!b->bitmap || !b->file || !st->target_file)
        return err_errno(e, errno ? errno : ENOMEM, "%s: cannot resolve its name", target);
    if (strlen(st->target_file) > MAX_FILE_NAME || strlen(b->file) > MAX_FILE_NAME)
        return err_set(e, ENAMETOOLONG, "%s: file name too long for the backup record",
                       target);
    int ret = new_id(&b->id, e);
    if (ret == 0 && id_is_zero(&st->disk.disk))
        ret = new_id(&st->disk.disk, e);
    return ret;
}

int chain_check(struct chain_state *st, const struct chain_params *p, struct blockdev *src,
                struct blockdev *prev, const char *target, struct err *e)
{
    st->p = p;
    struct dirty_bitmap *bm;
    int ret = 0;
    /* A missing bitmap is reported as such, not as a missing record. */
    if (p->bitmap && p->kind != CHAIN_FULL && blk_bitmaps_supported(src) &&
        ((ret = blk_bitmaps_load(src, e)) < 0 || (ret = blk_bitmap_get(src, p->bitmap, &bm, e)) < 0))
        return ret;
    ret = chain_record_load(src, &st->disk, e);
    if (ret < 0 && (p->force || p->kind == CHAIN_FULL)) {
        /* A damaged record is replaced by a new one: --force, or a full
         * backup, which needs no predecessor (the other bitmaps' entries
         * go with it, so their next incremental backups are refused). */
        chain_record_free(&st->disk);
        ret = 0;
    }
    if (ret < 0 || (ret = init_backup_entry(st, src, target, e)) < 0 || !prev)
        return ret;
    struct chain_record pr;
    ret = chain_record_load(prev, &pr, e);
    if (ret < 0 && !p->force)
        return ret;
    const struct chain_entry *pb = ret < 0 ? NULL : chain_record_find(&pr, CHAIN_ENTRY_BACKUP,
                                                                      NULL);
    if (pb) {
        st->backup.prev = pb->id;
        st->backup.generation = pb->generation + 1;
    }
    ret = p->force ? 0 : check_predecessor(st, src, prev, pb, &pr, e);
    chain_record_free(&pr);
    return ret;
}

int chain_mark_target(struct chain_state *st, struct blockdev *dst, struct err *e)
{
    struct chain_record r = { .disk = st->disk.disk, .entries = &st->backup, .n = 1 };
    return chain_record_store(dst, &r, e);
}

/* Point the SYNC entry of `bitmap` at the new backup. */
static int set_sync(struct chain_state *st, const char *bitmap, struct err *e)
{
    struct chain_record *r = &st->disk;
    struct chain_entry *en = chain_record_find(r, CHAIN_ENTRY_SYNC, bitmap);
    if (!en) {
        struct chain_entry *n = realloc(r->entries, (r->n + 1) * sizeof(*n));
        if (!n)
            return err_set(e, ENOMEM, "out of memory");
        r->entries = n;
        en = &r->entries[r->n++];
        *en = (struct chain_entry){ .kind = CHAIN_ENTRY_SYNC, .bitmap = strdup(bitmap) };
    }
    free(en->file);
    en->file = strdup(st->target_file);
    en->id = st->backup.id;
    en->generation = st->backup.generation;
    en->size = st->backup.size;
    if (!en->bitmap || !en->file)
        return err_set(e, ENOMEM, "out of memory");
    return 0;
}

int chain_mark_source(struct chain_state *st, struct blockdev *src, struct err *e)
{
    const struct chain_params *p = st->p;
    int ret = 0;
    bool changed = false;
    if (p->resyncs_bitmap && p->bitmap) {
        ret = set_sync(st, p->bitmap, e);
        changed = true;
    }
    if (ret == 0 && p->checkpoint) {
        ret = set_sync(st, p->checkpoint, e);
        changed = true;
    }
    if (ret == 0 && changed && (ret = chain_record_store(src, &st->disk, e)) < 0)
        err_prefix(e, "%s: the backup record was not updated, so the bitmaps were not "
                   "either: ", src->filename);
    return ret;
}

void chain_state_free(struct chain_state *st)
{
    chain_record_free(&st->disk);
    entry_free(&st->backup);
    free(st->target_file);
    st->target_file = NULL;
}

int chain_check_consumer(struct blockdev *src, const char *bitmap, bool force, struct err *e)
{
    struct chain_record r;
    int ret = chain_record_load(src, &r, e);
    if (ret < 0)
        return force ? 0 : ret;
    const struct chain_entry *sync = chain_record_find(&r, CHAIN_ENTRY_SYNC, bitmap);
    if (sync && !force)
        ret = err_set(e, EBUSY, "%s: bitmap '%s' tracks the changes since backup %s for the "
                      "next incremental export, which would miss what this job clears; give "
                      "this job a bitmap of its own, or --bitmap-mode=never (or --force)",
                      src->filename, bitmap, sync->file);
    chain_record_free(&r);
    return ret;
}

int chain_forget(struct blockdev *src, const char *bitmap, struct err *e)
{
    struct chain_record r;
    int ret = chain_record_load(src, &r, e);
    if (ret < 0) {
        if (ret != -EINVAL)
            return ret;
        return blk_record_set(src, NULL, 0, e);     /* damaged: drop it whole */
    }
    struct chain_entry *en = chain_record_find(&r, CHAIN_ENTRY_SYNC, bitmap);
    if (en) {
        entry_free(en);
        *en = r.entries[--r.n];
        ret = chain_record_store(src, &r, e);
    }
    chain_record_free(&r);
    return ret;
}

int chain_last_backup(struct blockdev *bs, const char *bitmap, char **file, struct err *e)
{
    struct chain_record r;
    int ret = chain_record_load(bs, &r, e);
    if (ret < 0)
        return ret;
    const struct chain_entry *sync = chain_record_find(&r, CHAIN_ENTRY_SYNC, bitmap);
    if (!sync)
        ret = err_set(e, ENOENT, "%s: bitmap '%s' has no backup record (no imgtool export "
                      "synchronised it)", bs->filename, bitmap);
    else if (!(*file = strdup(sync->file)))
        ret = err_set(e, ENOMEM, "out of memory");
    chain_record_free(&r);
    return ret;
}
