/* writelog.so: an LD_PRELOAD library that records every change a process
 * makes to the files of one directory, for crashreplay to rebuild the
 * states a power failure could leave (see tests/crash/README).  Test-only:
 * built into build/.../tests/crash/, never linked into imgtool.
 *
 *   WRITELOG=/path/to/log WRITELOG_DIR=/abs/dir LD_PRELOAD=.../writelog.so cmd
 *
 * Recorded, after the real call succeeded: opens (binding a name to an
 * inode, and whether the open created the file), pwrite/pwritev/write/
 * writev data, ftruncate, fallocate, fsync/fdatasync of a file or of the
 * directory, rename, unlink, sync/syncfs.  Only files directly inside
 * WRITELOG_DIR count.  A writable shared mmap or copy_file_range into a
 * watched file cannot be recorded: the library aborts the process instead,
 * so that a test never passes on an incomplete log.  sync_file_range makes
 * nothing durable (it neither flushes the disk cache nor metadata), so it
 * is not recorded.  Records are appended with one write(2) each under a
 * lock; concurrent writes to overlapping ranges of one file (which imgtool
 * never issues) would be logged in an arbitrary order.
 *
 * Faults, to make a job fail or be cancelled at a chosen moment without
 * timing: with WRITELOG_FAULT_FILE=NAME (a bare name in the directory, or
 * PREFIX* for the files whose names start with PREFIX) and
 * WRITELOG_FAULT_AFTER=N, the first N writes to NAME succeed; then
 * WRITELOG_FAULT=eio (the default) fails every later write to NAME with
 * EIO, and WRITELOG_FAULT=sigint sends the process SIGINT once, right
 * after the Nth write returned. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static char watch_dir[PATH_MAX];
static char fault_file[NAME_MAX + 1];
static long fault_after = -1, writes_to_fault_file;
static bool fault_sigint;

#define REAL(ret, name, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = (ret (*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

static void fatal(const char *what)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "writelog: %s on a file in %s cannot be recorded\n",
                     what, watch_dir);
    if (write(2, msg, (size_t)n) < 0) { /* nothing more to do */ }
    abort();
}

__attribute__((constructor)) static void writelog_init(void)
{
    const char *log = getenv("WRITELOG"), *dir = getenv("WRITELOG_DIR");
    if (!log || !dir || !realpath(dir, watch_dir))
        return;
    int (*real_open)(const char *, int, ...) =
        (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    log_fd = real_open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const char *ff = getenv("WRITELOG_FAULT_FILE"), *fa = getenv("WRITELOG_FAULT_AFTER");
    const char *kind = getenv("WRITELOG_FAULT");
    if (ff && fa) {
        snprintf(fault_file, sizeof(fault_file), "%s", ff);
        fault_after = atol(fa);
        fault_sigint = kind && !strcmp(kind, "sigint");
    }
}

/* The bare name of the file `path` if its directory is the watched one. */
static int watched_path(const char *path, char *name)
{
    size_t n = strlen(watch_dir);
    if (log_fd < 0 || strncmp(path, watch_dir, n) || path[n] != '/' ||
        strchr(path + n + 1, '/') || !path[n + 1])
        return 0;
    snprintf(name, NAME_MAX + 1, "%s", path + n + 1);
    return 1;
}

/* Whether fd is a regular file of the watched directory (1, its name and
 * inode filled in) or the directory itself (2). */
static int watched_fd(int fd, char *name, uint64_t *ino)
{
    char link[64], path[PATH_MAX];
    struct stat st;
    if (log_fd < 0 || fd < 0)
        return 0;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0 || fstat(fd, &st) < 0)
        return 0;
    path[n] = '\0';
    char *deleted = strstr(path, " (deleted)");
    if (deleted && !deleted[10])
        *deleted = '\0';
    *ino = (uint64_t)st.st_ino;
    if (S_ISDIR(st.st_mode))
        return strcmp(path, watch_dir) == 0 ? 2 : 0;
    return S_ISREG(st.st_mode) && watched_path(path, name) ? 1 : 0;
}

/* The bare name of `path` (relative to dirfd) if it lies in the directory. */
static int watched_at(int dirfd, const char *path, char *name)
{
    char full[PATH_MAX * 2], dir[PATH_MAX], parent[PATH_MAX];
    if (log_fd < 0)
        return 0;
    if (path[0] == '/') {
        snprintf(full, sizeof(full), "%s", path);
    } else {
        char link[64];
        ssize_t n;
        if (dirfd == AT_FDCWD) {
            if (!getcwd(dir, sizeof(dir)))
                return 0;
        } else {
            snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
            if ((n = readlink(link, dir, sizeof(dir) - 1)) <= 0)
                return 0;
            dir[n] = '\0';
        }
        snprintf(full, sizeof(full), "%s/%s", dir, path);
    }
    char *slash = strrchr(full, '/');
    *slash = '\0';
    const char *base = slash + 1;
    if (!realpath(full[0] ? full : "/", parent) || strcmp(parent, watch_dir) || !*base ||
        !strcmp(base, ".") || !strcmp(base, ".."))
        return 0;
    snprintf(name, NAME_MAX + 1, "%s", base);
    return 1;
}

static void put_record(uint16_t type, const char *name, size_t name_len, uint32_t flags,
                       uint64_t ino, uint64_t offset, uint64_t length,
                       const struct iovec *iov, int iovcnt)
{
    struct log_record r = {
        .magic = LOG_MAGIC, .type = type, .name_len = (uint32_t)name_len, .flags = flags,
        .ino = ino, .offset = offset, .length = length,
    };
    size_t data = type == LOG_WRITE ? length : 0;
    char *buf = malloc(sizeof(r) + name_len + data);
    if (!buf)
        fatal("out of memory: a record");
    memcpy(buf, &r, sizeof(r));
    memcpy(buf + sizeof(r), name, name_len);
    size_t at = sizeof(r) + name_len, left = data;
    for (int i = 0; i < iovcnt && left; i++) {
        size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;
        memcpy(buf + at, iov[i].iov_base, n);
        at += n;
        left -= n;
    }
    pthread_mutex_lock(&log_lock);
    ssize_t w = write(log_fd, buf, at);
    pthread_mutex_unlock(&log_lock);
    free(buf);
    if (w != (ssize_t)at)
        fatal("writing the log");
}

static bool is_fault_file(int fd)
{
    char name[NAME_MAX + 1];
    uint64_t ino;
    size_t n = strlen(fault_file);
    if (fault_after < 0 || watched_fd(fd, name, &ino) != 1)
        return false;
    if (n && fault_file[n - 1] == '*')    /* a prefix: names made up at run time */
        return strncmp(name, fault_file, n - 1) == 0;
    return strcmp(name, fault_file) == 0;
}

/* WRITELOG_FAULT=eio: whether this write must fail. */
static bool fail_write(int fd)
{
    if (fault_sigint || !is_fault_file(fd))
        return false;
    pthread_mutex_lock(&log_lock);
    bool fail = writes_to_fault_file >= fault_after;
    pthread_mutex_unlock(&log_lock);
    if (fail)
        errno = EIO;
    return fail;
}

static void log_write(int fd, uint64_t offset, const struct iovec *iov, int iovcnt, ssize_t n)
{
    char name[NAME_MAX + 1];
    uint64_t ino;
    if (n <= 0 || watched_fd(fd, name, &ino) != 1)
        return;
    put_record(LOG_WRITE, "", 0, 0, ino, offset, (uint64_t)n, iov, iovcnt);
    if (is_fault_file(fd)) {
        pthread_mutex_lock(&log_lock);
        bool now = ++writes_to_fault_file == fault_after;
        pthread_mutex_unlock(&log_lock);
        if (now && fault_sigint)
            kill(getpid(), SIGINT);
    }
}

static void log_open(int fd, int flags, bool existed)
{
    char name[NAME_MAX + 1];
    uint64_t ino;
    if (fd < 0 || watched_fd(fd, name, &ino) != 1)
        return;
    put_record(LOG_OPEN, name, strlen(name), existed ? 0 : LOG_CREATED, ino, 0, 0, NULL, 0);
    if ((flags & O_TRUNC) && existed && (flags & O_ACCMODE) != O_RDONLY)
        put_record(LOG_TRUNCATE, "", 0, 0, ino, 0, 0, NULL, 0);
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode)
{
    REAL(int, openat, int, const char *, int, ...);
    struct stat st;
    bool existed = fstatat(dirfd, path, &st, 0) == 0;
    int fd = real_openat(dirfd, path, flags, mode);
    int saved = errno;
    log_open(fd, flags, existed);
    errno = saved;
    return fd;
}

static mode_t open_mode(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    return do_openat(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    return do_openat(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    return do_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = open_mode(flags, ap);
    va_end(ap);
    return do_openat(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
    return do_openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int creat64(const char *path, mode_t mode)
{
    return do_openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

/* After the real call of every write wrapper: log the `n` bytes written
 * (of iov) at `off`, or, with AT_FILE_OFFSET (write, writev), at the file
 * offset, which now lies n bytes further (also for O_APPEND); keeps errno
 * and returns n. */
#define AT_FILE_OFFSET ((off_t)-1)
static ssize_t logged(int fd, off_t off, const struct iovec *iov, int iovcnt, ssize_t n)
{
    int saved = errno;
    if (off == AT_FILE_OFFSET && n > 0) {
        off_t end = lseek(fd, 0, SEEK_CUR);
        off = end >= n ? end - n : AT_FILE_OFFSET;
    }
    if (off != AT_FILE_OFFSET)
        log_write(fd, (uint64_t)off, iov, iovcnt, n);
    errno = saved;
    return n;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
    if (fail_write(fd))
        return -1;
    struct iovec iov = { (void *)buf, len };
    return logged(fd, off, &iov, 1, real_pwrite(fd, buf, len, off));
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
    if (fail_write(fd))
        return -1;
    return logged(fd, off, iov, iovcnt, real_pwritev(fd, iov, iovcnt, off));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    return pwritev(fd, iov, iovcnt, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
    REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int);
    char name[NAME_MAX + 1];
    uint64_t ino;
    if (off == -1 && watched_fd(fd, name, &ino))
        fatal("pwritev2 at the file offset");
    if (fail_write(fd))
        return -1;
    return logged(fd, off, iov, iovcnt, real_pwritev2(fd, iov, iovcnt, off, flags));
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
    return pwritev2(fd, iov, iovcnt, off, flags);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    REAL(ssize_t, writev, int, const struct iovec *, int);
    if (fail_write(fd))
        return -1;
    return logged(fd, AT_FILE_OFFSET, iov, iovcnt, real_writev(fd, iov, iovcnt));
}

ssize_t write(int fd, const void *buf, size_t len)
{
    REAL(ssize_t, write, int, const void *, size_t);
    if (fd == log_fd)
        return real_write(fd, buf, len);
    if (fail_write(fd))
        return -1;
    struct iovec iov = { (void *)buf, len };
    return logged(fd, AT_FILE_OFFSET, &iov, 1, real_write(fd, buf, len));
}

int ftruncate(int fd, off_t size)
{
    REAL(int, ftruncate, int, off_t);
    int ret = real_ftruncate(fd, size);
    int saved = errno;
    char name[NAME_MAX + 1];
    uint64_t ino;
    if (ret == 0 && watched_fd(fd, name, &ino) == 1)
        put_record(LOG_TRUNCATE, "", 0, 0, ino, 0, (uint64_t)size, NULL, 0);
    errno = saved;
    return ret;
}

int ftruncate64(int fd, off_t size)
{
    return ftruncate(fd, size);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    REAL(int, fallocate, int, int, off_t, off_t);
    int ret = real_fallocate(fd, mode, off, len);
    int saved = errno;
    char name[NAME_MAX + 1];
    uint64_t ino;
    if (ret == 0 && watched_fd(fd, name, &ino) == 1)
        put_record(LOG_FALLOCATE, "", 0, (uint32_t)mode, ino, (uint64_t)off, (uint64_t)len,
                   NULL, 0);
    errno = saved;
    return ret;
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
    return fallocate(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len)
{
    int ret = fallocate(fd, 0, off, len) == 0 ? 0 : errno;
    return ret == EOPNOTSUPP ? EINVAL : ret;
}

int posix_fallocate64(int fd, off_t off, off_t len)
{
    return posix_fallocate(fd, off, len);
}

static void log_sync(int fd)
{
    char name[NAME_MAX + 1];
    uint64_t ino;
    int kind = watched_fd(fd, name, &ino);
    if (kind == 1)
        put_record(LOG_FSYNC, "", 0, 0, ino, 0, 0, NULL, 0);
    else if (kind == 2)
        put_record(LOG_DIRSYNC, "", 0, 0, ino, 0, 0, NULL, 0);
}

int fsync(int fd)
{
    REAL(int, fsync, int);
    int ret = real_fsync(fd);
    int saved = errno;
    if (ret == 0)
        log_sync(fd);
    errno = saved;
    return ret;
}

int fdatasync(int fd)
{
    REAL(int, fdatasync, int);
    int ret = real_fdatasync(fd);
    int saved = errno;
    if (ret == 0)
        log_sync(fd);
    errno = saved;
    return ret;
}

void sync(void)
{
    REAL(void, sync, void);
    real_sync();
    if (log_fd >= 0)
        put_record(LOG_SYNCALL, "", 0, 0, 0, 0, 0, NULL, 0);
}

int syncfs(int fd)
{
    REAL(int, syncfs, int);
    int ret = real_syncfs(fd);
    if (ret == 0 && log_fd >= 0)
        put_record(LOG_SYNCALL, "", 0, 0, 0, 0, 0, NULL, 0);
    return ret;
}

static void log_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    char from[NAME_MAX + 1], to[NAME_MAX + 1], both[2 * NAME_MAX + 2];
    int a = watched_at(olddirfd, oldpath, from), b = watched_at(newdirfd, newpath, to);
    if (a != b)
        fatal("a rename into or out of the directory");
    if (!a)
        return;
    size_t n = strlen(from);
    memcpy(both, from, n + 1);
    memcpy(both + n + 1, to, strlen(to));
    put_record(LOG_RENAME, both, n + 1 + strlen(to), 0, 0, 0, 0, NULL, 0);
}

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
              unsigned flags)
{
    REAL(int, renameat2, int, const char *, int, const char *, unsigned);
    if (flags & ~RENAME_NOREPLACE) {
        char name[NAME_MAX + 1];
        if (watched_at(olddirfd, oldpath, name))
            fatal("renameat2 with RENAME_EXCHANGE or WHITEOUT");
    }
    int ret = real_renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
    int saved = errno;
    if (ret == 0)
        log_rename(olddirfd, oldpath, newdirfd, newpath);
    errno = saved;
    return ret;
}

int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
    REAL(int, renameat, int, const char *, int, const char *);
    int ret = real_renameat(olddirfd, oldpath, newdirfd, newpath);
    int saved = errno;
    if (ret == 0)
        log_rename(olddirfd, oldpath, newdirfd, newpath);
    errno = saved;
    return ret;
}

int rename(const char *oldpath, const char *newpath)
{
    return renameat(AT_FDCWD, oldpath, AT_FDCWD, newpath);
}

int unlinkat(int dirfd, const char *path, int flags)
{
    REAL(int, unlinkat, int, const char *, int);
    char name[NAME_MAX + 1];
    int watched = !(flags & AT_REMOVEDIR) && watched_at(dirfd, path, name);
    int ret = real_unlinkat(dirfd, path, flags);
    int saved = errno;
    if (ret == 0 && watched)
        put_record(LOG_UNLINK, name, strlen(name), 0, 0, 0, 0, NULL, 0);
    errno = saved;
    return ret;
}

int unlink(const char *path)
{
    return unlinkat(AT_FDCWD, path, 0);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    REAL(void *, mmap, void *, size_t, int, int, int, off_t);
    char name[NAME_MAX + 1];
    uint64_t ino;
    if ((prot & PROT_WRITE) && (flags & MAP_SHARED) && watched_fd(fd, name, &ino) == 1)
        fatal("a writable shared mmap");
    return real_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mmap(addr, len, prot, flags, fd, off);
}

ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len,
                        unsigned flags)
{
    REAL(ssize_t, copy_file_range, int, off_t *, int, off_t *, size_t, unsigned);
    char name[NAME_MAX + 1];
    uint64_t ino;
    if (watched_fd(fd_out, name, &ino) == 1)
        fatal("copy_file_range");
    return real_copy_file_range(fd_in, off_in, fd_out, off_out, len, flags);
}
