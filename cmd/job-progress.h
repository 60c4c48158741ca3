/* The progress bar of commands that run mirror jobs (mirror, export): one
 * bar per job, drawn from the job's events. */
#ifndef IMGTOOL_JOB_PROGRESS_H
#define IMGTOOL_JOB_PROGRESS_H

#include "cmd/cmd.h"
#include "mirror/job.h"

/* Start, advance or end `bar` for a STARTED, PROGRESS or READY event (other
 * events are ignored); `want` says whether a bar was asked for. */
void job_progress_event(struct progress *bar, bool want, const struct mirror_event *ev);

#endif
