#include "cmd/cmd.h"
#include "mirror/copy.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* What --output=json prints when the command fails: the first error
 * message of the run (cmd_error, cmd_usage_error), as a QMP-style error
 * object on stdout (imgtool(1), JSON ERRORS).  The one piece of mutable
 * state in cmd/: it belongs to the process's output, not to a library. */
static struct {
    bool json;
    bool usage;
    bool have;
    bool result_printed;    /* a JSON result document went out: it says it all */
    char desc[2048];
} run_error;

static void record_error(bool usage, const char *fmt, va_list ap)
{
    if (run_error.have)
        return;
    vsnprintf(run_error.desc, sizeof(run_error.desc), fmt, ap);
    run_error.have = true;
    run_error.usage = usage;
}

static const char *error_class(int status)
{
    if (status == EXIT_IN_USE)
        return "InUse";
    if (status == EXIT_CANCELLED)
        return "Cancelled";
    return run_error.usage ? "UsageError" : "GenericError";
}

int cmd_finish(int status)
{
    if (status != EXIT_OK && run_error.json && run_error.have && !run_error.result_printed) {
        printf("{\"error\": {\"class\": \"%s\", \"desc\": ", error_class(status));
        json_print_string(stdout, run_error.desc);
        printf("}}\n");
    }
    /* A cron job trusts the exit status: output that could not be written
     * (a full disk, a closed pipe) is a failure, as in GNU's close_stdout;
     * closing stdout shows a deferred write error too. */
    errno = 0;
    bool failed = fflush(stdout) != 0 || ferror(stdout);
    if (fclose(stdout) != 0)
        failed = true;
    if (failed) {
        cmd_error("write error on standard output: %s", strerror(errno ? errno : EIO));
        if (status == EXIT_OK)
            status = EXIT_ERROR;
    }
    if ((fflush(stderr) != 0 || ferror(stderr)) && status == EXIT_OK)
        status = EXIT_ERROR;    /* nowhere left to say so */
    return status;
}

static void print_help(struct cmdline *cl, const struct command *cmd)
{
    printf("imgtool %s - %s\n\n", cmd->name, cmd->summary);
    poptPrintHelp(cl->ctx, stdout, 0);
    printf("\nSee imgtool-%s(1) for details and exit statuses.\n", cmd->name);
}

int cmd_usage_error(struct cmdline *cl, const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "imgtool %s: ", cl->cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    va_start(ap, fmt);
    record_error(true, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'imgtool %s --help' for more information.\n", cl->cmd->name);
    return cl->usage_status;
}

/* --- Long options abbreviated as getopt_long (and so qemu-img) takes them:
 * "--out=json" is "--output=json" when no other long option starts with
 * "out".  popt wants whole names, so the arguments are rewritten first. */

/* The long options of `table` (and the tables it includes) that `name`
 * (n bytes) names exactly or abbreviates. */
struct long_match {
    const struct poptOption *exact, *first, *second;
    int count;              /* options it abbreviates */
};

static void match_long_option(const struct poptOption *table, const char *name, size_t n,
                              struct long_match *m)
{
    for (const struct poptOption *o = table; o->longName || o->shortName || o->arg; o++) {
        if ((o->argInfo & POPT_ARG_MASK) == POPT_ARG_INCLUDE_TABLE) {
            match_long_option(o->arg, name, n, m);
        } else if (o->longName && !strncmp(o->longName, name, n)) {
            if (strlen(o->longName) == n)
                m->exact = o;
            else if (m->count++ == 0)
                m->first = o;
            else if (!m->second)
                m->second = o;
        }
    }
}

static bool takes_argument(const struct poptOption *o)
{
    int type = o->argInfo & POPT_ARG_MASK;
    return type != POPT_ARG_NONE && type != POPT_ARG_VAL;
}

static const struct poptOption *find_short_option(const struct poptOption *table, char c)
{
    for (const struct poptOption *o = table; o->longName || o->shortName || o->arg; o++) {
        if ((o->argInfo & POPT_ARG_MASK) == POPT_ARG_INCLUDE_TABLE) {
            const struct poptOption *f = find_short_option(o->arg, c);
            if (f)
                return f;
        } else if (o->shortName == c) {
            return o;
        }
    }
    return NULL;
}

/* Rewrite abbreviated long options of argv[1..] in place (new strings kept
 * in cl->expanded); returns -1 to go on or the status of a usage error. */
static int expand_abbreviations(struct cmdline *cl, const struct poptOption *table, int argc,
                                const char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1])
            continue;
        if (!strcmp(a, "--"))
            return -1;
        if (a[1] != '-') {
            /* Short options "-abc": the last may take the next argument. */
            const struct poptOption *o = find_short_option(table, a[strlen(a) - 1]);
            if (o && takes_argument(o) && strlen(a) == 2)
                i++;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        struct long_match m = { 0 };
        match_long_option(table, name, n, &m);
        if (!m.exact && m.count > 1)
            return cmd_usage_error(cl, "option '--%.*s' is ambiguous; possibilities: '--%s' "
                                   "'--%s'%s", (int)n, name, m.first->longName,
                                   m.second->longName, m.count > 2 ? " ..." : "");
        const struct poptOption *o = m.exact ? m.exact : m.first;
        if (!o)
            continue;   /* popt reports it */
        if (strlen(o->longName) != n) {
            char *full = malloc(strlen(o->longName) + strlen(a) + 3);
            char **more = realloc(cl->expanded, sizeof(*more) * (cl->nexpanded + 1));
            if (more)
                cl->expanded = more;
            if (!full || !more) {
                free(full);
                cmd_error("out of memory");
                return EXIT_ERROR;
            }
            sprintf(full, "--%s%s", o->longName, eq ? eq : "");
            cl->expanded[cl->nexpanded++] = full;
            argv[i] = full;
        }
        if (takes_argument(o) && !eq)
            i++;
    }
    return -1;
}

int cmd_parse(struct cmdline *cl, const struct command *cmd, int argc, const char **argv,
              const struct poptOption *options, int min_args, int max_args,
              int (*on_option)(struct cmdline *cl, int val, const char *arg, void *opaque),
              void *opaque)
{
    enum { OPT_HELP = 0x7fff0001 };
    struct poptOption table[] = {
        { NULL, '\0', POPT_ARG_INCLUDE_TABLE, (void *)options, 0, "Options:", NULL },
        { "help", 'h', POPT_ARG_NONE, NULL, OPT_HELP, "show this help and exit", NULL },
        POPT_TABLEEND
    };
    if (!cl->usage_status)
        cl->usage_status = EXIT_ERROR;
    cl->cmd = cmd;
    cl->options = options;
    cl->popt_argv = calloc((size_t)argc + 1, sizeof(*cl->popt_argv));
    cl->program = malloc(strlen(cmd->name) + sizeof("imgtool "));
    if (cl->popt_argv && cl->program) {
        sprintf(cl->program, "imgtool %s", cmd->name);
        memcpy(cl->popt_argv, argv, sizeof(*argv) * (size_t)argc);
        cl->popt_argv[0] = cl->program;
        int st = expand_abbreviations(cl, table, argc, cl->popt_argv);
        if (st >= 0)
            return st;
        cl->ctx = poptGetContext(cmd->name, argc, cl->popt_argv, table, 0);
    }
    if (!cl->ctx) {
        cmd_error("out of memory");
        return EXIT_ERROR;
    }
    char usage[256];
    snprintf(usage, sizeof(usage), "%s", cmd->usage);
    poptSetOtherOptionHelp(cl->ctx, usage);
    int rc;
    while ((rc = poptGetNextOpt(cl->ctx)) > 0) {
        if (rc == OPT_HELP) {
            print_help(cl, cmd);
            return EXIT_OK;
        }
        if (on_option) {
            /* popt hands over a malloc'ed copy: keep it until cmd_done so
             * that on_option may store the pointer. */
            char *arg = poptGetOptArg(cl->ctx);
            if (arg) {
                char **more = realloc(cl->optargs, sizeof(*more) * (cl->noptargs + 1));
                if (!more) {
                    free(arg);
                    cmd_error("out of memory");
                    return EXIT_ERROR;
                }
                cl->optargs = more;
                cl->optargs[cl->noptargs++] = arg;
            }
            int st = on_option(cl, rc, arg, opaque);
            if (st >= 0)
                return st;
        }
    }
    if (rc < -1)
        return cmd_usage_error(cl, "%s: %s", poptBadOption(cl->ctx, POPT_BADOPTION_NOALIAS),
                               poptStrerror(rc));
    cl->args = poptGetArgs(cl->ctx);
    cl->nargs = 0;
    while (cl->args && cl->args[cl->nargs])
        cl->nargs++;
    if (cl->nargs < min_args)
        return cmd_usage_error(cl, "missing argument (usage: imgtool %s %s)", cmd->name,
                               cmd->usage);
    if (max_args >= 0 && cl->nargs > max_args)
        return cmd_usage_error(cl, "unexpected argument '%s'", cl->args[max_args]);
    return -1;
}

void cmd_done(struct cmdline *cl)
{
    /* popt strdup()s the value of every POPT_ARG_STRING option it stores. */
    for (const struct poptOption *o = cl->options; o && (o->longName || o->shortName); o++) {
        if ((o->argInfo & POPT_ARG_MASK) == POPT_ARG_STRING && o->arg) {
            free(*(char **)o->arg);
            *(char **)o->arg = NULL;
        }
    }
    for (size_t i = 0; i < cl->noptargs; i++)
        free(cl->optargs[i]);
    free(cl->optargs);
    cl->optargs = NULL;
    cl->noptargs = 0;
    if (cl->ctx)
        poptFreeContext(cl->ctx);
    cl->ctx = NULL;
    free(cl->popt_argv);
    free(cl->program);
    for (size_t i = 0; i < cl->nexpanded; i++)
        free(cl->expanded[i]);
    free(cl->expanded);
    cl->expanded = NULL;
    cl->nexpanded = 0;
    cl->popt_argv = NULL;
    cl->program = NULL;
}

/* Errors and warnings go to stderr after whatever stdout holds, so that
 * the two read in order when both go to one pipe or file (stdout is then
 * fully buffered). */
void cmd_error(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("imgtool: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    va_start(ap, fmt);
    record_error(false, fmt, ap);
    va_end(ap);
}

void cmd_warn(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("imgtool: warning: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cmd_print_err(const struct err *e)
{
    cmd_error("%s", e->msg[0] ? e->msg : strerror(e->code ? e->code : EIO));
}

int cmd_parse_output(struct cmdline *cl, const char *s, enum output_mode *mode)
{
    if (!s || !strcmp(s, "human")) {
        *mode = OUTPUT_HUMAN;
        return -1;
    }
    if (!strcmp(s, "json")) {
        *mode = OUTPUT_JSON;
        run_error.json = true;
        return -1;
    }
    return cmd_usage_error(cl, "--output must be 'human' or 'json', not '%s'", s);
}

int cmd_parse_size_arg(struct cmdline *cl, const char *what, const char *s, uint64_t *out)
{
    int ret = parse_size(s, out);
    if (ret == -ERANGE)
        return cmd_usage_error(cl, "%s '%s' is too large", what, s);
    if (ret < 0)
        return cmd_usage_error(cl, "%s '%s' is not a valid size (use e.g. 512, 64k, 10G)",
                               what, s);
    return -1;
}

int cmd_parse_buf_size(struct cmdline *cl, const char *s, size_t *out)
{
    uint64_t v;
    int status = cmd_parse_size_arg(cl, "buffer size", s, &v);
    if (status >= 0)
        return status;
    if (v < 4096 || v > (256u << 20) || v % 512)
        return cmd_usage_error(cl, "--buf-size must be a multiple of 512 between 4k and 256M");
    *out = (size_t)v;
    return -1;
}

unsigned cmd_open_flags(bool writable, bool force_share, const char *cache, struct err *e,
                        int *ret)
{
    unsigned flags = 0;
    *ret = 0;
    if (writable)
        flags |= BLK_OPEN_RDWR;
    if (force_share)
        flags |= BLK_OPEN_FORCE_SHARE;
    if (cache) {
        if (!strcmp(cache, "none") || !strcmp(cache, "directsync"))
            flags |= BLK_OPEN_DIRECT;
        else if (strcmp(cache, "writeback") && strcmp(cache, "unsafe") &&
                 strcmp(cache, "writethrough"))
            *ret = err_set(e, EINVAL, "invalid cache mode '%s' (use none, writeback, "
                           "writethrough, directsync or unsafe)", cache);
    }
    return flags;
}

int cmd_on_format_option(struct cmdline *cl, int val, const char *arg, void *opaque)
{
    struct cmd_format_opts *o = opaque;
    if (val == CMD_OPT_O && cmd_opts_want_help(arg))
        o->help = true;
    else if (val == CMD_OPT_O && kvopts_parse(&o->opts, arg, &o->e) < 0)
        return cmd_usage_error(cl, "-o %s: %s", arg, o->e.msg);
    return -1;
}

bool cmd_opts_want_help(const char *text)
{
    for (const char *p = text; p && *p;) {
        size_t n = strcspn(p, ",");
        if ((n == 4 && !strncmp(p, "help", 4)) || (n == 1 && *p == '?'))
            return true;
        p += n;
        while (*p == ',')
            p++;
    }
    return false;
}

/* One line per option, qemu-img's layout. */
static void print_options(const char *caption, const struct blk_option_desc *desc,
                          bool with_protocol);

void cmd_print_create_options(const struct blockdrv *drv, const char *filename)
{
    char caption[64];
    if (filename)
        snprintf(caption, sizeof(caption), "Supported options:");
    else
        snprintf(caption, sizeof(caption), "Supported %s options:", drv->name);
    print_options(caption, drv->create_options, filename != NULL);
    if (!filename)
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
}

void json_print_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\t': fputs("\\t", out); break;
        case '\r': fputs("\\r", out); break;
        default:
            if (*p < 0x20)
                fprintf(out, "\\u%04x", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

void json_print(FILE *out, const struct prop *p, int indent)
{
    if (indent == 0 && out == stdout)
        run_error.result_printed = true;
    switch (p->type) {
    case PROP_STRING: json_print_string(out, p->v.s); return;
    case PROP_INT: fprintf(out, "%" PRId64, p->v.i); return;
    case PROP_UINT: fprintf(out, "%" PRIu64, p->v.u); return;
    case PROP_BOOL: fputs(p->v.b ? "true" : "false", out); return;
    case PROP_NULL: fputs("null", out); return;
    case PROP_DOUBLE: fprintf(out, "%.17g", p->v.d); return;
    case PROP_OBJECT:
    case PROP_ARRAY: break;
    }
    bool obj = p->type == PROP_OBJECT;
    if (!p->first) {
        /* QEMU's JSON writer puts the closing bracket of an empty container
         * on its own line too ("flags": [\n    ]). */
        fprintf(out, "%c\n%*s%c", obj ? '{' : '[', indent, "", obj ? '}' : ']');
        return;
    }
    fputs(obj ? "{\n" : "[\n", out);
    for (const struct prop *c = p->first; c; c = c->next) {
        fprintf(out, "%*s", indent + 4, "");
        if (obj) {
            json_print_string(out, c->key ? c->key : "");
            fputs(": ", out);
        }
        json_print(out, c, indent + 4);
        fputs(c->next ? ",\n" : "\n", out);
    }
    fprintf(out, "%*s%c", indent, "", obj ? '}' : ']');
}

void cmd_add_copy_stats(struct prop *o, const struct copy_stats *st)
{
    prop_add_uint(o, "bytes-read", st->bytes_read);
    prop_add_uint(o, "bytes-written", st->bytes_written);
    prop_add_uint(o, "bytes-zeroed", st->bytes_zeroed);
    prop_add_uint(o, "bytes-skipped", st->bytes_skipped);
}

/* The bar's width for a terminal of `columns`: the line is
 * "    (100.0/100%) [" + bar + "]", 19 columns around the bar, kept one
 * column short of the edge (a full line makes some terminals wrap). */
static int bar_width(int columns)
{
    int w = columns - 20;
    return w < 0 ? 0 : w > PROGRESS_MAX_BAR ? PROGRESS_MAX_BAR : w;
}

void progress_init(struct progress *p, bool requested, uint64_t total)
{
    p->enabled = requested && isatty(STDERR_FILENO);
    struct winsize ws;
    p->bar_width = PROGRESS_MAX_BAR;
    if (p->enabled && ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        p->bar_width = bar_width(ws.ws_col);
    p->total = total;
    p->last_permille = -1;
    progress_update(p, 0);
}

void progress_update(struct progress *p, uint64_t done)
{
    if (!p->enabled)
        return;
    int permille = p->total ? (int)(done * 1000 / p->total) : 1000;
    if (permille > 1000)
        permille = 1000;
    if (permille == p->last_permille)
        return;
    p->last_permille = permille;
    char bar[PROGRESS_MAX_BAR + 1];
    int filled = permille * p->bar_width / 1000;
    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '-', (size_t)(p->bar_width - filled));
    bar[p->bar_width] = '\0';
    if (p->bar_width)
        fprintf(stderr, "\r    (%5.1f/100%%) [%s]", permille / 10.0, bar);
    else
        fprintf(stderr, "\r    (%5.1f/100%%)", permille / 10.0);
    fflush(stderr);
}

void progress_finish(struct progress *p)
{
    if (!p->enabled)
        return;
    progress_update(p, p->total);
    fputc('\n', stderr);
}

static uint64_t snap_uint(const struct prop *o, const char *key)
{
    const struct prop *p = prop_get(o, key);
    if (!p)
        return 0;
    return p->type == PROP_UINT ? p->v.u : (uint64_t)p->v.i;
}

static const char *snap_string(const struct prop *o, const char *key)
{
    const struct prop *p = prop_get(o, key);
    return p && p->type == PROP_STRING ? p->v.s : NULL;
}

/* The snapshot table as qemu-img prints it. */
int cmd_parse_snapshot_arg(struct cmdline *cl, struct cmd_snapshot_arg *sa, struct err *e)
{
    static const char prefix[] = "snapshot.";
    if (!sa->arg || strncmp(sa->arg, prefix, sizeof(prefix) - 1))
        return -1;
    if (kvopts_parse(&sa->kv, sa->arg, e) < 0)
        return cmd_usage_error(cl, "Failed in parsing snapshot param '%s': %s", sa->arg, e->msg);
    for (size_t i = 0; i < sa->kv.count; i++)
        if (strcmp(sa->kv.items[i].key, "snapshot.id") &&
            strcmp(sa->kv.items[i].key, "snapshot.name"))
            return cmd_usage_error(cl, "Failed in parsing snapshot param '%s': Invalid "
                                   "parameter '%s'", sa->arg, sa->kv.items[i].key);
    return -1;
}

int cmd_load_snapshot(struct cmd_snapshot_arg *sa, struct blockdev *bs, struct err *e)
{
    if (!sa->arg)
        return 0;
    int ret = sa->kv.count ? blk_snapshot_load(bs, kvopts_get(&sa->kv, "snapshot.id"),
                                               kvopts_get(&sa->kv, "snapshot.name"), NULL, e)
                           : blk_snapshot_load(bs, NULL, NULL, sa->arg, e);
    if (ret < 0)
        err_prefix(e, "Failed to load snapshot: ");
    return ret;
}

void cmd_print_snapshots(const struct prop *snaps)
{
    printf("Snapshot list:\n%-9s %-16s %8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (const struct prop *s = snaps->first; s; s = s->next) {
        char vmsize[32], date[32] = "", clock[32], icount[32] = "";
        format_size_human(snap_uint(s, "vm-state-size"), vmsize, sizeof(vmsize));
        time_t secs = (time_t)snap_uint(s, "date-sec");
        struct tm tm;
        if (localtime_r(&secs, &tm))
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        uint64_t ns = snap_uint(s, "vm-clock-sec") * 1000000000ULL + snap_uint(s, "vm-clock-nsec");
        uint64_t ms = ns / 1000000;
        snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
                 ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
        if (prop_get(s, "icount"))
            snprintf(icount, sizeof(icount), "%" PRIu64, snap_uint(s, "icount"));
        const char *id = snap_string(s, "id"), *name = snap_string(s, "name");
        printf("%-9s %-16s %8s%20s%13s%11s\n", id ? id : "", name ? name : "", vmsize, date,
               clock, icount);
    }
}


/* One line per option, "  name=<type>" padded to 24 columns, " - help",
 * sorted, as QEMU's qemu_opts_print_help. */
static int compare_lines(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void cmd_print_option_help(const char *caption, const struct blk_option_desc *desc)
{
    print_options(caption, desc, true);
}

/* The protocol's options (a host file's) only when asked for. */
static void print_options(const char *caption, const struct blk_option_desc *desc,
                          bool with_protocol)
{
    size_t n = 0;
    while (desc && desc[n].name)
        n++;
    char **lines = calloc(n ? n : 1, sizeof(*lines));
    size_t m = 0;
    printf("%s\n", caption);
    for (size_t i = 0; lines && i < n; i++) {
        if (desc[i].protocol && !with_protocol)
            continue;
        char head[128];
        int len = snprintf(head, sizeof(head), "  %s=<%s>", desc[i].name, desc[i].type);
        size_t size = (size_t)len + 32 + strlen(desc[i].help);
        if ((lines[m] = malloc(size)))
            snprintf(lines[m++], size, "%s%*s - %s", head, len < 24 ? 24 - len : 0, "",
                     desc[i].help);
    }
    qsort(lines, m, sizeof(*lines), compare_lines);
    for (size_t i = 0; i < m; i++) {
        printf("%s\n", lines[i]);
        free(lines[i]);
    }
    free(lines);
}

/* The process's open settings (cmd_env_init fills them from the
 * environment; the libraries only see them as open options). */
static struct fault_injection fault_hook = { .limit = -1 };
static struct blk_open_opts env_opts;
static struct blk_open_opts conn_opts;

static bool env_number(const char *name, long min, long max, long *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return true;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > max) {
        cmd_error("%s='%s' is not a number from %ld to %ld", name, v, min, max);
        return false;
    }
    *out = n;
    return true;
}

bool cmd_env_init(void)
{
    const char *l2 = getenv("IMGTOOL_L2_CACHE_SIZE");
    if (l2 && *l2 && (parse_size(l2, &env_opts.l2_cache_bytes) < 0 ||
                      env_opts.l2_cache_bytes == 0)) {
        cmd_error("IMGTOOL_L2_CACHE_SIZE='%s' is not a size (use e.g. 4M)", l2);
        return false;
    }
    long limit = -1, timeout = 0;
    if (!env_number("IMGTOOL_FAULT_AFTER_WRITES", 0, LONG_MAX, &limit) ||
        !env_number("IMGTOOL_NBD_TIMEOUT", 1, 86400, &timeout))
        return false;
    fault_hook.limit = limit;
    if (limit >= 0)
        env_opts.transport.fault = &fault_hook;
    env_opts.transport.nbd_timeout = (unsigned)timeout;
    return true;
}

const struct blk_open_opts *cmd_open_opts(void)
{
    return &env_opts;
}

int cmd_parse_connections(struct cmdline *cl, int n, const char *const *names, int count,
                          const struct blk_open_opts **out)
{
    if (n < 1 || n > 16)
        return cmd_usage_error(cl, "--connections must be from 1 to 16");
    bool uri = false;
    for (int i = 0; i < count; i++)
        uri |= blk_name_is_network(names[i]);
    if (n > 1 && !uri)
        return cmd_usage_error(cl, "--connections=%d needs an NBD URI (nbd://, nbd+unix://) "
                               "as source or target", n);
    conn_opts = env_opts;
    conn_opts.transport.nbd_connections = (unsigned)n;
    *out = &conn_opts;
    return -1;
}
