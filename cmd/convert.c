/* imgtool convert: copy an image into a new (or, with -n, an existing)
 * image, in any format, skipping holes and zeroes by block status, with
 * several requests in flight (and, with -c, compressed clusters written
 * from several threads).  A new target is built under a temporary name and
 * appears whole or not at all. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/signals.h"
#include "formats/blockdev-bitmaps.h"
#include "mirror/copy.h"

enum { OPT_O = 1 };

struct convert_args {
    struct kvopts opts;
    bool help;              /* -o help */
    struct err e;
};

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct convert_args *a = opaque;
    if (val == OPT_O && cmd_opts_want_help(arg))
        a->help = true;
    else if (val == OPT_O && kvopts_parse(&a->opts, arg, &a->e) < 0)
        return cmd_usage_error(cl, "-o %s: %s", arg, a->e.msg);
    return -1;
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    (void)total;
    progress_update(opaque, done);
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

int cmd_convert(const struct command *cmd, int argc, const char **argv)
{
    char *src_fmt = NULL, *dst_fmt = NULL, *cache = NULL, *src_cache = NULL;
    char *buf_size_s = NULL, *sparse_s = NULL, *rate_s = NULL, *backing = NULL;
    char *backing_fmt = NULL;
    int no_create = 0, progress = 0, quiet = 0, force_share = 0, target_is_zero = 0;
    int compress = 0, out_of_order = 0, max_in_flight = COPY_DEFAULT_IN_FLIGHT;
    int copy_bitmaps = 0, skip_broken = 0, connections = 1;
    struct convert_args a = { 0 };
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &src_fmt, 0, "source format (default: probe)",
          "FMT" },
        { "target-format", 'O', POPT_ARG_STRING, &dst_fmt, 0, "target format (default raw)",
          "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, OPT_O, "target format options", "OPT=VAL,..." },
        { "no-create", 'n', POPT_ARG_NONE, &no_create, 0,
          "write into an existing target instead of creating one", NULL },
        { "target-is-zero", '\0', POPT_ARG_NONE, &target_is_zero, 0,
          "with -n: the target already reads as zeroes, do not write zeroes", NULL },
        { "cache", 't', POPT_ARG_STRING, &cache, 0, "target cache mode (none = O_DIRECT)",
          "MODE" },
        { "source-cache", 'T', POPT_ARG_STRING, &src_cache, 0, "source cache mode", "MODE" },
        { "buf-size", '\0', POPT_ARG_STRING, &buf_size_s, 0, "bytes per request (default 2M)",
          "SIZE" },
        { "max-in-flight", 'm', POPT_ARG_INT, &max_in_flight, 0,
          "requests in flight at once (default 4)", "N" },
        { "compress", 'c', POPT_ARG_NONE, &compress, 0,
          "write compressed clusters (qcow2: -o compression_type=zlib|zstd)", NULL },
        { NULL, 'W', POPT_ARG_NONE, &out_of_order, 0,
          "write out of order (always done; accepted for qemu-img compatibility)", NULL },
        { "connections", '\0', POPT_ARG_INT, &connections, 0,
          "NBD connections per URI when the server allows several (default 1)", "N" },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "read the source even if another process is writing it", NULL },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        { "quiet", 'q', POPT_ARG_NONE, &quiet, 0, "print nothing on success", NULL },
        { "backing", 'B', POPT_ARG_STRING, &backing, 0,
          "the new target is an overlay of FILE: only what differs from it is written",
          "FILE" },
        { "backing-format", 'F', POPT_ARG_STRING, &backing_fmt, 0,
          "format of the -B file (default: probe)", "FMT" },
        { "sparse-size", 'S', POPT_ARG_STRING, &sparse_s, 0,
          "zeroes are detected (and not written) in units of SIZE (default 4k)", "SIZE" },
        { "rate-limit", 'r', POPT_ARG_STRING, &rate_s, 0, "at most RATE bytes per second",
          "RATE" },
        { "bitmaps", '\0', POPT_ARG_NONE, &copy_bitmaps, 0,
          "copy the persistent bitmaps too (qcow2 target)", NULL },
        { "skip-broken-bitmaps", '\0', POPT_ARG_NONE, &skip_broken, 0,
          "with --bitmaps: leave out inconsistent bitmaps", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct blockdev *src = NULL, *dst = NULL;
    struct err e = { 0 };
    char *tmp_path = NULL;
    const char *src_name = NULL, *dst_name = NULL;
    size_t buf_size = 0;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 0, 2, on_option, &a);
    if (status >= 0)
        goto out;
    const struct blockdrv *help_drv = blk_find_driver(dst_fmt ? dst_fmt : "raw");
    if (a.help && help_drv) {
        cmd_print_create_options(help_drv, cl.nargs == 2 ? cl.args[1] : NULL);
        status = EXIT_OK;
        goto out;
    }
    if (cl.nargs < 2) {
        status = cmd_usage_error(&cl, "missing argument (usage: imgtool %s %s)", cmd->name,
                                 cmd->usage);
        goto out;
    }
    if (buf_size_s && (status = cmd_parse_buf_size(&cl, buf_size_s, &buf_size)) >= 0)
        goto out;
    if (max_in_flight < 1 || max_in_flight > COPY_MAX_IN_FLIGHT) {
        status = cmd_usage_error(&cl, "--max-in-flight must be between 1 and %d",
                                 COPY_MAX_IN_FLIGHT);
        goto out;
    }
    if (target_is_zero && !no_create) {
        status = cmd_usage_error(&cl, "--target-is-zero needs -n (a new target is always zero)");
        goto out;
    }
    if (skip_broken && !copy_bitmaps) {
        status = cmd_usage_error(&cl, "--skip-broken-bitmaps needs --bitmaps");
        goto out;
    }
    uint64_t sparse_size = 0, rate = 0;
    if (sparse_s && (status = parse_sparse_size(&cl, sparse_s, &sparse_size)) >= 0)
        goto out;
    if (rate_s && (status = cmd_parse_size_arg(&cl, "rate limit", rate_s, &rate)) >= 0)
        goto out;
    if (backing_fmt && !backing) {
        status = cmd_usage_error(&cl, "-F needs a backing file (-B)");
        goto out;
    }
    if (backing && (no_create || compress)) {
        status = cmd_usage_error(&cl, "-B cannot be used with %s", no_create ? "-n" : "-c");
        goto out;
    }
    if (no_create && a.opts.count) {
        status = cmd_usage_error(&cl, "-o cannot be used with -n (the target exists)");
        goto out;
    }
    if (connections < 1 || connections > 16) {
        status = cmd_usage_error(&cl, "--connections must be from 1 to 16");
        goto out;
    }
    const struct blk_open_opts *oo = cmd_open_opts_connections((unsigned)connections);
    src_name = cl.args[0];
    dst_name = cl.args[1];
    int ret;
    unsigned sflags = cmd_open_flags(false, force_share, src_cache, &e, &ret);
    status = EXIT_ERROR;
    if (ret < 0 || blk_open(src_name, src_fmt, sflags, oo, &src, &e) < 0)
        goto fail;
    if (copy_bitmaps && blk_bitmaps_check_copy(src, skip_broken, &e) < 0)
        goto fail;

    unsigned dflags = cmd_open_flags(true, false, cache, &e, &ret);
    if (ret < 0)
        goto fail;
    const char *open_name = dst_name;
    const struct blockdrv *new_drv = blk_find_driver(dst_fmt ? dst_fmt : "raw");
    /* Refuse -c before creating anything (an existing target is checked by
     * the copy itself). */
    if (compress && !no_create && new_drv && blk_check_compression(new_drv, dst_name, &e) < 0)
        goto fail;
    if (copy_bitmaps && !no_create && new_drv && !blk_driver_has_bitmaps(new_drv)) {
        err_set(&e, ENOTSUP, "%s: format '%s' does not support persistent bitmaps", dst_name,
                new_drv->name);
        goto fail;
    }
    /* -o backing_file=...,backing_fmt=... as in qemu-img convert -B: the new
     * target is backed by that image, and only what the source's top layer
     * allocates is copied (the rest is expected to read the same through
     * the target's backing file); zeroes are written, not skipped. */
    const char *o_backing = kvopts_get(&a.opts, "backing_file");
    const char *o_backing_fmt = kvopts_get(&a.opts, "backing_fmt");
    if (o_backing_fmt && !o_backing) {
        err_set(&e, EINVAL, "%s: -o backing_fmt needs -o backing_file", dst_name);
        goto fail;
    }
    if (!no_create) {
        struct blk_create_params p = {
            .filename = dst_name, .size = src->size, .opts = &a.opts,
            .backing_file = backing ? backing : o_backing,
            .backing_format = backing ? backing_fmt : o_backing_fmt,
            .open_opts = cmd_open_opts(),
        };
        if (blk_create_begin(dst_fmt ? dst_fmt : "raw", &p, &tmp_path, &e) < 0)
            goto fail;
        open_name = tmp_path;
    }
    if (blk_open(open_name, no_create ? dst_fmt : (dst_fmt ? dst_fmt : "raw"), dflags, oo, &dst,
                 &e) < 0)
        goto fail;
    if (blk_check_distinct(dst, src, &e) < 0)
        goto fail;
    if (tmp_path)
        blk_defer_flushes(dst, true);   /* nobody sees it until the rename */
    if (dst->size < src->size) {
        err_set(&e, EINVAL, "%s: target is smaller (%" PRIu64 " bytes) than the source "
                "(%" PRIu64 " bytes); resize it first", dst_name, dst->size, src->size);
        goto fail;
    }
    struct progress bar;
    progress_init(&bar, progress && !quiet, src->size);
    install_cancel_handlers();
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 0, .length = src->size,
        /* With -B the new target reads as its backing file: what the
         * source holds the same is not written (the rebase comparison).
         * With -o backing_file only the source's top layer is copied. */
        .base = !backing && o_backing ? src->backing : NULL,
        .target_is_zero = !backing && ((!no_create && !o_backing) || target_is_zero),
        .skip_identical = backing != NULL,
        .zero_detect = (uint32_t)sparse_size,
        .write_zeroes_as_data = sparse_s && sparse_size == 0,
        .speed = rate,
        .buf_size = (size_t)buf_size,
        .max_in_flight = (unsigned)max_in_flight,
        .compress = compress,
        .progress = on_progress, .opaque = &bar,
        .cancel = &cancel_requested,
    };
    ret = copy_run(&job, &e);
    progress_finish(&bar);
    blk_defer_flushes(dst, false);
    if (ret == 0)
        ret = blk_flush(dst, &e);
    /* After the data, so that copying it does not dirty them. */
    if (ret == 0 && copy_bitmaps && (ret = blk_bitmaps_copy(dst, src, skip_broken, &e)) == 0)
        ret = blk_bitmaps_release(dst, &e);
    if (ret < 0) {
        if (ret == -ECANCELED) {
            status = EXIT_CANCELLED;
            err_set(&e, ECANCELED, "%s: convert cancelled%s", dst_name,
                    no_create ? "; the target holds a partial copy" : "; no image was created");
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
    blk_close(src);
    kvopts_free(&a.opts);
    cmd_done(&cl);
    return status;
}
