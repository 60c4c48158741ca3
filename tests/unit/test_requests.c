/* Unit tests for formats/rangelock.c and the block layer's in-flight
 * request tracking (blockdev.h, "Threads"): the lock rules one by one,
 * then threads hammering one small qcow2 and raw image with overlapping
 * writes, zero writes, discards and reads, checked against a model of what
 * serialised requests may leave. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/blockdev.h"
#include "formats/rangelock.h"
#include "tests/unit/unit.h"

/* --- range locks --- */

struct locker {
    struct range_lock_set *set;
    uint64_t start, end;
    bool exclusive;
    atomic_int state;           /* 0 waiting, 1 holding, 2 releasing */
    atomic_int release;         /* set by the test: let go */
    pthread_t thread;
};

static void *locker_main(void *arg)
{
    struct locker *l = arg;
    struct range_lock lock;
    range_lock_acquire(l->set, &lock, l->start, l->end, l->exclusive);
    atomic_store(&l->state, 1);
    while (!atomic_load(&l->release))
        usleep(1000);
    atomic_store(&l->state, 2);     /* before: drain must not return earlier */
    range_lock_release(l->set, &lock);
    return NULL;
}

/* Start a locker and wait until it holds its lock or waits for it (the
 * set's length or its wait counter grew). */
static void start_locker(struct locker *l, struct range_lock_set *set, uint64_t start,
                         uint64_t end, bool exclusive)
{
    memset(l, 0, sizeof(*l));
    l->set = set;
    l->start = start;
    l->end = end;
    l->exclusive = exclusive;
    uint64_t waits = range_lock_waits(set);
    CU_ASSERT_FATAL(pthread_create(&l->thread, NULL, locker_main, l) == 0);
    while (!atomic_load(&l->state) && range_lock_waits(set) == waits)
        usleep(1000);
}

static void finish_locker(struct locker *l)
{
    atomic_store(&l->release, 1);
    pthread_join(l->thread, NULL);
}

static void wait_state(struct locker *l, int state)
{
    for (int i = 0; i < 5000 && atomic_load(&l->state) != state; i++)
        usleep(1000);
    CU_ASSERT_EQUAL(atomic_load(&l->state), state);
}

static void test_shared_and_disjoint_do_not_wait(void)
{
    struct range_lock_set set;
    range_lock_set_init(&set);
    struct locker a, b, c;
    start_locker(&a, &set, 0, 100, false);
    start_locker(&b, &set, 50, 150, false);     /* shared with shared */
    start_locker(&c, &set, 150, 200, true);     /* exclusive, but disjoint */
    wait_state(&a, 1);
    wait_state(&b, 1);
    wait_state(&c, 1);
    CU_ASSERT_EQUAL(range_lock_waits(&set), 0);
    finish_locker(&a);
    finish_locker(&b);
    finish_locker(&c);
    range_lock_set_destroy(&set);
}

static void test_exclusive_waits_for_earlier_and_holds_back_later(void)
{
    struct range_lock_set set;
    range_lock_set_init(&set);
    struct locker reader, writer, late_reader, other;
    start_locker(&reader, &set, 0, 100, false);
    wait_state(&reader, 1);
    start_locker(&writer, &set, 99, 101, true);    /* overlaps by one byte */
    CU_ASSERT_EQUAL(range_lock_waits(&set), 1);
    CU_ASSERT_EQUAL(atomic_load(&writer.state), 0);
    /* A later reader of the writer's range waits behind it, although it
     * would not conflict with the first reader: no writer starvation. */
    start_locker(&late_reader, &set, 100, 120, false);
    CU_ASSERT_EQUAL(range_lock_waits(&set), 2);
    start_locker(&other, &set, 120, 300, true);   /* touches the late reader only */
    wait_state(&other, 1);
    usleep(20000);
    CU_ASSERT_EQUAL(atomic_load(&writer.state), 0);
    CU_ASSERT_EQUAL(atomic_load(&late_reader.state), 0);
    finish_locker(&reader);
    wait_state(&writer, 1);
    CU_ASSERT_EQUAL(atomic_load(&late_reader.state), 0);
    finish_locker(&writer);
    wait_state(&late_reader, 1);
    finish_locker(&late_reader);
    finish_locker(&other);
    range_lock_set_destroy(&set);
}

static void test_drain_waits_for_all(void)
{
    struct range_lock_set set;
    range_lock_set_init(&set);
    struct locker a;
    start_locker(&a, &set, 0, 10, true);
    wait_state(&a, 1);
    atomic_store(&a.release, 1);
    range_lock_drain(&set);
    CU_ASSERT_EQUAL(atomic_load(&a.state), 2);
    pthread_join(a.thread, NULL);
    range_lock_set_destroy(&set);
}

/* --- the block layer under overlapping requests --- */

/* The disk is written in 8-byte words; a write by op N stores at word w
 * the tag (N << 32 | w), so that every word says which request wrote it
 * and for which offset.  Zero writes and discards leave zeroes (no backing
 * file; discards are cluster aligned, so qcow2 does not ignore them). */
enum op_kind { OP_WRITE, OP_ZERO, OP_DISCARD, OP_READ };

struct op {
    enum op_kind kind;
    uint64_t off, len;
};

#define CLUSTER 4096u
#define AREA_CLUSTERS 24u                      /* all requests fall in here */
#define AREA (AREA_CLUSTERS * CLUSTER)
#define WORDS (AREA / 8)
#ifndef THREADS
#define THREADS 4
#endif
#ifndef OPS_PER_THREAD
#define OPS_PER_THREAD 3000
#endif
#define NOPS (THREADS * OPS_PER_THREAD)

static struct op ops[NOPS + 1];                 /* op ids start at 1 */
static atomic_int bad_reads;
static pthread_barrier_t start_together;

static uint64_t tag_of(uint32_t op, uint64_t word)
{
    return (uint64_t)op << 32 | word;
}

static uint32_t next_random(uint32_t *state)
{
    *state = *state * 1103515245u + 12345u;
    return *state >> 8;
}

/* Ops are cut on 8-byte words; writes and zero writes are unaligned,
 * discards whole clusters. */
static struct op random_op(uint32_t *rnd)
{
    struct op op;
    uint32_t r = next_random(rnd) % 10;
    op.kind = r < 4 ? OP_WRITE : r < 6 ? OP_ZERO : r < 7 ? OP_DISCARD : OP_READ;
    if (op.kind == OP_DISCARD) {
        op.off = (uint64_t)(next_random(rnd) % AREA_CLUSTERS) * CLUSTER;
        op.len = (uint64_t)(1 + next_random(rnd) % 3) * CLUSTER;
    } else {
        op.off = (uint64_t)(next_random(rnd) % WORDS) * 8;
        op.len = (uint64_t)(1 + next_random(rnd) % (3 * CLUSTER / 8)) * 8;
    }
    if (op.off + op.len > AREA)
        op.len = AREA - op.off;
    return op;
}

static bool covers(const struct op *op, uint64_t word)
{
    return word * 8 >= op->off && word * 8 < op->off + op->len;
}

/* What a word may hold at any time: zero, or the tag of a write that
 * covers it, for that very word. */
static bool word_is_plausible(uint64_t word, uint64_t v)
{
    if (v == 0)
        return true;
    uint64_t op = v >> 32;
    return (v & 0xffffffffu) == word && op >= 1 && op <= NOPS && ops[op].kind == OP_WRITE &&
           covers(&ops[op], word);
}

struct hammer {
    struct blockdev *bs;
    int thread;
};

static void run_op(struct blockdev *bs, uint32_t id, uint64_t *buf)
{
    const struct op *op = &ops[id];
    struct err e = { 0 };
    int ret = 0;
    uint64_t first = op->off / 8, n = op->len / 8;
    switch (op->kind) {
    case OP_WRITE:
        for (uint64_t i = 0; i < n; i++)
            buf[i] = tag_of(id, first + i);
        ret = blk_pwrite(bs, op->off, buf, op->len, &e);
        break;
    case OP_ZERO:
        ret = blk_write_zeroes(bs, op->off, op->len, (id & 1) ? BLK_ZERO_MAY_UNMAP : 0, &e);
        break;
    case OP_DISCARD:
        ret = blk_discard(bs, op->off, op->len, &e);
        break;
    case OP_READ:
        ret = blk_pread(bs, op->off, buf, op->len, &e);
        for (uint64_t i = 0; ret == 0 && i < n; i++)
            if (!word_is_plausible(first + i, buf[i]))
                atomic_fetch_add(&bad_reads, 1);
        break;
    }
    if (ret < 0)
        fprintf(stderr, "op %u: %s\n", id, e.msg);
    CU_ASSERT_EQUAL(ret, 0);
}

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    uint64_t *buf = malloc(3 * CLUSTER);
    pthread_barrier_wait(&start_together);
    for (uint32_t i = 0; i < OPS_PER_THREAD; i++)
        run_op(h->bs, (uint32_t)(h->thread * OPS_PER_THREAD) + i + 1, buf);
    free(buf);
    return NULL;
}

/* The ops that won against op x somewhere in its range: a sorted list per
 * write op. */
struct beaten_by {
    uint32_t *ids;
    size_t n, cap;
};

static void add_winner(struct beaten_by *b, uint32_t id)
{
    if (b->n && b->ids[b->n - 1] == id)
        return;
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 16;
        b->ids = realloc(b->ids, b->cap * sizeof(*b->ids));
    }
    b->ids[b->n++] = id;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static bool was_beaten_by(const struct beaten_by *b, uint32_t id)
{
    return b->n && bsearch(&id, b->ids, b->n, sizeof(id), cmp_u32) != NULL;
}

/* The final contents must be what some serial order of the ops leaves:
 * every word plausible; a zero word that a write covers is covered by a
 * zero write or discard too; and no two writes each won where both wrote
 * (each request took effect as a whole, one after the other). */
static void check_serialisable(const uint64_t *disk)
{
    int implausible = 0, lost_zero = 0, inversions = 0;
    struct beaten_by *beaten = calloc(NOPS + 1, sizeof(*beaten));
    for (uint32_t x = 1; x <= NOPS; x++) {
        if (ops[x].kind != OP_WRITE)
            continue;
        for (uint64_t w = ops[x].off / 8; w < (ops[x].off + ops[x].len) / 8; w++) {
            uint64_t winner = disk[w] >> 32;
            if (disk[w] && winner != x)
                add_winner(&beaten[x], (uint32_t)winner);
        }
        if (beaten[x].n)
            qsort(beaten[x].ids, beaten[x].n, sizeof(uint32_t), cmp_u32);
    }
    /* Per word: 1 a write covers it, 2 a zero write or discard does. */
    uint8_t *cover = calloc(WORDS, 1);
    for (uint32_t x = 1; x <= NOPS; x++)
        for (uint64_t w = ops[x].off / 8; ops[x].kind != OP_READ &&
             w < (ops[x].off + ops[x].len) / 8; w++)
            cover[w] |= ops[x].kind == OP_WRITE ? 1 : 2;
    for (uint64_t w = 0; w < WORDS; w++) {
        if (!word_is_plausible(w, disk[w]))
            implausible++;
        else if (!disk[w] && cover[w] == 1)
            lost_zero++;
    }
    free(cover);
    for (uint32_t x = 1; x <= NOPS; x++)
        for (size_t i = 0; i < beaten[x].n; i++)
            if (was_beaten_by(&beaten[beaten[x].ids[i]], x))
                inversions++;
    for (uint32_t x = 0; x <= NOPS; x++)
        free(beaten[x].ids);
    free(beaten);
    CU_ASSERT_EQUAL(implausible, 0);
    CU_ASSERT_EQUAL(lost_zero, 0);
    CU_ASSERT_EQUAL(inversions, 0);
    if (implausible || lost_zero || inversions)
        fprintf(stderr, "%d implausible words, %d zero words no zero op covers, "
                "%d pairs of writes that each won\n", implausible, lost_zero, inversions);
}

static void hammer_image(const char *format, const char *opts_text)
{
    char path[] = "/tmp/imgtool-requests-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    struct err e = { 0 };
    struct kvopts opts = { 0 };
    CU_ASSERT_EQUAL_FATAL(kvopts_parse(&opts, opts_text, &e), 0);
    struct blk_create_params p = { .filename = path, .size = 1 << 20, .opts = &opts };
    CU_ASSERT_EQUAL_FATAL(blk_create(format, &p, &e), 0);
    kvopts_free(&opts);
    struct blockdev *bs = NULL;
    CU_ASSERT_EQUAL_FATAL(blk_open(path, format, BLK_OPEN_RDWR | BLK_OPEN_NO_LOCK, NULL, &bs, &e), 0);
    /* No fdatasync between metadata writes: the requests then run as fast
     * as the page cache allows, and their windows for racing are not
     * hidden behind flushes taken under the driver's lock. */
    blk_defer_flushes(bs, true);

    uint32_t rnd = 20261201;
    for (uint32_t i = 1; i <= NOPS; i++)
        ops[i] = random_op(&rnd);
    atomic_store(&bad_reads, 0);
    struct hammer h[THREADS];
    pthread_t t[THREADS];
    pthread_barrier_init(&start_together, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct hammer){ bs, i };
        CU_ASSERT_FATAL(pthread_create(&t[i], NULL, hammer_main, &h[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start_together);
    CU_ASSERT_EQUAL(atomic_load(&bad_reads), 0);

    uint64_t *disk = malloc(AREA);
    CU_ASSERT_EQUAL(blk_pread(bs, 0, disk, AREA, &e), 0);
    check_serialisable(disk);
    free(disk);
    /* check reads the metadata from the file, as a new open would. */
    CU_ASSERT_EQUAL(blk_flush(bs, &e), 0);
    struct blk_check_result res = { 0 };
    if (bs->drv->check) {
        CU_ASSERT_EQUAL(blk_check(bs, &res, 0, &e), 0);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT_EQUAL(res.leaks, 0);
        for (size_t i = 0; i < res.nmessages && i < 5; i++)
            fprintf(stderr, "%s: %s\n", format, res.messages[i]);
        blk_check_result_free(&res);
    }
    blk_close(bs);
    unlink(path);
}

static void test_hammer_qcow2(void)
{
    hammer_image("qcow2", "cluster_size=4k");
}

static void test_hammer_qcow2_subclusters(void)
{
    hammer_image("qcow2", "cluster_size=32k,extended_l2=on");
}

static void test_hammer_raw(void)
{
    hammer_image("raw", "");
}

UNIT_MAIN("requests",
          UNIT_TEST(test_shared_and_disjoint_do_not_wait),
          UNIT_TEST(test_exclusive_waits_for_earlier_and_holds_back_later),
          UNIT_TEST(test_drain_waits_for_all),
          UNIT_TEST(test_hammer_qcow2),
          UNIT_TEST(test_hammer_qcow2_subclusters),
          UNIT_TEST(test_hammer_raw))
