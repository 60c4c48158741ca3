/* Transports: what the bytes of an image live on, under the format
 * drivers.  An image is a host file (formats/file.c) or an NBD connection
 * (formats/nbd/client.c); a format driver (raw.c, qcow2/) does all its I/O
 * through bs->file with the transport_* calls below and never knows which.
 *
 * Each transport is one `const struct transport_ops` vtable; the generic
 * layer (blockdev.c) opens the right one for a name (transport_open) and
 * applies what only files have (locks, probing, backing chains) by asking
 * transport_hostfile().
 *
 * Threads: preadv, pwritev, write_zeroes, discard and data_status may be
 * called concurrently (the copy engine's workers); the others are called
 * while no I/O is in flight (blockdev.h). */
#ifndef IMGTOOL_TRANSPORT_H
#define IMGTOOL_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util.h"

struct transport;
struct hostfile;

/* Flags for transport_write_zeroes. */
enum {
    TRANSPORT_ZERO_MAY_UNMAP = 1 << 0,  /* deallocating is fine if reads stay zero */
    TRANSPORT_ZERO_FAST      = 1 << 1,  /* fail with -ENOTSUP unless it is fast */
};

/* Flags of transport_data_status. */
enum {
    TRANSPORT_DATA = 1 << 0,    /* stored data (else a hole) */
    TRANSPORT_ZERO = 1 << 1,    /* reads are known to return zeroes */
};

/* Test hook for crash tests, owned by the caller of blk_open (cmd/ fills
 * it from IMGTOOL_FAULT_AFTER_WRITES): the process kills itself (SIGKILL)
 * instead of issuing write number limit + 1 to any host file opened with
 * it, so that a test can interrupt a command at each write in turn. */
struct fault_injection {
    long limit;                 /* -1: off */
    atomic_long writes;         /* writes issued so far */
};

/* Settings for opening a transport, from the user or the environment
 * (cmd/ fills them; libraries never read the environment). */
struct transport_opts {
    struct fault_injection *fault;  /* NULL: no fault injection */
    unsigned nbd_connections;       /* NBD connections to open (multi-conn); 0 = 1 */
    unsigned nbd_timeout;           /* seconds a server may stay silent; 0 = default */
    /* Extra NBD meta contexts to negotiate ("qemu:dirty-bitmap:NAME");
     * NULL-terminated, may be NULL. */
    const char *const *nbd_contexts;
};

struct transport_ops {
    const char *name;           /* "file", "nbd" */
    int (*preadv)(struct transport *t, uint64_t off, const struct iovec *iov, int iovcnt,
                  struct err *e);
    int (*pwritev)(struct transport *t, uint64_t off, const struct iovec *iov, int iovcnt,
                   struct err *e);
    /* Everything written before is durable when this returns. */
    int (*flush)(struct transport *t, struct err *e);
    int (*size)(struct transport *t, uint64_t *size, struct err *e);
    /* Bytes stored (a file's st_blocks * 512); -ENOTSUP when unknown. */
    int (*allocated_size)(struct transport *t, uint64_t *size, struct err *e);
    int (*truncate)(struct transport *t, uint64_t size, struct err *e);
    int (*write_zeroes)(struct transport *t, uint64_t off, uint64_t len, unsigned flags,
                        struct err *e);
    /* A hint: afterwards reads return zeroes or the old data. */
    int (*discard)(struct transport *t, uint64_t off, uint64_t len, struct err *e);
    /* TRANSPORT_DATA / TRANSPORT_ZERO of the run at `off` and its length
     * (at most `bytes`, > 0). */
    int (*data_status)(struct transport *t, uint64_t off, uint64_t bytes, unsigned *flags,
                       uint64_t *run, struct err *e);
    /* Dirty bitmaps the storage itself keeps (an NBD server's
     * qemu:dirty-bitmap:NAME contexts), read-only to us; NULL for none.
     * dirty_bitmaps lists their names (malloc'ed array of malloc'ed
     * strings); dirty_status says whether the run at `off` is dirty. */
    int (*dirty_bitmaps)(struct transport *t, char ***names, size_t *count, struct err *e);
    int (*dirty_status)(struct transport *t, const char *bitmap, uint64_t off, uint64_t bytes,
                        bool *dirty, uint64_t *run, struct err *e);
    /* Storage that is itself layered (an NBD export of a qcow2 chain that
     * offers qemu:allocation-depth): whether its top layer allocates the
     * run at `off` (*top) and the run's length (at most `bytes`).  NULL,
     * or -ENOTSUP, when the storage cannot tell its layers apart. */
    int (*top_layer_status)(struct transport *t, uint64_t off, uint64_t bytes, bool *top,
                            uint64_t *run, struct err *e);
    /* Whether write_zeroes with TRANSPORT_ZERO_FAST can succeed at all
     * (an NBD server that advertises NBD_FLAG_SEND_FAST_ZERO); may be NULL
     * (it cannot). */
    bool (*can_zero_fast)(struct transport *t);
    /* For a new image under its temporary name (blockdev.h); may be NULL. */
    void (*defer_flushes)(struct transport *t, bool defer);
    /* Whether `name` (a path or a URI as a user writes it) designates this
     * very transport: the same file however it is named, the same server
     * address and export. */
    bool (*is_named)(struct transport *t, const char *name);
    /* Whether two open transports of this type are the same storage. */
    bool (*same)(struct transport *a, struct transport *b);
    void (*close)(struct transport *t);
};

struct transport {
    const struct transport_ops *ops;
    const char *name;           /* path or URI, for messages (owned by the transport) */
};

/* Open `name`: an NBD URI (nbd://, nbd+unix://, ...) or a host file path.
 * `hostfile_flags` (HOSTFILE_*) apply to files; for NBD only
 * HOSTFILE_RDWR matters. */
int transport_open(const char *name, unsigned hostfile_flags, const struct transport_opts *o,
                   struct transport **out, struct err *e);
void transport_close(struct transport *t);
/* Whether `name` is a URI that names a network transport (not a path). */
bool transport_name_is_uri(const char *name);
/* The host file under t, or NULL when t is not a file. */
struct hostfile *transport_hostfile(struct transport *t);
/* Whether a and b are the same storage (false for different types). */
bool transport_same(struct transport *a, struct transport *b);
bool transport_is_named(struct transport *t, const char *name);

int transport_preadv(struct transport *t, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e);
int transport_pwritev(struct transport *t, uint64_t off, const struct iovec *iov, int iovcnt,
                      struct err *e);
int transport_pread(struct transport *t, uint64_t off, void *buf, size_t len, struct err *e);
int transport_pwrite(struct transport *t, uint64_t off, const void *buf, size_t len,
                     struct err *e);
int transport_flush(struct transport *t, struct err *e);
int transport_size(struct transport *t, uint64_t *size, struct err *e);
int transport_allocated_size(struct transport *t, uint64_t *size, struct err *e);
int transport_truncate(struct transport *t, uint64_t size, struct err *e);
int transport_write_zeroes(struct transport *t, uint64_t off, uint64_t len, unsigned flags,
                           struct err *e);
int transport_discard(struct transport *t, uint64_t off, uint64_t len, struct err *e);
/* hostfile_preallocate (file.h); -ENOTSUP naming t for other transports. */
int transport_preallocate(struct transport *t, uint64_t off, uint64_t len, bool full,
                          struct err *e);
int transport_data_status(struct transport *t, uint64_t off, uint64_t bytes, unsigned *flags,
                          uint64_t *run, struct err *e);
/* A read-only mapping of stored bytes (transport_map_read). */
struct transport_view {
    const uint8_t *data;    /* the bytes asked for */
    void *base;             /* the mapping (page aligned); NULL: nothing mapped */
    size_t mapped;          /* its length */
};
/* Map [off, off + len) of t into memory read-only and read it in: the
 * page cache's own pages, which the caller reads without a copy (a
 * compare then costs a third of the CPU time of reading the same bytes).
 * -ENOTSUP without a message where t cannot (hostfile_map_read says when);
 * any failure leaves *v unmapped, and the caller reads instead.  Any
 * thread may call it; transport_unmap undoes it (and does nothing on an
 * unmapped view). */
int transport_map_read(struct transport *t, uint64_t off, size_t len, struct transport_view *v,
                       struct err *e);
void transport_unmap(struct transport_view *v);
/* hostfile_copy_range when both are host files; -ENOTSUP otherwise. */
int transport_copy_range(struct transport *dst, uint64_t dst_off, struct transport *src,
                         uint64_t src_off, uint64_t len, struct err *e);
void transport_defer_flushes(struct transport *t, bool defer);
/* Whether t keeps its own dirty bitmaps (transport_ops.dirty_bitmaps). */
bool transport_has_dirty_bitmaps(const struct transport *t);
int transport_dirty_bitmaps(struct transport *t, char ***names, size_t *count, struct err *e);
int transport_dirty_status(struct transport *t, const char *bitmap, uint64_t off,
                           uint64_t bytes, bool *dirty, uint64_t *run, struct err *e);
/* transport_ops.top_layer_status; -ENOTSUP (no message) when t cannot
 * tell. */
int transport_top_layer_status(struct transport *t, uint64_t off, uint64_t bytes, bool *top,
                               uint64_t *run, struct err *e);
bool transport_can_zero_fast(struct transport *t);

#endif
