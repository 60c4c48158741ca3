/* imgtool commit: write the data of an image (and of the layers between
 * it and BASE) down into BASE with the copy engine, then empty the image
 * so that it reads through to BASE, as qemu-img commit does.
 *
 * The chain is opened read-only except BASE, which is reopened writable in
 * place.  The copy takes only what the layers above BASE allocate (the
 * engine's `base`): data is written, zero ranges become zeroes where BASE
 * does not already read zeroes.  BASE is grown first if it is smaller than
 * the image.  BASE's enabled dirty bitmaps record every write by
 * themselves; --bitmaps also merges the image's persistent bitmaps into
 * BASE's.  Order for a crash: BASE is written and flushed before the image
 * is emptied, so an interrupted commit leaves the image's view whole. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/signals.h"
#include "formats/blockdev-bitmaps.h"
#include "mirror/copy.h"

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    (void)total;
    progress_update(opaque, done);
}

/* --bitmaps: every persistent bitmap of the image must be usable and
 * storable in BASE's format; checked before anything is written. */
static int check_bitmaps(struct blockdev *top, struct blockdev *base, struct err *e)
{
    int ret = top->bitmaps_loaded ? 0 : blk_bitmaps_load(top, e);
    if (ret < 0)
        return ret;
    for (size_t i = 0; i < blk_bitmap_count(top); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(top, i);
        if (!dirty_bitmap_persistent(bm))
            continue;
        if (dirty_bitmap_inconsistent(bm))
            return err_set(e, EINVAL, "%s: bitmap '%s' is inconsistent (the image was not "
                           "closed cleanly): remove it with 'imgtool bitmap --remove', or "
                           "commit without --bitmaps", top->filename, dirty_bitmap_name(bm));
        if (!blk_bitmaps_supported(base))
            return err_set(e, ENOTSUP, "%s: format '%s' cannot store bitmaps (commit "
                           "without --bitmaps)", base->filename, base->drv->name);
    }
    return 0;
}

/* dst |= src where the sizes may differ (BASE larger than the image): the
 * image's bits, resized to BASE's size, are merged. */
static int merge_resized(struct dirty_bitmap *dst, const struct dirty_bitmap *src,
                         struct err *e)
{
    if (dirty_bitmap_size(dst) == dirty_bitmap_size(src))
        return dirty_bitmap_merge(dst, src, e);
    struct dirty_bitmap *tmp;
    int ret = dirty_bitmap_new(dirty_bitmap_name(src), dirty_bitmap_size(src),
                               dirty_bitmap_granularity(src), &tmp, e);
    if (ret < 0)
        return ret;
    if ((ret = dirty_bitmap_merge(tmp, src, e)) == 0 &&
        (ret = dirty_bitmap_truncate(tmp, dirty_bitmap_size(dst), e)) == 0)
        ret = dirty_bitmap_merge(dst, tmp, e);
    dirty_bitmap_free(tmp);
    return ret;
}

/* Merge each persistent bitmap of the image into BASE's bitmap of the same
 * name, creating it (same granularity and enabled state) if BASE has
 * none. */
static int merge_bitmaps(struct blockdev *top, struct blockdev *base, struct err *e)
{
    for (size_t i = 0; i < blk_bitmap_count(top); i++) {
        const struct dirty_bitmap *bm = blk_bitmap_at(top, i);
        if (!dirty_bitmap_persistent(bm))
            continue;
        const char *name = dirty_bitmap_name(bm);
        struct dirty_bitmap *dst = blk_bitmap_find(base, name);
        int ret = 0;
        if (!dst) {
            unsigned flags = BLK_BITMAP_PERSISTENT |
                             (dirty_bitmap_enabled(bm) ? 0 : BLK_BITMAP_DISABLED);
            ret = blk_bitmap_add(base, name, dirty_bitmap_granularity(bm), flags, &dst, e);
        }
        if (ret == 0)
            ret = merge_resized(dst, bm, e);
        if (ret < 0) {
            err_prefix(e, "%s: cannot merge bitmap '%s': ", base->filename, name);
            return ret;
        }
    }
    return 0;
}

static void print_summary(const char *image, const struct blockdev *base, bool emptied,
                          const struct copy_stats *st)
{
    struct prop *o = prop_new_object();
    if (!o)
        return;
    prop_add_string(o, "image", image);
    prop_add_string(o, "base", base->filename);
    prop_add_bool(o, "emptied", emptied);
    cmd_add_copy_stats(o, st);
    json_print(stdout, o, 0);
    printf("\n");
    prop_free(o);
}

int cmd_commit(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *cache = NULL, *base_name = NULL, *output = NULL, *rate_s = NULL;
    int skip_empty = 0, progress = 0, quiet = 0, bitmaps = 0;
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        { "cache", 't', POPT_ARG_STRING, &cache, 0, "cache mode (none = O_DIRECT)", "MODE" },
        { "base", 'b', POPT_ARG_STRING, &base_name, 0,
          "commit into this image of the backing chain (default: the backing file); "
          "implies -d", "BASE" },
        { "skip-empty", 'd', POPT_ARG_NONE, &skip_empty, 0,
          "do not empty the image afterwards", NULL },
        { "rate", 'r', POPT_ARG_STRING, &rate_s, 0,
          "copy at most RATE bytes per second (default: no limit)", "RATE" },
        { "bitmaps", '\0', POPT_ARG_NONE, &bitmaps, 0,
          "merge the image's persistent bitmaps into BASE's", NULL },
        { "output", '\0', POPT_ARG_STRING, &output, 0,
          "human, or json: a summary with the bytes copied", "human|json" },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct blockdev *top = NULL;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, NULL, NULL);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0)
        goto out;
    uint64_t rate = 0;
    if (rate_s && (status = cmd_parse_size_arg(&cl, "rate", rate_s, &rate)) >= 0)
        goto out;
    /* As qemu-img: the layers between the image and BASE no longer read as
     * they did, so the image must keep its data to stay valid. */
    bool empty = !skip_empty && !base_name;
    const char *name = cl.args[0];
    int ret;
    unsigned flags = cmd_open_flags(empty, false, cache, &e, &ret);
    status = EXIT_ERROR;
    if (ret < 0 || blk_open(name, format, flags, cmd_open_opts(), &top, &e) < 0)
        goto fail;
    if (!top->backing) {
        err_set(&e, EINVAL, "%s: image does not have a backing file", name);
        goto fail;
    }
    struct blockdev *base = top->backing;
    if (base_name && !(base = blk_chain_find_backing(top, base_name))) {
        err_set(&e, ENOENT, "%s: not found in the backing chain of %s", base_name, name);
        goto fail;
    }
    if (bitmaps && check_bitmaps(top, base, &e) < 0)
        goto fail;
    if (blk_reopen_writable(top, base, &base, &e) < 0)
        goto fail;
    /* As QEMU: a smaller BASE grows to the image's size (never shrinks). */
    if (base->size < top->size && blk_truncate(base, top->size, &e) < 0)
        goto fail;

    struct progress bar;
    progress_init(&bar, progress && !quiet && mode == OUTPUT_HUMAN, top->size);
    install_cancel_handlers();
    struct copy_job job = {
        .src = top, .base = base, .dst = base, .offset = 0, .length = top->size,
        .progress = on_progress, .opaque = &bar, .cancel = &cancel_requested,
        .speed = rate,
    };
    ret = copy_run(&job, &e);
    progress_finish(&bar);
    if (ret == 0)
        ret = blk_flush(base, &e);
    if (ret == -ECANCELED) {
        status = EXIT_CANCELLED;
        err_set(&e, ECANCELED, "%s: commit cancelled; %s holds part of the data, %s is "
                "unchanged", name, base->filename, name);
    }
    if (ret < 0)
        goto fail;
    if ((bitmaps && merge_bitmaps(top, base, &e) < 0) || blk_bitmaps_release(base, &e) < 0)
        goto fail;
    if (empty && (blk_make_empty(top, &e) < 0 || blk_flush(top, &e) < 0 ||
                  blk_bitmaps_release(top, &e) < 0))
        goto fail;
    if (mode == OUTPUT_JSON)
        print_summary(name, base, empty, &job.stats);
    else if (!quiet)
        printf("Image committed.\n");
    status = EXIT_OK;
    goto out;
fail:
    cmd_print_err(&e);
out:
    blk_close(top);
    cmd_done(&cl);
    return status;
}
