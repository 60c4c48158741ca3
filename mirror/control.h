/* The control socket of `imgtool serve --control=PATH`: a QMP server for
 * the live mirror job, so that QMP clients (libvirt, qemu.qmp, a ten-line
 * script) drive it as they drive QEMU's block jobs, and `imgtool job`
 * drives it too.
 *
 * Wire format (QEMU's docs/interop/qmp-spec): the server greets every
 * client with {"QMP": {"version": ..., "capabilities": []}}; the client
 * sends JSON objects {"execute": CMD, "arguments": {...}, "id": ANY} (one
 * per line, or several on a line: a value ends where its braces close);
 * each gets one reply line, {"return": ...} or {"error": {"class": ...,
 * "desc": ...}}, with "id" echoed.  Until qmp_capabilities, every other
 * command is refused (CommandNotFound) and no event is sent.  Then events
 * go to every such client as they happen: JOB_STATUS_CHANGE, and
 * BLOCK_JOB_READY, BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED with QEMU's
 * data members, each with a timestamp.
 *
 * Commands, with QEMU's arguments (qapi/block-core.json, QEMU 8.2):
 * qmp_capabilities, query-version, query-commands, query-block-jobs,
 * block-job-complete {device}, block-job-cancel {device, force?},
 * block-job-set-speed {device, speed}, block-job-change {id, type:
 * "mirror", copy-mode}; and one argument of imgtool's own,
 * block-job-complete's optional "on-complete": "stop" | "switch" (what
 * the server does once the job has completed; without it, the server's
 * --on-complete; QMP clients that do not know it get that default).  As in QEMU, block-job-cancel without force on a
 * READY mirror finishes it as a copy (a last pass, BLOCK_JOB_COMPLETED)
 * without switching to the target; with force, or before READY, it
 * cancels (BLOCK_JOB_CANCELLED).  A job that has concluded is dismissed at
 * once (QEMU's auto-dismiss): query-block-jobs lists it no more.
 *
 * The server does not know the job's internals: it calls the ops table
 * below (cmd/serve.c wires it to mirror/active.h), and the driver hands
 * it the job's events.  It never prints.
 *
 * Threads: control_start runs the socket loop in a thread of its own;
 * commands are carried out there, one at a time (the ops may block:
 * complete and cancel return once the job has finished; other clients
 * wait meanwhile, as QEMU's monitor does).  control_job_event may be
 * called from any thread, concurrently with the loop (never from inside
 * an op's call: the event is queued, not sent, so that is fine too).
 *
 * Bounds: a command larger than CONTROL_MAX_COMMAND bytes, or one that is
 * not valid JSON, gets an error reply and the client is dropped; a client
 * that lets more than CONTROL_MAX_OUTPUT bytes of replies and events pile
 * up unread is dropped; at most CONTROL_MAX_CLIENTS at once (others are
 * closed after the greeting's error). */
#ifndef IMGTOOL_MIRROR_CONTROL_H
#define IMGTOOL_MIRROR_CONTROL_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/json.h"
#include "mirror/active.h"
#include "mirror/job.h"

enum {
    CONTROL_MAX_COMMAND = 64 << 10,
    CONTROL_MAX_OUTPUT = 1 << 20,
    CONTROL_MAX_CLIENTS = 16,
    CONTROL_MAX_JOBS = 16,
};

/* What block-job-complete (and block-job-cancel of a READY job) asks the
 * driver to do once the job has completed. */
enum control_complete {
    CONTROL_COMPLETE_DEFAULT,   /* block-job-complete {device}: the driver's default */
    CONTROL_COMPLETE_STOP,      /* ... "on-complete": "stop": stop serving */
    CONTROL_COMPLETE_SWITCH,    /* ... "on-complete": "switch": serve the target */
    CONTROL_COMPLETE_COPY,      /* block-job-cancel of a READY job: keep the source */
};

struct control_ops {
    /* query-block-jobs: fill at most `max` entries, return how many.  The
     * strings must stay valid until the next call. */
    int (*query)(void *opaque, struct active_mirror_info *jobs, int max);
    /* The job is READY (checked just before); `how` says what follows.
     * Returns once the job has finished (for CONTROL_COMPLETE_SWITCH: once
     * the target is served, or the switch has failed). */
    int (*complete)(void *opaque, const char *id, enum control_complete how, struct err *e);
    int (*cancel)(void *opaque, const char *id, struct err *e);
    int (*set_speed)(void *opaque, const char *id, uint64_t speed, struct err *e);
    int (*set_copy_mode)(void *opaque, const char *id, enum active_copy_mode mode,
                         struct err *e);
};

struct control_params {
    int listen_fd;                  /* a listening unix socket, owned by the caller; -1: none */
    const struct control_ops *ops;
    void *opaque;
    const char *version;            /* "0.1.0": query-version and the greeting */
};

struct control;

/* Start serving the socket; returns 0 or a negative errno. */
int control_start(const struct control_params *p, struct control **out, struct err *e);

/* Serve an already connected socket (a socketpair end) as one more
 * client; the server owns fd from now on, even on failure. */
int control_add_client(struct control *c, int fd, struct err *e);

/* A job event, for every client past qmp_capabilities: `ev` as the job
 * reported it, `id` the job's id, `speed` its rate limit now.  PROGRESS
 * events are ignored (QMP has none). */
void control_job_event(struct control *c, const char *id, const struct mirror_event *ev,
                       uint64_t speed);

/* Stop: what is queued for the clients is sent (each client gets at most
 * a second), the clients are closed, the thread joined. */
void control_stop(struct control *c);

/* --- For tests and tests/fuzz --- */
/* Run one client's byte stream through the codec and the commands as the
 * loop does, without a socket: the greeting, then a reply for each
 * command, are appended to `out` (one line each).  Returns false if the
 * loop would have dropped the client (what followed is not read). */
bool control_feed(const struct control_params *p, const char *data, size_t len,
                  struct json_buf *out);

#endif
