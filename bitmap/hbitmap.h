/* A hierarchical bitmap over the bytes of a disk: one bit per granule of
 * "granularity" bytes, plus upper levels in which each bit summarises one
 * 64-bit word of the level below (set iff that word is non-zero).
 *
 * Searches for dirty bits climb the summary levels, so finding the next dirty
 * granule costs O(levels) however large the clean gap is (a 2 TiB disk at
 * 64 KiB granularity has 5 levels).  The dirty count is kept incrementally.
 * Setting or clearing a range costs O(range / 64 granules); looking for the
 * next clean granule scans the bottom level word by word, so it costs
 * O(length of the dirty run / 64): iteration over dirty extents therefore
 * follows the amount of dirty data, not the disk size.
 *
 * All offsets and lengths are in bytes of the disk.  The last granule may be
 * partial when the disk size is not a multiple of the granularity; it is
 * treated as a whole granule for setting and clearing, but offsets, extents
 * and counts are clamped to the disk size.  Ranges reaching past the end of
 * the disk are clamped; a range starting at or after the end does nothing.
 *
 * Not thread-safe: callers serialise access. */
#ifndef IMGTOOL_HBITMAP_H
#define IMGTOOL_HBITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/util.h"

/* QEMU's limits for qcow2 persistent bitmaps (granularity_bits 9..31, see
 * docs/interop/qcow2.txt, "Bitmap directory"). */
#define HBITMAP_MIN_GRANULARITY (UINT32_C(1) << 9)
#define HBITMAP_MAX_GRANULARITY (UINT32_C(1) << 31)

struct hbitmap;

/* Create an all-clean bitmap for a disk of disk_size bytes (at most
 * INT64_MAX).  granularity must be a power of two between
 * HBITMAP_MIN_GRANULARITY and HBITMAP_MAX_GRANULARITY.
 * Returns 0, -EINVAL or -ENOMEM. */
int hbitmap_new(uint64_t disk_size, uint32_t granularity, struct hbitmap **out,
                struct err *e);
void hbitmap_free(struct hbitmap *hb);
/* Deep copy.  Returns 0 or -ENOMEM. */
int hbitmap_copy(const struct hbitmap *src, struct hbitmap **out, struct err *e);

uint64_t hbitmap_size(const struct hbitmap *hb);
uint32_t hbitmap_granularity(const struct hbitmap *hb);
/* Number of dirty bytes: dirty granules times the granularity, except that a
 * dirty partial last granule counts only up to the disk size. */
uint64_t hbitmap_count(const struct hbitmap *hb);

/* Mark dirty every granule that [off, off + len) touches. */
void hbitmap_set(struct hbitmap *hb, uint64_t off, uint64_t len);
void hbitmap_set_all(struct hbitmap *hb);
/* Mark clean every granule that [off, off + len) touches, even partly (as
 * QEMU's hbitmap_reset does).  Callers that must not lose dirty bits next to
 * the range align it to the granularity first. */
void hbitmap_reset(struct hbitmap *hb, uint64_t off, uint64_t len);
void hbitmap_reset_all(struct hbitmap *hb);
/* True if the granule containing off is dirty (false past the end). */
bool hbitmap_get(const struct hbitmap *hb, uint64_t off);

/* First dirty (clean) byte offset in [off, off + bytes), or -1 if there is
 * none.  The result is off itself when off lies in a dirty (clean) granule,
 * otherwise the start of a granule. */
int64_t hbitmap_next_dirty(const struct hbitmap *hb, uint64_t off, uint64_t bytes);
int64_t hbitmap_next_clean(const struct hbitmap *hb, uint64_t off, uint64_t bytes);
/* Find the first dirty extent in [start, end): on success store its offset
 * and length (the extent is clamped to [start, end) and to the disk size)
 * and return true.  Iterate with start = *ext_off + *ext_len. */
bool hbitmap_next_dirty_extent(const struct hbitmap *hb, uint64_t start, uint64_t end,
                               uint64_t *ext_off, uint64_t *ext_len);

/* dst |= src.  A dirty granule of src dirties every granule of dst that it
 * overlaps, so the granularities may differ.  The disk sizes must be equal
 * (-EINVAL otherwise).  Cost follows the dirty extents of src. */
int hbitmap_merge(struct hbitmap *dst, const struct hbitmap *src, struct err *e);

/* Resize to new_size bytes: growing adds clean granules, shrinking drops the
 * bits past the new end (a granule that becomes the partial last granule
 * keeps its bit).  Returns 0, -EINVAL or -ENOMEM (bitmap unchanged). */
int hbitmap_truncate(struct hbitmap *hb, uint64_t new_size, struct err *e);

/* Serialization in the layout of qcow2 persistent bitmap data
 * (docs/interop/qcow2.txt, "Bitmap data"): bit (byte_nr / granularity) of
 * the data describes the disk byte byte_nr; within each data byte the least
 * significant bit is the lowest granule, and bytes follow in disk order.
 * Unused tail bits after the last granule are zero.
 *
 * A part is the byte range [off, off + len) of the disk.  off must be a
 * multiple of hbitmap_serialization_align() (granularity * 8, so that the
 * part starts on a byte of the data), and so must len unless the part
 * reaches the end of the disk (it is then clamped).  qcow2 uses parts of
 * granularity * 8 * cluster_size bytes, one per bitmap data cluster. */
uint64_t hbitmap_serialization_align(const struct hbitmap *hb);
/* Bytes of data for the part (ceil(granules / 8)). */
uint64_t hbitmap_serialization_size(const struct hbitmap *hb, uint64_t off, uint64_t len);
void hbitmap_serialize_part(const struct hbitmap *hb, uint8_t *buf, uint64_t off,
                            uint64_t len);
/* Replace the bits of the part with the data in buf; tail bits past the last
 * granule are ignored. */
void hbitmap_deserialize_part(struct hbitmap *hb, const uint8_t *buf, uint64_t off,
                              uint64_t len);
/* Fill the part with ones or zeroes (a qcow2 bitmap table entry with offset 0
 * reads as all ones or all zeroes). */
void hbitmap_deserialize_ones(struct hbitmap *hb, uint64_t off, uint64_t len);
void hbitmap_deserialize_zeroes(struct hbitmap *hb, uint64_t off, uint64_t len);

#endif
