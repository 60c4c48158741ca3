/* The control socket: QMP's wire format over the ops table (control.h).
 * The first half is the codec and the commands (a client's bytes in,
 * reply lines out, no socket); the second half the socket loop. */
#include "mirror/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* --- Replies --- */

struct reply {
    struct prop *root;          /* {"return": ...} or {"error": ...}, then "id" */
    const struct prop *id;      /* the command's "id", echoed */
};

static void reply_error(struct reply *r, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply_error(struct reply *r, const char *cls, const char *fmt, ...)
{
    char desc[1100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(desc, sizeof(desc), fmt, ap);
    va_end(ap);
    prop_free(r->root);
    r->root = prop_new_object();
    struct prop *err = prop_add_object(r->root, "error");
    prop_add_string(err, "class", cls);
    prop_add_string(err, "desc", desc);
}

/* An op's failure: a job that is gone is QMP's DeviceNotActive. */
static void reply_errno(struct reply *r, int ret, const struct err *e)
{
    reply_error(r, ret == -ENOENT ? "DeviceNotActive" : "GenericError", "%s",
                e->msg[0] ? e->msg : strerror(-ret));
}

static struct prop *reply_return_object(struct reply *r)
{
    prop_free(r->root);
    r->root = prop_new_object();
    return prop_add_object(r->root, "return");
}

static void reply_write(struct reply *r, struct json_buf *out)
{
    if (r->id)
        prop_add_copy(r->root, "id", r->id);
    if (prop_failed(r->root)) {
        json_buf_append(out, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
                        "\"out of memory\"}}\n", 62);
    } else {
        json_write(out, r->root);
        json_buf_append(out, "\n", 1);
    }
    prop_free(r->root);
    r->root = NULL;
}

/* --- Arguments, checked as QEMU's input visitor does --- */

enum arg_type { ARG_STR, ARG_BOOL, ARG_UINT };

struct arg_spec {
    const char *name;
    enum arg_type type;
    bool optional;
};

static const char *const arg_type_names[] = { "string", "boolean", "integer" };

static bool arg_type_ok(const struct prop *v, enum arg_type t)
{
    switch (t) {
    case ARG_STR: return v->type == PROP_STRING;
    case ARG_BOOL: return v->type == PROP_BOOL;
    case ARG_UINT: return v->type == PROP_UINT || v->type == PROP_INT;
    }
    return false;
}

/* Every argument known, of its type, none missing. */
static bool check_args(const struct prop *args, const struct arg_spec *spec, struct reply *r)
{
    for (const struct prop *a = args ? args->first : NULL; a; a = a->next) {
        const struct arg_spec *s = spec;
        while (s->name && strcmp(s->name, a->key))
            s++;
        if (!s->name) {
            reply_error(r, "GenericError", "Parameter '%s' is unexpected", a->key);
            return false;
        }
        if (!arg_type_ok(a, s->type)) {
            reply_error(r, "GenericError", "Invalid parameter type for '%s', expected: %s",
                        a->key, arg_type_names[s->type]);
            return false;
        }
    }
    for (const struct arg_spec *s = spec; s->name; s++) {
        if (!s->optional && !prop_get(args, s->name)) {
            reply_error(r, "GenericError", "Parameter '%s' is missing", s->name);
            return false;
        }
    }
    return true;
}

static const char *arg_str(const struct prop *args, const char *name)
{
    const struct prop *v = prop_get(args, name);
    return v ? v->v.s : NULL;
}

/* --- Jobs --- */

static const char *status_name(enum active_status s)
{
    switch (s) {
    case ACTIVE_RUNNING: return "running";
    case ACTIVE_READY: return "ready";
    case ACTIVE_COMPLETING: return "pending";
    case ACTIVE_CONCLUDED: return "concluded";
    }
    return "undefined";
}

static const char *copy_mode_name(enum active_copy_mode m)
{
    return m == ACTIVE_COPY_WRITE_BLOCKING ? "write-blocking" : "background";
}

/* The jobs QMP sees: a concluded job is dismissed (auto-dismiss). */
static int query_jobs(const struct control_params *p, struct active_mirror_info *jobs)
{
    int n = p->ops->query(p->opaque, jobs, CONTROL_MAX_JOBS);
    int k = 0;
    for (int i = 0; i < n && i < CONTROL_MAX_JOBS; i++)
        if (jobs[i].status != ACTIVE_CONCLUDED)
            jobs[k++] = jobs[i];
    return k;
}

/* Find the job `id` and check that it takes `verb` now, as QEMU's job
 * verb table does: complete only when ready, the others while running or
 * ready.  Fills *info; false (with the reply) if not. */
static bool find_job(const struct control_params *p, const char *id, const char *verb,
                     struct active_mirror_info *info, struct reply *r)
{
    struct active_mirror_info jobs[CONTROL_MAX_JOBS];
    int n = query_jobs(p, jobs);
    for (int i = 0; i < n; i++) {
        if (strcmp(jobs[i].id, id))
            continue;
        *info = jobs[i];
        bool ok = info->status == ACTIVE_READY ||
                  (info->status == ACTIVE_RUNNING && strcmp(verb, "complete"));
        if (!ok)
            reply_error(r, "GenericError", "Job '%s' in state '%s' cannot accept command "
                        "verb '%s'", id, status_name(info->status), verb);
        return ok;
    }
    reply_error(r, "DeviceNotActive", "Block job '%s' not found", id);
    return false;
}

static void add_job_info(struct prop *list, const struct active_mirror_info *j)
{
    struct prop *o = prop_add_object(list, NULL);
    prop_add_string(o, "type", "mirror");
    prop_add_string(o, "device", j->id);
    prop_add_uint(o, "len", j->len);
    prop_add_uint(o, "offset", j->offset);
    prop_add_bool(o, "busy", j->status == ACTIVE_RUNNING || j->status == ACTIVE_COMPLETING);
    prop_add_bool(o, "paused", false);
    prop_add_uint(o, "speed", j->speed);
    prop_add_string(o, "io-status", j->error ? "failed" : "ok");
    prop_add_bool(o, "ready", j->ready);
    prop_add_string(o, "status", status_name(j->status));
    prop_add_bool(o, "auto-finalize", true);
    prop_add_bool(o, "auto-dismiss", true);
    if (j->error)
        prop_add_string(o, "error", j->error);
    /* QEMU 8.2's mirror member; copy-mode is imgtool's (QEMU has no way
     * to ask), which clients that ignore unknown members (the QMP
     * specification asks them to) do not see. */
    prop_add_bool(o, "actively-synced", j->ready && j->copy_mode == ACTIVE_COPY_WRITE_BLOCKING);
    prop_add_string(o, "copy-mode", copy_mode_name(j->copy_mode));
}

/* --- Commands --- */

struct command_ctx {
    const struct control_params *p;
    const struct prop *args;
    struct reply *r;
};

static void cmd_query_block_jobs(struct command_ctx *c)
{
    static const struct arg_spec spec[] = { { NULL, 0, 0 } };
    if (!check_args(c->args, spec, c->r))
        return;
    struct active_mirror_info jobs[CONTROL_MAX_JOBS];
    int n = query_jobs(c->p, jobs);
    prop_free(c->r->root);
    c->r->root = prop_new_object();
    struct prop *list = prop_add_array(c->r->root, "return");
    for (int i = 0; i < n; i++)
        add_job_info(list, &jobs[i]);
}

/* An enum argument: its index in `values`, or -1 (with the reply). */
static int arg_enum(const struct prop *args, const char *name, const char *const *values,
                    struct reply *r)
{
    const char *v = arg_str(args, name);
    for (int i = 0; values[i]; i++)
        if (!strcmp(values[i], v))
            return i;
    reply_error(r, "GenericError", "Parameter '%s' does not accept value '%s'", name, v);
    return -1;
}

static void cmd_complete(struct command_ctx *c)
{
    static const struct arg_spec spec[] = {
        { "device", ARG_STR, false }, { "on-complete", ARG_STR, true }, { NULL, 0, 0 },
    };
    static const char *const actions[] = { "stop", "switch", NULL };
    struct active_mirror_info info;
    int action = -1;
    if (!check_args(c->args, spec, c->r) ||
        (prop_get(c->args, "on-complete") &&
         (action = arg_enum(c->args, "on-complete", actions, c->r)) < 0) ||
        !find_job(c->p, arg_str(c->args, "device"), "complete", &info, c->r))
        return;
    enum control_complete how = action < 0 ? CONTROL_COMPLETE_DEFAULT
                                : action == 0 ? CONTROL_COMPLETE_STOP : CONTROL_COMPLETE_SWITCH;
    struct err e = { 0 };
    int ret = c->p->ops->complete(c->p->opaque, info.id, how, &e);
    if (ret < 0)
        reply_errno(c->r, ret, &e);
}

/* QEMU's block-job-cancel: without force, a READY mirror finishes as a
 * copy (a last pass; the source stays in use). */
static void cmd_cancel(struct command_ctx *c)
{
    static const struct arg_spec spec[] = {
        { "device", ARG_STR, false }, { "force", ARG_BOOL, true }, { NULL, 0, 0 },
    };
    struct active_mirror_info info;
    if (!check_args(c->args, spec, c->r) ||
        !find_job(c->p, arg_str(c->args, "device"), "cancel", &info, c->r))
        return;
    const struct prop *force = prop_get(c->args, "force");
    struct err e = { 0 };
    int ret;
    if (info.status == ACTIVE_READY && !(force && force->v.b))
        ret = c->p->ops->complete(c->p->opaque, info.id, CONTROL_COMPLETE_COPY, &e);
    else
        ret = c->p->ops->cancel(c->p->opaque, info.id, &e);
    if (ret < 0)
        reply_errno(c->r, ret, &e);
}

static void cmd_set_speed(struct command_ctx *c)
{
    static const struct arg_spec spec[] = {
        { "device", ARG_STR, false }, { "speed", ARG_UINT, false }, { NULL, 0, 0 },
    };
    struct active_mirror_info info;
    if (!check_args(c->args, spec, c->r))
        return;
    const struct prop *speed = prop_get(c->args, "speed");
    if (speed->type == PROP_INT) {
        reply_error(c->r, "GenericError", "Parameter 'speed' expects a non-negative value");
        return;
    }
    if (!find_job(c->p, arg_str(c->args, "device"), "set-speed", &info, c->r))
        return;
    struct err e = { 0 };
    int ret = c->p->ops->set_speed(c->p->opaque, info.id, speed->v.u, &e);
    if (ret < 0)
        reply_errno(c->r, ret, &e);
}

/* QEMU 8.2's block-job-change for mirror jobs: the copy mode. */
static void cmd_change(struct command_ctx *c)
{
    static const struct arg_spec spec[] = {
        { "id", ARG_STR, false }, { "type", ARG_STR, false },
        { "copy-mode", ARG_STR, false }, { NULL, 0, 0 },
    };
    static const char *const job_types[] = {        /* QEMU's JobType */
        "commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load",
        "snapshot-save", "snapshot-delete", NULL,
    };
    static const char *const modes[] = { "background", "write-blocking", NULL };
    struct active_mirror_info info;
    int type, mode;
    if (!check_args(c->args, spec, c->r) ||
        (type = arg_enum(c->args, "type", job_types, c->r)) < 0 ||
        (mode = arg_enum(c->args, "copy-mode", modes, c->r)) < 0 ||
        !find_job(c->p, arg_str(c->args, "id"), "change", &info, c->r))
        return;
    if (strcmp(job_types[type], "mirror")) {
        reply_error(c->r, "GenericError", "Job '%s' is 'mirror' job, not '%s'", info.id,
                    job_types[type]);
        return;
    }
    struct err e = { 0 };
    int ret = c->p->ops->set_copy_mode(c->p->opaque, info.id,
                                       mode ? ACTIVE_COPY_WRITE_BLOCKING : ACTIVE_COPY_BACKGROUND,
                                       &e);
    if (ret < 0)
        reply_errno(c->r, ret, &e);
}

/* {"qemu": {"major": .., "minor": .., "micro": ..}, "package": ...} of
 * imgtool's version, as QEMU's query-version and greeting carry it. */
static void add_version(struct prop *o, const char *version)
{
    unsigned v[3] = { 0, 0, 0 };
    sscanf(version, "%u.%u.%u", &v[0], &v[1], &v[2]);
    struct prop *q = prop_add_object(o, "qemu");
    prop_add_uint(q, "micro", v[2]);
    prop_add_uint(q, "minor", v[1]);
    prop_add_uint(q, "major", v[0]);
    char pkg[80];
    snprintf(pkg, sizeof(pkg), "imgtool %s", version);
    prop_add_string(o, "package", pkg);
}

static void cmd_query_version(struct command_ctx *c)
{
    static const struct arg_spec spec[] = { { NULL, 0, 0 } };
    if (check_args(c->args, spec, c->r))
        add_version(reply_return_object(c->r), c->p->version);
}

static void cmd_capabilities(struct command_ctx *c)
{
    /* QEMU takes "enable": [capabilities]; none is offered here. */
    static const struct arg_spec spec[] = { { NULL, 0, 0 } };
    if (check_args(c->args, spec, c->r))
        reply_return_object(c->r);
}

static void cmd_query_commands(struct command_ctx *c);

static const struct {
    const char *name;
    void (*run)(struct command_ctx *c);
} command_table[] = {
    { "qmp_capabilities", cmd_capabilities },
    { "query-version", cmd_query_version },
    { "query-commands", cmd_query_commands },
    { "query-block-jobs", cmd_query_block_jobs },
    { "block-job-complete", cmd_complete },
    { "block-job-cancel", cmd_cancel },
    { "block-job-set-speed", cmd_set_speed },
    { "block-job-change", cmd_change },
};
#define NCOMMANDS (sizeof(command_table) / sizeof(command_table[0]))

static void cmd_query_commands(struct command_ctx *c)
{
    static const struct arg_spec spec[] = { { NULL, 0, 0 } };
    if (!check_args(c->args, spec, c->r))
        return;
    prop_free(c->r->root);
    c->r->root = prop_new_object();
    struct prop *list = prop_add_array(c->r->root, "return");
    for (size_t i = 0; i < NCOMMANDS; i++)
        prop_add_string(prop_add_object(list, NULL), "name", command_table[i].name);
}

/* --- One command --- */

struct session {
    const struct control_params *p;
    bool negotiated;
    char *in;                   /* CONTROL_MAX_COMMAND bytes */
    size_t in_len, scanned;
    struct json_frame frame;
};

/* The envelope: {"execute": NAME, "arguments": {...}, "id": ANY}. */
static const char *check_envelope(const struct prop *msg, struct reply *r,
                                  const struct prop **args)
{
    if (msg->type != PROP_OBJECT) {
        reply_error(r, "GenericError", "QMP input must be a JSON object");
        return NULL;
    }
    for (const struct prop *m = msg->first; m; m = m->next) {
        if (strcmp(m->key, "execute") && strcmp(m->key, "arguments") && strcmp(m->key, "id")) {
            reply_error(r, "GenericError", "QMP input member '%s' is unexpected", m->key);
            return NULL;
        }
    }
    const struct prop *exec = prop_get(msg, "execute");
    *args = prop_get(msg, "arguments");
    if (!exec)
        reply_error(r, "GenericError", "QMP input lacks member 'execute'");
    else if (exec->type != PROP_STRING)
        reply_error(r, "GenericError", "QMP input member 'execute' must be a string");
    else if (*args && (*args)->type != PROP_OBJECT)
        reply_error(r, "GenericError", "QMP input member 'arguments' must be an object");
    else
        return exec->v.s;
    return NULL;
}

static void dispatch(struct session *s, const char *name, const struct prop *args,
                     struct reply *r)
{
    bool caps = !strcmp(name, "qmp_capabilities");
    if (!s->negotiated && !caps) {
        reply_error(r, "CommandNotFound",
                    "Expecting capabilities negotiation with 'qmp_capabilities'");
        return;
    }
    if (s->negotiated && caps) {
        reply_error(r, "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored");
        return;
    }
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(command_table[i].name, name))
            continue;
        struct command_ctx c = { .p = s->p, .args = args, .r = r };
        reply_return_object(r);     /* {"return": {}} unless the command says more */
        command_table[i].run(&c);
        if (caps && prop_get(r->root, "return"))
            s->negotiated = true;
        return;
    }
    reply_error(r, "CommandNotFound", "The command %s has not been found", name);
}

static void handle_command(struct session *s, const char *text, size_t len,
                           struct json_buf *out)
{
    struct reply r = { 0 };
    struct prop *msg = NULL;
    struct err e = { 0 };
    if (json_parse(text, len, &msg, "QMP input", &e) < 0) {
        reply_error(&r, "GenericError", "JSON parse error, %s", e.msg);
    } else {
        const struct prop *args = NULL;
        if (msg->type == PROP_OBJECT)
            r.id = prop_get(msg, "id");
        const char *name = check_envelope(msg, &r, &args);
        if (name)
            dispatch(s, name, args, &r);
    }
    reply_write(&r, out);
    prop_free(msg);
}

static size_t leading_space(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* Carry out every complete command in s->in; false: drop the client (a
 * command too long, the reply says so). */
static bool session_input(struct session *s, struct json_buf *out)
{
    for (;;) {
        size_t end = json_frame_scan(&s->frame, s->in + s->scanned, s->in_len - s->scanned);
        if (!end) {
            s->scanned = s->in_len;
            if (!s->frame.started)
                s->in_len = s->scanned = 0;    /* only whitespace so far */
            if (s->in_len < CONTROL_MAX_COMMAND)
                return true;
            struct reply r = { 0 };
            reply_error(&r, "GenericError", "QMP input longer than %d bytes, closing",
                        CONTROL_MAX_COMMAND);
            reply_write(&r, out);
            return false;
        }
        end += s->scanned;
        size_t skip = leading_space(s->in, end);   /* byte offsets count from the value */
        handle_command(s, s->in + skip, end - skip, out);
        memmove(s->in, s->in + end, s->in_len - end);
        s->in_len -= end;
        s->scanned = 0;
        s->frame = (struct json_frame){ 0 };
    }
}

static void write_greeting(const struct control_params *p, struct json_buf *out)
{
    struct prop *root = prop_new_object();
    struct prop *qmp = prop_add_object(root, "QMP");
    add_version(prop_add_object(qmp, "version"), p->version);
    prop_add_array(qmp, "capabilities");
    json_write(out, root);
    json_buf_append(out, "\n", 1);
    prop_free(root);
}

bool control_feed(const struct control_params *p, const char *data, size_t len,
                  struct json_buf *out)
{
    struct session s = { .p = p, .in = malloc(CONTROL_MAX_COMMAND) };
    bool ok = s.in != NULL;
    write_greeting(p, out);
    while (ok && len) {
        size_t n = CONTROL_MAX_COMMAND - s.in_len;
        if (n > len)
            n = len;
        memcpy(s.in + s.in_len, data, n);
        s.in_len += n;
        data += n;
        len -= n;
        ok = session_input(&s, out);
    }
    free(s.in);
    return ok;
}

/* --- Events --- */

static void add_job_data(struct prop *data, const char *id, const struct mirror_event *ev,
                         uint64_t speed)
{
    prop_add_string(data, "device", id);
    prop_add_uint(data, "len", ev->total);
    prop_add_uint(data, "offset", ev->done);
    prop_add_uint(data, "speed", speed);
    prop_add_string(data, "type", "mirror");
}

/* One event line: {"timestamp": ..., "event": NAME, "data": {...}}; the
 * data object is returned for the caller to fill before json_write. */
static struct prop *event_new(const char *name, struct prop **data)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct prop *root = prop_new_object();
    struct prop *ts = prop_add_object(root, "timestamp");
    prop_add_uint(ts, "seconds", (uint64_t)tv.tv_sec);
    prop_add_uint(ts, "microseconds", (uint64_t)tv.tv_usec);
    prop_add_string(root, "event", name);
    *data = prop_add_object(root, "data");
    return root;
}

static void event_write(struct prop *root, struct json_buf *out)
{
    if (!prop_failed(root)) {
        json_write(out, root);
        json_buf_append(out, "\n", 1);
    }
    prop_free(root);
}

static void status_change(struct json_buf *out, const char *id, const char *status)
{
    struct prop *data;
    struct prop *root = event_new("JOB_STATUS_CHANGE", &data);
    prop_add_string(data, "status", status);
    prop_add_string(data, "id", id);
    event_write(root, out);
}

static void block_job_event(struct json_buf *out, const char *name, const char *id,
                            const struct mirror_event *ev, uint64_t speed)
{
    struct prop *data;
    struct prop *root = event_new(name, &data);
    add_job_data(data, id, ev, speed);
    if (ev->type == MIRROR_EVENT_FAILED)
        prop_add_string(data, "error", ev->error ? ev->error : "failed");
    event_write(root, out);
}

/* The lines QEMU sends for the same moment of a mirror job's life. */
static void render_event(struct json_buf *out, const char *id, const struct mirror_event *ev,
                         uint64_t speed)
{
    switch (ev->type) {
    case MIRROR_EVENT_STARTED:
        status_change(out, id, "created");
        status_change(out, id, "running");
        return;
    case MIRROR_EVENT_PROGRESS:
        return;
    case MIRROR_EVENT_READY:
        status_change(out, id, "ready");
        block_job_event(out, "BLOCK_JOB_READY", id, ev, speed);
        return;
    case MIRROR_EVENT_COMPLETED:
        status_change(out, id, "waiting");
        status_change(out, id, "pending");
        block_job_event(out, "BLOCK_JOB_COMPLETED", id, ev, speed);
        break;
    case MIRROR_EVENT_FAILED:
        status_change(out, id, "aborting");
        block_job_event(out, "BLOCK_JOB_COMPLETED", id, ev, speed);
        break;
    case MIRROR_EVENT_CANCELLED:
        status_change(out, id, "aborting");
        block_job_event(out, "BLOCK_JOB_CANCELLED", id, ev, speed);
        break;
    }
    status_change(out, id, "concluded");
    status_change(out, id, "null");
}

/* --- The socket loop --- */

struct client {
    int fd;
    struct session s;
    struct json_buf out;        /* under control.lock */
    size_t out_sent;
    bool closing;               /* send what is queued, then close */
};

struct control {
    struct control_params p;
    pthread_t thread;
    pthread_mutex_t lock;       /* clients[], and each client's out */
    int wake[2];                /* a byte here: output queued, or stop */
    atomic_bool stop;
    struct client *clients[CONTROL_MAX_CLIENTS];
    int nclients;
};

static void wake_loop(struct control *c)
{
    char b = 0;
    ssize_t n = write(c->wake[1], &b, 1);
    (void)n;    /* a full pipe wakes the loop already */
}

/* Queue text for a client; past the bound it is dropped instead. */
static void client_queue(struct client *cl, const struct json_buf *text)
{
    if (cl->closing || !text->len)
        return;
    if (cl->out.len - cl->out_sent + text->len > CONTROL_MAX_OUTPUT || text->failed) {
        cl->closing = true;
        shutdown(cl->fd, SHUT_RDWR);
        return;
    }
    json_buf_append(&cl->out, text->data, text->len);
}

void control_job_event(struct control *c, const char *id, const struct mirror_event *ev,
                       uint64_t speed)
{
    struct json_buf text = { 0 };
    render_event(&text, id, ev, speed);
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->nclients; i++)
        if (c->clients[i]->s.negotiated)
            client_queue(c->clients[i], &text);
    pthread_mutex_unlock(&c->lock);
    json_buf_free(&text);
    wake_loop(c);
}

static void client_free(struct client *cl)
{
    close(cl->fd);
    free(cl->s.in);
    json_buf_free(&cl->out);
    free(cl);
}

/* A new client: the greeting queued; false if there is no room. */
static bool add_client(struct control *c, int fd)
{
    struct client *cl = calloc(1, sizeof(*cl));
    if (cl)
        cl->s = (struct session){ .p = &c->p, .in = malloc(CONTROL_MAX_COMMAND) };
    struct json_buf g = { 0 };
    write_greeting(&c->p, &g);
    pthread_mutex_lock(&c->lock);
    bool ok = cl && cl->s.in && c->nclients < CONTROL_MAX_CLIENTS;
    if (ok) {
        cl->fd = fd;
        client_queue(cl, &g);
        c->clients[c->nclients++] = cl;
    }
    pthread_mutex_unlock(&c->lock);
    json_buf_free(&g);
    if (!ok) {
        if (cl)
            free(cl->s.in);
        free(cl);
        close(fd);
    }
    return ok;
}

static void accept_client(struct control *c)
{
    int fd = accept4(c->p.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0)
        add_client(c, fd);
}

int control_add_client(struct control *c, int fd, struct err *e)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int ret = err_errno(e, errno, "control socket: bad client descriptor");
        close(fd);
        return ret;
    }
    if (!add_client(c, fd))
        return err_set(e, EMFILE, "control socket: at most %d clients", CONTROL_MAX_CLIENTS);
    wake_loop(c);
    return 0;
}

/* Read what the client sent and carry out its commands. */
static void client_read(struct control *c, struct client *cl)
{
    ssize_t n = recv(cl->fd, cl->s.in + cl->s.in_len, CONTROL_MAX_COMMAND - cl->s.in_len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        /* EOF: the client may still read what is queued (a half-closed
         * socket); a client that is gone makes the send fail. */
        pthread_mutex_lock(&c->lock);
        cl->closing = true;
        pthread_mutex_unlock(&c->lock);
        return;
    }
    cl->s.in_len += (size_t)n;
    struct json_buf replies = { 0 };
    bool keep = session_input(&cl->s, &replies);
    pthread_mutex_lock(&c->lock);
    client_queue(cl, &replies);
    if (!keep)
        cl->closing = true;
    pthread_mutex_unlock(&c->lock);
    json_buf_free(&replies);
}

static void client_write(struct control *c, struct client *cl)
{
    pthread_mutex_lock(&c->lock);
    while (cl->out_sent < cl->out.len) {
        ssize_t n = send(cl->fd, cl->out.data + cl->out_sent, cl->out.len - cl->out_sent,
                         MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN) {
            cl->closing = true;
            cl->out_sent = cl->out.len;
        }
        if (n <= 0)
            break;
        cl->out_sent += (size_t)n;
    }
    if (cl->out_sent == cl->out.len) {
        cl->out.len = cl->out_sent = 0;
        if (cl->out.data)
            cl->out.data[0] = '\0';
    }
    pthread_mutex_unlock(&c->lock);
}

/* Close the clients that are done (closing, nothing left to send). */
static void reap_clients(struct control *c)
{
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->nclients;) {
        struct client *cl = c->clients[i];
        if (cl->closing && cl->out_sent == cl->out.len) {
            c->clients[i] = c->clients[--c->nclients];
            client_free(cl);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&c->lock);
}

static void drain_wake(struct control *c)
{
    char buf[64];
    while (read(c->wake[0], buf, sizeof(buf)) > 0)
        ;
}

/* One round of poll over the wake pipe, the listening socket and the
 * clients; `timeout_ms` -1 waits for something to happen. */
static void loop_once(struct control *c, bool accepting, int timeout_ms)
{
    struct pollfd pf[CONTROL_MAX_CLIENTS + 2];
    struct client *who[CONTROL_MAX_CLIENTS + 2];
    int n = 0;
    pf[n++] = (struct pollfd){ .fd = c->wake[0], .events = POLLIN };
    /* Always an entry, so that clients start at 2; poll skips fd -1. */
    pf[n++] = (struct pollfd){ .fd = accepting ? c->p.listen_fd : -1, .events = POLLIN };
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->nclients; i++) {
        struct client *cl = c->clients[i];
        short ev = (short)((cl->closing ? 0 : POLLIN) | (cl->out_sent < cl->out.len ? POLLOUT : 0));
        who[n] = cl;
        pf[n++] = (struct pollfd){ .fd = cl->fd, .events = ev };
    }
    pthread_mutex_unlock(&c->lock);
    if (poll(pf, (nfds_t)n, timeout_ms) <= 0)
        return;
    if (pf[0].revents)
        drain_wake(c);
    for (int i = 2; i < n; i++) {
        if (pf[i].revents & (POLLIN | POLLHUP | POLLERR) && !who[i]->closing)
            client_read(c, who[i]);
        if (pf[i].revents & (POLLOUT | POLLHUP | POLLERR))
            client_write(c, who[i]);
    }
    if (accepting && pf[1].revents & POLLIN)
        accept_client(c);
    reap_clients(c);
}

static bool output_pending(struct control *c)
{
    bool any = false;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->nclients && !any; i++)
        any = c->clients[i]->out_sent < c->clients[i]->out.len;
    pthread_mutex_unlock(&c->lock);
    return any;
}

static void *control_main(void *arg)
{
    struct control *c = arg;
    while (!atomic_load(&c->stop))
        loop_once(c, true, -1);
    /* Stopping: what is queued (a last reply, BLOCK_JOB_COMPLETED) goes
     * out, for at most a second. */
    struct timeval t0, t;
    gettimeofday(&t0, NULL);
    for (;;) {
        gettimeofday(&t, NULL);
        long ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_usec - t0.tv_usec) / 1000;
        if (ms >= 1000 || !output_pending(c))
            break;
        loop_once(c, false, (int)(1000 - ms));
    }
    return NULL;
}

int control_start(const struct control_params *p, struct control **out, struct err *e)
{
    struct control *c = calloc(1, sizeof(*c));
    if (!c)
        return err_set(e, ENOMEM, "control socket: out of memory");
    c->p = *p;
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        int ret = err_errno(e, errno, "control socket: cannot create a pipe");
        free(c);
        return ret;
    }
    pthread_mutex_init(&c->lock, NULL);
    int rc = pthread_create(&c->thread, NULL, control_main, c);
    if (rc) {
        close(c->wake[0]);
        close(c->wake[1]);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return err_errno(e, rc, "control socket: cannot start a thread");
    }
    *out = c;
    return 0;
}

void control_stop(struct control *c)
{
    if (!c)
        return;
    atomic_store(&c->stop, true);
    wake_loop(c);
    pthread_join(c->thread, NULL);
    for (int i = 0; i < c->nclients; i++)
        client_free(c->clients[i]);
    close(c->wake[0]);
    close(c->wake[1]);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
