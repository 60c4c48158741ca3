/* imgtool serve --mirror --on-complete=switch: complete the mirror and
 * serve its target in place of the source, under the connected clients,
 * as QEMU's block-job-complete pivots a device to the mirror's target.
 *
 * The steps (serve_switch), with the export quiesced (formats/nbd/
 * server.h: requests from every connection wait, those running finish):
 * the job's last pass and the target's flush, the target handed over by
 * the job still open (active_mirror_complete_handover: read-write, its
 * backing chain, its locks never released, its bitmaps in use, as serve
 * opens an image; under serve --cache=none the job wrote it with O_DIRECT
 * already), the gate's image replaced, the job dismissed, then requests
 * resume on the target and the source is closed (flushed, bitmaps stored,
 * locks released) before the switched event.  Nothing the clients
 * negotiated changes: the target has the source's size (the job checked
 * it) and, before anything is done, each bitmap offered with -B is
 * checked to exist in the target (else the switch is refused and the job
 * stays READY).  If the target cannot take the source's place after the
 * job completed, the source is served on (writable again, the job gone)
 * and a switch-failed event says why.
 *
 * Threads: called from the control socket's thread with the control
 * lock held (cmd/serve-control.h), so that no other job command and no
 * server stop's end of the job (serve_mirror_finish) runs meanwhile; the
 * server's own threads only wait at the gate. */
#ifndef IMGTOOL_SERVE_SWITCH_H
#define IMGTOOL_SERVE_SWITCH_H

#include "cmd/cmd.h"
#include "cmd/serve-mirror.h"
#include "formats/nbd/server.h"

#define SERVE_MAX_BITMAPS 64

/* One export's image and the bitmaps it offers (-B), as cmd/serve.c keeps
 * them; after a switch, the target's. */
struct served {
    struct blockdev *bs;
    struct dirty_bitmap *bitmaps[SERVE_MAX_BITMAPS];
    size_t nbitmaps;
    struct nbd_export_gate *gate;   /* the mirrored export's, else NULL */
};

/* What a completed mirror is followed by (--on-complete). */
enum serve_on_complete { SERVE_ON_COMPLETE_STOP, SERVE_ON_COMPLETE_SWITCH };

struct serve_switch {
    struct served *image;           /* the mirrored export's */
    const char *export_name;
    struct serve_mirror *mirror;
    bool defer_flushes;             /* --cache=unsafe */
    enum output_mode mode;
};

/* The job is READY.  0 once the target is served (events completed,
 * switched); an error with the job still READY (a -B bitmap the target
 * lacks), or after the job failed or the target could not take the
 * source's place (the source is served on, the job gone). */
int serve_switch(struct serve_switch *sw, struct err *e);

/* {"event": NAME, KEY: VALUE, ...} on stdout under --output=json: key and
 * value strings in pairs, NULL-terminated; a NULL value skips its key. */
void serve_print_event(enum output_mode mode, const char *name, ...);

#endif
