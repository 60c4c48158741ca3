/* imgtool rebase: change the backing file of an image, as qemu-img rebase.
 *
 * -u (unsafe) rewrites the header only.  The default (safe) mode first
 * copies into the image whatever reads differently through the new
 * backing chain than through the old one, so that the image reads the
 * same afterwards.  That is one copy_run:
 *   - source: the old backing chain (or nothing: zeroes), read only where
 *     block status says it has data;
 *   - target: the image, whose backing is the new chain for the duration
 *     (it reads what it will read after the header changes);
 *   - ranges: what the image itself does not allocate (its own clusters
 *     decide their contents whatever the backing file);
 *   - skip_identical: the engine reads the target's current contents and
 *     writes only the image clusters that differ, whole, from the old
 *     chain; where both chains read zeroes by block status nothing is
 *     read at all.
 * When the new backing file is in the old chain, the engine's `base`
 * leaves alone what only it and the layers below it provide (the same in
 * both chains), as qemu-img does.  The data is flushed before the header
 * changes, so an interrupted rebase leaves the image reading as before
 * through its old backing file. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/commands.h"
#include "cmd/signals.h"
#include "formats/blockdev-bitmaps.h"
#include "mirror/copy.h"

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    (void)total;
    progress_update(opaque, done);
}

struct range_list {
    struct copy_range *r;
    size_t n, cap;
    uint64_t bytes;
};

static int range_add(struct range_list *l, uint64_t off, uint64_t len, struct err *e)
{
    l->bytes += len;
    if (l->n && l->r[l->n - 1].offset + l->r[l->n - 1].length == off) {
        l->r[l->n - 1].length += len;
        return 0;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct copy_range *r = realloc(l->r, cap * sizeof(*r));
        if (!r)
            return err_set(e, ENOMEM, "out of memory");
        l->r = r;
        l->cap = cap;
    }
    l->r[l->n++] = (struct copy_range){ off, len };
    return 0;
}

/* The ranges the image itself does not allocate: only there can a backing
 * file show through. */
static int unallocated_ranges(struct blockdev *bs, struct range_list *l, struct err *e)
{
    for (uint64_t off = 0; off < bs->size;) {
        struct blk_extent ext;
        int ret = blk_block_status_layer(bs, off, bs->size - off, &ext, e);
        if (ret < 0)
            return ret;
        if (!(ext.flags & BLK_STATUS_ALLOCATED) && (ret = range_add(l, off, ext.length, e)) < 0)
            return ret;
        off += ext.length;
    }
    return 0;
}

/* Open a backing file `name` of `image` (relative to its directory) with
 * its chain, read-only. */
static int open_backing(struct blockdev *image, const char *name, const char *format,
                        unsigned flags, const char *what, struct blockdev **out, struct err *e)
{
    char *path = blk_resolve_backing_path(image->filename, name);
    if (!path)
        return err_set(e, ENOMEM, "out of memory");
    int ret;
    if (blk_is_named(image, path))
        ret = err_set(e, ELOOP, "%s: an image cannot be its own backing file", name);
    else if ((ret = blk_open(path, format, flags, cmd_open_opts(), out, e)) < 0)
        err_prefix(e, "%s: cannot open %s backing file: ", image->filename, what);
    free(path);
    return ret;
}

static void print_summary(const struct blockdev *image, const char *backing,
                          const char *backing_fmt, bool unsafe, const struct copy_stats *st)
{
    struct prop *o = prop_new_object();
    if (!o)
        return;
    prop_add_string(o, "image", image->filename);
    prop_add_string(o, "backing-filename", backing);
    if (backing_fmt)
        prop_add_string(o, "backing-filename-format", backing_fmt);
    prop_add_bool(o, "unsafe", unsafe);
    cmd_add_copy_stats(o, st);
    prop_add_uint(o, "bytes-compared", st->bytes_compared);
    json_print(stdout, o, 0);
    printf("\n");
    prop_free(o);
}

/* Safe mode: copy what differs between the old and the new chain into the
 * image (the copy itself; the header is changed by the caller). */
static int copy_differences(struct blockdev *image, struct blockdev *old, struct blockdev *new,
                            bool progress, struct copy_stats *stats, struct err *e)
{
    struct range_list l = { 0 };
    int ret = unallocated_ranges(image, &l, e);
    if (ret < 0)
        goto out;
    /* The new backing file in the old chain: below it both chains read
     * the same.  It being the old backing file itself leaves nothing. */
    const struct blockdev *base = new && old ? blk_chain_find(old, new->filename) : NULL;
    if (base == old && old)
        l.n = l.bytes = 0;
    struct progress bar;
    progress_init(&bar, progress, l.bytes);
    install_cancel_handlers();
    image->backing = new;
    struct copy_job job = {
        .src = old, .source_zero_past_end = true, .base = base, .dst = image,
        .offset = 0, .length = image->size, .ranges = l.r, .nranges = l.n,
        .skip_identical = true,
        .progress = on_progress, .opaque = &bar, .cancel = &cancel_requested,
    };
    ret = l.n ? copy_run(&job, e) : 0;
    image->backing = NULL;
    progress_finish(&bar);
    *stats = job.stats;
    if (ret == 0)
        ret = blk_flush(image, e);
    if (ret == -ECANCELED)
        err_set(e, ECANCELED, "%s: rebase cancelled; the image is unchanged (its backing "
                "file is still the old one)", image->filename);
out:
    free(l.r);
    return ret;
}

int cmd_rebase(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *cache = NULL, *src_cache = NULL, *backing = NULL;
    char *backing_fmt = NULL, *output = NULL;
    int unsafe = 0, progress = 0, quiet = 0, force_share = 0;
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        { "cache", 't', POPT_ARG_STRING, &cache, 0, "cache mode of the image (none = O_DIRECT)",
          "MODE" },
        { "source-cache", 'T', POPT_ARG_STRING, &src_cache, 0,
          "cache mode of the backing files", "MODE" },
        { "backing", 'b', POPT_ARG_STRING, &backing, 0,
          "the new backing file (\"\": none, the image becomes standalone)", "BACKING" },
        { "backing-format", 'F', POPT_ARG_STRING, &backing_fmt, 0,
          "format of the new backing file (default: probe)", "FMT" },
        { "unsafe", 'u', POPT_ARG_NONE, &unsafe, 0,
          "only change the backing file name in the header", NULL },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "read the backing files even if another process is writing them", NULL },
        { "output", '\0', POPT_ARG_STRING, &output, 0,
          "human, or json: a summary with the bytes read, compared and written",
          "human|json" },
        { "progress", 'p', POPT_ARG_NONE, &progress, 0, "show a progress bar on a terminal",
          NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct blockdev *image = NULL, *old = NULL, *new = NULL;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, NULL, NULL);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0)
        goto out;
    if (!backing) {
        status = cmd_usage_error(&cl, "give the new backing file with -b (-b \"\" makes the "
                                 "image standalone)");
        goto out;
    }
    if (!backing[0] && backing_fmt) {
        status = cmd_usage_error(&cl, "-F needs a backing file (-b \"\" removes it)");
        goto out;
    }
    int ret, bret = 0;
    unsigned flags = BLK_OPEN_NO_BACKING | cmd_open_flags(true, false, cache, &e, &ret);
    unsigned bflags = ret < 0 ? 0 : cmd_open_flags(false, force_share, src_cache, &e, &bret);
    status = EXIT_ERROR;
    if (ret < 0 || bret < 0 || blk_open(cl.args[0], format, flags, cmd_open_opts(), &image, &e) < 0)
        goto fail;
    if (!image->drv->set_backing) {
        err_set(&e, ENOTSUP, "%s: format '%s' has no backing file", image->filename,
                image->drv->name);
        goto fail;
    }
    /* The new chain: needed by safe mode, and to probe the format that the
     * header is to name when -F is not given. */
    if (backing[0] && (!unsafe || !backing_fmt) &&
        open_backing(image, backing, backing_fmt, bflags, "new", &new, &e) < 0)
        goto fail;
    const char *new_fmt = backing_fmt ? backing_fmt : new ? new->drv->name : NULL;
    struct copy_stats stats = { 0 };
    if (!unsafe) {
        if (image->backing_name && image->backing_name[0] &&
            open_backing(image, image->backing_name, image->backing_format, bflags, "old",
                         &old, &e) < 0)
            goto fail;
        ret = copy_differences(image, old, new, progress && !quiet && mode == OUTPUT_HUMAN,
                               &stats, &e);
        if (ret == -ECANCELED)
            status = EXIT_CANCELLED;
        if (ret < 0)
            goto fail;
    }
    if (blk_set_backing(image, backing, new_fmt, &e) < 0 || blk_flush(image, &e) < 0 ||
        blk_bitmaps_release(image, &e) < 0)
        goto fail;
    if (mode == OUTPUT_JSON)
        print_summary(image, backing, new_fmt, unsafe, &stats);
    status = EXIT_OK;
    goto out;
fail:
    cmd_print_err(&e);
out:
    blk_close(image);
    blk_close(old);
    blk_close(new);
    cmd_done(&cl);
    return status;
}
