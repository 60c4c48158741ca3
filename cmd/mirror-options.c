#include "cmd/mirror-options.h"

#include <string.h>

static int apply_sync(struct cmdline *cl, const struct mirror_options *o,
                      struct mirror_params *p)
{
    bool incremental = false;
    if (o->sync && mirror_parse_sync(o->sync, &p->sync, &incremental) < 0)
        return cmd_usage_error(cl, "--sync must be %s", o->sync_names);
    /* A URI's bitmap is the server's: read, never cleared (see job.c). */
    p->bitmap_mode = o->network_source && !incremental ? MIRROR_BITMAP_NEVER
                                                       : MIRROR_BITMAP_ON_SUCCESS;
    if (o->bitmap_mode) {
        if (mirror_parse_bitmap_mode(o->bitmap_mode, &p->bitmap_mode) < 0)
            return cmd_usage_error(cl, "--bitmap-mode must be on-success, always or never");
        if (incremental && p->bitmap_mode != MIRROR_BITMAP_ON_SUCCESS)
            return cmd_usage_error(cl, "--sync=incremental means --bitmap-mode=on-success; "
                                   "use --sync=bitmap for other modes");
    }
    if ((p->sync == MIRROR_SYNC_BITMAP) != (o->bitmap != NULL))
        return cmd_usage_error(cl, o->bitmap ? "--bitmap needs --sync=bitmap or incremental"
                                             : "--sync=%s needs --bitmap=NAME", o->sync);
    if (o->bitmap_mode && !o->bitmap)
        return cmd_usage_error(cl, "--bitmap-mode needs --bitmap");
    p->bitmap = o->bitmap;
    return -1;
}

static int apply_copy_settings(struct cmdline *cl, const struct mirror_options *o,
                               struct mirror_params *p)
{
    if (o->mode && mirror_parse_target_mode(o->mode, &p->target_mode) < 0)
        return cmd_usage_error(cl, "--mode must be existing, absolute-paths or "
                               "relative-paths");
    if ((o->on_source_error &&
         mirror_parse_error_action(o->on_source_error, &p->on_source_error) < 0) ||
        (o->on_target_error &&
         mirror_parse_error_action(o->on_target_error, &p->on_target_error) < 0))
        return cmd_usage_error(cl, "--on-source-error and --on-target-error take report, "
                               "ignore or retry");
    int status;
    uint64_t v;
    if (o->speed) {
        if ((status = cmd_parse_size_arg(cl, "speed", o->speed, &v)) >= 0)
            return status;
        p->speed = v;
    }
    if (o->buf_size && (status = cmd_parse_buf_size(cl, o->buf_size, &p->buf_size)) >= 0)
        return status;
    if (o->max_in_flight < 0 || o->max_in_flight > COPY_MAX_IN_FLIGHT)
        return cmd_usage_error(cl, "--max-in-flight must be between 1 and 64");
    p->max_in_flight = o->max_in_flight;
    return -1;
}

int mirror_options_apply(struct cmdline *cl, const struct mirror_options *o,
                         struct mirror_params *p)
{
    int status = apply_sync(cl, o, p);
    if (status < 0)
        status = apply_copy_settings(cl, o, p);
    if (status >= 0)
        return status;
    p->target_format = o->target_format;
    p->target_opts = o->target_opts;
    /* -o backing_file=...,backing_fmt=... as in qemu-img: the new target is
     * backed by that image (relative to the target) instead. */
    p->target_backing = kvopts_get(o->target_opts, "backing_file");
    p->target_backing_format = kvopts_get(o->target_opts, "backing_fmt");
    if (p->target_backing_format && !p->target_backing)
        return cmd_usage_error(cl, "-o backing_fmt needs -o backing_file");
    return -1;
}
