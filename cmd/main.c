/* imgtool: the command table and dispatch. */
#include <stdio.h>
#include <string.h>

#include "cmd/commands.h"

/* The one command table: name, function, summary (the man page's NAME
 * line), arguments.  Adding a subcommand = one file in cmd/ + one line. */
const struct command commands[] = {
    { "create",  cmd_create,  "create a new disk image", "[OPTIONS] FILENAME [SIZE]" },
    { "info",    cmd_info,    "show information about a disk image", "[OPTIONS] FILENAME" },
    { "check",   cmd_check,   "check an image's metadata for errors and repair them", "[OPTIONS] FILENAME" },
    { "map",     cmd_map,     "show how the data of an image is laid out", "[OPTIONS] FILENAME" },
    { "compare", cmd_compare, "compare the contents of two images", "[OPTIONS] FILENAME1 FILENAME2" },
    { "convert", cmd_convert, "copy an image, converting its format", "[OPTIONS] SOURCE... TARGET" },
    { "export",  cmd_export,  "write a full, incremental or differential backup of a disk", "[OPTIONS] DISK BACKUP" },
    { "mirror",  cmd_mirror,  "copy an image, the top of its chain or its changes to a target", "[OPTIONS] SOURCE TARGET | SOURCE=TARGET..." },
    { "commit",  cmd_commit,  "write an image's data down into its backing file", "[OPTIONS] FILENAME" },
    { "rebase",  cmd_rebase,  "change the backing file of an image", "[OPTIONS] -b BACKING FILENAME" },
    { "resize",  cmd_resize,  "change the virtual size of an image", "[OPTIONS] FILENAME [+|-]SIZE" },
    { "measure", cmd_measure, "compute the size a new image needs", "[OPTIONS] [--size SIZE | FILENAME]" },
    { "amend",   cmd_amend,   "change the format options of an image", "[OPTIONS] -o OPT=VAL,... FILENAME" },
    { "snapshot", cmd_snapshot, "list, create, apply and delete internal snapshots", "[OPTIONS] (-l | -c NAME | -a SNAPSHOT | -d NAME) FILENAME" },
    { "dd",      cmd_dd,      "copy part of an image, block by block, into a new image", "[OPTIONS] [bs=SIZE] [count=N] [skip=N] if=INPUT of=OUTPUT" },
    { "io",      cmd_io,      "read, write, zero and discard ranges of an image", "[OPTIONS] -c COMMAND... FILENAME" },
    { "bitmap",  cmd_bitmap,  "add, remove, merge, list and dump persistent dirty bitmaps", "(--add | --remove | --clear | --enable | --disable | --merge SOURCE)... [OPTIONS] FILENAME BITMAP, or --list FILENAME, or --dump FILENAME BITMAP" },
    { "serve",   cmd_serve,   "export disk images over NBD", "[OPTIONS] IMAGE..." },
    { "job",     cmd_job,     "complete, cancel, tune or query the mirror job of a running serve", "(complete | cancel | set-speed SPEED | change | query) --control=PATH [OPTIONS] [JOB-ID]" },
    { NULL, NULL, NULL, NULL },
};

const struct command *command_find(const char *name)
{
    for (const struct command *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void print_usage(FILE *out)
{
    fprintf(out, "usage: imgtool <command> [options] [arguments]\n"
                 "       imgtool help [<command>]\n"
                 "       imgtool --version\n\n"
                 "Commands:\n");
    for (const struct command *c = commands; c->name; c++)
        fprintf(out, "  %-10s %s\n", c->name, c->summary);
    fprintf(out, "\n'imgtool help <command>' or 'imgtool <command> --help' shows the options "
                 "of a command;\nsee imgtool(1) and imgtool-<command>(1).\n");
}

static int run_help(int argc, const char **argv)
{
    if (argc < 2) {
        print_usage(stdout);
        return EXIT_OK;
    }
    const struct command *c = command_find(argv[1]);
    if (!c) {
        cmd_error("unknown command '%s'; 'imgtool help' lists the commands", argv[1]);
        return EXIT_ERROR;
    }
    const char *help_argv[] = { c->name, "--help", NULL };
    return c->run(c, 2, help_argv);
}

static int run(int argc, const char **args)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_ERROR;
    }
    const char *name = args[1];
    if (!strcmp(name, "--version") || !strcmp(name, "-V")) {
        printf("imgtool version %s\n", IMGTOOL_VERSION);
        return EXIT_OK;
    }
    if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h"))
        return run_help(argc - 1, args + 1);
    const struct command *c = command_find(name);
    if (c && !cmd_env_init())
        return EXIT_ERROR;
    if (!c) {
        cmd_error("unknown command '%s'", name);
        fprintf(stderr, "Try 'imgtool help' for the list of commands.\n");
        return EXIT_ERROR;
    }
    return c->run(c, argc - 1, args + 1);
}

int main(int argc, char **argv)
{
    return cmd_finish(run(argc, (const char **)argv));
}
