#include "mirror/job.h"

#include "formats/blockdev-bitmaps.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct mirror_job {
    const struct mirror_params *p;
    struct blockdev *src, *dst;
    const struct blockdev *base;    /* copy what lies above this layer (NULL: all) */
    char *tmp_path;                 /* a new target, under its temporary name */
    struct blockdev *explicit_backing;  /* params->target_backing, opened */
    struct dirty_bitmap *bitmap;    /* --sync=bitmap: the source's bitmap */
    bool bitmap_created;            /* ... added by this job (bitmap_create) */
    bool frozen;                    /* ... frozen for this job */
    bool bitmap_changed;            /* ... consumed ranges (always mode) */
    struct copy_range *ranges;      /* ... its dirty extents, widened */
    size_t nranges;
    /* Always mode, existing target: the ranges (or with none, the whole
     * disk: entry 0) whose writes have returned.  Their bits are cleared
     * only once a flush of the target has made them durable. */
    bool *copied;
    uint64_t total, done;
    struct copy_stats stats;
    const struct mirror_set_options *opts;
    bool src_borrowed;              /* the caller's open source (mirror_job_prepare) */
    /* The live mirror's bitmap is not frozen but written ahead (bitmap/dirty.h):
     * it keeps every bit, and the writes made meanwhile, until the job
     * completes in sync; a crash leaves it consistent, so a later run resumes. */
    bool live, write_ahead;
    struct chain_state chain;       /* export's backup record */
    bool forget_chain;              /* a forced job clears an export chain's bitmap */
};

int mirror_parse_sync(const char *s, enum mirror_sync *sync, bool *incremental)
{
    static const struct { const char *name; enum mirror_sync sync; bool incremental; } t[] = {
        { "full", MIRROR_SYNC_FULL, false }, { "top", MIRROR_SYNC_TOP, false },
        { "none", MIRROR_SYNC_NONE, false }, { "bitmap", MIRROR_SYNC_BITMAP, false },
        { "incremental", MIRROR_SYNC_BITMAP, true },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (!strcmp(s, t[i].name)) {
            *sync = t[i].sync;
            *incremental = t[i].incremental;
            return 0;
        }
    }
    return -EINVAL;
}

const char *mirror_sync_name(enum mirror_sync sync)
{
    switch (sync) {
    case MIRROR_SYNC_FULL: return "full";
    case MIRROR_SYNC_TOP: return "top";
    case MIRROR_SYNC_NONE: return "none";
    case MIRROR_SYNC_BITMAP: return "bitmap";
    }
    return "?";
}

int mirror_parse_bitmap_mode(const char *s, enum mirror_bitmap_mode *mode)
{
    if (!strcmp(s, "on-success"))
        *mode = MIRROR_BITMAP_ON_SUCCESS;
    else if (!strcmp(s, "always"))
        *mode = MIRROR_BITMAP_ALWAYS;
    else if (!strcmp(s, "never"))
        *mode = MIRROR_BITMAP_NEVER;
    else
        return -EINVAL;
    return 0;
}

int mirror_parse_target_mode(const char *s, enum mirror_target_mode *mode)
{
    if (!strcmp(s, "existing"))
        *mode = MIRROR_TARGET_EXISTING;
    else if (!strcmp(s, "absolute-paths"))
        *mode = MIRROR_TARGET_ABSOLUTE_PATHS;
    else if (!strcmp(s, "relative-paths"))
        *mode = MIRROR_TARGET_RELATIVE_PATHS;
    else
        return -EINVAL;
    return 0;
}

int mirror_parse_error_action(const char *s, enum copy_error_action *action)
{
    if (!strcmp(s, "report"))
        *action = COPY_ERROR_REPORT;
    else if (!strcmp(s, "ignore"))
        *action = COPY_ERROR_IGNORE;
    else if (!strcmp(s, "retry"))
        *action = COPY_ERROR_RETRY;
    else
        return -EINVAL;
    return 0;
}

static void emit(struct mirror_job *job, enum mirror_event_type type, const char *error)
{
    if (!job->opts->event)
        return;
    struct mirror_event ev = {
        .type = type, .job = job->p, .done = job->done, .total = job->total,
        .error = error, .stats = &job->stats,
    };
    job->opts->event(job->opts->opaque, &ev);
}

/* The layer of the source's chain that --base names: relative names are
 * relative to the image that has it as backing file, as in commit and
 * qemu-img (blk_chain_find_backing). */
static int find_chain_layer(struct blockdev *src, const char *path,
                            const struct blockdev **out, struct err *e)
{
    if ((*out = blk_chain_find_backing(src, path)))
        return 0;
    char *beside = blk_resolve_backing_path(src->filename, path);
    bool self = beside && blk_is_named(src, beside);
    free(beside);
    if (self)
        return err_set(e, EINVAL, "%s: the base cannot be the source itself", path);
    return err_set(e, EINVAL, "%s: not in the backing chain of %s (see imgtool info "
                   "--backing-chain)", path, src->filename);
}

/* Canonical directory of a file that may not exist yet. */
static char *canonical_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return NULL;
    char *dir = realpath(dirname(copy), NULL);
    free(copy);
    return dir;
}

/* The path of `to` (absolute, canonical) relative to directory `from_dir`. */
static char *relative_path(const char *from_dir, const char *to)
{
    size_t common = 0, i = 0;
    /* Longest common prefix ending at a path component boundary. */
    while (from_dir[i] && from_dir[i] == to[i]) {
        i++;
        if (to[i] == '/' && (from_dir[i] == '/' || !from_dir[i]))
            common = i;
    }
    if (!from_dir[i] && to[i] == '/')
        common = i;
    size_t ups = 0;
    for (const char *c = from_dir + common; *c; c++)
        if (*c == '/')
            ups++;
    if (!strcmp(from_dir, "/"))
        ups = 0;
    const char *rest = to + common + (to[common] == '/');
    char *out = malloc(ups * 3 + strlen(rest) + 1);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t k = 0; k < ups; k++)
        strcat(out, "../");
    strcat(out, rest);
    return out;
}

/* The name the new target records for its backing file `layer`. */
static int backing_name_for(struct mirror_job *job, const struct blockdev *layer, char **out,
                            struct err *e)
{
    char *abs = realpath(layer->filename, NULL);
    if (!abs)
        return err_errno(e, errno, "%s: cannot resolve path", layer->filename);
    if (job->p->target_mode != MIRROR_TARGET_RELATIVE_PATHS) {
        *out = abs;
        return 0;
    }
    char *dir = canonical_dir_of(job->p->target);
    if (!dir) {
        free(abs);
        return err_errno(e, errno, "%s: cannot resolve the target's directory", job->p->target);
    }
    *out = relative_path(dir, abs);
    free(dir);
    free(abs);
    return *out ? 0 : err_set(e, ENOMEM, "out of memory");
}

/* Which layer a new target is backed by, per sync mode. */
static const struct blockdev *new_target_backing(struct mirror_job *job)
{
    if (job->explicit_backing)
        return job->explicit_backing;
    switch (job->p->sync) {
    case MIRROR_SYNC_TOP: return job->base;
    case MIRROR_SYNC_NONE: return job->src;
    case MIRROR_SYNC_FULL: return job->base;     /* set by --base, else NULL */
    case MIRROR_SYNC_BITMAP: return NULL;
    }
    return NULL;
}

/* A live mirror's target is written with the served image's cache mode
 * (O_DIRECT under serve --cache=none), as it may be served in its place. */
static unsigned target_open_flags(const struct mirror_job *job)
{
    return BLK_OPEN_RDWR | (job->live ? job->src->open_flags & BLK_OPEN_DIRECT : 0);
}

static int create_target(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    const struct blockdev *backing = new_target_backing(job);
    char *backing_name = NULL;
    int ret;
    if (backing && (ret = backing_name_for(job, backing, &backing_name, e)) < 0)
        return ret;
    struct blk_create_params cp = {
        .filename = p->target, .size = job->src->size, .opts = p->target_opts,
        .backing_file = backing_name,
        .backing_format = backing ? backing->drv->name : NULL,
        .open_opts = job->opts->open_opts,
    };
    const char *fmt = p->target_format ? p->target_format : job->src->drv->name;
    ret = blk_create_begin(fmt, &cp, &job->tmp_path, e);
    free(backing_name);
    if (ret < 0)
        return ret;
    ret = blk_open(job->tmp_path, fmt, target_open_flags(job) | BLK_OPEN_DROP_BEHIND,
                   job->opts->open_opts, &job->dst, e);
    if (ret < 0)
        return ret;     /* mirror_run_set names the target instead */
    blk_defer_flushes(job->dst, true);  /* nobody sees it until the rename */
    return 0;
}

static int open_existing_target(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    int ret = blk_open(p->target, p->target_format, target_open_flags(job), job->opts->open_opts,
                       &job->dst, e);
    if (ret < 0 || (ret = blk_check_distinct(job->dst, job->src, e)) < 0)
        return ret;
    if (job->dst->size != job->src->size)
        return err_set(e, EINVAL, "%s: target size %llu differs from source size %llu "
                       "(resize it first; an existing target is never truncated)",
                       p->target, (unsigned long long)job->dst->size,
                       (unsigned long long)job->src->size);
    return 0;
}

/* The dirty extents of the bitmap, widened to the target's clusters: a
 * cluster the job writes must hold the source's data in full, or a diff
 * image rebased later would hide its backing file's data in the part the
 * bitmap did not mark (the problem of mirror-bitmap-modes-2024). */
static int collect_ranges(struct mirror_job *job, struct err *e)
{
    const struct hbitmap *bits = dirty_bitmap_bits(job->bitmap);
    uint64_t size = job->src->size;
    uint64_t align = blk_write_alignment(job->dst);
    uint64_t start = 0, off, len;
    size_t cap = 0;
    while (start < size && hbitmap_next_dirty_extent(bits, start, size, &off, &len)) {
        uint64_t lo = align_down(off, align);
        uint64_t hi = min_u64(size, align_up(off + len, align));
        if (job->nranges && job->ranges[job->nranges - 1].offset +
                            job->ranges[job->nranges - 1].length >= lo) {
            struct copy_range *last = &job->ranges[job->nranges - 1];
            last->length = max_u64(last->offset + last->length, hi) - last->offset;
        } else {
            if (job->nranges == cap) {
                cap = cap ? cap * 2 : 64;
                struct copy_range *r = realloc(job->ranges, cap * sizeof(*r));
                if (!r)
                    return err_set(e, ENOMEM, "out of memory");
                job->ranges = r;
            }
            job->ranges[job->nranges++] = (struct copy_range){ lo, hi - lo };
        }
        start = off + len;
    }
    return 0;
}

static int prepare_bitmap(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    int ret = blk_bitmaps_available(job->src) ? blk_bitmaps_load(job->src, e)
              : err_set(e, ENOTSUP, "%s: format '%s' has no persistent bitmaps, so "
                        "--sync=bitmap cannot be used", p->source, job->src->drv->name);
    if (ret < 0)
        return ret;
    job->bitmap = blk_bitmap_find(job->src, p->bitmap);
    if (!job->bitmap && p->bitmap_create) {
        ret = blk_bitmap_add(job->src, p->bitmap, blk_bitmap_default_granularity(job->src),
                             BLK_BITMAP_PERSISTENT, &job->bitmap, e);
        if (ret < 0)
            return ret;
        job->bitmap_created = true;
    }
    if (!job->bitmap)
        return blk_bitmap_get(job->src, p->bitmap, &job->bitmap, e);
    if (!p->chain && p->bitmap_mode != MIRROR_BITMAP_NEVER) {
        if ((ret = chain_check_consumer(job->src, p->bitmap, p->force_bitmap, e)) < 0)
            return ret;
        job->forget_chain = p->force_bitmap;
    }
    if (dirty_bitmap_inconsistent(job->bitmap))
        return err_set(e, EINVAL, "%s: bitmap '%s' is inconsistent (the image was not closed "
                       "cleanly while it recorded writes): remove it, take a full copy and "
                       "add a new bitmap", p->source, p->bitmap);
    if (p->bitmap_mode != MIRROR_BITMAP_NEVER && job->live) {
        dirty_bitmap_set_write_ahead(job->bitmap, true);
        job->write_ahead = true;
    } else if (p->bitmap_mode != MIRROR_BITMAP_NEVER) {
        if ((ret = dirty_bitmap_freeze(job->bitmap, e)) < 0)
            return ret;
        job->frozen = true;
    }
    return p->sync == MIRROR_SYNC_BITMAP ? collect_ranges(job, e) : 0;
}

/* The bitmaps of an NBD export are the server's (QEMU's pull-mode backup
 * and qemu-nbd -B manage them): a job reads them and changes nothing, so
 * whatever would clear, create or add one is refused. */
static int check_remote_source(const struct mirror_params *p, struct err *e)
{
    if (!blk_name_is_network(p->source))
        return 0;
    if (p->checkpoint)
        return err_set(e, EROFS, "%s: --checkpoint would add a bitmap on the server, and "
                       "imgtool never changes the server's bitmaps (create checkpoints there, "
                       "e.g. virsh checkpoint-create or QMP block-dirty-bitmap-add)", p->source);
    if (p->bitmap && p->bitmap_create)
        return err_set(e, EROFS, "%s: bitmap '%s' would be created or reset on the server, and "
                       "imgtool never changes the server's bitmaps (start it there; copy "
                       "without --bitmap)", p->source, p->bitmap);
    if (p->bitmap && p->bitmap_mode != MIRROR_BITMAP_NEVER)
        return err_set(e, EROFS, "%s: bitmap '%s' is the server's and imgtool never changes "
                       "it, so its bits cannot be cleared (use --bitmap-mode=never)", p->source,
                       p->bitmap);
    return 0;
}

static int prepare_on_source(struct mirror_job *job, struct err *e);

static int prepare(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    int ret = check_remote_source(p, e);
    if (ret < 0)
        return ret;
    /* A job that clears bits of the source's bitmap changes the image's
     * bitmaps (and nothing else): BITMAPS_ONLY makes that one atomic
     * store, without marking the bitmaps in use.  A network source has
     * neither bitmaps we may change nor locks. */
    bool edits_bitmap = !blk_name_is_network(p->source) &&
                        ((p->bitmap && p->bitmap_mode != MIRROR_BITMAP_NEVER) ||
                         p->checkpoint || p->exclusive);
    if (edits_bitmap && p->force_share)
        return err_set(e, EINVAL, "%s: -U cannot be used when the job clears bits of the "
                       "bitmap (use --bitmap-mode=never)", p->source);
    unsigned sflags = (p->force_share ? BLK_OPEN_FORCE_SHARE : 0) |
                      (edits_bitmap ? BLK_OPEN_RDWR | BLK_OPEN_BITMAPS_ONLY : 0);
    ret = blk_open(p->source, p->source_format, sflags, job->opts->open_opts, &job->src, e);
    if (ret < 0)
        return ret;
    return prepare_on_source(job, e);
}

/* Everything but opening the source: base, target, bitmap. */
static int prepare_on_source(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    int ret;
    if (p->base) {
        if (p->sync != MIRROR_SYNC_FULL && p->sync != MIRROR_SYNC_TOP)
            return err_set(e, EINVAL, "--base works with --sync=full or top, not %s",
                           mirror_sync_name(p->sync));
        if ((ret = find_chain_layer(job->src, p->base, &job->base, e)) < 0)
            return ret;
    } else if (p->sync == MIRROR_SYNC_TOP) {
        job->base = job->src->backing;
    }
    if (p->target_backing) {
        /* Relative to the new target, as its backing file name will be
         * (create -b, qemu-img create -b). */
        char *path = blk_resolve_backing_path(p->target, p->target_backing);
        if (!path)
            return err_set(e, ENOMEM, "out of memory");
        ret = blk_open(path, p->target_backing_format, BLK_OPEN_NO_BACKING,
                       job->opts->open_opts, &job->explicit_backing, e);
        free(path);
        if (ret < 0)
            return ret;
        if (job->explicit_backing->size != job->src->size)
            return err_set(e, EINVAL, "%s: size %llu differs from %s (%llu bytes): a backup "
                           "chain needs images of one size", p->target_backing,
                           (unsigned long long)job->explicit_backing->size, p->source,
                           (unsigned long long)job->src->size);
    }
    if (p->chain && (ret = chain_check(&job->chain, p->chain, job->src,
                                       job->explicit_backing, p->target, e)) < 0)
        return ret;
    enum mirror_target_mode mode = p->target_mode;
    if (mode == MIRROR_TARGET_AUTO)
        mode = blk_target_exists(p->target) ? MIRROR_TARGET_EXISTING
                                            : MIRROR_TARGET_ABSOLUTE_PATHS;
    if (mode == MIRROR_TARGET_EXISTING) {
        if (p->target_opts && p->target_opts->count)
            return err_set(e, EINVAL, "%s: -o applies to a new target; this one exists",
                           p->target);
        ret = open_existing_target(job, e);
    } else {
        if (blk_target_exists(p->target) && p->target_mode != MIRROR_TARGET_AUTO)
            return err_set(e, EEXIST, "%s: exists; use --mode=existing to write into it, "
                           "or remove it", p->target);
        ret = create_target(job, e);
        if (ret == 0 && p->chain)
            ret = chain_mark_target(&job->chain, job->dst, e);
    }
    if (ret < 0)
        return ret;
    if (p->bitmap && (ret = prepare_bitmap(job, e)) < 0)
        return ret;
    if (p->checkpoint && blk_bitmap_find(job->src, p->checkpoint))
        return err_set(e, EEXIST, "%s: a bitmap named '%s' exists already; choose another "
                       "checkpoint name", p->source, p->checkpoint);
    job->total = p->sync == MIRROR_SYNC_NONE ? 0 : job->src->size;
    if (job->ranges) {
        job->total = 0;
        for (size_t i = 0; i < job->nranges; i++)
            job->total += job->ranges[i].length;
    }
    return 0;
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct mirror_job *job = opaque;
    uint64_t before = job->done;
    job->done = done;
    (void)total;
    if (job->opts->event) {
        struct mirror_event ev = {
            .type = MIRROR_EVENT_PROGRESS, .job = job->p, .done = done, .total = job->total,
            .offset = before, .length = done - before,
        };
        job->opts->event(job->opts->opaque, &ev);
    }
}

/* --bitmap-mode=always: every byte of a range has been written to the
 * target, but perhaps only to its caches (page cache, qcow2's L2 cache):
 * note it; its bits go in clear_flushed_ranges, after the target's flush. */
static void on_range_done(void *opaque, size_t index)
{
    struct mirror_job *job = opaque;
    if (job->copied)
        job->copied[index] = true;
}

/* Whether the job clears bits as it goes: always mode into an existing
 * target.  A new target is removed if the set fails, taking the data with
 * it: its bits may only go when the whole set succeeds (abdicate). */
static bool clears_as_it_goes(const struct mirror_job *job)
{
    return job->frozen && job->p->bitmap_mode == MIRROR_BITMAP_ALWAYS && !job->tmp_path;
}

/* The target's flush succeeded: the ranges copied so far are durable, so
 * their bits may go (the rule of mirror/job.h). */
static void clear_flushed_ranges(struct mirror_job *job)
{
    size_t n = job->ranges ? job->nranges : 1;
    for (size_t i = 0; job->copied && i < n; i++) {
        struct copy_range r = job->ranges ? job->ranges[i]
                                          : (struct copy_range){ 0, job->src->size };
        struct err e = { 0 };
        if (job->copied[i] &&
            dirty_bitmap_job_consume_range(job->bitmap, r.offset, r.length, &e) == 0)
            job->bitmap_changed = true;
    }
}

/* After the copy, successful or not: flush the target (qcow2 writes back
 * its cached L2 and refcount tables, then every file is fdatasync'ed), and
 * only then clear the bits of what was copied.  A failed copy into a new
 * target needs no flush: the target is removed. */
static int flush_target(struct mirror_job *job, int copy_ret, struct err *e)
{
    blk_defer_flushes(job->dst, false);
    if (copy_ret < 0 && job->tmp_path)
        return copy_ret;
    struct err fe = { 0 };
    int ret = blk_flush(job->dst, copy_ret < 0 ? &fe : e);
    if (ret == 0)
        clear_flushed_ranges(job);
    return copy_ret < 0 ? copy_ret : ret;
}

static int run_copy(struct mirror_job *job, struct err *e)
{
    if (job->p->sync == MIRROR_SYNC_NONE)
        return 0;
    if (job->p->sync == MIRROR_SYNC_BITMAP && !job->nranges)
        return 0;   /* nothing dirty */
    /* In bitmap mode the target is a diff image, to be rebased onto a
     * full copy later (or read through the backing file it has now): its
     * zero ranges must be allocated zeroes (qcow2 zero clusters; real
     * zeroes in a raw file), not holes that would show the backing file's
     * data, whoever created the target and whatever it reads now (QEMU's
     * blockdev-backup writes zero clusters there too).  A new target
     * without a backing file otherwise reads zeroes everywhere. */
    bool new_plain = job->tmp_path && !job->dst->backing;
    bool diff_image = job->p->sync == MIRROR_SYNC_BITMAP;
    struct copy_job cj = {
        .src = job->src, .base = job->base, .dst = job->dst,
        .offset = 0, .length = job->src->size,
        /* --sync=top from an NBD export of a chain (no backing file of
         * its own) into a backed target: what the export's top layer
         * allocates (qemu:allocation-depth). */
        .top_layer_only = job->p->sync == MIRROR_SYNC_TOP && !job->base &&
                          (job->explicit_backing || job->dst->backing),
        .ranges = job->ranges, .nranges = job->nranges, .range_done = on_range_done,
        .explicit_zeroes = diff_image,
        .target_is_zero = !diff_image && (job->p->target_is_zero || new_plain),
        .buf_size = job->p->buf_size,
        .max_in_flight = (unsigned)job->p->max_in_flight,
        .speed = job->p->speed,
        .compress = job->p->compress,
        .on_source_error = job->p->on_source_error,
        .on_target_error = job->p->on_target_error,
        .progress = on_progress, .opaque = job,
        .cancel = job->opts->cancel,
    };
    if (clears_as_it_goes(job) &&
        !(job->copied = calloc(job->nranges ? job->nranges : 1, sizeof(bool))))
        return err_set(e, ENOMEM, "out of memory");
    int ret = copy_run(&cj, e);
    job->stats = cj.stats;
    return flush_target(job, ret, e);
}

/* End the job's use of the bitmap: on success the copied bits go (the
 * bitmap keeps only writes made meanwhile, none offline); on failure it
 * gets back what was not copied (always) or everything (on-success).
 * Then store it, unless nothing changed. */
static int finish_bitmap(struct mirror_job *job, bool success, bool in_sync, struct err *e)
{
    const struct mirror_params *p = job->p;
    bool changed = false;
    int ret = 0;
    if (job->write_ahead) {
        /* Stored as the other bitmaps again (in use while served). */
        job->write_ahead = false;
        dirty_bitmap_set_write_ahead(job->bitmap, false);
        if (success && in_sync && (ret = dirty_bitmap_clear(job->bitmap, e)) < 0)
            return ret;
        changed = true;
    }
    if (job->frozen) {
        job->frozen = false;
        ret = success ? dirty_bitmap_abdicate(job->bitmap, e)
                      : dirty_bitmap_reclaim(job->bitmap, e);
        /* A live mirror that completed: the successor's writes reached the
         * target too (written through or copied), so nothing is left. */
        if (ret == 0 && success && in_sync)
            ret = dirty_bitmap_clear(job->bitmap, e);
        if (ret < 0)
            return ret;
        changed = success || job->bitmap_changed;
    }
    if (job->bitmap_created) {
        if (!success)
            blk_bitmap_remove(job->src, p->bitmap, e);  /* never stored */
        changed |= success;
    }
    if (success && p->checkpoint) {
        struct dirty_bitmap *cp;
        ret = blk_bitmap_add(job->src, p->checkpoint, blk_bitmap_default_granularity(job->src),
                             BLK_BITMAP_PERSISTENT, &cp, e);
        if (ret < 0)
            return ret;
        changed = true;
    }
    if (!changed)
        return 0;   /* as it was on disk */
    /* The record first: a crash before the store leaves more dirty bits
     * than the record needs, never fewer. */
    if (success && p->chain && (ret = chain_mark_source(&job->chain, job->src, e)) < 0)
        return ret;
    if (success && job->forget_chain && (ret = chain_forget(job->src, p->bitmap, e)) < 0)
        return ret;
    ret = blk_bitmaps_store(job->src, e);
    if (ret < 0)
        err_prefix(e, "%s: the bitmaps were not updated (a later run copies their ranges "
                   "again): ", p->source);
    return ret;
}

static void close_job(struct mirror_job *job, bool success)
{
    blk_close(job->dst);
    job->dst = NULL;
    if (job->tmp_path) {
        if (!success)
            blk_create_abort(job->tmp_path, job->p->target);
        free(job->tmp_path);
        job->tmp_path = NULL;
    }
    if (!job->src_borrowed)
        blk_close(job->src);
    job->src = NULL;
    blk_close(job->explicit_backing);
    job->explicit_backing = NULL;
    free(job->ranges);
    job->ranges = NULL;
    free(job->copied);
    job->copied = NULL;
    chain_state_free(&job->chain);
}

int mirror_run_set(const struct mirror_params *params, int n,
                   const struct mirror_set_options *opts, struct err *e)
{
    struct mirror_job *jobs = calloc((size_t)n, sizeof(*jobs));
    if (!jobs)
        return err_set(e, ENOMEM, "out of memory");
    int ret = 0, i;
    for (i = 0; i < n && ret == 0; i++) {
        jobs[i].p = &params[i];
        jobs[i].opts = opts;
        ret = prepare(&jobs[i], e);
    }
    for (i = 0; i < n && ret == 0; i++) {
        emit(&jobs[i], MIRROR_EVENT_STARTED, NULL);
        ret = run_copy(&jobs[i], e);
        if (ret == 0)
            emit(&jobs[i], MIRROR_EVENT_READY, NULL);
    }
    /* Only a set that fully succeeded makes its new targets appear. */
    for (i = 0; i < n && ret == 0; i++) {
        blk_close(jobs[i].dst);
        jobs[i].dst = NULL;
        if (jobs[i].tmp_path) {
            ret = blk_create_commit(jobs[i].tmp_path, jobs[i].p->target, e);
            free(jobs[i].tmp_path);
            jobs[i].tmp_path = NULL;
        }
    }
    /* Bitmaps last: a new target must exist before its bits are cleared. */
    int copy_ret = ret;
    for (i = 0; i < n; i++) {
        if (!jobs[i].p || !jobs[i].src)
            continue;
        struct err be = { 0 };
        int bret = finish_bitmap(&jobs[i], copy_ret == 0, false, &be);
        if (bret < 0 && ret == 0) {
            ret = bret;
            *e = be;
        }
    }
    for (i = 0; i < n; i++) {
        if (!jobs[i].p)
            continue;
        /* A new target is the user's file, whatever its name meanwhile. */
        if (ret < 0 && jobs[i].tmp_path)
            err_replace(e, jobs[i].tmp_path, jobs[i].p->target);
        if (ret == 0)
            emit(&jobs[i], MIRROR_EVENT_COMPLETED, NULL);
        else if (ret == -ECANCELED)
            emit(&jobs[i], MIRROR_EVENT_CANCELLED, NULL);
        else
            emit(&jobs[i], MIRROR_EVENT_FAILED, e->msg);
        close_job(&jobs[i], ret == 0);
    }
    free(jobs);
    return ret;
}

/* --- One job's steps, for the live mirror (mirror/active.c) --- */

int mirror_job_prepare(const struct mirror_params *p, const struct mirror_set_options *opts,
                       struct blockdev *src, struct mirror_job **out, struct err *e)
{
    struct mirror_job *job = calloc(1, sizeof(*job));
    if (!job)
        return err_set(e, ENOMEM, "out of memory");
    job->p = p;
    job->opts = opts;
    job->src = src;
    job->src_borrowed = true;
    job->live = true;
    int ret = check_remote_source(p, e);
    if (ret == 0)
        ret = prepare_on_source(job, e);
    if (ret < 0) {
        blk_bitmaps_lock(src);
        finish_bitmap(job, false, false, &(struct err){ 0 });
        blk_bitmaps_unlock(src);
        if (job->tmp_path)
            err_replace(e, job->tmp_path, p->target);
        close_job(job, false);
        free(job);
        return ret;
    }
    *out = job;
    return 0;
}

struct blockdev *mirror_job_target(const struct mirror_job *job)
{
    return job->dst;
}

const struct blockdev *mirror_job_base(const struct mirror_job *job)
{
    return job->base;
}

bool mirror_job_new_target(const struct mirror_job *job)
{
    return job->tmp_path != NULL;
}

const struct copy_range *mirror_job_ranges(const struct mirror_job *job, size_t *n)
{
    *n = job->nranges;
    return job->ranges;
}

struct dirty_bitmap *mirror_job_write_ahead_bitmap(const struct mirror_job *job)
{
    return job->write_ahead ? job->bitmap : NULL;
}

int mirror_job_flush_target(struct mirror_job *job, struct err *e)
{
    blk_defer_flushes(job->dst, false);
    return blk_flush(job->dst, e);
}

/* keep_target: a new target renamed into place, closed first, or (with a
 * handover) open, so that no other process can take it between a close
 * and an open, and then passed on. */
static int put_target_in_place(struct mirror_job *job, struct blockdev **handover,
                               struct err *e)
{
    int ret = 0;
    if (!handover) {
        blk_close(job->dst);
        job->dst = NULL;
    }
    if (job->tmp_path) {
        ret = handover ? blk_create_commit_open(job->dst, job->tmp_path, job->p->target, e)
                       : blk_create_commit(job->tmp_path, job->p->target, e);
        free(job->tmp_path);
        job->tmp_path = NULL;
    }
    if (ret == 0 && handover) {
        blk_keep_page_cache(job->dst);
        *handover = job->dst;
        job->dst = NULL;
    }
    return ret;
}

int mirror_job_end(struct mirror_job *job, bool keep_target, bool success, bool in_sync,
                   struct blockdev **handover, struct err *e)
{
    int ret = 0;
    if (handover)
        *handover = NULL;
    if (keep_target)
        ret = put_target_in_place(job, handover, e);
    struct err be = { 0 };
    /* Client threads may still mark the bitmaps (their writes wait). */
    blk_bitmaps_lock(job->src);
    int bret = finish_bitmap(job, success && ret == 0, in_sync, &be);
    blk_bitmaps_unlock(job->src);
    if (bret < 0 && ret == 0) {
        ret = bret;
        *e = be;
    }
    if (ret < 0 && job->tmp_path)
        err_replace(e, job->tmp_path, job->p->target);
    if (ret < 0 && handover && *handover) {
        blk_close(*handover);
        *handover = NULL;
    }
    close_job(job, keep_target && ret == 0);
    free(job);
    return ret;
}
