/* Unit tests for mirror/copy.c, the copy engine: sparse raw images in a
 * temporary directory for the real I/O paths, and a small in-memory test
 * driver (defined here) to inject errors, observe concurrency, check
 * compressed writes and walk a backing chain with a base. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "formats/blockdev.h"
#include "mirror/copy.h"
#include "tests/unit/unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

static char tmpdir[256];

static void make_tmpdir(void)
{
    if (tmpdir[0])
        return;
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmpdir, sizeof(tmpdir), "%s/imgtool-copy.XXXXXX", base);
    CU_ASSERT_FATAL(mkdtemp(tmpdir) != NULL);
}

static void path_of(char *buf, size_t len, const char *name)
{
    make_tmpdir();
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* --- Raw image helpers --- */

/* A region of a test image: `fill` < 0 leaves a hole, otherwise the bytes
 * are written (fill 0 writes allocated zeroes). */
struct region {
    uint64_t off, len;
    int fill;
};

static void write_fill(int fd, uint64_t off, uint64_t len, int fill)
{
    static uint8_t buf[256 * KiB];
    memset(buf, fill, sizeof(buf));
    while (len) {
        size_t n = (size_t)min_u64(len, sizeof(buf));
        CU_ASSERT_FATAL(pwrite(fd, buf, n, (off_t)off) == (ssize_t)n);
        off += n;
        len -= n;
    }
}

static void make_raw(const char *name, uint64_t size, const struct region *r, size_t n)
{
    char path[512];
    path_of(path, sizeof(path), name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(ftruncate(fd, (off_t)size) == 0);
    for (size_t i = 0; i < n; i++)
        if (r[i].fill >= 0)
            write_fill(fd, r[i].off, r[i].len, r[i].fill);
    close(fd);
}

static struct blockdev *open_raw(const char *name, bool rw)
{
    char path[512];
    path_of(path, sizeof(path), name);
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    int ret = blk_open(path, "raw", (rw ? BLK_OPEN_RDWR : 0) | BLK_OPEN_NO_LOCK, NULL, &bs, &e);
    if (ret < 0)
        fprintf(stderr, "%s\n", e.msg);
    CU_ASSERT_FATAL(ret == 0);
    return bs;
}

/* The bytes the source's block status calls data (what must be read). */
static uint64_t data_bytes(struct blockdev *bs)
{
    uint64_t total = 0;
    for (uint64_t off = 0; off < bs->size;) {
        struct blk_extent ext;
        struct err e = { 0 };
        CU_ASSERT_FATAL(blk_block_status(bs, off, bs->size - off, &ext, &e) == 0);
        if (!(ext.flags & BLK_STATUS_ZERO))
            total += ext.length;
        off += ext.length;
    }
    return total;
}

static bool same_contents(struct blockdev *a, struct blockdev *b)
{
    static uint8_t ba[1 * MiB], bb[1 * MiB];
    CU_ASSERT_FATAL(a->size <= b->size);
    struct err e = { 0 };
    for (uint64_t off = 0; off < a->size; off += sizeof(ba)) {
        size_t n = (size_t)min_u64(sizeof(ba), a->size - off);
        CU_ASSERT_FATAL(blk_pread(a, off, ba, n, &e) == 0);
        CU_ASSERT_FATAL(blk_pread(b, off, bb, n, &e) == 0);
        if (memcmp(ba, bb, n) != 0)
            return false;
    }
    return true;
}

/* Whether [off, off+len) of bs is reported as one zero (unallocated) run. */
static bool is_hole(struct blockdev *bs, uint64_t off, uint64_t len)
{
    struct blk_extent ext;
    struct err e = { 0 };
    CU_ASSERT_FATAL(blk_block_status(bs, off, len, &ext, &e) == 0);
    return (ext.flags & BLK_STATUS_ZERO) && ext.length == len;
}

/* 16 MiB: data, a hole, allocated zeroes, a hole, data, a long hole, data
 * at the very end. */
static const struct region sparse_layout[] = {
    { 0, 1 * MiB, 0xaa },
    { 3 * MiB, 512 * KiB, 0 },
    { 4 * MiB, 64 * KiB, 0xbb },
    { 15 * MiB, 1 * MiB, 0xcc },
};
#define SPARSE_SIZE (16 * MiB)
#define SPARSE_DATA (1 * MiB + 512 * KiB + 64 * KiB + 1 * MiB)
#define SPARSE_NONZERO (1 * MiB + 64 * KiB + 1 * MiB)

/* --- Tests on raw images --- */

static void test_sparse_copy_exact_stats(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    static const struct { size_t buf_size; unsigned in_flight; } runs[] = {
        { 0, 0 }, { 0, 1 }, { 64 * KiB, 4 }, { 64 * KiB, 16 }, { 192 * KiB, 3 },
    };
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        make_raw("sparse-out.raw", SPARSE_SIZE, NULL, 0);
        struct blockdev *src = open_raw("sparse.raw", false);
        struct blockdev *dst = open_raw("sparse-out.raw", true);
        CU_ASSERT_EQUAL(data_bytes(src), SPARSE_DATA);
        struct copy_job job = {
            .src = src, .dst = dst, .offset = 0, .length = src->size,
            .target_is_zero = true, .buf_size = runs[i].buf_size,
            .max_in_flight = runs[i].in_flight,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        /* Exactly the data extents are read; the allocated zeroes are read
         * but not written; every zero byte is skipped. */
        CU_ASSERT_EQUAL(job.stats.bytes_read, SPARSE_DATA);
        CU_ASSERT_EQUAL(job.stats.bytes_written, SPARSE_NONZERO);
        CU_ASSERT_EQUAL(job.stats.bytes_zeroed, 0);
        CU_ASSERT_EQUAL(job.stats.bytes_skipped, SPARSE_SIZE - SPARSE_NONZERO);
        CU_ASSERT_TRUE(same_contents(src, dst));
        CU_ASSERT_TRUE(is_hole(dst, 1 * MiB, 3 * MiB));     /* incl. the zero data */
        CU_ASSERT_TRUE(is_hole(dst, 4 * MiB + 64 * KiB, 11 * MiB - 64 * KiB));
        CU_ASSERT_EQUAL(data_bytes(dst), SPARSE_NONZERO);
        blk_close(src);
        blk_close(dst);
    }
}

/* A sub-range, starting and ending inside data. */
static void test_partial_range(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    make_raw("part-out.raw", SPARSE_SIZE, NULL, 0);
    struct blockdev *src = open_raw("sparse.raw", false);
    struct blockdev *dst = open_raw("part-out.raw", true);
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 512 * KiB + 100, .length = 4 * MiB,
        .target_is_zero = true, .buf_size = 128 * KiB, .max_in_flight = 3,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    /* Read: the rest of the first data run, the zero run, the 0xbb run. */
    CU_ASSERT_EQUAL(job.stats.bytes_read, (1 * MiB - job.offset) + 512 * KiB + 64 * KiB);
    CU_ASSERT_EQUAL(job.stats.bytes_written, (1 * MiB - job.offset) + 64 * KiB);
    static uint8_t buf[SPARSE_SIZE];
    CU_ASSERT_EQUAL(blk_pread(dst, 0, buf, sizeof(buf), &e), 0);
    for (uint64_t i = 0; i < sizeof(buf); i++) {
        int want = i >= job.offset && i < 1 * MiB           ? 0xaa
                 : i >= 4 * MiB && i < 4 * MiB + 64 * KiB ? 0xbb : 0;
        if (buf[i] != want) {
            CU_FAIL("wrong byte after a partial copy");
            break;
        }
    }
    blk_close(src);
    blk_close(dst);
}

/* convert -n into an image full of other data: zeroes are written where
 * the source reads zero, except where the target already reads zero. */
static void test_existing_target_with_garbage(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    static const struct region garbage[] = {
        { 0, 8 * MiB, 0x5e },
        { 12 * MiB, 4 * MiB, 0x5e },    /* [8M, 12M) stays a hole */
    };
    for (unsigned in_flight = 1; in_flight <= 8; in_flight *= 8) {
        make_raw("garbage.raw", SPARSE_SIZE, garbage, 2);
        struct blockdev *src = open_raw("sparse.raw", false);
        struct blockdev *dst = open_raw("garbage.raw", true);
        struct copy_job job = {
            .src = src, .dst = dst, .offset = 0, .length = src->size,
            .target_is_zero = false, .buf_size = 256 * KiB, .max_in_flight = in_flight,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        CU_ASSERT_TRUE(same_contents(src, dst));
        CU_ASSERT_EQUAL(job.stats.bytes_read, SPARSE_DATA);
        CU_ASSERT_EQUAL(job.stats.bytes_written, SPARSE_NONZERO);
        CU_ASSERT_EQUAL(job.stats.bytes_skipped, 4 * MiB);
        CU_ASSERT_EQUAL(job.stats.bytes_zeroed, SPARSE_SIZE - SPARSE_NONZERO - 4 * MiB);
        CU_ASSERT_EQUAL(data_bytes(dst), SPARSE_NONZERO);
        blk_close(src);
        blk_close(dst);
    }
}

static void test_cancel_before_start(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    make_raw("cancel-out.raw", SPARSE_SIZE, NULL, 0);
    struct blockdev *src = open_raw("sparse.raw", false);
    struct blockdev *dst = open_raw("cancel-out.raw", true);
    atomic_int cancel = 1;
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 0, .length = src->size,
        .target_is_zero = true, .cancel = &cancel,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -ECANCELED);
    CU_ASSERT_STRING_EQUAL(e.msg, "cancelled");
    CU_ASSERT_EQUAL(job.stats.bytes_read, 0);
    CU_ASSERT_EQUAL(job.stats.bytes_written, 0);
    CU_ASSERT_EQUAL(data_bytes(dst), 0);
    blk_close(src);
    blk_close(dst);
}

static void test_bad_ranges(void)
{
    make_raw("small.raw", 1 * MiB, NULL, 0);
    make_raw("big.raw", 2 * MiB, NULL, 0);
    struct blockdev *small = open_raw("small.raw", true);
    struct blockdev *big = open_raw("big.raw", true);
    struct err e = { 0 };
    struct copy_job job = { .src = big, .dst = small, .offset = 0, .length = 2 * MiB };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "small.raw: target is smaller (1048576 bytes)"));
    job = (struct copy_job){ .src = small, .dst = big, .offset = 512 * KiB, .length = 1 * MiB };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "small.raw: copy range is beyond the end"));
    job = (struct copy_job){ .src = small, .dst = big, .length = 1 * MiB,
                             .max_in_flight = COPY_MAX_IN_FLIGHT + 1 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EINVAL);
    /* Nothing to copy is fine. */
    job = (struct copy_job){ .src = small, .dst = big, .offset = 1 * MiB, .length = 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    /* raw has no compression: the driver's error, before any I/O. */
    job = (struct copy_job){ .src = small, .dst = big, .length = 1 * MiB, .compress = true };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -ENOTSUP);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "big.raw: format 'raw' does not support compression"));
    blk_close(small);
    blk_close(big);
}

/* Progress comes from the calling thread, grows, and ends at the total. */
struct progress_log {
    pthread_t caller;
    int calls;
    bool wrong_thread, went_back;
    uint64_t last, total;
};

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress_log *p = opaque;
    if (!pthread_equal(pthread_self(), p->caller))
        p->wrong_thread = true;
    if (done <= p->last && p->calls)
        p->went_back = true;
    p->last = done;
    p->total = total;
    p->calls++;
}

static void test_progress(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    make_raw("progress-out.raw", SPARSE_SIZE, NULL, 0);
    struct blockdev *src = open_raw("sparse.raw", false);
    struct blockdev *dst = open_raw("progress-out.raw", true);
    struct progress_log log = { .caller = pthread_self() };
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 0, .length = src->size, .target_is_zero = true,
        .buf_size = 64 * KiB, .max_in_flight = 4, .progress = on_progress, .opaque = &log,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    CU_ASSERT(log.calls >= 2);
    CU_ASSERT_FALSE(log.wrong_thread);
    CU_ASSERT_FALSE(log.went_back);
    CU_ASSERT_EQUAL(log.last, SPARSE_SIZE);
    CU_ASSERT_EQUAL(log.total, SPARSE_SIZE);
    blk_close(src);
    blk_close(dst);
}

/* --- An in-memory test driver --- */

/* Block status granularity of the memory disk. */
#define MEM_UNIT (4 * KiB)

enum mem_state { MEM_ZERO, MEM_DATA, MEM_UNALLOCATED };

struct memdisk {
    uint8_t *data;
    uint8_t *state;                 /* enum mem_state per MEM_UNIT */
    uint32_t align;                 /* write_alignment */
    uint64_t fail_read_at, fail_write_at;   /* UINT64_MAX: none */
    unsigned failures_left;         /* injected failures before they stop */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned reads_in_flight, max_reads_in_flight;
    unsigned wait_for;              /* hold reads until this many run at once */
    bool waited;
    unsigned compressed_writes, bad_compressed_writes, plain_writes;
    uint64_t bytes_read;
};

static struct memdisk *md(struct blockdev *bs)
{
    return bs->opaque;
}

/* Whether an injected failure happens this time (they can run out, for
 * testing retries). */
static bool mem_fail_now(struct memdisk *m)
{
    pthread_mutex_lock(&m->lock);
    bool fail = m->failures_left > 0;
    if (fail)
        m->failures_left--;
    pthread_mutex_unlock(&m->lock);
    return fail;
}

static bool overlaps(uint64_t off, uint64_t len, uint64_t at)
{
    return at >= off && at < off + len;
}

static void mem_mark(struct memdisk *m, uint64_t off, uint64_t len, enum mem_state st)
{
    for (uint64_t u = off / MEM_UNIT; u < div_round_up(off + len, MEM_UNIT); u++)
        m->state[u] = (uint8_t)st;
}

/* Reads wait (at most 5 s) until wait_for of them run at once: that
 * proves the engine has that many in flight without relying on timing. */
static void mem_wait_for_company(struct memdisk *m)
{
    pthread_mutex_lock(&m->lock);
    m->reads_in_flight++;
    if (m->reads_in_flight > m->max_reads_in_flight)
        m->max_reads_in_flight = m->reads_in_flight;
    if (m->wait_for && !m->waited) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 5;
        while (m->reads_in_flight < m->wait_for && !m->waited)
            if (pthread_cond_timedwait(&m->cond, &m->lock, &deadline) == ETIMEDOUT)
                break;
        m->waited = true;
        pthread_cond_broadcast(&m->cond);
    }
    pthread_mutex_unlock(&m->lock);
}

static int mem_preadv(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                      struct err *e)
{
    struct memdisk *m = md(bs);
    size_t len = iov_size(iov, iovcnt);
    mem_wait_for_company(m);
    int ret = 0;
    if (overlaps(off, len, m->fail_read_at) && mem_fail_now(m)) {
        ret = err_set(e, EIO, "%s: injected read error at offset %llu", bs->filename,
                      (unsigned long long)m->fail_read_at);
    } else {
        size_t pos = 0;
        for (int i = 0; i < iovcnt; i++) {
            for (size_t done = 0; done < iov[i].iov_len && ret == 0;) {
                uint64_t at = off + pos + done;
                size_t n = (size_t)min_u64(iov[i].iov_len - done, MEM_UNIT - at % MEM_UNIT);
                uint8_t *to = (uint8_t *)iov[i].iov_base + done;
                if (m->state[at / MEM_UNIT] == MEM_UNALLOCATED && bs->backing)
                    ret = blk_pread(bs->backing, at, to, n, e);
                else if (m->state[at / MEM_UNIT] == MEM_UNALLOCATED)
                    memset(to, 0, n);
                else
                    memcpy(to, m->data + at, n);
                done += n;
            }
            pos += iov[i].iov_len;
        }
    }
    pthread_mutex_lock(&m->lock);
    m->reads_in_flight--;
    m->bytes_read += len;
    pthread_mutex_unlock(&m->lock);
    return ret;
}

static int mem_write(struct blockdev *bs, uint64_t off, const void *buf, size_t len,
                     struct err *e)
{
    struct memdisk *m = md(bs);
    if (overlaps(off, len, m->fail_write_at) && mem_fail_now(m))
        return err_set(e, EIO, "%s: injected write error at offset %llu", bs->filename,
                       (unsigned long long)m->fail_write_at);
    memcpy(m->data + off, buf, len);
    pthread_mutex_lock(&m->lock);
    mem_mark(m, off, len, MEM_DATA);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static int mem_pwritev(struct blockdev *bs, uint64_t off, const struct iovec *iov, int iovcnt,
                       struct err *e)
{
    int ret = 0;
    for (int i = 0; i < iovcnt && ret == 0; i++) {
        ret = mem_write(bs, off, iov[i].iov_base, iov[i].iov_len, e);
        off += iov[i].iov_len;
    }
    pthread_mutex_lock(&md(bs)->lock);
    md(bs)->plain_writes++;
    pthread_mutex_unlock(&md(bs)->lock);
    return ret;
}

static int mem_pwrite_compressed(struct blockdev *bs, uint64_t off, const void *buf,
                                 size_t len, struct err *e)
{
    struct memdisk *m = md(bs);
    /* Whole clusters (a run of them), the last one may end the disk. */
    bool whole = off % m->align == 0 && len && (len % m->align == 0 || off + len == bs->size);
    pthread_mutex_lock(&m->lock);
    m->compressed_writes += (unsigned)((len + m->align - 1) / m->align);   /* clusters */
    if (!whole)
        m->bad_compressed_writes++;
    pthread_mutex_unlock(&m->lock);
    return mem_write(bs, off, buf, len, e);
}

static int mem_block_status(struct blockdev *bs, uint64_t off, uint64_t bytes,
                            struct blk_extent *ext, struct err *e)
{
    struct memdisk *m = md(bs);
    pthread_mutex_lock(&m->lock);
    uint8_t st = m->state[off / MEM_UNIT];
    uint64_t len = MEM_UNIT - off % MEM_UNIT;
    while (len < bytes && m->state[(off + len) / MEM_UNIT] == st)
        len += MEM_UNIT;
    pthread_mutex_unlock(&m->lock);
    ext->length = min_u64(len, bytes);
    ext->flags = st == MEM_DATA ? BLK_STATUS_ALLOCATED | BLK_STATUS_DATA
               : st == MEM_ZERO ? BLK_STATUS_ALLOCATED | BLK_STATUS_ZERO : 0;
    return 0;
}

static int mem_write_zeroes(struct blockdev *bs, uint64_t off, uint64_t len, unsigned flags,
                            struct err *e)
{
    struct memdisk *m = md(bs);
    if (overlaps(off, len, m->fail_write_at) && mem_fail_now(m))
        return err_set(e, EIO, "%s: injected write error at offset %llu", bs->filename,
                       (unsigned long long)m->fail_write_at);
    memset(m->data + off, 0, (size_t)len);
    pthread_mutex_lock(&m->lock);
    /* Only whole units become zero runs, as a real format would do. */
    uint64_t start = align_up(off, MEM_UNIT), stop = align_down(off + len, MEM_UNIT);
    if (stop > start)
        mem_mark(m, start, stop - start, MEM_ZERO);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static uint32_t mem_write_alignment(struct blockdev *bs)
{
    return md(bs)->align;
}

static const struct blockdrv mem_driver = {
    .name = "mem",
    .preadv = mem_preadv,
    .pwritev = mem_pwritev,
    .block_status = mem_block_status,
    .write_zeroes = mem_write_zeroes,
};

static const struct blockdrv mem_driver_compressing = {
    .name = "memz",
    .preadv = mem_preadv,
    .pwritev = mem_pwritev,
    .block_status = mem_block_status,
    .write_zeroes = mem_write_zeroes,
    .pwrite_compressed = mem_pwrite_compressed,
    .write_alignment = mem_write_alignment,
};

static struct blockdev *mem_open(const char *name, uint64_t size, const struct blockdrv *drv,
                                 enum mem_state initial)
{
    struct blockdev *bs = calloc(1, sizeof(*bs));
    struct memdisk *m = calloc(1, sizeof(*m));
    CU_ASSERT_FATAL(bs && m);
    m->data = calloc(1, (size_t)size);
    m->state = malloc((size_t)div_round_up(size, MEM_UNIT));
    CU_ASSERT_FATAL(m->data && m->state);
    memset(m->state, initial, (size_t)div_round_up(size, MEM_UNIT));
    m->align = 1;
    m->fail_read_at = m->fail_write_at = UINT64_MAX;
    m->failures_left = UINT32_MAX;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    bs->drv = drv;
    bs->filename = strdup(name);
    bs->size = size;
    bs->opaque = m;
    return bs;
}

static void mem_fill(struct blockdev *bs, uint64_t off, uint64_t len, int c)
{
    memset(md(bs)->data + off, c, (size_t)len);
    mem_mark(md(bs), off, len, MEM_DATA);
}

static void mem_close(struct blockdev *bs)
{
    struct memdisk *m = md(bs);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
    free(m->data);
    free(m->state);
    free(m);
    free(bs->filename);
    free(bs);
}

/* A source with `chunks` data runs of 64 KiB, each a different pattern. */
static struct blockdev *mem_striped_source(unsigned chunks)
{
    struct blockdev *src = mem_open("src.mem", chunks * 64 * KiB, &mem_driver, MEM_ZERO);
    for (unsigned i = 0; i < chunks; i++)
        mem_fill(src, i * 64 * KiB, 64 * KiB, 1 + (int)i);
    return src;
}

static void test_requests_in_flight(void)
{
    for (unsigned want = 1; want <= 4; want += 3) {
        struct blockdev *src = mem_striped_source(32);
        struct blockdev *dst = mem_open("dst.mem", src->size, &mem_driver, MEM_ZERO);
        md(src)->wait_for = want;
        struct copy_job job = {
            .src = src, .dst = dst, .length = src->size, .target_is_zero = true,
            .buf_size = 64 * KiB, .max_in_flight = want,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        CU_ASSERT_EQUAL(md(src)->max_reads_in_flight, want);
        CU_ASSERT_EQUAL(memcmp(md(src)->data, md(dst)->data, (size_t)src->size), 0);
        CU_ASSERT_EQUAL(job.stats.bytes_read, src->size);
        CU_ASSERT_EQUAL(job.stats.bytes_written, src->size);
        mem_close(src);
        mem_close(dst);
    }
}

/* The first error is the result; the rest of the work is dropped. */
static void test_read_error(void)
{
    for (unsigned in_flight = 1; in_flight <= 8; in_flight *= 2) {
        struct blockdev *src = mem_striped_source(64);
        struct blockdev *dst = mem_open("dst.mem", src->size, &mem_driver, MEM_ZERO);
        md(src)->fail_read_at = 20 * 64 * KiB + 5;
        md(dst)->fail_write_at = 40 * 64 * KiB;     /* never reached serially */
        struct copy_job job = {
            .src = src, .dst = dst, .length = src->size, .target_is_zero = true,
            .buf_size = 64 * KiB, .max_in_flight = in_flight,
        };
        struct err e = { 0 };
        int ret = copy_run(&job, &e);
        if (in_flight == 1) {
            /* In order: chunks 0-19 copied, 20 failed, nothing after it. */
            CU_ASSERT_EQUAL(ret, -EIO);
            CU_ASSERT_STRING_EQUAL(e.msg, "src.mem: injected read error at offset 1310725");
            CU_ASSERT_EQUAL(job.stats.bytes_read, 20 * 64 * KiB);
            CU_ASSERT_EQUAL(job.stats.bytes_written, 20 * 64 * KiB);
            CU_ASSERT_EQUAL(md(src)->bytes_read, 21 * 64 * KiB);
        } else {
            /* Whichever failure came first, reported whole. */
            CU_ASSERT_EQUAL(ret, -EIO);
            CU_ASSERT(strcmp(e.msg, "src.mem: injected read error at offset 1310725") == 0 ||
                      strcmp(e.msg, "dst.mem: injected write error at offset 2621440") == 0);
            CU_ASSERT(job.stats.bytes_written < src->size);
        }
        mem_close(src);
        mem_close(dst);
    }
}

static void test_write_error(void)
{
    struct blockdev *src = mem_striped_source(16);
    struct blockdev *dst = mem_open("dst.mem", src->size, &mem_driver, MEM_ZERO);
    md(dst)->fail_write_at = 3 * 64 * KiB;
    struct copy_job job = {
        .src = src, .dst = dst, .length = src->size, .target_is_zero = true,
        .buf_size = 64 * KiB, .max_in_flight = 4,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EIO);
    CU_ASSERT_STRING_EQUAL(e.msg, "dst.mem: injected write error at offset 196608");
    mem_close(src);
    mem_close(dst);
}

/* Compressed copies write whole target clusters (the last one may be
 * partial at the end of the disk), assembled from data and zero runs that
 * do not line up with the clusters; all-zero clusters are not written. */
static void test_compress_whole_clusters(void)
{
    uint64_t size = 1 * MiB + 12 * KiB;     /* last 64 KiB cluster is partial */
    struct blockdev *src = mem_open("src.mem", size, &mem_driver, MEM_ZERO);
    mem_fill(src, 4 * KiB, 8 * KiB, 0x11);              /* inside cluster 0 */
    mem_fill(src, 60 * KiB, 8 * KiB, 0x22);             /* across clusters 0 and 1 */
    mem_fill(src, 256 * KiB, 4 * KiB, 0);               /* data, but zero: cluster 4 */
    mem_fill(src, 512 * KiB, 256 * KiB, 0x33);          /* clusters 8 to 11 */
    mem_fill(src, 1 * MiB + 8 * KiB, 4 * KiB, 0x44);    /* the partial last cluster */
    for (unsigned in_flight = 1; in_flight <= 4; in_flight *= 4) {
        struct blockdev *dst = mem_open("dst.mem", size, &mem_driver_compressing, MEM_ZERO);
        md(dst)->align = 64 * KiB;
        struct copy_job job = {
            .src = src, .dst = dst, .length = size, .target_is_zero = true,
            .buf_size = 128 * KiB, .max_in_flight = in_flight, .compress = true,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        CU_ASSERT_EQUAL(memcmp(md(src)->data, md(dst)->data, (size_t)size), 0);
        CU_ASSERT_EQUAL(md(dst)->compressed_writes, 2 + 4 + 1);
        CU_ASSERT_EQUAL(md(dst)->bad_compressed_writes, 0);
        CU_ASSERT_EQUAL(md(dst)->plain_writes, 0);
        CU_ASSERT_EQUAL(job.stats.bytes_written, 7 * 64 * KiB - 52 * KiB);
        /* Only the data runs were read, not the zero runs around them. */
        CU_ASSERT_EQUAL(job.stats.bytes_read, 8 * KiB + 8 * KiB + 4 * KiB + 256 * KiB + 4 * KiB);
        mem_close(dst);
    }
    /* A range that cuts clusters: the cut parts are written plainly. */
    struct blockdev *dst = mem_open("dst.mem", size, &mem_driver_compressing, MEM_ZERO);
    md(dst)->align = 64 * KiB;
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 540 * KiB, .length = 200 * KiB,
        .target_is_zero = true, .compress = true,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    CU_ASSERT_EQUAL(md(dst)->compressed_writes, 2);      /* clusters 9 and 10 */
    CU_ASSERT_EQUAL(md(dst)->bad_compressed_writes, 0);
    CU_ASSERT_EQUAL(md(dst)->plain_writes, 2);
    CU_ASSERT_EQUAL(memcmp(md(src)->data + 540 * KiB, md(dst)->data + 540 * KiB, 200 * KiB), 0);
    CU_ASSERT_TRUE(buffer_is_zero(md(dst)->data, 540 * KiB));
    mem_close(dst);
    mem_close(src);
}

/* With a base: what no layer above base allocates is neither read nor
 * written (the target's own backing provides it), except inside clusters
 * that a compressed copy must write whole. */
static void test_base(void)
{
    uint64_t size = 1 * MiB;
    struct blockdev *base = mem_open("base.mem", size, &mem_driver, MEM_ZERO);
    mem_fill(base, 0, size, 0x77);
    struct blockdev *top = mem_open("top.mem", size, &mem_driver, MEM_UNALLOCATED);
    top->backing = base;
    mem_fill(top, 64 * KiB, 64 * KiB, 0x88);        /* a whole cluster */
    mem_fill(top, 200 * KiB, 8 * KiB, 0x99);        /* inside cluster 3 */
    mem_mark(md(top), 512 * KiB, 64 * KiB, MEM_ZERO);   /* zeroes over base data */

    /* The target's backing is the base, as after convert -B or mirror
     * --sync=top. */
    struct blockdev *dst = mem_open("dst.mem", size, &mem_driver, MEM_UNALLOCATED);
    dst->backing = base;
    struct copy_job job = {
        .src = top, .base = base, .dst = dst, .length = size, .target_is_zero = false,
        .max_in_flight = 2,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    CU_ASSERT_EQUAL(job.stats.bytes_read, 72 * KiB);
    CU_ASSERT_EQUAL(job.stats.bytes_written, 72 * KiB);
    CU_ASSERT_EQUAL(job.stats.bytes_zeroed, 64 * KiB);
    CU_ASSERT_EQUAL(md(base)->bytes_read, 0);
    CU_ASSERT_EQUAL(md(dst)->state[0], MEM_UNALLOCATED);
    CU_ASSERT_EQUAL(md(dst)->state[199 * KiB / MEM_UNIT], MEM_UNALLOCATED);
    CU_ASSERT_EQUAL(md(dst)->state[200 * KiB / MEM_UNIT], MEM_DATA);
    CU_ASSERT_EQUAL(md(dst)->state[512 * KiB / MEM_UNIT], MEM_ZERO);
    CU_ASSERT_EQUAL(memcmp(md(top)->data + 64 * KiB, md(dst)->data + 64 * KiB, 64 * KiB), 0);
    mem_close(dst);

    /* Compressed: cluster 3 is written whole, its unallocated part read
     * through the chain (so from base). */
    dst = mem_open("dst.mem", size, &mem_driver_compressing, MEM_UNALLOCATED);
    dst->backing = base;
    md(dst)->align = 64 * KiB;
    job = (struct copy_job){
        .src = top, .base = base, .dst = dst, .length = size, .target_is_zero = false,
        .compress = true,
    };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    CU_ASSERT_EQUAL(md(dst)->compressed_writes, 2);
    CU_ASSERT_EQUAL(md(base)->bytes_read, 56 * KiB);
    CU_ASSERT_EQUAL(md(dst)->data[192 * KiB], 0x77);
    CU_ASSERT_EQUAL(md(dst)->data[200 * KiB], 0x99);
    CU_ASSERT_EQUAL(md(dst)->state[0], MEM_UNALLOCATED);
    mem_close(dst);
    mem_close(top);
    mem_close(base);
}


/* skip_identical, as rebase uses it: the source is the old backing chain,
 * the target an image whose backing file is the new one.  Only the target
 * clusters (64 KiB) whose contents differ are written, whole; zero runs in
 * both are not read at all; what the ranges leave out (the image's own
 * data) is neither read nor touched. */
static void test_skip_identical(void)
{
    const uint64_t C = 64 * KiB, size = 16 * C;
    struct blockdev *old = mem_open("old.mem", size, &mem_driver, MEM_ZERO);
    struct blockdev *new = mem_open("new.mem", size, &mem_driver, MEM_ZERO);
    mem_fill(old, 0 * C, C, 0x11);              /* 0: the same in both */
    mem_fill(new, 0 * C, C, 0x11);
    mem_fill(old, 1 * C, C, 0x12);              /* 1: one byte differs */
    mem_fill(new, 1 * C, C, 0x12);
    md(new)->data[1 * C + 100] = 0x13;
    mem_fill(new, 2 * C, C, 0x22);              /* 2: zero in old, data in new */
    mem_fill(new, 3 * C, C, 0);                 /* 3: zero, zero data in new */
                                                /* 4: zero in both */
    mem_fill(old, 5 * C, 4 * KiB, 0x55);        /* 5: 4 KiB of data in old */
    mem_fill(old, 6 * C, C, 0);                 /* 6: zero data in old, data in new */
    mem_fill(new, 6 * C, C, 0x66);
    mem_fill(old, 7 * C, C, 0x70);              /* 7: the image's own cluster */
    static const struct copy_range ranges[] = { { 0, 7 * 64 * KiB }, { 8 * 64 * KiB, 8 * 64 * KiB } };
    for (unsigned in_flight = 1; in_flight <= 4; in_flight *= 4) {
        struct blockdev *image = mem_open("image.mem", size, &mem_driver_compressing,
                                          MEM_UNALLOCATED);
        md(image)->align = (uint32_t)C;
        image->backing = new;
        mem_fill(image, 7 * C, C, 0x77);
        md(old)->bytes_read = md(new)->bytes_read = 0;
        struct copy_job job = {
            .src = old, .dst = image, .length = size, .ranges = ranges, .nranges = 2,
            .skip_identical = true, .buf_size = 128 * KiB, .max_in_flight = in_flight,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        /* Read from the old chain: clusters 0, 1 and 6, and the data of 5. */
        CU_ASSERT_EQUAL(job.stats.bytes_read, 3 * C + 4 * KiB);
        CU_ASSERT_EQUAL(md(old)->bytes_read, 3 * C + 4 * KiB);
        /* Read from the image (through the new backing): 0 to 3, 5 and 6;
         * cluster 4 and the second range, zero in both, not at all. */
        CU_ASSERT_EQUAL(job.stats.bytes_compared, 6 * C);
        CU_ASSERT_EQUAL(md(new)->bytes_read, 6 * C);
        CU_ASSERT_EQUAL(job.stats.bytes_written, 2 * C);
        CU_ASSERT_EQUAL(job.stats.bytes_zeroed, 2 * C);
        CU_ASSERT_EQUAL(job.stats.bytes_skipped, 3 * C + 8 * C);
        static const enum mem_state want[8] = {
            MEM_UNALLOCATED, MEM_DATA, MEM_ZERO, MEM_UNALLOCATED,
            MEM_UNALLOCATED, MEM_DATA, MEM_ZERO, MEM_DATA,
        };
        for (unsigned c = 0; c < 16; c++)
            for (uint64_t u = c * C; u < (c + 1) * C; u += MEM_UNIT)
                CU_ASSERT_EQUAL(md(image)->state[u / MEM_UNIT],
                                c < 8 ? want[c] : MEM_UNALLOCATED);
        /* The image now reads as the old chain did, except its own cluster. */
        static uint8_t a[16 * 64 * KiB], b[16 * 64 * KiB];
        CU_ASSERT_EQUAL(blk_pread(old, 0, a, size, &e), 0);
        CU_ASSERT_EQUAL(blk_pread(image, 0, b, size, &e), 0);
        CU_ASSERT_EQUAL(memcmp(a, b, 7 * C), 0);
        CU_ASSERT_EQUAL(memcmp(a + 8 * C, b + 8 * C, 8 * C), 0);
        CU_ASSERT_EQUAL(b[7 * C], 0x77);
        mem_close(image);
    }
    /* It cannot be combined with options that skip the comparison. */
    struct blockdev *image = mem_open("image.mem", size, &mem_driver_compressing, MEM_ZERO);
    struct copy_job bad[] = {
        { .src = old, .dst = image, .length = size, .skip_identical = true, .compress = true },
        { .src = old, .dst = image, .length = size, .skip_identical = true,
          .target_is_zero = true },
        { .src = old, .dst = image, .length = size, .skip_identical = true,
          .explicit_zeroes = true },
    };
    for (size_t i = 0; i < 3; i++) {
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&bad[i], &e), -EINVAL);
        CU_ASSERT_STRING_EQUAL(e.msg, "skip_identical excludes compress, target_is_zero and "
                               "explicit zeroes");
    }
    mem_close(image);
    mem_close(new);
    mem_close(old);
}

/* source_zero_past_end: a source shorter than the copy (or none) reads as
 * zeroes past its end, so the target's data there is zeroed. */
static void test_short_source(void)
{
    const uint64_t C = 64 * KiB, size = 16 * C;
    struct blockdev *new = mem_open("new.mem", size, &mem_driver, MEM_ZERO);
    mem_fill(new, 0, C, 0x33);
    mem_fill(new, 12 * C, C, 0x33);
    struct blockdev *old = mem_open("old.mem", 8 * C, &mem_driver, MEM_ZERO);
    mem_fill(old, 0, C, 0x44);
    for (int with_source = 1; with_source >= 0; with_source--) {
        struct blockdev *image = mem_open("image.mem", size, &mem_driver_compressing,
                                          MEM_UNALLOCATED);
        md(image)->align = (uint32_t)C;
        image->backing = new;
        struct copy_job job = {
            .src = with_source ? old : NULL, .source_zero_past_end = true, .dst = image,
            .length = size, .skip_identical = true,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        CU_ASSERT_EQUAL(job.stats.bytes_read, with_source ? C : 0);
        CU_ASSERT_EQUAL(job.stats.bytes_written, with_source ? C : 0);
        CU_ASSERT_EQUAL(job.stats.bytes_zeroed, with_source ? C : 2 * C);
        static uint8_t buf[16 * 64 * KiB];
        CU_ASSERT_EQUAL(blk_pread(image, 0, buf, size, &e), 0);
        CU_ASSERT_EQUAL(buf[0], with_source ? 0x44 : 0);
        CU_ASSERT_TRUE(buffer_is_zero(buf + C, size - C));
        mem_close(image);
    }
    /* Without the flag the range must lie inside a source. */
    struct blockdev *image = mem_open("image.mem", size, &mem_driver, MEM_ZERO);
    struct copy_job job = { .src = old, .dst = image, .length = size };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EINVAL);
    CU_ASSERT_STRING_EQUAL(e.msg, "old.mem: copy range is beyond the end of the image");
    job = (struct copy_job){ .dst = image, .length = size };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EINVAL);
    CU_ASSERT_STRING_EQUAL(e.msg, "no source to copy from");
    mem_close(image);
    mem_close(old);
    mem_close(new);
}

/* Only the given ranges are copied; each is reported done once. */
struct ranges_seen {
    unsigned count[8];
    uint64_t last_done, last_total;
};

static void on_range_done(void *opaque, size_t index)
{
    struct ranges_seen *seen = opaque;
    CU_ASSERT_FATAL(index < 8);
    seen->count[index]++;
}

static void on_ranges_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct ranges_seen *seen = opaque;
    CU_ASSERT_TRUE(done >= seen->last_done);
    seen->last_done = done;
    seen->last_total = total;
}

static void test_ranges(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    /* Inside data, across data/zero/hole, a pure hole, and the disk end. */
    static const struct copy_range ranges[] = {
        { 256 * KiB, 256 * KiB },
        { 768 * KiB, 3 * MiB + 512 * KiB },
        { 8 * MiB, 1 * MiB },
        { 15 * MiB + 512 * KiB, 512 * KiB },
    };
    for (unsigned in_flight = 1; in_flight <= 16; in_flight *= 4) {
        static const struct region garbage[] = { { 0, SPARSE_SIZE, 0x5e } };
        make_raw("ranges-out.raw", SPARSE_SIZE, garbage, 1);
        struct blockdev *src = open_raw("sparse.raw", false);
        struct blockdev *dst = open_raw("ranges-out.raw", true);
        struct ranges_seen seen = { 0 };
        struct copy_job job = {
            .src = src, .dst = dst, .offset = 0, .length = src->size,
            .ranges = ranges, .nranges = 4, .range_done = on_range_done,
            .progress = on_ranges_progress, .opaque = &seen,
            .buf_size = 128 * KiB, .max_in_flight = in_flight,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        for (size_t i = 0; i < 4; i++)
            CU_ASSERT_EQUAL(seen.count[i], 1);
        uint64_t total = 256 * KiB + 3 * MiB + 512 * KiB + 1 * MiB + 512 * KiB;
        CU_ASSERT_EQUAL(seen.last_total, total);
        CU_ASSERT_EQUAL(seen.last_done, total);
        /* Read: the data inside the ranges only (0xaa, zero data, 0xbb, 0xcc). */
        CU_ASSERT_EQUAL(job.stats.bytes_read,
                        256 * KiB + (256 * KiB + 512 * KiB + 64 * KiB) + 512 * KiB);
        static uint8_t buf[SPARSE_SIZE];
        CU_ASSERT_EQUAL(blk_pread(dst, 0, buf, sizeof(buf), &e), 0);
        for (uint64_t i = 0; i < sizeof(buf); i++) {
            bool in_range = false;
            for (size_t r = 0; r < 4; r++)
                in_range |= i >= ranges[r].offset && i < ranges[r].offset + ranges[r].length;
            int source = i < 1 * MiB ? 0xaa : i >= 15 * MiB ? 0xcc
                       : i >= 4 * MiB && i < 4 * MiB + 64 * KiB ? 0xbb : 0;
            if (buf[i] != (in_range ? source : 0x5e)) {
                CU_FAIL("a byte outside the ranges changed, or one inside did not");
                break;
            }
        }
        blk_close(src);
        blk_close(dst);
    }
}

/* Kept workers serve one copy_run after another (each range copied by
 * its own run, as the live mirror's batches are), and refuse a copy whose
 * requests need bigger buffers than theirs. */
static void test_kept_workers(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    static const struct region garbage[] = { { 0, SPARSE_SIZE, 0x5e } };
    make_raw("kept-out.raw", SPARSE_SIZE, garbage, 1);
    struct blockdev *src = open_raw("sparse.raw", false);
    struct blockdev *dst = open_raw("kept-out.raw", true);
    struct copy_job like = { .src = src, .dst = dst, .buf_size = 128 * KiB,
                             .max_in_flight = 3 };
    struct copy_workers *w = NULL;
    struct err e = { 0 };
    CU_ASSERT_FATAL(copy_workers_start(&like, &w, &e) == 0);
    uint64_t read = 0;
    for (uint64_t off = 0; off < SPARSE_SIZE; off += 4 * MiB) {
        struct copy_range r = { off, 4 * MiB };
        struct copy_job job = like;
        job.offset = 0;
        job.length = src->size;
        job.ranges = &r;
        job.nranges = 1;
        job.workers = w;
        CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
        read += job.stats.bytes_read;
    }
    CU_ASSERT_EQUAL(read, SPARSE_DATA);
    CU_ASSERT_TRUE(same_contents(src, dst));
    struct copy_job big = { .src = src, .dst = dst, .offset = 0, .length = src->size,
                            .buf_size = 256 * KiB, .workers = w };
    CU_ASSERT_EQUAL(copy_run(&big, &e), -EINVAL);
    copy_workers_stop(w);
    blk_close(src);
    blk_close(dst);
}

/* Ranges must be sorted, non-empty and inside the copy. */
static void test_ranges_invalid(void)
{
    make_raw("sparse.raw", SPARSE_SIZE, sparse_layout, 4);
    make_raw("ranges-out.raw", SPARSE_SIZE, NULL, 0);
    struct blockdev *src = open_raw("sparse.raw", false);
    struct blockdev *dst = open_raw("ranges-out.raw", true);
    static const struct copy_range bad[][2] = {
        { { 1 * MiB, 1 * MiB }, { 512 * KiB, 64 * KiB } },     /* out of order */
        { { 0, 0 }, { 1 * MiB, 1 } },                          /* empty */
        { { 0, 1 }, { 15 * MiB, 2 * MiB } },                   /* past the end */
    };
    for (size_t i = 0; i < 3; i++) {
        struct copy_job job = {
            .src = src, .dst = dst, .offset = 0, .length = src->size,
            .ranges = bad[i], .nranges = 2,
        };
        struct err e = { 0 };
        CU_ASSERT_EQUAL(copy_run(&job, &e), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "is empty, out of order or outside the copy"));
    }
    blk_close(src);
    blk_close(dst);
}

/* The rate limit counts I/O, not holes: 2 MiB of data and 14 MiB of holes
 * at 8 MiB/s take at least ~0.2 s (a bound, not a benchmark: the test only
 * checks that the limit is applied and that holes are free). */
static void test_speed(void)
{
    static const struct region two_mib[] = { { 0, 2 * MiB, 0x42 } };
    make_raw("speed.raw", SPARSE_SIZE, two_mib, 1);
    make_raw("speed-out.raw", SPARSE_SIZE, NULL, 0);
    struct blockdev *src = open_raw("speed.raw", false);
    struct blockdev *dst = open_raw("speed-out.raw", true);
    struct copy_job job = {
        .src = src, .dst = dst, .offset = 0, .length = src->size,
        .target_is_zero = true, .buf_size = 256 * KiB, .speed = 8 * MiB,
    };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    /* The last 256 KiB chunk may go at once: (2M - 256K) / 8M/s. */
    CU_ASSERT_TRUE(secs >= 0.2);
    CU_ASSERT_TRUE(same_contents(src, dst));
    blk_close(src);
    blk_close(dst);
}

/* on_*_error=ignore: the failed chunk's range is not reported done, the
 * rest is copied, and copy_run fails at the end naming the failure. */
static void on_index_done(void *opaque, size_t index)
{
    ((unsigned *)opaque)[index]++;
}

static void test_error_ignore(void)
{
    struct blockdev *src = mem_striped_source(16);
    struct blockdev *dst = mem_open("dst.mem", src->size, &mem_driver, MEM_ZERO);
    md(src)->fail_read_at = 5 * 64 * KiB + 7;
    md(dst)->fail_write_at = 11 * 64 * KiB;
    struct copy_range ranges[16];
    for (size_t i = 0; i < 16; i++)
        ranges[i] = (struct copy_range){ i * 64 * KiB, 64 * KiB };
    unsigned done[16] = { 0 };
    struct copy_job job = {
        .src = src, .dst = dst, .length = src->size, .target_is_zero = true,
        .buf_size = 64 * KiB, .max_in_flight = 4, .ranges = ranges, .nranges = 16,
        .range_done = on_index_done, .opaque = done,
        .on_source_error = COPY_ERROR_IGNORE, .on_target_error = COPY_ERROR_IGNORE,
    };
    struct err e = { 0 };
    CU_ASSERT_EQUAL(copy_run(&job, &e), -EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "2 requests failed and were skipped (first: "));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "run the job again to copy what is left"));
    for (size_t i = 0; i < 16; i++)
        CU_ASSERT_EQUAL(done[i], i == 5 || i == 11 ? 0 : 1);
    /* Everything else reached the target. */
    static uint8_t a[64 * KiB], b[64 * KiB];
    for (size_t i = 0; i < 16; i++) {
        if (i == 5 || i == 11)
            continue;
        CU_ASSERT_EQUAL(blk_pread(src, i * 64 * KiB, a, sizeof(a), &e), 0);
        CU_ASSERT_EQUAL(blk_pread(dst, i * 64 * KiB, b, sizeof(b), &e), 0);
        CU_ASSERT_EQUAL(memcmp(a, b, sizeof(a)), 0);
    }
    mem_close(src);
    mem_close(dst);
}

/* on_target_error=retry: a failure that goes away is retried and the copy
 * succeeds; one that stays is reported after COPY_RETRIES more tries. */
static void test_error_retry(void)
{
    for (unsigned failures = 2; failures <= 9; failures += 7) {
        struct blockdev *src = mem_striped_source(8);
        struct blockdev *dst = mem_open("dst.mem", src->size, &mem_driver, MEM_ZERO);
        md(dst)->fail_write_at = 3 * 64 * KiB;
        md(dst)->failures_left = failures;
        struct copy_job job = {
            .src = src, .dst = dst, .length = src->size, .target_is_zero = true,
            .buf_size = 64 * KiB, .max_in_flight = 2,
            .on_source_error = COPY_ERROR_REPORT, .on_target_error = COPY_ERROR_RETRY,
        };
        struct err e = { 0 };
        int ret = copy_run(&job, &e);
        if (failures == 2) {
            CU_ASSERT_EQUAL(ret, 0);
            CU_ASSERT_TRUE(same_contents(src, dst));
            CU_ASSERT_EQUAL(md(dst)->failures_left, 0);
        } else {
            CU_ASSERT_EQUAL(ret, -EIO);
            CU_ASSERT_STRING_EQUAL(e.msg, "dst.mem: injected write error at offset 196608");
            CU_ASSERT_EQUAL(md(dst)->failures_left, failures - 1 - COPY_RETRIES);
        }
        mem_close(src);
        mem_close(dst);
    }
}

static void cleanup(void)
{
    if (!tmpdir[0])
        return;
    static const char *const names[] = {
        "sparse.raw", "sparse-out.raw", "part-out.raw", "garbage.raw", "cancel-out.raw",
        "small.raw", "big.raw", "progress-out.raw", "ranges-out.raw", "speed.raw",
        "speed-out.raw", "kept-out.raw",
    };
    char path[512];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        path_of(path, sizeof(path), names[i]);
        unlink(path);
    }
    rmdir(tmpdir);
}

static void test_cleanup(void)
{
    cleanup();
    CU_ASSERT_EQUAL(access(tmpdir, F_OK), -1);
}

UNIT_MAIN("copy",
          UNIT_TEST(test_sparse_copy_exact_stats),
          UNIT_TEST(test_partial_range),
          UNIT_TEST(test_existing_target_with_garbage),
          UNIT_TEST(test_cancel_before_start),
          UNIT_TEST(test_bad_ranges),
          UNIT_TEST(test_progress),
          UNIT_TEST(test_requests_in_flight),
          UNIT_TEST(test_read_error),
          UNIT_TEST(test_write_error),
          UNIT_TEST(test_compress_whole_clusters),
          UNIT_TEST(test_base),
          UNIT_TEST(test_ranges),
          UNIT_TEST(test_kept_workers),
          UNIT_TEST(test_skip_identical),
          UNIT_TEST(test_short_source),
          UNIT_TEST(test_ranges_invalid),
          UNIT_TEST(test_speed),
          UNIT_TEST(test_error_ignore),
          UNIT_TEST(test_error_retry),
          UNIT_TEST(test_cleanup))
