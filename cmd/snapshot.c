/* imgtool snapshot: list, create, apply and delete the internal snapshots
 * of an image (qemu-img snapshot -l | -c | -a | -d). */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "cmd/commands.h"

enum action { ACTION_NONE, ACTION_LIST, ACTION_CREATE, ACTION_APPLY, ACTION_DELETE };

struct snapshot_args {
    enum action action;
    const char *name;
    int mixed;
};

enum { OPT_LIST = 1, OPT_CREATE, OPT_APPLY, OPT_DELETE };

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct snapshot_args *a = opaque;
    if (a->action != ACTION_NONE)
        return cmd_usage_error(cl, "Cannot mix '-l', '-a', '-c', '-d'");
    a->action = val == OPT_LIST ? ACTION_LIST : val == OPT_CREATE ? ACTION_CREATE :
                val == OPT_APPLY ? ACTION_APPLY : ACTION_DELETE;
    a->name = arg;
    return -1;
}

static int list_snapshots(struct blockdev *bs, struct err *e)
{
    struct prop *info;
    int ret = blk_get_info(bs, &info, e);
    if (ret < 0)
        return ret;
    const struct prop *snaps = prop_get(info, "snapshots");
    if (snaps && snaps->first)
        cmd_print_snapshots(snaps);
    prop_free(info);
    return 0;
}

static int run_action(struct blockdev *bs, const struct snapshot_args *a, struct err *e)
{
    const char *what = a->action == ACTION_CREATE ? "create" :
                       a->action == ACTION_APPLY ? "apply" : "delete";
    int ret;
    if (a->action == ACTION_CREATE) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        /* qemu-img records microseconds (g_get_real_time). */
        ret = blk_snapshot_create(bs, a->name, (uint32_t)now.tv_sec,
                                  (uint32_t)(now.tv_nsec / 1000 * 1000), e);
    } else if (a->action == ACTION_APPLY) {
        ret = blk_snapshot_apply(bs, a->name, e);
    } else {
        ret = blk_snapshot_delete(bs, a->name, e);
    }
    if (ret == 0)
        ret = blk_flush(bs, e);
    if (ret < 0)
        err_prefix(e, "Could not %s snapshot '%s': ", what, a->name);
    return ret;
}

int cmd_snapshot(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL;
    int quiet = 0, force_share = 0;
    struct snapshot_args a = { ACTION_NONE, NULL, 0 };
    struct poptOption options[] = {
        { "list", 'l', POPT_ARG_NONE, NULL, OPT_LIST, "list the snapshots", NULL },
        { "create", 'c', POPT_ARG_STRING, NULL, OPT_CREATE, "create a snapshot named NAME",
          "NAME" },
        { "apply", 'a', POPT_ARG_STRING, NULL, OPT_APPLY,
          "revert the disk to the snapshot with this ID or name", "SNAPSHOT" },
        { "delete", 'd', POPT_ARG_STRING, NULL, OPT_DELETE,
          "delete the (first) snapshot named NAME", "NAME" },
        CMD_OPTION_FORMAT(format),
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "with -l: open even if another process is writing the image", NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, on_option, &a);
    if (status >= 0)
        goto out;
    if (a.action == ACTION_NONE)
        a.action = ACTION_LIST;     /* as qemu-img: no action lists */
    if (force_share && a.action != ACTION_LIST) {
        status = cmd_usage_error(&cl, "-U is only allowed with -l");
        goto out;
    }
    unsigned flags = BLK_OPEN_NO_BACKING;
    if (a.action == ACTION_LIST)
        flags |= force_share ? BLK_OPEN_FORCE_SHARE : 0;
    else
        flags |= BLK_OPEN_RDWR;
    status = EXIT_ERROR;
    if (blk_open(cl.args[0], format, flags, cmd_open_opts(), &bs, &e) < 0 ||
        (a.action == ACTION_LIST ? list_snapshots(bs, &e) : run_action(bs, &a, &e)) < 0) {
        cmd_print_err(&e);
        goto out;
    }
    status = EXIT_OK;
out:
    blk_close(bs);
    cmd_done(&cl);
    return status;
}
