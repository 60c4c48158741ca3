#include "cmd/serve-mirror.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/mirror-options.h"

int serve_mirror_check(struct cmdline *cl, struct serve_mirror *m)
{
    struct mirror_options mo = {
        .sync = m->sync, .bitmap = m->bitmap, .bitmap_mode = m->bitmap_mode,
        .target_format = m->target_format, .mode = m->mode, .speed = m->speed,
        .on_source_error = m->on_source_error, .on_target_error = m->on_target_error,
        .target_opts = &m->opts, .sync_names = "full, top or bitmap",
    };
    struct mirror_params *p = &m->params.mirror;
    int status = mirror_options_apply(cl, &mo, p);
    if (status >= 0)
        return status;
    if (p->sync != MIRROR_SYNC_FULL && p->sync != MIRROR_SYNC_TOP &&
        p->sync != MIRROR_SYNC_BITMAP)
        return cmd_usage_error(cl, "--sync must be full, top or bitmap");
    p->target = m->target;
    m->params.copy_mode = ACTIVE_COPY_BACKGROUND;
    if (m->copy_mode && !strcmp(m->copy_mode, "write-blocking"))
        m->params.copy_mode = ACTIVE_COPY_WRITE_BLOCKING;
    else if (m->copy_mode && strcmp(m->copy_mode, "background"))
        return cmd_usage_error(cl, "--copy-mode must be background or write-blocking");
    m->params.id = "mirror0";
    return -1;
}

/* --- Events: one JSON object per line, QMP's event and fields in it --- */

static const char *const event_names[] = {
    [MIRROR_EVENT_STARTED] = "started", [MIRROR_EVENT_PROGRESS] = "progress",
    [MIRROR_EVENT_READY] = "ready", [MIRROR_EVENT_COMPLETED] = "completed",
    [MIRROR_EVENT_FAILED] = "failed", [MIRROR_EVENT_CANCELLED] = "cancelled",
};
static const char *const qmp_names[] = {
    [MIRROR_EVENT_STARTED] = "JOB_STATUS_CHANGE", [MIRROR_EVENT_PROGRESS] = NULL,
    [MIRROR_EVENT_READY] = "BLOCK_JOB_READY", [MIRROR_EVENT_COMPLETED] = "BLOCK_JOB_COMPLETED",
    [MIRROR_EVENT_FAILED] = "BLOCK_JOB_COMPLETED", [MIRROR_EVENT_CANCELLED] = "BLOCK_JOB_CANCELLED",
};

/* Progress at most once a second (the last one before READY is not
 * needed: READY says everything). */
static bool progress_due(struct serve_mirror *m)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec == m->last_progress.tv_sec)
        return false;
    m->last_progress = now;
    return true;
}

static void print_json(struct serve_mirror *m, const struct mirror_event *ev)
{
    flockfile(stdout);
    printf("{\"event\": \"%s\"", event_names[ev->type]);
    if (qmp_names[ev->type])
        printf(", \"qmp-event\": \"%s\"", qmp_names[ev->type]);
    if (ev->type == MIRROR_EVENT_STARTED) {
        printf(", \"data\": {\"id\": \"%s\", \"status\": \"running\"}, \"target\": ",
               m->params.id);
        json_print_string(stdout, ev->job->target);
        printf(", \"sync\": \"%s\", \"copy-mode\": \"%s\"", mirror_sync_name(ev->job->sync),
               m->params.copy_mode == ACTIVE_COPY_WRITE_BLOCKING ? "write-blocking"
                                                                 : "background");
    } else {
        printf(", \"data\": {\"device\": \"%s\", \"type\": \"mirror\", \"len\": %" PRIu64
               ", \"offset\": %" PRIu64 ", \"speed\": %" PRIu64, m->params.id, ev->total,
               ev->done, ev->job->speed);
        if (ev->type == MIRROR_EVENT_FAILED) {
            printf(", \"error\": ");
            json_print_string(stdout, ev->error ? ev->error : "");
        }
        printf("}, \"remaining\": %" PRIu64, ev->remaining);
    }
    printf("}\n");
    fflush(stdout);
    funlockfile(stdout);
}

static void on_event(void *opaque, const struct mirror_event *ev)
{
    struct serve_mirror *m = opaque;
    pthread_mutex_lock(&m->lock);
    bool print = m->json && (ev->type != MIRROR_EVENT_PROGRESS || progress_due(m));
    if (ev->type == MIRROR_EVENT_READY)
        m->ready = true;
    if (ev->type == MIRROR_EVENT_FAILED && !m->error)
        m->error = strdup(ev->error ? ev->error : "mirror failed");
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
    if (print)
        print_json(m, ev);
    if (ev->type == MIRROR_EVENT_FAILED && !m->json)
        cmd_warn("mirror to %s failed: %s", ev->job->target, ev->error ? ev->error : "");
}

int serve_mirror_start(struct serve_mirror *m, struct blockdev *bs, struct err *e)
{
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->changed, NULL);
    m->params.source = bs;
    m->params.event = on_event;
    m->params.opaque = m;
    return active_mirror_start(&m->params, &m->job, e);
}

/* Until READY, the job's end, or a signal (checked ten times a second:
 * a signal handler cannot signal a condition variable). */
static void wait_ready(struct serve_mirror *m, const atomic_int *signalled)
{
    struct active_mirror_info info;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        active_mirror_query(m->job, &info);
        if (m->ready || info.status == ACTIVE_CONCLUDED || atomic_load(signalled))
            break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&m->changed, &m->lock, &until);
    }
    pthread_mutex_unlock(&m->lock);
}

int serve_mirror_finish(struct serve_mirror *m, const atomic_int *signalled)
{
    if (!m->job)
        return EXIT_OK;
    if (!atomic_load(signalled))
        wait_ready(m, signalled);
    struct active_mirror_info info;
    active_mirror_query(m->job, &info);
    struct err e = { 0 };
    int ret;
    if (info.status == ACTIVE_CONCLUDED)
        ret = info.error ? err_set(&e, EIO, "%s", info.error) : 0;
    else if (info.ready)
        ret = active_mirror_complete(m->job, &e);
    else
        ret = active_mirror_cancel(m->job, &e) == 0 ? -ECANCELED : -EIO;
    if (ret == -ECANCELED) {
        cmd_error("mirror to %s cancelled before it was ready: a new target was removed, an "
                  "existing one holds a partial copy; the bitmap keeps what is still to copy",
                  m->target);
        return EXIT_CANCELLED;
    }
    if (ret < 0) {
        cmd_error("mirror to %s failed: %s", m->target, e.msg[0] ? e.msg : strerror(-ret));
        return EXIT_ERROR;
    }
    return EXIT_OK;
}

void serve_mirror_free(struct serve_mirror *m)
{
    if (m->job) {
        active_mirror_free(m->job);
        m->job = NULL;
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->changed);
    }
    free(m->error);
    kvopts_free(&m->opts);
}
