/* imgtool convert: copy an image (or several, one after the other) into a
 * new (or, with -n, an existing) image, in any format, skipping holes and
 * zeroes by block status, with several requests in flight (and, with -c,
 * compressed clusters written from several threads).  A new target is
 * built under a temporary name and appears whole or not at all. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/signals.h"
#include "formats/blockdev-bitmaps.h"
#include "mirror/copy.h"

/* What the copy callbacks need: the bar, and where the source being
 * copied starts in the target (sources are copied one after the other). */
struct convert_progress {
    struct progress bar;
    uint64_t base;
};

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    (void)total;
    struct convert_progress *cp = opaque;
    progress_update(&cp->bar, cp->base + done);
}

/* --salvage: qemu-img's warning for each sector read as zeroes. */
static void on_salvaged(void *opaque, uint64_t src_offset, const struct err *e)
{
    (void)opaque;
    cmd_warn("error while reading offset %" PRIu64 ": %s", src_offset,
             strerror(e->code ? e->code : EIO));
}

/* -S: qemu-img's sparse detection unit, a multiple of 512 up to 16 MiB;
 * 0: no detection, a fully allocated target. */
static int parse_sparse_size(struct cmdline *cl, const char *s, uint64_t *out)
{
    int status = cmd_parse_size_arg(cl, "sparse size", s, out);
    if (status >= 0)
        return status;
    if (*out % 512 || *out > (16u << 20))
        return cmd_usage_error(cl, "Invalid buffer size for sparse output specified. Valid "
                               "sizes are multiples of 512 up to 16777216. Select 0 to "
                               "disable sparse detection (fully allocates output).");
    return -1;
}

/* The command line, parsed. */
struct convert {
    char *src_fmt, *dst_fmt, *cache, *src_cache, *buf_size_s, *sparse_s, *rate_s;
    char *backing, *backing_fmt;
    struct cmd_snapshot_arg snapshot;       /* -l */
    int no_create, progress, quiet, force_share, target_is_zero, compress, out_of_order;
    int max_in_flight, copy_bitmaps, skip_broken, connections, salvage, copy_offload;
    struct cmd_format_opts a;
    size_t buf_size;
    uint64_t sparse_size, rate;
    const char *o_backing, *o_backing_fmt;  /* -o backing_file, backing_fmt */
    size_t nsrcs;                           /* the arguments but the last */
};

/* Refuse what qemu-img refuses, with its words where it has them; returns
 * an exit status, or -1 to go on. */
static int check_options(struct cmdline *cl, struct convert *c)
{
    int status;
    if (c->buf_size_s && (status = cmd_parse_buf_size(cl, c->buf_size_s, &c->buf_size)) >= 0)
        return status;
    /* -1: not given, the copy engine's default (copy.h) */
    if (c->max_in_flight != -1 &&
        (c->max_in_flight < 1 || c->max_in_flight > COPY_MAX_IN_FLIGHT))
        return cmd_usage_error(cl, "--max-in-flight must be between 1 and %d",
                               COPY_MAX_IN_FLIGHT);
    if (c->target_is_zero && !c->no_create)
        return cmd_usage_error(cl, "--target-is-zero needs -n (a new target is always zero)");
    if (c->skip_broken && !c->copy_bitmaps)
        return cmd_usage_error(cl, "--skip-broken-bitmaps needs --bitmaps");
    if (c->sparse_s && (status = parse_sparse_size(cl, c->sparse_s, &c->sparse_size)) >= 0)
        return status;
    if (c->rate_s && (status = cmd_parse_size_arg(cl, "rate limit", c->rate_s, &c->rate)) >= 0)
        return status;
    if (c->backing_fmt && !c->backing)
        return cmd_usage_error(cl, "-F needs a backing file (-B)");
    if (c->backing && (c->no_create || c->compress))
        return cmd_usage_error(cl, "-B cannot be used with %s", c->no_create ? "-n" : "-c");
    if (c->no_create && c->a.opts.count)
        return cmd_usage_error(cl, "-o cannot be used with -n (the target exists)");
    if (c->copy_offload && c->compress)
        return cmd_usage_error(cl, "Cannot enable copy offloading when -c is used");
    if (c->copy_offload && c->sparse_s)
        return cmd_usage_error(cl, "Cannot enable copy offloading when -S is used");
    if (c->copy_offload && c->salvage)
        return cmd_usage_error(cl, "Cannot use copy offloading in salvaging mode");
    c->o_backing = kvopts_get(&c->a.opts, "backing_file");
    c->o_backing_fmt = kvopts_get(&c->a.opts, "backing_fmt");
    if (c->nsrcs > 1 && c->copy_bitmaps)
        return cmd_usage_error(cl, "Copying bitmaps only possible with single source");
    if (c->nsrcs > 1 && c->snapshot.arg)
        return cmd_usage_error(cl, "No support for concatenating multiple snapshot");
    if ((status = cmd_parse_snapshot_arg(cl, &c->snapshot, &c->a.e)) >= 0)
        return status;
    if (c->nsrcs > 1 && (c->backing || c->o_backing))
        return cmd_usage_error(cl, "Having a backing file for the target makes no sense when "
                               "concatenating multiple input images");
    return -1;
}

/* Open the sources (all but the last argument), the first with -l's
 * snapshot loaded; *total is the sum of their sizes. */
static int open_sources(struct convert *c, const char *const *names,
                        const struct blk_open_opts *oo, struct blockdev **srcs,
                        uint64_t *total, struct err *e)
{
    int ret;
    unsigned flags = cmd_open_flags(false, c->force_share, c->src_cache, e, &ret);
    if (ret < 0)
        return ret;
    *total = 0;
    for (size_t i = 0; i < c->nsrcs; i++) {
        if ((ret = blk_open(names[i], c->src_fmt, flags, oo, &srcs[i], e)) < 0)
            return ret;
        if ((ret = cmd_load_snapshot(&c->snapshot, srcs[i], e)) < 0)
            return ret;
        if (srcs[i]->size > UINT64_MAX - *total)
            return err_set(e, EFBIG, "%s: the sources add up to more than 16 EiB", names[i]);
        *total += srcs[i]->size;
    }
    if (c->copy_bitmaps)
        return blk_bitmaps_check_copy(srcs[0], c->skip_broken, e);
    return 0;
}

/* Create the new target (under *tmp_path, renamed at the end) or, with -n,
 * open the existing one. */
static int open_target(const struct convert *c, const char *dst_name, struct blockdev *src,
                       uint64_t size, const struct blk_open_opts *oo, char **tmp_path,
                       struct blockdev **dst, struct err *e)
{
    int ret;
    unsigned dflags = cmd_open_flags(true, false, c->cache, e, &ret) | BLK_OPEN_DROP_BEHIND;
    if (ret < 0)
        return ret;
    const char *fmt = c->dst_fmt ? c->dst_fmt : "raw";
    const struct blockdrv *new_drv = blk_find_driver(fmt);
    /* Refuse -c before creating anything (an existing target is checked by
     * the copy itself). */
    if (c->compress && !c->no_create && new_drv &&
        (ret = blk_check_compression(new_drv, dst_name, e)) < 0)
        return ret;
    if (c->copy_bitmaps && !c->no_create && new_drv && !blk_driver_has_bitmaps(new_drv))
        return err_set(e, ENOTSUP, "%s: format '%s' does not support persistent bitmaps",
                       dst_name, new_drv->name);
    if (c->o_backing_fmt && !c->o_backing)
        return err_set(e, EINVAL, "%s: -o backing_fmt needs -o backing_file", dst_name);
    const char *open_name = dst_name;
    if (!c->no_create) {
        struct blk_create_params p = {
            .filename = dst_name, .size = size, .opts = (struct kvopts *)&c->a.opts,
            .backing_file = c->backing ? c->backing : c->o_backing,
            .backing_format = c->backing ? c->backing_fmt : c->o_backing_fmt,
            .open_opts = cmd_open_opts(),
        };
        if ((ret = blk_create_begin(fmt, &p, tmp_path, e)) < 0)
            return ret;
        open_name = *tmp_path;
    }
    if ((ret = blk_open(open_name, c->no_create ? c->dst_fmt : fmt, dflags, oo, dst, e)) < 0 ||
        (ret = blk_check_distinct(*dst, src, e)) < 0)
        return ret;
    if (*tmp_path)
        blk_defer_flushes(*dst, true);  /* nobody sees it until the rename */
    if ((*dst)->size < size)
        return err_set(e, EINVAL, "%s: target is smaller (%" PRIu64 " bytes) than the source "
                       "(%" PRIu64 " bytes); resize it first", dst_name, (*dst)->size, size);
    return 0;
}

/* Copy the sources one after the other into dst, then flush it (and copy
 * the bitmaps, after the data so that copying does not dirty them). */
static int copy_sources(const struct convert *c, struct blockdev **srcs, struct blockdev *dst,
                        uint64_t total, struct err *e)
{
    struct convert_progress cp = { .base = 0 };
    progress_init(&cp.bar, c->progress && !c->quiet, total);
    install_cancel_handlers();
    int ret = 0;
    /* An existing target without a backing file is zeroed first where
     * that is fast (an NBD server's NBD_CMD_FLAG_FAST_ZERO), so that the
     * copy skips the source's zero runs instead of zeroing (and checking)
     * the target run by run; a server that would be slow says so, and the
     * copy writes the zero runs itself. */
    bool zeroed = false;
    if (c->no_create && !c->target_is_zero && !dst->backing && !c->o_backing &&
        blk_can_zero_fast(dst)) {
        ret = blk_make_zero(dst, 0, total, BLK_ZERO_MAY_UNMAP | BLK_ZERO_FAST, e);
        if (ret < 0 && ret != -ENOTSUP)
            return ret;
        err_clear(e);
        zeroed = ret == 0;
        ret = 0;
    }
    for (size_t i = 0; i < c->nsrcs && ret == 0; i++) {
        struct copy_job job = {
            .src = srcs[i], .dst = dst, .offset = cp.base, .length = srcs[i]->size,
            .src_shift = -(int64_t)cp.base,
            /* With -B the new target reads as its backing file: what the
             * source holds the same is not written (the rebase comparison).
             * With -o backing_file only the source's top layer is copied. */
            .base = !c->backing && c->o_backing ? srcs[i]->backing : NULL,
            /* ... or, from an NBD export of a chain, what its top layer
             * allocates (qemu:allocation-depth). */
            .top_layer_only = !c->backing && c->o_backing && !srcs[i]->backing,
            .target_is_zero = !c->backing && ((!c->no_create && !c->o_backing) ||
                                              c->target_is_zero || zeroed),
            .skip_identical = c->backing != NULL,
            .zero_detect = (uint32_t)c->sparse_size,
            .write_zeroes_as_data = c->sparse_s && c->sparse_size == 0,
            .speed = c->rate,
            .buf_size = c->buf_size,
            .max_in_flight = c->max_in_flight > 0 ? (unsigned)c->max_in_flight : 0,
            .compress = c->compress,
            .salvage = c->salvage, .salvaged = on_salvaged,
            /* -B compares what it writes: nothing to offload. */
            .copy_offload = c->copy_offload && !c->backing,
            .progress = on_progress, .opaque = &cp,
            .cancel = &cancel_requested,
        };
        ret = copy_run(&job, e);
        cp.base += srcs[i]->size;
    }
    progress_finish(&cp.bar);
    blk_defer_flushes(dst, false);
    if (ret == 0)
        ret = blk_flush(dst, e);
    if (ret == 0 && c->copy_bitmaps && (ret = blk_bitmaps_copy(dst, srcs[0], c->skip_broken,
                                                                 e)) == 0)
        ret = blk_bitmaps_release(dst, e);
    return ret;
}

int cmd_convert(const struct command *cmd, int argc, const char **argv)
{
    struct convert c = { .max_in_flight = -1, .connections = 1 };
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &c.src_fmt, 0, "source format (default: probe)",
          "FMT" },
        { "target-format", 'O', POPT_ARG_STRING, &c.dst_fmt, 0, "target format (default raw)",
          "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, CMD_OPT_O, "target format options", "OPT=VAL,..." },
        { "no-create", 'n', POPT_ARG_NONE, &c.no_create, 0,
          "write into an existing target instead of creating one", NULL },
        { "target-is-zero", '\0', POPT_ARG_NONE, &c.target_is_zero, 0,
          "with -n: the target already reads as zeroes, do not write zeroes", NULL },
        { "cache", 't', POPT_ARG_STRING, &c.cache, 0, "target cache mode (none = O_DIRECT)",
          "MODE" },
        { "source-cache", 'T', POPT_ARG_STRING, &c.src_cache, 0, "source cache mode", "MODE" },
        { "buf-size", '\0', POPT_ARG_STRING, &c.buf_size_s, 0,
          "bytes per request (default 2M, 512k with an NBD export)", "SIZE" },
        { "max-in-flight", 'm', POPT_ARG_INT, &c.max_in_flight, 0,
          "requests in flight at once (default 4, 16 with an NBD export)", "N" },
        { "compress", 'c', POPT_ARG_NONE, &c.compress, 0,
          "write compressed clusters (qcow2: -o compression_type=zlib|zstd)", NULL },
        { NULL, 'W', POPT_ARG_NONE, &c.out_of_order, 0,
          "write out of order (always done; accepted for qemu-img compatibility)", NULL },
        CMD_OPTION_CONNECTIONS(c.connections),
        { "force-share", 'U', POPT_ARG_NONE, &c.force_share, 0,
          "read the source even if another process is writing it", NULL },
        { "progress", 'p', POPT_ARG_NONE, &c.progress, 0, "show a progress bar on a terminal",
          NULL },
        CMD_OPTION_QUIET(c.quiet),
        { "backing", 'B', POPT_ARG_STRING, &c.backing, 0,
          "the new target is an overlay of FILE: only what differs from it is written",
          "FILE" },
        { "backing-format", 'F', POPT_ARG_STRING, &c.backing_fmt, 0,
          "format of the -B file (default: probe)", "FMT" },
        { "sparse-size", 'S', POPT_ARG_STRING, &c.sparse_s, 0,
          "zeroes are detected (and not written) in units of SIZE (default 4k; 0: none)",
          "SIZE" },
        { "rate-limit", 'r', POPT_ARG_STRING, &c.rate_s, 0, "at most RATE bytes per second",
          "RATE" },
        { NULL, 'l', POPT_ARG_STRING, &c.snapshot.arg, 0,
          "read the source as its internal snapshot recorded it (SNAPSHOT: "
          "snapshot.id=ID,snapshot.name=NAME, or ID_OR_NAME)", "SNAPSHOT" },
        { NULL, 'C', POPT_ARG_NONE, &c.copy_offload, 0,
          "copy offloading: data goes from file to file in the kernel (copy_file_range)",
          NULL },
        { "salvage", '\0', POPT_ARG_NONE, &c.salvage, 0,
          "on a read error, write zeroes for that range, warn and go on", NULL },
        { "bitmaps", '\0', POPT_ARG_NONE, &c.copy_bitmaps, 0,
          "copy the persistent bitmaps too (qcow2 target)", NULL },
        { "skip-broken-bitmaps", '\0', POPT_ARG_NONE, &c.skip_broken, 0,
          "with --bitmaps: leave out inconsistent bitmaps", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct blockdev **srcs = NULL, *dst = NULL;
    struct err e = { 0 };
    char *tmp_path = NULL;
    const char *dst_name = NULL;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 0, -1, cmd_on_format_option, &c.a);
    if (status >= 0)
        goto out;
    const struct blockdrv *help_drv = blk_find_driver(c.dst_fmt ? c.dst_fmt : "raw");
    if (c.a.help && help_drv) {
        cmd_print_create_options(help_drv, cl.nargs >= 2 ? cl.args[cl.nargs - 1] : NULL);
        status = EXIT_OK;
        goto out;
    }
    if (cl.nargs < 2) {
        status = cmd_usage_error(&cl, "missing argument (usage: imgtool %s %s)", cmd->name,
                                 cmd->usage);
        goto out;
    }
    c.nsrcs = (size_t)cl.nargs - 1;
    if ((status = check_options(&cl, &c)) >= 0)
        goto out;
    const struct blk_open_opts *oo;
    if ((status = cmd_parse_connections(&cl, c.connections, cl.args, cl.nargs, &oo)) >= 0)
        goto out;
    dst_name = cl.args[c.nsrcs];
    status = EXIT_ERROR;
    uint64_t total;
    if (!(srcs = calloc(c.nsrcs, sizeof(*srcs)))) {
        err_set(&e, ENOMEM, "out of memory");
        goto fail;
    }
    if (open_sources(&c, cl.args, oo, srcs, &total, &e) < 0 ||
        open_target(&c, dst_name, srcs[0], total, oo, &tmp_path, &dst, &e) < 0)
        goto fail;
    for (size_t i = 1; i < c.nsrcs; i++)
        if (blk_check_distinct(dst, srcs[i], &e) < 0)
            goto fail;
    int ret = copy_sources(&c, srcs, dst, total, &e);
    if (ret < 0) {
        if (ret == -ECANCELED) {
            status = EXIT_CANCELLED;
            err_set(&e, ECANCELED, "%s: convert cancelled%s", dst_name,
                    c.no_create ? "; the target holds a partial copy" : "; no image was created");
        }
        goto fail;
    }
    blk_close(dst);
    dst = NULL;
    if (tmp_path && blk_create_commit(tmp_path, dst_name, &e) < 0) {
        free(tmp_path);
        tmp_path = NULL;
        goto fail;
    }
    free(tmp_path);
    tmp_path = NULL;
    status = EXIT_OK;
    goto out;
fail:
    /* The new image is the user's target, whatever its name meanwhile. */
    if (tmp_path)
        err_replace(&e, tmp_path, dst_name);
    cmd_print_err(&e);
out:
    blk_close(dst);
    if (tmp_path) {
        blk_create_abort(tmp_path, dst_name);
        free(tmp_path);
    }
    for (size_t i = 0; srcs && i < c.nsrcs; i++)
        blk_close(srcs[i]);
    free(srcs);
    kvopts_free(&c.a.opts);
    kvopts_free(&c.snapshot.kv);
    cmd_done(&cl);
    return status;
}
