/* imgtool dd: qemu-img dd, a block copy of part of an image into a new
 * one: dd-style operands (if= of= bs= count= skip=), the new image fully
 * allocated as qemu-img dd writes it.  The copy is the copy engine's, the
 * source read from skip * bs on (copy_job.src_shift); the new image
 * appears whole or not at all. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/signals.h"
#include "mirror/copy.h"

/* The operands, as qemu-img dd takes them (a later one wins). */
struct dd_operands {
    const char *in, *out;
    uint64_t bs, count, skip;
    bool has_count, has_skip;
};

/* bs=, count=, skip=: sizes with qemu-img's suffixes; -1 to go on. */
static int parse_number(struct cmdline *cl, const char *what, const char *s, uint64_t *out)
{
    if (parse_size(s, out) < 0 || *out > INT64_MAX)
        return cmd_usage_error(cl, "Invalid %s specified. You may use k, M, G, T, P or E "
                               "suffixes for kilobytes, megabytes, gigabytes, terabytes, "
                               "petabytes and exabytes.", what);
    return -1;
}

static int parse_operand(struct cmdline *cl, const char *arg, struct dd_operands *o)
{
    const char *eq = strchr(arg, '='), *v = eq ? eq + 1 : NULL;
    size_t klen = eq ? (size_t)(eq - arg) : 0;
    int status = -1;
    if (eq && klen == 2 && !strncmp(arg, "if", 2)) {
        o->in = v;
    } else if (eq && klen == 2 && !strncmp(arg, "of", 2)) {
        o->out = v;
    } else if (eq && klen == 2 && !strncmp(arg, "bs", 2)) {
        if ((status = parse_number(cl, "bs", v, &o->bs)) < 0 && (o->bs < 1 || o->bs > INT32_MAX))
            status = cmd_usage_error(cl, "Invalid bs specified. Must be between 1 and %d.",
                                     INT32_MAX);
    } else if (eq && klen == 5 && !strncmp(arg, "count", 5)) {
        status = parse_number(cl, "count", v, &o->count);
        o->has_count = true;
    } else if (eq && klen == 4 && !strncmp(arg, "skip", 4)) {
        status = parse_number(cl, "skip", v, &o->skip);
        o->has_skip = true;
    } else {
        status = cmd_usage_error(cl, "unrecognized operand %.*s", (int)(eq ? klen : strlen(arg)),
                                 arg);
    }
    return status;
}

/* qemu-img dd's sizes: the copy ends at count * bs (or the end of the
 * input) counted from the start of the input, and begins at skip * bs. */
static int output_size(const struct dd_operands *o, uint64_t in_size, uint64_t *out,
                       struct err *e)
{
    uint64_t end = in_size;
    if (o->has_count && o->count <= UINT64_MAX / o->bs && o->count * o->bs < end)
        end = o->count * o->bs;
    uint64_t start = o->has_skip && o->skip <= UINT64_MAX / o->bs ? o->skip * o->bs : 0;
    if (o->has_skip && (o->skip > UINT64_MAX / o->bs || start > end))
        return err_set(e, EINVAL, "%s: cannot skip to specified offset", o->in);
    *out = end - start;
    return 0;
}

static int dd_copy(struct blockdev *src, struct blockdev *dst, uint64_t start, uint64_t len,
                   struct err *e)
{
    install_cancel_handlers();
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 0, .length = len,
        .src_shift = (int64_t)start,
        .write_zeroes_as_data = true,   /* qemu-img dd writes every block */
        .cancel = &cancel_requested,
    };
    int ret = copy_run(&job, e);
    blk_defer_flushes(dst, false);
    return ret < 0 ? ret : blk_flush(dst, e);
}

int cmd_dd(const struct command *cmd, int argc, const char **argv)
{
    char *src_fmt = NULL, *dst_fmt = NULL;
    int force_share = 0;
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &src_fmt, 0, "input format (default: probe)", "FMT" },
        { "target-format", 'O', POPT_ARG_STRING, &dst_fmt, 0, "output format (default raw)",
          "FMT" },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "read the input even if another process is writing it", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct dd_operands o = { .bs = 512 };
    struct blockdev *src = NULL, *dst = NULL;
    struct err e = { 0 };
    struct kvopts no_opts = { 0 };
    char *tmp_path = NULL;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 0, -1, NULL, NULL);
    for (int i = 0; status < 0 && i < cl.nargs; i++)
        status = parse_operand(&cl, cl.args[i], &o);
    if (status < 0 && (!o.in || !o.out))
        status = cmd_usage_error(&cl, "Must specify both input and output files");
    if (status >= 0)
        goto out;
    status = EXIT_ERROR;
    int ret, dret;
    unsigned sflags = cmd_open_flags(false, force_share, NULL, &e, &ret);
    unsigned dflags = cmd_open_flags(true, false, NULL, &e, &dret);
    uint64_t size = 0;
    if (ret < 0 || dret < 0 || blk_open(o.in, src_fmt, sflags, cmd_open_opts(), &src, &e) < 0 ||
        output_size(&o, src->size, &size, &e) < 0)
        goto fail;
    struct blk_create_params p = {
        .filename = o.out, .size = size, .opts = &no_opts, .open_opts = cmd_open_opts(),
    };
    const char *fmt = dst_fmt ? dst_fmt : "raw";
    if (blk_create_begin(fmt, &p, &tmp_path, &e) < 0 ||
        blk_open(tmp_path, fmt, dflags, cmd_open_opts(), &dst, &e) < 0)
        goto fail;
    blk_defer_flushes(dst, true);       /* nobody sees it until the rename */
    ret = dd_copy(src, dst, o.has_skip ? o.skip * o.bs : 0, size, &e);
    blk_close(dst);
    dst = NULL;
    if (ret == -ECANCELED)
        status = EXIT_CANCELLED;
    if (ret < 0)
        goto fail;
    ret = blk_create_commit(tmp_path, o.out, &e);
    free(tmp_path);
    tmp_path = NULL;        /* committed, or removed by the failed commit */
    if (ret < 0)
        goto fail;
    status = EXIT_OK;
    goto out;
fail:
    if (tmp_path)
        err_replace(&e, tmp_path, o.out);
    cmd_print_err(&e);
out:
    blk_close(dst);
    if (tmp_path) {
        blk_create_abort(tmp_path, o.out);
        free(tmp_path);
    }
    blk_close(src);
    kvopts_free(&no_opts);
    cmd_done(&cl);
    return status;
}
