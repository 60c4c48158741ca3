/* The NBD client's block status cache: the descriptors of recent
 * NBD_CMD_BLOCK_STATUS replies, one reply per meta context kept, so that
 * walking an export costs one round trip per reply instead of one per
 * extent, and queries of one context (a dirty bitmap) do not evict those of
 * another (base:allocation).  Internal to formats/nbd/.
 *
 * Threads: every call may come from any thread (the copy engine's
 * dispatcher and workers at once); one mutex guards the cache. */
#ifndef IMGTOOL_NBD_EXTENT_CACHE_H
#define IMGTOOL_NBD_EXTENT_CACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "nbd/proto.h"

#define NBD_CACHE_EXTENTS 4096      /* descriptors kept of one reply */
#define NBD_CACHE_CONTEXTS 4        /* contexts cached at once (LRU) */

struct nbd_cached_reply {
    int context;                /* the transport's context index; -1: empty */
    uint64_t start;             /* offset of the first descriptor */
    uint32_t n;
    uint64_t *ends;             /* end offset of each descriptor (ascending) */
    uint32_t *flags;
    uint64_t used;              /* LRU clock */
};

struct nbd_extent_cache {
    pthread_mutex_t mu;
    struct nbd_cached_reply replies[NBD_CACHE_CONTEXTS];
    uint64_t clock;
    uint64_t generation;        /* bumped by every invalidation */
};

void nbd_extent_cache_init(struct nbd_extent_cache *c);
void nbd_extent_cache_destroy(struct nbd_extent_cache *c);
/* Forget everything: the export is being written.  A writer calls it
 * before sending and again once the write completed, so that no reply to a
 * query that overlapped the write is kept. */
void nbd_extent_cache_invalidate(struct nbd_extent_cache *c);
/* The generation to pass to nbd_extent_cache_store, taken before the
 * query is sent. */
uint64_t nbd_extent_cache_generation(struct nbd_extent_cache *c);
/* The flags of the descriptor that covers `off` for `context`, and the
 * bytes from `off` to its end (at most `bytes`); false when not cached. */
bool nbd_extent_cache_lookup(struct nbd_extent_cache *c, int context, uint64_t off,
                             uint64_t bytes, uint32_t *flags, uint64_t *run);
/* Keep a reply: `n` descriptors from `start` (replacing the context's
 * previous reply, or the least recently used one), unless the cache was
 * invalidated since `generation` was taken.  -ENOMEM leaves the cache
 * without it. */
int nbd_extent_cache_store(struct nbd_extent_cache *c, uint64_t generation, int context,
                           uint64_t start, const struct nbd_extent *ext, uint32_t n);

#endif
