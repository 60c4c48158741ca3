/* imgtool resize: grow or (with --shrink) shrink the virtual disk. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cmd/commands.h"

int cmd_resize(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *prealloc_s = NULL;
    int shrink = 0, quiet = 0;
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        { "preallocation", '\0', POPT_ARG_STRING, &prealloc_s, 0,
          "preallocate the grown part (qcow2: metadata too)", "off|metadata|falloc|full" },
        { "shrink", '\0', POPT_ARG_NONE, &shrink, 0,
          "allow making the image smaller (data past the new end is lost)", NULL },
        CMD_OPTION_QUIET(quiet),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    /* As qemu-img, the size is the last argument, taken before the options
     * are parsed so that "-512M" is not read as options. */
    const char *size_arg = NULL;
    if (argc >= 3 && argv[argc - 1][0] == '-' && isdigit((unsigned char)argv[argc - 1][1]))
        size_arg = argv[--argc];
    int status = cmd_parse(&cl, cmd, argc, argv, options, size_arg ? 1 : 2, size_arg ? 1 : 2,
                           NULL, NULL);
    if (status >= 0)
        goto out;
    if (!size_arg)
        size_arg = cl.args[1];
    int sign = 0;
    if (size_arg[0] == '+' || size_arg[0] == '-')
        sign = *size_arg++ == '+' ? 1 : -1;
    uint64_t amount;
    if ((status = cmd_parse_size_arg(&cl, "size", size_arg, &amount)) >= 0)
        goto out;
    enum blk_prealloc prealloc = BLK_PREALLOC_OFF;
    if (prealloc_s && blk_parse_prealloc(prealloc_s, &prealloc) < 0) {
        status = cmd_usage_error(&cl, "Invalid preallocation mode '%s'", prealloc_s);
        goto out;
    }
    status = EXIT_ERROR;
    /* With its backing chain, as qemu-img resize: growing an overlay over a
     * larger backing file zeroes the new area (formats/qcow2). */
    if (blk_open(cl.args[0], format, BLK_OPEN_RDWR, cmd_open_opts(), &bs, &e) < 0)
        goto fail;
    uint64_t new_size = amount;
    if (sign > 0) {
        if (amount > UINT64_MAX - bs->size) {
            err_set(&e, EFBIG, "%s: new size is too large", bs->filename);
            goto fail;
        }
        new_size = bs->size + amount;
    } else if (sign < 0) {
        if (amount > bs->size) {
            err_set(&e, EINVAL, "%s: cannot shrink by %" PRIu64 " bytes, the image has only %"
                    PRIu64, bs->filename, amount, bs->size);
            goto fail;
        }
        new_size = bs->size - amount;
    }
    if (new_size < bs->size && !shrink) {
        err_set(&e, EINVAL, "%s: shrinking from %" PRIu64 " to %" PRIu64 " bytes loses the data "
                "past the new end; use --shrink if that is what you want", bs->filename,
                bs->size, new_size);
        goto fail;
    }
    if (new_size < bs->size && prealloc != BLK_PREALLOC_OFF) {
        err_set(&e, EINVAL, "%s: Preallocation can only be used for growing images",
                bs->filename);
        goto fail;
    }
    uint64_t old_size = bs->size;
    /* A mode the format has not is refused before the size changes. */
    if (blk_preallocate(bs, old_size, 0, prealloc, &e) < 0 ||
        blk_truncate(bs, new_size, &e) < 0 ||
        (new_size > old_size &&
         blk_preallocate(bs, old_size, new_size - old_size, prealloc, &e) < 0) ||
        blk_flush(bs, &e) < 0)
        goto fail;
    if (!quiet)
        printf("Image resized.\n");
    status = EXIT_OK;
    goto out;
fail:
    cmd_print_err(&e);
out:
    blk_close(bs);
    cmd_done(&cl);
    return status;
}
