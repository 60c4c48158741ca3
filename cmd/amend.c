/* imgtool amend: change the format options of an existing image in place
 * (qemu-img amend): qcow2 compat, refcount_bits, lazy_refcounts, size,
 * backing_file / backing_fmt. */
#include <errno.h>
#include <string.h>

#include "cmd/commands.h"

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress *bar = opaque;
    bar->total = total;
    progress_update(bar, done);
}

/* -o help: the format's amend options ("Amend options for 'qcow2':"). */
static int print_help(const char *format, const char *filename, struct err *e)
{
    const struct blockdrv *drv = format ? blk_find_driver(format) : NULL;
    struct blockdev *bs = NULL;
    if (!drv && !format) {
        if (!filename) {
            err_set(e, EINVAL, "-o help needs -f FMT or an image");
            return EXIT_ERROR;
        }
        if (blk_open(filename, NULL, BLK_OPEN_NO_BACKING | BLK_OPEN_FORCE_SHARE, cmd_open_opts(), &bs, e) < 0)
            return EXIT_ERROR;
        drv = bs->drv;
    }
    int status = EXIT_OK;
    if (!drv) {
        err_set(e, EINVAL, "unknown format '%s'", format);
        status = EXIT_ERROR;
    } else if (!drv->amend) {
        err_set(e, ENOTSUP, "Format driver '%s' does not support option amendment", drv->name);
        status = EXIT_ERROR;
    } else {
        char caption[64];
        snprintf(caption, sizeof(caption), "Amend options for '%s':", drv->name);
        cmd_print_option_help(caption, drv->amend_options);
    }
    blk_close(bs);
    return status;
}

int cmd_amend(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL;
    int quiet = 0, progress = 0;
    struct cmd_format_opts a = { 0 };
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        { "options", 'o', POPT_ARG_STRING, NULL, CMD_OPT_O,
          "options to change, e.g. compat=1.1,refcount_bits=16 (-o help lists them)",
          "OPT=VAL,..." },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct blockdev *bs = NULL;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 0, 1, cmd_on_format_option, &a);
    if (status >= 0)
        goto out;
    if (a.help) {
        if ((status = print_help(format, cl.nargs ? cl.args[0] : NULL, &a.e)) != EXIT_OK)
            cmd_print_err(&a.e);
        goto out;
    }
    if (!a.opts.count) {
        status = cmd_usage_error(&cl, "Must specify options (-o)");
        goto out;
    }
    if (!cl.nargs) {
        status = cmd_usage_error(&cl, "Expecting one image file name");
        goto out;
    }
    status = EXIT_ERROR;
    struct progress bar;
    progress_init(&bar, progress && !quiet, 1);
    struct blk_progress cb = { on_progress, &bar };
    int ret = blk_open(cl.args[0], format, BLK_OPEN_RDWR | BLK_OPEN_NO_BACKING, cmd_open_opts(),
                       &bs, &a.e);
    if (ret == 0)
        ret = blk_amend(bs, &a.opts, &cb, &a.e);
    if (ret == 0)
        ret = blk_flush(bs, &a.e);
    progress_finish(&bar);
    if (ret < 0) {
        cmd_print_err(&a.e);
        goto out;
    }
    status = EXIT_OK;
out:
    blk_close(bs);
    kvopts_free(&a.opts);
    cmd_done(&cl);
    return status;
}
