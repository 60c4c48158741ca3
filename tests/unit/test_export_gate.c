/* Unit tests for formats/nbd/server-gate.c, the export gate that lets
 * serve --mirror switch an export to its target under the clients
 * (server.h, "Replacing an export's image"): quiesce waits for the
 * requests holding the image and holds back new ones, which resume on the
 * replacement; a replacement must keep the size and the bitmap names. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "bitmap/dirty.h"
#include "formats/nbd/server-conn.h"
#include "tests/unit/unit.h"

/* The gate reads only the size and the name of an image. */
static struct blockdev image(const char *name, uint64_t size)
{
    return (struct blockdev){ .filename = (char *)name, .size = size };
}

struct user {
    const struct nbd_server_export *x;
    atomic_int state;               /* 0 waiting, 1 holding, 2 releasing */
    atomic_int release;
    struct blockdev *seen;
    pthread_t thread;
};

static void *user_main(void *arg)
{
    struct user *u = arg;
    struct export_image img;
    export_acquire(u->x, &img);
    u->seen = img.bs;
    atomic_store(&u->state, 1);
    while (!atomic_load(&u->release))
        usleep(1000);
    /* 2 before the release: a quiesce that returns after it sees 2
     * (stored after the release, a quiesce could return in between). */
    atomic_store(&u->state, 2);
    export_release(u->x);
    return NULL;
}

static void start_user(struct user *u, const struct nbd_server_export *x, bool release)
{
    memset(u, 0, sizeof(*u));
    u->x = x;
    atomic_store(&u->release, release);
    CU_ASSERT_FATAL(pthread_create(&u->thread, NULL, user_main, u) == 0);
}

struct quiescer {
    struct nbd_export_gate *g;
    atomic_int done;
    pthread_t thread;
};

static void *quiescer_main(void *arg)
{
    struct quiescer *q = arg;
    nbd_export_gate_quiesce(q->g);
    atomic_store(&q->done, 1);
    return NULL;
}

static void test_quiesce_waits_and_holds_back(void)
{
    struct blockdev src = image("src", 1 << 20), tgt = image("tgt", 1 << 20);
    struct nbd_export_gate *g;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(nbd_export_gate_new(&src, NULL, 0, &g, &e), 0);
    struct nbd_server_export x = { .name = "", .bs = &src, .gate = g };
    CU_ASSERT_EQUAL(export_size(&x), 1 << 20);

    struct user running;
    start_user(&running, &x, false);
    while (atomic_load(&running.state) != 1)
        usleep(1000);
    CU_ASSERT_PTR_EQUAL(running.seen, &src);
    struct quiescer q = { .g = g };
    CU_ASSERT_FATAL(pthread_create(&q.thread, NULL, quiescer_main, &q) == 0);
    usleep(50000);
    CU_ASSERT_EQUAL(atomic_load(&q.done), 0);      /* a request still holds the image */
    CU_ASSERT_EQUAL(nbd_export_gate_replace(g, &tgt, NULL, &e), -EBUSY);
    atomic_store(&running.release, 1);
    pthread_join(q.thread, NULL);
    CU_ASSERT_EQUAL(atomic_load(&running.state), 2);
    pthread_join(running.thread, NULL);

    struct user later;
    start_user(&later, &x, true);
    usleep(50000);
    CU_ASSERT_EQUAL(atomic_load(&later.state), 0); /* held back while quiesced */
    CU_ASSERT_EQUAL(nbd_export_gate_replace(g, &tgt, NULL, &e), 0);
    nbd_export_gate_resume(g);
    pthread_join(later.thread, NULL);
    CU_ASSERT_PTR_EQUAL(later.seen, &tgt);         /* resumed on the replacement */
    nbd_export_gate_free(g);
}

static void test_replacement_keeps_size_and_bitmaps(void)
{
    struct blockdev src = image("src", 1 << 20), small = image("small", 1 << 19),
                    tgt = image("tgt", 1 << 20);
    struct dirty_bitmap *a, *b, *a2;
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_new("a", 1 << 20, 65536, &a, &e), 0);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_new("b", 1 << 20, 65536, &b, &e), 0);
    CU_ASSERT_EQUAL_FATAL(dirty_bitmap_new("a", 1 << 20, 65536, &a2, &e), 0);
    struct dirty_bitmap *offered[1] = { a }, *wrong[1] = { b }, *same[1] = { a2 };
    struct nbd_export_gate *g;
    CU_ASSERT_EQUAL_FATAL(nbd_export_gate_new(&src, offered, 1, &g, &e), 0);
    struct nbd_server_export x = { .name = "", .nbitmaps = 1, .gate = g };
    nbd_export_gate_quiesce(g);
    CU_ASSERT_EQUAL(nbd_export_gate_replace(g, &small, same, &e), -EINVAL);
    CU_ASSERT_STRING_EQUAL(e.msg, "small: size 524288 differs from the export's 1048576");
    CU_ASSERT_EQUAL(nbd_export_gate_replace(g, &tgt, wrong, &e), -EINVAL);
    CU_ASSERT_STRING_EQUAL(e.msg, "tgt: has no bitmap 'a' (the export offers "
                           "qemu:dirty-bitmap:a)");
    CU_ASSERT_EQUAL(nbd_export_gate_replace(g, &tgt, NULL, &e), -EINVAL);
    CU_ASSERT_EQUAL(nbd_export_gate_replace(g, &tgt, same, &e), 0);
    nbd_export_gate_resume(g);
    struct export_image img;
    export_acquire(&x, &img);
    CU_ASSERT_PTR_EQUAL(img.bs, &tgt);
    CU_ASSERT_PTR_EQUAL(img.bitmaps[0], a2);
    export_release(&x);
    nbd_export_gate_free(g);
    dirty_bitmap_free(a);
    dirty_bitmap_free(b);
    dirty_bitmap_free(a2);
}

static void test_no_gate_is_the_export_itself(void)
{
    struct blockdev src = image("src", 4096);
    struct nbd_server_export x = { .name = "", .bs = &src };
    struct export_image img;
    export_acquire(&x, &img);
    CU_ASSERT_PTR_EQUAL(img.bs, &src);
    export_release(&x);
    CU_ASSERT_EQUAL(export_size(&x), 4096);
}

UNIT_MAIN("export_gate",
          UNIT_TEST(test_quiesce_waits_and_holds_back),
          UNIT_TEST(test_replacement_keeps_size_and_bitmaps),
          UNIT_TEST(test_no_gate_is_the_export_itself))
