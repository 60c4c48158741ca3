/* imgtool export: one night's backup of a disk, for cron.  A full backup
 * is a standalone qcow2; an incremental (or differential) backup is a qcow2
 * "diff" image holding only what changed, backed by the previous backup
 * (or by the full one), so that each image of the chain, opened through its
 * backing files, reads as the disk did when that backup was taken.  Built
 * on the mirror jobs: the same copy engine, bitmap freezing and widening. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/job-progress.h"
#include "cmd/signals.h"
#include "mirror/job.h"

enum { OPT_O = 1 };

struct export_cli {
    struct kvopts opts;
    struct err e;
    bool want_bar;
    struct progress bar;
    struct copy_stats stats;
};

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct export_cli *c = opaque;
    if (val == OPT_O && kvopts_parse(&c->opts, arg, &c->e) < 0)
        return cmd_usage_error(cl, "-o %s: %s", arg, c->e.msg);
    return -1;
}

static void on_event(void *opaque, const struct mirror_event *ev)
{
    struct export_cli *c = opaque;
    job_progress_event(&c->bar, c->want_bar, ev);
    if (ev->type == MIRROR_EVENT_COMPLETED)
        c->stats = *ev->stats;
}

/* The backup and its backing files, newest first. */
static struct prop *chain_of(const char *backup)
{
    struct prop *chain = prop_new_array();
    struct blockdev *bs;
    struct err e = { 0 };
    if (chain && blk_open(backup, "qcow2", BLK_OPEN_FORCE_SHARE, cmd_open_opts(), &bs, &e) == 0) {
        for (struct blockdev *l = bs; l; l = l->backing)
            prop_add_string(chain, NULL, l->filename);
        blk_close(bs);
    }
    return chain;
}

static void print_summary(const struct mirror_params *p, const char *sync_name,
                          const struct copy_stats *st, double secs, enum output_mode mode,
                          bool remote)
{
    /* A server's bitmap is never changed: say so, as the operator might
     * expect the next incremental to start from this one. */
    bool server_bitmap = remote && p->bitmap;
    if (mode == OUTPUT_HUMAN) {
        char human[32];
        format_size_human(st->bytes_written + st->bytes_zeroed, human, sizeof(human));
        printf("%s: %s backup of %s, %s written in %.1f s", p->target, sync_name, p->source,
               human, secs);
        if (p->target_backing)
            printf(", backed by %s", p->target_backing);
        if (server_bitmap)
            printf("; the server's bitmap '%s' is left unchanged (the server manages it)",
                   p->bitmap);
        printf("\n");
        return;
    }
    struct prop *o = prop_new_object();
    prop_add_string(o, "backup", p->target);
    prop_add_string(o, "source", p->source);
    prop_add_string(o, "sync", sync_name);
    if (p->bitmap)
        prop_add_string(o, "bitmap", p->bitmap);
    if (p->checkpoint)
        prop_add_string(o, "checkpoint", p->checkpoint);
    if (server_bitmap)
        prop_add_bool(o, "server-bitmap-unchanged", true);
    cmd_add_copy_stats(o, st);
    prop_add_uint(o, "milliseconds", (uint64_t)(secs * 1000));
    struct prop *chain = chain_of(p->target);
    if (chain) {
        chain->key = strdup("chain");
        if (o->last)
            o->last->next = chain;
        else
            o->first = chain;
        o->last = chain;
    }
    json_print(stdout, o, 0);
    printf("\n");
    prop_free(o);
}

int cmd_export(const struct command *cmd, int argc, const char **argv)
{
    char *sync_s = NULL, *bitmap = NULL, *since = NULL, *checkpoint = NULL, *backing = NULL;
    char *backing_fmt = NULL, *src_fmt = NULL, *mode_s = NULL, *output = NULL, *speed_s = NULL;
    int compress = 0, progress = 0, quiet = 0, force = 0, connections = 1;
    struct export_cli c = { 0 };
    struct poptOption options[] = {
        { "sync", 's', POPT_ARG_STRING, &sync_s, 0,
          "full, incremental (since the last backup) or differential (since the last full "
          "backup)", "MODE" },
        { "bitmap", 'B', POPT_ARG_STRING, &bitmap, 0,
          "the disk's tracking bitmap (created by a full backup)", "NAME" },
        { "since", '\0', POPT_ARG_STRING, &since, 0,
          "copy what changed since this checkpoint instead of using --bitmap", "CHECKPOINT" },
        { "checkpoint", '\0', POPT_ARG_STRING, &checkpoint, 0,
          "after the backup, add a checkpoint bitmap of this name", "NAME" },
        { "backing", 'b', POPT_ARG_STRING, &backing, 0,
          "the previous backup (incremental) or the full backup (differential)", "FILE" },
        { "backing-format", 'F', POPT_ARG_STRING, &backing_fmt, 0,
          "format of the backing backup (default: probe)", "FMT" },
        { "format", 'f', POPT_ARG_STRING, &src_fmt, 0, "format of the disk (default: probe)",
          "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, OPT_O,
          "qcow2 options of the backup, e.g. cluster_size=64k,compression_type=zstd",
          "OPT=VAL,..." },
        { "compress", 'c', POPT_ARG_NONE, &compress, 0, "write compressed clusters", NULL },
        { "force", '\0', POPT_ARG_NONE, &force, 0,
          "accept a --backing that is not the backup the bitmap counts from", NULL },
        { "mode", 'm', POPT_ARG_STRING, &mode_s, 0,
          "relative-paths (default) or absolute-paths for the backing file name", "MODE" },
        { "speed", '\0', POPT_ARG_STRING, &speed_s, 0, "rate limit in bytes per second",
          "SIZE" },
        { "output", '\0', POPT_ARG_STRING, &output, 0, "a human line or a JSON summary",
          "human|json" },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        CMD_OPTION_CONNECTIONS(connections),
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 2, 2, on_option, &c);
    const struct blk_open_opts *oo;
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0 ||
        (status = cmd_parse_connections(&cl, connections, cl.args, 2, &oo)) >= 0)
        goto out;
    struct mirror_params p = {
        .source = cl.args[0], .source_format = src_fmt,
        .target = cl.args[1], .target_format = "qcow2", .target_opts = &c.opts,
        .target_mode = MIRROR_TARGET_RELATIVE_PATHS,
        .checkpoint = checkpoint, .exclusive = true, .compress = compress,
    };
    struct chain_params chain = { .checkpoint = checkpoint, .force = force };
    p.chain = &chain;
    const char *sync_name = sync_s ? sync_s : "full";
    if (!strcmp(sync_name, "full")) {
        /* The copy of the whole disk resets (or starts) the tracking. */
        p.sync = MIRROR_SYNC_FULL;
        p.bitmap = bitmap;
        p.bitmap_create = true;
        p.bitmap_mode = MIRROR_BITMAP_ON_SUCCESS;
        chain.kind = CHAIN_FULL;
        chain.bitmap = bitmap;
        chain.resyncs_bitmap = true;
        if (since || backing) {
            status = cmd_usage_error(&cl, "a full backup takes no --since or --backing");
            goto out;
        }
    } else if (!strcmp(sync_name, "incremental") || !strcmp(sync_name, "differential")) {
        bool incremental = sync_name[0] == 'i';
        if (!!bitmap == !!since) {
            status = cmd_usage_error(&cl, "--sync=%s needs --bitmap=NAME or --since=CHECKPOINT",
                                     sync_name);
            goto out;
        }
        if (!backing) {
            status = cmd_usage_error(&cl, "--sync=%s needs --backing=FILE, the %s backup",
                                     sync_name, incremental ? "previous" : "full");
            goto out;
        }
        p.sync = MIRROR_SYNC_BITMAP;
        p.bitmap = bitmap ? bitmap : since;
        /* Only an incremental backup with the tracking bitmap moves it on;
         * differential backups and checkpoints keep counting from their
         * start. */
        p.bitmap_mode = incremental && bitmap ? MIRROR_BITMAP_ON_SUCCESS : MIRROR_BITMAP_NEVER;
        chain.kind = incremental ? CHAIN_INCREMENTAL : CHAIN_DIFFERENTIAL;
        chain.bitmap = p.bitmap;
        chain.resyncs_bitmap = p.bitmap_mode == MIRROR_BITMAP_ON_SUCCESS;
        p.target_backing = backing;
        p.target_backing_format = backing_fmt;
    } else {
        status = cmd_usage_error(&cl, "--sync must be full, incremental or differential");
        goto out;
    }
    /* Pull mode: the bitmap is the server's, read and left as it is. */
    bool remote = blk_name_is_network(p.source);
    if (remote && p.sync == MIRROR_SYNC_BITMAP) {
        p.bitmap_mode = MIRROR_BITMAP_NEVER;
        chain.resyncs_bitmap = false;
    }
    if (mode_s) {
        if (!strcmp(mode_s, "absolute-paths")) {
            p.target_mode = MIRROR_TARGET_ABSOLUTE_PATHS;
        } else if (strcmp(mode_s, "relative-paths")) {
            status = cmd_usage_error(&cl, "--mode must be relative-paths or absolute-paths");
            goto out;
        }
    }
    if (speed_s) {
        uint64_t v;
        if ((status = cmd_parse_size_arg(&cl, "speed", speed_s, &v)) >= 0)
            goto out;
        p.speed = v;
    }
    if (access(p.target, F_OK) == 0) {
        cmd_error("%s: exists; a backup never overwrites an image (remove it, or choose a "
                  "new name)", p.target);
        status = EXIT_ERROR;
        goto out;
    }
    c.want_bar = progress && !quiet && mode == OUTPUT_HUMAN;
    install_cancel_handlers();
    struct mirror_set_options so = { .event = on_event, .opaque = &c,
                                     .cancel = &cancel_requested,
                                     .open_opts = oo };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int ret = mirror_run_set(&p, 1, &so, &e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (c.bar.enabled)
        fputc('\n', stderr);
    if (ret == -ECANCELED) {
        cmd_error("%s: export cancelled; no backup was written and the bitmaps are as they "
                  "were", p.target);
        status = EXIT_CANCELLED;
    } else if (ret == -EAGAIN) {
        cmd_print_err(&e);
        status = EXIT_IN_USE;
    } else if (ret < 0) {
        cmd_print_err(&e);
        status = EXIT_ERROR;
    } else {
        double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        if (!quiet || mode == OUTPUT_JSON)
            print_summary(&p, sync_name, &c.stats, secs, mode, remote);
        status = EXIT_OK;
    }
out:
    kvopts_free(&c.opts);
    cmd_done(&cl);
    return status;
}
