/* One client connection of the NBD server (private to formats/nbd/server*.c):
 * the socket, what the handshake agreed, and the request queue shared by
 * the reader and the workers. */
#ifndef IMGTOOL_NBD_SERVER_CONN_H
#define IMGTOOL_NBD_SERVER_CONN_H

#include <pthread.h>
#include <stdatomic.h>

#include "nbd/proto.h"
#include "nbd/server.h"

/* Meta contexts a connection may select (SET_META_CONTEXT); the context
 * id sent to the client is the index + 1 in this order: base:allocation,
 * qemu:allocation-depth, then the export's bitmaps. */
enum { CTX_BASE_ALLOCATION, CTX_ALLOCATION_DEPTH, CTX_FIRST_BITMAP };

enum { SERVER_SPARE_PAYLOADS = 16 };    /* write buffers kept per connection */

struct server_request {
    struct nbd_request req;
    uint8_t *payload;           /* write data (req.length bytes) */
    size_t payload_size;        /* ... in a buffer of this many */
    size_t cost;                /* bytes counted in flight */
    uint32_t error;             /* found invalid by the reader: reply this */
    struct server_request *next;
};

struct server_conn {
    const struct nbd_server_params *params;
    int fd;
    char peer[80];
    pthread_mutex_t *event_lock;    /* the server's, serialises params->event */
    /* Agreed in the handshake. */
    const struct nbd_server_export *exp;
    bool no_zeroes;
    bool structured;
    uint16_t flags;                 /* transmission flags sent */
    bool *selected;                 /* per context, CTX_* then bitmaps */
    size_t ncontexts;
    const struct nbd_server_export *meta_exp;   /* the export `selected` is for */
    /* Requests: the reader queues them, workers take them. */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct server_request *head, *tail;
    unsigned in_flight;             /* queued or running */
    size_t bytes_in_flight;
    bool reader_done;
    /* Write payload buffers kept for the next writes (server-requests.c),
     * under `lock`. */
    uint8_t *spare[SERVER_SPARE_PAYLOADS];
    size_t spare_size[SERVER_SPARE_PAYLOADS];
    unsigned nspare;
    pthread_mutex_t send_lock;      /* one reply at a time on the socket */
    atomic_bool broken;             /* sending failed: drop the client */
    char error[400];                /* why the client was dropped ("" if not) */
};

/* I/O on the connection's socket: 0, or -1 on EOF or error. */
int conn_read(struct server_conn *c, void *buf, size_t len);
int conn_write(struct server_conn *c, const void *buf, size_t len);
/* Record why the client is dropped (the first reason wins). */
void conn_fail(struct server_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The handshake: 0 once an export is chosen (transmission follows), -1 to
 * close (the client aborted or misbehaved; conn_fail says why). */
int server_handshake(struct server_conn *c);
/* The transmission phase until the client disconnects or is dropped. */
void server_transmission(struct server_conn *c);
size_t server_context_count(const struct nbd_server_export *exp);

/* The export's image as a request sees it (server-gate.c): taken by
 * export_acquire, which waits while the owner has the export quiesced,
 * and held until export_release; nothing of it may be used after that.
 * Without a gate, the export's own bs and bitmaps. */
struct export_image {
    struct blockdev *bs;
    struct dirty_bitmap *const *bitmaps;    /* the export's nbitmaps */
};
void export_acquire(const struct nbd_server_export *x, struct export_image *img);
void export_release(const struct nbd_server_export *x);
/* The size the clients negotiated (never changes, even across a swap). */
uint64_t export_size(const struct nbd_server_export *x);

#endif
