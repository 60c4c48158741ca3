/* The NBD client's block status cache (extent-cache.h). */
#include "nbd/extent-cache.h"

#include <errno.h>
#include <stdlib.h>

void nbd_extent_cache_init(struct nbd_extent_cache *c)
{
    pthread_mutex_init(&c->mu, NULL);
    c->clock = 0;
    c->generation = 0;
    for (int i = 0; i < NBD_CACHE_CONTEXTS; i++)
        c->replies[i] = (struct nbd_cached_reply){ .context = -1 };
}

void nbd_extent_cache_destroy(struct nbd_extent_cache *c)
{
    for (int i = 0; i < NBD_CACHE_CONTEXTS; i++) {
        free(c->replies[i].ends);
        free(c->replies[i].flags);
    }
    pthread_mutex_destroy(&c->mu);
}

void nbd_extent_cache_invalidate(struct nbd_extent_cache *c)
{
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < NBD_CACHE_CONTEXTS; i++)
        c->replies[i].context = -1;
    c->generation++;
    pthread_mutex_unlock(&c->mu);
}

uint64_t nbd_extent_cache_generation(struct nbd_extent_cache *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t g = c->generation;
    pthread_mutex_unlock(&c->mu);
    return g;
}

/* The first descriptor that ends after `off` (r->n when none does). */
static uint32_t first_ending_after(const struct nbd_cached_reply *r, uint64_t off)
{
    uint32_t lo = 0, hi = r->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->ends[mid] <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

bool nbd_extent_cache_lookup(struct nbd_extent_cache *c, int context, uint64_t off,
                             uint64_t bytes, uint32_t *flags, uint64_t *run)
{
    bool hit = false;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < NBD_CACHE_CONTEXTS && !hit; i++) {
        struct nbd_cached_reply *r = &c->replies[i];
        if (r->context != context || off < r->start)
            continue;
        uint32_t k = first_ending_after(r, off);
        if (k == r->n)
            continue;
        *flags = r->flags[k];
        *run = r->ends[k] - off < bytes ? r->ends[k] - off : bytes;
        r->used = ++c->clock;
        hit = true;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

/* The context's reply, or else the least recently used (or an empty) one. */
static struct nbd_cached_reply *reply_to_replace(struct nbd_extent_cache *c, int context)
{
    struct nbd_cached_reply *victim = &c->replies[0];
    for (int i = 0; i < NBD_CACHE_CONTEXTS; i++) {
        struct nbd_cached_reply *r = &c->replies[i];
        if (r->context == context)
            return r;
        if (victim->context >= 0 && (r->context < 0 || r->used < victim->used))
            victim = r;
    }
    return victim;
}

int nbd_extent_cache_store(struct nbd_extent_cache *c, uint64_t generation, int context,
                           uint64_t start, const struct nbd_extent *ext, uint32_t n)
{
    if (n > NBD_CACHE_EXTENTS)
        n = NBD_CACHE_EXTENTS;
    int ret = 0;
    pthread_mutex_lock(&c->mu);
    if (generation != c->generation) {
        pthread_mutex_unlock(&c->mu);
        return 0;       /* stale: a write overlapped the query */
    }
    struct nbd_cached_reply *r = reply_to_replace(c, context);
    r->context = -1;
    if (!r->ends && !(r->ends = malloc(NBD_CACHE_EXTENTS * sizeof(*r->ends))))
        ret = -ENOMEM;
    if (!r->flags && !(r->flags = malloc(NBD_CACHE_EXTENTS * sizeof(*r->flags))))
        ret = -ENOMEM;
    if (ret == 0) {
        uint64_t end = start;
        for (uint32_t i = 0; i < n; i++) {
            end += ext[i].length;
            r->ends[i] = end;
            r->flags[i] = ext[i].flags;
        }
        *r = (struct nbd_cached_reply){ .context = context, .start = start, .n = n,
                                        .ends = r->ends, .flags = r->flags,
                                        .used = ++c->clock };
    }
    pthread_mutex_unlock(&c->mu);
    return ret;
}
