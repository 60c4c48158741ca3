/* imgtool serve --control=PATH: the control socket (mirror/control.h, QMP)
 * wired to the live mirror of serve --mirror (cmd/serve-mirror.h).
 *
 * What the commands do here: block-job-complete does what its
 * "on-complete" argument says, or without one what serve --on-complete
 * says (stop by default).  Stop: the server stops as a SIGTERM does (no
 * new requests, those in flight answered), then the mirror is completed
 * (last pass, flush, a new target renamed into place) and
 * BLOCK_JOB_COMPLETED sent.  Switch: the mirror is completed and the
 * export switched to the target under the connected clients
 * (cmd/serve-switch.h), and the server goes on.  block-job-cancel of a
 * READY job without force finishes it as a copy and keeps serving the
 * source (QEMU's semantics); block-job-cancel otherwise cancels, and the
 * source is served on.  Either way the job is then gone (QMP's
 * auto-dismiss).
 *
 * Threads: the control socket's thread runs the ops; serve_control_close
 * waits for one in progress and refuses later ones, so that the server's
 * own end of the job (serve_mirror_finish) never races with them. */
#ifndef IMGTOOL_SERVE_CONTROL_H
#define IMGTOOL_SERVE_CONTROL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "cmd/serve-mirror.h"
#include "cmd/serve-switch.h"
#include "mirror/control.h"

struct serve_control {
    const char *path;               /* --control */
    int fd;
    struct control *ctl;
    struct serve_mirror *m;
    enum serve_on_complete on_complete;  /* --on-complete: for block-job-complete {device} */
    struct serve_switch *sw;        /* how to switch (serve.c fills it) */
    pthread_mutex_t lock;           /* held by each op, and from serve_control_close on */
    bool closed;
    atomic_uint_fast64_t speed;     /* the job's rate limit now (for the events) */
};

/* Serve the listening socket (sc->path, bound by serve.c) before --fork
 * reports ready. */
int serve_control_start(struct serve_control *sc, struct serve_mirror *m, int listen_fd,
                        struct err *e);
/* serve_mirror's event hook: to every control client. */
void serve_control_event(void *opaque, const struct mirror_event *ev);
/* The server has stopped: no more ops (the one running is waited for). */
void serve_control_close(struct serve_control *sc);
/* After serve_mirror_finish (its events are sent): close the socket. */
void serve_control_stop(struct serve_control *sc);

#endif
