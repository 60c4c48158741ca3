/* imgtool measure: the size a new image would need (qemu-img measure), for
 * a given virtual size or to hold a copy of an image or chain. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cmd/commands.h"

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    /* qemu-img measure has no -o help: the target's options are listed by
     * create -o help. */
    if (val == CMD_OPT_O && cmd_opts_want_help(arg))
        return cmd_usage_error(cl, "Invalid parameter '%s'", strstr(arg, "help") ? "help" : "?");
    return cmd_on_format_option(cl, val, arg, opaque);
}

static void print_measure(const struct blk_measure *m, enum output_mode mode)
{
    if (mode == OUTPUT_HUMAN) {
        printf("required size: %" PRIu64 "\n", m->required);
        printf("fully allocated size: %" PRIu64 "\n", m->fully_allocated);
        if (m->has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", m->bitmaps);
        return;
    }
    struct prop *o = prop_new_object();
    /* qemu-img's key order (its QDict's hash order). */
    if (m->has_bitmaps)
        prop_add_uint(o, "bitmaps", m->bitmaps);
    prop_add_uint(o, "required", m->required);
    prop_add_uint(o, "fully-allocated", m->fully_allocated);
    json_print(stdout, o, 0);
    printf("\n");
    prop_free(o);
}

/* The argument checks of qemu-img measure, with its messages. */
static int check_args(struct cmdline *cl, const char *format, const char *snapshot,
                      const char *size_s)
{
    if (!cl->nargs && (format || snapshot))
        return cmd_usage_error(cl, "--image-opts, -f, and -l require a filename argument.");
    if (cl->nargs && size_s)
        return cmd_usage_error(cl, "--size N cannot be used together with a filename");
    if (!cl->nargs && !size_s)
        return cmd_usage_error(cl, "Either --size N or one filename must be specified");
    return -1;
}

int cmd_measure(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *out_fmt = NULL, *size_s = NULL, *output = NULL;
    int force_share = 0;
    struct cmd_format_opts a = { 0 };
    struct cmd_snapshot_arg snapshot = { 0 };
    struct poptOption options[] = {
        { "format", 'f', POPT_ARG_STRING, &format, 0, "format of the image (default: probe)",
          "FMT" },
        { "target-format", 'O', POPT_ARG_STRING, &out_fmt, 0,
          "format of the new image (default raw)", "FMT" },
        { "options", 'o', POPT_ARG_STRING, NULL, CMD_OPT_O,
          "create options of the new image, e.g. cluster_size=64k,refcount_bits=16",
          "OPT=VAL,..." },
        { "size", '\0', POPT_ARG_STRING, &size_s, 0, "virtual size of an empty new image",
          "SIZE" },
        { NULL, 'l', POPT_ARG_STRING, &snapshot.arg, 0,
          "measure the image as its internal snapshot recorded it (SNAPSHOT: "
          "snapshot.id=ID,snapshot.name=NAME, or ID_OR_NAME)", "SNAPSHOT" },
        CMD_OPTION_OUTPUT(output),
        CMD_OPTION_FORCE_SHARE(force_share),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct blockdev *bs = NULL;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 0, 1, on_option, &a);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0 ||
        (status = check_args(&cl, format, snapshot.arg, size_s)) >= 0 ||
        (status = cmd_parse_snapshot_arg(&cl, &snapshot, &a.e)) >= 0)
        goto out;
    uint64_t size;
    if (size_s) {
        if ((status = cmd_parse_size_arg(&cl, "size", size_s, &size)) >= 0)
            goto out;
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRIu64, size);
        if (kvopts_set(&a.opts, "size", buf, &a.e) < 0)
            goto fail;
    }
    if (cl.nargs && blk_open(cl.args[0], format, force_share ? BLK_OPEN_FORCE_SHARE : 0,
                             cmd_open_opts(), &bs, &a.e) < 0)
        goto fail;
    if (bs && cmd_load_snapshot(&snapshot, bs, &a.e) < 0)
        goto fail;
    struct blk_measure m;
    if (blk_measure(out_fmt ? out_fmt : "raw", &a.opts, bs, &m, &a.e) < 0)
        goto fail;
    print_measure(&m, mode);
    status = EXIT_OK;
    goto out;
fail:
    cmd_print_err(&a.e);
    status = EXIT_ERROR;
out:
    blk_close(bs);
    kvopts_free(&a.opts);
    kvopts_free(&snapshot.kv);
    cmd_done(&cl);
    return status;
}
