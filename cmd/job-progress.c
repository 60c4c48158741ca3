#include "cmd/job-progress.h"

void job_progress_event(struct progress *bar, bool want, const struct mirror_event *ev)
{
    switch (ev->type) {
    case MIRROR_EVENT_STARTED:
        progress_init(bar, want, ev->total);
        break;
    case MIRROR_EVENT_PROGRESS:
        progress_update(bar, ev->done);
        break;
    case MIRROR_EVENT_READY:
        progress_finish(bar);
        bar->enabled = false;   /* finished: nothing more to draw */
        break;
    default:
        break;
    }
}
