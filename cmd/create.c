/* imgtool create: make a new, empty image. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cmd/commands.h"

struct create_args {
    struct kvopts opts;
    struct err e;
};

enum { OPT_O = 1 };

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct create_args *a = opaque;
    if (val == OPT_O && kvopts_parse(&a->opts, arg, &a->e) < 0)
        return cmd_usage_error(cl, "-o %s: %s", arg, a->e.msg);
    return -1;
}

int cmd_create(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *backing_arg = NULL, *backing_fmt_arg = NULL;
    int quiet = 0;
    struct create_args a = { 0 };
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &format, 0, "image format (default raw)", "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, OPT_O,
          "format options, e.g. cluster_size=64k,compression_type=zstd", "OPT=VAL,..." },
        { "backing", 'b', POPT_ARG_STRING, &backing_arg, 0, "backing file", "FILE" },
        { "backing-format", 'F', POPT_ARG_STRING, &backing_fmt_arg, 0, "backing file format (required with -b)",
          "FMT" },
        { "quiet", 'q', POPT_ARG_NONE, &quiet, 0, "print nothing on success", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 2, on_option, &a);
    if (status >= 0)
        goto out;

    const char *fmt = format ? format : "raw";
    /* -b/-F are shortcuts for -o backing_file/backing_fmt, as in qemu-img. */
    const char *o_backing = kvopts_get(&a.opts, "backing_file");
    const char *o_backing_fmt = kvopts_get(&a.opts, "backing_fmt");
    const char *backing = backing_arg ? backing_arg : o_backing;
    const char *backing_fmt = backing_fmt_arg ? backing_fmt_arg : o_backing_fmt;
    if (backing_fmt && !backing) {
        status = cmd_usage_error(&cl, "-F needs a backing file (-b)");
        goto out;
    }
    struct blk_create_params p = {
        .filename = cl.args[0],
        .size = BLK_SIZE_FROM_BACKING,
        .opts = &a.opts,
        .backing_file = backing && backing[0] ? backing : NULL,
        .backing_format = backing_fmt,
        .open_opts = cmd_open_opts(),
    };
    const char *size_opt = kvopts_get(&a.opts, "size");
    const char *size_arg = cl.nargs > 1 ? cl.args[1] : size_opt;
    if (size_arg && (status = cmd_parse_size_arg(&cl, "size", size_arg, &p.size)) >= 0)
        goto out;
    if (!size_arg && !p.backing_file) {
        status = cmd_usage_error(&cl, "%s: give the image size (e.g. 10G) or a backing file",
                                 p.filename);
        goto out;
    }
    /* -b without -F is refused by blk_create, before anything is formatted
     * (qemu-img prints no "Formatting" line then either). */
    if (!quiet && (!p.backing_file || p.backing_format)) {
        printf("Formatting '%s', fmt=%s", p.filename, fmt);
        for (size_t i = 0; i < a.opts.count; i++)
            if (strcmp(a.opts.items[i].key, "size"))
                printf(" %s=%s", a.opts.items[i].key, a.opts.items[i].value);
        if (p.size != BLK_SIZE_FROM_BACKING)
            printf(" size=%" PRIu64, p.size);
        if (p.backing_file && !o_backing)
            printf(" backing_file=%s", p.backing_file);
        if (p.backing_format && !o_backing_fmt)
            printf(" backing_fmt=%s", p.backing_format);
        printf("\n");
        fflush(stdout);
    }
    if (blk_create(fmt, &p, &a.e) < 0) {
        cmd_print_err(&a.e);
        status = EXIT_ERROR;
        goto out;
    }
    status = EXIT_OK;
out:
    kvopts_free(&a.opts);
    cmd_done(&cl);
    return status;
}
