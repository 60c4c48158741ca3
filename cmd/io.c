/* imgtool io: the scripting primitive.  Runs qemu-io style commands
 * ("write -P 0xab 0 64k", "write -z 1M 64k", "read -P 0xab 0 64k",
 * "discard 0 1M", "flush") against one open image, so tests and users can
 * change an image from the shell with the same command strings as qemu-io. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"

#define IO_CHUNK (4u << 20)
#define MAX_WORDS 16

struct io_state {
    struct blockdev *bs;
    bool quiet;
    uint8_t *buf;
    uint8_t *expect;
};

enum { OPT_CMD = 1 };

struct io_args {
    const char **cmds;
    int ncmds;
};

static int on_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct io_args *a = opaque;
    if (val == OPT_CMD) {
        const char **c = realloc(a->cmds, sizeof(*c) * (size_t)(a->ncmds + 1));
        if (!c) {
            cmd_error("out of memory");
            return EXIT_ERROR;
        }
        a->cmds = c;
        a->cmds[a->ncmds++] = arg;
    }
    (void)cl;
    return -1;
}

static int split_words(char *line, char **words)
{
    int n = 0;
    for (char *tok = strtok(line, " \t"); tok; tok = strtok(NULL, " \t")) {
        if (n == MAX_WORDS)
            return -1;
        words[n++] = tok;
    }
    return n;
}

static int parse_pattern(const char *s, int *pattern)
{
    char *end;
    long v = strtol(s, &end, 0);
    if (*end || v < 0 || v > 255)
        return -1;
    *pattern = (int)v;
    return 0;
}

/* Range arguments "OFFSET LENGTH" checked against the image size. */
static int parse_range(struct io_state *st, char **words, int n, uint64_t *off,
                       uint64_t *len)
{
    if (n != 2) {
        cmd_error("expected OFFSET LENGTH");
        return -1;
    }
    if (parse_size(words[0], off) < 0 || parse_size(words[1], len) < 0) {
        cmd_error("invalid offset or length '%s %s'", words[0], words[1]);
        return -1;
    }
    if (*off > st->bs->size || *len > st->bs->size - *off) {
        cmd_error("%s: range %" PRIu64 "+%" PRIu64 " is beyond the end of the image "
                  "(%" PRIu64 " bytes)", st->bs->filename, *off, *len, st->bs->size);
        return -1;
    }
    return 0;
}

static int do_write(struct io_state *st, char **w, int n)
{
    int pattern = 0xcd, zero = 0, unmap = 0, i = 1;
    for (; i < n && w[i][0] == '-'; i++) {
        if (!strcmp(w[i], "-P") && i + 1 < n) {
            if (parse_pattern(w[++i], &pattern) < 0) {
                cmd_error("write: invalid pattern '%s'", w[i]);
                return -1;
            }
        } else if (!strcmp(w[i], "-z")) {
            zero = 1;
        } else if (!strcmp(w[i], "-u")) {
            unmap = 1;
        } else {
            cmd_error("write: unknown option '%s'", w[i]);
            return -1;
        }
    }
    uint64_t off, len;
    if (parse_range(st, w + i, n - i, &off, &len) < 0)
        return -1;
    struct err e = { 0 };
    if (zero) {
        if (blk_write_zeroes(st->bs, off, len, unmap ? BLK_ZERO_MAY_UNMAP : 0, &e) < 0) {
            cmd_print_err(&e);
            return -1;
        }
    } else {
        memset(st->buf, pattern, IO_CHUNK);
        for (uint64_t done = 0; done < len;) {
            size_t chunk = (size_t)min_u64(len - done, IO_CHUNK);
            if (blk_pwrite(st->bs, off + done, st->buf, chunk, &e) < 0) {
                cmd_print_err(&e);
                return -1;
            }
            done += chunk;
        }
    }
    if (!st->quiet)
        printf("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
    return 0;
}

static int do_read(struct io_state *st, char **w, int n)
{
    int pattern = -1, i = 1;
    for (; i < n && w[i][0] == '-'; i++) {
        if (!strcmp(w[i], "-P") && i + 1 < n) {
            if (parse_pattern(w[++i], &pattern) < 0) {
                cmd_error("read: invalid pattern '%s'", w[i]);
                return -1;
            }
        } else {
            cmd_error("read: unknown option '%s'", w[i]);
            return -1;
        }
    }
    uint64_t off, len;
    if (parse_range(st, w + i, n - i, &off, &len) < 0)
        return -1;
    struct err e = { 0 };
    if (pattern >= 0)
        memset(st->expect, pattern, IO_CHUNK);
    for (uint64_t done = 0; done < len;) {
        size_t chunk = (size_t)min_u64(len - done, IO_CHUNK);
        if (blk_pread(st->bs, off + done, st->buf, chunk, &e) < 0) {
            cmd_print_err(&e);
            return -1;
        }
        if (pattern >= 0 && memcmp(st->buf, st->expect, chunk) != 0) {
            size_t k = 0;
            while (st->buf[k] == pattern)
                k++;
            cmd_error("%s: pattern verification failed at offset %" PRIu64
                      " (read 0x%02x, expected 0x%02x)", st->bs->filename, off + done + k,
                      st->buf[k], pattern);
            return -1;
        }
        done += chunk;
    }
    if (!st->quiet)
        printf("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
    return 0;
}

static int do_discard(struct io_state *st, char **w, int n)
{
    uint64_t off, len;
    if (parse_range(st, w + 1, n - 1, &off, &len) < 0)
        return -1;
    struct err e = { 0 };
    if (blk_discard(st->bs, off, len, &e) < 0) {
        cmd_print_err(&e);
        return -1;
    }
    if (!st->quiet)
        printf("discard %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", len, len, off);
    return 0;
}

static int do_flush(struct io_state *st, char **w, int n)
{
    (void)w;
    if (n != 1) {
        cmd_error("flush takes no arguments");
        return -1;
    }
    struct err e = { 0 };
    if (blk_flush(st->bs, &e) < 0) {
        cmd_print_err(&e);
        return -1;
    }
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(struct io_state *st, char **words, int n);
    bool writes;
} io_commands[] = {
    { "write", do_write, true },
    { "read", do_read, false },
    { "discard", do_discard, true },
    { "flush", do_flush, false },
};

static int find_io_command(const char *name)
{
    for (size_t i = 0; i < sizeof(io_commands) / sizeof(io_commands[0]); i++)
        if (!strcmp(io_commands[i].name, name))
            return (int)i;
    return -1;
}

/* Check every command line before touching the image, so a typo in the
 * third command does not leave the first two applied. */
static int validate_commands(struct cmdline *cl, const struct io_args *a, bool *writes)
{
    *writes = false;
    for (int i = 0; i < a->ncmds; i++) {
        char *copy = strdup(a->cmds[i]);
        char *words[MAX_WORDS];
        int n = copy ? split_words(copy, words) : -1;
        int k = n > 0 ? find_io_command(words[0]) : -1;
        free(copy);
        if (k < 0)
            return cmd_usage_error(cl, "unknown io command '%s' (use write, read, discard, "
                                   "flush)", a->cmds[i]);
        *writes |= io_commands[k].writes;
    }
    return -1;
}

int cmd_io(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *cache = NULL;
    int force_share = 0, quiet = 0, read_only = 0, nocache = 0;
    struct io_args a = { 0 };
    struct poptOption options[] = {
        { "cmd", 'c', POPT_ARG_STRING, NULL, OPT_CMD,
          "command to run (repeatable): write [-P PAT|-z [-u]] OFF LEN, read [-P PAT] "
          "OFF LEN, discard OFF LEN, flush", "COMMAND" },
        CMD_OPTION_FORMAT(format),
        { "read-only", 'r', POPT_ARG_NONE, &read_only, 0, "open the image read-only", NULL },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "with -r: open even if another process is writing the image", NULL },
        { "cache", 't', POPT_ARG_STRING, &cache, 0, "cache mode (none = O_DIRECT)", "MODE" },
        { "nocache", 'n', POPT_ARG_NONE, &nocache, 0, "bypass the host page cache, short for "
          "-t none", NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct io_state st = { 0 };
    struct err e = { 0 };
    bool writes;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, on_option, &a);
    if (status >= 0 || (status = validate_commands(&cl, &a, &writes)) >= 0)
        goto out;
    if (writes && read_only) {
        status = cmd_usage_error(&cl, "write and discard need the image open read-write "
                                 "(drop -r)");
        goto out;
    }
    if (force_share && writes) {
        status = cmd_usage_error(&cl, "-U is only for reading; another process may be "
                                 "using the image");
        goto out;
    }
    if (nocache && cache && strcmp(cache, "none")) {
        status = cmd_usage_error(&cl, "-n means -t none, not -t %s", cache);
        goto out;
    }
    int ret;
    unsigned flags = cmd_open_flags(writes, force_share, nocache ? "none" : cache, &e, &ret);
    status = EXIT_ERROR;
    if (ret < 0 || blk_open(cl.args[0], format, flags, cmd_open_opts(), &st.bs, &e) < 0) {
        cmd_print_err(&e);
        goto out;
    }
    st.quiet = quiet;
    if (posix_memalign((void **)&st.buf, 4096, IO_CHUNK) ||
        posix_memalign((void **)&st.expect, 4096, IO_CHUNK)) {
        cmd_error("out of memory");
        goto out;
    }
    for (int i = 0; i < a.ncmds; i++) {
        char *line = strdup(a.cmds[i]);
        char *words[MAX_WORDS];
        int n = split_words(line, words);
        int k = find_io_command(words[0]);
        int r = io_commands[k].fn(&st, words, n);
        free(line);
        if (r < 0)
            goto out;
    }
    if (writes && blk_flush(st.bs, &e) < 0) {
        cmd_print_err(&e);
        goto out;
    }
    status = EXIT_OK;
out:
    free(st.buf);
    free(st.expect);
    blk_close(st.bs);
    free(a.cmds);
    cmd_done(&cl);
    return status;
}
