#include "file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define WRITE_BEHIND_BYTES (16u << 20)

/* Byte offsets of QEMU's permission locks (block/file-posix.c). */
#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

static const char *const perm_names[] = {
    "consistent read", "write", "write unchanged", "resize",
};

/* Images live in regular files and block devices only: a FIFO, socket or
 * character device has no stable contents to read twice, and reading one
 * could block forever. */
static int check_file_type(const char *path, const struct stat *st, struct err *e)
{
    if (S_ISREG(st->st_mode) || S_ISBLK(st->st_mode))
        return 0;
    if (S_ISDIR(st->st_mode))
        return err_set(e, EISDIR, "%s: is a directory, not an image", path);
    const char *what = S_ISFIFO(st->st_mode) ? "a FIFO" : S_ISSOCK(st->st_mode) ? "a socket"
                       : S_ISCHR(st->st_mode) ? "a character device" : "not a regular file";
    return err_set(e, EINVAL, "%s: is %s; an image must be a regular file or a block device",
                   path, what);
}

int hostfile_open(const char *path, unsigned flags, struct hostfile **out, struct err *e)
{
    int oflags = O_CLOEXEC | ((flags & HOSTFILE_RDWR) ? O_RDWR : O_RDONLY);
    if (flags & HOSTFILE_DIRECT)
        oflags |= O_DIRECT;
    if (flags & HOSTFILE_CREATE)
        oflags |= O_CREAT | O_EXCL;
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever
     * (qemu-img hangs there); it is refused below before any I/O. */
    int fd = open(path, oflags | O_NONBLOCK, 0644);
    if (fd < 0)
        return err_errno(e, errno, "%s: cannot open", path);
    struct stat st;
    int ret = fstat(fd, &st) < 0 ? err_errno(e, errno, "%s: cannot stat", path)
                                 : check_file_type(path, &st, e);
    if (ret == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
        ret = err_errno(e, errno, "%s: cannot open", path);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    struct hostfile *f = calloc(1, sizeof(*f));
    if (!f || !(f->path = strdup(path))) {
        free(f);
        close(fd);
        return err_set(e, ENOMEM, "%s: out of memory", path);
    }
    f->tp.ops = &file_transport_ops;
    f->tp.name = f->path;
    pthread_mutex_init(&f->wb_lock, NULL);
    pthread_mutex_init(&f->buffered_write_lock, NULL);
    pthread_cond_init(&f->wb_wake, NULL);
    f->fd = fd;
    f->fd_buffered = -1;
    if (flags & HOSTFILE_DIRECT) {
        f->fd_buffered = open(path, oflags & ~(O_DIRECT | O_CREAT | O_EXCL));
        if (f->fd_buffered < 0) {
            ret = err_errno(e, errno, "%s: cannot open", path);
            hostfile_close(f);
            return ret;
        }
    }
    f->writable = flags & HOSTFILE_RDWR;
    atomic_init(&f->unflushed, f->writable);
    f->direct = flags & HOSTFILE_DIRECT;
    f->is_block_device = S_ISBLK(st.st_mode);
    f->may_change = flags & (HOSTFILE_FORCE_SHARE | HOSTFILE_NO_LOCK);
    atomic_init(&f->drop_behind, f->writable && (flags & HOSTFILE_DROP_BEHIND));
    if (!(flags & HOSTFILE_NO_LOCK)) {
        /* The permissions qemu-img and qemu-io take on an image file: read
         * (and write + resize when writable), and never let another process
         * write or resize under us unless -U was given. */
        unsigned perm = PERM_CONSISTENT_READ;
        unsigned shared = PERM_ALL & ~(PERM_WRITE | PERM_RESIZE);
        if (f->writable)
            perm |= PERM_WRITE | PERM_RESIZE;
        if (flags & HOSTFILE_FORCE_SHARE) {
            shared = PERM_ALL;
        }
        ret = hostfile_lock(f, perm, shared, e);
        if (ret < 0) {
            hostfile_close(f);
            return ret;
        }
    }
    *out = f;
    return 0;
}

static void stop_write_behind(struct hostfile *f);

void hostfile_close(struct hostfile *f)
{
    if (!f)
        return;
    stop_write_behind(f);
    if (f->fd >= 0)
        close(f->fd);   /* closing the descriptor releases its OFD locks */
    if (f->fd_buffered >= 0)
        close(f->fd_buffered);
    pthread_mutex_destroy(&f->wb_lock);
    pthread_mutex_destroy(&f->buffered_write_lock);
    pthread_cond_destroy(&f->wb_wake);
    free(f->path);
    free(f);
}

static int set_byte_lock(int fd, off_t byte, short type)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Does another open file description hold a lock on `byte`? */
static int byte_locked_by_other(int fd, off_t byte, bool *locked)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    *locked = fl.l_type != F_UNLCK;
    return 0;
}

/* Whether descriptor `fd` holds locks (Linux lists them in fdinfo). */
static bool fd_holds_locks(long fd)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%ld", fd);
    FILE *in = fopen(path, "re");
    bool found = false;
    while (in && !found && fgets(line, sizeof(line), in))
        found = !strncmp(line, "lock:", 5);
    if (in)
        fclose(in);
    return found;
}

/* Whether another descriptor of this process holds locks on f's file: OFD
 * locks of two opens of one file conflict even in one process, and such a
 * conflict is permanent (the image is its own target or backing file), not
 * "in use, try later". */
static bool locked_twice_here(const struct hostfile *f)
{
    struct stat mine;
    DIR *d = opendir("/proc/self/fd");
    if (!d || fstat(f->fd, &mine) < 0) {
        if (d)
            closedir(d);
        return false;
    }
    bool found = false;
    for (struct dirent *de; !found && (de = readdir(d));) {
        char *end;
        long fd = strtol(de->d_name, &end, 10);
        struct stat st;
        if (*end || end == de->d_name || fd == f->fd || fd == f->fd_buffered ||
            fd == dirfd(d))
            continue;
        found = fstat((int)fd, &st) == 0 && st.st_dev == mine.st_dev &&
                st.st_ino == mine.st_ino && fd_holds_locks(fd);
    }
    closedir(d);
    return found;
}

static int lock_conflict(struct hostfile *f, unsigned bit, bool shared_side, struct err *e)
{
    if (locked_twice_here(f))
        return err_set(e, EINVAL, "%s: this command uses the image twice (is it its own "
                       "target or backing file?)", f->path);
    /* -U only helps a reader: a writer must wait for the other process. */
    if (shared_side && !f->writable)
        return err_set(e, EAGAIN,
                       "%s: failed to get shared \"%s\" lock: the image is in use by "
                       "another process (stop it, or use -U to read anyway)",
                       f->path, perm_names[bit]);
    return err_set(e, EAGAIN,
                   "%s: failed to get %s\"%s\" lock: the image is in use by another "
                   "process (stop it first)", f->path, shared_side ? "shared " : "",
                   perm_names[bit]);
}

int hostfile_lock(struct hostfile *f, unsigned perm, unsigned shared, struct err *e)
{
    for (unsigned bit = 0; bit < 4; bit++) {
        unsigned p = 1u << bit;
        short type;
        type = (perm & p) ? F_RDLCK : F_UNLCK;
        if (set_byte_lock(f->fd, LOCK_PERM_BASE + bit, type) < 0 && type != F_UNLCK)
            return err_errno(e, errno, "%s: cannot lock image", f->path);
        type = (shared & p) ? F_UNLCK : F_RDLCK;
        if (set_byte_lock(f->fd, LOCK_SHARED_BASE + bit, type) < 0 && type != F_UNLCK)
            return err_errno(e, errno, "%s: cannot lock image", f->path);
    }
    f->perm = perm;
    f->shared = shared;
    f->locked = true;
    /* Conflicts: someone refuses to share what we use, or uses what we
     * refuse to share. */
    for (unsigned bit = 0; bit < 4; bit++) {
        unsigned p = 1u << bit;
        bool locked = false;
        int ret;
        if (perm & p) {
            ret = byte_locked_by_other(f->fd, LOCK_SHARED_BASE + bit, &locked);
            if (ret < 0)
                return err_errno(e, -ret, "%s: cannot test image lock", f->path);
            if (locked) {
                hostfile_unlock(f);
                return lock_conflict(f, bit, false, e);
            }
        }
        if (!(shared & p)) {
            ret = byte_locked_by_other(f->fd, LOCK_PERM_BASE + bit, &locked);
            if (ret < 0)
                return err_errno(e, -ret, "%s: cannot test image lock", f->path);
            if (locked) {
                hostfile_unlock(f);
                return lock_conflict(f, bit, true, e);
            }
        }
    }
    return 0;
}

void hostfile_unlock(struct hostfile *f)
{
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = LOCK_PERM_BASE,
                        .l_len = LOCK_SHARED_BASE + 64 - LOCK_PERM_BASE };
    fcntl(f->fd, F_OFD_SETLK, &fl);
    f->locked = false;
}

int hostfile_pread(struct hostfile *f, uint64_t off, void *buf, size_t len, struct err *e)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    return hostfile_preadv(f, off, &iov, 1, e);
}

int hostfile_pwrite(struct hostfile *f, uint64_t off, const void *buf, size_t len,
                    struct err *e)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return hostfile_pwritev(f, off, &iov, 1, e);
}

#define IOV_BATCH 64

/* Advance an iovec array by `done` bytes, copying it into `cur` (which
 * holds at most IOV_BATCH entries). */
static int iov_advance(const struct iovec **iov, int *iovcnt, size_t *skip, size_t done,
                       struct iovec *cur)
{
    *skip += done;
    while (*iovcnt && *skip >= (*iov)->iov_len) {
        *skip -= (*iov)->iov_len;
        (*iov)++;
        (*iovcnt)--;
    }
    int n = *iovcnt < IOV_BATCH ? *iovcnt : IOV_BATCH;
    for (int i = 0; i < n; i++)
        cur[i] = (*iov)[i];
    if (n) {
        cur[0].iov_base = (char *)cur[0].iov_base + *skip;
        cur[0].iov_len -= *skip;
    }
    return n;
}

/* The descriptor for a request: O_DIRECT only when everything is aligned. */
static int fd_for(const struct hostfile *f, uint64_t off, const struct iovec *iov, int iovcnt)
{
    if (f->fd_buffered < 0)
        return f->fd;
    if (off % DIRECT_ALIGN)
        return f->fd_buffered;
    for (int i = 0; i < iovcnt; i++)
        if ((uintptr_t)iov[i].iov_base % DIRECT_ALIGN || iov[i].iov_len % DIRECT_ALIGN)
            return f->fd_buffered;
    return f->fd;
}

int hostfile_preadv(struct hostfile *f, uint64_t off, const struct iovec *iov, int iovcnt,
                    struct err *e)
{
    int fd = fd_for(f, off, iov, iovcnt);
    struct iovec cur[IOV_BATCH];
    size_t skip = 0;
    int n = iov_advance(&iov, &iovcnt, &skip, 0, cur);
    while (n > 0) {
        ssize_t r = preadv(fd, cur, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return err_errno(e, errno, "%s: read error at offset %llu", f->path,
                             (unsigned long long)off);
        }
        if (r == 0) {
            /* End of file: the rest reads as zeroes, as in QEMU. */
            for (int i = 0; i < n; i++)
                memset(cur[i].iov_base, 0, cur[i].iov_len);
            for (int i = n; i < iovcnt; i++)
                memset(iov[i].iov_base, 0, iov[i].iov_len);
            return 0;
        }
        off += (uint64_t)r;
        n = iov_advance(&iov, &iovcnt, &skip, (size_t)r, cur);
    }
    return 0;
}

/* The file changed (or may have: called after failures too), so the next
 * flush must reach the disk.  Called once the change returned: a flush
 * that starts after it then sees the flag. */
static void note_change(struct hostfile *f)
{
    atomic_store(&f->unflushed, true);
}

/* The crash-test hook (transport.h, struct fault_injection): kill the
 * process instead of issuing the write after the limit. */
static void fault_injection_point(struct hostfile *f)
{
    struct fault_injection *fi = f->fault;
    if (fi && fi->limit >= 0 && atomic_fetch_add(&fi->writes, 1) >= fi->limit)
        raise(SIGKILL);
}

/* Whether a request on fd goes through the page cache (not O_DIRECT's
 * descriptor). */
static bool through_page_cache(const struct hostfile *f, int fd)
{
    return !(f->direct && fd == f->fd);
}

static void drop_written_back(struct hostfile *f)
{
    /* Only clean pages go: those written back since the last call (dirty
     * ones stay until a later one).  It waits for nothing, so it neither
     * delays the writes nor takes a writeback error from the descriptor
     * (sync_file_range with a WAIT flag would, and the fdatasync of
     * hostfile_flush must still see it).  Touching pages the guest of a
     * virtual machine has not used lately is slow (the host gives them
     * back), so this is also faster there: a cold 2 GiB copy from NBD into
     * a raw file, client system time 4.1 s -> ~1 s. */
    if (atomic_load(&f->drop_behind))
        posix_fadvise(f->fd, 0, 0, POSIX_FADV_DONTNEED);
}

/* Write-behind: every WRITE_BEHIND_BYTES of buffered writes, start the
 * writeback of the file's dirty pages (no durability claim: hostfile_flush
 * still does that).  A copy then overlaps its writes to disk with the work
 * that produces them, instead of leaving all of it to the final fdatasync.
 *
 * Starting writeback is not free: sync_file_range(SYNC_FILE_RANGE_WRITE)
 * submits every dirty page of the file and sleeps whenever the device
 * queue is full, 100 ms and more a call once writes outrun the disk.  So
 * it runs in a thread of the file's own, woken by the write that crosses
 * the mark; no write waits for it (an NBD client's write would, served by
 * `imgtool serve`), and marks crossed while it runs make one more call. */
static void *write_behind_main(void *opaque)
{
    struct hostfile *f = opaque;
    pthread_mutex_lock(&f->wb_lock);
    for (;;) {
        while (!f->wb_pending && !f->wb_stop)
            pthread_cond_wait(&f->wb_wake, &f->wb_lock);
        if (f->wb_stop)
            break;
        f->wb_pending = false;
        pthread_mutex_unlock(&f->wb_lock);
        sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        drop_written_back(f);
        pthread_mutex_lock(&f->wb_lock);
    }
    pthread_mutex_unlock(&f->wb_lock);
    return NULL;
}

/* With signals blocked, so that they reach the threads that handle them
 * (lock held).  Without a thread there is no write-behind: it is a hint. */
static void start_write_behind_locked(struct hostfile *f)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    f->wb_started = pthread_create(&f->wb_thread, NULL, write_behind_main, f) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void stop_write_behind(struct hostfile *f)
{
    pthread_mutex_lock(&f->wb_lock);
    bool started = f->wb_started;
    f->wb_stop = true;
    pthread_cond_signal(&f->wb_wake);
    pthread_mutex_unlock(&f->wb_lock);
    if (started)
        pthread_join(f->wb_thread, NULL);
}

static void write_behind(struct hostfile *f, int fd, uint64_t written)
{
    if (!through_page_cache(f, fd))
        return;
    uint64_t before = atomic_fetch_add(&f->unsynced, written);
    if (before + written < WRITE_BEHIND_BYTES ||
        atomic_exchange(&f->unsynced, 0) < WRITE_BEHIND_BYTES)
        return;
    pthread_mutex_lock(&f->wb_lock);
    if (!f->wb_started && !f->wb_stop)
        start_write_behind_locked(f);
    f->wb_pending = true;
    pthread_cond_signal(&f->wb_wake);
    pthread_mutex_unlock(&f->wb_lock);
}

/* Buffered writes into a regular file take the inode's lock exclusively
 * in the kernel, so concurrent ones never run in parallel; waiting for
 * each other there, they spin while the holder copies (a third of the CPU
 * of a 16-in-flight copy from NBD into a raw file went to
 * rwsem_spin_on_owner).  Waiting here sleeps instead.  O_DIRECT writes
 * and block devices are not serialised by the kernel, nor here. */
static ssize_t locked_pwritev(struct hostfile *f, int fd, const struct iovec *iov, int n,
                              uint64_t off)
{
    if (f->is_block_device || !through_page_cache(f, fd))
        return pwritev(fd, iov, n, (off_t)off);
    pthread_mutex_lock(&f->buffered_write_lock);
    ssize_t r = pwritev(fd, iov, n, (off_t)off);
    int err = errno;
    pthread_mutex_unlock(&f->buffered_write_lock);
    errno = err;
    return r;
}

int hostfile_pwritev(struct hostfile *f, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e)
{
    fault_injection_point(f);
    uint64_t written = 0;
    int fd = fd_for(f, off, iov, iovcnt);
    struct iovec cur[IOV_BATCH];
    size_t skip = 0;
    int n = iov_advance(&iov, &iovcnt, &skip, 0, cur);
    while (n > 0) {
        ssize_t r = locked_pwritev(f, fd, cur, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            note_change(f);     /* a part may have been written */
            return err_errno(e, errno, "%s: write error at offset %llu", f->path,
                             (unsigned long long)off);
        }
        off += (uint64_t)r;
        written += (uint64_t)r;
        n = iov_advance(&iov, &iovcnt, &skip, (size_t)r, cur);
    }
    note_change(f);
    write_behind(f, fd, written);
    return 0;
}

/* Errors of copy_file_range that mean "not between these two files". */
static bool copy_range_unsupported(int err)
{
    return err == EXDEV || err == EINVAL || err == ENOSYS || err == EOPNOTSUPP ||
           err == ENOTSUP || err == EBADF;
}

static int copy_range_loop(struct hostfile *dst, uint64_t dst_off, struct hostfile *src,
                           uint64_t src_off, uint64_t len, struct err *e)
{
    while (len) {
        loff_t in = (loff_t)src_off, out = (loff_t)dst_off;
        ssize_t r = copy_file_range(src->fd, &in, dst->fd, &out, (size_t)min_u64(len, 1u << 30),
                                    0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && copy_range_unsupported(errno))
            return err_set(e, ENOTSUP, "%s: cannot copy from %s in the kernel: %s", dst->path,
                           src->path, strerror(errno));
        if (r < 0)
            return err_errno(e, errno, "%s: copy from %s failed at offset %llu", dst->path,
                             src->path, (unsigned long long)dst_off);
        if (r == 0)
            return err_set(e, ENOTSUP, "%s: ends before offset %llu", src->path,
                           (unsigned long long)src_off);
        src_off += (uint64_t)r;
        dst_off += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

int hostfile_copy_range(struct hostfile *dst, uint64_t dst_off, struct hostfile *src,
                        uint64_t src_off, uint64_t len, struct err *e)
{
    fault_injection_point(dst);
    int ret = copy_range_loop(dst, dst_off, src, src_off, len, e);
    note_change(dst);
    return ret;
}

int hostfile_flush(struct hostfile *f, struct err *e)
{
    if (f->flush_deferred || !atomic_exchange(&f->unflushed, false))
        return 0;
    if (fdatasync(f->fd) < 0 || (f->fd_buffered >= 0 && fdatasync(f->fd_buffered) < 0)) {
        note_change(f);     /* still to be flushed */
        return err_errno(e, errno, "%s: flush failed", f->path);
    }
    return 0;
}

void hostfile_defer_flushes(struct hostfile *f, bool defer)
{
    f->flush_deferred = defer;
}

void hostfile_renamed(struct hostfile *f, char *path)
{
    free(f->path);
    f->path = path;
    f->tp.name = path;
}

void hostfile_keep_page_cache(struct hostfile *f)
{
    atomic_store(&f->drop_behind, false);
}

int hostfile_size(struct hostfile *f, uint64_t *size, struct err *e)
{
    off_t end = lseek(f->fd, 0, SEEK_END);
    if (end < 0)
        return err_errno(e, errno, "%s: cannot get size", f->path);
    *size = (uint64_t)end;
    return 0;
}

/* hostfile_map_read: ranges read in exactly, not read around. */
#define MAP_READ_EXACTLY_BELOW (1u << 20)

/* Whether [off, off + len) can be mapped: see hostfile_map_read. */
static bool can_map(struct hostfile *f, uint64_t off, size_t len)
{
    uint64_t size = 0;
    struct err ignored;
    if (f->writable || f->direct || f->may_change || len == 0 ||
        hostfile_size(f, &size, &ignored) < 0)
        return false;
    return off <= size && len <= size - off;
}

int hostfile_map_read(struct hostfile *f, uint64_t off, size_t len, struct transport_view *v,
                      struct err *e)
{
#ifdef MADV_POPULATE_READ
    *v = (struct transport_view){ 0 };
    if (!can_map(f, off, len))
        return -ENOTSUP;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t start = off & ~(page - 1);
    size_t mapped = (size_t)(off - start) + len;
    /* A small range is read exactly, first.  A page fault that misses the
     * page cache reads around it, read_ahead_kb worth (8 MiB on some
     * virtual disks): for the scattered 64 KiB clusters of a bitmap copy,
     * 128 times the data asked for (mirror --sync=bitmap of a 1%-dirty
     * 4 GiB disk read 1.5 GB, now 53 MB).  The large ranges of a whole-disk
     * copy or compare (1-2 MiB, one after the other) keep the kernel's
     * read-around, whose readahead marks read ahead of the stream. */
    if (mapped < MAP_READ_EXACTLY_BELOW)
        (void)posix_fadvise(f->fd, (off_t)start, (off_t)mapped, POSIX_FADV_WILLNEED);
    void *base = mmap(NULL, mapped, PROT_READ, MAP_SHARED, f->fd, (off_t)start);
    if (base == MAP_FAILED)
        return err_errno(e, errno, "%s: cannot map offset %llu", f->path,
                         (unsigned long long)off);
    /* Fault it all in now, so that an I/O error (or a file that shrank
     * meanwhile) is an error here instead of a SIGBUS on a later read. */
    if (madvise(base, mapped, MADV_POPULATE_READ) < 0) {
        int err = errno;
        munmap(base, mapped);
        if (err == EINVAL)
            return -ENOTSUP;
        return err_errno(e, err, "%s: read error at offset %llu", f->path,
                         (unsigned long long)off);
    }
    *v = (struct transport_view){ .data = (const uint8_t *)base + (off - start), .base = base,
                                  .mapped = mapped };
    return 0;
#else
    (void)f; (void)off; (void)len; (void)e;
    *v = (struct transport_view){ 0 };
    return -ENOTSUP;
#endif
}

void hostfile_unmap(struct transport_view *v)
{
    if (v->base)
        munmap(v->base, v->mapped);
    *v = (struct transport_view){ 0 };
}

int hostfile_allocated_size(struct hostfile *f, uint64_t *size, struct err *e)
{
    struct stat st;
    if (fstat(f->fd, &st) < 0)
        return err_errno(e, errno, "%s: cannot stat", f->path);
    *size = (uint64_t)st.st_blocks * 512;
    return 0;
}

int hostfile_truncate(struct hostfile *f, uint64_t size, struct err *e)
{
    if (size > INT64_MAX)
        return err_set(e, EFBIG, "%s: size %llu is too large", f->path,
                       (unsigned long long)size);
    if (f->is_block_device) {
        uint64_t cur = 0;
        int ret = hostfile_size(f, &cur, e);
        if (ret < 0)
            return ret;
        if (size > cur)
            return err_set(e, ENOSPC, "%s: cannot grow a block device", f->path);
        return 0;
    }
    int ret = ftruncate(f->fd, (off_t)size);
    note_change(f);
    if (ret < 0)
        return err_errno(e, errno, "%s: cannot resize to %llu bytes", f->path,
                         (unsigned long long)size);
    return 0;
}

static int write_zero_buffers(struct hostfile *f, uint64_t off, uint64_t len, struct err *e)
{
    static const size_t chunk = 1 << 20;
    void *zero;
    /* Aligned so that it also works with O_DIRECT. */
    if (posix_memalign(&zero, 4096, chunk))
        return err_set(e, ENOMEM, "%s: out of memory", f->path);
    memset(zero, 0, chunk);
    int ret = 0;
    while (len && ret == 0) {
        size_t n = len < chunk ? (size_t)len : chunk;
        ret = hostfile_pwrite(f, off, zero, n, e);
        off += n;
        len -= n;
    }
    free(zero);
    return ret;
}

static int punch_range(struct hostfile *f, uint64_t off, uint64_t len, struct err *e)
{
    if (len && fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                         (off_t)len) < 0) {
        /* Discard is advisory: unsupported file systems keep the data. */
        if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
            return err_errno(e, errno, "%s: discard failed at offset %llu", f->path,
                             (unsigned long long)off);
    }
    return 0;
}

static int zero_range(struct hostfile *f, uint64_t off, uint64_t len, unsigned flags,
                      struct err *e)
{
    bool may_unmap = flags & TRANSPORT_ZERO_MAY_UNMAP;
    if (!len)
        return 0;
    uint64_t size = 0;
    int ret = hostfile_size(f, &size, e);
    if (ret < 0)
        return ret;
    /* Past the end of a regular file, growing it is enough. */
    if (!f->is_block_device && off >= size)
        return hostfile_truncate(f, off + len, e);
    if (may_unmap && fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                               (off_t)off, (off_t)len) == 0) {
        if (!f->is_block_device && off + len > size)
            return hostfile_truncate(f, off + len, e);
        return 0;
    }
    if (fallocate(f->fd, FALLOC_FL_ZERO_RANGE, (off_t)off, (off_t)len) == 0)
        return 0;
    if (flags & TRANSPORT_ZERO_FAST)
        return err_set(e, ENOTSUP, "%s: cannot zero %llu bytes at offset %llu without "
                       "writing them", f->path, (unsigned long long)len,
                       (unsigned long long)off);
    return write_zero_buffers(f, off, len, e);
}

int hostfile_write_zeroes(struct hostfile *f, uint64_t off, uint64_t len, unsigned flags,
                          struct err *e)
{
    int ret = zero_range(f, off, len, flags, e);
    note_change(f);
    return ret;
}

static int preallocate_range(struct hostfile *f, uint64_t off, uint64_t len, bool full,
                             struct err *e)
{
    if (!len)
        return 0;
    if (!full) {
        int err = posix_fallocate(f->fd, (off_t)off, (off_t)len);
        if (err == 0)
            return 0;
        if (err != EOPNOTSUPP && err != EINVAL)
            return err_errno(e, err, "%s: cannot preallocate %llu bytes at offset %llu",
                             f->path, (unsigned long long)len, (unsigned long long)off);
    }
    return write_zero_buffers(f, off, len, e);
}

int hostfile_preallocate(struct hostfile *f, uint64_t off, uint64_t len, bool full,
                         struct err *e)
{
    int ret = preallocate_range(f, off, len, full, e);
    note_change(f);
    return ret;
}

int hostfile_discard(struct hostfile *f, uint64_t off, uint64_t len, struct err *e)
{
    int ret = punch_range(f, off, len, e);
    note_change(f);
    return ret;
}

int hostfile_data_status(struct hostfile *f, uint64_t off, uint64_t bytes, bool *is_data,
                         uint64_t *run, struct err *e)
{
    off_t data = lseek(f->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {       /* no data at or after off */
            *is_data = false;
            *run = bytes;
            return 0;
        }
        /* File system without SEEK_DATA: everything is data. */
        if (errno == EINVAL || errno == EOPNOTSUPP) {
            *is_data = true;
            *run = bytes;
            return 0;
        }
        return err_errno(e, errno, "%s: cannot find data at offset %llu", f->path,
                         (unsigned long long)off);
    }
    if ((uint64_t)data > off) {
        *is_data = false;
        *run = min_u64((uint64_t)data - off, bytes);
        return 0;
    }
    off_t hole = lseek(f->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0)
        return err_errno(e, errno, "%s: cannot find hole at offset %llu", f->path,
                         (unsigned long long)off);
    *is_data = true;
    *run = (uint64_t)hole > off ? min_u64((uint64_t)hole - off, bytes) : bytes;
    return 0;
}

/* --- The file transport (transport.h) --- */

static struct hostfile *to_file(struct transport *t)
{
    return (struct hostfile *)t;    /* tp is the first member */
}

static int file_tp_preadv(struct transport *t, uint64_t off, const struct iovec *iov,
                          int iovcnt, struct err *e)
{
    return hostfile_preadv(to_file(t), off, iov, iovcnt, e);
}

static int file_tp_pwritev(struct transport *t, uint64_t off, const struct iovec *iov,
                           int iovcnt, struct err *e)
{
    return hostfile_pwritev(to_file(t), off, iov, iovcnt, e);
}

static int file_tp_flush(struct transport *t, struct err *e)
{
    return hostfile_flush(to_file(t), e);
}

static int file_tp_size(struct transport *t, uint64_t *size, struct err *e)
{
    return hostfile_size(to_file(t), size, e);
}

static int file_tp_allocated_size(struct transport *t, uint64_t *size, struct err *e)
{
    return hostfile_allocated_size(to_file(t), size, e);
}

static int file_tp_truncate(struct transport *t, uint64_t size, struct err *e)
{
    return hostfile_truncate(to_file(t), size, e);
}

static int file_tp_write_zeroes(struct transport *t, uint64_t off, uint64_t len,
                                unsigned flags, struct err *e)
{
    return hostfile_write_zeroes(to_file(t), off, len, flags, e);
}

static int file_tp_discard(struct transport *t, uint64_t off, uint64_t len, struct err *e)
{
    return hostfile_discard(to_file(t), off, len, e);
}

static int file_tp_data_status(struct transport *t, uint64_t off, uint64_t bytes,
                               unsigned *flags, uint64_t *run, struct err *e)
{
    bool is_data;
    int ret = hostfile_data_status(to_file(t), off, bytes, &is_data, run, e);
    if (ret == 0)
        *flags = is_data ? TRANSPORT_DATA : TRANSPORT_ZERO;
    return ret;
}

static void file_tp_defer_flushes(struct transport *t, bool defer)
{
    hostfile_defer_flushes(to_file(t), defer);
}

static bool file_tp_is_named(struct transport *t, const char *name)
{
    struct stat a, b;
    return stat(name, &a) == 0 && fstat(to_file(t)->fd, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

static bool file_tp_same(struct transport *a, struct transport *b)
{
    struct stat sa, sb;
    return fstat(to_file(a)->fd, &sa) == 0 && fstat(to_file(b)->fd, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void file_tp_close(struct transport *t)
{
    hostfile_close(to_file(t));
}

const struct transport_ops file_transport_ops = {
    .name = "file",
    .preadv = file_tp_preadv,
    .pwritev = file_tp_pwritev,
    .flush = file_tp_flush,
    .size = file_tp_size,
    .allocated_size = file_tp_allocated_size,
    .truncate = file_tp_truncate,
    .write_zeroes = file_tp_write_zeroes,
    .discard = file_tp_discard,
    .data_status = file_tp_data_status,
    .defer_flushes = file_tp_defer_flushes,
    .is_named = file_tp_is_named,
    .same = file_tp_same,
    .close = file_tp_close,
};
