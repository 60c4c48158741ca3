/* Sockets for the NBD client (socket.h). */
#include "nbd/socket.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Wait until fd is ready for `events`, at most timeout_s seconds. */
static int wait_ready(int fd, short events, unsigned timeout_s)
{
    struct pollfd p = { .fd = fd, .events = events };
    for (;;) {
        int r = poll(&p, 1, timeout_s ? (int)timeout_s * 1000 : -1);
        if (r > 0)
            return 0;
        if (r == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

static void set_timeouts(int fd, unsigned timeout_s)
{
    struct timeval tv = { .tv_sec = timeout_s };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* connect() without blocking longer than the timeout. */
static int connect_bounded(int fd, const struct sockaddr *sa, socklen_t len, unsigned timeout_s)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int ret = 0;
    if (connect(fd, sa, len) < 0) {
        if (errno != EINPROGRESS)
            ret = -errno;
        else if ((ret = wait_ready(fd, POLLOUT, timeout_s)) == 0) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            ret = -soerr;
        }
    }
    fcntl(fd, F_SETFL, fl);
    return ret;
}

static int connect_unix(const struct nbd_uri *u, unsigned timeout_s, const char *peer,
                        struct err *e)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (strlen(u->socket) >= sizeof(sun.sun_path))
        return err_set(e, ENAMETOOLONG, "%s: socket path is too long", peer);
    strcpy(sun.sun_path, u->socket);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_errno(e, errno, "%s: socket", peer);
    int ret = connect_bounded(fd, (struct sockaddr *)&sun, sizeof(sun), timeout_s);
    if (ret < 0) {
        close(fd);
        return err_errno(e, -ret, "%s: cannot connect to %s", peer, u->socket);
    }
    return fd;
}

static int connect_tcp(const struct nbd_uri *u, unsigned timeout_s, const char *peer,
                       struct err *e)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res;
    int r = getaddrinfo(u->host, u->port, &hints, &res);
    if (r != 0)
        return err_set(e, EHOSTUNREACH, "%s: cannot resolve %s: %s", peer, u->host,
                       gai_strerror(r));
    int ret = -ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            ret = -errno;
            continue;
        }
        ret = connect_bounded(fd, a->ai_addr, a->ai_addrlen, timeout_s);
        if (ret == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            freeaddrinfo(res);
            return fd;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return err_errno(e, -ret, "%s: cannot connect to %s port %s", peer, u->host, u->port);
}

int nbd_socket_connect(const struct nbd_uri *u, unsigned timeout_s, const char *peer,
                       struct err *e)
{
    int fd = u->unix_socket ? connect_unix(u, timeout_s, peer, e)
                            : connect_tcp(u, timeout_s, peer, e);
    if (fd >= 0)
        set_timeouts(fd, timeout_s);
    return fd;
}

int nbd_socket_read(int fd, void *buf, size_t n, unsigned timeout_s, const char *peer,
                    struct err *e)
{
    uint8_t *p = buf;
    /* Take what has arrived first, and poll (for the timeout) only when
     * nothing has: with requests in flight the next reply is usually
     * there already, and a poll before every recv doubles the calls. */
    while (n) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r == 0)
            return err_set(e, ECONNRESET, "%s: the server closed the connection", peer);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return err_errno(e, errno, "%s: read from the server", peer);
        int ret = wait_ready(fd, POLLIN, timeout_s);
        if (ret == -ETIMEDOUT)
            return err_set(e, ETIMEDOUT, "%s: no answer from the server for %u s (timeout)",
                           peer, timeout_s);
        if (ret < 0)
            return err_errno(e, -ret, "%s: poll", peer);
    }
    return 0;
}

int nbd_socket_writev(int fd, const struct iovec *iov, int iovcnt, const char *peer,
                      struct err *e)
{
    struct iovec cur[16];
    while (iovcnt > 0) {
        int n = iovcnt < 16 ? iovcnt : 16;
        memcpy(cur, iov, sizeof(*cur) * (size_t)n);
        size_t total = iov_size(cur, n);
        size_t done = 0;
        struct iovec *c = cur;
        int cn = n;
        while (done < total) {
            struct msghdr m = { .msg_iov = c, .msg_iovlen = (size_t)cn };
            ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return err_set(e, ETIMEDOUT, "%s: the server does not read requests "
                                   "(timeout)", peer);
                return err_errno(e, errno, "%s: write to the server", peer);
            }
            done += (size_t)r;
            while (cn && (size_t)r >= c->iov_len) {
                r -= (ssize_t)c->iov_len;
                c++;
                cn--;
            }
            if (cn) {
                c->iov_base = (char *)c->iov_base + r;
                c->iov_len -= (size_t)r;
            }
        }
        iov += n;
        iovcnt -= n;
    }
    return 0;
}

int nbd_socket_write(int fd, const void *buf, size_t n, const char *peer, struct err *e)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = n };
    return nbd_socket_writev(fd, &iov, 1, peer, e);
}
