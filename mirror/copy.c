/* The copy engine (see copy.h).
 *
 * The calling thread is the dispatcher: it walks the source's block
 * status and cuts the range into chunks, which it queues for a pool of
 * worker threads.  A chunk is one of
 *
 *   SKIP  nothing to do (above `base`, the target's backing provides it);
 *   ZERO  the target must read zeroes there;
 *   DATA  a buffer's worth (buf_size at most) of pieces, each of them data
 *         to read, a zero run, or a SKIP run; it is read into one buffer
 *         and written with zero detection (or compressed, cluster by
 *         cluster).
 *
 * With skip_identical a worker's buffer is twice buf_size: the second
 * half holds the target's current contents of a DATA chunk, compared with
 * the source's unit by unit before anything is written.
 *
 * Chunk boundaries fall on the target's cluster boundaries (its write
 * alignment), so two workers never write the same target cluster: a
 * source run that ends inside a cluster joins the DATA chunk that covers
 * the rest of that cluster.  A zero run costs no reads, and no writes at
 * all where the target already reads zeroes.
 *
 * Workers report completions back under one lock; the dispatcher turns
 * them into progress callbacks, so those come from one thread in
 * increasing order.  The first error (or a cancel request) stops the
 * dispatcher, the workers drop what is still queued, and all are joined
 * before copy_run returns. */
#include "mirror/copy.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_BUF_SIZE (2u << 20)
/* From or to an NBD export: smaller requests, more of them (copy.h). */
#define NETWORK_BUF_SIZE (512u << 10)
/* How often the dispatcher looks at the cancel flag while it waits for
 * workers (a signal handler cannot wake a condition variable). */
#define CANCEL_POLL_NS 50000000L

enum chunk_kind { CHUNK_SKIP, CHUNK_ZERO, CHUNK_DATA };

/* One run inside a DATA chunk: what the source holds there. */
struct piece {
    uint64_t len;
    enum chunk_kind kind;
};

struct chunk {
    uint64_t off, len;
    size_t range;               /* index of the range it belongs to */
    enum chunk_kind kind;
    struct piece *pieces;       /* DATA: the runs, in order, covering len */
    size_t npieces, cap;
};

/* What is left of the source extent the dispatcher is cutting chunks
 * from (it always starts at the dispatcher's position). */
struct cursor {
    uint64_t len;               /* 0: used up, load the next one */
    enum chunk_kind kind;
};

struct engine {
    struct copy_job *job;
    const struct copy_range *ranges;    /* job->ranges, or &whole */
    size_t nranges;
    struct copy_range whole;
    uint64_t total;             /* bytes of all ranges */
    uint64_t end;               /* end of the range being cut into chunks */
    size_t buf_size;            /* a multiple of align */
    uint32_t align;             /* target cluster size (write alignment) */
    uint32_t unit;              /* zero detection granularity */
    uint32_t cmp_unit;          /* skip_identical: compare (and write) granularity */

    pthread_mutex_t lock;
    pthread_cond_t work_ready;  /* workers: a chunk is queued, or stop */
    pthread_cond_t changed;     /* dispatcher: a chunk completed, or failure */
    struct chunk *slots;
    unsigned nslots;
    unsigned *queue;            /* ring of queued slot numbers */
    unsigned queue_head, queue_len;
    unsigned *free_slots;       /* stack of free slot numbers */
    unsigned nfree;
    unsigned busy;              /* chunks being worked on */
    bool no_more_chunks;
    int failed;                 /* 0, or the first error */
    struct err error;           /* ... and its message */
    uint64_t done;              /* bytes of completed chunks */
    uint64_t reported;          /* `done` as last passed to progress */
    /* Per range: chunks not yet completed, plus one while the dispatcher
     * is still cutting it.  A range whose count drops to 0 is complete and
     * waits in `finished` to be passed to range_done. */
    size_t *pending;
    size_t *finished;
    size_t nfinished;
    bool *range_failed;         /* a chunk of it failed and was ignored */
    unsigned nignored;          /* chunks that failed and were ignored */
    struct err ignored_error;   /* ... the first one's message */
    uint64_t io_dispatched;     /* bytes that cost I/O, for the rate limit */
    atomic_bool offload_failed; /* copy_offload: a chunk could not be offloaded */
    struct timespec start;
    struct copy_stats stats;
};

struct worker {
    struct engine *eng;
    pthread_t thread;
    uint8_t *buf;
    struct copy_workers *pool;  /* a kept worker's pool, else NULL */
};

/* Kept workers (copy.h): each waits for the next copy_run (a new
 * generation), works on its engine as a copy_run's own worker does, and
 * counts itself out of `busy` when that engine has nothing more for it. */
struct copy_workers {
    pthread_mutex_t lock;
    pthread_cond_t changed;     /* a new generation, stop, or busy dropped to 0 */
    struct worker *w;
    unsigned n;                 /* started */
    size_t buf_bytes;           /* each worker's buffer */
    struct engine *eng;         /* the copy_run being served */
    unsigned long generation;
    unsigned busy;              /* workers not done with this generation yet */
    bool stop;
};

static bool cancel_requested(const struct copy_job *job)
{
    return job->cancel && atomic_load(job->cancel);
}

/* --- Work done by the workers (no engine state touched) --- */

/* The source offset that target offset `off` is copied from. */
static uint64_t src_at(const struct copy_job *job, uint64_t off)
{
    return off + (uint64_t)job->src_shift;     /* wraps as two's complement */
}

/* The target's status at `off` for copy_zeroes: where it reads zeroes
 * (through its chain), unless explicit zeroes are wanted, where only zeroes
 * allocated in the target itself count as already right. */
static int target_zero_status(struct copy_job *job, uint64_t off, uint64_t len,
                                  struct blk_extent *ext, struct err *e)
{
    if (!job->explicit_zeroes)
        return blk_block_status(job->dst, off, len, ext, e);
    int ret = blk_block_status_layer(job->dst, off, len, ext, e);
    if (ret == 0 && !(ext->flags & BLK_STATUS_ALLOCATED))
        ext->flags &= ~BLK_STATUS_ZERO;
    return ret;
}

/* Make [off, off+len) of the target read as zeroes, skipping sub-ranges it
 * already reads as zeroes (unless the whole target is known to be zero). */
static int copy_zeroes(struct copy_job *job, uint64_t off, uint64_t len,
                       struct copy_stats *st, struct err *e)
{
    if (job->target_is_zero) {
        st->bytes_skipped += len;
        return 0;
    }
    while (len) {
        if (cancel_requested(job))
            return err_set(e, ECANCELED, "cancelled");
        struct blk_extent ext;
        int ret = target_zero_status(job, off, len, &ext, e);
        if (ret < 0)
            return ret;
        if (ext.flags & BLK_STATUS_ZERO) {
            st->bytes_skipped += ext.length;
        } else {
            ret = blk_write_zeroes(job->dst, off, ext.length,
                                   job->explicit_zeroes ? 0 : BLK_ZERO_MAY_UNMAP, e);
            if (ret < 0)
                return ret;
            st->bytes_zeroed += ext.length;
        }
        off += ext.length;
        len -= ext.length;
    }
    return 0;
}

/* Write one buffer of source data, turning all-zero blocks into zero
 * writes (or nothing) so that the target stays sparse. */
static int write_detecting_zeroes(struct engine *eng, const uint8_t *buf, uint64_t off,
                                  size_t len, struct copy_stats *st, struct err *e)
{
    uint32_t unit = eng->unit;
    size_t pos = 0;
    if (eng->job->write_zeroes_as_data || eng->job->copy_offload) {
        int ret = blk_pwrite(eng->job->dst, off, buf, len, e);
        if (ret == 0)
            st->bytes_written += len;
        return ret;
    }
    while (pos < len) {
        /* A run of blocks that are all zero, or all not. */
        size_t blk = (size_t)min_u64(unit - (off + pos) % unit, len - pos);
        bool zero = buffer_is_zero(buf + pos, blk);
        size_t run = blk;
        while (pos + run < len) {
            size_t next = (size_t)min_u64(unit, len - pos - run);
            if (buffer_is_zero(buf + pos + run, next) != zero)
                break;
            run += next;
        }
        int ret;
        if (zero) {
            ret = copy_zeroes(eng->job, off + pos, run, st, e);
        } else {
            ret = blk_pwrite(eng->job->dst, off + pos, buf + pos, run, e);
            if (ret == 0)
                st->bytes_written += run;
        }
        if (ret < 0)
            return ret;
        pos += run;
    }
    return 0;
}

/* Bytes from `at` to the end of its compare unit, at most `left`. */
static size_t unit_len(const struct engine *eng, uint64_t at, size_t left)
{
    return (size_t)min_u64(eng->cmp_unit - at % eng->cmp_unit, left);
}

/* skip_identical: the target's current contents of [off, off+len) are read
 * into cmp and compared with the source's (src); units that differ are
 * written whole from src, the same ones are left alone. */
static int write_differing(struct engine *eng, const uint8_t *src, uint8_t *cmp, uint64_t off,
                           size_t len, struct copy_stats *st, struct err *e)
{
    int ret = blk_pread(eng->job->dst, off, cmp, len, e);
    if (ret < 0)
        return ret;
    st->bytes_compared += len;
    size_t pos = 0;
    while (pos < len) {
        /* A run of units that all differ, or all match. */
        size_t n = unit_len(eng, off + pos, len - pos);
        bool same = memcmp(src + pos, cmp + pos, n) == 0;
        size_t run = n;
        while (pos + run < len) {
            size_t next = unit_len(eng, off + pos + run, len - pos - run);
            if ((memcmp(src + pos + run, cmp + pos + run, next) == 0) != same)
                break;
            run += next;
        }
        if (same)
            st->bytes_skipped += run;
        else if ((ret = write_detecting_zeroes(eng, src + pos, off + pos, run, st, e)) < 0)
            return ret;
        pos += run;
    }
    return 0;
}

/* skip_identical, for a zero run of the source: nothing is read where the
 * target's block status says zero; where it has data, that data is read
 * (cmp holds buf_size bytes) and only its non-zero units are zeroed.  A
 * unit cut by a status boundary is zeroed in part: the rest reads zeroes
 * already. */
static int zero_differing(struct engine *eng, uint8_t *cmp, uint64_t off, uint64_t len,
                          struct copy_stats *st, struct err *e)
{
    struct copy_job *job = eng->job;
    uint64_t end = off + len;
    while (off < end) {
        if (cancel_requested(job))
            return err_set(e, ECANCELED, "cancelled");
        struct blk_extent ext;
        int ret = blk_block_status(job->dst, off, end - off, &ext, e);
        if (ret < 0)
            return ret;
        if (ext.flags & BLK_STATUS_ZERO) {
            st->bytes_skipped += ext.length;
            off += ext.length;
            continue;
        }
        size_t n = (size_t)min_u64(ext.length, eng->buf_size);
        if ((ret = blk_pread(job->dst, off, cmp, n, e)) < 0)
            return ret;
        st->bytes_compared += n;
        for (size_t pos = 0; pos < n;) {
            size_t run = unit_len(eng, off + pos, n - pos);
            bool zero = buffer_is_zero(cmp + pos, run);
            while (pos + run < n) {
                size_t next = unit_len(eng, off + pos + run, n - pos - run);
                if (buffer_is_zero(cmp + pos + run, next) != zero)
                    break;
                run += next;
            }
            if (zero) {
                st->bytes_skipped += run;
            } else {
                if ((ret = blk_write_zeroes(job->dst, off + pos, run, BLK_ZERO_MAY_UNMAP, e)) < 0)
                    return ret;
                st->bytes_zeroed += run;
            }
            pos += run;
        }
        off += n;
    }
    return 0;
}

/* Compressed writes: the driver compresses whole clusters (or the disk's
 * last, partial one).  Zero clusters are zeroed as usual, the pieces of
 * clusters cut by the copy range are written plainly, and each run of
 * whole clusters with data goes to the driver in one call, so that it sets
 * up its compression context once per run rather than per cluster. */
static int write_compressed(struct engine *eng, const uint8_t *buf, uint64_t off, size_t len,
                            struct copy_stats *st, struct err *e)
{
    struct blockdev *dst = eng->job->dst;
    size_t pos = 0;
    while (pos < len) {
        uint64_t at = off + pos;
        size_t n = (size_t)min_u64(eng->align - at % eng->align, len - pos);
        bool whole = at % eng->align == 0 && (n == eng->align || at + n == dst->size);
        int ret;
        if (!eng->job->write_zeroes_as_data && buffer_is_zero(buf + pos, n)) {
            ret = copy_zeroes(eng->job, at, n, st, e);
        } else if (whole) {
            /* Extend the run over the whole data clusters that follow. */
            size_t run = n;
            while (pos + run < len) {
                size_t next = (size_t)min_u64(eng->align, len - pos - run);
                if ((next < eng->align && at + run + next != dst->size) ||
                    buffer_is_zero(buf + pos + run, next))
                    break;
                run += next;
            }
            n = run;
            ret = blk_pwrite_compressed(dst, at, buf + pos, n, e);
            if (ret == 0)
                st->bytes_written += n;
        } else {
            ret = write_detecting_zeroes(eng, buf + pos, at, n, st, e);
        }
        if (ret < 0)
            return ret;
        pos += n;
    }
    return 0;
}

static void report_salvaged(struct engine *eng, uint64_t off, const struct err *e);

enum { SALVAGE_SECTOR = 512 };

/* --salvage: read [off, off+len) of the source sector by sector after a
 * failed read; sectors that fail read as zeroes and are reported. */
static int read_salvaging(struct engine *eng, uint64_t off, uint8_t *buf, size_t len,
                          struct copy_stats *st, struct err *e)
{
    size_t n;
    for (size_t pos = 0; pos < len; pos += n) {
        if (cancel_requested(eng->job))
            return err_set(e, ECANCELED, "cancelled");
        n = (size_t)min_u64(SALVAGE_SECTOR - (off + pos) % SALVAGE_SECTOR, len - pos);
        struct err sector_error = { 0 };
        if (blk_pread(eng->job->src, src_at(eng->job, off + pos), buf + pos, n,
                      &sector_error) < 0) {
            memset(buf + pos, 0, n);
            report_salvaged(eng, src_at(eng->job, off + pos), &sector_error);
        } else {
            st->bytes_read += n;
        }
    }
    return 0;
}

/* Read the chunk's data pieces into buf (zero pieces are not read, they
 * are zero; SKIP pieces are read through the chain only when compressing,
 * which needs whole clusters). */
static int fill_buffer(struct engine *eng, const struct chunk *c, uint8_t *buf,
                       struct copy_stats *st, struct err *e)
{
    uint64_t pos = 0;
    for (size_t i = 0; i < c->npieces; i++) {
        const struct piece *p = &c->pieces[i];
        if (p->kind == CHUNK_DATA || (p->kind == CHUNK_SKIP && eng->job->compress)) {
            int ret = blk_pread(eng->job->src, src_at(eng->job, c->off + pos), buf + pos,
                                (size_t)p->len, e);
            if (ret < 0 && eng->job->salvage && ret != -ECANCELED) {
                err_clear(e);
                ret = read_salvaging(eng, c->off + pos, buf + pos, (size_t)p->len, st, e);
            } else if (ret == 0) {
                st->bytes_read += p->len;
            }
            if (ret < 0)
                return ret;
        } else {
            memset(buf + pos, 0, (size_t)p->len);
        }
        pos += p->len;
    }
    return 0;
}

static void add_stats(struct copy_stats *to, const struct copy_stats *from);

/* copy_offload: the chunk's data pieces by blk_copy_range, its zero
 * pieces as usual.  -ENOTSUP: some piece cannot be offloaded. */
static int offload_chunk(struct engine *eng, const struct chunk *c, struct copy_stats *st,
                         struct err *e)
{
    struct copy_job *job = eng->job;
    uint64_t pos = 0;
    for (size_t i = 0; i < c->npieces; pos += c->pieces[i++].len) {
        const struct piece *p = &c->pieces[i];
        int ret = 0;
        if (p->kind == CHUNK_DATA) {
            ret = blk_copy_range(job->dst, c->off + pos, job->src, src_at(job, c->off + pos),
                                 p->len, e);
            if (ret == 0)
                st->bytes_written += p->len;
        } else if (p->kind == CHUNK_ZERO) {
            ret = copy_zeroes(job, c->off + pos, p->len, st, e);
        } else {
            st->bytes_skipped += p->len;
        }
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* A chunk that is one run of source data stored plainly in a host file
 * (blk_map_run) is written from a mapping of that file: the page cache's
 * pages go to the target with one copy instead of two (into the buffer,
 * out of it).  *mapped stays false, with nothing done, for any other
 * chunk: several pieces, compressing or comparing (they need the buffer),
 * salvaging (reads may fail), or a source that cannot be mapped. */
static int write_mapped_chunk(struct engine *eng, const struct chunk *c, struct copy_stats *st,
                              struct err *e, bool *mapped)
{
    struct copy_job *job = eng->job;
    *mapped = false;
    if (c->npieces != 1 || c->pieces[0].kind != CHUNK_DATA || job->compress ||
        job->skip_identical || job->salvage)
        return 0;
    struct blk_extent ext;
    struct transport_view v;
    struct err ignored;
    if (blk_block_status_host(job->src, src_at(job, c->off), c->len, &ext, &ignored) < 0 ||
        blk_map_run(&ext, (size_t)c->len, &v, &ignored) < 0)
        return 0;
    *mapped = true;
    st->bytes_read += c->len;
    int ret = write_detecting_zeroes(eng, v.data, c->off, (size_t)c->len, st, e);
    transport_unmap(&v);
    return ret;
}

static int copy_data_chunk(struct engine *eng, const struct chunk *c, uint8_t *buf,
                           struct copy_stats *st, struct err *e, bool *source_error)
{
    if (eng->job->copy_offload && !atomic_load(&eng->offload_failed)) {
        struct copy_stats tried = { 0 };
        int ret = offload_chunk(eng, c, &tried, e);
        if (ret != -ENOTSUP) {
            add_stats(st, &tried);
            return ret;
        }
        atomic_store(&eng->offload_failed, true);   /* the rest goes through buffers */
        err_clear(e);
    }
    bool mapped;
    int ret = write_mapped_chunk(eng, c, st, e, &mapped);
    if (mapped)
        return ret;
    ret = fill_buffer(eng, c, buf, st, e);
    if (ret < 0) {
        *source_error = true;
        return ret;
    }
    if (eng->job->compress)
        return write_compressed(eng, buf, c->off, (size_t)c->len, st, e);
    /* Write each stretch between SKIP pieces (or what differs in it). */
    uint64_t pos = 0;
    for (size_t i = 0; i < c->npieces;) {
        if (c->pieces[i].kind == CHUNK_SKIP) {
            st->bytes_skipped += c->pieces[i].len;
            pos += c->pieces[i++].len;
            continue;
        }
        uint64_t start = pos;
        while (i < c->npieces && c->pieces[i].kind != CHUNK_SKIP)
            pos += c->pieces[i++].len;
        size_t n = (size_t)(pos - start);
        if (eng->job->skip_identical)
            ret = write_differing(eng, buf + start, buf + eng->buf_size + start, c->off + start,
                                  n, st, e);
        else
            ret = write_detecting_zeroes(eng, buf + start, c->off + start, n, st, e);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Do a chunk's work; a failure sets *source_error when it was a read of
 * the source (everything else touches the target). */
static int run_chunk(struct engine *eng, const struct chunk *c, uint8_t *buf,
                     struct copy_stats *st, struct err *e, bool *source_error)
{
    *source_error = false;
    if (cancel_requested(eng->job))
        return err_set(e, ECANCELED, "cancelled");
    switch (c->kind) {
    case CHUNK_SKIP:
        st->bytes_skipped += c->len;
        return 0;
    case CHUNK_ZERO:
        if (eng->job->skip_identical)
            return zero_differing(eng, buf, c->off, c->len, st, e);
        return copy_zeroes(eng->job, c->off, c->len, st, e);
    case CHUNK_DATA:
        return copy_data_chunk(eng, c, buf, st, e, source_error);
    }
    return 0;
}

/* Sleep before retry `attempt` (1, 2, ...): 100 ms, 400 ms, 1.6 s. */
static void retry_backoff(unsigned attempt)
{
    long ms = 100L << (2 * (attempt - 1));
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Run a chunk with the job's error actions.  Returns 0, a failure to
 * report, or 1 for a failure to ignore (its message in *e). */
static int run_chunk_with_policy(struct engine *eng, const struct chunk *c, uint8_t *buf,
                                 struct copy_stats *st, struct err *e)
{
    for (unsigned attempt = 0;; attempt++) {
        bool source_error;
        struct copy_stats try_st = { 0 };
        err_clear(e);
        int ret = run_chunk(eng, c, buf, &try_st, e, &source_error);
        add_stats(st, &try_st);
        if (ret == 0 || ret == -ECANCELED)
            return ret;
        enum copy_error_action action = source_error ? eng->job->on_source_error
                                                     : eng->job->on_target_error;
        if (action == COPY_ERROR_IGNORE)
            return 1;
        if (action != COPY_ERROR_RETRY || attempt == COPY_RETRIES ||
            cancel_requested(eng->job))
            return ret;
        retry_backoff(attempt + 1);
    }
}

/* --- Shared state, under eng->lock --- */

static void add_stats(struct copy_stats *to, const struct copy_stats *from)
{
    to->bytes_read += from->bytes_read;
    to->bytes_written += from->bytes_written;
    to->bytes_zeroed += from->bytes_zeroed;
    to->bytes_skipped += from->bytes_skipped;
    to->bytes_compared += from->bytes_compared;
}

/* Keep the first error; idle workers then stop and queued chunks are
 * dropped. */
static void fail_locked(struct engine *eng, int ret, const struct err *e)
{
    if (!eng->failed) {
        eng->failed = ret;
        eng->error = *e;
    }
    pthread_cond_broadcast(&eng->work_ready);
    pthread_cond_signal(&eng->changed);
}

/* One piece of range `r` is done (a chunk, or the dispatcher's hold). */
static void range_progress_locked(struct engine *eng, size_t r)
{
    if (--eng->pending[r] == 0 && !eng->range_failed[r])
        eng->finished[eng->nfinished++] = r;
}

/* Record a finished chunk (or a failure) and free its slot. */
static void complete_locked(struct engine *eng, unsigned slot, int ret,
                            const struct copy_stats *st, const struct err *e)
{
    add_stats(&eng->stats, st);
    if (ret == 0) {
        eng->done += eng->slots[slot].len;
        range_progress_locked(eng, eng->slots[slot].range);
    } else {
        fail_locked(eng, ret, e);
    }
    eng->free_slots[eng->nfree++] = slot;
    pthread_cond_signal(&eng->changed);
}

/* A failed chunk the job ignores: its range will not be reported done,
 * the copy goes on, and copy_run fails at the end. */
static void ignore_locked(struct engine *eng, unsigned slot, const struct copy_stats *st,
                          const struct err *e)
{
    size_t r = eng->slots[slot].range;
    if (!eng->nignored++)
        eng->ignored_error = *e;
    eng->range_failed[r] = true;
    /* Progress counts it as processed: the copy does go past it. */
    complete_locked(eng, slot, 0, st, NULL);
}

/* A sector that --salvage read as zeroes, passed on one at a time. */
static void report_salvaged(struct engine *eng, uint64_t off, const struct err *e)
{
    if (!eng->job->salvaged)
        return;
    pthread_mutex_lock(&eng->lock);
    eng->job->salvaged(eng->job->opaque, off, e);
    pthread_mutex_unlock(&eng->lock);
}

static void cancel_locked(struct engine *eng)
{
    struct err e = { 0 };
    fail_locked(eng, err_set(&e, ECANCELED, "cancelled"), &e);
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct engine *eng = w->eng;
    pthread_mutex_lock(&eng->lock);
    for (;;) {
        while (!eng->queue_len && !eng->no_more_chunks && !eng->failed)
            pthread_cond_wait(&eng->work_ready, &eng->lock);
        if (!eng->queue_len || eng->failed)
            break;      /* all done, or abandoned after an error */
        unsigned slot = eng->queue[eng->queue_head];
        eng->queue_head = (eng->queue_head + 1) % eng->nslots;
        eng->queue_len--;
        eng->busy++;
        pthread_mutex_unlock(&eng->lock);

        struct copy_stats st = { 0 };
        struct err e = { 0 };
        int ret = run_chunk_with_policy(eng, &eng->slots[slot], w->buf, &st, &e);

        pthread_mutex_lock(&eng->lock);
        eng->busy--;
        if (ret == 1)
            ignore_locked(eng, slot, &st, &e);
        else
            complete_locked(eng, slot, ret, &st, &e);
    }
    pthread_mutex_unlock(&eng->lock);
    return NULL;
}

/* Pass completed bytes to the progress callback (called with the lock
 * held; drops it around the callback). */
static void report_progress_locked(struct engine *eng)
{
    struct copy_job *job = eng->job;
    while (eng->nfinished) {
        size_t r = eng->finished[--eng->nfinished];
        if (job->range_done) {
            pthread_mutex_unlock(&eng->lock);
            job->range_done(job->opaque, r);
            pthread_mutex_lock(&eng->lock);
        }
    }
    if (!job->progress || eng->done == eng->reported)
        return;
    uint64_t done = eng->done;
    eng->reported = done;
    pthread_mutex_unlock(&eng->lock);
    job->progress(job->opaque, done, eng->total);
    pthread_mutex_lock(&eng->lock);
}

/* Wait (lock held) until `ready` holds or the copy failed, reporting
 * progress and polling the cancel flag meanwhile. */
static void wait_locked(struct engine *eng, bool (*ready)(const struct engine *))
{
    for (;;) {
        /* Look first, report second: the report drops the lock, and what
         * completes meanwhile must still be reported before returning
         * (both conditions stay true once true). */
        bool finished = eng->failed || ready(eng);
        report_progress_locked(eng);
        if (finished)
            return;
        if (cancel_requested(eng->job)) {
            cancel_locked(eng);
            return;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += CANCEL_POLL_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&eng->changed, &eng->lock, &ts);
    }
}

static bool slot_free(const struct engine *eng)
{
    return eng->nfree > 0;
}

static bool all_finished(const struct engine *eng)
{
    return eng->busy == 0 && eng->queue_len == 0;
}

/* --- The dispatcher: cutting the range into chunks --- */

/* Load the source extent at `off` into the cursor if it is used up. */
static int cursor_load(struct engine *eng, struct cursor *cur, uint64_t off, struct err *e)
{
    if (cur->len)
        return 0;
    struct copy_job *job = eng->job;
    uint64_t src_size = job->src ? job->src->size : 0;
    uint64_t at = src_at(job, off);
    if (at >= src_size) {
        /* Past the end of a short source (source_zero_past_end). */
        cur->len = eng->end - off;
        cur->kind = CHUNK_ZERO;
        return 0;
    }
    struct blk_extent ext;
    uint64_t n = min_u64(eng->end - off, src_size - at);
    int ret = job->top_layer_only ? blk_block_status_top(job->src, at, n, &ext, e)
                                  : blk_block_status_above(job->src, job->base, at, n, &ext, e);
    if (ret < 0)
        return ret;
    cur->len = ext.length;
    if ((job->base || job->top_layer_only) && !(ext.flags & BLK_STATUS_ALLOCATED))
        cur->kind = CHUNK_SKIP;     /* base or below: the target's backing has it */
    else if (ext.flags & BLK_STATUS_ZERO)
        cur->kind = CHUNK_ZERO;
    else
        cur->kind = CHUNK_DATA;
    return 0;
}

static void cursor_take(struct cursor *cur, uint64_t len)
{
    cur->len -= len;
}

/* Where a run of non-data at `off` (of `len` bytes) could end as whole
 * target clusters: its end rounded down to a cluster boundary, or the end
 * of the range.  At most `off` when the run ends inside off's cluster. */
static uint64_t whole_cluster_end(const struct engine *eng, uint64_t off, uint64_t len)
{
    uint64_t stop = off + len;
    return stop == eng->end ? stop : align_down(stop, eng->align);
}

static int add_piece(struct chunk *c, enum chunk_kind kind, uint64_t len, struct err *e)
{
    if (c->npieces && c->pieces[c->npieces - 1].kind == kind) {
        c->pieces[c->npieces - 1].len += len;
    } else {
        if (c->npieces == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            struct piece *p = realloc(c->pieces, cap * sizeof(*p));
            if (!p)
                return err_set(e, ENOMEM, "out of memory");
            c->pieces = p;
            c->cap = cap;
        }
        c->pieces[c->npieces++] = (struct piece){ .len = len, .kind = kind };
    }
    c->len += len;
    return 0;
}

/* Whether a run of this kind makes chunks of its own (else it is a piece
 * of a DATA chunk; with write_zeroes_as_data zero runs are written as data). */
static bool own_chunk_kind(const struct engine *eng, enum chunk_kind kind)
{
    return kind == CHUNK_SKIP || (kind == CHUNK_ZERO && !eng->job->write_zeroes_as_data);
}

/* Cut the next chunk at `off` from the source's block status. */
static int build_chunk(struct engine *eng, struct cursor *cur, uint64_t off, struct chunk *c,
                       struct err *e)
{
    int ret = cursor_load(eng, cur, off, e);
    if (ret < 0)
        return ret;
    c->off = off;
    c->len = 0;
    c->npieces = 0;
    if (own_chunk_kind(eng, cur->kind)) {
        uint64_t stop = whole_cluster_end(eng, off, cur->len);
        if (stop > off) {
            c->kind = cur->kind;
            c->len = stop - off;
            cursor_take(cur, c->len);
            return 0;
        }
        /* The run ends inside this cluster: it goes with the data after it. */
    }
    /* A DATA chunk: whole clusters, up to buf_size (the first chunk may
     * start inside a cluster when the range does). */
    c->kind = CHUNK_DATA;
    uint64_t limit = min_u64(eng->end, align_down(off, eng->align) + eng->buf_size);
    uint64_t pos = off;
    bool has_data = false;
    for (;;) {
        if ((ret = cursor_load(eng, cur, pos, e)) < 0)
            return ret;
        uint64_t take = min_u64(cur->len, limit - pos);
        if (own_chunk_kind(eng, cur->kind) && eng->align > 1)
            take = min_u64(take, align_down(pos, eng->align) + eng->align - pos);
        if ((ret = add_piece(c, cur->kind, take, e)) < 0)
            return ret;
        has_data |= cur->kind == CHUNK_DATA;
        cursor_take(cur, take);
        pos += take;
        if (pos == limit)
            break;
        if (pos % eng->align == 0) {
            /* At a cluster boundary: stop if whole clusters of non-data
             * follow (they make their own chunk). */
            if ((ret = cursor_load(eng, cur, pos, e)) < 0)
                return ret;
            if (own_chunk_kind(eng, cur->kind) && whole_cluster_end(eng, pos, cur->len) > pos)
                break;
        }
    }
    if (!has_data && c->npieces == 1 && own_chunk_kind(eng, c->pieces[0].kind))
        c->kind = c->pieces[0].kind;    /* e.g. zero runs from two layers */
    return 0;
}

/* Hand the chunk in `slot` to the workers, or account for it at once when
 * there is nothing to do. */
static void dispatch_locked(struct engine *eng, unsigned slot)
{
    struct chunk *c = &eng->slots[slot];
    eng->pending[c->range]++;
    if (c->kind == CHUNK_DATA || (c->kind == CHUNK_ZERO && !eng->job->target_is_zero))
        eng->io_dispatched += c->len;
    if (c->kind == CHUNK_SKIP || (c->kind == CHUNK_ZERO && eng->job->target_is_zero)) {
        struct copy_stats st = { .bytes_skipped = c->len };
        complete_locked(eng, slot, 0, &st, NULL);
        return;
    }
    eng->queue[(eng->queue_head + eng->queue_len) % eng->nslots] = slot;
    eng->queue_len++;
    pthread_cond_signal(&eng->work_ready);
}

/* The rate limit: wait (lock held, progress reported, cancel polled)
 * until the I/O dispatched so far is due at job->speed bytes/second. */
static void throttle_locked(struct engine *eng)
{
    if (!eng->job->speed)
        return;
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t elapsed_ns = (int64_t)(now.tv_sec - eng->start.tv_sec) * 1000000000 +
                             (now.tv_nsec - eng->start.tv_nsec);
        double due_ns = (double)eng->io_dispatched * 1e9 / (double)eng->job->speed;
        if (eng->failed || due_ns <= (double)elapsed_ns)
            return;
        report_progress_locked(eng);
        if (cancel_requested(eng->job)) {
            cancel_locked(eng);
            return;
        }
        long wait_ns = (long)min_u64((uint64_t)(due_ns - (double)elapsed_ns), CANCEL_POLL_NS);
        struct timespec ts = now;
        ts.tv_nsec += wait_ns;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&eng->changed, &eng->lock, &ts);
    }
}

/* Cut range `r` into chunks and queue them (lock held). */
static void dispatch_range_locked(struct engine *eng, size_t r)
{
    struct cursor cur = { 0 };  /* block status is looked up afresh per range */
    uint64_t off = eng->ranges[r].offset;
    eng->end = off + eng->ranges[r].length;
    eng->pending[r] = 1;        /* the dispatcher's hold, released at the end */
    while (off < eng->end) {
        if (cancel_requested(eng->job))
            cancel_locked(eng);
        wait_locked(eng, slot_free);
        throttle_locked(eng);
        if (eng->failed)
            return;
        unsigned slot = eng->free_slots[--eng->nfree];
        pthread_mutex_unlock(&eng->lock);

        struct err e = { 0 };
        int ret = build_chunk(eng, &cur, off, &eng->slots[slot], &e);
        eng->slots[slot].range = r;

        pthread_mutex_lock(&eng->lock);
        if (ret < 0) {
            eng->free_slots[eng->nfree++] = slot;
            fail_locked(eng, ret, &e);
            return;
        }
        off += eng->slots[slot].len;
        dispatch_locked(eng, slot);
    }
    range_progress_locked(eng, r);
}

static void dispatch_all(struct engine *eng)
{
    pthread_mutex_lock(&eng->lock);
    clock_gettime(CLOCK_MONOTONIC, &eng->start);
    for (size_t r = 0; r < eng->nranges && !eng->failed; r++)
        dispatch_range_locked(eng, r);
    eng->no_more_chunks = true;
    pthread_cond_broadcast(&eng->work_ready);
    wait_locked(eng, all_finished);
    pthread_mutex_unlock(&eng->lock);
}

/* --- Setup --- */

static int check_job(struct copy_job *job, struct err *e)
{
    if (!job->src && !job->source_zero_past_end)
        return err_set(e, EINVAL, "no source to copy from");
    uint64_t src_start = src_at(job, job->offset);
    if (job->source_zero_past_end && job->src_shift)
        return err_set(e, EINVAL, "a shifted source cannot read zeroes past its end");
    if (!job->source_zero_past_end &&
        ((job->src_shift < 0 && 0 - (uint64_t)job->src_shift > job->offset) ||
         src_start > job->src->size || job->length > job->src->size - src_start))
        return err_set(e, EINVAL, "%s: copy range is beyond the end of the image",
                       job->src->filename);
    if (job->offset > job->dst->size || job->length > job->dst->size - job->offset)
        return err_set(e, EINVAL, "%s: target is smaller (%llu bytes) than the range to "
                       "copy", job->dst->filename, (unsigned long long)job->dst->size);
    if (job->explicit_zeroes && job->target_is_zero)
        return err_set(e, EINVAL, "explicit zeroes and target_is_zero exclude each other");
    if (job->copy_offload && (job->compress || job->skip_identical))
        return err_set(e, EINVAL, "copy_offload excludes compress and skip_identical");
    if (job->skip_identical && (job->compress || job->target_is_zero || job->explicit_zeroes))
        return err_set(e, EINVAL, "skip_identical excludes compress, target_is_zero and "
                       "explicit zeroes");
    uint64_t prev_end = job->offset;
    for (size_t i = 0; job->ranges && i < job->nranges; i++) {
        const struct copy_range *r = &job->ranges[i];
        if (!r->length || r->offset < prev_end || r->offset > job->offset + job->length ||
            r->length > job->offset + job->length - r->offset)
            return err_set(e, EINVAL, "copy range %zu (%llu+%llu) is empty, out of order or "
                           "outside the copy", i, (unsigned long long)r->offset,
                           (unsigned long long)r->length);
        prev_end = r->offset + r->length;
    }
    if (job->max_in_flight > COPY_MAX_IN_FLIGHT)
        return err_set(e, EINVAL, "at most %d requests can be in flight",
                       COPY_MAX_IN_FLIGHT);
    if (job->compress)
        return blk_check_compression(job->dst->drv, job->dst->filename, e);
    return 0;
}

/* Whether the source or the target is an NBD export. */
static bool network_job(const struct copy_job *job)
{
    return (job->src && blk_is_network(job->src)) || blk_is_network(job->dst);
}

/* NETWORK_BUF_SIZE when an NBD export is at either end: the server and
 * this process each copy a request's payload twice (file or socket into a
 * buffer, buffer out), and 512 KiB stays in a core's cache in between
 * where 2 MiB does not.  4 GiB from qemu-nbd into a raw file, 2 CPUs:
 * 16 x 512 KiB take ~1.7 s of this process's CPU and ~1.2 s of the
 * server's, 4 x 2 MiB ~2.0 s and ~2.5 s. */
static size_t default_buf_size(const struct copy_job *job)
{
    return network_job(job) ? NETWORK_BUF_SIZE : DEFAULT_BUF_SIZE;
}

static int engine_init(struct engine *eng, struct copy_job *job, unsigned nworkers,
                       struct err *e)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&eng->lock, NULL);
    pthread_cond_init(&eng->work_ready, NULL);
    pthread_cond_init(&eng->changed, &attr);
    pthread_condattr_destroy(&attr);
    eng->job = job;
    eng->whole = (struct copy_range){ job->offset, job->length };
    eng->ranges = job->ranges ? job->ranges : &eng->whole;
    eng->nranges = job->ranges ? job->nranges : (job->length ? 1 : 0);
    for (size_t i = 0; i < eng->nranges; i++)
        eng->total += eng->ranges[i].length;
    eng->pending = calloc(eng->nranges ? eng->nranges : 1, sizeof(*eng->pending));
    eng->finished = calloc(eng->nranges ? eng->nranges : 1, sizeof(*eng->finished));
    eng->range_failed = calloc(eng->nranges ? eng->nranges : 1, sizeof(*eng->range_failed));
    if (!eng->pending || !eng->finished || !eng->range_failed)
        return err_set(e, ENOMEM, "out of memory");
    eng->align = blk_write_alignment(job->dst);
    eng->unit = job->zero_detect ? job->zero_detect
                                 : (uint32_t)max_u64(4096, eng->align);
    size_t buf = job->buf_size ? job->buf_size : default_buf_size(job);
    eng->buf_size = (size_t)max_u64(align_up(buf, eng->align), eng->align);
    eng->cmp_unit = (uint32_t)max_u64(eng->unit, eng->align);
    /* Twice as many chunks as workers, so that the next ones are queued
     * while the workers are busy. */
    eng->nslots = nworkers * 2;
    eng->slots = calloc(eng->nslots, sizeof(*eng->slots));
    eng->queue = calloc(eng->nslots, sizeof(*eng->queue));
    eng->free_slots = calloc(eng->nslots, sizeof(*eng->free_slots));
    if (!eng->slots || !eng->queue || !eng->free_slots)
        return err_set(e, ENOMEM, "out of memory");
    for (unsigned i = 0; i < eng->nslots; i++)
        eng->free_slots[eng->nfree++] = i;
    return 0;
}

static void engine_destroy(struct engine *eng)
{
    if (eng->slots) {
        for (unsigned i = 0; i < eng->nslots; i++)
            free(eng->slots[i].pieces);
    }
    free(eng->pending);
    free(eng->finished);
    free(eng->range_failed);
    free(eng->slots);
    free(eng->queue);
    free(eng->free_slots);
    pthread_mutex_destroy(&eng->lock);
    pthread_cond_destroy(&eng->work_ready);
    pthread_cond_destroy(&eng->changed);
}

/* Start the workers with signals blocked, so that SIGINT and SIGTERM reach
 * the calling thread (which polls the cancel flag) and never interrupt a
 * worker's I/O.  Each gets a buffer of `bytes`.  Returns how many started. */
static unsigned start_workers(struct worker *w, unsigned n, size_t bytes,
                              void *(*main)(void *), struct err *e)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    unsigned started = 0;
    for (unsigned i = 0; i < n; i++) {
        if (posix_memalign((void **)&w[i].buf, 4096, bytes)) {
            w[i].buf = NULL;
            err_set(e, ENOMEM, "out of memory for a %zu-byte copy buffer", bytes);
            break;
        }
        int ret = pthread_create(&w[i].thread, NULL, main, &w[i]);
        if (ret) {
            free(w[i].buf);
            w[i].buf = NULL;
            err_set(e, ret, "cannot start a copy thread: %s", strerror(ret));
            break;
        }
        started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return started;
}

/* A kept worker: one engine per generation, until the pool stops. */
static void *kept_worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct copy_workers *pool = w->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stop && pool->generation == seen)
            pthread_cond_wait(&pool->changed, &pool->lock);
        if (pool->stop)
            break;
        seen = pool->generation;
        w->eng = pool->eng;
        pthread_mutex_unlock(&pool->lock);
        worker_main(w);
        pthread_mutex_lock(&pool->lock);
        if (--pool->busy == 0)
            pthread_cond_broadcast(&pool->changed);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

/* COPY_NETWORK_IN_FLIGHT from or to a network export, whose requests are
 * each a round trip: the small ranges of a pull backup (its dirty 64 KiB
 * clusters, each a request of its own) and the NETWORK_BUF_SIZE chunks of
 * a whole-disk copy. */
static unsigned default_in_flight(const struct copy_job *job)
{
    return network_job(job) ? COPY_NETWORK_IN_FLIGHT : COPY_DEFAULT_IN_FLIGHT;
}

/* The bytes of buffer each worker needs for `eng`. */
static size_t worker_buf_bytes(const struct engine *eng)
{
    return eng->buf_size * (eng->job->skip_identical ? 2 : 1);
}

/* Size the engine as copy_run would for `job` (check_job passed). */
static unsigned job_workers(const struct copy_job *job)
{
    if (job->workers)
        return job->workers->n;
    return job->max_in_flight ? job->max_in_flight : default_in_flight(job);
}

/* Hand the engine to the kept workers, copy, wait until each is done
 * with it (they then wait for the next copy_run). */
static int run_kept(struct copy_workers *pool, struct engine *eng, struct err *e)
{
    if (worker_buf_bytes(eng) > pool->buf_bytes)
        return err_set(e, EINVAL, "copy buffers of %zu bytes are too small for %zu-byte "
                       "requests", pool->buf_bytes, worker_buf_bytes(eng));
    pthread_mutex_lock(&pool->lock);
    pool->eng = eng;
    pool->busy = pool->n;
    pool->generation++;
    pthread_cond_broadcast(&pool->changed);
    pthread_mutex_unlock(&pool->lock);
    dispatch_all(eng);
    pthread_mutex_lock(&pool->lock);
    while (pool->busy)
        pthread_cond_wait(&pool->changed, &pool->lock);
    pool->eng = NULL;
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

/* Start workers of the copy's own, copy, join them. */
static int run_own(struct engine *eng, unsigned nworkers, struct err *e)
{
    struct worker *workers = calloc(nworkers, sizeof(*workers));
    if (!workers)
        return err_set(e, ENOMEM, "out of memory");
    for (unsigned i = 0; i < nworkers; i++)
        workers[i].eng = eng;
    /* Fewer workers than asked for still copy correctly. */
    unsigned started = start_workers(workers, nworkers, worker_buf_bytes(eng), worker_main, e);
    if (started) {
        err_clear(e);
        dispatch_all(eng);
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(workers[i].thread, NULL);
        free(workers[i].buf);
    }
    free(workers);
    return started ? 0 : -e->code;
}

int copy_run(struct copy_job *job, struct err *e)
{
    int ret = check_job(job, e);
    if (ret < 0)
        return ret;
    unsigned nworkers = job_workers(job);
    struct engine eng = { 0 };
    ret = engine_init(&eng, job, nworkers, e);
    if (ret == 0)
        ret = job->workers ? run_kept(job->workers, &eng, e) : run_own(&eng, nworkers, e);
    if (ret == 0) {
        add_stats(&job->stats, &eng.stats);
        ret = eng.failed;
        if (ret < 0)
            *e = eng.error;
        else if (eng.nignored)
            ret = err_set(e, EIO, "%u request%s failed and %s skipped (first: %s); run the "
                          "job again to copy what is left", eng.nignored,
                          eng.nignored == 1 ? "" : "s", eng.nignored == 1 ? "was" : "were",
                          eng.ignored_error.msg);
    }
    engine_destroy(&eng);
    return ret;
}

int copy_workers_start(const struct copy_job *job, struct copy_workers **out, struct err *e)
{
    struct copy_workers *pool = calloc(1, sizeof(*pool));
    unsigned n = job->max_in_flight ? job->max_in_flight : default_in_flight(job);
    if (n > COPY_MAX_IN_FLIGHT)
        n = COPY_MAX_IN_FLIGHT;
    if (pool)
        pool->w = calloc(n, sizeof(*pool->w));
    if (!pool || !pool->w) {
        free(pool);
        return err_set(e, ENOMEM, "out of memory");
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->changed, NULL);
    uint32_t align = blk_write_alignment(job->dst);
    size_t buf = job->buf_size ? job->buf_size : default_buf_size(job);
    buf = (size_t)max_u64(align_up(buf, align), align);
    pool->buf_bytes = buf * (job->skip_identical ? 2 : 1);
    for (unsigned i = 0; i < n; i++)
        pool->w[i].pool = pool;
    pool->n = start_workers(pool->w, n, pool->buf_bytes, kept_worker_main, e);
    if (!pool->n) {
        copy_workers_stop(pool);
        return -e->code;
    }
    err_clear(e);
    *out = pool;
    return 0;
}

void copy_workers_stop(struct copy_workers *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->stop = true;
    pthread_cond_broadcast(&pool->changed);
    pthread_mutex_unlock(&pool->lock);
    for (unsigned i = 0; i < pool->n; i++) {
        pthread_join(pool->w[i].thread, NULL);
        free(pool->w[i].buf);
    }
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->changed);
    free(pool->w);
    free(pool);
}
