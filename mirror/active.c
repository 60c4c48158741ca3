/* The live mirror (mirror/active.h), as QEMU's mirror job with its
 * background and write-blocking copy modes (seed active-mirror-2017.txt).
 *
 * Dirty tracking: the job's own bitmap `dirty` (granularity `gran`: 4 KiB,
 * or for a diff target the target's cluster and the --bitmap's granularity)
 * starts with what the sync mode copies and is marked by a write notifier
 * on the source (formats/blockdev.h) after every client write.
 *
 * No race between clients and the copy: every client write holds its
 * range, widened to `gran`, in the job's own range lock set `ranges` from
 * before it reaches the source until it is done (and, in write-blocking
 * mode, written to the target); the background pass holds the ranges it
 * copies there while it reads the source and writes the target.  The
 * job's locks are always taken before the source's request ranges (never
 * while one is held), so the two sets cannot deadlock, and overlapping
 * client writes reach the target in the order they reached the source.
 *
 * Write-blocking mode writes the part of a client write that covers whole
 * granules to the target and clears only those: the unaligned edges are
 * marked dirty and the background pass copies those granules whole from
 * the source, so a diff target (--sync=bitmap) never gets a half-written
 * cluster that hides its backing file (seed mirror-bitmap-modes-2024.txt).
 * Discards are never written through: what a discarded range reads is
 * the format's business, so it is marked dirty and copied.
 *
 * The --sync=bitmap job's bitmap is not frozen but written ahead
 * (bitmap/dirty.h): it keeps its bits and records the client writes as
 * usual, and before a write that sets one of its granules that is clean on
 * disk reaches the source, the bitmaps are stored; so after a crash it is
 * consistent and marks all that is still to copy.  Only a completion in
 * sync clears it (--bitmap-mode=always thus behaves as on-success).
 *
 * Ending: complete, cancel and failure close a gate in the notifier (new
 * client writes wait), wait for the writes in flight, then end the job
 * with mirror/job.c's rules (rename, bitmap modes, flush before bits go).
 * After a completion the source refuses writes (the target is the disk
 * now); after a cancel or failure writes go on to the source untracked. */
#include "mirror/active.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bitmap/hbitmap.h"
#include "formats/blockdev-bitmaps.h"

enum {
    MIN_GRANULARITY = 4096,
    BATCH_RUNS = 64,                /* locked runs per batch (one copy_run) */
    BATCH_RANGES = 256,             /* dirty extents copied per batch */
    /* Dirty extents this close share one locked run: a batch of scattered
     * extents then fills its budget (and the copy engine's workers)
     * instead of ending at BATCH_RUNS small extents.  Client writes into
     * the clean gaps wait for the batch as writes to its extents do. */
    COALESCE_GAP = 1u << 20,
    IGNORED_ERROR_PAUSE_MS = 100,   /* --on-target-error=ignore: before trying again */
};

struct active_mirror {
    struct active_mirror_params p;
    char *id;
    struct blockdev *src, *dst;
    struct mirror_job *job;
    struct mirror_set_options set_opts;
    /* active_mirror_complete_handover: the job ends by handing its target
     * over (handed) instead of closing it. */
    bool handover;
    struct blockdev *handed;
    const struct blockdev *base;
    bool diff_image;                /* --sync=bitmap: zeroes are written explicitly */
    uint64_t gran;
    uint64_t batch_bytes;
    /* The background pass's copy workers, kept from batch to batch (the
     * job's thread starts and stops them, in copy_loop). */
    struct copy_workers *workers;

    pthread_mutex_t lock;           /* everything below, and `dirty` */
    pthread_cond_t changed;
    struct hbitmap *dirty;
    enum active_status status;
    enum active_copy_mode copy_mode;
    uint64_t speed;
    uint64_t done;                  /* bytes copied or written through */
    uint64_t copied;                /* of which copied by the background pass (--speed) */
    uint64_t batch_left;            /* taken by the batch copying now, not done yet */
    bool ready;
    bool complete_requested;
    bool gate_closed;               /* new client writes wait in the notifier */
    bool detached;                  /* the notifier lets writes pass untouched */
    bool refuse_writes;             /* completed: the source is not the disk any more */
    bool target_dirty;              /* written since the last target flush */
    unsigned writers;               /* client writes between before and after */
    int failure;                    /* a write-through failed (report) */
    struct err failure_err;
    int result;                     /* once CONCLUDED */
    char *error;
    struct copy_stats stats;

    atomic_int cancel;
    struct range_lock_set ranges;
    struct blk_write_notifier notifier;
    bool notifier_added;
    pthread_t thread;
    bool thread_started;
    /* --sync=bitmap: the bitmap, written ahead (bitmap/dirty.h), and the
     * granules it has set on disk; wa_lock serialises the stores. */
    struct dirty_bitmap *wa;
    struct hbitmap *wa_disk;
    pthread_mutex_t wa_lock;
    pthread_mutex_t event_lock;
    struct timespec started_at;     /* --speed: the pace counts from here ... */
    uint64_t paced_from;            /* ... and from these bytes copied */
};

/* --- Events --- */

static void emit(struct active_mirror *m, enum mirror_event_type type, uint64_t offset,
                 uint64_t length, const char *error)
{
    if (!m->p.event)
        return;
    pthread_mutex_lock(&m->lock);
    uint64_t remaining = hbitmap_count(m->dirty) + m->batch_left;
    struct mirror_event ev = {
        .type = type, .job = &m->p.mirror, .done = m->done, .total = m->done + remaining,
        .remaining = remaining, .offset = offset, .length = length, .error = error,
        .stats = &m->stats,
    };
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_lock(&m->event_lock);
    m->p.event(m->p.opaque, &ev);
    pthread_mutex_unlock(&m->event_lock);
}

/* --- The write notifier (client threads) --- */

static void range_of(const struct active_mirror *m, uint64_t off, uint64_t len,
                     uint64_t *start, uint64_t *end)
{
    *start = align_down(off, m->gran);
    *end = min_u64(align_up(off + len, m->gran), align_up(m->src->size, m->gran));
}

/* Store the bitmaps before a write that marked a granule of the job's
 * bitmap that is clean on disk reaches the source: the bitmap on disk then
 * never misses a write, and a crash (kill -9) leaves it consistent with
 * everything still to copy, so that a later run resumes. */
static int write_ahead(struct active_mirror *m, const struct blk_write_request *r,
                       struct err *e)
{
    if (!m->wa || !dirty_bitmap_enabled(m->wa))
        return 0;
    pthread_mutex_lock(&m->wa_lock);
    int ret = 0;
    if (hbitmap_next_clean(m->wa_disk, r->offset, r->length) >= 0) {
        blk_bitmaps_lock(m->src);
        ret = blk_bitmaps_store(m->src, e);
        blk_bitmaps_unlock(m->src);
        if (ret == 0)
            hbitmap_set(m->wa_disk, r->offset, r->length);
        else
            err_prefix(e, "bitmap '%s' cannot record the write: ", dirty_bitmap_name(m->wa));
    }
    pthread_mutex_unlock(&m->wa_lock);
    return ret;
}

static void writer_done(struct active_mirror *m)
{
    pthread_mutex_lock(&m->lock);
    m->writers--;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
}

/* Let a client write in, or hold it while the job starts or ends. */
static int on_before_write(void *opaque, const struct blk_write_request *r, void **token,
                           struct err *e)
{
    struct active_mirror *m = opaque;
    pthread_mutex_lock(&m->lock);
    while (m->gate_closed && !m->detached)
        pthread_cond_wait(&m->changed, &m->lock);
    if (m->refuse_writes) {
        pthread_mutex_unlock(&m->lock);
        return err_set(e, EIO, "%s: the mirror to %s completed: the source takes no more "
                       "writes", m->src->filename, m->p.mirror.target);
    }
    if (m->detached) {
        pthread_mutex_unlock(&m->lock);
        return 0;
    }
    m->writers++;
    pthread_mutex_unlock(&m->lock);
    int ret = write_ahead(m, r, e);
    struct range_lock *lock = ret == 0 ? malloc(sizeof(*lock)) : NULL;
    if (!lock) {
        writer_done(m);
        return ret < 0 ? ret : err_set(e, ENOMEM, "out of memory");
    }
    uint64_t start, end;
    range_of(m, r->offset, r->length, &start, &end);
    range_lock_acquire(&m->ranges, lock, start, end, true);
    *token = lock;
    return 0;
}

/* The iovec of bytes [skip, skip + len) of `iov` into `out` (room for
 * iovcnt entries); returns the number of entries. */
static int iov_slice(const struct iovec *iov, int iovcnt, size_t skip, size_t len,
                     struct iovec *out)
{
    int n = 0;
    for (int i = 0; i < iovcnt && len; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        size_t take = min_u64(iov[i].iov_len - skip, len);
        out[n++] = (struct iovec){ (char *)iov[i].iov_base + skip, take };
        len -= take;
        skip = 0;
    }
    return n;
}

/* Write-blocking: the whole granules of the client write, to the target. */
static int write_through(struct active_mirror *m, const struct blk_write_request *r,
                         uint64_t from, uint64_t to, struct err *e)
{
    if (r->kind == BLK_WRITE_ZEROES)
        return blk_write_zeroes(m->dst, from, to - from,
                                m->diff_image ? 0 : (r->flags & BLK_ZERO_MAY_UNMAP), e);
    struct iovec *part = calloc((size_t)r->iovcnt, sizeof(*part));
    if (!part)
        return err_set(e, ENOMEM, "out of memory");
    int n = iov_slice(r->iov, r->iovcnt, from - r->offset, to - from, part);
    int ret = blk_pwritev(m->dst, from, part, n, e);
    free(part);
    return ret;
}

/* The part of [off, off+len) that covers whole granules (the last one may
 * end at the disk's end); empty when from >= to. */
static void whole_granules(const struct active_mirror *m, uint64_t off, uint64_t len,
                           uint64_t *from, uint64_t *to)
{
    *from = align_up(off, m->gran);
    *to = off + len == m->src->size ? off + len : align_down(off + len, m->gran);
}

/* Mark what the target does not have yet: all of it, or in
 * write-blocking mode what was not written through. */
static void on_after_write(void *opaque, const struct blk_write_request *r, int ret,
                           void *token)
{
    struct active_mirror *m = opaque;
    struct range_lock *lock = token;
    if (!lock)
        return;
    pthread_mutex_lock(&m->lock);
    bool through = ret == 0 && m->copy_mode == ACTIVE_COPY_WRITE_BLOCKING && !m->failure &&
                   r->kind != BLK_WRITE_DISCARD;
    pthread_mutex_unlock(&m->lock);
    uint64_t from = 0, to = 0;
    if (through)
        whole_granules(m, r->offset, r->length, &from, &to);
    struct err e = { 0 };
    int wret = from < to ? write_through(m, r, from, to, &e) : 0;
    pthread_mutex_lock(&m->lock);
    if (from < to && wret == 0) {
        if (from > r->offset)
            hbitmap_set(m->dirty, r->offset, from - r->offset);
        if (r->offset + r->length > to)
            hbitmap_set(m->dirty, to, r->offset + r->length - to);
        /* The granules written through are as the source now, even if the
         * background pass had them dirty from an earlier write. */
        hbitmap_reset(m->dirty, from, to - from);
        m->done += to - from;
        m->target_dirty = true;
    } else {
        hbitmap_set(m->dirty, r->offset, r->length);
        if (wret < 0 && m->p.mirror.on_target_error == COPY_ERROR_REPORT && !m->failure) {
            m->failure = wret;
            m->failure_err = e;
        }
    }
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
    range_lock_release(&m->ranges, lock);
    free(lock);
    writer_done(m);
}

/* Close the gate and wait for the client writes in flight (lock held). */
static void quiesce_locked(struct active_mirror *m)
{
    m->gate_closed = true;
    while (m->writers)
        pthread_cond_wait(&m->changed, &m->lock);
}

/* Let writes pass untouched from now on (or be refused after completion). */
static void detach(struct active_mirror *m, bool refuse)
{
    pthread_mutex_lock(&m->lock);
    m->detached = true;
    m->refuse_writes = refuse;
    m->gate_closed = false;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
}

/* --- The background pass (the job's thread) --- */

struct batch {
    struct range_lock locks[BATCH_RUNS];
    struct copy_range runs[BATCH_RUNS];         /* locked, granule-aligned */
    size_t nruns;
    struct copy_range ranges[BATCH_RANGES];     /* what is dirty in them */
    size_t nranges;
    bool finished[BATCH_RANGES];
    uint64_t reported;              /* bytes this batch's copy reported so far */
    struct active_mirror *m;
};

/* Add the extent [s, e) to the batch's runs: it extends the last run if
 * it starts at most COALESCE_GAP after its end. */
static void add_run(struct batch *b, uint64_t s, uint64_t e)
{
    struct copy_range *last = b->nruns ? &b->runs[b->nruns - 1] : NULL;
    if (last && s >= last->offset + last->length &&
        s - (last->offset + last->length) <= COALESCE_GAP)
        last->length = e - last->offset;
    else
        b->runs[b->nruns++] = (struct copy_range){ s, e - s };
}

/* The next dirty extents from `*cursor` on (wrapping), at most
 * batch_bytes of them and BATCH_RANGES, as at most BATCH_RUNS runs, or
 * under --speed about a tenth of a second's worth, so that set-speed,
 * cancel and complete are seen soon and client writes never wait long for
 * a batch's range locks (lock held). */
static void pick_runs_locked(struct active_mirror *m, struct batch *b, uint64_t *cursor)
{
    uint64_t size = m->src->size, budget = m->batch_bytes;
    if (m->speed)
        budget = min_u64(budget, max_u64(m->speed / 10, m->gran));
    b->nruns = 0;
    size_t extents = 0;
    for (int pass = 0; pass < 2 && budget; pass++) {
        uint64_t start = pass ? 0 : *cursor, end = pass ? *cursor : size;
        uint64_t off, len;
        while (b->nruns < BATCH_RUNS && extents < BATCH_RANGES && budget &&
               hbitmap_next_dirty_extent(m->dirty, start, end, &off, &len)) {
            uint64_t s, e;
            range_of(m, off, min_u64(len, budget), &s, &e);
            add_run(b, s, e);
            extents++;
            budget -= min_u64(budget, e - s);
            start = e;
            *cursor = e >= size ? 0 : e;
        }
        if (pass == 0 && b->nruns)
            break;  /* wrap only when nothing lies ahead */
    }
}

/* With the runs locked: what is still dirty in them is taken (cleared);
 * it goes back in put_back unless copied. */
static void take_dirty_locked(struct active_mirror *m, struct batch *b)
{
    b->nranges = 0;
    for (size_t i = 0; i < b->nruns; i++) {
        uint64_t start = b->runs[i].offset, end = start + b->runs[i].length, off, len;
        while (b->nranges < BATCH_RANGES &&
               hbitmap_next_dirty_extent(m->dirty, start, end, &off, &len)) {
            uint64_t s, e;
            range_of(m, off, len, &s, &e);
            e = min_u64(e, m->src->size);
            b->ranges[b->nranges] = (struct copy_range){ s, e - s };
            b->finished[b->nranges++] = false;
            hbitmap_reset(m->dirty, s, e - s);
            m->batch_left += e - s;
            start = e;
        }
    }
}

static void put_back_locked(struct active_mirror *m, struct batch *b)
{
    for (size_t i = 0; i < b->nranges; i++)
        if (!b->finished[i])
            hbitmap_set(m->dirty, b->ranges[i].offset, b->ranges[i].length);
    m->batch_left = 0;
}

static void on_range_done(void *opaque, size_t index)
{
    struct batch *b = opaque;
    b->finished[index] = true;
}

static void on_copy_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct batch *b = opaque;
    struct active_mirror *m = b->m;
    pthread_mutex_lock(&m->lock);
    /* Add what this batch copied since its last report: client writes
     * written through meanwhile count in `done` too. */
    uint64_t before = m->done, delta = done - b->reported;
    b->reported = done;
    m->done += delta;
    m->copied += delta;
    m->batch_left = total - done;
    pthread_mutex_unlock(&m->lock);
    emit(m, MIRROR_EVENT_PROGRESS, before, delta, NULL);
}

/* A copy of the batch's ranges (none yet: copy_workers_start sizes the
 * workers from it). */
static struct copy_job batch_copy_job(struct active_mirror *m, struct batch *b)
{
    const struct mirror_params *mp = &m->p.mirror;
    return (struct copy_job){
        .src = m->src, .base = m->base, .dst = m->dst, .offset = 0, .length = m->src->size,
        .ranges = b->ranges, .nranges = b->nranges, .range_done = on_range_done,
        .explicit_zeroes = m->diff_image,
        .buf_size = mp->buf_size, .max_in_flight = (unsigned)mp->max_in_flight,
        /* --speed paces between batches (pace_locked), which are small
         * then: a batch holds its ranges locked against client writes
         * while it copies, so it must not be slowed down itself. */
        .speed = 0, .on_source_error = mp->on_source_error,
        .on_target_error = mp->on_target_error,
        .progress = on_copy_progress, .opaque = b, .cancel = &m->cancel,
        .workers = m->workers,
    };
}

static int copy_batch(struct active_mirror *m, struct batch *b, struct err *e)
{
    b->reported = 0;
    struct copy_job cj = batch_copy_job(m, b);
    int ret = copy_run(&cj, e);
    pthread_mutex_lock(&m->lock);
    m->stats.bytes_read += cj.stats.bytes_read;
    m->stats.bytes_written += cj.stats.bytes_written;
    m->stats.bytes_zeroed += cj.stats.bytes_zeroed;
    m->stats.bytes_skipped += cj.stats.bytes_skipped;
    m->target_dirty = true;
    pthread_mutex_unlock(&m->lock);
    return ret;
}

/* One batch: lock the runs, take what is dirty, copy, put back what was
 * not copied.  An ignored error (--on-target-error=ignore) keeps the
 * ranges dirty and is tried again later. */
static int run_batch(struct active_mirror *m, struct batch *b, struct err *e)
{
    for (size_t i = 0; i < b->nruns; i++)
        range_lock_acquire(&m->ranges, &b->locks[i], b->runs[i].offset,
                           b->runs[i].offset + b->runs[i].length, true);
    pthread_mutex_lock(&m->lock);
    take_dirty_locked(m, b);
    pthread_mutex_unlock(&m->lock);
    int ret = b->nranges ? copy_batch(m, b, e) : 0;
    pthread_mutex_lock(&m->lock);
    put_back_locked(m, b);
    pthread_mutex_unlock(&m->lock);
    for (size_t i = 0; i < b->nruns; i++)
        range_lock_release(&m->ranges, &b->locks[i]);
    bool ignored = ret == -EIO && (m->p.mirror.on_target_error == COPY_ERROR_IGNORE ||
                                   m->p.mirror.on_source_error == COPY_ERROR_IGNORE);
    if (ignored) {
        struct timespec pause = { 0, IGNORED_ERROR_PAUSE_MS * 1000000L };
        nanosleep(&pause, NULL);
        err_clear(e);
        return 0;
    }
    return ret;
}

/* --speed across batches: wait (cancel and requests seen) until the bytes
 * copied so far are due. */
static void pace_locked(struct active_mirror *m)
{
    while (m->speed && !atomic_load(&m->cancel) && !m->complete_requested && !m->failure) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        double elapsed = (double)(now.tv_sec - m->started_at.tv_sec) +
                         (double)(now.tv_nsec - m->started_at.tv_nsec) / 1e9;
        /* Only the background pass is paced: client writes written
         * through are the clients' business (as in QEMU). */
        double due = (double)(m->copied - m->paced_from) / (double)m->speed;
        if (due <= elapsed)
            return;
        double wait = due - elapsed < 0.1 ? due - elapsed : 0.1;
        struct timespec until = now;
        until.tv_nsec += (long)(wait * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&m->changed, &m->lock, &until);
    }
}

/* Nothing dirty: flush the target if it was written, and be READY once
 * nothing is dirty after that flush.  Client writes written through during
 * the flush (write-blocking) leave nothing dirty: the target has them, so
 * the job is in sync; the flush at completion makes them durable.  Asking
 * for no newer flush than that is what makes write-blocking converge under
 * a writer that never pauses.  Once READY, the target is flushed again only
 * when completing (not at every client write).  Returns < 0 if the flush
 * failed. */
static int settle(struct active_mirror *m, struct err *e)
{
    pthread_mutex_lock(&m->lock);
    bool flush = m->target_dirty && (!m->ready || m->complete_requested);
    if (flush)
        m->target_dirty = false;
    pthread_mutex_unlock(&m->lock);
    int ret = flush ? mirror_job_flush_target(m->job, e) : 0;
    if (ret < 0)
        return ret;
    pthread_mutex_lock(&m->lock);
    bool now_ready = !m->ready && !hbitmap_count(m->dirty);
    if (now_ready) {
        m->ready = true;
        m->status = ACTIVE_READY;
    }
    pthread_mutex_unlock(&m->lock);
    if (now_ready)
        emit(m, MIRROR_EVENT_READY, 0, 0, NULL);
    return 0;
}

/* Wait for work: something dirty, a request, a failed write-through. */
static void wait_for_work_locked(struct active_mirror *m)
{
    while (!hbitmap_count(m->dirty) && !atomic_load(&m->cancel) && !m->failure &&
           !(m->complete_requested && !m->gate_closed) &&
           !(m->complete_requested && !m->target_dirty))
        pthread_cond_wait(&m->changed, &m->lock);
}

/* Copy until cancelled, failed, or completed (READY, complete asked for,
 * gate closed, nothing dirty, target flushed).  Returns 0 when completed. */
static int copy_batches(struct active_mirror *m, struct batch *b, struct err *e)
{
    uint64_t cursor = 0;
    for (;;) {
        int ret = 0;
        pthread_mutex_lock(&m->lock);
        if (m->complete_requested && !m->gate_closed)
            quiesce_locked(m);
        pace_locked(m);
        if (m->failure) {
            ret = m->failure;
            *e = m->failure_err;
        } else if (atomic_load(&m->cancel)) {
            ret = -ECANCELED;
        }
        pick_runs_locked(m, b, &cursor);
        bool finished = !b->nruns && m->complete_requested && !m->target_dirty;
        pthread_mutex_unlock(&m->lock);
        if (ret < 0 || finished)
            return ret;
        if (b->nruns) {
            if ((ret = run_batch(m, b, e)) < 0)
                return ret;
            continue;
        }
        if ((ret = settle(m, e)) < 0)
            return ret;
        pthread_mutex_lock(&m->lock);
        wait_for_work_locked(m);
        pthread_mutex_unlock(&m->lock);
    }
}

/* The batches share one set of copy workers, started here and stopped
 * when the pass ends. */
static int copy_loop(struct active_mirror *m, struct err *e)
{
    struct batch *b = calloc(1, sizeof(*b));
    if (!b)
        return err_set(e, ENOMEM, "out of memory");
    b->m = m;
    struct copy_job like = batch_copy_job(m, b);
    int ret = copy_workers_start(&like, &m->workers, e);
    if (ret == 0)
        ret = copy_batches(m, b, e);
    copy_workers_stop(m->workers);
    m->workers = NULL;
    free(b);
    return ret;
}

/* End as mirror/job.c says: completed (in sync: target kept, bitmap
 * cleared), cancelled (target kept only if READY, bitmap reclaimed) or
 * failed (new target removed, bitmap reclaimed). */
static int end_job(struct active_mirror *m, int ret, struct err *e)
{
    pthread_mutex_lock(&m->lock);
    quiesce_locked(m);
    bool ready = m->ready, handover = m->handover && ret == 0;
    m->dst = NULL;      /* mirror_job_end closes or hands it over (active_mirror_check_switch) */
    pthread_mutex_unlock(&m->lock);
    bool keep = ret == 0 || (ret == -ECANCELED && ready);
    struct err fe = { 0 };
    /* A kept target is consistent: flushed (a completed one already is). */
    if (keep && ret != 0 && mirror_job_flush_target(m->job, &fe) < 0) {
        keep = false;
        ret = -fe.code;
        *e = fe;
    }
    struct err ee = { 0 };
    struct blockdev *handed = NULL;
    int eret = mirror_job_end(m->job, keep, ret == 0, ret == 0,
                              handover ? &handed : NULL, &ee);
    pthread_mutex_lock(&m->lock);
    m->handed = handed;
    pthread_mutex_unlock(&m->lock);
    m->job = NULL;
    m->wa = NULL;
    if (eret < 0 && (ret == 0 || ret == -ECANCELED)) {
        ret = eret;
        *e = ee;
    }
    return ret;
}

static void conclude(struct active_mirror *m, int ret, const struct err *e)
{
    pthread_mutex_lock(&m->lock);
    m->result = ret;
    if (ret < 0 && ret != -ECANCELED)
        m->error = strdup(e->msg[0] ? e->msg : strerror(-ret));
    pthread_mutex_unlock(&m->lock);
    detach(m, ret == 0);
    if (ret == 0)
        emit(m, MIRROR_EVENT_COMPLETED, 0, 0, NULL);
    else if (ret == -ECANCELED)
        emit(m, MIRROR_EVENT_CANCELLED, 0, 0, NULL);
    else
        emit(m, MIRROR_EVENT_FAILED, 0, 0, m->error ? m->error : "out of memory");
    pthread_mutex_lock(&m->lock);
    m->status = ACTIVE_CONCLUDED;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
}

static void *job_main(void *opaque)
{
    struct active_mirror *m = opaque;
    struct err e = { 0 };
    int ret = copy_loop(m, &e);
    ret = end_job(m, ret, &e);
    conclude(m, ret, &e);
    return NULL;
}

/* --- Start --- */

/* The job's granularity: 4 KiB, so that the usual client writes are
 * written through whole.  A granule written into part of a target cluster
 * is right for full and top targets (the rest of the cluster is what the
 * target had, or still dirty).  A diff target (--sync=bitmap) needs whole
 * clusters (a partly written one would read zeroes, not its future backing
 * file, in the rest): there the granule is the target's cluster, and at
 * least the granularity of the bitmap it copies. */
static int pick_granularity(struct active_mirror *m, struct err *e)
{
    uint64_t g = MIN_GRANULARITY;
    if (m->diff_image)
        g = max_u64(g, blk_write_alignment(m->dst));
    struct dirty_bitmap *bm = m->p.mirror.bitmap ? blk_bitmap_find(m->src, m->p.mirror.bitmap)
                                                 : NULL;
    if (bm)
        g = max_u64(g, dirty_bitmap_granularity(bm));
    if (!is_power_of_2(g) || g > HBITMAP_MAX_GRANULARITY)
        return err_set(e, EINVAL, "%s: cluster size %llu cannot be a mirror granularity",
                       m->dst->filename, (unsigned long long)g);
    m->gran = g;
    size_t buf = m->p.mirror.buf_size ? m->p.mirror.buf_size : 2u << 20;
    unsigned inflight = m->p.mirror.max_in_flight ? (unsigned)m->p.mirror.max_in_flight
                                                  : COPY_DEFAULT_IN_FLIGHT;
    m->batch_bytes = max_u64((uint64_t)buf * inflight * 2, g);
    return 0;
}

/* What the sync mode copies: everything (full, top: the copy engine skips
 * what lies below base), or the bitmap's ranges. */
static int initial_dirty(struct active_mirror *m, struct err *e)
{
    int ret = hbitmap_new(m->src->size, (uint32_t)m->gran, &m->dirty, e);
    if (ret < 0)
        return ret;
    if (m->p.mirror.sync == MIRROR_SYNC_BITMAP) {
        size_t n;
        const struct copy_range *r = mirror_job_ranges(m->job, &n);
        for (size_t i = 0; i < n; i++)
            hbitmap_set(m->dirty, r[i].offset, r[i].length);
    } else if (m->p.mirror.sync != MIRROR_SYNC_NONE) {
        hbitmap_set_all(m->dirty);
    }
    return 0;
}

static int start_thread(struct active_mirror *m, struct err *e)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int ret = pthread_create(&m->thread, NULL, job_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (ret)
        return err_set(e, ret, "cannot start the mirror thread: %s", strerror(ret));
    m->thread_started = true;
    return 0;
}

static void destroy(struct active_mirror *m)
{
    if (m->notifier_added) {
        detach(m, false);
        blk_remove_write_notifier(m->src, &m->notifier);
    }
    if (m->job)
        mirror_job_end(m->job, false, false, false, NULL, &(struct err){ 0 });
    blk_close(m->handed);   /* handed over, never taken */
    hbitmap_free(m->dirty);
    hbitmap_free(m->wa_disk);
    pthread_mutex_destroy(&m->wa_lock);
    range_lock_set_destroy(&m->ranges);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->changed);
    pthread_mutex_destroy(&m->event_lock);
    free(m->error);
    free(m->id);
    free(m);
}

/* The job's bitmap is not in use on disk from now on (no client write
 * runs: the gate is closed), and wa_disk knows what it has set there. */
static int start_write_ahead(struct active_mirror *m, struct err *e)
{
    struct dirty_bitmap *bm = mirror_job_write_ahead_bitmap(m->job);
    if (!bm)
        return 0;
    blk_bitmaps_lock(m->src);
    int ret = blk_bitmaps_store(m->src, e);
    if (ret == 0)
        ret = hbitmap_copy(dirty_bitmap_bits(bm), &m->wa_disk, e);
    blk_bitmaps_unlock(m->src);
    if (ret == 0)
        m->wa = bm;
    return ret;
}

/* Prepare with the gate closed: no client write slips in between the
 * bitmap's freeze and the dirty tracking. */
static int prepare(struct active_mirror *m, struct err *e)
{
    m->notifier = (struct blk_write_notifier){ on_before_write, on_after_write, m };
    int ret = blk_add_write_notifier(m->src, &m->notifier, e);
    if (ret < 0)
        return ret;
    m->notifier_added = true;
    m->set_opts = (struct mirror_set_options){ .open_opts = &m->src->opts };
    if ((ret = mirror_job_prepare(&m->p.mirror, &m->set_opts, m->src, &m->job, e)) < 0)
        return ret;
    m->dst = mirror_job_target(m->job);
    m->base = mirror_job_base(m->job);
    m->diff_image = m->p.mirror.sync == MIRROR_SYNC_BITMAP;
    if ((ret = pick_granularity(m, e)) < 0 || (ret = initial_dirty(m, e)) < 0)
        return ret;
    return start_write_ahead(m, e);
}

int active_mirror_start(const struct active_mirror_params *p, struct active_mirror **out,
                        struct err *e)
{
    struct active_mirror *m = calloc(1, sizeof(*m));
    if (!m || !(m->id = strdup(p->id ? p->id : "mirror0"))) {
        free(m);
        return err_set(e, ENOMEM, "out of memory");
    }
    m->p = *p;
    m->p.id = m->id;
    m->p.mirror.source = p->source->filename;
    m->src = p->source;
    m->copy_mode = p->copy_mode;
    m->speed = p->mirror.speed;
    m->status = ACTIVE_RUNNING;
    m->gate_closed = true;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->changed, NULL);
    pthread_mutex_init(&m->event_lock, NULL);
    pthread_mutex_init(&m->wa_lock, NULL);
    range_lock_set_init(&m->ranges);
    atomic_init(&m->cancel, 0);
    clock_gettime(CLOCK_REALTIME, &m->started_at);
    int ret = prepare(m, e);
    if (ret == 0) {
        emit(m, MIRROR_EVENT_STARTED, 0, 0, NULL);
        ret = start_thread(m, e);
    }
    if (ret < 0) {
        destroy(m);
        return ret;
    }
    pthread_mutex_lock(&m->lock);
    m->gate_closed = false;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
    *out = m;
    return 0;
}

/* --- Requests --- */

static int wait_concluded(struct active_mirror *m, struct err *e)
{
    pthread_mutex_lock(&m->lock);
    while (m->status != ACTIVE_CONCLUDED)
        pthread_cond_wait(&m->changed, &m->lock);
    int ret = m->result;
    if (ret < 0 && ret != -ECANCELED)
        err_set(e, -ret, "%s", m->error ? m->error : "mirror failed");
    pthread_mutex_unlock(&m->lock);
    return ret;
}

static int complete(struct active_mirror *m, bool handover, struct err *e)
{
    pthread_mutex_lock(&m->lock);
    if (m->status != ACTIVE_READY) {
        enum active_status st = m->status;
        uint64_t dirty = hbitmap_count(m->dirty);
        pthread_mutex_unlock(&m->lock);
        if (st == ACTIVE_CONCLUDED || st == ACTIVE_COMPLETING)
            return err_set(e, EBUSY, "job '%s' has %s", m->id,
                           st == ACTIVE_COMPLETING ? "been asked to complete already"
                                                   : "already concluded");
        return err_set(e, EBUSY, "job '%s' is not ready yet (%llu bytes still to copy): "
                       "it can be completed once it is ready", m->id,
                       (unsigned long long)dirty);
    }
    m->status = ACTIVE_COMPLETING;
    m->complete_requested = true;
    m->handover = handover;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
    return wait_concluded(m, e);
}

int active_mirror_complete(struct active_mirror *m, struct err *e)
{
    return complete(m, false, e);
}

int active_mirror_complete_handover(struct active_mirror *m, struct blockdev **target,
                                    struct err *e)
{
    *target = NULL;
    int ret = complete(m, true, e);
    pthread_mutex_lock(&m->lock);
    if (ret == 0) {
        *target = m->handed;
        m->handed = NULL;
    }
    pthread_mutex_unlock(&m->lock);
    if (ret == 0 && !*target)   /* cannot happen: a completed job kept its target */
        ret = err_set(e, EIO, "job '%s' completed without a target to hand over", m->id);
    return ret;
}

/* (dst: the target as opened, perhaps under a temporary name; the
 * messages say the name the user gave.) */
static int check_target_bitmap(const struct active_mirror *m, const char *name, struct err *e)
{
    const char *target = m->p.mirror.target;
    struct dirty_bitmap *bm = blk_bitmap_find(m->dst, name);
    if (!bm)
        return err_set(e, ENOENT, "%s: the target has no bitmap '%s' (offered as "
                       "qemu:dirty-bitmap:%s): it cannot take the source's place", target, name,
                       name);
    if (dirty_bitmap_inconsistent(bm))
        return err_set(e, EINVAL, "%s: the target's bitmap '%s' is inconsistent: it cannot "
                       "take the source's place", target, name);
    return 0;
}

int active_mirror_check_switch(struct active_mirror *m, const char *const *bitmaps, size_t n,
                               struct err *e)
{
    pthread_mutex_lock(&m->lock);
    int ret = 0;
    if (!m->dst || m->status == ACTIVE_CONCLUDED || m->status == ACTIVE_COMPLETING)
        ret = err_set(e, EBUSY, "job '%s' is ending", m->id);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        blk_bitmaps_lock(m->dst);
        ret = check_target_bitmap(m, bitmaps[i], e);
        blk_bitmaps_unlock(m->dst);
    }
    pthread_mutex_unlock(&m->lock);
    return ret;
}

int active_mirror_cancel(struct active_mirror *m, struct err *e)
{
    pthread_mutex_lock(&m->lock);
    bool concluded = m->status == ACTIVE_CONCLUDED;
    if (!concluded) {
        atomic_store(&m->cancel, 1);
        pthread_cond_broadcast(&m->changed);
    }
    pthread_mutex_unlock(&m->lock);
    if (concluded)
        return err_set(e, EINVAL, "job '%s' has already concluded", m->id);
    int ret = wait_concluded(m, e);
    return ret == -ECANCELED ? 0 : ret;
}

int active_mirror_set_speed(struct active_mirror *m, uint64_t speed, struct err *e)
{
    (void)e;
    pthread_mutex_lock(&m->lock);
    m->speed = speed;
    clock_gettime(CLOCK_REALTIME, &m->started_at);
    m->paced_from = m->copied;  /* the pace restarts from now */
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* As QEMU 8.2's block-job-change: from background to write-blocking only
 * (back would lose the READY promise that source and target stay in sync). */
int active_mirror_set_copy_mode(struct active_mirror *m, enum active_copy_mode mode,
                                struct err *e)
{
    pthread_mutex_lock(&m->lock);
    enum active_copy_mode cur = m->copy_mode;
    bool ok = mode == cur || (cur == ACTIVE_COPY_BACKGROUND &&
                              mode == ACTIVE_COPY_WRITE_BLOCKING);
    if (ok)
        m->copy_mode = mode;
    pthread_mutex_unlock(&m->lock);
    if (!ok)
        return err_set(e, EINVAL, "job '%s': the copy mode can only change from background "
                       "to write-blocking", m->id);
    return 0;
}

void active_mirror_query(struct active_mirror *m, struct active_mirror_info *info)
{
    pthread_mutex_lock(&m->lock);
    uint64_t remaining = hbitmap_count(m->dirty) + m->batch_left;
    *info = (struct active_mirror_info){
        .id = m->id, .status = m->status, .copy_mode = m->copy_mode,
        .offset = m->done, .len = m->done + remaining, .remaining = remaining,
        .speed = m->speed, .ready = m->ready, .error = m->error,
    };
    pthread_mutex_unlock(&m->lock);
}

void active_mirror_free(struct active_mirror *m)
{
    if (!m)
        return;
    if (m->thread_started) {
        pthread_mutex_lock(&m->lock);
        bool concluded = m->status == ACTIVE_CONCLUDED;
        pthread_mutex_unlock(&m->lock);
        if (!concluded)
            active_mirror_cancel(m, &(struct err){ 0 });
        pthread_join(m->thread, NULL);
    }
    destroy(m);
}
