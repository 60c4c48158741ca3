/* imgtool serve --on-complete=switch (serve-switch.h). */
#include "cmd/serve-switch.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "bitmap/dirty.h"
#include "formats/blockdev-bitmaps.h"

void serve_print_event(enum output_mode mode, const char *name, ...)
{
    if (mode != OUTPUT_JSON)
        return;
    va_list ap;
    va_start(ap, name);
    flockfile(stdout);     /* the mirror's events come from its thread */
    printf("{\"event\": \"%s\"", name);
    const char *k;
    while ((k = va_arg(ap, const char *))) {
        const char *v = va_arg(ap, const char *);
        if (!v)
            continue;
        printf(", \"%s\": ", k);
        json_print_string(stdout, v);
    }
    printf("}\n");
    fflush(stdout);
    funlockfile(stdout);
    va_end(ap);
}

/* The target as the job handed it over, with the offered bitmaps found by
 * name (in the export's order); closed if one is missing. */
static int take_target(const struct serve_switch *sw, struct blockdev *bs, struct served *next,
                       struct err *e)
{
    const struct served *old = sw->image;
    if (sw->defer_flushes)
        blk_defer_flushes(bs, true);
    next->bs = bs;
    next->nbitmaps = old->nbitmaps;
    next->gate = old->gate;
    for (size_t i = 0; i < old->nbitmaps; i++) {
        const char *name = dirty_bitmap_name(old->bitmaps[i]);
        next->bitmaps[i] = blk_bitmap_find(bs, name);
        if (!next->bitmaps[i] || dirty_bitmap_inconsistent(next->bitmaps[i])) {
            blk_close(bs);
            next->bs = NULL;
            return err_set(e, ENOENT, "%s: has no consistent bitmap '%s'", sw->mirror->target,
                           name);
        }
    }
    return 0;
}

/* The retired source: flushed, bitmaps stored (not in use any more),
 * closed (its locks go with it).  A failure is only told: the clients'
 * data is in the target, which is served already. */
static void close_source(struct blockdev *bs)
{
    struct err e = { 0 };
    int ret = blk_flush(bs, &e);
    if (ret == 0 && bs->bitmaps_in_use)
        ret = blk_bitmaps_release(bs, &e);
    if (ret < 0)
        cmd_warn("%s: after the switch: %s", bs->filename, e.msg);
    blk_close(bs);
}

static void dismiss_job(struct serve_mirror *m)
{
    active_mirror_free(m->job);
    m->job = NULL;
}

/* After the job completed: its target in the source's place (*source is
 * then the retired image, for the caller to close), or (a bitmap is
 * missing) the source served on. */
static int swap_images(struct serve_switch *sw, struct blockdev *target, struct blockdev **source,
                       struct err *e)
{
    struct served next = { 0 };
    int ret = take_target(sw, target, &next, e);
    /* The job goes first: its write notifier is on the source, and
     * without it the source takes writes again should the swap fail. */
    dismiss_job(sw->mirror);
    if (ret == 0 && (ret = nbd_export_gate_replace(sw->image->gate, next.bs, next.bitmaps,
                                                   e)) < 0)
        blk_close(next.bs);
    if (ret < 0)
        return ret;
    *source = sw->image->bs;
    *sw->image = next;
    return 0;
}

int serve_switch(struct serve_switch *sw, struct err *e)
{
    struct served *img = sw->image;
    struct serve_mirror *m = sw->mirror;
    const char *names[SERVE_MAX_BITMAPS];
    for (size_t i = 0; i < img->nbitmaps; i++)
        names[i] = dirty_bitmap_name(img->bitmaps[i]);
    int ret = active_mirror_check_switch(m->job, names, img->nbitmaps, e);
    if (ret < 0) {
        err_prefix(e, "no switch (the job stays ready): ");
        return ret;
    }
    nbd_export_gate_quiesce(img->gate);
    struct blockdev *target;
    ret = active_mirror_complete_handover(m->job, &target, e);
    if (ret < 0) {
        dismiss_job(m);     /* failed: the source is served on, untracked */
        nbd_export_gate_resume(img->gate);
        return ret;
    }
    struct blockdev *source = NULL;
    ret = swap_images(sw, target, &source, e);
    nbd_export_gate_resume(img->gate);
    /* No server thread uses the source any more: its flush need not hold
     * the clients up. */
    if (source)
        close_source(source);
    if (ret < 0) {
        err_prefix(e, "the mirror completed, but the export '%s' cannot switch to %s (the "
                   "source %s is served on): ", sw->export_name, m->target, img->bs->filename);
        serve_print_event(sw->mode, "switch-failed", "export", sw->export_name, "image",
                          m->target, "error", e->msg, NULL);
        if (sw->mode != OUTPUT_JSON)
            cmd_warn("%s", e->msg);
        return ret;
    }
    serve_print_event(sw->mode, "switched", "export", sw->export_name, "image", m->target,
                      NULL);
    return 0;
}
