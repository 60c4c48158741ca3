/* imgtool info: what an image is (format, sizes, backing file, and the
 * format-specific details), human-readable or as qemu-img's JSON. */
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "cmd/commands.h"

/* Print a format-specific value the way qemu-img does ("lazy refcounts:
 * false", nested lists as "[0]:"), with dashes in keys turned to spaces. */
static void print_human_value(const struct prop *p, int indent);

static void print_human_key(const char *key, int indent)
{
    printf("%*s", indent, "");
    for (const char *c = key; *c; c++)
        putchar(*c == '-' ? ' ' : *c);
    putchar(':');
}

static void print_human_children(const struct prop *p, int indent)
{
    int i = 0;
    for (const struct prop *c = p->first; c; c = c->next, i++) {
        if (p->type == PROP_ARRAY)
            printf("%*s[%d]:", indent, "", i);
        else
            print_human_key(c->key ? c->key : "", indent);
        if (c->type == PROP_OBJECT || c->type == PROP_ARRAY) {
            putchar('\n');
            print_human_children(c, indent + 4);
        } else {
            putchar(' ');
            print_human_value(c, indent);
            putchar('\n');
        }
    }
}

static void print_human_value(const struct prop *p, int indent)
{
    switch (p->type) {
    case PROP_STRING: fputs(p->v.s, stdout); break;
    case PROP_INT: printf("%" PRId64, p->v.i); break;
    case PROP_UINT: printf("%" PRIu64, p->v.u); break;
    case PROP_BOOL: fputs(p->v.b ? "true" : "false", stdout); break;
    default: print_human_children(p, indent + 4); break;
    }
}

static const char *prop_string(const struct prop *info, const char *key)
{
    const struct prop *p = prop_get(info, key);
    return p && p->type == PROP_STRING ? p->v.s : NULL;
}

static uint64_t prop_uint(const struct prop *info, const char *key)
{
    const struct prop *p = prop_get(info, key);
    if (!p)
        return 0;
    return p->type == PROP_UINT ? p->v.u : (uint64_t)p->v.i;
}

static void print_human(const struct prop *info)
{
    char human[32];
    printf("image: %s\n", prop_string(info, "filename"));
    printf("file format: %s\n", prop_string(info, "format"));
    format_size_human(prop_uint(info, "virtual-size"), human, sizeof(human));
    printf("virtual size: %s (%" PRIu64 " bytes)\n", human, prop_uint(info, "virtual-size"));
    /* An NBD export does not say what it occupies: qemu-img's words. */
    if (prop_get(info, "actual-size"))
        format_size_human(prop_uint(info, "actual-size"), human, sizeof(human));
    else
        snprintf(human, sizeof(human), "unavailable");
    printf("disk size: %s\n", human);
    if (prop_get(info, "cluster-size"))
        printf("cluster_size: %" PRIu64 "\n", prop_uint(info, "cluster-size"));
    const char *backing = prop_string(info, "backing-filename");
    if (backing) {
        const char *full = prop_string(info, "full-backing-filename");
        printf("backing file: %s", backing);
        if (full && strcmp(full, backing))
            printf(" (actual path: %s)", full);
        printf("\n");
        const char *bfmt = prop_string(info, "backing-filename-format");
        if (bfmt)
            printf("backing file format: %s\n", bfmt);
    }
    const struct prop *dirty = prop_get(info, "dirty-flag");
    if (dirty && dirty->type == PROP_BOOL && dirty->v.b)
        printf("cleanly shut down: no\n");
    const struct prop *snaps = prop_get(info, "snapshots");
    if (snaps && snaps->first)
        cmd_print_snapshots(snaps);
    const struct prop *spec = prop_get(info, "format-specific");
    const struct prop *data = spec ? prop_get(spec, "data") : NULL;
    if (data && data->first) {
        printf("Format specific information:\n");
        print_human_children(data, 4);
    }
}

int cmd_info(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *output = NULL;
    int force_share = 0, backing_chain = 0;
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        CMD_OPTION_OUTPUT(output),
        { "backing-chain", '\0', POPT_ARG_NONE, &backing_chain, 0,
          "show every image of the backing chain", NULL },
        CMD_OPTION_FORCE_SHARE(force_share),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct blockdev *bs = NULL;
    struct prop *list = NULL;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, NULL, NULL);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0)
        goto out;
    unsigned flags = (force_share ? BLK_OPEN_FORCE_SHARE : 0) |
                     (backing_chain ? 0 : BLK_OPEN_NO_BACKING);
    status = EXIT_ERROR;
    if (blk_open(cl.args[0], format, flags, cmd_open_opts(), &bs, &e) < 0)
        goto fail;
    list = prop_new_array();
    for (struct blockdev *layer = bs; layer; layer = backing_chain ? layer->backing : NULL) {
        struct prop *info;
        if (blk_get_info(layer, &info, &e) < 0)
            goto fail;
        if (list->last)
            list->last->next = info;
        else
            list->first = info;
        list->last = info;
    }
    if (mode == OUTPUT_JSON) {
        json_print(stdout, backing_chain ? list : list->first, 0);
        printf("\n");
    } else {
        for (const struct prop *info = list->first; info; info = info->next) {
            print_human(info);
            if (info->next)
                printf("\n");
        }
    }
    status = EXIT_OK;
    goto out;
fail:
    cmd_print_err(&e);
out:
    prop_free(list);
    blk_close(bs);
    cmd_done(&cl);
    return status;
}
