/* Transports (transport.h): opening the right one for a name, and the
 * calls that dispatch through the vtable. */
#include "transport.h"
#include "file.h"
#include "nbd/nbd.h"

#include <errno.h>
#include <string.h>

bool transport_name_is_uri(const char *name)
{
    return nbd_uri_is_nbd(name);
}

int transport_open(const char *name, unsigned hostfile_flags, const struct transport_opts *o,
                   struct transport **out, struct err *e)
{
    static const struct transport_opts defaults = { 0 };
    if (!o)
        o = &defaults;
    if (nbd_uri_is_nbd(name))
        return nbd_transport_open(name, (hostfile_flags & HOSTFILE_RDWR) != 0, o, out, e);
    struct hostfile *f;
    int ret = hostfile_open(name, hostfile_flags, &f, e);
    if (ret < 0)
        return ret;
    f->fault = o->fault;
    *out = &f->tp;
    return 0;
}

void transport_close(struct transport *t)
{
    if (t)
        t->ops->close(t);
}

struct hostfile *transport_hostfile(struct transport *t)
{
    return t && t->ops == &file_transport_ops ? (struct hostfile *)t : NULL;
}

bool transport_same(struct transport *a, struct transport *b)
{
    return a->ops == b->ops && a->ops->same(a, b);
}

bool transport_is_named(struct transport *t, const char *name)
{
    /* A path never names a network transport and a URI never a file. */
    if (transport_name_is_uri(name) != (t->ops != &file_transport_ops))
        return false;
    return t->ops->is_named(t, name);
}

int transport_preadv(struct transport *t, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e)
{
    return t->ops->preadv(t, off, iov, iovcnt, e);
}

int transport_pwritev(struct transport *t, uint64_t off, const struct iovec *iov, int iovcnt,
                      struct err *e)
{
    return t->ops->pwritev(t, off, iov, iovcnt, e);
}

int transport_pread(struct transport *t, uint64_t off, void *buf, size_t len, struct err *e)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    return t->ops->preadv(t, off, &iov, 1, e);
}

int transport_pwrite(struct transport *t, uint64_t off, const void *buf, size_t len,
                     struct err *e)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return t->ops->pwritev(t, off, &iov, 1, e);
}

int transport_flush(struct transport *t, struct err *e)
{
    return t->ops->flush(t, e);
}

int transport_size(struct transport *t, uint64_t *size, struct err *e)
{
    return t->ops->size(t, size, e);
}

int transport_allocated_size(struct transport *t, uint64_t *size, struct err *e)
{
    if (!t->ops->allocated_size)
        return err_set(e, ENOTSUP, "%s: allocated size unknown", t->name);
    return t->ops->allocated_size(t, size, e);
}

int transport_truncate(struct transport *t, uint64_t size, struct err *e)
{
    if (!t->ops->truncate)
        return err_set(e, ENOTSUP, "%s: cannot be resized (%s)", t->name, t->ops->name);
    return t->ops->truncate(t, size, e);
}

int transport_write_zeroes(struct transport *t, uint64_t off, uint64_t len, unsigned flags,
                           struct err *e)
{
    return t->ops->write_zeroes(t, off, len, flags, e);
}

int transport_preallocate(struct transport *t, uint64_t off, uint64_t len, bool full,
                          struct err *e)
{
    struct hostfile *f = transport_hostfile(t);
    if (!f)
        return err_set(e, ENOTSUP, "%s: preallocation needs a host file", t->name);
    return hostfile_preallocate(f, off, len, full, e);
}

int transport_map_read(struct transport *t, uint64_t off, size_t len, struct transport_view *v,
                       struct err *e)
{
    struct hostfile *f = transport_hostfile(t);
    *v = (struct transport_view){ 0 };
    return f ? hostfile_map_read(f, off, len, v, e) : -ENOTSUP;
}

void transport_unmap(struct transport_view *v)
{
    hostfile_unmap(v);
}

int transport_copy_range(struct transport *dst, uint64_t dst_off, struct transport *src,
                         uint64_t src_off, uint64_t len, struct err *e)
{
    struct hostfile *d = transport_hostfile(dst), *s = transport_hostfile(src);
    if (!d || !s)
        return err_set(e, ENOTSUP, "%s: copy offloading needs two host files", dst->name);
    return hostfile_copy_range(d, dst_off, s, src_off, len, e);
}

int transport_discard(struct transport *t, uint64_t off, uint64_t len, struct err *e)
{
    return t->ops->discard ? t->ops->discard(t, off, len, e) : 0;
}

int transport_data_status(struct transport *t, uint64_t off, uint64_t bytes, unsigned *flags,
                          uint64_t *run, struct err *e)
{
    return t->ops->data_status(t, off, bytes, flags, run, e);
}

void transport_defer_flushes(struct transport *t, bool defer)
{
    if (t->ops->defer_flushes)
        t->ops->defer_flushes(t, defer);
}

bool transport_has_dirty_bitmaps(const struct transport *t)
{
    return t->ops->dirty_bitmaps != NULL;
}

int transport_dirty_bitmaps(struct transport *t, char ***names, size_t *count, struct err *e)
{
    if (!t->ops->dirty_bitmaps) {
        *names = NULL;
        *count = 0;
        return 0;
    }
    return t->ops->dirty_bitmaps(t, names, count, e);
}

int transport_dirty_status(struct transport *t, const char *bitmap, uint64_t off,
                           uint64_t bytes, bool *dirty, uint64_t *run, struct err *e)
{
    if (!t->ops->dirty_status)
        return err_set(e, ENOTSUP, "%s: keeps no bitmaps", t->name);
    return t->ops->dirty_status(t, bitmap, off, bytes, dirty, run, e);
}

int transport_top_layer_status(struct transport *t, uint64_t off, uint64_t bytes, bool *top,
                               uint64_t *run, struct err *e)
{
    if (!t->ops->top_layer_status)
        return -ENOTSUP;
    return t->ops->top_layer_status(t, off, bytes, top, run, e);
}

bool transport_can_zero_fast(struct transport *t)
{
    return t->ops->can_zero_fast && t->ops->can_zero_fast(t);
}
