/* A named dirty bitmap: an hbitmap plus the state QEMU keeps for a
 * BdrvDirtyBitmap (name, enabled, persistent, inconsistent) and the
 * successor mechanism that lets a job use the bitmap without losing writes.
 *
 * Successors (see the 2015 incremental backup series): a job that copies
 * the dirty data of a bitmap first freezes it.  Freezing creates an
 * anonymous successor bitmap that takes over recording guest writes, and
 * the frozen parent refuses every change except the job's own
 * dirty_bitmap_job_consume_range().  When the job ends:
 *   - success: dirty_bitmap_abdicate() - the bitmap now holds only the
 *     writes made during the job (the successor);
 *   - failure: dirty_bitmap_reclaim() - the bitmap holds parent | successor,
 *     i.e. everything not known to have reached the target plus the writes
 *     made during the job.
 * Either way no dirty bit is lost.  The dirty_bitmap object keeps its
 * address and name across freeze / abdicate / reclaim.
 *
 * Not thread-safe: callers serialise access. */
#ifndef IMGTOOL_DIRTY_H
#define IMGTOOL_DIRTY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bitmap/hbitmap.h"
#include "formats/util.h"

/* qcow2 bitmap names: name_size must be non-zero and QEMU supports at most
 * 1023 (docs/interop/qcow2.txt, "Bitmap directory"). */
#define DIRTY_BITMAP_MAX_NAME 1023

struct dirty_bitmap;

/* True if name[0..len) is a valid bitmap name: 1..1023 bytes, no NUL byte
 * (names in a qcow2 bitmap directory are not NUL-terminated). */
bool dirty_bitmap_name_valid(const char *name, size_t len);

/* Create an enabled, non-persistent, all-clean bitmap.  name must be a
 * valid name (NUL-terminated).  Returns 0, -EINVAL or -ENOMEM. */
int dirty_bitmap_new(const char *name, uint64_t disk_size, uint32_t granularity,
                     struct dirty_bitmap **out, struct err *e);
/* Free the bitmap and its successor unconditionally (cleanup paths). */
void dirty_bitmap_free(struct dirty_bitmap *bm);
/* Free the bitmap on user request: -EBUSY while frozen by a job. */
int dirty_bitmap_remove(struct dirty_bitmap *bm, struct err *e);

const char *dirty_bitmap_name(const struct dirty_bitmap *bm);
uint64_t dirty_bitmap_size(const struct dirty_bitmap *bm);
uint32_t dirty_bitmap_granularity(const struct dirty_bitmap *bm);
/* Dirty bytes of the bitmap itself (not of its successor). */
uint64_t dirty_bitmap_count(const struct dirty_bitmap *bm);
/* The same as QEMU counts them (bdrv_get_dirty_count, the "count" of
 * query-block): whole granules, a dirty partial last granule included. */
uint64_t dirty_bitmap_count_granules(const struct dirty_bitmap *bm);
bool dirty_bitmap_enabled(const struct dirty_bitmap *bm);
bool dirty_bitmap_frozen(const struct dirty_bitmap *bm);
bool dirty_bitmap_persistent(const struct dirty_bitmap *bm);
/* A bitmap loaded from a qcow2 image whose in_use flag was already set was
 * not saved correctly: its contents cannot be trusted, so every operation
 * that reads or changes it (other than removal) fails with -EINVAL. */
bool dirty_bitmap_inconsistent(const struct dirty_bitmap *bm);

/* Enable or disable recording of guest writes.  -EBUSY while frozen. */
int dirty_bitmap_set_enabled(struct dirty_bitmap *bm, bool enabled, struct err *e);
void dirty_bitmap_set_persistent(struct dirty_bitmap *bm, bool persistent);
void dirty_bitmap_set_inconsistent(struct dirty_bitmap *bm, bool inconsistent);
/* A write-ahead bitmap is stored without the in-use flag even while the
 * image is open for writing: its owner (the live mirror of a --sync=bitmap
 * job, mirror/active.c) stores it before any write it records reaches the
 * disk, so the copy on disk never misses a write and a crash leaves it
 * consistent (a superset of what changed). */
bool dirty_bitmap_write_ahead(const struct dirty_bitmap *bm);
void dirty_bitmap_set_write_ahead(struct dirty_bitmap *bm, bool write_ahead);

/* The underlying bits, for reading (iteration, serialization).  While the
 * bitmap is frozen these are the frozen parent's bits. */
const struct hbitmap *dirty_bitmap_bits(const struct dirty_bitmap *bm);
/* For loading a persistent bitmap: the bits to deserialize into.  -EBUSY
 * while frozen. */
int dirty_bitmap_bits_for_load(struct dirty_bitmap *bm, struct hbitmap **out, struct err *e);

/* Record a guest write of [off, off + len): goes to the successor while
 * frozen (if it is enabled), else to the bitmap if it is enabled. */
void dirty_bitmap_mark(struct dirty_bitmap *bm, uint64_t off, uint64_t len);

/* Explicit changes on user request, whether enabled or not.
 * -EBUSY while frozen, -EINVAL if inconsistent.  reset clears every granule
 * the range touches (see hbitmap_reset). */
int dirty_bitmap_set(struct dirty_bitmap *bm, uint64_t off, uint64_t len, struct err *e);
int dirty_bitmap_reset(struct dirty_bitmap *bm, uint64_t off, uint64_t len, struct err *e);
int dirty_bitmap_clear(struct dirty_bitmap *bm, struct err *e);
/* dst |= src (granularities may differ, sizes must match).  dst frozen:
 * -EBUSY; either inconsistent: -EINVAL.  A frozen src may be read. */
int dirty_bitmap_merge(struct dirty_bitmap *dst, const struct dirty_bitmap *src,
                       struct err *e);
/* Resize with the disk.  -EBUSY while frozen. */
int dirty_bitmap_truncate(struct dirty_bitmap *bm, uint64_t new_size, struct err *e);

/* Start a job: create the successor and freeze the bitmap.  The successor
 * has the same size and granularity and inherits the enabled state (as in
 * QEMU, so a disabled bitmap stays disabled after the job).
 * -EBUSY if already frozen, -EINVAL if inconsistent, -ENOMEM. */
int dirty_bitmap_freeze(struct dirty_bitmap *bm, struct err *e);
/* The job copied [off, off + len) to the target: clear those granules of
 * the frozen parent (bitmap-mode=always).  Callers align the range to the
 * granularity.  -EINVAL if the bitmap is not frozen. */
int dirty_bitmap_job_consume_range(struct dirty_bitmap *bm, uint64_t off, uint64_t len,
                                   struct err *e);
/* The job succeeded: drop the parent's bits and keep the successor's.
 * -EINVAL if not frozen. */
int dirty_bitmap_abdicate(struct dirty_bitmap *bm, struct err *e);
/* The job failed: merge the successor into the parent and thaw.
 * -EINVAL if not frozen. */
int dirty_bitmap_reclaim(struct dirty_bitmap *bm, struct err *e);

#endif
