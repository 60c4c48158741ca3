/* The block-driver interface.
 *
 * A format (raw, qcow2, ...) is one `const struct blockdrv` vtable; an open
 * image is a `struct blockdev`.  Callers use the blk_* functions below, never
 * a driver's private state.  Adding a format means one new file plus one line
 * in the driver table in formats/blockdev.c.
 *
 * Every function that can fail returns a negative errno and fills the
 * caller's `struct err` with a one-line message naming the file.
 *
 * Threads: the copy engine and the NBD server keep several requests in
 * flight from worker threads, so blk_preadv, blk_pwritev, blk_write_zeroes,
 * blk_discard, blk_pwrite_compressed, blk_block_status* and blk_flush may be
 * called concurrently on one blockdev, with any ranges, overlapping or not.
 * The block layer, not the caller or the driver, makes that safe: every
 * read and write holds its range, widened to blk_write_alignment (the
 * cluster: a write may allocate, copy on write or free it), in bs->requests
 * (formats/rangelock.h) while the driver works on it.  Writes, zero writes,
 * discards and compressed writes exclude every overlapping request; reads
 * exclude only those, never each other.  So a driver sees no two requests
 * on one cluster at once unless both are reads, and may do data I/O outside
 * its metadata lock: no write lands in a cluster that a concurrent discard
 * freed, and no read returns a cluster that was freed and reused under it.
 * Overlapping requests take effect in the order they reach the block layer
 * (a later request waits for earlier conflicting ones, never the reverse).
 * Block status takes no range: the driver answers it under its own lock,
 * from the metadata as it stands.  A flush covers the requests that
 * completed before it was called; drivers protect their metadata with their
 * own lock.  open, close, create, truncate, set_backing, make_empty and the
 * bitmap set changes are never called concurrently with anything else
 * (truncate drains the requests first, blk_drain).  An image the NBD
 * server exports through a gate (formats/nbd/server.h: serve --mirror's
 * switch to the target) is used by server threads only between their
 * acquire and release of the gate; while its owner has the export
 * quiesced, the owner alone calls anything on it, flush and close
 * included, and the image that replaces it is first touched by the
 * server only after the resume.  Drivers must not call
 * blk_* I/O on their own blockdev (only on their backing file), or a request
 * would wait for itself. */
#ifndef IMGTOOL_BLOCKDEV_H
#define IMGTOOL_BLOCKDEV_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "file.h"
#include "options.h"
#include "transport.h"
#include "props.h"
#include "rangelock.h"
#include "util.h"

struct blockdev;
struct dirty_bitmap;

/* Flags for blk_open(). */
enum {
    BLK_OPEN_RDWR        = 1 << 0,  /* writable (the backing chain stays read-only) */
    BLK_OPEN_FORCE_SHARE = 1 << 1,  /* -U: read even if another process writes */
    BLK_OPEN_NO_BACKING  = 1 << 2,  /* do not open the backing chain */
    BLK_OPEN_DIRECT      = 1 << 3,  /* O_DIRECT (--cache=none) */
    BLK_OPEN_NO_LOCK     = 1 << 4,  /* take no image locks (tests, special files) */
    BLK_OPEN_CHECK       = 1 << 5,  /* for check: open images marked dirty or corrupt */
    /* With RDWR: change only the persistent bitmaps (blk_bitmaps_store is
     * then the one atomic change); guest writes are refused and the bitmaps
     * are not marked in use.  See formats/blockdev-bitmaps.h. */
    BLK_OPEN_BITMAPS_ONLY = 1 << 6,
    /* A copy's target, written front to back and not read back: the page
     * cache it fills is dropped behind the writeback (HOSTFILE_DROP_BEHIND),
     * as nbdcopy does, so that a backup does not evict the host's cache. */
    BLK_OPEN_DROP_BEHIND = 1 << 7,
};

/* Settings for blk_open that come from the user or the environment (cmd/
 * fills them; libraries never read the environment).  The pointers must
 * stay valid while the image is open.  NULL or all-zero: the defaults. */
struct blk_open_opts {
    struct transport_opts transport;
    /* qcow2: bytes of L2 tables to cache, as QEMU's l2-cache-size (4..1024
     * tables); 0 = the default (QCOW2_L2_CACHE_BYTES, at most 64 tables). */
    uint64_t l2_cache_bytes;
};

/* Flags for blockdrv.check (check -r leaks / -r all). */
enum {
    BLK_CHECK_FIX_LEAKS  = 1 << 0,
    BLK_CHECK_FIX_ERRORS = 1 << 1,
};

/* What `check` found, with qemu-img check's counters. */
struct blk_check_result {
    uint64_t corruptions, leaks, check_errors;
    uint64_t corruptions_fixed, leaks_fixed;
    uint64_t image_end_offset;
    uint64_t total_clusters, allocated_clusters, fragmented_clusters, compressed_clusters;
    /* One line per problem ("ERROR cluster 5 refcount=0 reference=1"),
     * added with blk_check_report(); cmd/ prints them. */
    char **messages;
    size_t nmessages;
};

/* Block status of one run of bytes (see blk_block_status). */
enum {
    BLK_STATUS_DATA      = 1 << 0,  /* reads return data stored for it */
    BLK_STATUS_ZERO      = 1 << 1,  /* reads are guaranteed to return zeroes */
    BLK_STATUS_ALLOCATED = 1 << 2,  /* this layer decides the contents (no fall-through) */
    BLK_STATUS_OFFSET    = 1 << 3,  /* host_offset is valid */
    /* The host range may have holes that read as zeroes: ask the host file
     * (QEMU's BDRV_BLOCK_RECURSE; see blk_block_status_host). */
    BLK_STATUS_RECURSE   = 1 << 4,
};

struct blk_extent {
    uint64_t length;        /* bytes in the run, > 0 */
    unsigned flags;         /* BLK_STATUS_* */
    int depth;              /* 0 = top image, 1 = its backing file, ... */
    uint64_t host_offset;   /* with BLK_STATUS_OFFSET: offset in host_file */
    const struct blockdev *layer; /* the layer that provides the run */
};

/* Flags for write_zeroes. */
enum {
    BLK_ZERO_MAY_UNMAP = 1 << 0,    /* deallocating is fine if reads stay zero */
    /* Only if it is fast (no zeroes written as data): otherwise fail with
     * -ENOTSUP and change nothing (QEMU's BDRV_REQ_NO_FALLBACK; over NBD
     * NBD_CMD_FLAG_FAST_ZERO). */
    BLK_ZERO_FAST      = 1 << 1,
};

/* Preallocation modes (qemu-img's preallocation=off|metadata|falloc|full):
 * metadata gives every cluster its place in the file, falloc also
 * allocates that place (fallocate), full writes zeroes there. */
enum blk_prealloc { BLK_PREALLOC_OFF, BLK_PREALLOC_METADATA, BLK_PREALLOC_FALLOC, BLK_PREALLOC_FULL };
/* Parse a mode name; -EINVAL if it is none. */
int blk_parse_prealloc(const char *name, enum blk_prealloc *mode);

/* blk_create_params.size when the size is to be taken from the backing file. */
#define BLK_SIZE_FROM_BACKING UINT64_MAX

struct blk_create_params {
    const char *filename;
    uint64_t size;                  /* or BLK_SIZE_FROM_BACKING */
    struct kvopts *opts;            /* -o options; drivers mark the ones they use */
    const char *backing_file;       /* -b, may be NULL */
    const char *backing_format;     /* -F, may be NULL (probe) */
    const struct blk_open_opts *open_opts;  /* for the new file and the backing file */
};

/* What a new image needs (qemu-img measure): `required` bytes for the data
 * of the source (or none) plus all metadata, `fully_allocated` bytes with
 * every cluster allocated, and (has_bitmaps) `bitmaps` bytes more for the
 * source's persistent bitmaps when both formats can store them. */
struct blk_measure {
    uint64_t required;
    uint64_t fully_allocated;
    bool has_bitmaps;
    uint64_t bitmaps;
};

/* Progress of a long metadata operation (amend): fn(opaque, done, total)
 * from the calling thread, done growing to total; fn may be NULL. */
struct blk_progress {
    void (*fn)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
};

struct blockdrv {
    const char *name;
    /* The -o options of create and of amend, for `-o help` (NULL-terminated
     * arrays; NULL: none). */
    const struct blk_option_desc *create_options;
    const struct blk_option_desc *amend_options;
    /* How sure the driver is that the first bytes of a file are its format:
     * 0 = not mine, 100 = certain.  `len` may be shorter than a sector. */
    int (*probe)(const uint8_t *buf, size_t len);
    /* bs->file is open; set bs->size and bs->opaque, optionally
     * bs->backing_name / bs->backing_format. */
    int (*open)(struct blockdev *bs, struct err *e);
    void (*close)(struct blockdev *bs);
    /* Create a new image (the file may already exist empty; the generic code
     * creates it under a temporary name and renames it into place). */
    int (*create)(struct transport *file, const struct blk_create_params *p, struct err *e);
    /* Reads are within [0, bs->size); the driver reads through to the
     * backing chain itself (blk_preadv on bs->backing). */
    int (*preadv)(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                  struct err *e);
    int (*pwritev)(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                   struct err *e);
    /* Status of the run starting at `off`, at most `bytes` long, in this
     * layer only: without BLK_STATUS_ALLOCATED the generic code asks the
     * backing chain.  Must set length > 0. */
    int (*block_status)(struct blockdev *bs, uint64_t off, uint64_t bytes,
                        struct blk_extent *ext, struct err *e);
    int (*write_zeroes)(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                        struct err *e);
    /* Deallocate; afterwards reads may return zeroes or backing data. */
    int (*discard)(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e);
    int (*flush)(struct blockdev *bs, struct err *e);
    int (*truncate)(struct blockdev *bs, uint64_t size, struct err *e);
    /* Preallocate [off, off + len) as `mode` (resize --preallocation,
     * after growing); allocated clusters are left as they are.  -ENOTSUP
     * for a mode the format has not.  NULL: only BLK_PREALLOC_OFF. */
    int (*preallocate)(struct blockdev *bs, uint64_t off, uint64_t len, enum blk_prealloc mode,
                       struct err *e);
    /* Fill format-specific information for `info` (may be NULL). */
    int (*get_info)(struct blockdev *bs, struct prop *info, struct err *e);
    /* Change the backing file name in the header (rebase -u); may be NULL. */
    int (*set_backing)(struct blockdev *bs, const char *name, const char *format,
                       struct err *e);
    /* Make every cluster unallocated, so that the whole image reads
     * through to its backing file (commit, after copying the data down,
     * as QEMU's bdrv_make_empty); may be NULL. */
    int (*make_empty)(struct blockdev *bs, struct err *e);
    /* Write whole clusters compressed (convert -c, export -c); `off` and
     * `len` are cluster aligned except at the end of the disk.  The driver
     * compresses outside its lock so that several threads compress at
     * once.  NULL when the format has no compression. */
    int (*pwrite_compressed)(struct blockdev *bs, uint64_t off, const void *buf, size_t len,
                             struct err *e);
    /* Make [off, off + len) of the disk hold the len bytes at src_off of
     * transport `src`, copied without passing through memory (convert -C:
     * transport_copy_range), where the format can place them; -ENOTSUP
     * when it cannot (the caller then writes the data itself).  Called as
     * pwritev is.  NULL: never. */
    int (*copy_range_to)(struct blockdev *bs, uint64_t off, uint64_t len, struct transport *src,
                         uint64_t src_off, struct err *e);
    /* Verify the image's metadata (and repair with BLK_CHECK_FIX_*, on a
     * writable open), counting problems in `res`; returns a negative errno
     * only when the check itself could not run.  NULL: no checks. */
    int (*check)(struct blockdev *bs, struct blk_check_result *res, unsigned fix,
                 struct err *e);
    /* Preferred alignment for writes (cluster size); 0 means 1. */
    uint32_t (*write_alignment)(struct blockdev *bs);
    /* Persistent dirty bitmaps (formats/blockdev-bitmaps.h); NULL when the
     * format cannot store them.  bitmaps_load adds the image's bitmaps to
     * bs with blk_bitmap_attach (those marked in use on disk flagged
     * inconsistent); with mark_in_use (writable opens) it then marks the
     * consistent ones in use on disk, flushed, before returning.
     * bitmaps_store writes the persistent bitmaps attached to bs as the
     * image's whole set, atomically: a crash at any point leaves the old or
     * the new set (plus leaked clusters); `in_use` is the flag the
     * consistent ones get.  bitmap_check_new says whether a new bitmap of
     * that name and granularity can be stored. */
    int (*bitmaps_load)(struct blockdev *bs, bool mark_in_use, struct err *e);
    int (*bitmaps_store)(struct blockdev *bs, bool in_use, struct err *e);
    int (*bitmap_check_new)(struct blockdev *bs, const char *name, uint32_t granularity,
                            struct err *e);
    /* imgtool's own record (the backup chain record of mirror/chain.h):
     * bytes the format keeps in the image where other tools that rewrite
     * the image keep them too (qcow2: a compatible header extension).
     * record_get returns them (NULL and *len 0: none), valid until the next
     * record_set or close; record_set replaces them (len 0: removes) and
     * makes the change durable before returning, or fails leaving the old
     * record.  NULL: the format has no place for one. */
    const void *(*record_get)(struct blockdev *bs, size_t *len);
    int (*record_set)(struct blockdev *bs, const void *data, size_t len, struct err *e);
    /* Size a new image of this format made with create options `opts`
     * (with "size"), or converted from `in` (may be NULL; its size then
     * wins) with those options, as QEMU's bdrv_measure.  Options the
     * driver uses are marked (kvopts_get).  NULL: cannot measure. */
    int (*measure)(struct kvopts *opts, struct blockdev *in, struct blk_measure *out,
                   struct err *e);
    /* Can `bs` (open with this driver) store persistent bitmaps as it is
     * (qcow2: version 3)?  NULL: as bitmaps_load says. */
    bool (*bitmaps_persistent)(struct blockdev *bs);
    /* Internal snapshots (NULL: the format has none).  Listed by get_info
     * ("snapshots").  create records the disk as it is now, under a new ID,
     * dated date_sec/date_nsec; delete removes the first snapshot named
     * `name`; apply makes the disk read as the snapshot with that ID (or
     * else name) did.  Writable open, nothing else running. */
    int (*snapshot_create)(struct blockdev *bs, const char *name, uint32_t date_sec,
                           uint32_t date_nsec, struct err *e);
    int (*snapshot_delete)(struct blockdev *bs, const char *name, struct err *e);
    int (*snapshot_apply)(struct blockdev *bs, const char *id_or_name, struct err *e);
    /* Make a read-only open read as the snapshot with that ID and name
     * (NULL: any) did, until close (convert -l; QEMU's
     * bdrv_snapshot_load_tmp, which keeps the image's virtual size).
     * -ENOENT, with no message, when no snapshot matches.  Before any I/O. */
    int (*snapshot_load)(struct blockdev *bs, const char *id, const char *name,
                         struct err *e);
    /* Change the image's format options in place (amend -o); the keys are
     * those of amend_options, checked by blk_amend.  NULL: cannot amend. */
    int (*amend)(struct blockdev *bs, struct kvopts *opts, const struct blk_progress *progress,
                 struct err *e);
};

/* --- Write notifiers ---
 *
 * One generic hook for whoever must see the guest writes of an image as
 * they happen (the live mirror of `imgtool serve --mirror`, mirror/active.h):
 * every write, zero write, discard and compressed write through the blk_*
 * functions calls each notifier's `before` once the request is checked
 * and the dirty bitmaps are marked, but before the request takes its
 * range in bs->requests, and `after` once the driver is done and the range
 * is released, before the caller (an NBD client's request) sees the
 * result.  A discard the driver cannot do changes nothing and notifies
 * nobody.
 *
 * Concurrency rules:
 *   - before/after run in the writing thread, concurrently for different
 *     writes (any ranges); `before` may block (to order the write after a
 *     job's own I/O on the range) and may refuse the write with a negative
 *     errno (after is then not called, the write fails with that error);
 *   - a notifier may take locks of its own in `before` and release them in
 *     `after`: no bs->requests range is held meanwhile, so a notifier may
 *     do I/O on bs (reads of the range) or on other images without a
 *     deadlock, as long as its own locks are always taken before the
 *     block layer's (never while holding a bs->requests range);
 *   - `token` is one pointer per notifier and write, from before to after;
 *   - blk_add_write_notifier and blk_remove_write_notifier may be called
 *     while I/O runs: they wait until the writes between before and after
 *     are done (new writes wait meanwhile), so every write sees a notifier
 *     either for both calls or for neither.  Never call them from a
 *     notifier, nor while a thread of yours waits in `before`. */
enum { BLK_MAX_WRITE_NOTIFIERS = 4 };

enum blk_write_kind {
    BLK_WRITE_DATA,         /* blk_pwritev: iov holds the data */
    BLK_WRITE_ZEROES,       /* blk_write_zeroes: flags are BLK_ZERO_* */
    BLK_WRITE_DISCARD,      /* blk_discard: reads may return anything the format says */
    BLK_WRITE_COMPRESSED,   /* blk_pwrite_compressed: iov holds the data */
};

struct blk_write_request {
    enum blk_write_kind kind;
    uint64_t offset, length;
    const struct iovec *iov;    /* DATA, COMPRESSED */
    int iovcnt;
    unsigned flags;             /* ZEROES */
};

struct blk_write_notifier {
    int (*before)(void *opaque, const struct blk_write_request *r, void **token,
                  struct err *e);
    /* ret: the driver's result (0 or a negative errno). */
    void (*after)(void *opaque, const struct blk_write_request *r, int ret, void *token);
    void *opaque;
};

struct blockdev {
    const struct blockdrv *drv;
    char *filename;             /* as given by the user */
    struct transport *file;     /* the file or NBD export holding the image */
    uint64_t size;              /* virtual disk size */
    unsigned open_flags;
    struct blk_open_opts opts;  /* as given to blk_open (the chain inherits them) */
    bool read_only;
    bool probed;                /* the format was probed, not given */
    void *opaque;               /* the driver's private state */
    /* Backing chain: the name stored in the image, the path it resolves to,
     * the stored format (or NULL), and the open backing image (or NULL). */
    char *backing_name;
    char *backing_path;
    char *backing_format;
    struct blockdev *backing;
    /* Dirty bitmaps (formats/blockdev-bitmaps.h): every write through the
     * blk_* functions marks the enabled ones.  bitmaps_lock serialises the
     * marking done by I/O threads and any access to bitmap contents while
     * I/O may run; the set itself changes only while no I/O is in flight. */
    struct dirty_bitmap **bitmaps;
    size_t nbitmaps;
    pthread_mutex_t bitmaps_lock;
    bool bitmaps_loaded;        /* the image's persistent bitmaps are attached */
    bool bitmaps_in_use;        /* marked in use on disk: stored again at close */
    bool bitmaps_released;      /* stored for good: no more guest writes */
    /* A read-only layer's last block status answer, [status_start,
     * status_start + status.length): callers walking an image ask for
     * every run from its start, and a lower layer of a chain is asked once
     * per run of the layer above, so the answer is reused instead of the
     * driver scanning the same run again.  Never set for writable opens
     * (their status changes); status_lock guards it (blk_block_status is
     * called from several threads). */
    pthread_mutex_t status_lock;
    bool status_valid;
    uint64_t status_start;
    struct blk_extent status;
    /* The reads and writes in flight, with their cluster-widened ranges
     * (see "Threads" above). */
    struct range_lock_set requests;
    /* Write notifiers (see blk_add_write_notifier): the list, and the
     * writes between their before and after calls (notifiers_users);
     * notifiers_lock guards both. */
    pthread_mutex_t notifiers_lock;
    pthread_cond_t notifiers_idle;
    struct blk_write_notifier *notifiers[BLK_MAX_WRITE_NOTIFIERS];
    size_t nnotifiers;
    unsigned notifiers_users;
    bool notifiers_changing;
};

/* --- Driver table and probing --- */
const struct blockdrv *blk_find_driver(const char *name);
/* Names of all drivers, NULL-terminated. */
const struct blockdrv *const *blk_drivers(void);
int blk_probe_file(struct transport *f, const struct blockdrv **drv, struct err *e);

/* blockdrv.measure of `format` (see struct blk_measure); the options are
 * all checked (an unknown key is an error).  -ENOTSUP when the format
 * cannot measure. */
int blk_measure(const char *format, struct kvopts *opts, struct blockdev *in,
                struct blk_measure *out, struct err *e);

/* Internal snapshots (blockdrv.snapshot_*): -ENOTSUP naming the format
 * when it has none, -ENOENT when there is no such snapshot.  Apply is
 * refused (-EBUSY) while the image has dirty bitmaps, as QEMU refuses. */
int blk_snapshot_create(struct blockdev *bs, const char *name, uint32_t date_sec,
                        uint32_t date_nsec, struct err *e);
int blk_snapshot_delete(struct blockdev *bs, const char *name, struct err *e);
int blk_snapshot_apply(struct blockdev *bs, const char *id_or_name, struct err *e);
/* blockdrv.snapshot_load on a read-only open, before any I/O: with `id` or
 * `name` (or both), the snapshot matching them; with only `id_or_name`,
 * the one with that ID, else the one with that name (QEMU's
 * bdrv_snapshot_load_tmp_by_id_or_name).  -ENOENT: none matches. */
int blk_snapshot_load(struct blockdev *bs, const char *id, const char *name,
                      const char *id_or_name, struct err *e);
/* blockdrv.amend after checking every key against the format's
 * amend_options (a create-only option is named as such). */
int blk_amend(struct blockdev *bs, struct kvopts *opts, const struct blk_progress *progress,
              struct err *e);

/* --- Open / close --- */
/* Open `filename` in format `format` (NULL = probe) and its backing chain.
 * `filename` is a path or an NBD URI (formats/nbd/nbd.h): exports are raw
 * (no probing, no backing chain, no locks; -f qcow2 is refused). */
int blk_open(const char *filename, const char *format, unsigned flags,
             const struct blk_open_opts *opts, struct blockdev **out, struct err *e);
void blk_close(struct blockdev *bs);
/* Create an image whole or not at all: written to a temporary file next to
 * the target, flushed, then renamed.  Error messages name the target. */
int blk_create(const char *format, const struct blk_create_params *p, struct err *e);
/* Open p->backing_file (relative to p->filename) as create would, to check
 * that it opens (qemu-img create does unless -u) and take its size. */
int blk_backing_size(const struct blk_create_params *p, uint64_t *size, struct err *e);
/* The same in steps, for commands that fill the new image before it may
 * appear: begin creates it under a temporary name in the target's
 * directory (returned in *tmp_path, malloc'ed) and flushes nothing (a crash
 * leaves a temporary file nobody opens); the caller opens it, fills it and
 * flushes it (blk_flush: that one flush makes the whole file durable, what
 * begin wrote too); commit flushes nothing but renames it into place and
 * syncs the directory (an error if that sync fails: the image is then in
 * place but perhaps not durable); abort removes it.  Block devices are
 * written in place (*tmp_path is then the device itself; begin flushes
 * their new header). */
int blk_create_begin(const char *format, const struct blk_create_params *p, char **tmp_path,
                     struct err *e);
int blk_create_commit(const char *tmp_path, const char *filename, struct err *e);
void blk_create_abort(const char *tmp_path, const char *filename);
/* Commit with the new image still open as bs (flushed by the caller), so
 * that it is never without its locks between a close and an open (serve's
 * switch to a mirror's target): bs and its file are called `filename`
 * from then on.  Only while no other thread uses bs. */
int blk_create_commit_open(struct blockdev *bs, const char *tmp_path, const char *filename,
                           struct err *e);
/* End BLK_OPEN_DROP_BEHIND: the copy into bs is over, it is an image like
 * any other from now on. */
void blk_keep_page_cache(struct blockdev *bs);

/* --- I/O: offsets and lengths are checked against bs->size --- */
int blk_pread(struct blockdev *bs, uint64_t off, void *buf, size_t len, struct err *e);
/* Map the first `len` bytes of a run of block status (blk_block_status_host)
 * read-only into memory (transport_map_read): the run's data as its layer
 * stores it, plainly at ext->host_offset of the layer's file, read without
 * a copy.  -ENOTSUP without a message when the run has no such data (zero,
 * unallocated, compressed: not BLK_STATUS_DATA | BLK_STATUS_OFFSET) or
 * the file cannot be mapped; on any failure the caller reads with
 * blk_pread instead.  The view bypasses the block layer's request order:
 * only for images nothing writes while it is mapped (open read-only, not
 * force-shared). */
int blk_map_run(const struct blk_extent *ext, size_t len, struct transport_view *v,
                struct err *e);
/* Copy [src_off, src_off + len) of src's disk to [off, off + len) of dst
 * by copy offloading (blockdrv.copy_range_to), the data never read into
 * memory: for each run of src's block status, from the host file that
 * holds it.  -ENOTSUP when some part cannot be offloaded (a compressed
 * cluster, a zero or unallocated run, NBD, a format that cannot place the
 * data, a probed target); what was copied before stays copied, so the
 * caller writes the whole range again another way. */
int blk_copy_range(struct blockdev *dst, uint64_t off, struct blockdev *src, uint64_t src_off,
                   uint64_t len, struct err *e);
int blk_pwrite(struct blockdev *bs, uint64_t off, const void *buf, size_t len, struct err *e);
int blk_preadv(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
               struct err *e);
int blk_pwritev(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                struct err *e);
int blk_write_zeroes(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                     struct err *e);
int blk_discard(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e);
int blk_flush(struct blockdev *bs, struct err *e);
/* Add or remove a write notifier (see "Write notifiers" above; the caller
 * owns *n until it is removed).  -ENOSPC when BLK_MAX_WRITE_NOTIFIERS are
 * there already. */
int blk_add_write_notifier(struct blockdev *bs, struct blk_write_notifier *n, struct err *e);
void blk_remove_write_notifier(struct blockdev *bs, struct blk_write_notifier *n);
/* Wait until no read or write is in flight on bs (the caller stops
 * issuing new ones first: a server that stops, a job that completes). */
void blk_drain(struct blockdev *bs);
/* For an image still under its temporary name (blk_create_begin): skip the
 * flushes that order metadata writes, as qemu-img's default cache=unsafe
 * does for every target; a crash then leaves only a temporary file that
 * nobody opens.  Call blk_defer_flushes(bs, false) and blk_flush before
 * blk_create_commit so that the image is durable when it appears. */
void blk_defer_flushes(struct blockdev *bs, bool defer);
int blk_truncate(struct blockdev *bs, uint64_t size, struct err *e);
uint32_t blk_write_alignment(struct blockdev *bs);
/* blockdrv.preallocate (never concurrently with anything else); a
 * mode the format has not is -ENOTSUP naming it (len 0: only that check). */
int blk_preallocate(struct blockdev *bs, uint64_t off, uint64_t len, enum blk_prealloc mode,
                    struct err *e);
/* Deallocate everything (blockdrv.make_empty): the image then reads as
 * its backing file.  Dirty bitmaps are not marked: commit calls it after
 * writing the same data into the backing file, so what the image reads
 * does not change.  -ENOTSUP naming the format when it cannot. */
int blk_make_empty(struct blockdev *bs, struct err *e);
/* Change the backing file name (and format, may be NULL) stored in the
 * image header; "" or NULL: no backing file.  The open chain is not
 * touched.  -ENOTSUP naming the format when it cannot. */
int blk_set_backing(struct blockdev *bs, const char *name, const char *format,
                    struct err *e);
/* The image's imgtool record (blockdrv.record_get): NULL, *len 0 when it
 * has none or its format cannot keep one. */
const void *blk_record_get(struct blockdev *bs, size_t *len);
/* Replace it (len 0: remove), durably; -ENOTSUP naming the format when it
 * has no place for one, -EROFS on a read-only open. */
int blk_record_set(struct blockdev *bs, const void *data, size_t len, struct err *e);
/* Run the driver's check; -ENOTSUP when the format has none. */
int blk_check(struct blockdev *bs, struct blk_check_result *res, unsigned fix, struct err *e);
/* Add a problem description to res->messages (printf-style). */
void blk_check_report(struct blk_check_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void blk_check_result_free(struct blk_check_result *res);
/* Compressed writes: -ENOTSUP naming the format when it has none. */
int blk_pwrite_compressed(struct blockdev *bs, uint64_t off, const void *buf, size_t len,
                          struct err *e);
/* 0 if format `drv` writes compressed clusters, else that same -ENOTSUP
 * error naming `filename` (to refuse -c before creating a target). */
int blk_check_compression(const struct blockdrv *drv, const char *filename, struct err *e);

/* Status of the run at `off` in this layer only (see blockdrv.block_status). */
int blk_block_status_layer(struct blockdev *bs, uint64_t off, uint64_t bytes,
                           struct blk_extent *ext, struct err *e);
/* Status of the run at `off` resolved through the backing chain: the
 * result says which layer (depth) provides it, and ranges past the end of a
 * shorter backing file read as zero.  At most `bytes` long. */
int blk_block_status(struct blockdev *bs, uint64_t off, uint64_t bytes,
                     struct blk_extent *ext, struct err *e);
/* Like blk_block_status but stops descending at `base` (exclusive): a run
 * that no layer above `base` allocates is reported without ALLOCATED.  The
 * zeroes past the end of a layer above `base` that is shorter than the
 * image count as allocated (by that layer), as in QEMU. */
int blk_block_status_above(struct blockdev *bs, const struct blockdev *base, uint64_t off,
                           uint64_t bytes, struct blk_extent *ext, struct err *e);
/* What the image's top layer allocates (BLK_STATUS_ALLOCATED), as
 * blk_block_status_above with `base` its backing file; for an image
 * without one whose storage is itself layered (an NBD export of a qcow2
 * chain offering qemu:allocation-depth), what the export's top layer
 * allocates; otherwise everything. */
int blk_block_status_top(struct blockdev *bs, uint64_t off, uint64_t bytes,
                         struct blk_extent *ext, struct err *e);
/* Whether blk_write_zeroes with BLK_ZERO_FAST can succeed at all (an NBD
 * server that advertises fast zeroes). */
bool blk_can_zero_fast(struct blockdev *bs);
/* Make [off, off+len) read as zeroes: blk_write_zeroes with `flags` on
 * every run block status does not already report as zero (QEMU's
 * bdrv_make_zero).  With BLK_ZERO_FAST a slow target fails with -ENOTSUP,
 * possibly after zeroing a part. */
int blk_make_zero(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                  struct err *e);

/* Like blk_block_status, and a data run with BLK_STATUS_RECURSE mapped to a
 * host file range that is a hole in that file (or past its end) also gets
 * BLK_STATUS_ZERO, as QEMU refines a format's status with its protocol
 * layer's (want_zero). */
int blk_block_status_host(struct blockdev *bs, uint64_t off, uint64_t bytes,
                          struct blk_extent *ext, struct err *e);

/* Helper for drivers: read `len` bytes at `off` of the backing chain into
 * the iovec (zeroes past the backing file's end or without backing). */
int blk_read_backing(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e);

/* The name to store in an image header for backing file `name`: a name
 * that QEMU would read as a protocol (a ':' before any '/', as in
 * "x:y.qcow2") gets "./" in front.  Returns a malloc'ed string or NULL. */
char *blk_backing_name_for_header(const char *name);
/* Resolve a backing file name relative to the directory of the image that
 * names it (QEMU's rule); returns a malloc'ed path or NULL on ENOMEM. */
char *blk_resolve_backing_path(const char *image_path, const char *backing_name);
/* The member of bs's open chain (bs itself included) whose file is `path`
 * (the same file, however it is named, or the same NBD server and export),
 * or NULL. */
struct blockdev *blk_chain_find(struct blockdev *bs, const char *path);
/* The backing file (at any depth) of `top` that the user names `name`, as
 * QEMU's bdrv_find_backing_image: the name stored in the image above it, or
 * a path that, if relative, is relative to the directory of that image (as
 * backing file names are), naming the same file.  NULL if none. */
struct blockdev *blk_chain_find_backing(struct blockdev *top, const char *name);
/* Whether `name` designates bs's own storage (blk_chain_find on bs alone). */
bool blk_is_named(const struct blockdev *bs, const char *name);
/* Whether two open images are the same storage (file or export). */
bool blk_same_storage(const struct blockdev *a, const struct blockdev *b);
/* -EINVAL naming the target when it is `source` or one of its backing
 * files: the same file, or the same NBD server and export (where no lock
 * tells). */
int blk_check_distinct(const struct blockdev *target, const struct blockdev *source,
                       struct err *e);
/* Whether `name` is a network URI (an NBD export), not a path. */
bool blk_name_is_network(const char *name);
/* Whether bs's own data lives on a network transport (an NBD export). */
bool blk_is_network(const struct blockdev *bs);
/* Whether a target name exists: a file that exists, or any NBD URI (an
 * export can only be written into, never created). */
bool blk_target_exists(const char *name);
/* Reopen `layer`, a backing file in top's open chain, read-write (commit
 * writes into it), as a writable blk_open would: its dirty bitmaps are
 * loaded and marked in use, and it takes the write locks.  Its own backing
 * chain stays read-only.  On success the old layer is closed and *out is
 * the new one, linked into the chain in its place; on failure the chain
 * is unchanged. */
int blk_reopen_writable(struct blockdev *top, struct blockdev *layer, struct blockdev **out,
                        struct err *e);

/* Common `info` fields plus the driver's format-specific data. */
int blk_get_info(struct blockdev *bs, struct prop **out, struct err *e);


#endif
