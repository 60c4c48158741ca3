#include "bitmap/dirty.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct dirty_bitmap {
    char *name;
    struct hbitmap *bits;
    /* Non-NULL while frozen by a job: records the writes made meanwhile. */
    struct hbitmap *successor;
    bool successor_enabled;
    bool enabled;
    bool persistent;
    bool inconsistent;
    bool write_ahead;
};

bool dirty_bitmap_name_valid(const char *name, size_t len)
{
    return name && len >= 1 && len <= DIRTY_BITMAP_MAX_NAME && !memchr(name, '\0', len);
}

int dirty_bitmap_new(const char *name, uint64_t disk_size, uint32_t granularity,
                     struct dirty_bitmap **out, struct err *e)
{
    size_t name_len = name ? strnlen(name, DIRTY_BITMAP_MAX_NAME + 1) : 0;
    if (!dirty_bitmap_name_valid(name, name_len))
        return err_set(e, EINVAL, "bitmap name must be 1 to %d bytes long",
                       DIRTY_BITMAP_MAX_NAME);
    struct dirty_bitmap *bm = calloc(1, sizeof(*bm));
    if (!bm)
        return err_set(e, ENOMEM, "cannot allocate bitmap '%s'", name);
    bm->name = strdup(name);
    if (!bm->name) {
        free(bm);
        return err_set(e, ENOMEM, "cannot allocate bitmap '%s'", name);
    }
    int ret = hbitmap_new(disk_size, granularity, &bm->bits, e);
    if (ret < 0) {
        err_prefix(e, "bitmap '%s': ", name);
        free(bm->name);
        free(bm);
        return ret;
    }
    bm->enabled = true;
    *out = bm;
    return 0;
}

void dirty_bitmap_free(struct dirty_bitmap *bm)
{
    if (!bm)
        return;
    hbitmap_free(bm->successor);
    hbitmap_free(bm->bits);
    free(bm->name);
    free(bm);
}

/* The checks QEMU's bdrv_dirty_bitmap_check() makes before a user change. */
static int check_frozen(const struct dirty_bitmap *bm, struct err *e)
{
    if (bm->successor)
        return err_set(e, EBUSY, "bitmap '%s' is in use by a job", bm->name);
    return 0;
}

static int check_consistent(const struct dirty_bitmap *bm, struct err *e)
{
    if (bm->inconsistent)
        return err_set(e, EINVAL,
                       "bitmap '%s' is inconsistent (it was not saved correctly) "
                       "and cannot be used; remove it", bm->name);
    return 0;
}

static int check_modifiable(const struct dirty_bitmap *bm, struct err *e)
{
    int ret = check_frozen(bm, e);
    return ret < 0 ? ret : check_consistent(bm, e);
}

int dirty_bitmap_remove(struct dirty_bitmap *bm, struct err *e)
{
    int ret = check_frozen(bm, e);
    if (ret < 0)
        return ret;
    dirty_bitmap_free(bm);
    return 0;
}

const char *dirty_bitmap_name(const struct dirty_bitmap *bm)
{
    return bm->name;
}

uint64_t dirty_bitmap_size(const struct dirty_bitmap *bm)
{
    return hbitmap_size(bm->bits);
}

uint32_t dirty_bitmap_granularity(const struct dirty_bitmap *bm)
{
    return hbitmap_granularity(bm->bits);
}

uint64_t dirty_bitmap_count(const struct dirty_bitmap *bm)
{
    return hbitmap_count(bm->bits);
}

uint64_t dirty_bitmap_count_granules(const struct dirty_bitmap *bm)
{
    uint64_t size = hbitmap_size(bm->bits), gran = hbitmap_granularity(bm->bits);
    uint64_t count = hbitmap_count(bm->bits), tail = size % gran;
    if (tail && hbitmap_get(bm->bits, size - 1))
        count += gran - tail;
    return count;
}

bool dirty_bitmap_enabled(const struct dirty_bitmap *bm)
{
    return bm->successor ? bm->successor_enabled : bm->enabled;
}

bool dirty_bitmap_frozen(const struct dirty_bitmap *bm)
{
    return bm->successor != NULL;
}

bool dirty_bitmap_persistent(const struct dirty_bitmap *bm)
{
    return bm->persistent;
}

bool dirty_bitmap_inconsistent(const struct dirty_bitmap *bm)
{
    return bm->inconsistent;
}

int dirty_bitmap_set_enabled(struct dirty_bitmap *bm, bool enabled, struct err *e)
{
    int ret = check_modifiable(bm, e);
    if (ret < 0)
        return ret;
    bm->enabled = enabled;
    return 0;
}

void dirty_bitmap_set_persistent(struct dirty_bitmap *bm, bool persistent)
{
    bm->persistent = persistent;
}

bool dirty_bitmap_write_ahead(const struct dirty_bitmap *bm)
{
    return bm->write_ahead;
}

void dirty_bitmap_set_write_ahead(struct dirty_bitmap *bm, bool write_ahead)
{
    bm->write_ahead = write_ahead;
}

void dirty_bitmap_set_inconsistent(struct dirty_bitmap *bm, bool inconsistent)
{
    bm->inconsistent = inconsistent;
}

const struct hbitmap *dirty_bitmap_bits(const struct dirty_bitmap *bm)
{
    return bm->bits;
}

int dirty_bitmap_bits_for_load(struct dirty_bitmap *bm, struct hbitmap **out, struct err *e)
{
    int ret = check_frozen(bm, e);
    if (ret < 0)
        return ret;
    *out = bm->bits;
    return 0;
}

void dirty_bitmap_mark(struct dirty_bitmap *bm, uint64_t off, uint64_t len)
{
    if (bm->inconsistent)
        return;
    if (bm->successor) {
        if (bm->successor_enabled)
            hbitmap_set(bm->successor, off, len);
    } else if (bm->enabled) {
        hbitmap_set(bm->bits, off, len);
    }
}

int dirty_bitmap_set(struct dirty_bitmap *bm, uint64_t off, uint64_t len, struct err *e)
{
    int ret = check_modifiable(bm, e);
    if (ret < 0)
        return ret;
    hbitmap_set(bm->bits, off, len);
    return 0;
}

int dirty_bitmap_reset(struct dirty_bitmap *bm, uint64_t off, uint64_t len, struct err *e)
{
    int ret = check_modifiable(bm, e);
    if (ret < 0)
        return ret;
    hbitmap_reset(bm->bits, off, len);
    return 0;
}

int dirty_bitmap_clear(struct dirty_bitmap *bm, struct err *e)
{
    int ret = check_modifiable(bm, e);
    if (ret < 0)
        return ret;
    hbitmap_reset_all(bm->bits);
    return 0;
}

int dirty_bitmap_merge(struct dirty_bitmap *dst, const struct dirty_bitmap *src,
                       struct err *e)
{
    int ret = check_modifiable(dst, e);
    if (ret < 0)
        return ret;
    ret = check_consistent(src, e);
    if (ret < 0)
        return ret;
    ret = hbitmap_merge(dst->bits, src->bits, e);
    if (ret < 0)
        err_prefix(e, "merging bitmap '%s' into '%s': ", src->name, dst->name);
    return ret;
}

int dirty_bitmap_truncate(struct dirty_bitmap *bm, uint64_t new_size, struct err *e)
{
    int ret = check_frozen(bm, e);
    if (ret < 0)
        return ret;
    ret = hbitmap_truncate(bm->bits, new_size, e);
    if (ret < 0)
        err_prefix(e, "bitmap '%s': ", bm->name);
    return ret;
}

int dirty_bitmap_freeze(struct dirty_bitmap *bm, struct err *e)
{
    int ret = check_modifiable(bm, e);
    if (ret < 0)
        return ret;
    ret = hbitmap_new(hbitmap_size(bm->bits), hbitmap_granularity(bm->bits),
                      &bm->successor, e);
    if (ret < 0) {
        bm->successor = NULL;
        err_prefix(e, "bitmap '%s': ", bm->name);
        return ret;
    }
    bm->successor_enabled = bm->enabled;
    return 0;
}

static int check_job_owned(const struct dirty_bitmap *bm, const char *what, struct err *e)
{
    if (!bm->successor)
        return err_set(e, EINVAL, "bitmap '%s': cannot %s, it is not frozen by a job",
                       bm->name, what);
    return 0;
}

int dirty_bitmap_job_consume_range(struct dirty_bitmap *bm, uint64_t off, uint64_t len,
                                   struct err *e)
{
    int ret = check_job_owned(bm, "consume a range", e);
    if (ret < 0)
        return ret;
    hbitmap_reset(bm->bits, off, len);
    return 0;
}

/* End of a job: keep either the successor's bits or the parent's (into
 * which the successor was merged), free the other and thaw. */
static void thaw(struct dirty_bitmap *bm, bool keep_successor)
{
    if (keep_successor) {
        hbitmap_free(bm->bits);
        bm->bits = bm->successor;
    } else {
        hbitmap_free(bm->successor);
    }
    bm->successor = NULL;
    bm->enabled = bm->successor_enabled;
}

int dirty_bitmap_abdicate(struct dirty_bitmap *bm, struct err *e)
{
    int ret = check_job_owned(bm, "abdicate", e);
    if (ret < 0)
        return ret;
    thaw(bm, true);
    return 0;
}

int dirty_bitmap_reclaim(struct dirty_bitmap *bm, struct err *e)
{
    int ret = check_job_owned(bm, "reclaim", e);
    if (ret < 0)
        return ret;
    /* Same size by construction, so the merge cannot fail. */
    ret = hbitmap_merge(bm->bits, bm->successor, e);
    if (ret < 0)
        return ret;
    thaw(bm, false);
    return 0;
}
