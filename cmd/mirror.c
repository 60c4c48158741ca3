/* imgtool mirror: copy an image (or the top of its chain, or what a dirty
 * bitmap marks) to a target, as a one-shot command.  Several
 * SOURCE=TARGET pairs are copied as one set that succeeds or fails whole. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd/commands.h"
#include "cmd/job-progress.h"
#include "cmd/mirror-options.h"
#include "cmd/signals.h"
#include "mirror/job.h"

enum { OPT_O = 1 };

struct mirror_cli {
    struct kvopts opts;
    struct err e;
    enum output_mode mode;
    bool quiet;
    bool want_bar;
    struct progress bar;                    /* one bar per job, on a terminal */
    struct timespec last_json;
    uint64_t last_json_done;
};

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct mirror_cli *c = opaque;
    if (val == OPT_O && kvopts_parse(&c->opts, arg, &c->e) < 0)
        return cmd_usage_error(cl, "-o %s: %s", arg, c->e.msg);
    return -1;
}

static void json_event_head(const char *name, const struct mirror_event *ev)
{
    printf("{\"event\": \"%s\", \"source\": ", name);
    json_print_string(stdout, ev->job->source);
    printf(", \"target\": ");
    json_print_string(stdout, ev->job->target);
}

/* One JSON object per line; progress at most every second or 1%. */
static void print_json_event(struct mirror_cli *c, const struct mirror_event *ev)
{
    static const char *const names[] = {
        [MIRROR_EVENT_STARTED] = "started", [MIRROR_EVENT_PROGRESS] = "progress",
        [MIRROR_EVENT_READY] = "ready", [MIRROR_EVENT_COMPLETED] = "completed",
        [MIRROR_EVENT_FAILED] = "failed", [MIRROR_EVENT_CANCELLED] = "cancelled",
    };
    if (ev->type == MIRROR_EVENT_PROGRESS) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        bool second = now.tv_sec > c->last_json.tv_sec;
        bool percent = ev->total && (ev->done - c->last_json_done) * 100 >= ev->total;
        if (!second && !percent && ev->done != ev->total)
            return;
        c->last_json = now;
        c->last_json_done = ev->done;
    }
    json_event_head(names[ev->type], ev);
    switch (ev->type) {
    case MIRROR_EVENT_STARTED:
        printf(", \"sync\": \"%s\", \"total\": %" PRIu64, mirror_sync_name(ev->job->sync),
               ev->total);
        c->last_json_done = 0;
        break;
    case MIRROR_EVENT_PROGRESS:
        printf(", \"offset\": %" PRIu64 ", \"len\": %" PRIu64 ", \"done\": %" PRIu64
               ", \"total\": %" PRIu64, ev->offset, ev->length, ev->done, ev->total);
        break;
    case MIRROR_EVENT_READY:
        printf(", \"done\": %" PRIu64 ", \"total\": %" PRIu64, ev->done, ev->total);
        break;
    case MIRROR_EVENT_COMPLETED:
        printf(", \"bytes-read\": %" PRIu64 ", \"bytes-written\": %" PRIu64
               ", \"bytes-zeroed\": %" PRIu64 ", \"bytes-skipped\": %" PRIu64,
               ev->stats->bytes_read, ev->stats->bytes_written, ev->stats->bytes_zeroed,
               ev->stats->bytes_skipped);
        break;
    case MIRROR_EVENT_FAILED:
        printf(", \"error\": ");
        json_print_string(stdout, ev->error ? ev->error : "");
        break;
    case MIRROR_EVENT_CANCELLED:
        break;
    }
    printf("}\n");
    fflush(stdout);
}

static void on_event(void *opaque, const struct mirror_event *ev)
{
    struct mirror_cli *c = opaque;
    if (c->mode == OUTPUT_JSON) {
        print_json_event(c, ev);
        return;
    }
    job_progress_event(&c->bar, c->want_bar, ev);
    switch (ev->type) {
    case MIRROR_EVENT_COMPLETED:
        if (!c->quiet) {
            char human[32];
            format_size_human(ev->stats->bytes_written + ev->stats->bytes_zeroed, human,
                              sizeof(human));
            printf("%s -> %s: %s written (sync=%s)", ev->job->source, ev->job->target, human,
                   mirror_sync_name(ev->job->sync));
            if (ev->job->bitmap && blk_name_is_network(ev->job->source))
                printf("; the server's bitmap '%s' is left unchanged (the server manages it)",
                       ev->job->bitmap);
            printf("\n");
        }
        break;
    default:
        break;
    }
}

/* SOURCE TARGET, or one SOURCE=TARGET per argument. */
/* The '=' between SOURCE and TARGET of a pair; the one of an NBD URI's
 * "?socket=" is not it (nbd+unix:///?socket=/run/vm.sock=backup.qcow2). */
static char *pair_separator(char *s)
{
    for (char *eq = strchr(s, '='); eq; eq = strchr(eq + 1, '=')) {
        if (eq - s >= 7 && strncmp(eq - 7, "?socket", 7) == 0)
            continue;
        return eq;
    }
    return NULL;
}

static int parse_pairs(struct cmdline *cl, const struct mirror_params *proto,
                       struct mirror_params **out, int *n, char ***strings)
{
    int pairs = cl->nargs == 2 && !pair_separator((char *)cl->args[0]) ? 1 : cl->nargs;
    struct mirror_params *jobs = calloc((size_t)pairs, sizeof(*jobs));
    char **s = calloc((size_t)pairs + 1, sizeof(*s));
    if (!jobs || !s) {
        free(jobs);
        free(s);
        cmd_error("out of memory");
        return EXIT_ERROR;
    }
    *out = jobs;
    *strings = s;
    *n = pairs;
    for (int i = 0; i < pairs; i++) {
        jobs[i] = *proto;
        if (pairs == 1 && cl->nargs == 2) {
            jobs[i].source = cl->args[0];
            jobs[i].target = cl->args[1];
            continue;
        }
        char *eq;
        if (!(s[i] = strdup(cl->args[i])) || !(eq = pair_separator(s[i])) || eq == s[i] ||
            !eq[1])
            return cmd_usage_error(cl, "'%s': give SOURCE TARGET, or SOURCE=TARGET pairs",
                                   cl->args[i]);
        *eq = '\0';
        jobs[i].source = s[i];
        jobs[i].target = eq + 1;
    }
    return -1;
}

/* --connections for the images of every pair. */
static int check_connections(struct cmdline *cl, int n, const struct mirror_params *jobs,
                             int njobs, const struct blk_open_opts **oo)
{
    const char **names = calloc((size_t)njobs * 2, sizeof(*names));
    if (!names) {
        cmd_error("out of memory");
        return EXIT_ERROR;
    }
    for (int i = 0; i < njobs; i++) {
        names[2 * i] = jobs[i].source;
        names[2 * i + 1] = jobs[i].target;
    }
    int status = cmd_parse_connections(cl, n, names, njobs * 2, oo);
    free(names);
    return status;
}

int cmd_mirror(const struct command *cmd, int argc, const char **argv)
{
    char *src_fmt = NULL, *dst_fmt = NULL, *sync_s = NULL, *bitmap = NULL, *bitmap_mode_s = NULL;
    char *base = NULL, *mode_s = NULL, *output = NULL, *speed_s = NULL, *buf_size_s = NULL;
    char *src_err_s = NULL, *dst_err_s = NULL;
    int max_in_flight = 0, progress = 0, quiet = 0, force_share = 0, target_is_zero = 0;
    int force = 0, connections = 1;
    struct mirror_cli c = { 0 };
    struct poptOption options[] = {
        { "sync", 's', POPT_ARG_STRING, &sync_s, 0,
          "what to copy: full (default), top, none, bitmap, incremental", "MODE" },
        { "bitmap", 'B', POPT_ARG_STRING, &bitmap, 0, "dirty bitmap of the source for "
          "--sync=bitmap|incremental", "NAME" },
        { "bitmap-mode", '\0', POPT_ARG_STRING, &bitmap_mode_s, 0,
          "when to clear the bitmap: on-success, always, never", "MODE" },
        { "force", '\0', POPT_ARG_NONE, &force, 0,
          "clear a bitmap that an export chain counts on (its next incremental is then "
          "refused)", NULL },
        { "base", 'b', POPT_ARG_STRING, &base, 0,
          "copy only what lies above this image of the chain; it becomes the target's "
          "backing file", "IMAGE" },
        { "format", 'f', POPT_ARG_STRING, &src_fmt, 0, "source format (default: probe)", "FMT" },
        { "target-format", 'O', POPT_ARG_STRING, &dst_fmt, 0,
          "format of a new target (default: the source's)", "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, OPT_O, "options of a new target", "OPT=VAL,..." },
        { "mode", 'm', POPT_ARG_STRING, &mode_s, 0, "existing (default when TARGET exists), "
          "absolute-paths (default otherwise), relative-paths", "MODE" },
        { "target-is-zero", '\0', POPT_ARG_NONE, &target_is_zero, 0,
          "the existing target reads as zeroes: do not write zeroes", NULL },
        { "buf-size", '\0', POPT_ARG_STRING, &buf_size_s, 0,
          "bytes per request (default 2M, 512k with an NBD export)", "SIZE" },
        { "max-in-flight", '\0', POPT_ARG_INT, &max_in_flight, 0, "requests in flight", "N" },
        { "speed", '\0', POPT_ARG_STRING, &speed_s, 0, "rate limit in bytes per second",
          "SIZE" },
        { "on-source-error", '\0', POPT_ARG_STRING, &src_err_s, 0,
          "report (default), ignore or retry", "ACTION" },
        { "on-target-error", '\0', POPT_ARG_STRING, &dst_err_s, 0,
          "report (default), ignore or retry", "ACTION" },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "read the source even if another process writes it", NULL },
        CMD_OPTION_CONNECTIONS(connections),
        { "output", '\0', POPT_ARG_STRING, &output, 0,
          "human, or json: one event object per line", "human|json" },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        { "quiet", 'q', POPT_ARG_NONE, &quiet, 0, "print nothing on success", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct mirror_params proto = { 0 }, *jobs = NULL;
    char **strings = NULL;
    int njobs = 0;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 2, -1, on_option, &c);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &c.mode)) >= 0)
        goto out;
    struct mirror_options mo = {
        .sync = sync_s, .bitmap = bitmap, .bitmap_mode = bitmap_mode_s,
        .target_format = dst_fmt, .mode = mode_s, .speed = speed_s, .buf_size = buf_size_s,
        .on_source_error = src_err_s, .on_target_error = dst_err_s,
        .max_in_flight = max_in_flight, .target_opts = &c.opts,
        .network_source = cl.nargs == 2 && blk_name_is_network(cl.args[0]),
        .sync_names = "full, top, none, bitmap or incremental",
    };
    if ((status = mirror_options_apply(&cl, &mo, &proto)) >= 0)
        goto out;
    proto.source_format = src_fmt;
    proto.base = base;
    proto.bitmap = bitmap;
    proto.force_bitmap = force;
    proto.force_share = force_share;
    proto.target_is_zero = target_is_zero;
    if ((status = parse_pairs(&cl, &proto, &jobs, &njobs, &strings)) >= 0)
        goto out;
    const struct blk_open_opts *oo;
    if ((status = check_connections(&cl, connections, jobs, njobs, &oo)) >= 0)
        goto out;
    c.quiet = quiet;
    c.want_bar = progress && !quiet && c.mode == OUTPUT_HUMAN;
    install_cancel_handlers();
    struct mirror_set_options so = { .event = on_event, .opaque = &c,
                                     .cancel = &cancel_requested,
                                     .open_opts = oo };
    int ret = mirror_run_set(jobs, njobs, &so, &e);
    if (c.bar.enabled)
        fputc('\n', stderr);
    if (ret == -ECANCELED) {
        cmd_error("mirror cancelled: new targets were removed; existing targets hold a "
                  "partial copy; bitmaps are as --bitmap-mode says for a failed job");
        status = EXIT_CANCELLED;
    } else if (ret < 0) {
        cmd_print_err(&e);
        status = EXIT_ERROR;
    } else {
        status = EXIT_OK;
    }
out:
    for (int i = 0; strings && i <= njobs; i++)
        free(strings[i]);
    free(strings);
    free(jobs);
    kvopts_free(&c.opts);
    cmd_done(&cl);
    return status;
}
