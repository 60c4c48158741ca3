/* qcow2 persistent dirty bitmaps, exactly as QEMU stores them
 * (docs/interop/qcow2.txt, "Bitmaps extension" and "Bitmaps"):
 *
 *   header extension 0x23852875   nb_bitmaps (u32), reserved (u32, zero),
 *                                 bitmap_directory_size (u64),
 *                                 bitmap_directory_offset (u64, cluster
 *                                 aligned); valid only while autoclear
 *                                 bit 0 is set.
 *   bitmap directory              nb_bitmaps entries, each padded to 8 bytes:
 *                                 table offset (u64), table size in entries
 *                                 (u32), flags (u32: bit 0 in_use, bit 1
 *                                 auto), type (u8, 1), granularity_bits (u8,
 *                                 9..31 for QEMU), name_size (u16, 1..1023),
 *                                 extra_data_size (u32, 0 for QEMU), extra
 *                                 data, name (not NUL-terminated).
 *   bitmap table                  one u64 per cluster of bitmap data: bits
 *                                 9-55 the data cluster, or 0 with bit 0 =
 *                                 all zeroes (0) / all ones (1).
 *   bitmap data                   bit (byte / granularity), least significant
 *                                 bit first, unused tail bits zero.
 *
 * The generic layer (formats/blockdev-bitmaps.h) calls load and store
 * through the vtable; info, check and the hooks in qcow2.c call the rest.
 * Every function takes the driver lock itself unless it says "lock held". */
#ifndef IMGTOOL_QCOW2_BITMAP_H
#define IMGTOOL_QCOW2_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"
#include "formats/props.h"

struct qcow2_state;

/* QEMU's limits (block/qcow2.h, block/qcow2-bitmap.c). */
#define QCOW2_BITMAP_MAX_COUNT          65535
#define QCOW2_BITMAP_MAX_DIRECTORY_SIZE (1024u * QCOW2_BITMAP_MAX_COUNT)
#define QCOW2_BITMAP_MAX_TABLE_SIZE     0x8000000u      /* entries */
#define QCOW2_BITMAP_MAX_DATA_SIZE      0x20000000u     /* bytes of bitmap data */
#define QCOW2_BITMAP_MIN_GRANULARITY_BITS 9
#define QCOW2_BITMAP_MAX_GRANULARITY_BITS 31
#define QCOW2_BITMAP_MAX_NAME_SIZE      1023

/* blockdrv.bitmaps_load / bitmaps_store / bitmap_check_new (see
 * formats/blockdev.h). */
int qcow2_bitmaps_load(struct blockdev *bs, bool mark_in_use, struct err *e);
int qcow2_bitmaps_store(struct blockdev *bs, bool in_use, struct err *e);
int qcow2_bitmap_check_new(struct blockdev *bs, const char *name, uint32_t granularity,
                           struct err *e);

/* For info: add "bitmaps": [{"flags": [...], "name", "granularity"}, ...]
 * to the format-specific data as qemu-img does (nothing when the image has
 * no valid bitmaps extension), read from the file.  Lock held or
 * single-threaded. */
int qcow2_bitmaps_info(struct qcow2_state *s, struct prop *data, struct err *e);

/* For check: call `ref` for every host range the bitmaps use (the
 * directory, each bitmap table, each data cluster) so that refcounts can be
 * verified, counting structural problems in res->corruptions (with a
 * message each).  A directory that QEMU reads but imgtool cannot load (a
 * name with a NUL byte) is counted as QEMU counts it, with a warning.
 * *incomplete is set when the extension or the directory cannot be read
 * at all: clusters it may reference were not counted, so a repair must not
 * free or recount anything.  Returns a negative errno only when reading
 * fails or `ref` fails.  Lock held or single-threaded. */
int qcow2_bitmaps_for_each_cluster(struct qcow2_state *s,
                                   int (*ref)(void *opaque, uint64_t offset, uint64_t len,
                                              struct err *e),
                                   void *opaque, struct blk_check_result *res, bool *incomplete,
                                   struct err *e);

#endif
