/* The options of a mirror job as `imgtool mirror` spells them, turned into
 * struct mirror_params: shared by `imgtool mirror` and `imgtool serve
 * --mirror`, so that one spelling means one thing in both. */
#ifndef IMGTOOL_MIRROR_OPTIONS_H
#define IMGTOOL_MIRROR_OPTIONS_H

#include "cmd/cmd.h"
#include "mirror/job.h"

struct mirror_options {
    const char *sync, *bitmap, *bitmap_mode, *target_format, *mode, *speed, *buf_size;
    const char *on_source_error, *on_target_error;
    int max_in_flight;
    struct kvopts *target_opts;     /* -o */
    /* The source is an NBD export: its bitmap is the server's, left
     * alone unless --sync=incremental asks otherwise. */
    bool network_source;
    /* Which sync modes the command offers (usage message). */
    const char *sync_names;
};

/* Fill `p` (source and target left alone).  Returns -1 to go on, or the
 * exit status of a usage error (printed). */
int mirror_options_apply(struct cmdline *cl, const struct mirror_options *o,
                         struct mirror_params *p);

#endif
