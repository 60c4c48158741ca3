/* The NBD server's accept loop and connection life cycle (see server.h);
 * the handshake is in server-handshake.c, requests in server-requests.c. */
#include "nbd/server-conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int conn_read(struct server_conn *c, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = recv(c->fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int conn_write(struct server_conn *c, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            atomic_store(&c->broken, true);
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void conn_fail(struct server_conn *c, const char *fmt, ...)
{
    if (c->error[0])
        return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* The codec's messages name the peer already. */
    size_t n = strlen(c->peer);
    if (strncmp(msg, c->peer, n) == 0 && msg[n] == ':')
        snprintf(c->error, sizeof(c->error), "%s", msg);
    else
        snprintf(c->error, sizeof(c->error), "%s: %s", c->peer, msg);
}

static void report(struct server_conn *c, enum nbd_server_event_type type)
{
    if (!c->params->event)
        return;
    struct nbd_server_event ev = {
        .type = type, .peer = c->peer, .export_name = c->exp ? c->exp->name : NULL,
        .error = c->error[0] ? c->error : NULL,
    };
    pthread_mutex_lock(c->event_lock);
    c->params->event(c->params->opaque, &ev);
    pthread_mutex_unlock(c->event_lock);
}

static void conn_init(struct server_conn *c, const struct nbd_server_params *p, int fd,
                      pthread_mutex_t *event_lock)
{
    memset(c, 0, sizeof(*c));
    c->params = p;
    c->fd = fd;
    c->event_lock = event_lock;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->changed, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    atomic_init(&c->broken, false);
}

static void conn_destroy(struct server_conn *c)
{
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->changed);
    pthread_mutex_destroy(&c->send_lock);
    free(c->selected);
}

static void set_timeout(int fd, int option, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

/* Handshake, transmission, then the disconnect event; the socket stays
 * open (the caller closes it).  A client gets NBD_SERVER_HANDSHAKE_LIMIT
 * seconds to choose an export (it holds one of the -e slots meanwhile),
 * and one that reads no reply for NBD_SERVER_SEND_LIMIT seconds is
 * dropped (so that it cannot stall a stop for ever). */
static void conn_serve(struct server_conn *c)
{
    set_timeout(c->fd, SO_RCVTIMEO, NBD_SERVER_HANDSHAKE_LIMIT);
    set_timeout(c->fd, SO_SNDTIMEO, NBD_SERVER_SEND_LIMIT);
    int ret = server_handshake(c);
    set_timeout(c->fd, SO_RCVTIMEO, 0);
    if (ret == 0) {
        report(c, NBD_SERVER_CLIENT_CONNECTED);
        server_transmission(c);
    }
    report(c, NBD_SERVER_CLIENT_DISCONNECTED);
}

void nbd_server_serve_fd(const struct nbd_server_params *p, int fd, const char *peer)
{
    pthread_mutex_t event_lock = PTHREAD_MUTEX_INITIALIZER;
    struct server_conn c;
    conn_init(&c, p, fd, &event_lock);
    snprintf(c.peer, sizeof(c.peer), "%s", peer);
    conn_serve(&c);
    conn_destroy(&c);
}

/* --- The accept loop --- */

struct client {
    struct server_conn conn;
    pthread_t thread;
    atomic_bool done;
    struct client *next;
};

static void *client_main(void *arg)
{
    struct client *cl = arg;
    conn_serve(&cl->conn);
    atomic_store(&cl->done, true);
    return NULL;
}

static void peer_name(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    snprintf(buf, len, "unix socket");
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
    }
}

struct accept_state {
    const struct nbd_server_params *p;
    pthread_mutex_t event_lock;
    struct client *clients;
    unsigned nclients;
    bool had_client;
};

/* Join the clients whose threads are done; with `all`, first stop every
 * connection from reading (in-flight requests still get their replies). */
static void reap_clients(struct accept_state *s, bool all)
{
    if (all)
        for (struct client *cl = s->clients; cl; cl = cl->next)
            shutdown(cl->conn.fd, SHUT_RD);
    for (struct client **pp = &s->clients; *pp;) {
        struct client *cl = *pp;
        if (!all && !atomic_load(&cl->done)) {
            pp = &cl->next;
            continue;
        }
        pthread_join(cl->thread, NULL);
        close(cl->conn.fd);
        conn_destroy(&cl->conn);
        *pp = cl->next;
        free(cl);
        s->nclients--;
    }
}

static void start_client(struct accept_state *s, int fd)
{
    struct client *cl = calloc(1, sizeof(*cl));
    if (!cl) {
        close(fd);
        return;
    }
    conn_init(&cl->conn, s->p, fd, &s->event_lock);
    peer_name(fd, cl->conn.peer, sizeof(cl->conn.peer));
    atomic_init(&cl->done, false);
    if (pthread_create(&cl->thread, NULL, client_main, cl) != 0) {
        conn_destroy(&cl->conn);
        close(fd);
        free(cl);
        return;
    }
    cl->next = s->clients;
    s->clients = cl;
    s->nclients++;
    s->had_client = true;
}

static bool should_stop(const struct accept_state *s)
{
    if (s->p->stop && atomic_load(s->p->stop))
        return true;
    return !s->p->persistent && s->had_client && s->nclients == 0;
}

/* Wait (a short while, so that finished clients and the stop flag are
 * noticed) for a listening socket to have a client; accept it. */
static int accept_one(struct accept_state *s, unsigned max_clients, struct err *e)
{
    struct pollfd pfd[8];
    size_t n = s->p->nlisten < 8 ? s->p->nlisten : 8;
    for (size_t i = 0; i < n; i++)
        pfd[i] = (struct pollfd){ .fd = s->p->listen_fds[i], .events = POLLIN };
    /* At the client limit, clients wait in the listen backlog. */
    int ready = poll(pfd, s->nclients < max_clients ? (nfds_t)n : 0, 100);
    if (ready < 0 && errno != EINTR)
        return err_errno(e, errno, "cannot wait for clients");
    for (size_t i = 0; ready > 0 && i < n; i++) {
        if (!(pfd[i].revents & POLLIN))
            continue;
        int fd = accept4(pfd[i].fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            start_client(s, fd);
        else if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED &&
                 errno != EMFILE && errno != ENFILE)
            return err_errno(e, errno, "cannot accept a client");
    }
    return 0;
}

int nbd_server_run(const struct nbd_server_params *p, struct err *e)
{
    struct accept_state s = { .p = p };
    pthread_mutex_init(&s.event_lock, NULL);
    unsigned max_clients = p->max_clients ? p->max_clients : 1;
    int ret = 0;
    while (ret == 0 && !should_stop(&s)) {
        ret = accept_one(&s, max_clients, e);
        reap_clients(&s, false);
    }
    reap_clients(&s, true);
    pthread_mutex_destroy(&s.event_lock);
    return ret;
}
