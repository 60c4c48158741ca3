/* imgtool serve --mirror: the live mirror of the served image
 * (mirror/active.h), its options as `imgtool mirror` spells them, its
 * events as JSON lines shaped like QMP's, and what happens when the
 * server stops (SIGTERM while READY completes, before READY cancels; the
 * last client gone waits for READY and completes). */
#ifndef IMGTOOL_SERVE_MIRROR_H
#define IMGTOOL_SERVE_MIRROR_H

#include <pthread.h>
#include <stdatomic.h>

#include "cmd/cmd.h"
#include "mirror/active.h"

struct serve_mirror {
    /* Options (popt fills them). */
    char *target, *sync, *bitmap, *bitmap_mode, *target_format, *mode, *speed;
    char *on_source_error, *on_target_error, *copy_mode;
    struct kvopts opts;
    bool json;
    /* The job. */
    struct active_mirror_params params;
    struct active_mirror *job;
    pthread_mutex_t lock;           /* the state the events tell */
    pthread_cond_t changed;
    bool ready, concluded;
    int result;                     /* 0, -ECANCELED, or the failure */
    char *error;
    struct timespec last_progress;
};

/* Check the options and fill params.  -1 to go on, or an exit status. */
int serve_mirror_check(struct cmdline *cl, struct serve_mirror *m);
/* Start mirroring `bs` (before clients may write). */
int serve_mirror_start(struct serve_mirror *m, struct blockdev *bs, struct err *e);
/* The server has stopped (signalled: by SIGTERM/SIGINT): complete, or
 * cancel, or report the failure.  Returns the exit status (errors printed). */
int serve_mirror_finish(struct serve_mirror *m, const atomic_int *signalled);
void serve_mirror_free(struct serve_mirror *m);

#endif
