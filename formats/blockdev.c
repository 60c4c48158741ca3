/* The generic block layer: the driver table, probing, opening backing
 * chains, bounds-checked I/O and block status resolved through the chain. */
#include "blockdev.h"
#include "blockdev-bitmaps.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const struct blockdrv blockdrv_qcow2;
extern const struct blockdrv blockdrv_raw;

/* The one driver table.  Probing asks each driver for a score; raw is the
 * fallback (it scores 1 on anything). */
static const struct blockdrv *const drivers[] = {
    &blockdrv_qcow2,
    &blockdrv_raw,
    NULL,
};

const struct blockdrv *const *blk_drivers(void)
{
    return drivers;
}

const struct blockdrv *blk_find_driver(const char *name)
{
    for (const struct blockdrv *const *d = blk_drivers(); *d; d++)
        if (strcmp((*d)->name, name) == 0)
            return *d;
    return NULL;
}

static int unknown_format(const char *name, struct err *e)
{
    char list[256] = "";
    for (const struct blockdrv *const *d = blk_drivers(); *d; d++) {
        strncat(list, list[0] ? ", " : "", sizeof(list) - strlen(list) - 1);
        strncat(list, (*d)->name, sizeof(list) - strlen(list) - 1);
    }
    return err_set(e, EINVAL, "unknown format '%s' (supported: %s)", name, list);
}

/* Probing looks at this many bytes at the start of a file. */
#define PROBE_LEN 4096

static const struct blockdrv *probe_buffer(const uint8_t *buf, size_t len)
{
    const struct blockdrv *drv = NULL;
    int best = -1;
    for (const struct blockdrv *const *d = blk_drivers(); *d; d++) {
        int score = (*d)->probe ? (*d)->probe(buf, len) : 0;
        if (score > best) {
            best = score;
            drv = *d;
        }
    }
    return drv;
}

int blk_probe_file(struct transport *f, const struct blockdrv **drv, struct err *e)
{
    uint8_t buf[PROBE_LEN];
    int ret = transport_pread(f, 0, buf, sizeof(buf), e);
    if (ret < 0)
        return ret;
    uint64_t size;
    ret = transport_size(f, &size, e);
    if (ret < 0)
        return ret;
    *drv = probe_buffer(buf, size < sizeof(buf) ? (size_t)size : sizeof(buf));
    return 0;
}

/* A write into the probed area of an image whose format was probed (not
 * given) must not make it probe as another format: a guest writing a
 * qcow2 header into its raw disk would otherwise choose, at the next
 * probing open, which host file the disk reads as its backing file.  QEMU
 * refuses such writes for probed raw images the same way (EPERM). */
static int check_probed_header_write(struct blockdev *bs, uint64_t off, const struct iovec *iov,
                                     int iovcnt, struct err *e)
{
    /* Only raw's guest data is the file's first bytes. */
    if (!bs->probed || bs->drv != &blockdrv_raw || off >= PROBE_LEN)
        return 0;
    uint8_t buf[PROBE_LEN];
    size_t len = (size_t)min_u64(bs->size, PROBE_LEN);
    int ret = bs->drv->preadv(bs, 0, &(struct iovec){ buf, len }, 1, e);
    if (ret < 0)
        return ret;
    size_t pos = (size_t)off;
    for (int i = 0; i < iovcnt && pos < len; i++) {
        size_t n = (size_t)min_u64(iov[i].iov_len, len - pos);
        memcpy(buf + pos, iov[i].iov_base, n);
        pos += n;
    }
    const struct blockdrv *now = probe_buffer(buf, len);
    if (now != bs->drv)
        return err_set(e, EPERM, "%s: refusing to write a %s header into an image whose "
                       "format %s was probed, not given (name the format to allow it)",
                       bs->filename, now->name, bs->drv->name);
    return 0;
}

char *blk_resolve_backing_path(const char *image_path, const char *backing_name)
{
    /* Absolute names and protocol-style names are used as they are;
     * relative ones are relative to the directory of the image. */
    if (backing_name[0] == '/' || !strchr(image_path, '/') ||
        transport_name_is_uri(backing_name))
        return strdup(backing_name);
    const char *slash = strrchr(image_path, '/');
    size_t dirlen = (size_t)(slash - image_path) + 1;
    char *path = malloc(dirlen + strlen(backing_name) + 1);
    if (path) {
        memcpy(path, image_path, dirlen);
        strcpy(path + dirlen, backing_name);
    }
    return path;
}

struct blockdev *blk_chain_find(struct blockdev *bs, const char *path)
{
    for (; bs; bs = bs->backing)
        if (transport_is_named(bs->file, path))
            return bs;
    return NULL;
}

struct blockdev *blk_chain_find_backing(struct blockdev *top, const char *name)
{
    for (struct blockdev *l = top; l && l->backing; l = l->backing) {
        if (l->backing_name && !strcmp(l->backing_name, name))
            return l->backing;
        char *path = blk_resolve_backing_path(l->filename, name);
        bool match = path && transport_is_named(l->backing->file, path);
        free(path);
        if (match)
            return l->backing;
    }
    return NULL;
}

bool blk_is_named(const struct blockdev *bs, const char *name)
{
    return transport_is_named(bs->file, name);
}

bool blk_same_storage(const struct blockdev *a, const struct blockdev *b)
{
    return transport_same(a->file, b->file);
}

int blk_check_distinct(const struct blockdev *target, const struct blockdev *source,
                       struct err *e)
{
    for (const struct blockdev *l = source; l; l = l->backing)
        if (blk_same_storage(target, l))
            return err_set(e, EINVAL, "%s: the target is the source%s (%s)", target->filename,
                           l == source ? "" : "'s backing file", l->filename);
    return 0;
}

bool blk_name_is_network(const char *name)
{
    return transport_name_is_uri(name);
}

bool blk_is_network(const struct blockdev *bs)
{
    return bs->file && !transport_hostfile(bs->file);
}

bool blk_target_exists(const char *name)
{
    return transport_name_is_uri(name) || access(name, F_OK) == 0;
}

/* Backing chains are bounded so that a hostile chain cannot make us open
 * files forever; a loop is found before that, by file identity. */
#define MAX_CHAIN_DEPTH 256

/* The layers opened so far on the way down from the top image, each with
 * the identity of its file (st_dev, st_ino), so that a backing file that is
 * one of them is reported as a loop before it is opened: opening it would
 * clash with our own lock on it, or repeat the chain until the depth limit,
 * holding every layer's tables in memory. */
struct chain_layer {
    const char *filename;
    dev_t dev;
    ino_t ino;
    bool known;                 /* dev/ino were found (not a host file: no identity) */
    const struct chain_layer *above;
};

static void chain_layer_init(struct chain_layer *l, const char *filename,
                             const struct chain_layer *above)
{
    struct stat st;
    l->filename = filename;
    l->known = !transport_name_is_uri(filename) && stat(filename, &st) == 0;
    l->dev = l->known ? st.st_dev : 0;
    l->ino = l->known ? st.st_ino : 0;
    l->above = above;
}

/* The layer of the chain (from `chain` up) that `l` is the same file as. */
static const struct chain_layer *chain_find_same(const struct chain_layer *chain,
                                                 const struct chain_layer *l)
{
    for (; chain && l->known; chain = chain->above)
        if (chain->known && chain->dev == l->dev && chain->ino == l->ino)
            return chain;
    return NULL;
}

/* "top -> ... -> l" into buf: the chain from the top image down to l. */
static void chain_describe(const struct chain_layer *l, char *buf, size_t len)
{
    if (l->above) {
        chain_describe(l->above, buf, len);
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, " -> %s", l->filename);
    } else {
        snprintf(buf, len, "%s", l->filename);
    }
}

static const struct chain_layer *chain_top(const struct chain_layer *l)
{
    while (l->above)
        l = l->above;
    return l;
}

static int open_layer(const char *filename, const char *format, unsigned flags,
                      const struct blk_open_opts *opts, int depth,
                      const struct chain_layer *above, struct blockdev **out, struct err *e);

static int open_backing(struct blockdev *bs, unsigned flags, int depth,
                        const struct chain_layer *self, struct err *e)
{
    if (!bs->backing_name || !bs->backing_name[0] || (flags & BLK_OPEN_NO_BACKING))
        return 0;
    if (depth >= MAX_CHAIN_DEPTH)
        return err_set(e, ELOOP, "%s: backing chain is longer than %d images",
                       bs->filename, MAX_CHAIN_DEPTH);
    bs->backing_path = blk_resolve_backing_path(bs->filename, bs->backing_name);
    if (!bs->backing_path)
        return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    struct chain_layer next;
    chain_layer_init(&next, bs->backing_path, self);
    const struct chain_layer *same = chain_find_same(self, &next);
    if (same) {
        char path[512];
        chain_describe(&next, path, sizeof(path));
        return err_set(e, ELOOP, "%s: backing chain loops back to %s (%s)",
                       chain_top(self)->filename, same->filename, path);
    }
    unsigned bflags = flags & ~BLK_OPEN_RDWR;
    int ret = open_layer(bs->backing_path, bs->backing_format, bflags, &bs->opts, depth + 1,
                         self, &bs->backing, e);
    if (ret < 0 && ret != -ELOOP)
        err_prefix(e, "%s: cannot open backing file: ", bs->filename);
    return ret;
}

/* Network exports hold raw disks: the formats' metadata updates are not
 * written for a transport that other clients may write at the same time,
 * and probing a guest-writable disk would be unsafe (QEMU's advice too). */
static int network_format(const char *filename, const struct blockdrv **drv, struct err *e)
{
    if (*drv && strcmp((*drv)->name, "raw") != 0)
        return err_set(e, ENOTSUP, "%s: format '%s' over NBD is not supported: NBD exports "
                       "are opened as raw (let the server open the %s image, e.g. "
                       "qemu-nbd -f %s)", filename, (*drv)->name, (*drv)->name, (*drv)->name);
    *drv = blk_find_driver("raw");
    return 0;
}

/* Open one layer and, below it, its backing chain; `above` lists the
 * layers already open above it. */
static int open_layer(const char *filename, const char *format, unsigned flags,
                      const struct blk_open_opts *opts, int depth,
                      const struct chain_layer *above, struct blockdev **out, struct err *e)
{
    const struct blockdrv *drv = NULL;
    if (format && !(drv = blk_find_driver(format)))
        return unknown_format(format, e);
    bool network = transport_name_is_uri(filename);
    if (network && network_format(filename, &drv, e) < 0)
        return -ENOTSUP;

    unsigned fflags = 0;
    if (flags & BLK_OPEN_RDWR)
        fflags |= HOSTFILE_RDWR;
    if (flags & BLK_OPEN_DIRECT)
        fflags |= HOSTFILE_DIRECT;
    if (flags & BLK_OPEN_FORCE_SHARE)
        fflags |= HOSTFILE_FORCE_SHARE;
    if (flags & BLK_OPEN_NO_LOCK)
        fflags |= HOSTFILE_NO_LOCK;
    if (flags & BLK_OPEN_DROP_BEHIND)
        fflags |= HOSTFILE_DROP_BEHIND;

    struct blockdev *bs = calloc(1, sizeof(*bs));
    if (!bs || !(bs->filename = strdup(filename))) {
        free(bs);
        return err_set(e, ENOMEM, "%s: out of memory", filename);
    }
    bs->open_flags = flags;
    bs->read_only = !(flags & BLK_OPEN_RDWR);
    pthread_mutex_init(&bs->status_lock, NULL);
    if (opts)
        bs->opts = *opts;
    blk_bitmaps_init(bs);
    range_lock_set_init(&bs->requests);
    pthread_mutex_init(&bs->notifiers_lock, NULL);
    pthread_cond_init(&bs->notifiers_idle, NULL);
    int ret = transport_open(filename, fflags, &bs->opts.transport, &bs->file, e);
    if (ret < 0)
        goto fail;
    if (!drv && (ret = blk_probe_file(bs->file, &drv, e)) < 0)
        goto fail;
    bs->probed = !format;
    bs->drv = drv;
    ret = drv->open(bs, e);
    if (ret < 0) {
        bs->drv = NULL;     /* open failed: nothing for close() to release */
        goto fail;
    }
    struct chain_layer self;
    chain_layer_init(&self, bs->filename, above);
    ret = open_backing(bs, flags, depth, &self, e);
    if (ret < 0)
        goto fail;
    /* Before any guest write, a writable image's bitmaps are loaded and
     * marked in use (blockdev-bitmaps.h); check opens leave them alone. */
    if (!bs->read_only && !(flags & BLK_OPEN_CHECK) && (ret = blk_bitmaps_open(bs, e)) < 0)
        goto fail;
    *out = bs;
    return 0;
fail:
    blk_close(bs);
    return ret;
}

int blk_open(const char *filename, const char *format, unsigned flags,
             const struct blk_open_opts *opts, struct blockdev **out, struct err *e)
{
    return open_layer(filename, format, flags, opts, 0, NULL, out, e);
}

int blk_reopen_writable(struct blockdev *top, struct blockdev *layer, struct blockdev **out,
                        struct err *e)
{
    struct blockdev *parent = top;
    while (parent && parent->backing != layer)
        parent = parent->backing;
    if (!parent || !layer)
        return err_set(e, EINVAL, "%s is not a backing file of %s",
                       layer ? layer->filename : "(none)", top->filename);
    /* Our own read-only open refuses writers: release its locks for the
     * writable open, and take them back if that fails. */
    struct hostfile *f = transport_hostfile(layer->file);
    bool was_locked = f && f->locked;
    unsigned perm = f ? f->perm : 0, shared = f ? f->shared : 0;
    if (was_locked)
        hostfile_unlock(f);
    unsigned flags = (layer->open_flags | BLK_OPEN_RDWR) & ~BLK_OPEN_FORCE_SHARE;
    struct blockdev *fresh;
    int ret = blk_open(layer->filename, layer->drv->name, flags, &layer->opts, &fresh, e);
    if (ret < 0) {
        struct err ignored;
        if (was_locked)
            hostfile_lock(f, perm, shared, &ignored);
        return ret;
    }
    parent->backing = fresh;
    blk_close(layer);
    *out = fresh;
    return 0;
}

void blk_close(struct blockdev *bs)
{
    while (bs) {
        struct blockdev *backing = bs->backing;
        blk_bitmaps_close(bs);
        if (bs->drv && bs->drv->close)
            bs->drv->close(bs);
        transport_close(bs->file);
        range_lock_set_destroy(&bs->requests);
        pthread_mutex_destroy(&bs->notifiers_lock);
        pthread_cond_destroy(&bs->notifiers_idle);
        pthread_mutex_destroy(&bs->status_lock);
        free(bs->filename);
        free(bs->backing_name);
        free(bs->backing_path);
        free(bs->backing_format);
        free(bs);
        bs = backing;
    }
}

/* Refuse to replace an image that a running process has open. */
static int check_target_not_in_use(const char *path, struct err *e)
{
    struct hostfile *f;
    int ret = hostfile_open(path, HOSTFILE_RDWR, &f, e);
    if (ret == -ENOENT) {
        err_clear(e);
        return 0;
    }
    if (ret < 0)
        return ret;
    hostfile_close(f);
    return 0;
}

int blk_backing_size(const struct blk_create_params *p, uint64_t *size, struct err *e)
{
    char *path = blk_resolve_backing_path(p->filename, p->backing_file);
    if (!path)
        return err_set(e, ENOMEM, "out of memory");
    struct blockdev *b;
    int ret = blk_open(path, p->backing_format, BLK_OPEN_NO_BACKING | BLK_OPEN_FORCE_SHARE,
                       p->open_opts, &b, e);
    free(path);
    if (ret < 0)
        return ret;
    *size = b->size;
    blk_close(b);
    return 0;
}

static int sync_directory_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -errno;
    int ret = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return ret;
}

/* A replaced image keeps its owner and permissions (qemu-img writes in
 * place, so they never change there): set on the new inode before any data
 * is written into it, so that a 0600 image's data is never readable by
 * others.  The owner first, since chown clears set-id bits; changing it
 * needs privileges, and without them the new file stays ours. */
static int keep_owner_and_mode(struct hostfile *f, const struct stat *old, const char *target,
                               struct err *e)
{
    if (fchown(f->fd, old->st_uid, old->st_gid) < 0 && errno != EPERM)
        return err_errno(e, errno, "%s: cannot keep the owner of the replaced image", target);
    if (fchmod(f->fd, old->st_mode & 07777) < 0)
        return err_errno(e, errno, "%s: cannot keep the permissions of the replaced image",
                         target);
    return 0;
}

static bool is_special_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && !S_ISREG(st.st_mode);
}

/* Remove "FILENAME.imgtool-tmp-PID" files that a killed imgtool left behind
 * (its process is gone), so that cron jobs killed at night do not fill the
 * backup directory with half-written images. */
static void remove_stale_temporaries(const char *filename)
{
    char *copy = strdup(filename);
    if (!copy)
        return;
    char *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : copy) : ".";
    const char *base = slash ? slash + 1 : copy;
    if (slash)
        *slash = '\0';
    DIR *d = opendir(dir);
    size_t blen = strlen(base);
    static const char tag[] = ".imgtool-tmp-";
    for (struct dirent *de; d && (de = readdir(d));) {
        if (strncmp(de->d_name, base, blen) || strncmp(de->d_name + blen, tag, sizeof(tag) - 1))
            continue;
        char *end;
        long pid = strtol(de->d_name + blen + sizeof(tag) - 1, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;   /* its writer may still be running */
        char *path = malloc(strlen(dir) + strlen(de->d_name) + 2);
        if (path) {
            sprintf(path, "%s/%s", dir, de->d_name);
            unlink(path);
            free(path);
        }
    }
    if (d)
        closedir(d);
    free(copy);
}

/* qemu-img 7.2 refuses -b without -F: probing the backing file's format
 * lets a guest that writes a qcow2 header into its raw disk choose which
 * host file the image reads.  The detected format is named as a hint. */
static int refuse_unknown_backing_format(const struct blk_create_params *p, struct err *e)
{
    char *path = blk_resolve_backing_path(p->filename, p->backing_file);
    struct blockdev *b = NULL;
    struct err ignored = { 0 };
    if (path)
        blk_open(path, NULL, BLK_OPEN_NO_BACKING | BLK_OPEN_FORCE_SHARE, p->open_opts, &b,
                 &ignored);
    free(path);
    if (!b)
        return err_set(e, EINVAL, "%s: Backing file specified without backing format "
                       "(give it with -F)", p->filename);
    err_set(e, EINVAL, "%s: Backing file specified without backing format (detected "
            "format of %s: %s; give it with -F)", p->filename, p->backing_file, b->drv->name);
    blk_close(b);
    return -EINVAL;
}

/* Names of URI-style protocols that imgtool itself opens (none yet but
 * NBD, which is being added): they keep their ':'. */
static bool is_protocol_name(const char *name)
{
    return !strncmp(name, "nbd:", 4) || !strncmp(name, "nbd+", 4) || !strncmp(name, "nbds:", 5) ||
           !strncmp(name, "nbds+", 5);
}

char *blk_backing_name_for_header(const char *name)
{
    /* QEMU reads "x:y.qcow2" as protocol "x" (path_has_protocol: a ':'
     * before any '/'); "./x:y.qcow2" is the same file to everyone. */
    const char *colon = strchr(name, ':'), *slash = strchr(name, '/');
    if (!colon || (slash && slash < colon) || is_protocol_name(name))
        return strdup(name);
    char *out = malloc(strlen(name) + 3);
    if (out) {
        memcpy(out, "./", 2);
        strcpy(out + 2, name);
    }
    return out;
}

int blk_measure(const char *format, struct kvopts *opts, struct blockdev *in,
                struct blk_measure *out, struct err *e)
{
    const struct blockdrv *drv = blk_find_driver(format);
    if (!drv)
        return unknown_format(format, e);
    if (!drv->measure)
        return err_set(e, ENOTSUP, "format '%s' does not support size measurement", format);
    return drv->measure(opts, in, out, e);
}

static int no_snapshots(struct blockdev *bs, struct err *e)
{
    return err_set(e, ENOTSUP, "%s: format '%s' does not support internal snapshots",
                   bs->filename, bs->drv->name);
}

int blk_snapshot_create(struct blockdev *bs, const char *name, uint32_t date_sec,
                        uint32_t date_nsec, struct err *e)
{
    if (!bs->drv->snapshot_create)
        return no_snapshots(bs, e);
    return bs->drv->snapshot_create(bs, name, date_sec, date_nsec, e);
}

int blk_snapshot_delete(struct blockdev *bs, const char *name, struct err *e)
{
    if (!bs->drv->snapshot_delete)
        return no_snapshots(bs, e);
    return bs->drv->snapshot_delete(bs, name, e);
}

int blk_snapshot_apply(struct blockdev *bs, const char *id_or_name, struct err *e)
{
    if (!bs->drv->snapshot_apply)
        return no_snapshots(bs, e);
    /* QEMU's bdrv_snapshot_goto: the bitmaps would not match the reverted
     * disk. */
    if (bs->nbitmaps)
        return err_set(e, EBUSY, "%s: Device has active dirty bitmaps", bs->filename);
    return bs->drv->snapshot_apply(bs, id_or_name, e);
}

int blk_snapshot_load(struct blockdev *bs, const char *id, const char *name,
                      const char *id_or_name, struct err *e)
{
    if (!bs->drv->snapshot_load)
        return no_snapshots(bs, e);
    if (!bs->read_only)
        return err_set(e, EINVAL, "%s: a snapshot is loaded read-only", bs->filename);
    int ret;
    if (id_or_name) {
        ret = bs->drv->snapshot_load(bs, id_or_name, NULL, e);
        if (ret == -ENOENT)
            ret = bs->drv->snapshot_load(bs, NULL, id_or_name, e);
    } else {
        ret = bs->drv->snapshot_load(bs, id, name, e);
    }
    if (ret == -ENOENT)
        err_set(e, ENOENT, "%s: Can't find snapshot", bs->filename);
    /* What was cached described the active disk. */
    pthread_mutex_lock(&bs->status_lock);
    bs->status_valid = false;
    pthread_mutex_unlock(&bs->status_lock);
    return ret;
}

static bool option_listed(const struct blk_option_desc *d, const char *key)
{
    for (; d && d->name; d++)
        if (!strcmp(d->name, key))
            return true;
    return false;
}

int blk_amend(struct blockdev *bs, struct kvopts *opts, const struct blk_progress *progress,
              struct err *e)
{
    if (!bs->drv->amend)
        return err_set(e, ENOTSUP, "%s: Format driver '%s' does not support option amendment",
                       bs->filename, bs->drv->name);
    for (size_t i = 0; i < opts->count; i++) {
        const char *key = opts->items[i].key;
        if (option_listed(bs->drv->amend_options, key))
            continue;
        if (option_listed(bs->drv->create_options, key))
            return err_set(e, EINVAL, "%s: Invalid parameter '%s': this option is only "
                           "supported for image creation", bs->filename, key);
        return err_set(e, EINVAL, "%s: Invalid parameter '%s'", bs->filename, key);
    }
    return bs->drv->amend(bs, opts, progress, e);
}

/* blk_create_begin; with `flush`, the new image is flushed before it is
 * returned (blk_create commits it at once). */
static int create_begin(const char *format, const struct blk_create_params *params, bool flush,
                        char **tmp_path, struct err *e)
{
    const struct blockdrv *drv = blk_find_driver(format);
    if (!drv)
        return unknown_format(format, e);
    if (!drv->create)
        return err_set(e, ENOTSUP, "format '%s' does not support creating images", format);
    struct blk_create_params p = *params;
    int ret;
    if (transport_name_is_uri(p.filename))
        return err_set(e, ENOTSUP, "%s: cannot create an image on an NBD export (write into "
                       "the existing export instead, e.g. convert -n)", p.filename);
    if (p.backing_file && !p.backing_format)
        return refuse_unknown_backing_format(&p, e);
    if (p.size == BLK_SIZE_FROM_BACKING) {
        if (!p.backing_file)
            return err_set(e, EINVAL, "%s: no size given and no backing file to take it from",
                           p.filename);
        if ((ret = blk_backing_size(&p, &p.size, e)) < 0)
            return ret;
    }
    /* QEMU's drivers round the size of a new image up to whole sectors
     * (and then see only whole sectors of an image that was not). */
    if (p.size > UINT64_MAX - 511)
        return err_set(e, EFBIG, "%s: size %llu is too large", p.filename,
                       (unsigned long long)p.size);
    p.size = align_up(p.size, 512);
    bool special = is_special_file(p.filename);
    if (!special && (ret = check_target_not_in_use(p.filename, e)) < 0)
        return ret;
    struct stat old;
    bool replacing = !special && stat(p.filename, &old) == 0;

    /* Build the image under a temporary name in the same directory (so a
     * relative backing file name resolves the same), to be renamed into
     * place.  Block devices are written in place. */
    size_t n = strlen(p.filename) + 32;
    char *tmp = malloc(n);
    if (!tmp)
        return err_set(e, ENOMEM, "out of memory");
    if (special) {
        snprintf(tmp, n, "%s", p.filename);
    } else {
        remove_stale_temporaries(p.filename);
        snprintf(tmp, n, "%s.imgtool-tmp-%ld", p.filename, (long)getpid());
        unlink(tmp);
    }
    struct hostfile *f;
    ret = hostfile_open(tmp, HOSTFILE_RDWR | (special ? 0 : HOSTFILE_CREATE), &f, e);
    if (ret < 0) {
        if (!special)   /* a special file's own message says what it is */
            err_set(e, -ret, "%s: cannot create image: %s", p.filename, strerror(-ret));
        free(tmp);
        return ret;
    }
    char *backing_name = NULL;
    ret = replacing ? keep_owner_and_mode(f, &old, p.filename, e) : 0;
    if (ret == 0 && p.backing_file && !(p.backing_file = backing_name =
                                        blk_backing_name_for_header(p.backing_file)))
        ret = err_set(e, ENOMEM, "out of memory");
    f->fault = p.open_opts ? p.open_opts->transport.fault : NULL;
    /* Under its temporary name the new image needs no ordering flushes
     * between its metadata writes, only one flush when it is complete
     * (a block device is written in place: there they stay). */
    hostfile_defer_flushes(f, !special);
    if (ret == 0)
        ret = drv->create(&f->tp, &p, e);
    free(backing_name);
    hostfile_defer_flushes(f, false);
    /* A block device is written in place: its new header is flushed now.
     * A temporary file is flushed once, when it is complete: the caller's
     * flush of the filled image (fdatasync covers the whole file, the
     * header written here too) comes before blk_create_commit. */
    if (ret == 0 && (flush || special))
        ret = hostfile_flush(f, e);
    hostfile_close(f);
    if (ret < 0) {
        err_replace(e, tmp, p.filename);
        blk_create_abort(tmp, p.filename);
        free(tmp);
        return ret;
    }
    *tmp_path = tmp;
    return 0;
}

int blk_create_begin(const char *format, const struct blk_create_params *params,
                     char **tmp_path, struct err *e)
{
    return create_begin(format, params, false, tmp_path, e);
}

int blk_create_commit(const char *tmp_path, const char *filename, struct err *e)
{
    if (strcmp(tmp_path, filename) == 0)
        return 0;
    if (rename(tmp_path, filename) < 0) {
        int ret = err_errno(e, errno, "%s: cannot rename the new image into place",
                            filename);
        unlink(tmp_path);
        return ret;
    }
    /* Until the directory is synced the rename may not survive a power
     * failure: callers clear dirty bits only after this returned 0. */
    int ret = sync_directory_of(filename);
    if (ret < 0)
        return err_set(e, -ret, "%s: the new image is in place, but syncing its directory "
                       "failed (%s), so it may not survive a power failure", filename,
                       strerror(-ret));
    return 0;
}

int blk_create_commit_open(struct blockdev *bs, const char *tmp_path, const char *filename,
                           struct err *e)
{
    struct hostfile *f = transport_hostfile(bs->file);
    /* Both names first: nothing can fail once the file is renamed. */
    char *name = strdup(filename), *file_name = strdup(filename);
    int ret;
    if (!f || !name || !file_name) {
        blk_create_abort(tmp_path, filename);
        ret = f ? err_set(e, ENOMEM, "%s: out of memory", filename)
                : err_set(e, EINVAL, "%s: not a new image file", filename);
    } else {
        ret = blk_create_commit(tmp_path, filename, e);
    }
    if (ret < 0) {
        free(name);
        free(file_name);
        return ret;
    }
    hostfile_renamed(f, file_name);
    free(bs->filename);
    bs->filename = name;
    return 0;
}

void blk_keep_page_cache(struct blockdev *bs)
{
    struct hostfile *f = transport_hostfile(bs->file);
    bs->open_flags &= ~(unsigned)BLK_OPEN_DROP_BEHIND;
    if (f)
        hostfile_keep_page_cache(f);
}

void blk_create_abort(const char *tmp_path, const char *filename)
{
    if (strcmp(tmp_path, filename) != 0)
        unlink(tmp_path);
}

int blk_create(const char *format, const struct blk_create_params *p, struct err *e)
{
    char *tmp;
    int ret = create_begin(format, p, true, &tmp, e);
    if (ret < 0)
        return ret;
    ret = blk_create_commit(tmp, p->filename, e);
    free(tmp);
    return ret;
}

static int check_range(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e)
{
    if (off > bs->size || len > bs->size - off)
        return err_set(e, EINVAL, "%s: range %llu+%llu is beyond the end of the image "
                       "(%llu bytes)", bs->filename, (unsigned long long)off,
                       (unsigned long long)len, (unsigned long long)bs->size);
    return 0;
}

static int check_writable(struct blockdev *bs, struct err *e)
{
    if (bs->read_only)
        return err_set(e, EROFS, "%s: image is open read-only", bs->filename);
    return 0;
}

/* A write of guest data: allowed, in range, and recorded in the dirty
 * bitmaps before the driver writes (so no change escapes them). */
static int begin_guest_write(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret == 0)
        ret = blk_bitmaps_check_guest_write(bs, e);
    if (ret == 0)
        ret = check_range(bs, off, len, e);
    if (ret == 0)
        blk_bitmaps_mark(bs, off, len);
    return ret;
}

/* In-flight request tracking (blockdev.h, "Threads"): a request holds its
 * range, widened to the driver's write alignment (the cluster a write may
 * allocate, copy on write or free), from before the driver sees it until
 * the driver is done.  Reads share ranges; anything that changes the disk
 * has its range to itself. */
static void request_begin(struct blockdev *bs, struct range_lock *req, uint64_t off,
                          uint64_t len, bool exclusive)
{
    uint64_t a = blk_write_alignment(bs);
    range_lock_acquire(&bs->requests, req, align_down(off, a), align_up(off + len, a),
                       exclusive);
}

static void request_end(struct blockdev *bs, struct range_lock *req)
{
    range_lock_release(&bs->requests, req);
}

void blk_drain(struct blockdev *bs)
{
    range_lock_drain(&bs->requests);
}

/* --- Write notifiers (blockdev.h) --- */

/* The notifiers one write called `before` on, with their tokens. */
struct notified_write {
    struct blk_write_notifier *n[BLK_MAX_WRITE_NOTIFIERS];
    void *token[BLK_MAX_WRITE_NOTIFIERS];
    size_t count;
};

/* Wait until the list may change: nobody else changes it, and no write is
 * between its before and after calls (lock held). */
static void notifiers_begin_change(struct blockdev *bs)
{
    while (bs->notifiers_changing)
        pthread_cond_wait(&bs->notifiers_idle, &bs->notifiers_lock);
    bs->notifiers_changing = true;
    while (bs->notifiers_users)
        pthread_cond_wait(&bs->notifiers_idle, &bs->notifiers_lock);
}

static void notifiers_end_change(struct blockdev *bs)
{
    bs->notifiers_changing = false;
    pthread_cond_broadcast(&bs->notifiers_idle);
    pthread_mutex_unlock(&bs->notifiers_lock);
}

int blk_add_write_notifier(struct blockdev *bs, struct blk_write_notifier *n, struct err *e)
{
    pthread_mutex_lock(&bs->notifiers_lock);
    notifiers_begin_change(bs);
    int ret = 0;
    if (bs->nnotifiers == BLK_MAX_WRITE_NOTIFIERS)
        ret = err_set(e, ENOSPC, "%s: already %d write notifiers", bs->filename,
                      BLK_MAX_WRITE_NOTIFIERS);
    else
        bs->notifiers[bs->nnotifiers++] = n;
    notifiers_end_change(bs);
    return ret;
}

void blk_remove_write_notifier(struct blockdev *bs, struct blk_write_notifier *n)
{
    pthread_mutex_lock(&bs->notifiers_lock);
    notifiers_begin_change(bs);
    for (size_t i = 0; i < bs->nnotifiers; i++) {
        if (bs->notifiers[i] == n) {
            memmove(&bs->notifiers[i], &bs->notifiers[i + 1],
                    (bs->nnotifiers - i - 1) * sizeof(bs->notifiers[0]));
            bs->nnotifiers--;
            break;
        }
    }
    notifiers_end_change(bs);
}

/* The write is done with the notifiers it saw: the list may change. */
static void notifiers_leave(struct blockdev *bs)
{
    pthread_mutex_lock(&bs->notifiers_lock);
    if (--bs->notifiers_users == 0)
        pthread_cond_broadcast(&bs->notifiers_idle);
    pthread_mutex_unlock(&bs->notifiers_lock);
}

static void notify_after(struct blockdev *bs, const struct blk_write_request *r,
                         const struct notified_write *w, size_t count, int ret)
{
    for (size_t i = 0; i < count; i++)
        w->n[i]->after(w->n[i]->opaque, r, ret, w->token[i]);
    if (w->count)
        notifiers_leave(bs);
}

/* Call every notifier's before; if one refuses the write, those already
 * called get their after with its error, and the write fails. */
static int notify_before(struct blockdev *bs, const struct blk_write_request *r,
                         struct notified_write *w, struct err *e)
{
    pthread_mutex_lock(&bs->notifiers_lock);
    while (bs->notifiers_changing)
        pthread_cond_wait(&bs->notifiers_idle, &bs->notifiers_lock);
    w->count = bs->nnotifiers;
    memcpy(w->n, bs->notifiers, w->count * sizeof(w->n[0]));
    if (w->count)
        bs->notifiers_users++;
    pthread_mutex_unlock(&bs->notifiers_lock);
    for (size_t i = 0; i < w->count; i++) {
        w->token[i] = NULL;
        int ret = w->n[i]->before ? w->n[i]->before(w->n[i]->opaque, r, &w->token[i], e) : 0;
        if (ret < 0) {
            notify_after(bs, r, w, i, ret);
            return ret;
        }
    }
    return 0;
}

/* The driver calls of the four kinds of write. */
static int driver_pwritev(struct blockdev *bs, const struct blk_write_request *r, struct err *e)
{
    return bs->drv->pwritev(bs, r->offset, r->iov, r->iovcnt, e);
}

static int driver_write_zeroes(struct blockdev *bs, const struct blk_write_request *r,
                               struct err *e)
{
    return bs->drv->write_zeroes(bs, r->offset, r->length, r->flags, e);
}

static int driver_discard(struct blockdev *bs, const struct blk_write_request *r, struct err *e)
{
    return bs->drv->discard(bs, r->offset, r->length, e);
}

static int driver_pwrite_compressed(struct blockdev *bs, const struct blk_write_request *r,
                                    struct err *e)
{
    return bs->drv->pwrite_compressed(bs, r->offset, r->iov[0].iov_base, r->length, e);
}

/* A write that changes the disk, between its notifications, holding its
 * range exclusively while the driver works. */
static int run_write(struct blockdev *bs, const struct blk_write_request *r,
                     int (*fn)(struct blockdev *, const struct blk_write_request *, struct err *),
                     struct err *e)
{
    struct notified_write w;
    int ret = notify_before(bs, r, &w, e);
    if (ret < 0)
        return ret;
    struct range_lock req;
    request_begin(bs, &req, r->offset, r->length, true);
    ret = fn(bs, r, e);
    request_end(bs, &req);
    notify_after(bs, r, &w, w.count, ret);
    return ret;
}

int blk_preadv(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
               struct err *e)
{
    size_t len = iov_size(iov, iovcnt);
    int ret = check_range(bs, off, len, e);
    if (ret < 0 || len == 0)
        return ret;
    struct range_lock req;
    request_begin(bs, &req, off, len, false);
    ret = bs->drv->preadv(bs, off, iov, iovcnt, e);
    request_end(bs, &req);
    return ret;
}

int blk_pwritev(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                struct err *e)
{
    size_t len = iov_size(iov, iovcnt);
    int ret = check_probed_header_write(bs, off, iov, iovcnt, e);
    if (ret == 0)
        ret = begin_guest_write(bs, off, len, e);
    if (ret < 0 || len == 0)
        return ret;
    struct blk_write_request r = { .kind = BLK_WRITE_DATA, .offset = off, .length = len,
                                   .iov = iov, .iovcnt = iovcnt };
    return run_write(bs, &r, driver_pwritev, e);
}

int blk_pread(struct blockdev *bs, uint64_t off, void *buf, size_t len, struct err *e)
{
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    return blk_preadv(bs, off, &iov, 1, e);
}

int blk_pwrite(struct blockdev *bs, uint64_t off, const void *buf, size_t len, struct err *e)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return blk_pwritev(bs, off, &iov, 1, e);
}

/* Whether a block status run's data is stored plainly in its layer's
 * file, at ext->host_offset (what copy offloading and mapping need). */
static bool stored_plainly(const struct blk_extent *ext)
{
    unsigned need = BLK_STATUS_DATA | BLK_STATUS_OFFSET;
    return (ext->flags & (need | BLK_STATUS_ZERO)) == need && ext->layer;
}

int blk_map_run(const struct blk_extent *ext, size_t len, struct transport_view *v,
                struct err *e)
{
    *v = (struct transport_view){ 0 };
    if (!stored_plainly(ext) || len > ext->length)
        return -ENOTSUP;
    return transport_map_read(ext->layer->file, ext->host_offset, len, v, e);
}

/* blk_copy_range, with both ranges held. */
static int copy_range_runs(struct blockdev *dst, uint64_t off, struct blockdev *src,
                           uint64_t src_off, uint64_t len, struct err *e)
{
    while (len) {
        struct blk_extent ext;
        int ret = blk_block_status(src, src_off, len, &ext, e);
        if (ret < 0)
            return ret;
        if (!stored_plainly(&ext))
            return err_set(e, ENOTSUP, "%s: no host data to offload at offset %llu",
                           src->filename, (unsigned long long)src_off);
        ret = dst->drv->copy_range_to(dst, off, ext.length, ext.layer->file, ext.host_offset,
                                      e);
        if (ret < 0)
            return ret;
        off += ext.length;
        src_off += ext.length;
        len -= ext.length;
    }
    return 0;
}

int blk_copy_range(struct blockdev *dst, uint64_t off, struct blockdev *src, uint64_t src_off,
                   uint64_t len, struct err *e)
{
    /* A probed target's first sector is checked by blk_pwritev. */
    if (!dst->drv->copy_range_to || dst->probed)
        return err_set(e, ENOTSUP, "%s: format '%s' cannot take offloaded copies",
                       dst->filename, dst->drv->name);
    int ret = check_range(src, src_off, len, e);
    if (ret == 0)
        ret = begin_guest_write(dst, off, len, e);
    if (ret < 0 || len == 0)
        return ret;
    struct range_lock wreq, rreq;
    request_begin(src, &rreq, src_off, len, false);
    request_begin(dst, &wreq, off, len, true);
    ret = copy_range_runs(dst, off, src, src_off, len, e);
    request_end(dst, &wreq);
    request_end(src, &rreq);
    return ret;
}

int blk_write_zeroes(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                     struct err *e)
{
    int ret = begin_guest_write(bs, off, len, e);
    if (ret < 0 || len == 0)
        return ret;
    struct blk_write_request r = { .kind = BLK_WRITE_ZEROES, .offset = off, .length = len,
                                   .flags = flags };
    return run_write(bs, &r, driver_write_zeroes, e);
}

int blk_discard(struct blockdev *bs, uint64_t off, uint64_t len, struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret == 0)
        ret = check_range(bs, off, len, e);
    if (ret < 0 || len == 0)
        return ret;
    if (!bs->drv->discard)
        return 0;   /* discard is a hint: nothing changes, nothing is marked */
    if ((ret = begin_guest_write(bs, off, len, e)) < 0)
        return ret;
    struct blk_write_request r = { .kind = BLK_WRITE_DISCARD, .offset = off, .length = len };
    return run_write(bs, &r, driver_discard, e);
}

int blk_flush(struct blockdev *bs, struct err *e)
{
    if (bs->read_only || !bs->drv->flush)
        return 0;
    return bs->drv->flush(bs, e);
}

void blk_defer_flushes(struct blockdev *bs, bool defer)
{
    /* Ending the deferral: the metadata the driver caches is written back
     * first, still without ordering flushes, so that the caller's blk_flush
     * is one flush of the whole image.  A failure here leaves the caches
     * dirty for that blk_flush to retry and report. */
    if (!defer && bs->drv->flush && !bs->read_only) {
        struct err ignored;
        bs->drv->flush(bs, &ignored);
    }
    transport_defer_flushes(bs->file, defer);
}

int blk_truncate(struct blockdev *bs, uint64_t size, struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret < 0)
        return ret;
    if (!bs->drv->truncate)
        return err_set(e, ENOTSUP, "%s: format '%s' cannot be resized", bs->filename,
                       bs->drv->name);
    if ((ret = blk_bitmaps_check_guest_write(bs, e)) < 0 ||
        (ret = blk_bitmaps_check_truncate(bs, e)) < 0)
        return ret;
    blk_drain(bs);
    if ((ret = bs->drv->truncate(bs, size, e)) < 0)
        return ret;
    return blk_bitmaps_truncate(bs, size, e);
}

static const char *const prealloc_names[] = {
    [BLK_PREALLOC_OFF] = "off", [BLK_PREALLOC_METADATA] = "metadata",
    [BLK_PREALLOC_FALLOC] = "falloc", [BLK_PREALLOC_FULL] = "full",
};

int blk_parse_prealloc(const char *name, enum blk_prealloc *mode)
{
    for (unsigned m = 0; m < sizeof(prealloc_names) / sizeof(prealloc_names[0]); m++) {
        if (!strcmp(name, prealloc_names[m])) {
            *mode = (enum blk_prealloc)m;
            return 0;
        }
    }
    return -EINVAL;
}

int blk_preallocate(struct blockdev *bs, uint64_t off, uint64_t len, enum blk_prealloc mode,
                    struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret < 0 || mode == BLK_PREALLOC_OFF)
        return ret;
    if (!bs->drv->preallocate)
        return err_set(e, ENOTSUP, "%s: format '%s' does not support preallocation=%s",
                       bs->filename, bs->drv->name, prealloc_names[mode]);
    blk_drain(bs);
    return bs->drv->preallocate(bs, off, len, mode, e);
}

uint32_t blk_write_alignment(struct blockdev *bs)
{
    uint32_t a = bs->drv->write_alignment ? bs->drv->write_alignment(bs) : 1;
    return a ? a : 1;
}

int blk_make_empty(struct blockdev *bs, struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret == 0)
        ret = blk_bitmaps_check_guest_write(bs, e);
    if (ret < 0)
        return ret;
    if (!bs->drv->make_empty)
        return err_set(e, ENOTSUP, "%s: format '%s' cannot be emptied (use -d to keep "
                       "it as it is)", bs->filename, bs->drv->name);
    return bs->drv->make_empty(bs, e);
}

int blk_set_backing(struct blockdev *bs, const char *name, const char *format,
                    struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret < 0)
        return ret;
    if (!bs->drv->set_backing)
        return err_set(e, ENOTSUP, "%s: format '%s' has no backing file", bs->filename,
                       bs->drv->name);
    char *stored = name ? blk_backing_name_for_header(name) : NULL;
    if (name && !stored)
        return err_set(e, ENOMEM, "out of memory");
    ret = bs->drv->set_backing(bs, stored, format, e);
    free(stored);
    return ret;
}

const void *blk_record_get(struct blockdev *bs, size_t *len)
{
    *len = 0;
    return bs->drv->record_get ? bs->drv->record_get(bs, len) : NULL;
}

int blk_record_set(struct blockdev *bs, const void *data, size_t len, struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret < 0)
        return ret;
    if (!bs->drv->record_set)
        return err_set(e, ENOTSUP, "%s: format '%s' cannot keep a backup record",
                       bs->filename, bs->drv->name);
    return bs->drv->record_set(bs, data, len, e);
}

int blk_check(struct blockdev *bs, struct blk_check_result *res, unsigned fix, struct err *e)
{
    if (!bs->drv->check)
        return err_set(e, ENOTSUP, "%s: format '%s' does not support checks", bs->filename,
                       bs->drv->name);
    if (fix && bs->read_only)
        return err_set(e, EROFS, "%s: repairing needs the image open read-write",
                       bs->filename);
    return bs->drv->check(bs, res, fix, e);
}

void blk_check_report(struct blk_check_result *res, const char *fmt, ...)
{
    /* A bounded number of lines: a badly damaged image must not make the
     * report itself huge; the counters still count everything. */
    if (res->nmessages >= 10000)
        return;
    char **m = realloc(res->messages, sizeof(*m) * (res->nmessages + 1));
    if (!m)
        return;
    res->messages = m;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&m[res->nmessages], fmt, ap) >= 0)
        res->nmessages++;
    va_end(ap);
}

void blk_check_result_free(struct blk_check_result *res)
{
    for (size_t i = 0; i < res->nmessages; i++)
        free(res->messages[i]);
    free(res->messages);
    memset(res, 0, sizeof(*res));
}

int blk_pwrite_compressed(struct blockdev *bs, uint64_t off, const void *buf, size_t len,
                          struct err *e)
{
    int ret = check_writable(bs, e);
    if (ret == 0)
        ret = check_range(bs, off, len, e);
    if (ret == 0)
        ret = blk_check_compression(bs->drv, bs->filename, e);
    if (ret < 0)
        return ret;
    if ((ret = begin_guest_write(bs, off, len, e)) < 0 || len == 0)
        return ret;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct blk_write_request r = { .kind = BLK_WRITE_COMPRESSED, .offset = off, .length = len,
                                   .iov = &iov, .iovcnt = 1 };
    return run_write(bs, &r, driver_pwrite_compressed, e);
}

int blk_check_compression(const struct blockdrv *drv, const char *filename, struct err *e)
{
    if (!drv->pwrite_compressed)
        return err_set(e, ENOTSUP, "%s: format '%s' does not support compression",
                       filename, drv->name);
    return 0;
}

/* The rest of the last answer from `off` on, cut at `bytes`, if it covers
 * `off` (see blockdev.status). */
static bool cached_status(struct blockdev *bs, uint64_t off, uint64_t bytes,
                          struct blk_extent *ext)
{
    pthread_mutex_lock(&bs->status_lock);
    bool hit = bs->status_valid && off >= bs->status_start &&
               off - bs->status_start < bs->status.length;
    if (hit) {
        uint64_t skip = off - bs->status_start;
        *ext = bs->status;
        ext->length = min_u64(ext->length - skip, bytes);
        if (ext->flags & BLK_STATUS_OFFSET)
            ext->host_offset += skip;
    }
    pthread_mutex_unlock(&bs->status_lock);
    return hit;
}

int blk_block_status_layer(struct blockdev *bs, uint64_t off, uint64_t bytes,
                           struct blk_extent *ext, struct err *e)
{
    int ret = check_range(bs, off, bytes, e);
    if (ret < 0)
        return ret;
    if (bytes == 0)
        return err_set(e, EINVAL, "%s: block status of an empty range", bs->filename);
    if (bs->read_only && cached_status(bs, off, bytes, ext))
        return 0;
    memset(ext, 0, sizeof(*ext));
    ext->layer = bs;
    ret = bs->drv->block_status(bs, off, bytes, ext, e);
    if (ret < 0)
        return ret;
    if (ext->length == 0 || ext->length > bytes)
        return err_set(e, EIO, "%s: driver returned a bad block status length",
                       bs->filename);
    if (bs->read_only) {
        pthread_mutex_lock(&bs->status_lock);
        bs->status = *ext;
        bs->status_start = off;
        bs->status_valid = true;
        pthread_mutex_unlock(&bs->status_lock);
    }
    return 0;
}

int blk_block_status_above(struct blockdev *bs, const struct blockdev *base, uint64_t off,
                           uint64_t bytes, struct blk_extent *ext, struct err *e)
{
    int depth = 0;
    struct blockdev *layer = bs;
    for (;;) {
        int ret = blk_block_status_layer(layer, off, bytes, ext, e);
        if (ret < 0)
            return ret;
        ext->depth = depth;
        if (ext->flags & BLK_STATUS_ALLOCATED)
            return 0;
        bytes = ext->length;
        struct blockdev *backing = layer->backing;
        if (!backing || backing == base) {
            /* Nothing below: reads return zeroes when there is no backing
             * file at all; above `base` the run is simply unallocated. */
            if (!backing)
                ext->flags = (ext->flags & ~BLK_STATUS_DATA) | BLK_STATUS_ZERO;
            return 0;
        }
        if (off >= backing->size) {
            /* Past the end of a shorter backing file: zeroes, reported at
             * this layer, as qemu-img map does.  Above `base` the short
             * layer decides them, so they count as allocated (QEMU's
             * rule: commit writes these zeroes into base). */
            ext->flags = BLK_STATUS_ZERO | (base ? BLK_STATUS_ALLOCATED : 0);
            return 0;
        }
        depth++;
        bytes = min_u64(bytes, backing->size - off);
        layer = backing;
    }
}

int blk_block_status(struct blockdev *bs, uint64_t off, uint64_t bytes,
                     struct blk_extent *ext, struct err *e)
{
    return blk_block_status_above(bs, NULL, off, bytes, ext, e);
}

int blk_block_status_top(struct blockdev *bs, uint64_t off, uint64_t bytes,
                         struct blk_extent *ext, struct err *e)
{
    if (bs->backing)
        return blk_block_status_above(bs, bs->backing, off, bytes, ext, e);
    int ret = blk_block_status(bs, off, bytes, ext, e);
    if (ret < 0)
        return ret;
    /* Only raw reaches a layered transport (an NBD export): its bytes are
     * the transport's, so the transport's layers are the image's. */
    bool top;
    uint64_t run;
    ret = transport_top_layer_status(bs->file, off, ext->length, &top, &run, e);
    if (ret == -ENOTSUP)
        return 0;
    if (ret < 0)
        return ret;
    ext->length = run;
    if (!top)
        ext->flags &= ~BLK_STATUS_ALLOCATED;
    return 0;
}

bool blk_can_zero_fast(struct blockdev *bs)
{
    return !bs->read_only && transport_can_zero_fast(bs->file);
}

int blk_make_zero(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                  struct err *e)
{
    for (uint64_t end = off + len; off < end;) {
        struct blk_extent ext;
        int ret = blk_block_status(bs, off, end - off, &ext, e);
        if (ret == 0 && !(ext.flags & BLK_STATUS_ZERO))
            ret = blk_write_zeroes(bs, off, ext.length, flags, e);
        if (ret < 0)
            return ret;
        off += ext.length;
    }
    return 0;
}

int blk_block_status_host(struct blockdev *bs, uint64_t off, uint64_t bytes,
                          struct blk_extent *ext, struct err *e)
{
    int ret = blk_block_status(bs, off, bytes, ext, e);
    unsigned mask = BLK_STATUS_DATA | BLK_STATUS_ZERO | BLK_STATUS_OFFSET | BLK_STATUS_RECURSE;
    if (ret < 0 || (ext->flags & mask) != (mask & ~BLK_STATUS_ZERO) || !ext->layer)
        return ret;
    unsigned st;
    uint64_t run;
    ret = transport_data_status(ext->layer->file, ext->host_offset, ext->length, &st, &run, e);
    if (ret < 0)
        return ret;
    ext->length = min_u64(ext->length, run);
    if (!(st & TRANSPORT_DATA))
        ext->flags |= BLK_STATUS_ZERO;
    return 0;
}

int blk_read_backing(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                     struct err *e)
{
    size_t len = iov_size(iov, iovcnt);
    struct blockdev *b = bs->backing;
    if (!b || off >= b->size) {
        iov_memset(iov, iovcnt, 0, 0, len);
        return 0;
    }
    uint64_t in_backing = min_u64(len, b->size - off);
    if (in_backing == len)
        return blk_preadv(b, off, iov, iovcnt, e);
    /* Split the iovec at the backing file's end; the tail reads as zero. */
    struct iovec *head = malloc(sizeof(*head) * (size_t)iovcnt);
    if (!head)
        return err_set(e, ENOMEM, "out of memory");
    int n = 0;
    uint64_t left = in_backing;
    for (int i = 0; i < iovcnt && left; i++) {
        head[n] = iov[i];
        if (head[n].iov_len > left)
            head[n].iov_len = left;
        left -= head[n].iov_len;
        n++;
    }
    int ret = blk_preadv(b, off, head, n, e);
    free(head);
    if (ret == 0)
        iov_memset(iov, iovcnt, in_backing, 0, len - in_backing);
    return ret;
}

int blk_get_info(struct blockdev *bs, struct prop **out, struct err *e)
{
    struct prop *info = prop_new_object();
    if (!info)
        return err_set(e, ENOMEM, "out of memory");
    uint64_t actual = 0;
    int ret = transport_allocated_size(bs->file, &actual, e);
    /* An NBD export does not tell: qemu-img omits actual-size then. */
    bool have_actual = ret == 0;
    if (ret == -ENOTSUP)
        ret = 0;
    if (ret < 0)
        goto fail;
    /* The transport's name: the path, or the URI in QEMU's spelling. */
    prop_add_string(info, "filename", bs->file->name);
    prop_add_string(info, "format", bs->drv->name);
    prop_add_uint(info, "virtual-size", bs->size);
    if (have_actual)
        prop_add_uint(info, "actual-size", actual);
    if (bs->drv->get_info && (ret = bs->drv->get_info(bs, info, e)) < 0)
        goto fail;
    /* QEMU has no image information for a raw disk over NBD: no flag. */
    if (!prop_get(info, "dirty-flag") && transport_hostfile(bs->file))
        prop_add_bool(info, "dirty-flag", false);
    if (bs->backing_name && bs->backing_name[0]) {
        prop_add_string(info, "backing-filename", bs->backing_name);
        char *full = blk_resolve_backing_path(bs->filename, bs->backing_name);
        prop_add_string(info, "full-backing-filename", full ? full : bs->backing_name);
        free(full);
        if (bs->backing_format)
            prop_add_string(info, "backing-filename-format", bs->backing_format);
    }
    if (prop_failed(info)) {
        ret = err_set(e, ENOMEM, "out of memory");
        goto fail;
    }
    /* The key order of qemu-img info --output=json, for scripts that
     * compare the text. */
    static const char *const qemu_order[] = {
        "snapshots", "backing-filename-format", "virtual-size", "filename", "cluster-size",
        "format", "actual-size", "format-specific", "full-backing-filename",
        "backing-filename", "dirty-flag", NULL,
    };
    prop_reorder(info, qemu_order);
    *out = info;
    return 0;
fail:
    prop_free(info);
    return ret;
}
