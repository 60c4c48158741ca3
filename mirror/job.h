/* Mirror jobs: copy an image, the top of its chain, or what a dirty bitmap
 * marks, to a new or existing target, as one-shot offline versions of
 * QEMU's drive-mirror sync modes.  Several jobs can run as one set that
 * succeeds or fails as a whole.  The library reports events through a
 * callback and never prints; cmd/mirror.c renders them. */
#ifndef IMGTOOL_MIRROR_JOB_H
#define IMGTOOL_MIRROR_JOB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"
#include "mirror/chain.h"
#include "mirror/copy.h"

enum mirror_sync {
    MIRROR_SYNC_FULL,       /* the whole disk, chain flattened */
    MIRROR_SYNC_TOP,        /* only the top layer; target backed like the source */
    MIRROR_SYNC_NONE,       /* nothing now; target backed by the source */
    MIRROR_SYNC_BITMAP,     /* only what a dirty bitmap marks */
};

enum mirror_bitmap_mode {
    MIRROR_BITMAP_ON_SUCCESS,   /* clear the copied bits only if the job succeeds */
    MIRROR_BITMAP_ALWAYS,       /* clear the bits of what was copied, even on failure */
    MIRROR_BITMAP_NEVER,        /* leave the bitmap alone */
};

enum mirror_target_mode {
    MIRROR_TARGET_AUTO,             /* existing if the target exists, else absolute */
    MIRROR_TARGET_EXISTING,         /* use it as it is, never truncate */
    MIRROR_TARGET_ABSOLUTE_PATHS,   /* create; backing file name absolute */
    MIRROR_TARGET_RELATIVE_PATHS,   /* create; backing file name relative to target */
};

struct mirror_params {
    const char *source, *source_format;
    const char *target, *target_format;     /* target_format NULL: the source's */
    struct kvopts *target_opts;             /* -o for a new target */
    enum mirror_sync sync;
    const char *base;                       /* --base: copy what lies above it */
    /* MIRROR_SYNC_BITMAP: the bitmap whose dirty ranges are copied.  With
     * FULL: a bitmap that a successful copy clears (bitmap_mode permitting),
     * created first when bitmap_create is set, as QEMU's backup jobs
     * synchronise a bitmap with a full backup. */
    const char *bitmap;
    enum mirror_bitmap_mode bitmap_mode;
    bool bitmap_create;
    /* On success, add this persistent bitmap to the source (a checkpoint:
     * it records every write from now on); stored with the bitmap changes
     * in one atomic update.  NULL: none. */
    const char *checkpoint;
    /* Open the source for bitmap changes even when none is planned, so that
     * a second job on the same image is refused by the image lock. */
    bool exclusive;
    /* A new target is backed by this image (which must have the source's
     * size) instead of what the sync mode implies: export's diff images
     * backed by the previous backup, mirror -o backing_file.  A relative
     * name is relative to the target's directory, as in create -b. */
    const char *target_backing, *target_backing_format;
    /* export: the backup chain record to check and write (mirror/chain.h);
     * NULL for other jobs, which are then refused a bitmap that tracks an
     * export chain unless force_bitmap is set. */
    const struct chain_params *chain;
    bool force_bitmap;
    bool compress;                          /* write compressed clusters */
    enum mirror_target_mode target_mode;
    enum copy_error_action on_source_error, on_target_error;
    bool force_share;                       /* -U on the source */
    bool target_is_zero;
    size_t buf_size;
    int max_in_flight;
    uint64_t speed;                         /* bytes per second, 0 = unlimited */
};

enum mirror_event_type {
    MIRROR_EVENT_STARTED,
    MIRROR_EVENT_PROGRESS,
    MIRROR_EVENT_READY,         /* all data copied; the target is in sync */
    MIRROR_EVENT_COMPLETED,
    MIRROR_EVENT_FAILED,
    MIRROR_EVENT_CANCELLED,
};

struct mirror_event {
    enum mirror_event_type type;
    const struct mirror_params *job;
    uint64_t done, total;           /* bytes of this job */
    uint64_t offset, length;        /* PROGRESS: the range that just completed */
    /* Live mirror (mirror/active.h): the dirty bytes now (total is then
     * done + remaining, QMP's len; it grows as clients write). */
    uint64_t remaining;
    const char *error;              /* FAILED */
    const struct copy_stats *stats; /* COMPLETED */
};

struct mirror_set_options {
    void (*event)(void *opaque, const struct mirror_event *ev);
    void *opaque;
    const atomic_int *cancel;
    /* Settings for every image the jobs open (NULL: the defaults). */
    const struct blk_open_opts *open_opts;
};

/* The rule for every job that clears dirty bits (mirror and export here;
 * commit, rebase and bitmap operations if they ever do): a bit is cleared
 * only for data that a flush of the target has made durable, on success
 * and failure alike.  A returned write may sit in the page cache or in
 * qcow2's L2/refcount caches; a power failure would lose it while a stored
 * bitmap no longer marks it.  So ranges whose writes returned are only
 * noted; after the copy (whatever its outcome) the target is flushed
 * (blk_flush: cached metadata written, then fdatasync, raw targets too),
 * then the noted ranges are cleared, and only then is the source's bitmap
 * stored.  If the flush fails, no bit is cleared.  A new target appears
 * (rename, directory synced) before its bits are cleared.
 * tests/t500-powerloss-mirror.sh checks it against every crash state the
 * power-loss harness (tests/crash/README) derives.
 *
 * Run `n` jobs as one set: targets are prepared (new ones under temporary
 * names), then copied one after the other; only when all succeed are new
 * targets renamed into place and bitmaps cleared as their modes say.  On
 * failure or cancellation new targets are removed and every bitmap is left
 * as its mode says for a failed job.  Returns 0, -ECANCELED or an error. */
int mirror_run_set(const struct mirror_params *jobs, int n,
                   const struct mirror_set_options *opts, struct err *e);

/* One job's steps, for the live mirror of `imgtool serve --mirror`
 * (mirror/active.c), which copies while clients write: the same checks,
 * target preparation (a new target under a temporary name), bitmap freeze,
 * rename and bitmap-mode rules as mirror_run_set, on `src`, an image the
 * caller has open (read-write, bitmaps loaded) and keeps open.  The caller
 * copies (copy_run into mirror_job_target, above mirror_job_base, the
 * ranges of a --sync=bitmap job), flushes with mirror_job_flush_target
 * (flushes of a new target are no longer deferred from then on), then ends
 * the job: keep_target renames a new target into place (else it is
 * removed); the bitmap (not frozen: written ahead, see
 * mirror_job_write_ahead_bitmap) is cleared on success when in_sync (the
 * target holds every write made meanwhile) and otherwise keeps all its
 * bits; then the bitmaps are stored.  No guest write may run while the
 * job ends (threads may still mark the bitmaps: the bitmaps lock is held). */
struct mirror_job;
int mirror_job_prepare(const struct mirror_params *p, const struct mirror_set_options *opts,
                       struct blockdev *src, struct mirror_job **out, struct err *e);
struct blockdev *mirror_job_target(const struct mirror_job *job);
const struct blockdev *mirror_job_base(const struct mirror_job *job);
bool mirror_job_new_target(const struct mirror_job *job);
/* --sync=bitmap: the bitmap's dirty extents, widened to the target's
 * clusters, as prepared (sorted, disjoint). */
const struct copy_range *mirror_job_ranges(const struct mirror_job *job, size_t *n);
int mirror_job_flush_target(struct mirror_job *job, struct err *e);
/* The job's bitmap when it is written ahead (bitmap/dirty.h) rather than
 * frozen, as the live mirror's is unless --bitmap-mode=never: the caller
 * stores it before a write it records reaches the disk.  Else NULL. */
struct dirty_bitmap *mirror_job_write_ahead_bitmap(const struct mirror_job *job);
/* Frees the job whatever happens; the first error is returned.  With
 * `handover` (and keep_target), the target is not closed but passed to
 * the caller in *handover, open as the job had it: renamed into place if
 * new, its bitmaps still in use, its written pages no longer dropped
 * (blk_keep_page_cache); the caller closes it.  *handover is NULL on
 * failure (the target is then closed, as without it). */
int mirror_job_end(struct mirror_job *job, bool keep_target, bool success, bool in_sync,
                   struct blockdev **handover, struct err *e);

/* Parsers shared by the command line and job files. */
int mirror_parse_sync(const char *s, enum mirror_sync *sync, bool *incremental);
int mirror_parse_bitmap_mode(const char *s, enum mirror_bitmap_mode *mode);
int mirror_parse_target_mode(const char *s, enum mirror_target_mode *mode);
int mirror_parse_error_action(const char *s, enum copy_error_action *action);
const char *mirror_sync_name(enum mirror_sync sync);

#endif
