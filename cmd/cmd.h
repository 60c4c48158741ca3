/* Shared pieces of the subcommands: the command table entry, option
 * parsing on top of popt, error printing, output modes and progress. */
#ifndef IMGTOOL_CMD_H
#define IMGTOOL_CMD_H

#include <popt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "formats/blockdev.h"
#include "formats/props.h"
#include "formats/util.h"

/* Exit statuses shared by all subcommands (documented in imgtool(1)). */
enum {
    EXIT_OK = 0,
    EXIT_ERROR = 1,         /* failure, or bad usage */
    EXIT_CANCELLED = 130,   /* interrupted by SIGINT/SIGTERM (128 + SIGINT) */
    /* Another process holds the image (a lock conflict): EX_TEMPFAIL, "try
     * again later", for cron wrappers; never for a permanent error. */
    EXIT_IN_USE = 75,
};

/* The end of every run (main): with --output=json and a failure, the JSON
 * error object on stdout; then stdout and stderr are flushed, and a write
 * error makes a successful run fail.  Returns the exit status. */
int cmd_finish(int status);

struct command {
    const char *name;
    int (*run)(const struct command *cmd, int argc, const char **argv);
    const char *summary;    /* one line, the same as in the man page NAME */
    const char *usage;      /* arguments after the options */
};

const struct command *command_find(const char *name);
extern const struct command commands[];

/* Output mode for --output. */
enum output_mode { OUTPUT_HUMAN, OUTPUT_JSON };

/* Parsed command line of one subcommand. */
struct cmdline {
    const struct command *cmd;
    poptContext ctx;
    const char **args;      /* positional arguments */
    int nargs;
    int usage_status;       /* exit status for usage errors (1, or 2 for compare) */
    const struct poptOption *options;  /* string options are freed by cmd_done */
    char **optargs;         /* arguments handed to on_option, freed by cmd_done */
    /* argv as popt sees it: argv[0] is "imgtool CMD", the name its usage
     * line shows (popt keeps pointers into it until cmd_done). */
    const char **popt_argv;
    char *program;
    char **expanded;        /* abbreviated long options written out in full */
    size_t nexpanded;
    size_t noptargs;
};

/* Parse argv with `options` (a popt table; --help/-h is added).  Returns -1
 * to go on, or an exit status to return at once (after --help, or after a
 * usage error, which prints one line plus a hint).  Options whose val is
 * non-zero are passed to `on_option` (may be NULL). */
int cmd_parse(struct cmdline *cl, const struct command *cmd, int argc, const char **argv,
              const struct poptOption *options, int min_args, int max_args,
              int (*on_option)(struct cmdline *cl, int val, const char *arg, void *opaque),
              void *opaque);
/* Free the parser and the strings popt allocated for string options. */
void cmd_done(struct cmdline *cl);

/* "imgtool CMD: message" plus the usage hint; returns cl->usage_status. */
int cmd_usage_error(struct cmdline *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Print an error (one line, "imgtool: ...") to stderr. */
void cmd_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cmd_print_err(const struct err *e);
void cmd_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int cmd_parse_output(struct cmdline *cl, const char *s, enum output_mode *mode);
int cmd_parse_size_arg(struct cmdline *cl, const char *what, const char *s, uint64_t *out);
/* --buf-size of the commands that copy: a multiple of 512 from 4k to 256M.
 * Returns -1 to go on, or the exit status of a usage error. */
int cmd_parse_buf_size(struct cmdline *cl, const char *s, size_t *out);

/* Whether an -o argument asks for the list of options ("help" or "?" as
 * one of its comma-separated items), as qemu-img's is_help_option. */
bool cmd_opts_want_help(const char *text);
/* The -o options of create, convert, amend and measure, from every -o
 * (popt val CMD_OPT_O, no arg pointer): their items, and whether one of
 * them asked for help (cmd_opts_want_help). */
/* popt entries that several commands share, spelled and explained once
 * (a command whose entry says more keeps its own). */
#define CMD_OPTION_FORMAT(var) \
    { "format", 'f', POPT_ARG_STRING, &(var), 0, "image format (default: probe)", "FMT" }
#define CMD_OPTION_OUTPUT(var) \
    { "output", '\0', POPT_ARG_STRING, &(var), 0, "output format", "human|json" }
#define CMD_OPTION_FORCE_SHARE(var) \
    { "force-share", 'U', POPT_ARG_NONE, &(var), 0, \
      "open even if another process is writing the image", NULL }
#define CMD_OPTION_QUIET(var) \
    { "quiet", 'q', POPT_ARG_NONE, &(var), 0, "print nothing on success", NULL }
enum { CMD_OPT_O = 1 };
struct cmd_format_opts {
    struct kvopts opts;
    bool help;
    struct err e;
};
/* A cmd_parse on_option callback, opaque a struct cmd_format_opts. */
int cmd_on_format_option(struct cmdline *cl, int val, const char *arg, void *opaque);
/* qemu-img's -o help: the create options of `drv`, sorted; without a
 * target file name only those of the format, with qemu-img's note that
 * the protocol level has more. */
void cmd_print_create_options(const struct blockdrv *drv, const char *filename);

/* Render a property tree as JSON (4-space indentation like qemu-img). */
void json_print(FILE *out, const struct prop *p, int indent);
void json_print_string(FILE *out, const char *s);

/* The copy engine's counters as "bytes-read", "bytes-written",
 * "bytes-zeroed", "bytes-skipped" (the --output=json summaries). */
struct copy_stats;
void cmd_add_copy_stats(struct prop *o, const struct copy_stats *st);

/* Progress bar: drawn on stderr only when enabled and stderr is a
 * terminal, as wide as the terminal allows (at most PROGRESS_MAX_BAR). */
#define PROGRESS_MAX_BAR 40
struct progress {
    bool enabled;
    uint64_t total;
    int last_permille;
    int bar_width;
};
void progress_init(struct progress *p, bool requested, uint64_t total);
void progress_update(struct progress *p, uint64_t done);
void progress_finish(struct progress *p);

/* -l of convert and measure, as qemu-img's: "snapshot.id=ID,
 * snapshot.name=NAME" (either or both, in `kv`) or else an ID or name;
 * `arg` NULL: none.  cmd_parse_snapshot_arg returns -1 to go on or the
 * exit status of a usage error; cmd_load_snapshot makes `bs` read as the
 * snapshot (nothing without -l), its error prefixed as qemu-img's. */
struct cmd_snapshot_arg {
    char *arg;
    struct kvopts kv;
};
int cmd_parse_snapshot_arg(struct cmdline *cl, struct cmd_snapshot_arg *sa, struct err *e);
int cmd_load_snapshot(struct cmd_snapshot_arg *sa, struct blockdev *bs, struct err *e);

/* The snapshot table of an image (the "snapshots" array of blk_get_info)
 * as qemu-img prints it (info, snapshot -l). */
void cmd_print_snapshots(const struct prop *snaps);
/* `-o help`: the caption line, then the options as qemu-img lists them. */
void cmd_print_option_help(const char *caption, const struct blk_option_desc *desc);

/* Settings for every image a command opens, from the environment:
 * IMGTOOL_L2_CACHE_SIZE (qcow2 L2 cache bytes), IMGTOOL_FAULT_AFTER_WRITES
 * (crash-test hook), IMGTOOL_NBD_TIMEOUT (seconds).  cmd_env_init reads
 * them once, before the command runs; it prints an error and returns
 * false for a bad value. */
bool cmd_env_init(void);
const struct blk_open_opts *cmd_open_opts(void);
/* --connections=N of convert, mirror and export: up to N connections to
 * each NBD export, used as the server allows (multi-conn; the transport,
 * formats/nbd/client.c, decides).  cmd_parse_connections checks N (1 to
 * 16; more than one only when one of the `count` image names is an NBD
 * URI) and sets *out to the open settings with it; it returns -1 to go on
 * or the exit status of a usage error. */
#define CMD_OPTION_CONNECTIONS(var)                                                       \
    { "connections", '\0', POPT_ARG_INT, &(var), 0,                                       \
      "NBD connections per URI when the server allows several (default 1)", "N" }
int cmd_parse_connections(struct cmdline *cl, int n, const char *const *names, int count,
                          const struct blk_open_opts **out);

/* Open flags for common options. */
unsigned cmd_open_flags(bool writable, bool force_share, const char *cache, struct err *e,
                        int *ret);

#endif
