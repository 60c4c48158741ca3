/* imgtool job: drive the live mirror of `imgtool serve --control=PATH`
 * (or any QMP server's block jobs: qemu-storage-daemon, QEMU) over its
 * control socket.  A small QMP client: greeting, qmp_capabilities, one
 * command; for complete and cancel it waits for the job's last event, as
 * QEMU answers those commands before the job has finished. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "formats/json.h"

/* Exit statuses (imgtool-job(1)). */
enum { EXIT_REFUSED = 2 };              /* the server answered with an error */

enum { GREETING_TIMEOUT_MS = 30000, MAX_LINE = 1 << 20 };

struct qmp {
    const char *path;
    int fd;
    char *buf;                          /* MAX_LINE bytes */
    size_t len;
    /* A job's last event seen while waiting for a reply. */
    struct prop *final_event;
    const char *job;
};

static int qmp_connect(struct qmp *q, struct err *e)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(q->path) >= sizeof(sa.sun_path))
        return err_set(e, ENAMETOOLONG, "%s: socket path too long", q->path);
    strcpy(sa.sun_path, q->path);
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (q->fd < 0)
        return err_errno(e, errno, "%s: cannot create a socket", q->path);
    if (connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return err_errno(e, errno, "%s: cannot connect to the control socket", q->path);
    q->buf = malloc(MAX_LINE);
    return q->buf ? 0 : err_set(e, ENOMEM, "out of memory");
}

/* The next line, parsed; timeout_ms -1 waits as long as it takes (a
 * complete copies what is left first). */
static int qmp_read(struct qmp *q, int timeout_ms, struct prop **msg, struct err *e)
{
    for (;;) {
        char *nl = memchr(q->buf, '\n', q->len);
        if (nl) {
            size_t n = (size_t)(nl - q->buf) + 1;
            int ret = json_parse(q->buf, n, msg, q->path, e);
            memmove(q->buf, q->buf + n, q->len - n);
            q->len -= n;
            if (ret == 0 && (*msg)->type != PROP_OBJECT) {
                prop_free(*msg);
                return err_set(e, EPROTO, "%s: the server sent a JSON value that is not an "
                               "object", q->path);
            }
            return ret;
        }
        if (q->len == MAX_LINE)
            return err_set(e, EPROTO, "%s: the server sent a line longer than %d bytes",
                           q->path, MAX_LINE);
        struct pollfd p = { .fd = q->fd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);
        if (r == 0)
            return err_set(e, ETIMEDOUT, "%s: the server does not answer", q->path);
        ssize_t got = r < 0 ? -1 : recv(q->fd, q->buf + q->len, MAX_LINE - q->len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return err_errno(e, errno, "%s: cannot read from the control socket", q->path);
        if (got == 0)
            return err_set(e, ECONNRESET, "%s: the server closed the connection", q->path);
        q->len += (size_t)got;
    }
}

static const char *str_member(const struct prop *o, const char *key)
{
    const struct prop *v = prop_get(o, key);
    return v && v->type == PROP_STRING ? v->v.s : NULL;
}

/* BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED of the job we wait for. */
static bool is_final_event(const struct qmp *q, const struct prop *msg)
{
    const char *ev = str_member(msg, "event");
    const char *dev = str_member(prop_get(msg, "data"), "device");
    return q->job && ev && dev && !strcmp(dev, q->job) &&
           (!strcmp(ev, "BLOCK_JOB_COMPLETED") || !strcmp(ev, "BLOCK_JOB_CANCELLED"));
}

/* Send a command and read up to its reply (events are skipped, the job's
 * last one kept).  Returns 0 with *ret the "return" member's message, or
 * -EREMOTEIO with the server's error in e, or another error. */
static int qmp_execute(struct qmp *q, const char *name, struct prop *args, struct prop **reply,
                       struct err *e)
{
    struct prop *cmd = prop_new_object();
    prop_add_string(cmd, "execute", name);
    if (args)
        prop_add_copy(cmd, "arguments", args);
    prop_add_string(cmd, "id", "imgtool-job");
    struct json_buf b = { 0 };
    json_write(&b, cmd);
    json_buf_append(&b, "\n", 1);
    prop_free(cmd);
    int ret = b.failed ? err_set(e, ENOMEM, "out of memory") : 0;
    if (ret == 0 && send(q->fd, b.data, b.len, MSG_NOSIGNAL) != (ssize_t)b.len)
        ret = err_errno(e, errno, "%s: cannot send to the control socket", q->path);
    json_buf_free(&b);
    while (ret == 0) {
        struct prop *msg;
        if ((ret = qmp_read(q, -1, &msg, e)) < 0)
            break;
        if (is_final_event(q, msg) && !q->final_event) {
            q->final_event = msg;
            continue;
        }
        const struct prop *err = prop_get(msg, "error");
        if (err) {
            const char *desc = str_member(err, "desc");
            ret = err_set(e, EREMOTEIO, "%s", desc ? desc : "the server refused the command");
        } else if (prop_get(msg, "return")) {
            *reply = msg;
            return 0;
        }
        prop_free(msg);
    }
    return ret;
}

static int qmp_open(struct qmp *q, struct err *e)
{
    struct prop *greeting = NULL, *r = NULL;
    int ret = qmp_connect(q, e);
    if (ret == 0 && (ret = qmp_read(q, GREETING_TIMEOUT_MS, &greeting, e)) == 0 &&
        !prop_get(greeting, "QMP"))
        ret = err_set(e, EPROTO, "%s: not a QMP server (no greeting)", q->path);
    prop_free(greeting);
    if (ret == 0 && (ret = qmp_execute(q, "qmp_capabilities", NULL, &r, e)) == 0)
        prop_free(r);
    return ret;
}

static void qmp_close(struct qmp *q)
{
    if (q->fd >= 0)
        close(q->fd);
    free(q->buf);
    prop_free(q->final_event);
}

/* --- The verbs --- */

struct job_opts {
    char *control, *copy_mode, *output;
    int force;
    int switch_to_target, stop;         /* complete --switch / --stop */
    enum output_mode mode;
    const char *verb, *speed_arg, *id;
    uint64_t speed;
};

/* The job to act on: the one named, or the only one there is. */
static int pick_job(struct qmp *q, struct job_opts *o, struct err *e)
{
    if (o->id)
        return 0;
    struct prop *r = NULL;
    int ret = qmp_execute(q, "query-block-jobs", NULL, &r, e);
    if (ret < 0)
        return ret;
    const struct prop *list = prop_get(r, "return");
    int n = 0;
    for (const struct prop *j = list ? list->first : NULL; j; j = j->next)
        n++;
    if (n == 1 && str_member(list->first, "device"))
        o->id = strdup(str_member(list->first, "device"));
    else if (n == 0)
        ret = err_set(e, ESRCH, "%s: no block job is running", q->path);
    else
        ret = err_set(e, EINVAL, "%s: %d block jobs are running; name one", q->path, n);
    prop_free(r);
    return ret == 0 && !o->id ? err_set(e, ENOMEM, "out of memory") : ret;
}

static void print_human_jobs(const struct prop *list)
{
    printf("%-16s %-10s %-15s %12s %12s %12s %12s\n", "ID", "STATUS", "COPY-MODE", "DONE",
           "LENGTH", "REMAINING", "SPEED");
    for (const struct prop *j = list ? list->first : NULL; j; j = j->next) {
        const struct prop *off = prop_get(j, "offset"), *len = prop_get(j, "len");
        const struct prop *speed = prop_get(j, "speed");
        uint64_t o = off && off->type == PROP_UINT ? off->v.u : 0;
        uint64_t l = len && len->type == PROP_UINT ? len->v.u : 0;
        uint64_t s = speed && speed->type == PROP_UINT ? speed->v.u : 0;
        char done[32], total[32], rem[32], rate[40];
        format_size_human(o, done, sizeof(done));
        format_size_human(l, total, sizeof(total));
        format_size_human(l > o ? l - o : 0, rem, sizeof(rem));
        if (s) {
            format_size_human(s, rate, sizeof(rate));
            strcat(rate, "/s");
        } else {
            strcpy(rate, "unlimited");
        }
        const char *mode = str_member(j, "copy-mode");
        const char *id = str_member(j, "device"), *st = str_member(j, "status");
        printf("%-16s %-10s %-15s %12s %12s %12s %12s\n", id ? id : "?", st ? st : "?",
               mode ? mode : "-", done, total, rem, rate);
    }
}

static int do_query(struct qmp *q, struct job_opts *o, struct err *e)
{
    struct prop *r = NULL;
    int ret = qmp_execute(q, "query-block-jobs", NULL, &r, e);
    if (ret < 0)
        return ret;
    const struct prop *list = prop_get(r, "return");
    if (o->id) {                /* only the job named */
        struct prop *l = (struct prop *)list;
        for (struct prop **link = &l->first; *link;) {
            const char *dev = str_member(*link, "device");
            if (dev && !strcmp(dev, o->id)) {
                link = &(*link)->next;
                continue;
            }
            struct prop *drop = *link;
            *link = drop->next;
            drop->next = NULL;
            prop_free(drop);
        }
        if (!l->first)
            ret = err_set(e, EREMOTEIO, "Block job '%s' not found", o->id);
    }
    if (ret == 0 && o->mode == OUTPUT_JSON) {
        json_print(stdout, list, 0);
        putchar('\n');
    } else if (ret == 0) {
        print_human_jobs(list);
    }
    prop_free(r);
    return ret;
}

/* complete / cancel: the reply, then the job's last event if it has not
 * come yet; a job that failed is an error. */
static int do_finish(struct qmp *q, struct job_opts *o, const char *command, struct err *e)
{
    struct prop *args = prop_new_object(), *r = NULL;
    prop_add_string(args, "device", o->id);
    if (o->force)
        prop_add_bool(args, "force", true);
    /* imgtool serve's own argument (imgtool-job(1)); without it the
     * server does what its --on-complete says. */
    if (o->switch_to_target || o->stop)
        prop_add_string(args, "on-complete", o->switch_to_target ? "switch" : "stop");
    q->job = o->id;
    int ret = qmp_execute(q, command, args, &r, e);
    prop_free(args);
    prop_free(r);
    while (ret == 0 && !q->final_event) {
        struct prop *msg;
        if ((ret = qmp_read(q, -1, &msg, e)) < 0)
            break;
        if (is_final_event(q, msg))
            q->final_event = msg;
        else
            prop_free(msg);
    }
    if (ret < 0)
        return ret;
    const char *ev = str_member(q->final_event, "event");
    const char *error = str_member(prop_get(q->final_event, "data"), "error");
    if (error)
        return err_set(e, EIO, "job %s failed: %s", o->id, error);
    if (o->mode == OUTPUT_JSON) {
        json_print(stdout, prop_get(q->final_event, "data"), 0);
        putchar('\n');
    } else {
        printf("%s: %s\n", o->id, !strcmp(ev, "BLOCK_JOB_CANCELLED") ? "cancelled" : "completed");
    }
    return 0;
}

static int do_set_speed(struct qmp *q, struct job_opts *o, struct err *e)
{
    struct prop *args = prop_new_object(), *r = NULL;
    prop_add_string(args, "device", o->id);
    prop_add_uint(args, "speed", o->speed);
    int ret = qmp_execute(q, "block-job-set-speed", args, &r, e);
    prop_free(args);
    prop_free(r);
    return ret;
}

static int do_change(struct qmp *q, struct job_opts *o, struct err *e)
{
    struct prop *args = prop_new_object(), *r = NULL;
    prop_add_string(args, "id", o->id);
    prop_add_string(args, "type", "mirror");
    prop_add_string(args, "copy-mode", o->copy_mode);
    int ret = qmp_execute(q, "block-job-change", args, &r, e);
    prop_free(args);
    prop_free(r);
    return ret;
}

static int run_verb(struct job_opts *o)
{
    struct qmp q = { .path = o->control, .fd = -1 };
    struct err e = { 0 };
    int ret = qmp_open(&q, &e);
    if (ret == 0 && strcmp(o->verb, "query"))
        ret = pick_job(&q, o, &e);
    if (ret == 0) {
        if (!strcmp(o->verb, "query"))
            ret = do_query(&q, o, &e);
        else if (!strcmp(o->verb, "complete"))
            ret = do_finish(&q, o, "block-job-complete", &e);
        else if (!strcmp(o->verb, "cancel"))
            ret = do_finish(&q, o, "block-job-cancel", &e);
        else if (!strcmp(o->verb, "set-speed"))
            ret = do_set_speed(&q, o, &e);
        else
            ret = do_change(&q, o, &e);
    }
    qmp_close(&q);
    if (ret == -EREMOTEIO)
        err_prefix(&e, "%s: ", o->control);
    if (ret < 0)
        cmd_print_err(&e);
    return ret == 0 ? EXIT_OK : ret == -EREMOTEIO || ret == -ESRCH ? EXIT_REFUSED : EXIT_ERROR;
}

static int check_usage(struct cmdline *cl, struct job_opts *o)
{
    static const char *const verbs[] = { "complete", "cancel", "set-speed", "change", "query",
                                         NULL };
    o->verb = cl->args[0];
    int i = 0;
    while (verbs[i] && strcmp(verbs[i], o->verb))
        i++;
    if (!verbs[i])
        return cmd_usage_error(cl, "unknown action '%s' (complete, cancel, set-speed, change "
                               "or query)", o->verb);
    int argi = 1;
    if (!strcmp(o->verb, "set-speed")) {
        if (cl->nargs < 2)
            return cmd_usage_error(cl, "set-speed needs a SPEED (bytes per second, 0: "
                                   "unlimited)");
        int status = cmd_parse_size_arg(cl, "speed", cl->args[argi++], &o->speed);
        if (status >= 0)
            return status;
    }
    if (cl->nargs > argi + 1)
        return cmd_usage_error(cl, "too many arguments");
    o->id = cl->nargs > argi ? strdup(cl->args[argi]) : NULL;
    if (!o->control)
        return cmd_usage_error(cl, "--control=PATH is required (the socket of 'imgtool serve "
                               "--control')");
    if (!strcmp(o->verb, "change") != !!o->copy_mode)
        return cmd_usage_error(cl, o->copy_mode ? "--copy-mode is for 'change' only"
                                                : "change needs --copy-mode=MODE");
    if (o->copy_mode && strcmp(o->copy_mode, "background") &&
        strcmp(o->copy_mode, "write-blocking"))
        return cmd_usage_error(cl, "--copy-mode must be background or write-blocking");
    if (o->force && strcmp(o->verb, "cancel"))
        return cmd_usage_error(cl, "--force is for 'cancel' only");
    if ((o->switch_to_target || o->stop) && strcmp(o->verb, "complete"))
        return cmd_usage_error(cl, "--%s is for 'complete' only",
                               o->stop ? "stop" : "switch");
    if (o->switch_to_target && o->stop)
        return cmd_usage_error(cl, "--switch and --stop cannot be combined");
    return -1;
}

int cmd_job(const struct command *cmd, int argc, const char **argv)
{
    struct job_opts o = { 0 };
    struct poptOption options[] = {
        { "control", '\0', POPT_ARG_STRING, &o.control, 0,
          "the control socket of imgtool serve (or a QMP socket)", "PATH" },
        { "copy-mode", '\0', POPT_ARG_STRING, &o.copy_mode, 0,
          "change: the new copy mode", "background|write-blocking" },
        { "force", '\0', POPT_ARG_NONE, &o.force, 0,
          "cancel: abandon a ready job instead of finishing it as a copy", NULL },
        { "switch", '\0', POPT_ARG_NONE, &o.switch_to_target, 0,
          "complete: the server then serves the target in the source's place", NULL },
        { "stop", '\0', POPT_ARG_NONE, &o.stop, 0,
          "complete: the server then stops (its default unless --on-complete=switch)", NULL },
        { "output", '\0', POPT_ARG_STRING, &o.output, 0, "output format", "human|json" },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 3, NULL, NULL);
    if (status < 0 && (status = cmd_parse_output(&cl, o.output, &o.mode)) < 0 &&
        (status = check_usage(&cl, &o)) < 0)
        status = run_verb(&o);
    free((char *)o.id);
    cmd_done(&cl);
    return status;
}
