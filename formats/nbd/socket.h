/* Sockets for the NBD client: connecting to a URI's address and full
 * reads and writes, each bounded by a timeout so that a dead or stuck peer
 * gives an error instead of a hang.  Internal to formats/nbd/. */
#ifndef IMGTOOL_NBD_SOCKET_H
#define IMGTOOL_NBD_SOCKET_H

#include <stddef.h>
#include <sys/uio.h>

#include "nbd/nbd.h"

/* Connect to u's server within timeout_s seconds; returns the descriptor
 * (blocking, close-on-exec) or a negative errno.  `peer` names the URI in
 * messages. */
int nbd_socket_connect(const struct nbd_uri *u, unsigned timeout_s, const char *peer,
                       struct err *e);
/* Read exactly n bytes; waits at most timeout_s seconds for each piece
 * (0 = forever).  EOF is -ECONNRESET, a timeout -ETIMEDOUT. */
int nbd_socket_read(int fd, void *buf, size_t n, unsigned timeout_s, const char *peer,
                    struct err *e);
/* Write the whole iovec (the socket has SO_SNDTIMEO set by connect). */
int nbd_socket_writev(int fd, const struct iovec *iov, int iovcnt, const char *peer,
                      struct err *e);
int nbd_socket_write(int fd, const void *buf, size_t n, const char *peer, struct err *e);

#endif
