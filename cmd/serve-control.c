/* imgtool serve --control (serve-control.h). */
#include "cmd/serve-control.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "cmd/signals.h"

/* The job `id` names, under sc->lock; -ENOENT as QEMU says it. */
static int job_for(struct serve_control *sc, const char *id, struct err *e)
{
    if (sc->closed)
        return err_set(e, ESHUTDOWN, "the server is stopping");
    if (!sc->m->job || strcmp(id, sc->m->params.id))
        return err_set(e, ENOENT, "Block job '%s' not found", id);
    return 0;
}

/* A finished job is freed at once (QMP's auto-dismiss); the source is
 * then served without it (client writes work again). */
static void dismiss(struct serve_control *sc)
{
    active_mirror_free(sc->m->job);
    sc->m->job = NULL;
}

static int op_query(void *opaque, struct active_mirror_info *jobs, int max)
{
    struct serve_control *sc = opaque;
    pthread_mutex_lock(&sc->lock);
    int n = 0;
    if (sc->m->job && max > 0 && !sc->closed)
        active_mirror_query(sc->m->job, &jobs[n++]);
    pthread_mutex_unlock(&sc->lock);
    return n;
}

/* block-job-complete, stop: the server stops taking requests (those in
 * flight are answered), then completes the job as on SIGTERM (serve.c),
 * so that no client write meets a completing job; the reply comes first
 * and BLOCK_JOB_COMPLETED after it, as in QEMU.  Switch: the job is
 * completed and the export switched to the target here (serve-switch.h),
 * the events before the reply.  From block-job-cancel of a READY job: the
 * job is completed now, the source served on. */
static int op_complete(void *opaque, const char *id, enum control_complete how, struct err *e)
{
    struct serve_control *sc = opaque;
    pthread_mutex_lock(&sc->lock);
    int ret = job_for(sc, id, e);
    if (how == CONTROL_COMPLETE_DEFAULT)
        how = sc->on_complete == SERVE_ON_COMPLETE_SWITCH ? CONTROL_COMPLETE_SWITCH
                                                         : CONTROL_COMPLETE_STOP;
    if (ret == 0 && how == CONTROL_COMPLETE_STOP)
        atomic_store(&cancel_requested, SIGTERM);
    else if (ret == 0 && how == CONTROL_COMPLETE_SWITCH)
        ret = serve_switch(sc->sw, e);
    else if (ret == 0 && (ret = active_mirror_complete(sc->m->job, e)) == 0)
        dismiss(sc);
    pthread_mutex_unlock(&sc->lock);
    return ret;
}

static int op_cancel(void *opaque, const char *id, struct err *e)
{
    struct serve_control *sc = opaque;
    pthread_mutex_lock(&sc->lock);
    int ret = job_for(sc, id, e);
    if (ret == 0 && (ret = active_mirror_cancel(sc->m->job, e)) == 0)
        dismiss(sc);
    pthread_mutex_unlock(&sc->lock);
    return ret;
}

static int op_set_speed(void *opaque, const char *id, uint64_t speed, struct err *e)
{
    struct serve_control *sc = opaque;
    pthread_mutex_lock(&sc->lock);
    int ret = job_for(sc, id, e);
    if (ret == 0 && (ret = active_mirror_set_speed(sc->m->job, speed, e)) == 0)
        atomic_store(&sc->speed, speed);
    pthread_mutex_unlock(&sc->lock);
    return ret;
}

static int op_set_copy_mode(void *opaque, const char *id, enum active_copy_mode mode,
                            struct err *e)
{
    struct serve_control *sc = opaque;
    pthread_mutex_lock(&sc->lock);
    int ret = job_for(sc, id, e);
    if (ret == 0)
        ret = active_mirror_set_copy_mode(sc->m->job, mode, e);
    pthread_mutex_unlock(&sc->lock);
    return ret;
}

static const struct control_ops ops = {
    .query = op_query, .complete = op_complete, .cancel = op_cancel,
    .set_speed = op_set_speed, .set_copy_mode = op_set_copy_mode,
};

void serve_control_event(void *opaque, const struct mirror_event *ev)
{
    struct serve_control *sc = opaque;
    if (sc->ctl)
        control_job_event(sc->ctl, sc->m->params.id, ev, atomic_load(&sc->speed));
}

int serve_control_start(struct serve_control *sc, struct serve_mirror *m, int listen_fd,
                        struct err *e)
{
    sc->m = m;
    sc->fd = listen_fd;
    pthread_mutex_init(&sc->lock, NULL);
    atomic_store(&sc->speed, m->params.mirror.speed);
    struct control_params p = { .listen_fd = listen_fd, .ops = &ops, .opaque = sc,
                                .version = IMGTOOL_VERSION };
    return control_start(&p, &sc->ctl, e);
}

void serve_control_close(struct serve_control *sc)
{
    if (!sc->ctl)
        return;
    pthread_mutex_lock(&sc->lock);
    sc->closed = true;
    pthread_mutex_unlock(&sc->lock);
}

void serve_control_stop(struct serve_control *sc)
{
    if (!sc->ctl)
        return;
    control_stop(sc->ctl);
    sc->ctl = NULL;
    close(sc->fd);
    unlink(sc->path);
    pthread_mutex_destroy(&sc->lock);
}
