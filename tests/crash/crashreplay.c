/* crashreplay: rebuild the states a power failure could have left, from
 * a copy of a directory taken before a command ran and the log writelog.so
 * recorded while it ran (see tests/crash/README).  Test-only.
 *
 *   crashreplay points LOG MAX
 *       Print up to MAX crash points (record counts, one per line): the
 *       start, the end, and the moments just before and just after each
 *       fsync, directory fsync and rename, evenly thinned out to MAX (0:
 *       all of them, e.g. to cover every operation boundary).
 *   crashreplay dump LOG
 *       Print the records, one a line (to see what a command did).
 *   crashreplay state LOG SNAPDIR OUTDIR POINT SEED
 *       Write into the empty directory OUTDIR the files of SNAPDIR as a
 *       power failure after the first POINT records may leave them: each
 *       file holds every change made before its last fsync/fdatasync, plus
 *       a random subset (chosen by SEED) of the changes after it; the names
 *       (creations, renames, unlinks) are those before the last fsync of
 *       the directory plus a random prefix of the later ones (journaling
 *       file systems commit name changes in order).
 *   crashreplay uncovered A B EXTENTS
 *       Print the byte ranges (512-byte resolution) where files A and B
 *       differ and which no "START LENGTH" line of file EXTENTS covers;
 *       exit 1 if there is any.
 *   crashreplay oldornew FILE OLD NEW UNIT
 *       Print each UNIT-sized block of FILE that is equal neither to OLD's
 *       nor to NEW's; exit 1 if there is any.
 * Exit status 2 on bad usage or an unreadable log. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "crashreplay: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        die("%s", "out of memory");
    return p;
}

/* --- the log --- */

struct rec {
    const struct log_record *r;
    const char *name;           /* name_len bytes */
    const unsigned char *data;  /* LOG_WRITE: length bytes */
    int obj;                    /* the file it acts on, -1: none */
    bool kept;                  /* survives the crash being built */
};

static struct rec *recs;
static size_t nrecs;

static void read_log(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        die("%s: cannot open", path);
    if (st.st_size == 0)
        return;
    const unsigned char *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        die("%s: cannot map", path);
    size_t at = 0, size = (size_t)st.st_size, cap = 0;
    while (at < size) {
        const struct log_record *r = (const void *)(p + at);
        if (size - at < sizeof(*r) || r->magic != LOG_MAGIC)
            die("%s: bad record", path);
        size_t data = r->type == LOG_WRITE ? r->length : 0;
        if (size - at - sizeof(*r) < r->name_len + data)
            die("%s: truncated record", path);
        if (nrecs == cap)
            recs = xrealloc(recs, (cap = cap ? cap * 2 : 1024) * sizeof(*recs));
        recs[nrecs++] = (struct rec){ r, (const char *)(r + 1),
                                      (const unsigned char *)(r + 1) + r->name_len, -1, false };
        at += sizeof(*r) + r->name_len + data;
    }
}

static bool is_point_type(int t)
{
    return t == LOG_FSYNC || t == LOG_DIRSYNC || t == LOG_RENAME || t == LOG_SYNCALL;
}

static int cmd_points(char **argv)
{
    read_log(argv[0]);
    long max = atol(argv[1]);
    size_t *pts = xrealloc(NULL, (2 * nrecs + 2) * sizeof(*pts)), n = 0;
    pts[n++] = 0;
    for (size_t i = 0; i < nrecs; i++) {
        if (!is_point_type(recs[i].r->type))
            continue;
        if (pts[n - 1] != i)
            pts[n++] = i;
        pts[n++] = i + 1;
    }
    if (pts[n - 1] != nrecs)
        pts[n++] = nrecs;
    size_t want = max > 0 && (size_t)max < n ? (size_t)max : n;
    for (size_t k = 0; k < want; k++)
        printf("%zu\n", pts[want > 1 ? k * (n - 1) / (want - 1) : 0]);
    return 0;
}

static int cmd_dump(char **argv)
{
    static const char *const types[] = {
        "?", "open", "write", "truncate", "fallocate", "fsync", "dirsync", "rename",
        "unlink", "syncall",
    };
    read_log(argv[0]);
    for (size_t i = 0; i < nrecs; i++) {
        const struct log_record *r = recs[i].r;
        const char *name = recs[i].name;
        size_t n = r->name_len;
        printf("%zu %s ino=%" PRIu64 " off=%" PRIu64 " len=%" PRIu64 " flags=%u %.*s%s%.*s\n",
               i, r->type < 10 ? types[r->type] : "?", r->ino, r->offset, r->length, r->flags,
               (int)strnlen(name, n), name, r->type == LOG_RENAME ? " -> " : "",
               r->type == LOG_RENAME ? (int)(n - strnlen(name, n) - 1) : 0,
               name + strnlen(name, n) + 1);
    }
    return 0;
}

/* --- files and names --- */

struct obj {
    char *snapshot;     /* its contents before the run: SNAPDIR/snapshot; NULL: empty */
    size_t last_sync;   /* records before this one are durable (0: none) */
};
static struct obj *objs;
static size_t nobjs;

static int new_obj(const char *snapshot)
{
    objs = xrealloc(objs, (nobjs + 1) * sizeof(*objs));
    objs[nobjs] = (struct obj){ snapshot ? strdup(snapshot) : NULL, 0 };
    return (int)nobjs++;
}

/* A directory: names bound to files. */
struct names {
    char **name;
    int *obj;
    size_t n;
};

static long names_find(const struct names *d, const char *name)
{
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->name[i], name))
            return (long)i;
    return -1;
}

static void names_set(struct names *d, const char *name, int obj)
{
    long i = names_find(d, name);
    if (i >= 0) {
        d->obj[i] = obj;
        return;
    }
    d->name = xrealloc(d->name, (d->n + 1) * sizeof(char *));
    d->obj = xrealloc(d->obj, (d->n + 1) * sizeof(int));
    d->name[d->n] = strdup(name);
    d->obj[d->n++] = obj;
}

static void names_remove(struct names *d, const char *name)
{
    long i = names_find(d, name);
    if (i < 0)
        return;
    free(d->name[i]);
    d->name[i] = d->name[--d->n];
    d->obj[i] = d->obj[d->n];
}

/* The file `name` refers to, a file of the snapshot if none yet. */
static int names_get(struct names *d, const char *name)
{
    long i = names_find(d, name);
    if (i >= 0)
        return d->obj[i];
    int o = new_obj(name);
    names_set(d, name, o);
    return o;
}

static char *rec_name(const struct rec *r, int which)
{
    static char buf[2][NAME_MAX + 1];
    size_t n = r->r->name_len;
    const char *s = r->name;
    if (which == 1) {
        size_t first = strnlen(s, n);
        s += first + 1;
        n -= first + 1;
    } else {
        n = strnlen(s, n);
    }
    snprintf(buf[which], sizeof(buf[which]), "%.*s", (int)n, s);
    return buf[which];
}

static size_t last_dirsync;

/* Replay the history of the first `point` records as it happened: which
 * file each record acts on, and when each file was last synced. */
static void follow_history(size_t point, struct names *real)
{
    uint64_t *inos = NULL;
    int *ino_obj = NULL;
    size_t ninos = 0;
    for (size_t i = 0; i < point; i++) {
        struct rec *r = &recs[i];
        int t = r->r->type;
        if (t == LOG_OPEN) {
            const char *name = rec_name(r, 0);
            r->obj = (r->r->flags & LOG_CREATED) ? new_obj(NULL) : names_get(real, name);
            names_set(real, name, r->obj);
            size_t k = 0;
            while (k < ninos && inos[k] != r->r->ino)
                k++;
            if (k == ninos) {
                inos = xrealloc(inos, (ninos + 1) * sizeof(*inos));
                ino_obj = xrealloc(ino_obj, (ninos + 1) * sizeof(*ino_obj));
                inos[ninos++] = r->r->ino;
            }
            ino_obj[k] = r->obj;
        } else if (t == LOG_WRITE || t == LOG_TRUNCATE || t == LOG_FALLOCATE ||
                   t == LOG_FSYNC) {
            size_t k = 0;
            while (k < ninos && inos[k] != r->r->ino)
                k++;
            if (k == ninos)
                die("%s", "a change to a file the log never saw opened");
            r->obj = ino_obj[k];
            if (t == LOG_FSYNC)
                objs[r->obj].last_sync = i;
        } else if (t == LOG_DIRSYNC) {
            last_dirsync = i;
        } else if (t == LOG_SYNCALL) {
            last_dirsync = i;
            for (size_t o = 0; o < nobjs; o++)
                objs[o].last_sync = i;
        } else if (t == LOG_RENAME) {
            r->obj = names_get(real, rec_name(r, 0));
            names_remove(real, rec_name(r, 0));
            names_set(real, rec_name(r, 1), r->obj);
        } else if (t == LOG_UNLINK) {
            names_remove(real, rec_name(r, 0));
        }
    }
    free(inos);
    free(ino_obj);
}

static uint64_t rng_state;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static bool is_name_op(const struct rec *r)
{
    return r->r->type == LOG_RENAME || r->r->type == LOG_UNLINK ||
           (r->r->type == LOG_OPEN && (r->r->flags & LOG_CREATED));
}

/* Which records survive: the crash's random choices. */
static void choose(size_t point)
{
    size_t late_names = 0;
    for (size_t i = 0; i < point; i++) {
        struct rec *r = &recs[i];
        if (is_name_op(r))
            late_names += i >= last_dirsync;
        else if (r->obj >= 0)
            r->kept = i < objs[r->obj].last_sync || (rng() >> 33) % 2;
    }
    size_t prefix = (size_t)(rng() >> 33) % (late_names + 1);
    for (size_t i = 0; i < point; i++) {
        struct rec *r = &recs[i];
        if (is_name_op(r))
            r->kept = i < last_dirsync || prefix-- > 0;
    }
}

/* The names after the crash: the snapshot's, changed by the kept name
 * operations. */
static void crash_names(const char *snapdir, const struct names *real, size_t point,
                        struct names *out)
{
    DIR *d = opendir(snapdir);
    if (!d)
        die("%s: cannot open", snapdir);
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..")))
            continue;
        int o = -1;
        for (size_t k = 0; k < nobjs && o < 0; k++)
            if (objs[k].snapshot && !strcmp(objs[k].snapshot, de->d_name))
                o = (int)k;
        names_set(out, de->d_name, o >= 0 ? o : new_obj(de->d_name));
    }
    closedir(d);
    (void)real;
    for (size_t i = 0; i < point; i++) {
        struct rec *r = &recs[i];
        if (!is_name_op(r) || !r->kept)
            continue;
        if (r->r->type == LOG_OPEN) {
            names_set(out, rec_name(r, 0), r->obj);
        } else if (r->r->type == LOG_UNLINK) {
            names_remove(out, rec_name(r, 0));
        } else if (names_find(out, rec_name(r, 0)) >= 0) {
            int o = out->obj[names_find(out, rec_name(r, 0))];
            names_remove(out, rec_name(r, 0));
            names_set(out, rec_name(r, 1), o);
        }
    }
}

static void copy_sparse(const char *from, int out)
{
    int in = open(from, O_RDONLY);
    struct stat st;
    if (in < 0 || fstat(in, &st) < 0)
        die("%s: cannot open", from);
    static char buf[1 << 16];
    off_t data = 0;
    while ((data = lseek(in, data, SEEK_DATA)) >= 0) {
        off_t hole = lseek(in, data, SEEK_HOLE);
        for (off_t at = data; at < hole;) {
            size_t n = (size_t)(hole - at) < sizeof(buf) ? (size_t)(hole - at) : sizeof(buf);
            ssize_t r = pread(in, buf, n, at);
            if (r <= 0 || pwrite(out, buf, (size_t)r, at) != r)
                die("%s: cannot copy", from);
            at += r;
        }
        data = hole;
    }
    if (ftruncate(out, st.st_size) < 0)
        die("%s: cannot size the copy", from);
    close(in);
}

static void apply(const struct rec *r, int out)
{
    const struct log_record *l = r->r;
    int ret = 0;
    if (l->type == LOG_WRITE) {
        ret = pwrite(out, r->data, l->length, (off_t)l->offset) == (ssize_t)l->length ? 0 : -1;
    } else if (l->type == LOG_TRUNCATE) {
        ret = ftruncate(out, (off_t)l->length);
    } else if (l->type == LOG_FALLOCATE) {
        int mode = (int)l->flags;
        ret = fallocate(out, mode, (off_t)l->offset, (off_t)l->length);
        if (ret < 0 && errno == EOPNOTSUPP && (mode & FALLOC_FL_ZERO_RANGE)) {
            /* tmpfs has no ZERO_RANGE: a punched hole reads the same. */
            struct stat st;
            ret = fallocate(out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            (off_t)l->offset, (off_t)l->length);
            if (ret == 0 && !(mode & FALLOC_FL_KEEP_SIZE) && fstat(out, &st) == 0 &&
                (uint64_t)st.st_size < l->offset + l->length)
                ret = ftruncate(out, (off_t)(l->offset + l->length));
        }
    }
    if (ret < 0)
        die("cannot apply a record: %s", strerror(errno));
}

static int cmd_state(char **argv)
{
    read_log(argv[0]);
    const char *snapdir = argv[1], *outdir = argv[2];
    size_t point = (size_t)strtoull(argv[3], NULL, 10);
    rng_state = strtoull(argv[4], NULL, 10) * 0x9e3779b97f4a7c15ull + 1;
    if (point > nrecs)
        die("crash point %s lies past the end of the log", argv[3]);
    struct names real = { 0 }, out = { 0 };
    follow_history(point, &real);
    choose(point);
    crash_names(snapdir, &real, point, &out);
    for (size_t k = 0; k < out.n; k++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", outdir, out.name[k]);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
        if (fd < 0)
            die("%s: cannot create", path);
        const struct obj *o = &objs[out.obj[k]];
        if (o->snapshot) {
            snprintf(path, sizeof(path), "%s/%s", snapdir, o->snapshot);
            copy_sparse(path, fd);
        }
        for (size_t i = 0; i < point; i++)
            if (recs[i].obj == out.obj[k] && recs[i].kept && !is_name_op(&recs[i]))
                apply(&recs[i], fd);
        close(fd);
    }
    return 0;
}

/* --- checks on the files of a crash state --- */

static FILE *open_or_die(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s: cannot open", path);
    return f;
}

/* Read up to n bytes; what lies past the end reads as zeroes. */
static void read_block(FILE *f, unsigned char *buf, size_t n)
{
    size_t got = fread(buf, 1, n, f);
    memset(buf + got, 0, n - got);
}

static int cmd_uncovered(char **argv)
{
    FILE *a = open_or_die(argv[0]), *b = open_or_die(argv[1]), *x = open_or_die(argv[2]);
    uint64_t (*ext)[2] = NULL, s, l;
    size_t n = 0;
    while (fscanf(x, "%" SCNu64 " %" SCNu64, &s, &l) == 2) {
        ext = xrealloc(ext, (n + 1) * sizeof(*ext));
        ext[n][0] = s;
        ext[n++][1] = s + l;
    }
    struct stat sa, sb;
    fstat(fileno(a), &sa);
    fstat(fileno(b), &sb);
    uint64_t size = (uint64_t)(sa.st_size > sb.st_size ? sa.st_size : sb.st_size);
    unsigned char ba[512], bb[512];
    uint64_t run_start = 0, run_len = 0;
    int bad = 0;
    for (uint64_t off = 0; off < size; off += 512) {
        read_block(a, ba, 512);
        read_block(b, bb, 512);
        bool covered = true;
        if (memcmp(ba, bb, 512)) {
            covered = false;
            for (size_t k = 0; k < n && !covered; k++)
                covered = ext[k][0] <= off && off + 512 <= ext[k][1];
        }
        if (!covered && run_len && run_start + run_len == off) {
            run_len += 512;
        } else if (!covered) {
            if (run_len)
                printf("%" PRIu64 " %" PRIu64 "\n", run_start, run_len);
            run_start = off;
            run_len = 512;
            bad = 1;
        }
    }
    if (run_len)
        printf("%" PRIu64 " %" PRIu64 "\n", run_start, run_len);
    return bad;
}

static int cmd_oldornew(char **argv)
{
    FILE *f = open_or_die(argv[0]), *o = open_or_die(argv[1]), *w = open_or_die(argv[2]);
    size_t unit = (size_t)strtoul(argv[3], NULL, 0);
    if (!unit)
        die("bad unit %s", argv[3]);
    unsigned char *bf = xrealloc(NULL, unit), *bo = xrealloc(NULL, unit),
                  *bw = xrealloc(NULL, unit);
    struct stat st[3];
    fstat(fileno(f), &st[0]);
    fstat(fileno(o), &st[1]);
    fstat(fileno(w), &st[2]);
    off_t size = st[0].st_size;
    for (int k = 1; k < 3; k++)
        size = st[k].st_size > size ? st[k].st_size : size;
    int bad = 0;
    for (uint64_t off = 0; off < (uint64_t)size; off += unit) {
        read_block(f, bf, unit);
        read_block(o, bo, unit);
        read_block(w, bw, unit);
        if (memcmp(bf, bo, unit) && memcmp(bf, bw, unit)) {
            printf("%" PRIu64 "\n", off);
            bad = 1;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    static const struct { const char *name; int args; int (*fn)(char **); } cmds[] = {
        { "dump", 1, cmd_dump }, { "points", 2, cmd_points }, { "state", 5, cmd_state },
        { "uncovered", 3, cmd_uncovered }, { "oldornew", 4, cmd_oldornew },
    };
    for (size_t i = 0; argc > 1 && i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (!strcmp(argv[1], cmds[i].name) && argc == cmds[i].args + 2)
            return cmds[i].fn(argv + 2);
    fprintf(stderr, "usage: crashreplay dump LOG | points LOG MAX | state LOG SNAPDIR OUTDIR POINT SEED |\n"
                    "       uncovered A B EXTENTS | oldornew FILE OLD NEW UNIT\n");
    return 2;
}
