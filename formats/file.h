/* Host files: the POSIX layer under every format driver.  Full reads and
 * writes, sparse-aware data/hole status (SEEK_DATA/SEEK_HOLE), zeroing and
 * discarding with fallocate, and QEMU-compatible image locking. */
#ifndef IMGTOOL_FILE_H
#define IMGTOOL_FILE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "transport.h"
#include "util.h"

/* Alignment of buffers, offsets and lengths that O_DIRECT requests use. */
#define DIRECT_ALIGN 4096

enum {
    HOSTFILE_RDWR        = 1 << 0,
    HOSTFILE_DIRECT      = 1 << 1,  /* O_DIRECT */
    HOSTFILE_FORCE_SHARE = 1 << 2,  /* do not ask others to stop writing */
    HOSTFILE_NO_LOCK     = 1 << 3,
    HOSTFILE_CREATE      = 1 << 4,  /* create exclusively (O_CREAT|O_EXCL) */
    /* With RDWR: the write-behind also drops the pages it wrote back
     * (file.c, write_behind_main). */
    HOSTFILE_DROP_BEHIND = 1 << 5,
};

/* QEMU's block permissions (include/block/block-common.h): bit i of a
 * permission set is locked at byte 100 + i ("I use it") or 200 + i ("I do
 * not let others use it") with OFD locks, by QEMU's file-posix driver. */
enum {
    PERM_CONSISTENT_READ = 1 << 0,
    PERM_WRITE           = 1 << 1,
    PERM_WRITE_UNCHANGED = 1 << 2,
    PERM_RESIZE          = 1 << 3,
    PERM_ALL             = 0xf,
};

struct hostfile {
    struct transport tp;    /* first: the transport vtable (file_transport_ops) */
    int fd;
    /* With O_DIRECT: a second, buffered descriptor for requests that are
     * not aligned to DIRECT_ALIGN (O_DIRECT would refuse them). */
    int fd_buffered;
    char *path;
    bool writable;
    bool direct;
    bool is_block_device;
    /* Others may write or resize it under us (opened with
     * HOSTFILE_FORCE_SHARE or HOSTFILE_NO_LOCK): never mapped, as a
     * truncation would turn reads of the mapping into SIGBUS. */
    bool may_change;
    atomic_bool drop_behind;    /* HOSTFILE_DROP_BEHIND (hostfile_keep_page_cache ends it) */
    unsigned perm;      /* permissions we hold (locked at 100 + bit) */
    unsigned shared;    /* permissions we let others hold */
    bool locked;
    /* A new image still under its temporary name: the flushes that order
     * metadata writes are skipped (a crash leaves nothing anyone opens);
     * the final flush comes after hostfile_defer_flushes(f, false). */
    bool flush_deferred;
    /* Something may have been written since the last flush that succeeded
     * (true from the open: the file may hold writes of an earlier
     * descriptor), so that a flush with nothing to do costs no fdatasync
     * (blk_flush before a close that flushes again, a job's final flush
     * after a copy that wrote nothing). */
    atomic_bool unflushed;
    struct fault_injection *fault;  /* test hook (transport.h), or NULL */
    atomic_uint_fast64_t unsynced;  /* bytes written since writeback was last started */
    /* Held around each buffered pwritev of a regular file (file.c:
     * locked_pwritev). */
    pthread_mutex_t buffered_write_lock;
    /* Write-behind (file.c): a thread of the file's own starts the
     * writeback, so that no write waits for it; started at the first
     * WRITE_BEHIND_BYTES written, joined by hostfile_close. */
    pthread_mutex_t wb_lock;        /* the three flags below */
    pthread_cond_t wb_wake;
    pthread_t wb_thread;
    bool wb_started, wb_pending, wb_stop;
};

/* The transport vtable of host files (transport.h). */
extern const struct transport_ops file_transport_ops;

int hostfile_open(const char *path, unsigned flags, struct hostfile **out, struct err *e);
void hostfile_close(struct hostfile *f);

/* Full reads and writes.  Reads past the end of the file return zeroes. */
int hostfile_pread(struct hostfile *f, uint64_t off, void *buf, size_t len, struct err *e);
int hostfile_preadv(struct hostfile *f, uint64_t off, const struct iovec *iov, int iovcnt,
                    struct err *e);
int hostfile_pwrite(struct hostfile *f, uint64_t off, const void *buf, size_t len,
                    struct err *e);
int hostfile_pwritev(struct hostfile *f, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e);
int hostfile_flush(struct hostfile *f, struct err *e);
void hostfile_defer_flushes(struct hostfile *f, bool defer);
/* The file was renamed to `path` (malloc'ed, now f's) while open (a new
 * image put in place): messages name it so from now on.  Only while no
 * other thread uses f. */
void hostfile_renamed(struct hostfile *f, char *path);
/* Stop dropping written pages (HOSTFILE_DROP_BEHIND): the copy is over
 * and the file is read and written as any other from now on. */
void hostfile_keep_page_cache(struct hostfile *f);
int hostfile_size(struct hostfile *f, uint64_t *size, struct err *e);
/* Bytes the file occupies on disk (st_blocks * 512). */
int hostfile_allocated_size(struct hostfile *f, uint64_t *size, struct err *e);
int hostfile_truncate(struct hostfile *f, uint64_t size, struct err *e);
/* Make [off, off+len) read as zeroes: punch a hole with
 * TRANSPORT_ZERO_MAY_UNMAP, else zero the range in place; falls back to
 * writing zeroes, or with TRANSPORT_ZERO_FAST fails with -ENOTSUP. */
int hostfile_write_zeroes(struct hostfile *f, uint64_t off, uint64_t len, unsigned flags,
                          struct err *e);
/* Allocate [off, off+len) on disk, growing the file as needed:
 * preallocation=falloc (posix_fallocate; reads of new blocks return
 * zeroes) or, with `full` (or where fallocate is not supported), by
 * writing zeroes. */
int hostfile_preallocate(struct hostfile *f, uint64_t off, uint64_t len, bool full,
                         struct err *e);
/* Copy len bytes at src_off of src to dst_off of dst inside the kernel
 * (copy_file_range), without passing them through memory.  -ENOTSUP when
 * the kernel or the file systems cannot (across file systems, for
 * example), or when src ends first; bytes copied before stay copied. */
int hostfile_copy_range(struct hostfile *dst, uint64_t dst_off, struct hostfile *src,
                        uint64_t src_off, uint64_t len, struct err *e);
/* transport_map_read for a host file: -ENOTSUP (no message) when the file
 * is open for writing, with O_DIRECT (the user asked to bypass the page
 * cache), or where others may resize it (may_change), when the range is
 * empty or passes the end of the file, or when the kernel cannot read a
 * mapping in (MADV_POPULATE_READ, Linux 5.14); -errno with a message when
 * mapping or reading it in fails (an I/O error, or the file shrank). */
int hostfile_map_read(struct hostfile *f, uint64_t off, size_t len, struct transport_view *v,
                      struct err *e);
void hostfile_unmap(struct transport_view *v);
/* Punch a hole if the file system can; otherwise do nothing (discard is a
 * hint).  Reads of the range then return zeroes or the old data. */
int hostfile_discard(struct hostfile *f, uint64_t off, uint64_t len, struct err *e);
/* Whether `off` is in data or in a hole, and how long that run is (capped at
 * `bytes`).  Past the end of the file is a hole. */
int hostfile_data_status(struct hostfile *f, uint64_t off, uint64_t bytes, bool *is_data,
                         uint64_t *run, struct err *e);

/* Take QEMU-compatible locks for permissions `perm`, refusing others the
 * permissions not in `shared`; fails with -EAGAIN if another process holds
 * a conflicting lock.  Replaces the locks held before. */
int hostfile_lock(struct hostfile *f, unsigned perm, unsigned shared, struct err *e);
void hostfile_unlock(struct hostfile *f);

#endif
