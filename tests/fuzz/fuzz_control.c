/* Fuzz target for the control socket's codec (mirror/control.c over
 * formats/json.c): the input is what a QMP client sends, fed through
 * control_feed with a test ops table whose one job is READY (so that every
 * command reaches its op); the replies are checked to be one JSON object
 * per line, as the server promises, and then dropped.  Every input must
 * end without a crash, a leak or unbounded memory.  Built as
 * tests/fuzz/fuzz_open.c is: `make fuzz` for libFuzzer, and a replay
 * program run by `make check` (t680). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/json.h"
#include "mirror/control.h"

static struct active_mirror_info job = {
    .id = "mirror0", .status = ACTIVE_READY, .len = 1 << 20, .offset = 1 << 20, .ready = true,
};

static int query(void *opaque, struct active_mirror_info *jobs, int max)
{
    jobs[0] = job;
    return 1;
}
static int complete(void *opaque, const char *id, enum control_complete pivot, struct err *e) { return 0; }
static int cancel(void *opaque, const char *id, struct err *e) { return 0; }
static int set_speed(void *opaque, const char *id, uint64_t speed, struct err *e)
{
    job.speed = speed;
    return 0;
}
static int set_copy_mode(void *opaque, const char *id, enum active_copy_mode m, struct err *e)
{
    job.copy_mode = m;
    return 0;
}

static const struct control_ops ops = {
    .query = query, .complete = complete, .cancel = cancel,
    .set_speed = set_speed, .set_copy_mode = set_copy_mode,
};

/* Every reply line must parse as a JSON object. */
static void check_lines(const struct json_buf *out)
{
    const char *p = out->data;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        if (!nl)
            abort();
        struct prop *v = NULL;
        struct err e = { 0 };
        if (json_parse(p, (size_t)(nl - p), &v, "reply", &e) < 0 || v->type != PROP_OBJECT)
            abort();
        prop_free(v);
        p = nl + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct control_params p = { .listen_fd = -1, .ops = &ops, .version = "0.1.0" };
    struct json_buf out = { 0 };
    control_feed(&p, (const char *)data, size, &out);
    if (!out.failed)
        check_lines(&out);
    json_buf_free(&out);
    /* The reader alone, on the raw input too. */
    struct prop *v = NULL;
    struct err e = { 0 };
    if (json_parse((const char *)data, size, &v, "fuzz", &e) == 0)
        prop_free(v);
    return 0;
}

#ifdef FUZZ_REPLAY
#include "tests/fuzz/replay-main.h"
#endif
