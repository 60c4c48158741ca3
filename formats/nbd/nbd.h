/* The NBD client: URIs (uri.c), connections (client.c) and the NBD
 * transport under the raw driver (transport.h).
 *
 * URIs follow doc/uri.md of NetworkBlockDevice/nbd:
 *   nbd://HOST[:PORT]/EXPORT  nbd+tcp://...   (TCP, port 10809 by default)
 *   nbd+unix:///EXPORT?socket=PATH            (a Unix domain socket)
 * The export name is the path after the first '/', percent-decoded.
 * nbds:// (TLS) and vsock are refused with a message saying how to bridge.
 *
 * A transport keeps one or more connections (multi-conn, when the server
 * advertises it); each connection has a reader thread that matches replies
 * to requests by cookie, so any number of threads may issue requests at
 * once (transport.h).  Every reply field is validated with the codec
 * (proto.h); a protocol violation, an EOF or a server silent for longer
 * than the timeout fails the connection and every request on it. */
#ifndef IMGTOOL_NBD_H
#define IMGTOOL_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include "transport.h"
#include "util.h"

#define NBD_DEFAULT_TIMEOUT 30      /* seconds */

struct nbd_uri {
    bool unix_socket;
    char *host;         /* TCP: host name or address (no brackets); NULL for unix */
    char *port;         /* TCP: service, "10809" by default */
    char *socket;       /* unix: socket path */
    char *export_name;  /* decoded, may be "" */
};

/* Whether `s` starts with an NBD URI scheme (nbd:, nbds:, nbd+...:). */
bool nbd_uri_is_nbd(const char *s);
/* Parse; one-line errors name the URI.  Free with nbd_uri_free. */
int nbd_uri_parse(const char *s, struct nbd_uri *u, struct err *e);
void nbd_uri_free(struct nbd_uri *u);
/* The URI as QEMU spells it (its info "filename"), malloc'ed. */
char *nbd_uri_canonical(const struct nbd_uri *u);
/* Whether two parsed URIs name the same export of the same server. */
bool nbd_uri_same(const struct nbd_uri *a, const struct nbd_uri *b);

/* Open the export as a transport (read-write if `writable`). */
int nbd_transport_open(const char *uri, bool writable, const struct transport_opts *o,
                       struct transport **out, struct err *e);

/* The meta contexts the server offers for the URI's export (NULL-terminated
 * malloc'ed array of malloc'ed names), from NBD_OPT_LIST_META_CONTEXT. */
int nbd_list_meta_contexts(const char *uri, const struct transport_opts *o, char ***names,
                           struct err *e);

/* Block status of one negotiated meta context (one of transport_opts'
 * nbd_contexts, or "base:allocation"): the flags of the run at `off` and
 * its length (<= bytes).  -ENOENT when the server did not agree to the
 * context.  t must be an NBD transport. */
int nbd_context_status(struct transport *t, const char *context, uint64_t off, uint64_t bytes,
                       uint32_t *flags, uint64_t *run, struct err *e);
/* Whether t is an NBD transport. */
bool nbd_is_transport(const struct transport *t);
/* Transmission flags and connections in use (for info and tests). */
uint16_t nbd_transport_flags(const struct transport *t);
unsigned nbd_transport_connections(const struct transport *t);

#endif
