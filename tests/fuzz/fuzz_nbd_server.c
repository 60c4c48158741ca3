/* Fuzz target for the NBD server's parsers: the input is what a client
 * sends (handshake, options, requests, write payloads), fed through a
 * socketpair to the server serving a small writable raw image with the
 * meta contexts offered; the replies are read and dropped.  Every input
 * must end (the server drops or finishes the client) without a crash, a
 * hang or a leak.  Built as tests/fuzz/fuzz_open.c is: `make fuzz` for
 * libFuzzer, and a replay program run by `make check` (t653). */

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "formats/blockdev.h"
#include "formats/nbd/server.h"

#define DISK_SIZE (1u << 20)

struct client {
    int fd;
    const uint8_t *data;
    size_t size;
};

/* Send the input, then read replies until the server closes. */
static void *client_main(void *arg)
{
    struct client *c = arg;
    size_t sent = 0;
    uint8_t buf[65536];
    if (!c->size)
        shutdown(c->fd, SHUT_WR);
    for (;;) {
        struct pollfd p = { .fd = c->fd, .events = POLLIN | (sent < c->size ? POLLOUT : 0) };
        if (poll(&p, 1, -1) < 0)
            break;
        if (p.revents & POLLOUT) {
            ssize_t n = send(c->fd, c->data + sent, c->size - sent, MSG_NOSIGNAL);
            if (n < 0)
                break;
            sent += (size_t)n;
            if (sent == c->size)
                shutdown(c->fd, SHUT_WR);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
            if (n <= 0)
                break;
        }
    }
    if (sent < c->size)
        shutdown(c->fd, SHUT_WR);
    return NULL;
}

static struct blockdev *open_disk(int *memfd)
{
    *memfd = memfd_create("fuzz-disk", MFD_CLOEXEC);
    if (*memfd < 0 || ftruncate(*memfd, DISK_SIZE) < 0)
        return NULL;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", *memfd);
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    if (blk_open(path, "raw", BLK_OPEN_RDWR | BLK_OPEN_NO_LOCK, NULL, &bs, &e) < 0)
        return NULL;
    return bs;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int memfd, sv[2];
    struct blockdev *bs = open_disk(&memfd);
    if (!bs || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        blk_close(bs);
        if (memfd >= 0)
            close(memfd);
        return 0;
    }
    struct nbd_server_export x[2] = {
        { .name = "", .description = "fuzz", .bs = bs, .writable = true, .unmap = true,
          .allocation_depth = true },
        { .name = "ro", .bs = bs },
    };
    struct nbd_server_params p = { .exports = x, .nexports = 2, .workers = 2,
                                   .max_bytes_in_flight = 4u << 20 };
    struct client c = { sv[1], data, size };
    pthread_t t;
    if (pthread_create(&t, NULL, client_main, &c) == 0) {
        nbd_server_serve_fd(&p, sv[0], "fuzz");
        shutdown(sv[0], SHUT_RDWR);
        pthread_join(t, NULL);
    }
    close(sv[0]);
    close(sv[1]);
    blk_close(bs);
    close(memfd);
    return 0;
}

#ifdef FUZZ_REPLAY
#include "tests/fuzz/replay-main.h"
#endif
