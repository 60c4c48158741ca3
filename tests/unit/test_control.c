/* Unit tests for formats/json.c (the strict reader, the framing, the
 * writer) and mirror/control.c (QMP's wire format over an ops table): a
 * test ops table stands in for the job, which the end-to-end tests
 * (t680-t699) drive for real. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "formats/json.h"
#include "mirror/control.h"
#include "tests/unit/unit.h"

/* --- JSON --- */

static int parse(const char *text, struct prop **out, struct err *e)
{
    return json_parse(text, strlen(text), out, "t", e);
}

static char *roundtrip(const char *text)
{
    static char buf[4096];
    struct prop *p = NULL;
    struct err e = { 0 };
    if (parse(text, &p, &e) < 0) {
        snprintf(buf, sizeof(buf), "ERR %s", e.msg);
        return buf;
    }
    struct json_buf b = { 0 };
    json_write(&b, p);
    snprintf(buf, sizeof(buf), "%s", b.data ? b.data : "");
    json_buf_free(&b);
    prop_free(p);
    return buf;
}

static void test_json_values(void)
{
    CU_ASSERT_STRING_EQUAL(roundtrip(" {\"a\" : [1, -2, 3.5, true, false, null, \"x\"]} "),
                           "{\"a\": [1, -2, 3.5, true, false, null, \"x\"]}");
    CU_ASSERT_STRING_EQUAL(roundtrip("{}"), "{}");
    CU_ASSERT_STRING_EQUAL(roundtrip("[]"), "[]");
    CU_ASSERT_STRING_EQUAL(roundtrip("18446744073709551615"), "18446744073709551615");
    CU_ASSERT_STRING_EQUAL(roundtrip("-9223372036854775808"), "-9223372036854775808");
    CU_ASSERT_STRING_EQUAL(roundtrip("18446744073709551616"), "1.8446744073709552e+19");
    CU_ASSERT_STRING_EQUAL(roundtrip("1e2"), "100");
    CU_ASSERT_STRING_EQUAL(roundtrip("\"\\u00e9\\ud83d\\ude00\\n\\\"\\/\""),
                           "\"\xc3\xa9\xf0\x9f\x98\x80\\n\\\"/\"");
    CU_ASSERT_STRING_EQUAL(roundtrip("\"\x01\""),
                           "ERR t: invalid JSON at byte 1: control character in string");
}

static void test_json_refusals(void)
{
    static const char *const bad[][2] = {
        { "", "t: invalid JSON at byte 0: unexpected end of input" },
        { "{\"a\":1,}", "t: invalid JSON at byte 7: expected a string as object key" },
        { "[1,]", "t: invalid JSON at byte 3: unexpected character" },
        { "01", "t: invalid JSON at byte 0: leading zero in number" },
        { "1.", "t: invalid JSON at byte 0: invalid number" },
        { "{\"a\":1,\"a\":2}", "t: invalid JSON at byte 7: duplicate key in an object" },
        { "{\"a\" 1}", "t: invalid JSON at byte 5: expected ':' after an object key" },
        { "[1 2]", "t: invalid JSON at byte 3: expected ',' or ']' in an array" },
        { "{} x", "t: invalid JSON at byte 3: unexpected data after the value" },
        { "\"\\ud800\"", "t: invalid JSON at byte 7: high surrogate without a low one" },
        { "\"\\udc00\"", "t: invalid JSON at byte 7: lone low surrogate in \\u escape" },
        { "\"\\u0000\"", "t: invalid JSON at byte 7: \\u0000 is not supported" },
        { "\"\\x\"", "t: invalid JSON at byte 2: bad escape in string" },
        { "\"\xc0\xaf\"", "t: invalid JSON at byte 1: invalid UTF-8 in string" },
        { "\"\xed\xa0\x80\"", "t: invalid JSON at byte 1: invalid UTF-8 in string" },
        { "\"abc", "t: invalid JSON at byte 4: unterminated string" },
        { "tru", "t: invalid JSON at byte 0: unexpected character" },
        { "1e999", "t: invalid JSON at byte 0: number out of range" },
        { "NaN", "t: invalid JSON at byte 0: unexpected character" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct prop *p = NULL;
        struct err e = { 0 };
        CU_ASSERT_EQUAL(parse(bad[i][0], &p, &e), -EINVAL);
        CU_ASSERT_STRING_EQUAL(e.msg, bad[i][1]);
    }
}

static void test_json_limits(void)
{
    char deep[200];
    struct prop *p = NULL;
    struct err e = { 0 };
    memset(deep, '[', JSON_MAX_DEPTH);
    memset(deep + JSON_MAX_DEPTH, ']', JSON_MAX_DEPTH);
    CU_ASSERT_EQUAL(json_parse(deep, 2 * JSON_MAX_DEPTH, &p, "t", &e), 0);
    prop_free(p);
    memset(deep, '[', JSON_MAX_DEPTH + 1);
    memset(deep + JSON_MAX_DEPTH + 1, ']', JSON_MAX_DEPTH + 1);
    CU_ASSERT_EQUAL(json_parse(deep, 2 * JSON_MAX_DEPTH + 2, &p, "t", &e), -E2BIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "t: JSON nested deeper than 32 levels");
    size_t n = 2 * JSON_MAX_NODES + 1;
    char *wide = malloc(n + 1);
    wide[0] = '[';
    for (size_t i = 1; i < n; i += 2)
        memcpy(wide + i, "0,", 2);
    wide[n - 1] = ']';
    CU_ASSERT_EQUAL(json_parse(wide, n, &p, "t", &e), -E2BIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "t: JSON document has more than 4096 values");
    free(wide);
}

static void test_json_frames(void)
{
    struct json_frame f = { 0 };
    const char *s = "  {\"a\": \"}\\\"{\"} [1, [2]]\n";
    CU_ASSERT_EQUAL(json_frame_scan(&f, s, 5), 0);
    f = (struct json_frame){ 0 };
    size_t end = json_frame_scan(&f, s, strlen(s));
    CU_ASSERT_EQUAL(end, 15);
    f = (struct json_frame){ 0 };
    CU_ASSERT_EQUAL(json_frame_scan(&f, s + end, strlen(s) - end), 9);
    f = (struct json_frame){ 0 };
    CU_ASSERT_EQUAL(json_frame_scan(&f, "x}y\nz", 5), 4);
}

/* --- The control socket over a test ops table --- */

struct fake {
    struct active_mirror_info job;
    struct control *c;
    int completes, pivots, cancels;
    enum control_complete how;          /* the last complete's */
    uint64_t speed;
    enum active_copy_mode mode;
};

static int fake_query(void *opaque, struct active_mirror_info *jobs, int max)
{
    struct fake *f = opaque;
    if (max < 1)
        return 0;
    jobs[0] = f->job;
    return 1;
}

/* The job finishes inside the op and reports it, as the engine does. */
static void fake_finish(struct fake *f, enum mirror_event_type type)
{
    f->job.status = ACTIVE_CONCLUDED;
    struct mirror_event ev = { .type = type, .done = f->job.offset, .total = f->job.len };
    if (f->c)
        control_job_event(f->c, f->job.id, &ev, f->job.speed);
}

static int fake_complete(void *opaque, const char *id, enum control_complete how,
                         struct err *e)
{
    struct fake *f = opaque;
    f->completes++;
    f->pivots += how != CONTROL_COMPLETE_COPY;
    f->how = how;
    fake_finish(f, MIRROR_EVENT_COMPLETED);
    return 0;
}

static int fake_cancel(void *opaque, const char *id, struct err *e)
{
    struct fake *f = opaque;
    f->cancels++;
    fake_finish(f, MIRROR_EVENT_CANCELLED);
    return 0;
}

static int fake_set_speed(void *opaque, const char *id, uint64_t speed, struct err *e)
{
    struct fake *f = opaque;
    f->job.speed = speed;
    return 0;
}

static int fake_set_copy_mode(void *opaque, const char *id, enum active_copy_mode mode,
                              struct err *e)
{
    struct fake *f = opaque;
    if (mode == ACTIVE_COPY_BACKGROUND && f->job.copy_mode == ACTIVE_COPY_WRITE_BLOCKING)
        return err_set(e, ENOTSUP, "Change to copy mode 'background' is not implemented");
    f->job.copy_mode = mode;
    return 0;
}

static const struct control_ops fake_ops = {
    .query = fake_query, .complete = fake_complete, .cancel = fake_cancel,
    .set_speed = fake_set_speed, .set_copy_mode = fake_set_copy_mode,
};

static struct fake fake_running(void)
{
    return (struct fake){ .job = { .id = "mirror0", .status = ACTIVE_RUNNING,
                                   .offset = 4096, .len = 65536, .remaining = 61440 } };
}

/* The reply lines to `input`, greeting skipped. */
static char *feed(struct fake *f, const char *input, bool *kept)
{
    static char buf[16384];
    struct control_params p = { .listen_fd = -1, .ops = &fake_ops, .opaque = f,
                                .version = "1.2.3" };
    struct json_buf out = { 0 };
    bool k = control_feed(&p, input, strlen(input), &out);
    if (kept)
        *kept = k;
    const char *nl = out.data ? strchr(out.data, '\n') : NULL;
    snprintf(buf, sizeof(buf), "%s", nl ? nl + 1 : "");
    json_buf_free(&out);
    return buf;
}

#define CAPS "{\"execute\": \"qmp_capabilities\"}\n"
#define OK "{\"return\": {}}\n"

static void test_greeting_and_negotiation(void)
{
    struct fake f = fake_running();
    struct control_params p = { .listen_fd = -1, .ops = &fake_ops, .opaque = &f,
                                .version = "1.2.3" };
    struct json_buf out = { 0 };
    control_feed(&p, "", 0, &out);
    CU_ASSERT_STRING_EQUAL(out.data, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 3, "
                           "\"minor\": 2, \"major\": 1}, \"package\": \"imgtool 1.2.3\"}, "
                           "\"capabilities\": []}}\n");
    json_buf_free(&out);
    CU_ASSERT_STRING_EQUAL(feed(&f, "{\"execute\": \"query-block-jobs\", \"id\": 1}", NULL),
                           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting "
                           "capabilities negotiation with 'qmp_capabilities'\"}, \"id\": 1}\n");
    CU_ASSERT_STRING_EQUAL(feed(&f, "{\"execute\": \"qmp_capabilities\", \"id\": {\"a\": [null, "
                                "1.5]}}{\"execute\":\"qmp_capabilities\"}", NULL),
                           "{\"return\": {}, \"id\": {\"a\": [null, 1.5]}}\n"
                           "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities "
                           "negotiation is already complete, command ignored\"}}\n");
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"query-version\"}", NULL),
                           OK "{\"return\": {\"qemu\": {\"micro\": 3, \"minor\": 2, \"major\": 1}, "
                           "\"package\": \"imgtool 1.2.3\"}}\n");
}

static void test_envelope_errors(void)
{
    struct fake f = fake_running();
    bool kept;
    CU_ASSERT_STRING_EQUAL(
        feed(&f, CAPS "[1]\n{\"foo\": 1}\n{\"id\": 2}\n{\"execute\": 5}\n"
                 "{\"execute\": \"query-block-jobs\", \"arguments\": []}\n"
                 "{\"execute\": \"nope\", \"id\": \"x\"}\n{bad}\n7\n{\"execute\": \"q\"", &kept),
        OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'foo' is unexpected\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input lacks member 'execute'\"}, \"id\": 2}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'execute' must be a string\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}\n"
        "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}, \"id\": \"x\"}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, QMP input: invalid JSON at byte 1: expected a string as object key\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}\n");
    CU_ASSERT_TRUE(kept);
}

static void test_oversized_command(void)
{
    struct fake f = fake_running();
    size_t n = CONTROL_MAX_COMMAND + 100;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    memcpy(big, "{\"execute\": \"", 13);
    big[n] = '\0';
    bool kept = true;
    CU_ASSERT_STRING_EQUAL(feed(&f, big, &kept),
                           "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input longer "
                           "than 65536 bytes, closing\"}}\n");
    CU_ASSERT_FALSE(kept);
    /* Whitespace alone never fills the buffer. */
    memset(big, '\n', n);
    CU_ASSERT_STRING_EQUAL(feed(&f, big, &kept), "");
    CU_ASSERT_TRUE(kept);
    free(big);
}

static void test_query_block_jobs(void)
{
    struct fake f = fake_running();
    CU_ASSERT_STRING_EQUAL(
        feed(&f, CAPS "{\"execute\": \"query-block-jobs\"}", NULL),
        OK "{\"return\": [{\"type\": \"mirror\", \"device\": \"mirror0\", \"len\": 65536, "
        "\"offset\": 4096, \"busy\": true, \"paused\": false, \"speed\": 0, \"io-status\": \"ok\", "
        "\"ready\": false, \"status\": \"running\", \"auto-finalize\": true, \"auto-dismiss\": true, "
        "\"actively-synced\": false, \"copy-mode\": \"background\"}]}\n");
    f.job.status = ACTIVE_CONCLUDED;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"query-block-jobs\"}", NULL),
                           OK "{\"return\": []}\n");
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"query-block-jobs\", \"arguments\": "
                                "{\"x\": 1}}", NULL),
                           OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' "
                           "is unexpected\"}}\n");
}

static void test_complete_and_cancel(void)
{
    struct fake f = fake_running();
    CU_ASSERT_STRING_EQUAL(
        feed(&f, CAPS "{\"execute\": \"block-job-complete\", \"arguments\": {\"device\": \"mirror0\"}}\n"
                 "{\"execute\": \"block-job-complete\", \"arguments\": {\"device\": \"x\"}}\n"
                 "{\"execute\": \"block-job-complete\", \"arguments\": {}}\n"
                 "{\"execute\": \"block-job-complete\", \"arguments\": {\"device\": 1}}\n", NULL),
        OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Job 'mirror0' in state 'running' "
        "cannot accept command verb 'complete'\"}}\n"
        "{\"error\": {\"class\": \"DeviceNotActive\", \"desc\": \"Block job 'x' not found\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'device' is missing\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid parameter type for 'device', "
        "expected: string\"}}\n");
    CU_ASSERT_EQUAL(f.completes, 0);
    f.job.status = ACTIVE_READY;
    f.job.ready = true;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-complete\", \"arguments\": "
                                "{\"device\": \"mirror0\"}, \"id\": 9}", NULL),
                           OK "{\"return\": {}, \"id\": 9}\n");
    CU_ASSERT_EQUAL(f.completes, 1);
    CU_ASSERT_EQUAL(f.pivots, 1);
    CU_ASSERT_EQUAL(f.how, CONTROL_COMPLETE_DEFAULT);
    /* imgtool's on-complete: stop or switch, nothing else. */
    f.job.status = ACTIVE_READY;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-complete\", \"arguments\": "
                                "{\"device\": \"mirror0\", \"on-complete\": \"sw\"}}\n"
                                "{\"execute\": \"block-job-complete\", \"arguments\": "
                                "{\"device\": \"mirror0\", \"on-complete\": 1}}\n"
                                "{\"execute\": \"block-job-complete\", \"arguments\": "
                                "{\"device\": \"mirror0\", \"on-complete\": \"switch\"}}", NULL),
                           OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter "
                           "'on-complete' does not accept value 'sw'\"}}\n"
                           "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid "
                           "parameter type for 'on-complete', expected: string\"}}\n" OK);
    CU_ASSERT_EQUAL(f.completes, 2);
    CU_ASSERT_EQUAL(f.how, CONTROL_COMPLETE_SWITCH);
    f.job.status = ACTIVE_READY;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-complete\", \"arguments\": "
                                "{\"device\": \"mirror0\", \"on-complete\": \"stop\"}}", NULL),
                           OK OK);
    CU_ASSERT_EQUAL(f.completes, 3);
    CU_ASSERT_EQUAL(f.how, CONTROL_COMPLETE_STOP);
    CU_ASSERT_EQUAL(f.pivots, 3);
    /* Cancel of a READY mirror without force: finished as a copy. */
    f.job.status = ACTIVE_READY;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-cancel\", \"arguments\": "
                                "{\"device\": \"mirror0\"}}", NULL), OK OK);
    CU_ASSERT_EQUAL(f.completes, 4);
    CU_ASSERT_EQUAL(f.how, CONTROL_COMPLETE_COPY);
    CU_ASSERT_EQUAL(f.pivots, 3);
    CU_ASSERT_EQUAL(f.cancels, 0);
    f.job.status = ACTIVE_READY;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-cancel\", \"arguments\": "
                                "{\"device\": \"mirror0\", \"force\": true}}", NULL), OK OK);
    CU_ASSERT_EQUAL(f.cancels, 1);
    f.job = fake_running().job;
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-cancel\", \"arguments\": "
                                "{\"device\": \"mirror0\", \"force\": 1}}", NULL),
                           OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid "
                           "parameter type for 'force', expected: boolean\"}}\n");
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-cancel\", \"arguments\": "
                                "{\"device\": \"mirror0\"}}", NULL), OK OK);
    CU_ASSERT_EQUAL(f.cancels, 2);
    CU_ASSERT_STRING_EQUAL(feed(&f, CAPS "{\"execute\": \"block-job-cancel\", \"arguments\": "
                                "{\"device\": \"mirror0\"}}", NULL),
                           OK "{\"error\": {\"class\": \"DeviceNotActive\", \"desc\": \"Block job "
                           "'mirror0' not found\"}}\n");
}

static void test_set_speed_and_change(void)
{
    struct fake f = fake_running();
    CU_ASSERT_STRING_EQUAL(
        feed(&f, CAPS "{\"execute\": \"block-job-set-speed\", \"arguments\": {\"device\": \"mirror0\", \"speed\": 1048576}}\n"
                 "{\"execute\": \"block-job-set-speed\", \"arguments\": {\"device\": \"mirror0\", \"speed\": -1}}\n"
                 "{\"execute\": \"block-job-set-speed\", \"arguments\": {\"device\": \"mirror0\"}}\n"
                 "{\"execute\": \"block-job-set-speed\", \"arguments\": {\"device\": \"mirror0\", \"speed\": 1.5}}\n",
             NULL),
        OK OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'speed' expects a "
        "non-negative value\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'speed' is missing\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid parameter type for 'speed', "
        "expected: integer\"}}\n");
    CU_ASSERT_EQUAL(f.job.speed, 1048576);
    CU_ASSERT_STRING_EQUAL(
        feed(&f, CAPS "{\"execute\": \"block-job-change\", \"arguments\": {\"id\": \"mirror0\", \"type\": \"mirror\", \"copy-mode\": \"write-blocking\"}}\n"
                 "{\"execute\": \"block-job-change\", \"arguments\": {\"id\": \"mirror0\", \"type\": \"mirror\", \"copy-mode\": \"fast\"}}\n"
                 "{\"execute\": \"block-job-change\", \"arguments\": {\"id\": \"mirror0\", \"type\": \"backup\", \"copy-mode\": \"background\"}}\n"
                 "{\"execute\": \"block-job-change\", \"arguments\": {\"id\": \"mirror0\", \"type\": \"mirror\", \"copy-mode\": \"background\"}}\n",
             NULL),
        OK OK "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'copy-mode' does not "
        "accept value 'fast'\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Job 'mirror0' is 'mirror' job, not "
        "'backup'\"}}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Change to copy mode 'background' is "
        "not implemented\"}}\n");
    CU_ASSERT_EQUAL(f.job.copy_mode, ACTIVE_COPY_WRITE_BLOCKING);
}

/* --- The socket loop, over a socketpair --- */

/* Read one line (blocking, at most 2 s per wait). */
static char *read_line(int fd)
{
    static char line[8192];
    size_t n = 0;
    while (n < sizeof(line) - 1) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 2000) <= 0 || read(fd, line + n, 1) != 1)
            break;
        if (line[n++] == '\n')
            break;
    }
    line[n] = '\0';
    return line;
}

static void send_str(int fd, const char *s)
{
    CU_ASSERT_EQUAL(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* The "event" and "data" of an event line, timestamp stripped. */
static char *event_of(const char *line)
{
    static char buf[1024];
    const char *ev = strstr(line, "\"event\"");
    snprintf(buf, sizeof(buf), "%s", ev ? ev : line);
    return buf;
}

static void test_socket_events(void)
{
    struct fake f = fake_running();
    struct control_params p = { .listen_fd = -1, .ops = &fake_ops, .opaque = &f,
                                .version = "1.2.3" };
    struct err e = { 0 };
    CU_ASSERT_EQUAL_FATAL(control_start(&p, &f.c, &e), 0);
    int a[2], b[2];
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    CU_ASSERT_EQUAL(control_add_client(f.c, a[1], &e), 0);
    CU_ASSERT_EQUAL(control_add_client(f.c, b[1], &e), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(read_line(a[0]), "\"QMP\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(read_line(b[0]), "\"QMP\""));
    send_str(a[0], CAPS);
    CU_ASSERT_STRING_EQUAL(read_line(a[0]), OK);
    struct mirror_event ev = { .type = MIRROR_EVENT_READY, .done = 65536, .total = 65536 };
    f.job.status = ACTIVE_READY;
    control_job_event(f.c, "mirror0", &ev, 0);
    CU_ASSERT_STRING_EQUAL(event_of(read_line(a[0])),
                           "\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"ready\", "
                           "\"id\": \"mirror0\"}}\n");
    const char *line = read_line(a[0]);
    CU_ASSERT_EQUAL(strncmp(line, "{\"timestamp\": {\"seconds\": ", 26), 0);
    CU_ASSERT_STRING_EQUAL(event_of(line),
                           "\"event\": \"BLOCK_JOB_READY\", \"data\": {\"device\": \"mirror0\", "
                           "\"len\": 65536, \"offset\": 65536, \"speed\": 0, \"type\": \"mirror\"}}\n");
    /* The completion's events come before the reply (the op returns once
     * the job has finished); b, not negotiated, sees none of them. */
    f.job.offset = 65536;
    send_str(a[0], "{\"execute\": \"block-job-complete\", \"arguments\": {\"device\": \"mirror0\"}}");
    static const char *const expect[] = { "waiting", "pending", NULL, "concluded", "null" };
    for (int i = 0; i < 5; i++) {
        char want[256];
        if (expect[i])
            snprintf(want, sizeof(want), "\"event\": \"JOB_STATUS_CHANGE\", \"data\": "
                     "{\"status\": \"%s\", \"id\": \"mirror0\"}}\n", expect[i]);
        else
            snprintf(want, sizeof(want), "\"event\": \"BLOCK_JOB_COMPLETED\", \"data\": "
                     "{\"device\": \"mirror0\", \"len\": 65536, \"offset\": 65536, \"speed\": 0, "
                     "\"type\": \"mirror\"}}\n");
        CU_ASSERT_STRING_EQUAL(event_of(read_line(a[0])), want);
    }
    CU_ASSERT_STRING_EQUAL(read_line(a[0]), OK);
    send_str(b[0], CAPS);
    CU_ASSERT_STRING_EQUAL(read_line(b[0]), OK);
    /* A client that sends a command too long is dropped after the reply;
     * the other one is served on. */
    char *big = malloc(CONTROL_MAX_COMMAND + 1);
    memset(big, '[', CONTROL_MAX_COMMAND);
    big[CONTROL_MAX_COMMAND] = '\0';
    send_str(b[0], big);
    free(big);
    CU_ASSERT_PTR_NOT_NULL(strstr(read_line(b[0]), "longer than 65536 bytes"));
    CU_ASSERT_STRING_EQUAL(read_line(b[0]), "");
    send_str(a[0], "{\"execute\": \"query-block-jobs\"}");
    CU_ASSERT_STRING_EQUAL(read_line(a[0]), "{\"return\": []}\n");
    control_stop(f.c);
    CU_ASSERT_STRING_EQUAL(read_line(a[0]), "");
    close(a[0]);
    close(b[0]);
}

UNIT_MAIN("control",
          UNIT_TEST(test_json_values), UNIT_TEST(test_json_refusals),
          UNIT_TEST(test_json_limits), UNIT_TEST(test_json_frames),
          UNIT_TEST(test_greeting_and_negotiation), UNIT_TEST(test_envelope_errors),
          UNIT_TEST(test_oversized_command), UNIT_TEST(test_query_block_jobs),
          UNIT_TEST(test_complete_and_cancel), UNIT_TEST(test_set_speed_and_change),
          UNIT_TEST(test_socket_events))
