/* imgtool bitmap: edit an image's persistent dirty bitmaps with qemu-img
 * bitmap's operations (--add, --remove, --clear, --enable, --disable,
 * --merge), all of one call applied as one transaction; plus --list (name,
 * granularity, flags, dirty bytes), --dump (the dirty extents) and
 * --last-backup (the backup an export chain's bitmap counts from). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/commands.h"
#include "formats/blockdev-bitmaps.h"
#include "mirror/chain.h"

enum {
    OP_ADD = 1, OP_REMOVE, OP_CLEAR, OP_ENABLE, OP_DISABLE, OP_MERGE,
    OPT_LIST, OPT_DUMP, OPT_LAST_BACKUP,
};

struct bitmap_op {
    int kind;
    const char *source;         /* OP_MERGE: the source bitmap's name */
};

struct bitmap_args {
    struct bitmap_op ops[64];
    int nops;
    bool list, dump, last_backup;
};

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct bitmap_args *a = opaque;
    if (val == OPT_LIST) {
        a->list = true;
        return -1;
    }
    if (val == OPT_DUMP) {
        a->dump = true;
        return -1;
    }
    if (val == OPT_LAST_BACKUP) {
        a->last_backup = true;
        return -1;
    }
    if (a->nops == (int)(sizeof(a->ops) / sizeof(a->ops[0])))
        return cmd_usage_error(cl, "too many operations");
    a->ops[a->nops++] = (struct bitmap_op){ .kind = val, .source = arg };
    return -1;
}

static bool has_op(const struct bitmap_args *a, int kind)
{
    for (int i = 0; i < a->nops; i++)
        if (a->ops[i].kind == kind)
            return true;
    return false;
}

/* The bitmap's flags as qemu-img info names them. */
static void add_flags(struct prop *flags, const struct dirty_bitmap *bm, bool remote)
{
    /* An NBD export's bitmap: what the server's context says, read-only. */
    if (remote)
        prop_add_string(flags, NULL, "server");
    if (dirty_bitmap_inconsistent(bm))
        prop_add_string(flags, NULL, "in-use");
    if (dirty_bitmap_enabled(bm))
        prop_add_string(flags, NULL, "auto");
}

static int list_bitmaps(struct blockdev *bs, enum output_mode mode, struct err *e)
{
    struct prop *list = prop_new_array();
    if (!list)
        return err_set(e, ENOMEM, "out of memory");
    for (size_t i = 0; i < blk_bitmap_count(bs); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(bs, i);
        if (!dirty_bitmap_persistent(bm) && !blk_bitmaps_remote(bs))
            continue;
        struct prop *o = prop_add_object(list, NULL);
        if (!o)
            break;
        prop_add_string(o, "name", dirty_bitmap_name(bm));
        prop_add_uint(o, "granularity", dirty_bitmap_granularity(bm));
        add_flags(prop_add_array(o, "flags"), bm, blk_bitmaps_remote(bs));
        if (!dirty_bitmap_inconsistent(bm))
            prop_add_uint(o, "dirty-bytes", dirty_bitmap_count_granules(bm));
    }
    if (prop_failed(list)) {
        prop_free(list);
        return err_set(e, ENOMEM, "out of memory");
    }
    if (mode == OUTPUT_JSON) {
        json_print(stdout, list, 0);
        printf("\n");
    } else {
        printf("%-16s %12s  %-12s %16s\n", "NAME", "GRANULARITY", "FLAGS", "DIRTY BYTES");
        for (const struct prop *o = list->first; o; o = o->next) {
            char flags[32] = "";
            for (const struct prop *f = prop_get(o, "flags")->first; f; f = f->next)
                snprintf(flags + strlen(flags), sizeof(flags) - strlen(flags), "%s%s",
                         flags[0] ? "," : "", f->v.s);
            const struct prop *dirty = prop_get(o, "dirty-bytes");
            char dirty_s[24] = "-";
            if (dirty)
                snprintf(dirty_s, sizeof(dirty_s), "%" PRIu64, dirty->v.u);
            printf("%-16s %12" PRIu64 "  %-12s %16s\n", prop_get(o, "name")->v.s,
                   prop_get(o, "granularity")->v.u, flags[0] ? flags : "-", dirty_s);
        }
    }
    prop_free(list);
    return 0;
}

/* Reading a bitmap's bits: refused for inconsistent ones, as every use. */
static int check_readable(struct blockdev *bs, const struct dirty_bitmap *bm, struct err *e)
{
    if (dirty_bitmap_inconsistent(bm))
        return err_set(e, EINVAL, "%s: bitmap '%s' is inconsistent (it was not saved "
                       "correctly) and cannot be used; remove it", bs->filename,
                       dirty_bitmap_name(bm));
    return 0;
}

static int dump_bitmap(struct blockdev *bs, const char *name, enum output_mode mode,
                       struct err *e)
{
    struct dirty_bitmap *bm;
    int ret = blk_bitmap_get(bs, name, &bm, e);
    if (ret < 0 || (ret = check_readable(bs, bm, e)) < 0)
        return ret;
    const struct hbitmap *hb = dirty_bitmap_bits(bm);
    if (mode == OUTPUT_HUMAN)
        printf("%-16s%s\n", "Offset", "Length");
    uint64_t off = 0, len;
    bool first = true;
    while (hbitmap_next_dirty_extent(hb, off, UINT64_MAX, &off, &len)) {
        if (mode == OUTPUT_JSON)
            printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 "}", first ? "[" : ",\n",
                   off, len);
        else
            printf("%#-16" PRIx64 "%#" PRIx64 "\n", off, len);
        first = false;
        off += len;
    }
    if (mode == OUTPUT_JSON)
        printf(first ? "[]\n" : "]\n");
    return 0;
}

/* --last-backup: the file name export recorded, for the next run's -b. */
static int print_last_backup(struct blockdev *bs, const char *name, struct err *e)
{
    struct dirty_bitmap *bm;
    char *file = NULL;
    int ret = blk_bitmap_get(bs, name, &bm, e);
    if (ret == 0 && (ret = chain_last_backup(bs, name, &file, e)) == 0)
        printf("%s\n", file);
    free(file);
    return ret;
}

/* The source of --merge: a consistent bitmap of this image, or of -b FILE. */
static int merge_source(struct blockdev *bs, struct blockdev **src_bs, const char *src_file,
                        const char *src_fmt, const char *name, struct dirty_bitmap **out,
                        struct err *e)
{
    int ret;
    struct stat a, b;
    if (src_file && stat(src_file, &a) == 0 && stat(bs->filename, &b) == 0 &&
        a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        src_file = NULL;    /* -b names the image itself (it is locked by us) */
    if (src_file && !*src_bs) {
        ret = blk_open(src_file, src_fmt, BLK_OPEN_NO_BACKING, cmd_open_opts(), src_bs, e);
        if (ret < 0 || (ret = blk_bitmaps_load(*src_bs, e)) < 0)
            return ret;
    }
    struct blockdev *owner = src_file ? *src_bs : bs;
    ret = blk_bitmap_get(owner, name, out, e);
    return ret < 0 ? ret : check_readable(owner, *out, e);
}

/* Apply one operation to the bitmaps in memory. */
static int apply(struct blockdev *bs, const struct bitmap_op *op, const char *name,
                 uint32_t granularity, bool disabled, struct blockdev **src_bs,
                 const char *src_file, const char *src_fmt, struct err *e)
{
    struct dirty_bitmap *bm = NULL, *src;
    int ret;
    if (op->kind == OP_ADD)
        return blk_bitmap_add(bs, name, granularity ? granularity
                              : blk_bitmap_default_granularity(bs),
                              BLK_BITMAP_PERSISTENT | (disabled ? BLK_BITMAP_DISABLED : 0),
                              NULL, e);
    if (op->kind == OP_REMOVE)
        return blk_bitmap_remove(bs, name, e);
    if ((ret = blk_bitmap_get(bs, name, &bm, e)) < 0)
        return ret;
    if (op->kind == OP_MERGE &&
        (ret = merge_source(bs, src_bs, src_file, src_fmt, op->source, &src, e)) < 0)
        return ret;
    /* The dirty_bitmap_* messages name the bitmap; add the file. */
    if (op->kind == OP_CLEAR)
        ret = dirty_bitmap_clear(bm, e);
    else if (op->kind == OP_MERGE)
        ret = dirty_bitmap_merge(bm, src, e);
    else
        ret = dirty_bitmap_set_enabled(bm, op->kind == OP_ENABLE, e);
    if (ret < 0)
        err_prefix(e, "%s: ", bs->filename);
    return ret;
}

int cmd_bitmap(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *output = NULL, *src_file = NULL, *src_fmt = NULL, *gran_s = NULL;
    int disabled = 0, force_share = 0;
    struct bitmap_args a = { .nops = 0 };
    struct poptOption options[] = {
        { "add", '\0', POPT_ARG_NONE, NULL, OP_ADD, "create BITMAP (enabled, all clean)",
          NULL },
        { "remove", '\0', POPT_ARG_NONE, NULL, OP_REMOVE, "delete BITMAP", NULL },
        { "clear", '\0', POPT_ARG_NONE, NULL, OP_CLEAR, "mark all of BITMAP clean", NULL },
        { "enable", '\0', POPT_ARG_NONE, NULL, OP_ENABLE,
          "make BITMAP record writes (the auto flag)", NULL },
        { "disable", '\0', POPT_ARG_NONE, NULL, OP_DISABLE, "stop BITMAP recording writes",
          NULL },
        { "merge", '\0', POPT_ARG_STRING, NULL, OP_MERGE,
          "add the dirty bits of bitmap SOURCE to BITMAP", "SOURCE" },
        { "source-file", 'b', POPT_ARG_STRING, &src_file, 0,
          "with --merge: SOURCE is in this image", "SOURCE_FILE" },
        { "source-format", 'F', POPT_ARG_STRING, &src_fmt, 0,
          "format of SOURCE_FILE (default: probe)", "SOURCE_FMT" },
        { "granularity", 'g', POPT_ARG_STRING, &gran_s, 0,
          "with --add: bytes per bit (power of two, 512 to 2G)", "GRANULARITY" },
        { "disabled", '\0', POPT_ARG_NONE, &disabled, 0,
          "with --add: create the bitmap disabled", NULL },
        { "list", '\0', POPT_ARG_NONE, NULL, OPT_LIST,
          "list the bitmaps: name, granularity, flags, dirty bytes", NULL },
        { "dump", '\0', POPT_ARG_NONE, NULL, OPT_DUMP, "print the dirty extents of BITMAP",
          NULL },
        { "last-backup", '\0', POPT_ARG_NONE, NULL, OPT_LAST_BACKUP,
          "print the backup (by imgtool export) that BITMAP counts from", NULL },
        { "output", '\0', POPT_ARG_STRING, &output, 0, "with --list/--dump: output format",
          "human|json" },
        CMD_OPTION_FORMAT(format),
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "with --list/--dump: open even if another process is writing the image", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct blockdev *bs = NULL, *src_bs = NULL;
    struct err e = { 0 };
    uint64_t granularity = 0;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 2, on_option, &a);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0)
        goto out;
    const char *usage_problem = NULL;
    if (a.list + a.dump + a.last_backup + (a.nops > 0) != 1)
        usage_problem = "give one of --list, --dump, --last-backup, or operations (--add, "
                        "--remove, --clear, --enable, --disable, --merge)";
    else if (cl.nargs != (a.list ? 1 : 2))
        usage_problem = a.list ? "--list takes only FILENAME" : "give FILENAME and BITMAP";
    else if (gran_s && !has_op(&a, OP_ADD))
        usage_problem = "-g (granularity) needs --add";
    else if (disabled && !has_op(&a, OP_ADD))
        usage_problem = "--disabled needs --add";
    else if (src_file && !has_op(&a, OP_MERGE))
        usage_problem = "-b (source file) needs --merge";
    else if (src_fmt && !src_file)
        usage_problem = "-F (source format) needs -b";
    else if (output && a.nops)
        usage_problem = "--output goes with --list or --dump";
    else if (output && a.last_backup)
        usage_problem = "--output goes with --list or --dump";
    else if (force_share && a.nops)
        usage_problem = "-U goes with --list or --dump (changes need the image to itself)";
    if (usage_problem) {
        status = cmd_usage_error(&cl, "%s", usage_problem);
        goto out;
    }
    if (gran_s && (status = cmd_parse_size_arg(&cl, "granularity", gran_s, &granularity)) >= 0)
        goto out;
    if (gran_s && (granularity > HBITMAP_MAX_GRANULARITY || !is_power_of_2(granularity) ||
                   granularity < HBITMAP_MIN_GRANULARITY)) {
        status = cmd_usage_error(&cl, "granularity must be a power of two from 512 to 2G, "
                                 "not '%s'", gran_s);
        goto out;
    }
    const char *filename = cl.args[0], *name = cl.nargs > 1 ? cl.args[1] : NULL;
    status = EXIT_ERROR;
    if (a.list || a.dump || a.last_backup) {
        unsigned flags = BLK_OPEN_NO_BACKING | (force_share ? BLK_OPEN_FORCE_SHARE : 0);
        if (blk_open(filename, format, flags, cmd_open_opts(), &bs, &e) < 0 || blk_bitmaps_load(bs, &e) < 0)
            goto fail;
        if ((a.list ? list_bitmaps(bs, mode, &e) : a.dump ? dump_bitmap(bs, name, mode, &e)
             : print_last_backup(bs, name, &e)) < 0)
            goto fail;
        status = EXIT_OK;
        goto out;
    }
    if (blk_name_is_network(filename)) {
        err_set(&e, EROFS, "%s: the server's bitmaps are its own: imgtool never changes them "
                "(use the server's tools, e.g. QMP block-dirty-bitmap-add)", filename);
        goto fail;
    }
    /* The operations change only the bitmaps in memory; one store at the
     * end makes all of them land, or none if any fails (or we crash). */
    if (blk_open(filename, format, BLK_OPEN_RDWR | BLK_OPEN_BITMAPS_ONLY | BLK_OPEN_NO_BACKING, cmd_open_opts(),
                 &bs, &e) < 0 || blk_bitmaps_load(bs, &e) < 0)
        goto fail;
    for (int i = 0; i < a.nops; i++) {
        if (apply(bs, &a.ops[i], name, (uint32_t)granularity, disabled, &src_bs, src_file,
                  src_fmt, &e) < 0)
            goto fail;
    }
    /* A bitmap added, removed or cleared no longer counts from the backup
     * export recorded for it: drop that record first, so that the next
     * incremental backup is refused rather than incomplete, even after a
     * crash before the store. */
    if ((has_op(&a, OP_ADD) || has_op(&a, OP_REMOVE) || has_op(&a, OP_CLEAR)) &&
        chain_forget(bs, name, &e) < 0)
        goto fail;
    if (blk_bitmaps_store(bs, &e) < 0)
        goto fail;
    status = EXIT_OK;
    goto out;
fail:
    fflush(stdout);
    cmd_print_err(&e);
out:
    blk_close(src_bs);
    blk_close(bs);
    cmd_done(&cl);
    return status;
}
