/* The copy engine shared by convert, mirror, export, rebase and commit:
 * one loop that walks the source's block status, reads only what holds
 * data, writes zero ranges as zeroes (or not at all where the target
 * already reads zeroes), and reports progress through a callback.
 *
 * Several requests are in flight at once: the calling thread walks the
 * block status and hands out chunks (at most buf_size bytes of data each,
 * cut at the target's cluster boundaries) to a small pool of worker
 * threads that read, write or zero them.  Callers see none of this: they
 * fill a copy_job, call copy_run, and get one result. */
#ifndef IMGTOOL_COPY_H
#define IMGTOOL_COPY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"

struct copy_stats {
    uint64_t bytes_read;        /* read from the source */
    uint64_t bytes_written;     /* data written to the target (before compression) */
    uint64_t bytes_zeroed;      /* written to the target as zeroes */
    uint64_t bytes_skipped;     /* not written: already right on the target */
    uint64_t bytes_compared;    /* skip_identical: read from the target to compare */
};

/* What to do when a request fails (--on-source-error, --on-target-error). */
enum copy_error_action {
    COPY_ERROR_REPORT,      /* stop the copy and fail */
    COPY_ERROR_IGNORE,      /* skip the request's range, go on, fail at the end */
    COPY_ERROR_RETRY,       /* retry the request (COPY_RETRIES times), then report */
};

/* A byte range of the disk. */
struct copy_range {
    uint64_t offset, length;
};

struct copy_job {
    struct blockdev *src;
    /* The source may end before offset+length, or be NULL: past its end
     * it reads as zeroes (rebase: the old backing file may be shorter than
     * the image, or there may be none).  Otherwise the whole range must lie
     * inside the source. */
    bool source_zero_past_end;
    /* Copy only what the layers above `base` allocate (NULL: the whole
     * chain, flattened).  Ranges no layer above base allocates are left
     * alone: the target reads them from its own backing file. */
    const struct blockdev *base;
    /* Copy only what the source's top layer allocates (blk_block_status_top:
     * for an NBD export, its qemu:allocation-depth), as `base` does for a
     * source with a backing file; the rest is left alone likewise. */
    bool top_layer_only;
    struct blockdev *dst;
    uint64_t offset, length;    /* the range to copy */
    /* The source's bytes for target offset X are those at X + src_shift
     * (0: the same offsets; convert concatenating several sources, dd
     * skip=).  [offset + src_shift, + length) must lie in the source;
     * not with source_zero_past_end. */
    int64_t src_shift;
    bool target_is_zero;        /* the target reads as zeroes everywhere */
    /* Zero ranges of the source become allocated zeroes in the target
     * (qcow2 zero clusters), even where the target reads zeroes now because
     * nothing is allocated there: for a diff image that will be rebased
     * onto a backing file later, an unallocated range would show the
     * backing file's data instead of the zeroes.  Excludes target_is_zero. */
    bool explicit_zeroes;
    /* Write only what the target does not already hold (rebase, where the
     * target reads through a new backing file what the source reads
     * through the old one).  Each DATA chunk's current contents are read
     * from the target as well and compared unit by unit (a target cluster,
     * or the zero detection unit if larger); a unit that differs is
     * written whole from the source, one that is the same is skipped.  A
     * zero run of the source is zeroed only where the target does not
     * read zeroes: block status first (no read where it says zero), then
     * the target's data is read and only its non-zero units are zeroed.
     * Excludes compress, target_is_zero and explicit_zeroes. */
    bool skip_identical;
    /* Bytes per request (0: 2 MiB, or 512 KiB when the source or the
     * target is an NBD export, so that a request's data stays in the CPU
     * cache between its copies; copy.c). */
    size_t buf_size;
    /* Requests in flight at once, each in its own worker thread with its
     * own buf_size buffer (two with skip_identical) (0 means
     * COPY_DEFAULT_IN_FLIGHT, or COPY_NETWORK_IN_FLIGHT when the source or
     * the target is an NBD export; at most COPY_MAX_IN_FLIGHT).  Requests
     * complete out of order. */
    unsigned max_in_flight;
    /* Write data as compressed clusters (blk_pwrite_compressed): every
     * chunk then covers whole target clusters (blk_write_alignment), and a
     * cluster that only partly lies in [offset, offset+length) and does not
     * end the disk is written uncompressed.  copy_run fails with -ENOTSUP
     * at once if the target's format has no compression. */
    bool compress;
    /* Smallest unit in which zero data is detected and skipped; 0 means
     * 4 KiB or the target's write alignment, whichever is larger. */
    uint32_t zero_detect;
    /* No zero detection at all (convert -S 0): every byte of the range is
     * written as data, the source's zero and unallocated runs too, so that
     * the target ends up fully allocated (SKIP runs above `base` are still
     * left alone).  Excludes target_is_zero's shortcut (nothing is skipped). */
    bool write_zeroes_as_data;
    /* convert -C: the source's data runs are copied by blk_copy_range
     * (copy_file_range between host files) instead of through a buffer,
     * and, as with qemu-img -C, written as they are, without zero
     * detection.  At the first chunk that cannot be offloaded (a compressed
     * cluster, a qcow2 or NBD target ...) the engine stops trying and copies
     * that chunk and the rest through its buffers, still without zero
     * detection.  Excludes compress and skip_identical. */
    bool copy_offload;
    /* Called as requests complete, always from the thread that called
     * copy_run (never concurrently), with the bytes of the range completed
     * so far: `done` only grows and reaches `total` on success.  May be
     * NULL. */
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *opaque;
    /* Copy only these ranges (sorted, not overlapping, non-empty, inside
     * [offset, offset+length)) instead of all of [offset, offset+length):
     * mirror and export pass the dirty extents of a bitmap, widened to the
     * target's clusters.  A chunk never crosses a range boundary, so ranges
     * should start and end on target cluster boundaries (or the disk's
     * end); progress then counts the bytes of the ranges.  NULL: the whole
     * of [offset, offset+length) is one range. */
    const struct copy_range *ranges;
    size_t nranges;
    /* Called when every write of range `index` (of `ranges`, or 0 for the
     * whole range) has returned, from the thread that called copy_run,
     * never concurrently, in no particular order.  A job that fails may
     * have completed some ranges: only those are reported.  Returned is
     * not durable: the data may still be in caches until blk_flush of the
     * target, so a caller that clears dirty bits notes the range and
     * clears them only after that flush succeeded (mirror/job.h).  May be
     * NULL. */
    void (*range_done)(void *opaque, size_t index);
    /* Rate limit in bytes per second of I/O (data read from the source
     * and zero ranges written to the target; holes skipped by block status
     * cost nothing).  0: unlimited. */
    uint64_t speed;
    /* Failed reads of the source and failed writes (or block status) of
     * the target.  An ignored failure leaves its range unreported to
     * range_done, and copy_run returns -EIO after copying the rest. */
    enum copy_error_action on_source_error, on_target_error;
    /* convert --salvage, as qemu-img's: a read of the source that fails
     * is tried again sector by sector (512 bytes); a sector that still
     * fails reads as zeroes and is passed to `salvaged` (its source offset
     * and the error), and the copy goes on and succeeds.  salvaged is
     * called from worker threads, one call at a time; may be NULL.
     * Failures of block status and of the target are not salvaged. */
    bool salvage;
    void (*salvaged)(void *opaque, uint64_t src_offset, const struct err *e);
    /* Set asynchronously (signal handler) to stop the copy: copy_run then
     * returns -ECANCELED.  Requests already running finish first.  A C11
     * atomic (lock-free, so a signal handler may store it) because worker
     * threads read it too: a volatile sig_atomic_t flag orders accesses only
     * between a thread and its own signal handler. */
    const atomic_int *cancel;
    /* Run on these kept workers (copy_workers_start) instead of starting
     * threads and buffers of copy_run's own: max_in_flight is then theirs.
     * NULL: copy_run's own. */
    struct copy_workers *workers;
    struct copy_stats stats;
};

enum {
    COPY_RETRIES = 3,           /* COPY_ERROR_RETRY: attempts after the first */
    COPY_DEFAULT_IN_FLIGHT = 4,
    /* From or to an NBD export every request is a round trip: more of
     * them in flight keep the server's disk busy while replies travel
     * (the dirty 64 KiB clusters of a pull backup, each a request of its
     * own; the 512 KiB requests of a whole-disk copy).  16 is what QEMU's
     * NBD server works on at once per connection. */
    COPY_NETWORK_IN_FLIGHT = 16,
    COPY_MAX_IN_FLIGHT = 64,
};

/* Copy; on failure the first error wins (the rest of the work is
 * abandoned and every worker has stopped before copy_run returns), and the
 * target holds a partial copy.  job->stats is filled in either case. */
int copy_run(struct copy_job *job, struct err *e);

/* Worker threads with their buffers, kept across the copy_run calls of a
 * caller that copies many small batches (the live mirror's background
 * pass, mirror/active.c): for a batch of a few MiB, starting threads and
 * faulting in fresh buffers is a good part of the cost.  Started for copies
 * like `job` (its dst, buf_size, max_in_flight or the default, and
 * skip_identical size the buffers; nothing else of it is kept); a copy_run
 * whose requests need bigger buffers fails with -EINVAL.
 *
 * Threads: start, stop and the copy_run calls that pass them may come from
 * any thread, but one at a time: one copy_run on them at once, and stop
 * only when none runs.  Between runs the workers sleep. */
struct copy_workers;
int copy_workers_start(const struct copy_job *job, struct copy_workers **out, struct err *e);
void copy_workers_stop(struct copy_workers *workers);  /* joins them; NULL: nothing */

#endif
