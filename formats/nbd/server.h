/* The NBD server: fixed newstyle handshake, option haggling and the
 * transmission phase over already-listening sockets, on the shared codec
 * (formats/nbd/proto.h).  cmd/serve.c opens the images, listens, and glues
 * this to the command line; the server itself never prints: it reports
 * clients coming and going through the event callback.
 *
 * Threads: nbd_server_run runs the accept loop in the calling thread; each
 * connection gets a thread that negotiates and then reads requests, and a
 * few worker threads that carry them out concurrently (the block layer
 * serialises overlapping ones, blockdev.h) and send the replies, in any
 * order.  What a connection holds is bounded: at most
 * NBD_SERVER_MAX_REQUESTS requests and max_bytes_in_flight bytes of data
 * (write payloads read, read data to send) at once; the reader stops
 * reading the socket until there is room again.  Beside those, a
 * connection keeps up to SERVER_SPARE_PAYLOADS idle write buffers of at
 * most 1 MiB for reuse (server-requests.c): 16 MiB at most, outside the
 * bytes in flight, freed with the connection.  A client that breaks the
 * protocol (bad magic, an oversized write, an option too long) is dropped;
 * a request that is merely wrong (out of range, unknown flags or command,
 * a write to a read-only export) gets an error reply.
 *
 * Specification: doc/proto.md of NetworkBlockDevice/nbd; QEMU's contexts
 * (qemu:dirty-bitmap:NAME, qemu:allocation-depth): docs/interop/nbd.rst. */
#ifndef IMGTOOL_NBD_SERVER_H
#define IMGTOOL_NBD_SERVER_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blockdev.h"

struct dirty_bitmap;
struct nbd_export_gate;

struct nbd_server_export {
    const char *name;           /* "" is the default export */
    const char *description;    /* NBD_INFO_DESCRIPTION, may be NULL */
    struct blockdev *bs;        /* open; read-only unless writable (with a gate: unused) */
    bool writable;
    bool unmap;                 /* TRIM and zero writes may deallocate (--discard=unmap) */
    bool allocation_depth;      /* offer qemu:allocation-depth */
    bool multi_conn;            /* advertise NBD_FLAG_CAN_MULTI_CONN */
    /* Offered as qemu:dirty-bitmap:NAME (NAME = the bitmap's name).  With
     * a gate, only nbitmaps counts: the bitmaps are the gate's. */
    struct dirty_bitmap *const *bitmaps;
    size_t nbitmaps;
    /* NULL: bs and bitmaps are served for the server's whole life.  Else
     * the image (and bitmaps) in the gate, which its owner may replace
     * under the connected clients (below). */
    struct nbd_export_gate *gate;
};

enum nbd_server_event_type {
    NBD_SERVER_CLIENT_CONNECTED,    /* handshake done: export chosen */
    NBD_SERVER_CLIENT_DISCONNECTED, /* error: why it was dropped, or NULL */
};

struct nbd_server_event {
    enum nbd_server_event_type type;
    const char *peer;               /* "unix socket" or "ADDR:PORT" */
    const char *export_name;        /* NULL if it never chose one */
    const char *error;
};

struct nbd_server_params {
    const struct nbd_server_export *exports;
    size_t nexports;
    const int *listen_fds;          /* listening sockets, owned by the caller */
    size_t nlisten;
    unsigned max_clients;           /* at once (-e); 0 means 1 */
    /* Keep serving when the last client leaves (-t); otherwise return
     * once a client came and all are gone. */
    bool persistent;
    unsigned workers;               /* per connection; 0 means 4 */
    size_t max_bytes_in_flight;     /* per connection; 0 means 64 MiB */
    /* Set asynchronously (a signal) to stop: no new clients or requests,
     * those in flight are finished and answered, then every connection is
     * closed and nbd_server_run returns 0.  Read by connection threads:
     * a C11 atomic. */
    const atomic_int *stop;
    /* Called from connection threads, never concurrently (the server
     * serialises the calls).  May be NULL. */
    void (*event)(void *opaque, const struct nbd_server_event *ev);
    void *opaque;
};

enum {
    NBD_SERVER_MAX_REQUESTS = 64,   /* per connection, queued or running */
    NBD_SERVER_MIN_BLOCK = 1,
    NBD_SERVER_PREF_BLOCK = 4096,
    NBD_SERVER_MAX_BLOCK = 32 << 20, /* NBD_MAX_PAYLOAD */
    NBD_SERVER_HANDSHAKE_LIMIT = 10, /* seconds to choose an export (as QEMU's) */
    NBD_SERVER_SEND_LIMIT = 60,     /* seconds a reply may wait for the client */
};

/* Serve until *stop is set (or, without persistent, the clients are gone).
 * Returns 0, or a negative errno if accepting failed for good. */
int nbd_server_run(const struct nbd_server_params *p, struct err *e);

/* --- Replacing an export's image under its clients ---
 *
 * `imgtool serve --mirror --on-complete=switch` pivots an export to the
 * mirror's target as QEMU's block-job-complete does: the clients stay
 * connected and the size and contexts they negotiated stay valid.  The
 * gate is how: every server thread that touches the export's image (a
 * worker carrying out a read, write, zero write, trim, flush, cache or
 * block status request, from its start until its reply is sent; a
 * connection thread naming a bitmap context in the handshake) holds the
 * gate's image meanwhile, and none keeps a pointer to it afterwards.
 * The size the clients see is the gate's, fixed when it is made.
 *
 * Who may call what:
 *  - nbd_export_gate_new before the server runs (the export's image and
 *    its offered bitmaps, in the order of nbd_server_export.bitmaps);
 *    nbd_export_gate_free after nbd_server_run has returned.
 *  - The owner, from a thread that is not one of the server's (it would
 *    wait for itself), and one owner at a time: nbd_export_gate_quiesce
 *    holds back every request that has not started on the export, from
 *    all connections (they stay queued: nothing fails, the bounds of
 *    server.h still apply, the reader stops reading once they are full),
 *    and returns once those running have finished and been answered.
 *    From then until nbd_export_gate_resume no server thread touches the
 *    image: the owner may flush it, complete a job on it, close it.
 *    nbd_export_gate_replace (only while quiesced) makes `bs` the image
 *    served from the resume on: it must have the same size and, for each
 *    offered bitmap, one of the same name (-EINVAL naming what differs;
 *    the gate is then unchanged).  The old image is the owner's again.
 *  - Other exports, the accept loop and the handshakes of clients that
 *    choose other exports go on meanwhile; a stop (params.stop) waits
 *    for the resume, since it finishes the requests in flight.
 *  - The server never frees or closes an image, before or after a swap. */
int nbd_export_gate_new(struct blockdev *bs, struct dirty_bitmap *const *bitmaps,
                        size_t nbitmaps, struct nbd_export_gate **out, struct err *e);
void nbd_export_gate_free(struct nbd_export_gate *g);
void nbd_export_gate_quiesce(struct nbd_export_gate *g);
int nbd_export_gate_replace(struct nbd_export_gate *g, struct blockdev *bs,
                            struct dirty_bitmap *const *bitmaps, struct err *e);
void nbd_export_gate_resume(struct nbd_export_gate *g);

/* --- For tests/fuzz: the parsers a hostile client reaches --- */
/* Feed one client's bytes (handshake then requests) through a connection
 * whose socket is `fd` (a socketpair end): returns when the client is done
 * or dropped. */
void nbd_server_serve_fd(const struct nbd_server_params *p, int fd, const char *peer);

#endif
