/* imgtool create: make a new, empty image. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"

/* The value of option `o` as qemu-img prints it: sizes and numbers as
 * bytes, commas in strings doubled (the -o escaping). */
static void print_option_value(const struct blk_option_desc *o, const char *v)
{
    uint64_t n;
    bool string = !strcmp(o->type, "str");
    if ((!strcmp(o->type, "size") || !strcmp(o->type, "num")) && parse_size(v, &n) == 0) {
        printf("%" PRIu64, n);
        return;
    }
    for (; string && *v; v++) {
        if (*v == ',')
            putchar(',');
        putchar(*v);
    }
    if (!string)
        fputs(v, stdout);
}

/* qemu-img's "Formatting 'FILE', fmt=FMT opt=value ..." line: every option
 * of the format that was given or has a default, in the format's order. */
static void print_formatting(const struct blockdrv *drv, const struct blk_create_params *p,
                             struct kvopts *opts)
{
    printf("Formatting '%s', fmt=%s ", p->filename, drv->name);
    const char *sep = "";
    for (const struct blk_option_desc *o = drv->create_options; o && o->name; o++) {
        char size[32];
        const char *v = kvopts_get(opts, o->name);
        if (!strcmp(o->name, "size")) {
            snprintf(size, sizeof(size), "%" PRIu64, p->size);
            v = size;
        } else if (!strcmp(o->name, "backing_file") && p->backing_file) {
            v = p->backing_file;
        } else if (!strcmp(o->name, "backing_fmt") && p->backing_format) {
            v = p->backing_format;
        }
        if (!v)
            v = o->default_value;
        if (!v)
            continue;
        printf("%s%s=", sep, o->name);
        print_option_value(o, v);
        sep = " ";
    }
    printf("\n");
    fflush(stdout);
}

int cmd_create(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *backing_arg = NULL, *backing_fmt_arg = NULL;
    int quiet = 0, unsafe = 0;
    struct cmd_format_opts a = { 0 };
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &format, 0, "image format (default raw)", "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, CMD_OPT_O,
          "format options, e.g. cluster_size=64k,compression_type=zstd ('help' lists them)",
          "OPT=VAL,..." },
        { "backing", 'b', POPT_ARG_STRING, &backing_arg, 0, "backing file", "FILE" },
        { "backing-format", 'F', POPT_ARG_STRING, &backing_fmt_arg, 0, "backing file format (required with -b)",
          "FMT" },
        { "unsafe", 'u', POPT_ARG_NONE, &unsafe, 0,
          "do not open the backing file (it may not exist yet; give the size)", NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 0, 2, cmd_on_format_option, &a);
    if (status >= 0)
        goto out;

    const char *fmt = format ? format : "raw";
    const struct blockdrv *drv = blk_find_driver(fmt);
    if (a.help && drv) {
        cmd_print_create_options(drv, cl.nargs ? cl.args[0] : NULL);
        status = EXIT_OK;
        goto out;
    }
    if (!cl.nargs) {
        status = cmd_usage_error(&cl, "missing argument (usage: imgtool %s %s)", cmd->name,
                                 cmd->usage);
        goto out;
    }
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
    if (!size_arg && (!p.backing_file || unsafe)) {
        status = cmd_usage_error(&cl, "%s: give the image size (e.g. 10G)%s", p.filename,
                                 unsafe ? "" : " or a backing file");
        goto out;
    }
    status = EXIT_ERROR;
    /* Without -u the backing file must open, as qemu-img checks; its size
     * is the new image's when none is given.  (Without -F blk_create
     * refuses it first, as qemu-img 7.2.) */
    uint64_t backing_size;
    if (drv && p.backing_file && p.backing_format && !unsafe) {
        if (blk_backing_size(&p, &backing_size, &a.e) < 0)
            goto fail;
        if (p.size == BLK_SIZE_FROM_BACKING)
            p.size = backing_size;
    }
    /* Printed once the image exists: nothing on stdout before an error. */
    if (blk_create(fmt, &p, &a.e) < 0)
        goto fail;
    if (!quiet)
        print_formatting(drv, &p, &a.opts);
    status = EXIT_OK;
    goto out;
fail:
    cmd_print_err(&a.e);
out:
    kvopts_free(&a.opts);
    cmd_done(&cl);
    return status;
}
