#include "mirror/job.h"

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
    uint64_t total, done;
    struct copy_stats stats;
    const struct mirror_set_options *opts;
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

int mirror_parse_error_action(const char *s, enum mirror_error_action *action)
{
    if (!strcmp(s, "report"))
        *action = MIRROR_ERROR_REPORT;
    else if (!strcmp(s, "ignore"))
        *action = MIRROR_ERROR_IGNORE;
    else if (!strcmp(s, "retry"))
        *action = MIRROR_ERROR_RETRY;
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

static bool same_file(const struct blockdev *layer, const struct stat *st)
{
    struct stat lst;
    return fstat(layer->file->fd, &lst) == 0 && lst.st_dev == st->st_dev &&
           lst.st_ino == st->st_ino;
}

/* The layer of the source's chain that is the file `path`. */
static int find_chain_layer(struct blockdev *src, const char *path,
                            const struct blockdev **out, struct err *e)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return err_errno(e, errno, "%s: cannot use as base", path);
    for (const struct blockdev *l = src->backing; l; l = l->backing) {
        if (same_file(l, &st)) {
            *out = l;
            return 0;
        }
    }
    if (same_file(src, &st))
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
    switch (job->p->sync) {
    case MIRROR_SYNC_TOP: return job->base;
    case MIRROR_SYNC_NONE: return job->src;
    case MIRROR_SYNC_FULL: return job->base;     /* set by --base, else NULL */
    case MIRROR_SYNC_BITMAP: return NULL;
    }
    return NULL;
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
    };
    const char *fmt = p->target_format ? p->target_format : job->src->drv->name;
    ret = blk_create_begin(fmt, &cp, &job->tmp_path, e);
    free(backing_name);
    if (ret < 0)
        return ret;
    ret = blk_open(job->tmp_path, fmt, BLK_OPEN_RDWR, &job->dst, e);
    if (ret < 0)
        err_prefix(e, "%s: ", p->target);
    return ret;
}

static int open_existing_target(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    int ret = blk_open(p->target, p->target_format, BLK_OPEN_RDWR, &job->dst, e);
    if (ret < 0)
        return ret;
    if (job->dst->size != job->src->size)
        return err_set(e, EINVAL, "%s: target size %llu differs from source size %llu "
                       "(resize it first; an existing target is never truncated)",
                       p->target, (unsigned long long)job->dst->size,
                       (unsigned long long)job->src->size);
    return 0;
}

static int prepare(struct mirror_job *job, struct err *e)
{
    const struct mirror_params *p = job->p;
    unsigned sflags = p->force_share ? BLK_OPEN_FORCE_SHARE : 0;
    int ret = blk_open(p->source, p->source_format, sflags, &job->src, e);
    if (ret < 0)
        return ret;
    if (p->sync == MIRROR_SYNC_BITMAP)
        return err_set(e, ENOTSUP, "%s: --sync=bitmap needs persistent bitmaps, which this "
                       "build cannot read yet", p->source);
    if (p->base) {
        if (p->sync != MIRROR_SYNC_FULL && p->sync != MIRROR_SYNC_TOP)
            return err_set(e, EINVAL, "--base works with --sync=full or top, not %s",
                           mirror_sync_name(p->sync));
        if ((ret = find_chain_layer(job->src, p->base, &job->base, e)) < 0)
            return ret;
    } else if (p->sync == MIRROR_SYNC_TOP) {
        job->base = job->src->backing;
    }
    enum mirror_target_mode mode = p->target_mode;
    if (mode == MIRROR_TARGET_AUTO)
        mode = access(p->target, F_OK) == 0 ? MIRROR_TARGET_EXISTING
                                            : MIRROR_TARGET_ABSOLUTE_PATHS;
    if (mode == MIRROR_TARGET_EXISTING) {
        if (p->target_opts && p->target_opts->count)
            return err_set(e, EINVAL, "%s: -o applies to a new target; this one exists",
                           p->target);
        ret = open_existing_target(job, e);
    } else {
        if (access(p->target, F_OK) == 0 && p->target_mode != MIRROR_TARGET_AUTO)
            return err_set(e, EEXIST, "%s: exists; use --mode=existing to write into it, "
                           "or remove it", p->target);
        ret = create_target(job, e);
    }
    if (ret < 0)
        return ret;
    job->total = p->sync == MIRROR_SYNC_NONE ? 0 : job->src->size;
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

static int run_copy(struct mirror_job *job, struct err *e)
{
    if (job->p->sync == MIRROR_SYNC_NONE)
        return 0;
    struct copy_job cj = {
        .src = job->src, .base = job->base, .dst = job->dst,
        .offset = 0, .length = job->src->size,
        .target_is_zero = job->p->target_is_zero ||
                          (job->tmp_path && !job->dst->backing),
        .buf_size = job->p->buf_size,
        .max_in_flight = (unsigned)job->p->max_in_flight,
        .speed = job->p->speed,
        .progress = on_progress, .opaque = job,
        .cancel = job->opts->cancel,
    };
    int ret = copy_run(&cj, e);
    job->stats = cj.stats;
    if (ret == 0)
        ret = blk_flush(job->dst, e);
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
    blk_close(job->src);
    job->src = NULL;
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
    for (i = 0; i < n; i++) {
        if (!jobs[i].p)
            continue;
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
