/* Dirty bitmaps attached to an open image: the set, its lock, marking on
 * every write, and the open/store/close life cycle of the persistent ones
 * (see blockdev-bitmaps.h). */
#include "blockdev-bitmaps.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool blk_driver_has_bitmaps(const struct blockdrv *drv)
{
    return drv && drv->bitmaps_load && drv->bitmaps_store;
}

bool blk_bitmaps_supported(const struct blockdev *bs)
{
    return blk_driver_has_bitmaps(bs->drv);
}

bool blk_bitmaps_storable(struct blockdev *bs)
{
    return blk_bitmaps_supported(bs) &&
           (!bs->drv->bitmaps_persistent || bs->drv->bitmaps_persistent(bs));
}

void blk_bitmaps_init(struct blockdev *bs)
{
    pthread_mutex_init(&bs->bitmaps_lock, NULL);
}

void blk_bitmaps_lock(struct blockdev *bs)
{
    pthread_mutex_lock(&bs->bitmaps_lock);
}

void blk_bitmaps_unlock(struct blockdev *bs)
{
    pthread_mutex_unlock(&bs->bitmaps_lock);
}

size_t blk_bitmap_count(const struct blockdev *bs)
{
    return bs->nbitmaps;
}

struct dirty_bitmap *blk_bitmap_at(const struct blockdev *bs, size_t i)
{
    return i < bs->nbitmaps ? bs->bitmaps[i] : NULL;
}

struct dirty_bitmap *blk_bitmap_find(const struct blockdev *bs, const char *name)
{
    for (size_t i = 0; i < bs->nbitmaps; i++)
        if (strcmp(dirty_bitmap_name(bs->bitmaps[i]), name) == 0)
            return bs->bitmaps[i];
    return NULL;
}

int blk_bitmap_get(const struct blockdev *bs, const char *name, struct dirty_bitmap **out,
                   struct err *e)
{
    *out = blk_bitmap_find(bs, name);
    if (!*out)
        return err_set(e, ENOENT, "%s: no bitmap '%s'", bs->filename, name);
    return 0;
}

int blk_bitmap_attach(struct blockdev *bs, struct dirty_bitmap *bm, struct err *e)
{
    if (blk_bitmap_find(bs, dirty_bitmap_name(bm))) {
        int ret = err_set(e, EEXIST, "%s: bitmap '%s' already exists", bs->filename,
                          dirty_bitmap_name(bm));
        dirty_bitmap_free(bm);
        return ret;
    }
    struct dirty_bitmap **v = realloc(bs->bitmaps, sizeof(*v) * (bs->nbitmaps + 1));
    if (!v) {
        dirty_bitmap_free(bm);
        return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    }
    v[bs->nbitmaps++] = bm;
    bs->bitmaps = v;
    return 0;
}

static void free_all(struct blockdev *bs)
{
    for (size_t i = 0; i < bs->nbitmaps; i++)
        dirty_bitmap_free(bs->bitmaps[i]);
    free(bs->bitmaps);
    bs->bitmaps = NULL;
    bs->nbitmaps = 0;
}

static int load(struct blockdev *bs, bool mark_in_use, struct err *e)
{
    int ret = bs->drv->bitmaps_load(bs, mark_in_use, e);
    if (ret < 0) {
        /* Nothing half-loaded stays attached. */
        free_all(bs);
        return ret;
    }
    bs->bitmaps_loaded = true;
    bs->bitmaps_in_use = mark_in_use;
    return 0;
}

bool blk_bitmaps_remote(const struct blockdev *bs)
{
    return !blk_bitmaps_supported(bs) && transport_has_dirty_bitmaps(bs->file);
}

bool blk_bitmaps_available(const struct blockdev *bs)
{
    return blk_bitmaps_supported(bs) || blk_bitmaps_remote(bs);
}

struct dirty_run {
    uint64_t off, len;
};

/* The dirty runs of one of the transport's bitmaps, in order. */
static int remote_runs(struct blockdev *bs, const char *name, struct dirty_run **runs,
                       size_t *n, struct err *e)
{
    size_t cap = 0;
    *runs = NULL;
    *n = 0;
    for (uint64_t off = 0; off < bs->size;) {
        bool dirty;
        uint64_t run;
        int ret = transport_dirty_status(bs->file, name, off, bs->size - off, &dirty, &run, e);
        if (ret < 0)
            return ret;
        if (dirty && *n && (*runs)[*n - 1].off + (*runs)[*n - 1].len == off) {
            (*runs)[*n - 1].len += run;
        } else if (dirty) {
            if (*n == cap) {
                cap = cap ? cap * 2 : 64;
                struct dirty_run *r = realloc(*runs, cap * sizeof(*r));
                if (!r)
                    return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
                *runs = r;
            }
            (*runs)[(*n)++] = (struct dirty_run){ off, run };
        }
        off += run;
    }
    return 0;
}

/* The server does not say a bitmap's granularity: the coarsest power of two
 * (512 .. 64 KiB) that every run boundary is a multiple of, so that the
 * bitmap records exactly what the server said. */
static uint32_t runs_granularity(const struct dirty_run *runs, size_t n, uint64_t size)
{
    uint64_t bits = 65536;
    for (size_t i = 0; i < n; i++) {
        uint64_t end = runs[i].off + runs[i].len;
        bits |= runs[i].off | (end == size ? 0 : end);
    }
    uint64_t g = bits & -bits;
    return (uint32_t)(g < 512 ? 512 : g);
}

static int load_remote_one(struct blockdev *bs, const char *name, struct err *e)
{
    struct dirty_run *runs;
    size_t n;
    struct dirty_bitmap *bm = NULL;
    int ret = remote_runs(bs, name, &runs, &n, e);
    if (ret == 0)
        ret = dirty_bitmap_new(name, bs->size, runs_granularity(runs, n, bs->size), &bm, e);
    for (size_t i = 0; ret == 0 && i < n; i++)
        ret = dirty_bitmap_set(bm, runs[i].off, runs[i].len, e);
    free(runs);
    /* The server records the guest's writes; our copy only reads. */
    if (ret == 0)
        ret = dirty_bitmap_set_enabled(bm, false, e);
    if (ret < 0) {
        dirty_bitmap_free(bm);
        return ret;
    }
    return blk_bitmap_attach(bs, bm, e);
}

/* An NBD export's bitmaps (qemu:dirty-bitmap:NAME), read once into
 * in-memory bitmaps that are neither persistent nor recording. */
static int load_remote(struct blockdev *bs, struct err *e)
{
    char **names;
    size_t n;
    int ret = transport_dirty_bitmaps(bs->file, &names, &n, e);
    for (size_t i = 0; i < n; i++) {
        if (ret == 0)
            ret = load_remote_one(bs, names[i], e);
        free(names[i]);
    }
    free(names);
    if (ret < 0) {
        free_all(bs);
        return ret;
    }
    bs->bitmaps_loaded = true;
    return 0;
}

int blk_bitmaps_load(struct blockdev *bs, struct err *e)
{
    if (blk_bitmaps_remote(bs))
        return bs->bitmaps_loaded ? 0 : load_remote(bs, e);
    if (!blk_bitmaps_supported(bs))
        return err_set(e, ENOTSUP, "%s: format '%s' does not support persistent bitmaps",
                       bs->filename, bs->drv->name);
    if (bs->bitmaps_loaded)
        return 0;
    return load(bs, false, e);
}

int blk_bitmaps_open(struct blockdev *bs, struct err *e)
{
    if (!blk_bitmaps_supported(bs)) {
        bs->bitmaps_loaded = true;     /* there are none to load */
        return 0;
    }
    return load(bs, !(bs->open_flags & BLK_OPEN_BITMAPS_ONLY), e);
}

uint32_t blk_bitmap_default_granularity(struct blockdev *bs)
{
    uint64_t g = max_u64(4096, blk_write_alignment(bs));
    return (uint32_t)min_u64(g, 65536);
}

int blk_bitmap_add(struct blockdev *bs, const char *name, uint32_t granularity, unsigned flags,
                   struct dirty_bitmap **out, struct err *e)
{
    int ret;
    if (!is_power_of_2(granularity) || granularity < HBITMAP_MIN_GRANULARITY ||
        granularity > HBITMAP_MAX_GRANULARITY)
        return err_set(e, EINVAL, "%s: bitmap '%s': granularity %u is not a power of two "
                       "between 512 and 2G", bs->filename, name, granularity);
    if (flags & BLK_BITMAP_PERSISTENT) {
        if (blk_bitmaps_remote(bs))
            return err_set(e, EROFS, "%s: cannot add bitmap '%s': the server's bitmaps are "
                           "its own (imgtool never changes them)", bs->filename, name);
        if (!blk_bitmaps_supported(bs))
            return err_set(e, ENOTSUP, "%s: format '%s' does not support persistent bitmaps",
                           bs->filename, bs->drv->name);
        if (bs->read_only || bs->bitmaps_released)
            return err_set(e, EROFS, "%s: cannot add bitmap '%s': image is not open for "
                           "writing", bs->filename, name);
        if ((ret = blk_bitmaps_load(bs, e)) < 0)
            return ret;
    }
    if (blk_bitmap_find(bs, name))
        return err_set(e, EEXIST, "%s: bitmap '%s' already exists", bs->filename, name);
    if ((flags & BLK_BITMAP_PERSISTENT) && bs->drv->bitmap_check_new &&
        (ret = bs->drv->bitmap_check_new(bs, name, granularity, e)) < 0)
        return ret;
    struct dirty_bitmap *bm;
    ret = dirty_bitmap_new(name, bs->size, granularity, &bm, e);
    if (ret < 0) {
        err_prefix(e, "%s: ", bs->filename);
        return ret;
    }
    dirty_bitmap_set_persistent(bm, flags & BLK_BITMAP_PERSISTENT);
    if (flags & BLK_BITMAP_DISABLED)
        dirty_bitmap_set_enabled(bm, false, e);
    if ((ret = blk_bitmap_attach(bs, bm, e)) < 0)
        return ret;
    if (out)
        *out = bm;
    return 0;
}

int blk_bitmap_remove(struct blockdev *bs, const char *name, struct err *e)
{
    for (size_t i = 0; i < bs->nbitmaps; i++) {
        struct dirty_bitmap *bm = bs->bitmaps[i];
        if (strcmp(dirty_bitmap_name(bm), name) != 0)
            continue;
        if (dirty_bitmap_persistent(bm) && (bs->read_only || bs->bitmaps_released))
            return err_set(e, EROFS, "%s: cannot remove bitmap '%s': image is not open for "
                           "writing", bs->filename, name);
        int ret = dirty_bitmap_remove(bm, e);
        if (ret < 0) {
            err_prefix(e, "%s: ", bs->filename);
            return ret;
        }
        memmove(&bs->bitmaps[i], &bs->bitmaps[i + 1],
                sizeof(*bs->bitmaps) * (bs->nbitmaps - i - 1));
        bs->nbitmaps--;
        return 0;
    }
    return err_set(e, ENOENT, "%s: no bitmap '%s'", bs->filename, name);
}

int blk_bitmaps_check_copy(struct blockdev *src, bool skip_inconsistent, struct err *e)
{
    int ret = blk_bitmaps_load(src, e);
    if (ret < 0)
        return ret;
    for (size_t i = 0; i < src->nbitmaps && !skip_inconsistent; i++)
        if (dirty_bitmap_persistent(src->bitmaps[i]) &&
            dirty_bitmap_inconsistent(src->bitmaps[i]))
            return err_set(e, EINVAL, "%s: bitmap '%s' is inconsistent and cannot be copied; "
                           "skip it with --skip-broken-bitmaps or remove it (imgtool bitmap "
                           "--remove)", src->filename, dirty_bitmap_name(src->bitmaps[i]));
    return 0;
}

int blk_bitmaps_copy(struct blockdev *dst, struct blockdev *src, bool skip_inconsistent,
                     struct err *e)
{
    int ret = blk_bitmaps_check_copy(src, skip_inconsistent, e);
    for (size_t i = 0; ret == 0 && i < src->nbitmaps; i++) {
        const struct dirty_bitmap *from = src->bitmaps[i];
        struct dirty_bitmap *to;
        if (!dirty_bitmap_persistent(from) || dirty_bitmap_inconsistent(from))
            continue;
        ret = blk_bitmap_add(dst, dirty_bitmap_name(from), dirty_bitmap_granularity(from),
                             BLK_BITMAP_PERSISTENT |
                             (dirty_bitmap_enabled(from) ? 0 : BLK_BITMAP_DISABLED), &to, e);
        if (ret == 0 && (ret = dirty_bitmap_merge(to, from, e)) < 0)
            err_prefix(e, "%s: ", dst->filename);
    }
    return ret;
}

static int store(struct blockdev *bs, bool in_use, struct err *e)
{
    if (!blk_bitmaps_supported(bs))
        return err_set(e, ENOTSUP, "%s: format '%s' does not support persistent bitmaps",
                       bs->filename, bs->drv->name);
    if (bs->read_only || bs->bitmaps_released)
        return err_set(e, EROFS, "%s: cannot store bitmaps: image is not open for writing",
                       bs->filename);
    if (!bs->bitmaps_loaded)    /* storing now would drop the image's bitmaps */
        return err_set(e, EINVAL, "%s: bitmaps were not loaded", bs->filename);
    for (size_t i = 0; i < bs->nbitmaps; i++)
        if (dirty_bitmap_persistent(bs->bitmaps[i]) && dirty_bitmap_frozen(bs->bitmaps[i]))
            return err_set(e, EBUSY, "%s: bitmap '%s' is in use by a job and cannot be "
                           "stored", bs->filename, dirty_bitmap_name(bs->bitmaps[i]));
    return bs->drv->bitmaps_store(bs, in_use, e);
}

int blk_bitmaps_store(struct blockdev *bs, struct err *e)
{
    if (blk_bitmaps_remote(bs))
        return err_set(e, EROFS, "%s: the server's bitmaps are its own (imgtool never "
                       "changes them)", bs->filename);
    return store(bs, !(bs->open_flags & BLK_OPEN_BITMAPS_ONLY), e);
}

int blk_bitmaps_release(struct blockdev *bs, struct err *e)
{
    if (bs->read_only || bs->bitmaps_released || !blk_bitmaps_supported(bs))
        return 0;
    int ret = store(bs, false, e);
    if (ret == 0) {
        bs->bitmaps_in_use = false;
        bs->bitmaps_released = true;
    }
    return ret;
}

void blk_bitmaps_close(struct blockdev *bs)
{
    if (bs->bitmaps_loaded && !(bs->open_flags & BLK_OPEN_BITMAPS_ONLY)) {
        /* Best effort: if this fails the bitmaps stay marked in use on
         * disk, i.e. inconsistent, which is safe. */
        struct err ignored = { 0 };
        blk_bitmaps_release(bs, &ignored);
    }
    free_all(bs);
    pthread_mutex_destroy(&bs->bitmaps_lock);
}

void blk_bitmaps_mark(struct blockdev *bs, uint64_t off, uint64_t len)
{
    if (!bs->nbitmaps || !len)
        return;
    blk_bitmaps_lock(bs);
    for (size_t i = 0; i < bs->nbitmaps; i++)
        dirty_bitmap_mark(bs->bitmaps[i], off, len);
    blk_bitmaps_unlock(bs);
}

int blk_bitmaps_check_guest_write(struct blockdev *bs, struct err *e)
{
    if (bs->open_flags & BLK_OPEN_BITMAPS_ONLY)
        return err_set(e, EROFS, "%s: image is open for bitmap changes only", bs->filename);
    if (bs->bitmaps_released)
        return err_set(e, EROFS, "%s: bitmaps were already stored; no more writes",
                       bs->filename);
    return 0;
}

int blk_bitmaps_check_truncate(struct blockdev *bs, struct err *e)
{
    for (size_t i = 0; i < bs->nbitmaps; i++) {
        const struct dirty_bitmap *bm = bs->bitmaps[i];
        if (dirty_bitmap_frozen(bm))
            return err_set(e, EBUSY, "%s: bitmap '%s' is in use by a job; cannot resize",
                           bs->filename, dirty_bitmap_name(bm));
        if (dirty_bitmap_inconsistent(bm))
            return err_set(e, EINVAL, "%s: bitmap '%s' is inconsistent; remove it before "
                           "resizing (imgtool bitmap --remove)", bs->filename,
                           dirty_bitmap_name(bm));
    }
    return 0;
}

int blk_bitmaps_truncate(struct blockdev *bs, uint64_t size, struct err *e)
{
    int ret = 0;
    for (size_t i = 0; i < bs->nbitmaps; i++) {
        struct dirty_bitmap *bm = bs->bitmaps[i];
        if (dirty_bitmap_truncate(bm, size, e) < 0) {
            /* The disk has its new size already: a bitmap that cannot
             * follow must not be trusted any more. */
            dirty_bitmap_set_inconsistent(bm, true);
            ret = -ENOMEM;
        }
    }
    if (ret < 0)
        err_prefix(e, "%s: ", bs->filename);
    return ret;
}
