/* NBD URIs (doc/uri.md in NetworkBlockDevice/nbd). */
#include "nbd/nbd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

bool nbd_uri_is_nbd(const char *s)
{
    return strncmp(s, "nbd:", 4) == 0 || strncmp(s, "nbds:", 5) == 0 ||
           strncmp(s, "nbd+", 4) == 0 || strncmp(s, "nbds+", 5) == 0;
}

void nbd_uri_free(struct nbd_uri *u)
{
    free(u->host);
    free(u->port);
    free(u->socket);
    free(u->export_name);
    memset(u, 0, sizeof(*u));
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n); NUL bytes (%00) are refused. */
static char *percent_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = i + 2 < n ? hex_value(s[i + 1]) : -1;
        int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
        if (lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi << 4 | lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

static int bad_uri(const char *s, const char *why, struct err *e)
{
    return err_set(e, EINVAL, "%s: invalid NBD URI: %s", s, why);
}

static int refuse_scheme(const char *s, const char *scheme, struct err *e)
{
    if (strncmp(scheme, "nbds", 4) == 0)
        return err_set(e, ENOTSUP, "%s: NBD over TLS (nbds://) is not supported: imgtool has "
                       "no TLS library; bridge it with a local proxy, e.g. 'nbdkit -U SOCK nbd "
                       "uri=%s' or stunnel, and use nbd+unix:///EXPORT?socket=SOCK", s, s);
    return err_set(e, ENOTSUP, "%s: unsupported NBD URI scheme '%s' (use nbd://, nbd+tcp:// "
                   "or nbd+unix://)", s, scheme);
}

/* The authority part: [host] or host, then :port. */
static int parse_authority(const char *s, const char *a, size_t n, struct nbd_uri *u,
                           struct err *e)
{
    const char *end = a + n, *colon;
    const char *host = a, *host_end;
    if (n && a[0] == '[') {
        host_end = memchr(a, ']', n);
        if (!host_end)
            return bad_uri(s, "unterminated '[' in the host", e);
        host++;
        colon = host_end + 1 < end ? host_end + 1 : NULL;
        if (colon && *colon != ':')
            return bad_uri(s, "junk after ']'", e);
    } else {
        colon = memchr(a, ':', n);
        host_end = colon ? colon : end;
    }
    if (host_end == host)
        return bad_uri(s, "no host (nbd://HOST[:PORT]/EXPORT)", e);
    if (memchr(a, '@', n))
        return bad_uri(s, "user names are not supported", e);
    u->host = strndup(host, (size_t)(host_end - host));
    if (colon) {
        const char *p = colon + 1;
        if (p == end || (size_t)(end - p) > 5 || strspn(p, "0123456789") < (size_t)(end - p))
            return bad_uri(s, "the port must be a number", e);
        u->port = strndup(p, (size_t)(end - p));
        long v = strtol(u->port ? u->port : "0", NULL, 10);
        if (v < 1 || v > 65535)
            return bad_uri(s, "the port must be 1..65535", e);
    } else {
        u->port = strdup("10809");
    }
    return u->host && u->port ? 0 : err_set(e, ENOMEM, "out of memory");
}

/* The query: only socket=PATH, and only (and always) for nbd+unix. */
static int parse_query(const char *s, const char *q, struct nbd_uri *u, struct err *e)
{
    if (!q) {
        if (u->unix_socket)
            return bad_uri(s, "nbd+unix:// needs ?socket=PATH", e);
        return 0;
    }
    if (!u->unix_socket)
        return bad_uri(s, "query parameters are only for nbd+unix:// (?socket=PATH)", e);
    if (strncmp(q, "socket=", 7) != 0 || strchr(q, '&'))
        return bad_uri(s, "the only query parameter is socket=PATH", e);
    u->socket = percent_decode(q + 7, strlen(q + 7));
    if (!u->socket || !u->socket[0])
        return bad_uri(s, "bad socket path", e);
    return 0;
}

int nbd_uri_parse(const char *s, struct nbd_uri *u, struct err *e)
{
    memset(u, 0, sizeof(*u));
    const char *colon = strchr(s, ':');
    size_t slen = colon ? (size_t)(colon - s) : 0;
    char scheme[16] = "";
    if (slen && slen < sizeof(scheme))
        memcpy(scheme, s, slen);
    scheme[slen < sizeof(scheme) ? slen : 0] = '\0';
    if (strcmp(scheme, "nbd+unix") == 0)
        u->unix_socket = true;
    else if (strcmp(scheme, "nbd") != 0 && strcmp(scheme, "nbd+tcp") != 0)
        return refuse_scheme(s, scheme, e);
    if (strncmp(colon, "://", 3) != 0)
        return bad_uri(s, "expected '//' after the scheme", e);
    const char *auth = colon + 3;
    const char *q = strchr(auth, '?');
    if (strchr(auth, '#'))
        return bad_uri(s, "fragments are not allowed", e);
    size_t rest = q ? (size_t)(q - auth) : strlen(auth);
    const char *slash = memchr(auth, '/', rest);
    size_t alen = slash ? (size_t)(slash - auth) : rest;
    int ret;
    if (u->unix_socket) {
        if (alen)
            ret = bad_uri(s, "nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)", e);
        else
            ret = 0;
    } else {
        ret = parse_authority(s, auth, alen, u, e);
    }
    if (ret == 0) {
        const char *name = slash ? slash + 1 : auth + alen;
        size_t nlen = (size_t)(auth + rest - name);
        u->export_name = percent_decode(name, nlen);
        if (!u->export_name)
            ret = bad_uri(s, "bad %-escape in the export name", e);
        else if (strlen(u->export_name) > 4096)
            ret = bad_uri(s, "export name longer than 4096 bytes", e);
    }
    if (ret == 0)
        ret = parse_query(s, q ? q + 1 : NULL, u, e);
    if (ret < 0)
        nbd_uri_free(u);
    return ret;
}

static bool same_socket(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) == 0 && stat(b, &sb) == 0)
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    return strcmp(a, b) == 0;
}

bool nbd_uri_same(const struct nbd_uri *a, const struct nbd_uri *b)
{
    if (a->unix_socket != b->unix_socket || strcmp(a->export_name, b->export_name) != 0)
        return false;
    if (a->unix_socket)
        return same_socket(a->socket, b->socket);
    return strcasecmp(a->host, b->host) == 0 && strtol(a->port, NULL, 10) ==
           strtol(b->port, NULL, 10);
}

/* QEMU's nbd_refresh_filename: the port always written, an empty export
 * name without its '/', IPv6 addresses in brackets.  The export name is
 * written as it is, as QEMU does. */
char *nbd_uri_canonical(const struct nbd_uri *u)
{
    char *s = NULL;
    const char *slash = u->export_name[0] ? "/" : "";
    int r;
    if (u->unix_socket)
        r = asprintf(&s, "nbd+unix://%s%s?socket=%s", slash, u->export_name, u->socket);
    else
        r = asprintf(&s, strchr(u->host, ':') ? "nbd://[%s]:%s%s%s" : "nbd://%s:%s%s%s",
                     u->host, u->port, slash, u->export_name);
    return r < 0 ? NULL : s;
}
