/* An export's image, replaceable under its clients (server.h, "Replacing
 * an export's image"): a count of the server threads using the image now,
 * and a flag that holds new ones back while the owner swaps it. */
#include "nbd/server-conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap/dirty.h"

struct nbd_export_gate {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct blockdev *bs;
    struct dirty_bitmap **bitmaps;  /* nbitmaps, fixed at creation */
    size_t nbitmaps;
    uint64_t size;                  /* fixed at creation */
    unsigned users;                 /* server threads between acquire and release */
    bool holding;                   /* new users wait (quiesce called) */
    bool quiesced;                  /* ... and none is left (quiesce returned) */
};

int nbd_export_gate_new(struct blockdev *bs, struct dirty_bitmap *const *bitmaps,
                        size_t nbitmaps, struct nbd_export_gate **out, struct err *e)
{
    struct nbd_export_gate *g = calloc(1, sizeof(*g));
    if (g && nbitmaps)
        g->bitmaps = calloc(nbitmaps, sizeof(*g->bitmaps));
    if (!g || (nbitmaps && !g->bitmaps)) {
        free(g);
        return err_set(e, ENOMEM, "out of memory");
    }
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->changed, NULL);
    g->bs = bs;
    g->size = bs->size;
    g->nbitmaps = nbitmaps;
    for (size_t i = 0; i < nbitmaps; i++)
        g->bitmaps[i] = bitmaps[i];
    *out = g;
    return 0;
}

void nbd_export_gate_free(struct nbd_export_gate *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->changed);
    free(g->bitmaps);
    free(g);
}

void nbd_export_gate_quiesce(struct nbd_export_gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->holding = true;
    while (g->users)
        pthread_cond_wait(&g->changed, &g->lock);
    g->quiesced = true;
    pthread_mutex_unlock(&g->lock);
}

/* The clients negotiated the size and the contexts' names: the new image
 * must keep them. */
static int check_replacement(const struct nbd_export_gate *g, const struct blockdev *bs,
                             struct dirty_bitmap *const *bitmaps, struct err *e)
{
    if (bs->size != g->size)
        return err_set(e, EINVAL, "%s: size %llu differs from the export's %llu",
                       bs->filename, (unsigned long long)bs->size,
                       (unsigned long long)g->size);
    for (size_t i = 0; i < g->nbitmaps; i++)
        if (!bitmaps || !bitmaps[i] ||
            strcmp(dirty_bitmap_name(bitmaps[i]), dirty_bitmap_name(g->bitmaps[i])))
            return err_set(e, EINVAL, "%s: has no bitmap '%s' (the export offers "
                           "qemu:dirty-bitmap:%s)", bs->filename,
                           dirty_bitmap_name(g->bitmaps[i]), dirty_bitmap_name(g->bitmaps[i]));
    return 0;
}

int nbd_export_gate_replace(struct nbd_export_gate *g, struct blockdev *bs,
                            struct dirty_bitmap *const *bitmaps, struct err *e)
{
    pthread_mutex_lock(&g->lock);
    int ret = !g->quiesced ? err_set(e, EBUSY, "the export is not quiesced")
                           : check_replacement(g, bs, bitmaps, e);
    if (ret == 0) {
        g->bs = bs;
        for (size_t i = 0; i < g->nbitmaps; i++)
            g->bitmaps[i] = bitmaps[i];
    }
    pthread_mutex_unlock(&g->lock);
    return ret;
}

void nbd_export_gate_resume(struct nbd_export_gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->holding = false;
    g->quiesced = false;
    pthread_cond_broadcast(&g->changed);
    pthread_mutex_unlock(&g->lock);
}

/* --- Server threads (server-conn.h) --- */

void export_acquire(const struct nbd_server_export *x, struct export_image *img)
{
    struct nbd_export_gate *g = x->gate;
    if (!g) {
        *img = (struct export_image){ x->bs, x->bitmaps };
        return;
    }
    pthread_mutex_lock(&g->lock);
    while (g->holding)
        pthread_cond_wait(&g->changed, &g->lock);
    g->users++;
    *img = (struct export_image){ g->bs, g->bitmaps };
    pthread_mutex_unlock(&g->lock);
}

void export_release(const struct nbd_server_export *x)
{
    struct nbd_export_gate *g = x->gate;
    if (!g)
        return;
    pthread_mutex_lock(&g->lock);
    if (--g->users == 0)
        pthread_cond_broadcast(&g->changed);
    pthread_mutex_unlock(&g->lock);
}

uint64_t export_size(const struct nbd_server_export *x)
{
    return x->gate ? x->gate->size : x->bs->size;
}
