/* Backup chain identity: the record that lets `export` refuse a wrong
 * predecessor before it copies anything.
 *
 * A disk and each backup made from it carry a small record (kept by the
 * format, blk_record_get/set: in qcow2 a compatible header extension that
 * QEMU keeps).  Every backup gets a random 128-bit id; its record says
 * which disk it was taken from, which bitmap's history it follows, what
 * kind of backup it is, its generation (a full backup is 0, each backup
 * backed by another one more than its predecessor), its predecessor's id
 * and the disk size.  The disk's record says, per bitmap (the tracking
 * bitmap and each checkpoint), which backup (id and file name) that bitmap
 * counts from: the backup it was last synchronised with.
 *
 * A backup that follows a bitmap (incremental, differential, or --since a
 * checkpoint) is correct only when backed by exactly that backup, so the
 * check compares the predecessor file's own record with the disk's entry
 * for the bitmap.  A source that cannot carry a record (an NBD export with
 * a bitmap QEMU manages) still gets the checks that need only the
 * predecessor's record: it is a backup, of a disk of this size, following
 * the same bitmap name; that it is the *last* such backup can only be
 * known from the disk's record.
 *
 * On-disk form (big-endian), the whole record:
 *   0   u32  format version, 1
 *   4   16   disk id: the disk's own (a disk), the disk it was taken from (a backup)
 *   20  u32  number of entries (at most CHAIN_MAX_ENTRIES)
 *   24  entries, each 56 bytes + names:
 *       u8 kind (CHAIN_ENTRY_*), u8 backup kind (CHAIN_FULL...; 0 in SYNC),
 *       u16 bitmap name length (1..1023), u16 file name length (0..4095),
 *       u16 zero, u64 generation, u64 disk size, 16 id, 16 predecessor id,
 *       the bitmap name, the file name (no NULs)
 *   SYNC entry (a disk): bitmap NAME counts from backup `id`, file FILE
 *     (absolute path at the time), of generation `generation`.
 *   BACKUP entry (a backup, exactly one): this backup's id, predecessor id
 *     (zero for a full backup), kind, generation, size; bitmap name empty
 *     (length 0) for a full backup without one; file: the source disk. */
#ifndef IMGTOOL_MIRROR_CHAIN_H
#define IMGTOOL_MIRROR_CHAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"

#define CHAIN_RECORD_VERSION 1
#define CHAIN_MAX_ENTRIES 256

enum chain_entry_kind { CHAIN_ENTRY_SYNC = 1, CHAIN_ENTRY_BACKUP = 2 };
enum chain_kind { CHAIN_FULL = 1, CHAIN_INCREMENTAL = 2, CHAIN_DIFFERENTIAL = 3 };

struct chain_id {
    uint8_t b[16];
};

struct chain_entry {
    enum chain_entry_kind kind;
    enum chain_kind backup_kind;    /* BACKUP entries */
    uint64_t generation, size;
    struct chain_id id, prev;
    char *bitmap, *file;            /* malloc'ed, NUL-terminated */
};

struct chain_record {
    struct chain_id disk;
    struct chain_entry *entries;
    size_t n;
};

/* Decode the image's record into *r (all zero: it has none).  A record
 * that is malformed or of a newer version is an error naming the file. */
int chain_record_load(struct blockdev *bs, struct chain_record *r, struct err *e);
/* Encode and store *r in the image, durably (n == 0: remove it). */
int chain_record_store(struct blockdev *bs, const struct chain_record *r, struct err *e);
void chain_record_free(struct chain_record *r);
/* The entry of `kind` for `bitmap` (NULL: any bitmap), or NULL. */
struct chain_entry *chain_record_find(const struct chain_record *r, enum chain_entry_kind kind,
                                      const char *bitmap);

/* What export asks of a mirror job (mirror_params.chain). */
struct chain_params {
    enum chain_kind kind;
    /* The bitmap whose history the backup follows: -B (full, incremental,
     * differential) or the --since checkpoint.  NULL: a full backup
     * without one. */
    const char *bitmap;
    /* After the backup the bitmap counts from it (full, incremental -B). */
    bool resyncs_bitmap;
    const char *checkpoint;         /* a checkpoint added: it counts from the backup */
    bool force;                     /* --force: skip the predecessor checks */
};

/* A job's view of the chain, filled by chain_check and used by the two
 * marking steps. */
struct chain_state {
    const struct chain_params *p;
    struct chain_record disk;       /* the source's record (may be empty) */
    struct chain_entry backup;      /* the new backup's entry */
    char *target_file;              /* the new backup's absolute name */
};

/* Before anything is created: load the source's record and, for a backup
 * that follows a bitmap, check that `prev` (the predecessor, opened) is
 * the backup that bitmap counts from; prepare the new backup's entry.
 * Errors are one line naming the predecessor and the file expected. */
int chain_check(struct chain_state *st, const struct chain_params *p, struct blockdev *src,
                struct blockdev *prev, const char *target, struct err *e);
/* Write the new backup's record into the target (still under its
 * temporary name). */
int chain_mark_target(struct chain_state *st, struct blockdev *dst, struct err *e);
/* After the target is in place and before the bitmaps are stored: the
 * bitmaps that now count from the new backup say so in the disk's record.
 * A crash between this and the bitmap store leaves a bitmap with more
 * dirty bits than needed, never fewer. */
int chain_mark_source(struct chain_state *st, struct blockdev *src, struct err *e);
void chain_state_free(struct chain_state *st);

/* A job other than export that would clear bits of `bitmap` (mirror
 * --sync=bitmap/incremental, or --bitmap with full): refused when the
 * bitmap backs an export chain, as the next incremental backup would miss
 * what the job took.  With `force` the job may go on; chain_forget then
 * drops the bitmap's entry so that the next incremental backup is refused
 * instead of silently incomplete. */
int chain_check_consumer(struct blockdev *src, const char *bitmap, bool force, struct err *e);
int chain_forget(struct blockdev *src, const char *bitmap, struct err *e);

/* The file name of the backup `bitmap` of `bs` counts from (malloc'ed),
 * or an error saying why there is none. */
int chain_last_backup(struct blockdev *bs, const char *bitmap, char **file, struct err *e);

#endif
