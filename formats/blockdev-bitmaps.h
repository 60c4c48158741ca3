/* Dirty bitmaps attached to an open image, for every format and command.
 *
 * A blockdev carries a set of named dirty bitmaps (bitmap/dirty.h).  Every
 * write through the generic layer (blk_pwritev, blk_write_zeroes,
 * blk_discard, blk_pwrite_compressed) marks the enabled ones dirty before
 * the driver writes, and blk_truncate resizes them, so commands never track
 * writes themselves.  Persistent bitmaps are the image's own (qcow2's
 * bitmaps extension): the driver loads them, and stores the whole set
 * atomically.
 *
 * Life cycle, as QEMU does it:
 *   - a writable open loads the image's bitmaps and marks them in use on
 *     disk before any guest write, so that a crash leaves them flagged
 *     inconsistent; closing stores them with the flag cleared (best effort:
 *     a failure leaves them in use, which is safe);
 *   - a writable open with BLK_OPEN_BITMAPS_ONLY (bitmap edits, a job that
 *     only reads the image but consumes one of its bitmaps) refuses guest
 *     writes and leaves the flags alone: blk_bitmaps_store is then the one
 *     change the image sees, whole or not at all;
 *   - a read-only open touches nothing; blk_bitmaps_load reads the bitmaps
 *     when a command wants them.
 * One exception: a write-ahead bitmap (dirty_bitmap_set_write_ahead, the
 * live mirror's) is stored without the flag; its owner stores the set
 * before any write it records reaches the disk.
 * A bitmap that was marked in use when loaded is inconsistent: it is listed,
 * may be removed, and every other use fails (dirty_bitmap_inconsistent).
 *
 * Jobs (mirror, export): find the bitmap, dirty_bitmap_freeze() it, consume
 * ranges with dirty_bitmap_job_consume_range() while copying, then
 * dirty_bitmap_abdicate() on success or dirty_bitmap_reclaim() on failure,
 * and blk_bitmaps_store() (or close).  While I/O threads may write to the
 * image, hold blk_bitmaps_lock() around any access to a bitmap's contents.
 * A frozen bitmap cannot be stored or removed. */
#ifndef IMGTOOL_BLOCKDEV_BITMAPS_H
#define IMGTOOL_BLOCKDEV_BITMAPS_H

#include <stdbool.h>
#include <stdint.h>

#include "bitmap/dirty.h"
#include "formats/blockdev.h"

/* Flags for blk_bitmap_add. */
enum {
    BLK_BITMAP_PERSISTENT = 1 << 0,     /* stored in the image */
    BLK_BITMAP_DISABLED   = 1 << 1,     /* created not recording writes */
};

/* True if the format can store persistent bitmaps. */
bool blk_bitmaps_supported(const struct blockdev *bs);
/* True if the bitmaps come from the storage instead (an NBD export's
 * qemu:dirty-bitmap:NAME contexts): blk_bitmaps_load reads them into
 * in-memory, disabled, non-persistent bitmaps; they are the server's to
 * manage, so storing, adding or removing is refused (-EROFS). */
bool blk_bitmaps_remote(const struct blockdev *bs);
/* Either of the two: the image has bitmaps to read. */
bool blk_bitmaps_available(const struct blockdev *bs);
bool blk_driver_has_bitmaps(const struct blockdrv *drv);
/* True if this image, as it is, can hold persistent bitmaps (a qcow2
 * version 2 image cannot). */
bool blk_bitmaps_storable(struct blockdev *bs);
/* Load the image's persistent bitmaps if that was not done at open (read-only
 * opens).  -ENOTSUP naming the format when it has none. */
int blk_bitmaps_load(struct blockdev *bs, struct err *e);

size_t blk_bitmap_count(const struct blockdev *bs);
struct dirty_bitmap *blk_bitmap_at(const struct blockdev *bs, size_t i);
/* The bitmap named `name`, or NULL. */
struct dirty_bitmap *blk_bitmap_find(const struct blockdev *bs, const char *name);
/* The bitmap named `name`, or -ENOENT with "FILE: no bitmap 'NAME'". */
int blk_bitmap_get(const struct blockdev *bs, const char *name, struct dirty_bitmap **out,
                   struct err *e);

/* Default granularity for a new bitmap, as QEMU picks it: the cluster size
 * clamped to 4 KiB .. 64 KiB. */
uint32_t blk_bitmap_default_granularity(struct blockdev *bs);
/* Create a bitmap (all clean) and attach it.  Persistent ones need a
 * writable image of a format that stores them; names are unique. */
int blk_bitmap_add(struct blockdev *bs, const char *name, uint32_t granularity, unsigned flags,
                   struct dirty_bitmap **out, struct err *e);
/* Detach and free a bitmap (-EBUSY while frozen, -ENOENT if none).  A
 * persistent one disappears from the image at the next store. */
int blk_bitmap_remove(struct blockdev *bs, const char *name, struct err *e);

/* Write the persistent bitmaps to the image, atomically: afterwards the
 * image holds exactly the persistent bitmaps attached to bs.  In a writable
 * session they stay marked in use (guest writes may follow); with
 * BLK_OPEN_BITMAPS_ONLY they are stored clean.  -EBUSY if one is frozen. */
int blk_bitmaps_store(struct blockdev *bs, struct err *e);
/* Store them clean now, reporting errors (blk_close does the same silently);
 * guest writes are refused afterwards. */
int blk_bitmaps_release(struct blockdev *bs, struct err *e);

/* convert --bitmaps: can src's persistent bitmaps be copied (loads them;
 * inconsistent ones are an error unless skipped)?  Then, once the data is
 * copied, add them to dst as persistent bitmaps with the same name,
 * granularity, enabled state and dirty bits. */
int blk_bitmaps_check_copy(struct blockdev *src, bool skip_inconsistent, struct err *e);
int blk_bitmaps_copy(struct blockdev *dst, struct blockdev *src, bool skip_inconsistent,
                     struct err *e);

void blk_bitmaps_lock(struct blockdev *bs);
void blk_bitmaps_unlock(struct blockdev *bs);

/* --- For drivers --- */
/* Attach a bitmap the driver loaded (ownership passes to bs, also on
 * failure: -EEXIST for a duplicate name, -ENOMEM). */
int blk_bitmap_attach(struct blockdev *bs, struct dirty_bitmap *bm, struct err *e);

/* --- For the generic layer (formats/blockdev.c) --- */
void blk_bitmaps_init(struct blockdev *bs);
/* After a writable open: load the bitmaps and mark them in use. */
int blk_bitmaps_open(struct blockdev *bs, struct err *e);
/* Before the driver closes: store if needed (best effort), then free. */
void blk_bitmaps_close(struct blockdev *bs);
/* Mark [off, off + len) dirty in the enabled bitmaps (thread-safe). */
void blk_bitmaps_mark(struct blockdev *bs, uint64_t off, uint64_t len);
/* Guest writes are allowed (not BITMAPS_ONLY, not released). */
int blk_bitmaps_check_guest_write(struct blockdev *bs, struct err *e);
/* Before and after the driver resizes the disk. */
int blk_bitmaps_check_truncate(struct blockdev *bs, struct err *e);
int blk_bitmaps_truncate(struct blockdev *bs, uint64_t size, struct err *e);

#endif
