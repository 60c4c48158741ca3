/* imgtool serve: export images over NBD, as qemu-nbd does (its option
 * spelling), several images as several exports of one server.  The server
 * (formats/nbd/server.h) reports clients by callback; this file opens the
 * images (with their locks and bitmaps), listens, prints the events, and
 * on SIGTERM/SIGINT lets the server finish what is in flight, then flushes
 * and stores the bitmaps.  With --mirror, the image is served through a
 * gate, so that a complete with --on-complete=switch can put the target
 * in its place under the clients (serve-switch.c). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bitmap/dirty.h"
#include "cmd/commands.h"
#include "cmd/serve-control.h"
#include "cmd/serve-mirror.h"
#include "cmd/serve-switch.h"
#include "cmd/signals.h"
#include "formats/blockdev-bitmaps.h"
#include "formats/nbd/proto.h"
#include "formats/nbd/server.h"

enum { OPT_EXPORT_NAME = 1, OPT_DESCRIPTION, OPT_BITMAP, OPT_TARGET_OPTS };

#define MAX_EXPORTS 64
#define MAX_BITMAPS SERVE_MAX_BITMAPS

struct serve_cli {
    const char *names[MAX_EXPORTS];
    int nnames;
    const char *descriptions[MAX_EXPORTS];
    int ndescriptions;
    const char *bitmaps[MAX_BITMAPS];
    int nbitmaps;
    enum output_mode mode;
    struct serve_mirror mirror;     /* --mirror */
    struct serve_control control;   /* --control */
};

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct serve_cli *c = opaque;
    switch (val) {
    case OPT_EXPORT_NAME:
        if (c->nnames == MAX_EXPORTS)
            return cmd_usage_error(cl, "at most %d exports", MAX_EXPORTS);
        if (strlen(arg) > NBD_MAX_STRING)
            return cmd_usage_error(cl, "export name longer than %d bytes", NBD_MAX_STRING);
        c->names[c->nnames++] = arg;
        break;
    case OPT_DESCRIPTION:
        if (c->ndescriptions == MAX_EXPORTS)
            return cmd_usage_error(cl, "at most %d exports", MAX_EXPORTS);
        c->descriptions[c->ndescriptions++] = arg;
        break;
    case OPT_BITMAP:
        if (c->nbitmaps == MAX_BITMAPS)
            return cmd_usage_error(cl, "at most %d bitmaps", MAX_BITMAPS);
        c->bitmaps[c->nbitmaps++] = arg;
        break;
    case OPT_TARGET_OPTS: {
        struct err e = { 0 };
        if (kvopts_parse(&c->mirror.opts, arg, &e) < 0)
            return cmd_usage_error(cl, "-o %s: %s", arg, e.msg);
        break;
    }
    }
    return -1;
}

/* --- Events --- */

static void print_event(struct serve_cli *c, const char *name, const char *k1,
                        const char *v1, const char *k2, const char *v2)
{
    serve_print_event(c->mode, name, k1, v1, k2, v2, NULL);
}

static void on_server_event(void *opaque, const struct nbd_server_event *ev)
{
    struct serve_cli *c = opaque;
    if (ev->type == NBD_SERVER_CLIENT_CONNECTED) {
        print_event(c, "client-connected", "peer", ev->peer, "export", ev->export_name);
        return;
    }
    if (ev->error && c->mode != OUTPUT_JSON)
        cmd_warn("%s", ev->error);
    print_event(c, "client-disconnected", "peer", ev->peer, "error", ev->error);
}

/* --- Listening --- */

/* A socket file nobody listens on any more (a killed server's) may be
 * replaced; anything else at the path is an error. */
static int remove_stale_socket(const char *path, struct err *e)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return 0;
    if (!S_ISSOCK(st.st_mode))
        return err_set(e, EEXIST, "%s: exists and is not a socket", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    bool live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0)
        close(fd);
    if (live)
        return err_set(e, EADDRINUSE, "%s: another server is listening on it", path);
    unlink(path);
    return 0;
}

static int listen_unix(const char *path, int *out, struct err *e)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path))
        return err_set(e, ENAMETOOLONG, "%s: socket path too long", path);
    strcpy(sa.sun_path, path);
    int ret = remove_stale_socket(path, e);
    if (ret < 0)
        return ret;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_errno(e, errno, "%s: cannot create a socket", path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
        ret = err_errno(e, errno, "%s: cannot listen", path);
        close(fd);
        return ret;
    }
    *out = fd;
    return 0;
}

static int listen_tcp(const char *addr, const char *port, int *out, struct err *e)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *ai;
    int rc = getaddrinfo(addr, port, &hints, &ai);
    if (rc)
        return err_set(e, EINVAL, "%s:%s: %s", addr, port, gai_strerror(rc));
    int ret = err_set(e, EADDRNOTAVAIL, "%s:%s: no address to listen on", addr, port);
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        int one = 1;
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0) {
            *out = fd;
            ret = 0;
            err_clear(e);
            break;
        }
        ret = err_errno(e, errno, "%s:%s: cannot listen", addr, port);
        close(fd);
    }
    freeaddrinfo(ai);
    return ret;
}

/* --- Images --- */

/* -B: the bitmaps of this image that are asked for.  A bitmap that no
 * image has is an error; one that is inconsistent (a crashed writer) too,
 * since its bits may miss writes. */
static int pick_bitmaps(struct served *s, const struct serve_cli *c, struct err *e)
{
    if (!c->nbitmaps)
        return 0;
    if (s->bs->read_only && blk_bitmaps_supported(s->bs) && !s->bs->bitmaps_loaded) {
        int ret = blk_bitmaps_load(s->bs, e);
        if (ret < 0)
            return ret;
    }
    /* Last -B first, in the order qemu-nbd lists the contexts. */
    for (int i = c->nbitmaps - 1; i >= 0; i--) {
        struct dirty_bitmap *bm = blk_bitmap_find(s->bs, c->bitmaps[i]);
        if (!bm)
            continue;
        if (dirty_bitmap_inconsistent(bm))
            return err_set(e, EINVAL, "%s: bitmap '%s' is inconsistent (use 'imgtool "
                           "bitmap --remove' and start a new one)", s->bs->filename,
                           c->bitmaps[i]);
        s->bitmaps[s->nbitmaps++] = bm;
    }
    return 0;
}

static int check_bitmaps_found(const struct served *s, int n, const struct serve_cli *c,
                               struct err *e)
{
    for (int i = 0; i < c->nbitmaps; i++) {
        bool found = false;
        for (int k = 0; k < n && !found; k++)
            found = blk_bitmap_find(s[k].bs, c->bitmaps[i]) != NULL;
        if (!found)
            return err_set(e, ENOENT, "no image has a bitmap '%s'", c->bitmaps[i]);
    }
    return 0;
}

/* Flush, store the bitmaps clean, close; the first error is kept. */
static int close_images(struct served *s, int n, struct err *e)
{
    int ret = 0;
    for (int i = 0; i < n; i++) {
        struct err e2 = { 0 };
        int r = 0;
        if (s[i].bs && !s[i].bs->read_only) {
            r = blk_flush(s[i].bs, &e2);
            if (r == 0 && s[i].bs->bitmaps_in_use)
                r = blk_bitmaps_release(s[i].bs, &e2);
        }
        if (r < 0 && ret == 0) {
            ret = r;
            *e = e2;
        }
        blk_close(s[i].bs);
        s[i].bs = NULL;
        nbd_export_gate_free(s[i].gate);
        s[i].gate = NULL;
    }
    return ret;
}

/* --- Daemon --- */

static int write_pid_file(const char *path, pid_t pid, struct err *e)
{
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%ld\n", (long)pid) < 0 || fclose(f) != 0)
        return err_errno(e, errno, "%s: cannot write the pid file", path);
    return 0;
}

/* --fork: fork first, before anything starts a thread (an NBD source's
 * connection, the mirror's job): a child forked later would have none of
 * them.  The parent waits until the child listens (one byte through a
 * pipe) and returns 0, or returns the child's exit status if it failed
 * (the child printed why). */
static int fork_early(int *ready_fd, struct err *e)
{
    int fds[2];
    if (pipe(fds) < 0)
        return err_errno(e, errno, "cannot create a pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return err_errno(e, errno, "cannot fork");
    }
    if (pid > 0) {
        close(fds[1]);
        char byte;
        ssize_t n;
        while ((n = read(fds[0], &byte, 1)) < 0 && errno == EINTR)
            ;
        if (n == 1)
            _exit(EXIT_OK);
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        _exit(WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : EXIT_ERROR);
    }
    close(fds[0]);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        close(null);
    }
    *ready_fd = fds[1];
    return 0;
}

/* The child listens: the parent may return. */
static void report_ready(int *ready_fd)
{
    if (*ready_fd < 0)
        return;
    ssize_t n;
    while ((n = write(*ready_fd, "", 1)) < 0 && errno == EINTR)
        ;
    close(*ready_fd);
    *ready_fd = -1;
}

struct serve_opts {
    char *format, *socket_path, *bind_addr, *port, *cache, *discard, *output, *pid_file;
    char *on_complete;
    int read_only, shared, persistent, fork, allocation_depth;
    int ready_fd;                   /* --fork: the pipe to the waiting parent */
};

static int open_images(struct cmdline *cl, struct serve_opts *o, const struct serve_cli *c,
                       struct served *s, struct err *e)
{
    int ret;
    unsigned flags = cmd_open_flags(!o->read_only, false, o->cache, e, &ret);
    if (ret < 0)
        return ret;
    for (int i = 0; i < cl->nargs; i++) {
        if ((ret = blk_open(cl->args[i], o->format, flags, cmd_open_opts(), &s[i].bs, e)) < 0 ||
            (ret = pick_bitmaps(&s[i], c, e)) < 0)
            return ret;
        /* cache=unsafe: no fdatasync at all, flush requests included, as
         * QEMU's cache.no-flush. */
        if (o->cache && !strcmp(o->cache, "unsafe"))
            blk_defer_flushes(s[i].bs, true);
    }
    return check_bitmaps_found(s, cl->nargs, c, e);
}

static void fill_exports(struct cmdline *cl, const struct serve_opts *o,
                         const struct serve_cli *c, struct served *s,
                         struct nbd_server_export *x)
{
    bool unmap = o->discard && (!strcmp(o->discard, "unmap") || !strcmp(o->discard, "on"));
    for (int i = 0; i < cl->nargs; i++) {
        x[i] = (struct nbd_server_export){
            .name = i < c->nnames ? c->names[i] : "",
            .description = i < c->ndescriptions ? c->descriptions[i] : NULL,
            .bs = s[i].bs, .writable = !o->read_only, .unmap = unmap,
            .allocation_depth = o->allocation_depth,
            /* Every connection sees every write (one open image), but
             * qemu-nbd only promises it for shared read-only exports. */
            .multi_conn = o->read_only && o->shared > 1,
            .bitmaps = s[i].bitmaps, .nbitmaps = s[i].nbitmaps, .gate = s[i].gate,
        };
    }
}

static int check_mirror_usage(struct cmdline *cl, const struct serve_opts *o,
                              struct serve_cli *c)
{
    struct serve_mirror *m = &c->mirror;
    bool mirror_options = m->sync || m->bitmap || m->bitmap_mode || m->target_format ||
                          m->mode || m->speed || m->on_source_error || m->on_target_error ||
                          m->copy_mode || m->opts.count || o->on_complete;
    if (!m->target)
        return mirror_options ? cmd_usage_error(cl, "the mirror options need --mirror=TARGET")
                              : -1;
    if (cl->nargs != 1)
        return cmd_usage_error(cl, "--mirror serves one image");
    if (o->read_only)
        return cmd_usage_error(cl, "--mirror mirrors a disk in use: it cannot be combined "
                               "with -r (use imgtool mirror for a copy of an idle image)");
    if (o->on_complete && !strcmp(o->on_complete, "switch"))
        c->control.on_complete = SERVE_ON_COMPLETE_SWITCH;
    else if (o->on_complete && strcmp(o->on_complete, "stop"))
        return cmd_usage_error(cl, "--on-complete must be stop or switch");
    if (c->control.on_complete == SERVE_ON_COMPLETE_SWITCH && !c->control.path)
        return cmd_usage_error(cl, "--on-complete=switch is for complete commands on the "
                               "control socket: it needs --control=PATH (SIGTERM always stops)");
    m->json = c->mode == OUTPUT_JSON;
    return serve_mirror_check(cl, m);
}

static int check_usage(struct cmdline *cl, const struct serve_opts *o,
                       struct serve_cli *c)
{
    if (!o->socket_path && !o->port && !o->bind_addr)
        return cmd_usage_error(cl, "give -k SOCKET, or -p PORT (and -b ADDRESS) for TCP");
    if (o->socket_path && (o->port || o->bind_addr))
        return cmd_usage_error(cl, "-k and -b/-p cannot be combined");
    if (o->discard && strcmp(o->discard, "ignore") && strcmp(o->discard, "off") &&
        strcmp(o->discard, "unmap") && strcmp(o->discard, "on"))
        return cmd_usage_error(cl, "--discard must be ignore, off, unmap or on");
    if (o->shared < 1)
        return cmd_usage_error(cl, "-e must be at least 1");
    if (cl->nargs > MAX_EXPORTS)
        return cmd_usage_error(cl, "at most %d images", MAX_EXPORTS);
    if (c->nnames > cl->nargs || c->ndescriptions > cl->nargs)
        return cmd_usage_error(cl, "more -x or -D than images");
    if (cl->nargs > 1 && c->nnames < cl->nargs)
        return cmd_usage_error(cl, "several images need one -x NAME each");
    for (int i = 0; i < c->nnames; i++)
        for (int k = 0; k < i; k++)
            if (!strcmp(c->names[i], c->names[k]))
                return cmd_usage_error(cl, "export name '%s' given twice", c->names[i]);
    return check_mirror_usage(cl, o, c);
}

static int listen_and_announce(struct serve_opts *o, struct serve_cli *c, int *fd,
                               struct err *e)
{
    int ret = o->socket_path ? listen_unix(o->socket_path, fd, e)
                             : listen_tcp(o->bind_addr ? o->bind_addr : "0.0.0.0",
                                          o->port ? o->port : "10809", fd, e);
    if (ret < 0)
        return ret;
    if (o->pid_file && (ret = write_pid_file(o->pid_file, getpid(), e)) < 0)
        return ret;
    report_ready(&o->ready_fd);
    if (o->socket_path)
        print_event(c, "listening", "socket", o->socket_path, NULL, NULL);
    else
        print_event(c, "listening", "address", o->bind_addr ? o->bind_addr : "0.0.0.0",
                    "port", o->port ? o->port : "10809");
    return 0;
}

/* --control: listen (before --fork reports ready), serve QMP there, and
 * hand the mirror's events to it. */
static int start_control(struct serve_cli *c, struct err *e)
{
    int fd;
    int ret = listen_unix(c->control.path, &fd, e);
    if (ret < 0)
        return ret;
    if ((ret = serve_control_start(&c->control, &c->mirror, fd, e)) < 0) {
        close(fd);
        unlink(c->control.path);
        return ret;
    }
    c->mirror.forward = serve_control_event;
    c->mirror.forward_opaque = &c->control;
    return 0;
}

/* --mirror: the job on the (one) image, served through a gate so that a
 * complete can switch the export to the target (serve-switch.h). */
static int start_mirror(const struct serve_opts *o, struct serve_cli *c, struct served *s,
                        struct serve_switch *sw, struct err *e)
{
    int ret = nbd_export_gate_new(s->bs, s->bitmaps, s->nbitmaps, &s->gate, e);
    if (ret < 0)
        return ret;
    *sw = (struct serve_switch){
        .image = s, .export_name = c->nnames ? c->names[0] : "", .mirror = &c->mirror,
        .defer_flushes = o->cache && !strcmp(o->cache, "unsafe"),
        .mode = c->mode,
    };
    c->control.sw = sw;
    return serve_mirror_start(&c->mirror, s->bs, e);
}

static int serve(struct cmdline *cl, struct serve_opts *o, struct serve_cli *c)
{
    struct served s[MAX_EXPORTS] = { 0 };
    struct nbd_server_export x[MAX_EXPORTS];
    struct serve_switch sw;
    struct err e = { 0 };
    int fd = -1;
    int ret = o->fork ? fork_early(&o->ready_fd, &e) : 0;
    if (ret == 0)
        ret = open_images(cl, o, c, s, &e);
    if (ret == 0 && c->mirror.target)
        ret = start_mirror(o, c, &s[0], &sw, &e);
    if (ret == 0 && c->control.path)
        ret = start_control(c, &e);
    if (ret == 0)
        ret = listen_and_announce(o, c, &fd, &e);
    if (ret == 0) {
        fill_exports(cl, o, c, s, x);
        struct nbd_server_params p = {
            .exports = x, .nexports = (size_t)cl->nargs, .listen_fds = &fd, .nlisten = 1,
            .max_clients = (unsigned)o->shared, .persistent = o->persistent,
            .stop = &cancel_requested, .event = on_server_event, .opaque = c,
        };
        ret = nbd_server_run(&p, &e);
    }
    if (fd >= 0) {
        close(fd);
        if (o->socket_path)
            unlink(o->socket_path);
    }
    /* The server is done: no client writes any more.  No control command
     * either, but the last events still reach the control clients. */
    serve_control_close(&c->control);
    int mirror_status = ret == 0 ? serve_mirror_finish(&c->mirror, &cancel_requested) : EXIT_OK;
    serve_control_stop(&c->control);
    serve_mirror_free(&c->mirror);
    struct err e2 = { 0 };
    int ret2 = close_images(s, cl->nargs, &e2);
    if (ret == 0 && ret2 < 0) {
        ret = ret2;
        e = e2;
    }
    if (ret < 0) {
        cmd_print_err(&e);
        return EXIT_ERROR;
    }
    print_event(c, "stopped", NULL, NULL, NULL, NULL);
    return mirror_status;
}

int cmd_serve(const struct command *cmd, int argc, const char **argv)
{
    struct serve_opts o = { .shared = 1, .ready_fd = -1 };
    struct serve_cli c = { 0 };
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &o.format, 0, "image format (default: probe)", "FMT" },
        { "read-only", 'r', POPT_ARG_NONE, &o.read_only, 0, "export read-only", NULL },
        { "export-name", 'x', POPT_ARG_STRING, NULL, OPT_EXPORT_NAME,
          "export name (default \"\"; one per image)", "NAME" },
        { "description", 'D', POPT_ARG_STRING, NULL, OPT_DESCRIPTION,
          "export description (one per image)", "TEXT" },
        { "socket", 'k', POPT_ARG_STRING, &o.socket_path, 0, "listen on a unix socket", "PATH" },
        { "bind", 'b', POPT_ARG_STRING, &o.bind_addr, 0, "TCP address (default 0.0.0.0)",
          "ADDR" },
        { "port", 'p', POPT_ARG_STRING, &o.port, 0, "TCP port (default 10809)", "PORT" },
        { "shared", 'e', POPT_ARG_INT, &o.shared, 0, "clients at once (default 1)", "N" },
        { "persistent", 't', POPT_ARG_NONE, &o.persistent, 0,
          "keep serving after the last client leaves", NULL },
        { "fork", '\0', POPT_ARG_NONE, &o.fork, 0, "return once listening, serve in the "
          "background", NULL },
        { "pid-file", '\0', POPT_ARG_STRING, &o.pid_file, 0, "write the server's pid here",
          "PATH" },
        { "cache", '\0', POPT_ARG_STRING, &o.cache, 0, "cache mode", "none|writeback|..." },
        { "discard", '\0', POPT_ARG_STRING, &o.discard, 0, "TRIM deallocates (unmap) or "
          "does nothing (ignore, the default)", "ignore|unmap" },
        { "bitmap", 'B', POPT_ARG_STRING, NULL, OPT_BITMAP,
          "offer a bitmap as qemu:dirty-bitmap:NAME", "NAME" },
        { "allocation-depth", 'A', POPT_ARG_NONE, &o.allocation_depth, 0,
          "offer qemu:allocation-depth", NULL },
        { "output", '\0', POPT_ARG_STRING, &o.output, 0, "events as JSON lines", "human|json" },
        { "control", '\0', POPT_ARG_STRING, &c.control.path, 0, "a QMP control socket for the "
          "mirror job (imgtool job, QMP clients)", "PATH" },
        { "mirror", '\0', POPT_ARG_STRING, &c.mirror.target, 0, "mirror the image to TARGET "
          "while serving it", "TARGET" },
        { "on-complete", '\0', POPT_ARG_STRING, &o.on_complete, 0, "--mirror: once a complete "
          "command has completed the job, stop (default) or serve the target in the source's "
          "place", "stop|switch" },
        { "copy-mode", '\0', POPT_ARG_STRING, &c.mirror.copy_mode, 0, "--mirror: copy in the "
          "background only (default), or also write client writes through",
          "background|write-blocking" },
        { "sync", '\0', POPT_ARG_STRING, &c.mirror.sync, 0, "--mirror: what to copy: full "
          "(default), top, bitmap", "MODE" },
        { "mirror-bitmap", '\0', POPT_ARG_STRING, &c.mirror.bitmap, 0, "--mirror "
          "--sync=bitmap: the bitmap whose dirty ranges are copied", "NAME" },
        { "bitmap-mode", '\0', POPT_ARG_STRING, &c.mirror.bitmap_mode, 0,
          "--mirror: when to clear the bitmap: on-success, always, never", "MODE" },
        { "target-format", 'O', POPT_ARG_STRING, &c.mirror.target_format, 0,
          "--mirror: format of a new target (default: the image's)", "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, OPT_TARGET_OPTS,
          "--mirror: options of a new target", "OPT=VAL,..." },
        { "mode", '\0', POPT_ARG_STRING, &c.mirror.mode, 0, "--mirror: existing (default when "
          "TARGET exists), absolute-paths (default otherwise), relative-paths", "MODE" },
        { "speed", '\0', POPT_ARG_STRING, &c.mirror.speed, 0, "--mirror: rate limit in bytes "
          "per second", "SIZE" },
        { "on-source-error", '\0', POPT_ARG_STRING, &c.mirror.on_source_error, 0,
          "--mirror: report (default), ignore or retry", "ACTION" },
        { "on-target-error", '\0', POPT_ARG_STRING, &c.mirror.on_target_error, 0,
          "--mirror: report (default), ignore or retry", "ACTION" },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, -1, on_option, &c);
    if (status < 0 && (status = cmd_parse_output(&cl, o.output, &c.mode)) < 0 &&
        (status = check_usage(&cl, &o, &c)) < 0) {
        install_cancel_handlers();
        signal(SIGPIPE, SIG_IGN);
        status = serve(&cl, &o, &c);
    }
    cmd_done(&cl);
    return status;
}
