/* Active mirror: the live mirror job of `imgtool serve --mirror`, as QEMU's
 * drive-mirror of a disk in use (seeds active-mirror-2017.txt,
 * drive-mirror-review-2012.txt).  While clients keep writing to the served
 * image, a background pass copies what is dirty (every write made since
 * the job started, plus what the sync mode asks for) to the target.  In
 * write-blocking mode each client write is also written to the target
 * before it completes, so the job converges; the unaligned edges of a
 * client write stay dirty and the background pass copies them.  Once
 * nothing is dirty and the target is flushed the job is READY, and stays
 * in sync until it is completed or cancelled.
 *
 * CONTRACT between the job (mirror/active.c) and its drivers (cmd/serve.c,
 * the control socket mirror/control.c): written before both, keep it.
 *
 * Threads: the job runs its background pass in a thread of its own.  Every
 * function below may be called from any thread, concurrently with client
 * I/O on the source and with each other; they return once the request is
 * taken (complete and cancel: once the job has finished, see below).
 * Events are delivered from the job's thread or from a client's request
 * thread, never concurrently (the job serialises them). */
#ifndef IMGTOOL_MIRROR_ACTIVE_H
#define IMGTOOL_MIRROR_ACTIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/blockdev.h"
#include "mirror/job.h"

enum active_copy_mode {
    ACTIVE_COPY_BACKGROUND,     /* background pass only; may never converge */
    ACTIVE_COPY_WRITE_BLOCKING, /* client writes reach the target before they complete */
};

enum active_status {            /* QMP's block job states, by name */
    ACTIVE_RUNNING,             /* "running" */
    ACTIVE_READY,               /* "ready": in sync, target flushed */
    ACTIVE_COMPLETING,          /* "waiting"/"pending": last pass after complete */
    ACTIVE_CONCLUDED,           /* "concluded": completed, failed or cancelled */
};

struct active_mirror_params {
    const char *id;                     /* job id ("device" in QMP); "mirror0" by default */
    struct blockdev *source;            /* the served image, open read-write */
    /* Target and options as `imgtool mirror` spells them: target,
     * target_format, target_opts, sync (FULL, TOP or BITMAP), bitmap,
     * bitmap_mode, target_mode, on_target_error, speed, buf_size,
     * max_in_flight.  source/source_format are unused (source above). */
    struct mirror_params mirror;
    enum active_copy_mode copy_mode;
    void (*event)(void *opaque, const struct mirror_event *ev);
    void *opaque;
};

struct active_mirror_info {             /* query-block-jobs */
    const char *id;
    enum active_status status;
    enum active_copy_mode copy_mode;
    uint64_t offset, len;               /* QMP's progress: done, and done + still dirty */
    uint64_t remaining;                 /* dirty bytes now (grows as clients write) */
    uint64_t speed;
    bool ready;
    const char *error;                  /* CONCLUDED after a failure, else NULL */
};

struct active_mirror;

/* Prepare the target (a new one under a temporary name), start tracking
 * client writes on `source`, start the background pass.  Emits STARTED. */
int active_mirror_start(const struct active_mirror_params *p, struct active_mirror **out,
                        struct err *e);

/* block-job-complete: allowed only when READY (-EBUSY otherwise, with a
 * message).  Drains client writes, copies what is left, flushes the
 * target, renames a new target into place, clears bitmap bits as the mode
 * says, emits COMPLETED.  After it returns 0 the caller may keep serving
 * from the target (it is in sync) or stop.  (mirror/active.c: from then
 * until active_mirror_free, client writes to the source fail with EIO, so
 * that none reaches the source alone while the caller switches to the
 * target; reads go on.) */
int active_mirror_complete(struct active_mirror *m, struct err *e);

/* As active_mirror_complete, to serve the target in the source's place
 * (serve --on-complete=switch): the job does not close its target but
 * hands it over in *target (mirror_job_end's handover: flushed, renamed
 * into place if new, read-write with its bitmaps in use, as the served
 * image is opened), so that it is never without its locks; the caller
 * closes it.  *target is NULL when it fails. */
int active_mirror_complete_handover(struct active_mirror *m, struct blockdev **target,
                                    struct err *e);

/* Before a complete that is to switch the export to the target: 0 if the
 * target, as the job has it open, has a consistent bitmap for each of the
 * `n` names (the -B contexts the clients may have chosen), else
 * -ENOENT/-EINVAL naming it; -EBUSY once the job is ending. */
int active_mirror_check_switch(struct active_mirror *m, const char *const *bitmaps, size_t n,
                               struct err *e);

/* block-job-cancel: stop the job, leave the target consistent (flushed),
 * remove a new target unless the job was READY, leave bitmaps as their
 * mode says for a cancelled job (the bitmap keeps what is still to copy,
 * so a later run resumes).  Emits CANCELLED.  (mirror/active.c: -EINVAL
 * once the job has concluded; a failure while cancelling is returned.) */
int active_mirror_cancel(struct active_mirror *m, struct err *e);

/* block-job-set-speed (bytes per second, 0 = unlimited) and
 * block-job-change (copy mode, switchable while running as QEMU 8.2 allows). */
int active_mirror_set_speed(struct active_mirror *m, uint64_t speed, struct err *e);
int active_mirror_set_copy_mode(struct active_mirror *m, enum active_copy_mode mode,
                                struct err *e);

void active_mirror_query(struct active_mirror *m, struct active_mirror_info *info);

/* After COMPLETED/FAILED/CANCELLED (or to give up at exit: cancels first). */
void active_mirror_free(struct active_mirror *m);

#endif
