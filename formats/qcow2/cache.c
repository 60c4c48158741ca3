/* qcow2 metadata cache: write-back caches of L2 tables and refcount blocks
 * with the write ordering QEMU's qcow2-cache.c enforces through cache
 * dependencies, so that a crash leaks clusters at worst:
 *   - refcount increments reach the disk before the L2 entries that need
 *     them (l2_needs_refblocks), and
 *   - L2 entries that dropped a reference reach the disk before the
 *     refcount decrement (refblocks_need_l2).
 * Both are "write the other cache, fdatasync, then write this one".
 * All functions run with the driver lock held. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

int qcow2_cache_init(struct qcow2_cache *c, size_t count, uint64_t table_size, bool is_l2)
{
    memset(c, 0, sizeof(*c));
    c->entries = calloc(count, sizeof(*c->entries));
    if (!c->entries)
        return -ENOMEM;
    c->count = count;
    c->is_l2 = is_l2;
    for (size_t i = 0; i < count; i++) {
        c->entries[i].data = malloc(table_size);
        if (!c->entries[i].data) {
            qcow2_cache_destroy(c);
            return -ENOMEM;
        }
    }
    return 0;
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
    if (!c->entries)
        return;
    for (size_t i = 0; i < c->count; i++)
        free(c->entries[i].data);
    free(c->entries);
    memset(c, 0, sizeof(*c));
}

/* What the tables of a cache are, for the overlap check. */
static unsigned own_kind(const struct qcow2_cache *c)
{
    return c->is_l2 ? QCOW2_OL_ACTIVE_L2 : QCOW2_OL_REFCOUNT_BLOCK;
}

static int write_dirty(struct qcow2_state *s, struct qcow2_cache *c, struct err *e)
{
    for (size_t i = 0; i < c->count; i++) {
        struct qcow2_cache_entry *ce = &c->entries[i];
        if (!ce->dirty)
            continue;
        int ret = qcow2_pwrite_checked(s, own_kind(c), ce->offset, ce->data, s->cluster_size,
                                       e);
        if (ret < 0)
            return ret;
        ce->dirty = false;
    }
    return 0;
}

static bool has_dirty(const struct qcow2_cache *c)
{
    for (size_t i = 0; i < c->count; i++)
        if (c->entries[i].dirty)
            return true;
    return false;
}

/* Make what `c` depends on stable before `c` is written. */
static int flush_dependency(struct qcow2_state *s, struct qcow2_cache *c, struct err *e)
{
    bool *flag = c->is_l2 ? &s->l2_needs_refblocks : &s->refblocks_need_l2;
    if (!*flag)
        return 0;
    struct qcow2_cache *other = c->is_l2 ? &s->rb_cache : &s->l2_cache;
    int ret = write_dirty(s, other, e);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
    if (ret == 0)
        *flag = false;
    return ret;
}

int qcow2_cache_flush(struct qcow2_state *s, struct qcow2_cache *c, struct err *e)
{
    if (!has_dirty(c))
        return 0;
    int ret = flush_dependency(s, c, e);
    if (ret == 0)
        ret = write_dirty(s, c, e);
    return ret;
}

int qcow2_l2_depends_on_refblocks(struct qcow2_state *s, struct err *e)
{
    if (s->refblocks_need_l2) {
        int ret = qcow2_cache_flush(s, &s->l2_cache, e);
        if (ret == 0)
            ret = transport_flush(s->bs->file, e);
        if (ret < 0)
            return ret;
        s->refblocks_need_l2 = false;
    }
    s->l2_needs_refblocks = true;
    return 0;
}

int qcow2_refblocks_depend_on_l2(struct qcow2_state *s, struct err *e)
{
    if (s->l2_needs_refblocks) {
        int ret = qcow2_cache_flush(s, &s->rb_cache, e);
        if (ret == 0)
            ret = transport_flush(s->bs->file, e);
        if (ret < 0)
            return ret;
        s->l2_needs_refblocks = false;
    }
    s->refblocks_need_l2 = true;
    return 0;
}

int qcow2_flush_metadata(struct qcow2_state *s, struct err *e)
{
    int ret = qcow2_cache_flush(s, &s->rb_cache, e);
    if (ret == 0)
        ret = qcow2_cache_flush(s, &s->l2_cache, e);
    if (ret == 0)
        ret = qcow2_cache_flush(s, &s->rb_cache, e);
    if (ret == 0)
        ret = transport_flush(s->bs->file, e);
    if (ret == 0) {
        s->l2_needs_refblocks = s->refblocks_need_l2 = false;
        /* Every reference dropped so far is on disk: freed clusters may be
         * reused. */
        s->nb_pending_free = 0;
        s->pending_free_overflow = false;
    }
    return ret;
}

static struct qcow2_cache_entry *find_entry(struct qcow2_cache *c, const uint8_t *table)
{
    for (size_t i = 0; i < c->count; i++)
        if (c->entries[i].data == table)
            return &c->entries[i];
    return NULL;
}

/* Return the cached table `ce` (fresh: zeroed and dirty). */
static void cache_hit(struct qcow2_state *s, struct qcow2_cache *c, size_t i, bool fresh,
                      uint8_t **table)
{
    struct qcow2_cache_entry *ce = &c->entries[i];
    ce->lru = ++c->clock;
    if (fresh) {
        memset(ce->data, 0, s->cluster_size);
        ce->dirty = true;
    }
    c->last = i;
    *table = ce->data;
}

int qcow2_cache_get(struct qcow2_state *s, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **table, struct err *e)
{
    /* Walks (map, check, a copy) ask for the same table many times in a
     * row: look at the last one returned before scanning them all. */
    if (offset && c->last < c->count && c->entries[c->last].offset == offset) {
        cache_hit(s, c, c->last, fresh, table);
        return 0;
    }
    struct qcow2_cache_entry *victim = NULL;
    for (size_t i = 0; i < c->count; i++) {
        struct qcow2_cache_entry *ce = &c->entries[i];
        if (ce->offset == offset) {
            cache_hit(s, c, i, fresh, table);
            return 0;
        }
        if (!victim || (victim->offset && (!ce->offset || ce->lru < victim->lru)))
            victim = ce;
    }
    if (victim->dirty) {
        int ret = flush_dependency(s, c, e);
        if (ret == 0)
            ret = qcow2_pwrite_checked(s, own_kind(c), victim->offset, victim->data,
                                       s->cluster_size, e);
        if (ret < 0)
            return ret;
        victim->dirty = false;
    }
    victim->offset = 0;
    if (fresh) {
        memset(victim->data, 0, s->cluster_size);
        victim->dirty = true;
    } else {
        int ret = transport_pread(s->bs->file, offset, victim->data, s->cluster_size, e);
        if (ret < 0)
            return ret;
    }
    victim->offset = offset;
    victim->lru = ++c->clock;
    c->last = (size_t)(victim - c->entries);
    *table = victim->data;
    return 0;
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    struct qcow2_cache_entry *ce = find_entry(c, table);
    if (ce)
        ce->dirty = true;
}

void qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset)
{
    for (size_t i = 0; i < c->count; i++)
        if (c->entries[i].offset == offset) {
            c->entries[i].offset = 0;
            c->entries[i].dirty = false;
        }
}
