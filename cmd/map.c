/* imgtool map: the layout of an image's data, resolved through its
 * backing chain, in qemu-img map's human and JSON formats. */
#include <inttypes.h>
#include <string.h>

#include "cmd/commands.h"

struct map_entry {
    uint64_t start, length;
    int depth;
    bool present, zero, data, has_offset;
    uint64_t offset;
    const struct blockdev *layer;
};

static bool can_merge(const struct map_entry *a, const struct map_entry *b)
{
    return a->depth == b->depth && a->present == b->present && a->zero == b->zero &&
           a->data == b->data && a->has_offset == b->has_offset && a->layer == b->layer &&
           (!a->has_offset || a->offset + a->length == b->offset);
}

/* Returns -1 when the human format cannot say where the data is. */
static int print_entry(const struct map_entry *m, enum output_mode mode, bool first)
{
    if (mode == OUTPUT_JSON) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               first ? "[" : ",\n", m->start, m->length, m->depth,
               m->present ? "true" : "false", m->zero ? "true" : "false",
               m->data ? "true" : "false");
        if (m->has_offset)
            printf(", \"offset\": %" PRIu64, m->offset);
        printf("}");
        return 0;
    }
    /* Humans see only the ranges that hold data, and where; data without
     * a host offset (compressed clusters) has no answer, and qemu-img
     * fails there with this message. */
    if (m->data && !m->has_offset) {
        fflush(stdout);
        cmd_error("File contains external, encrypted or compressed clusters.");
        return -1;
    }
    if (m->data && !m->zero)
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", m->start, m->length,
               m->offset, m->layer->file->name);
    return 0;
}

int cmd_map(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *output = NULL, *start_s = NULL, *max_s = NULL;
    int force_share = 0;
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        CMD_OPTION_OUTPUT(output),
        { "start-offset", 's', POPT_ARG_STRING, &start_s, 0, "first byte to map", "OFFSET" },
        { "max-length", 'l', POPT_ARG_STRING, &max_s, 0, "bytes to map at most", "LENGTH" },
        CMD_OPTION_FORCE_SHARE(force_share),
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    enum output_mode mode;
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    uint64_t start = 0, max_len = UINT64_MAX;
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, NULL, NULL);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &mode)) >= 0)
        goto out;
    if (start_s && (status = cmd_parse_size_arg(&cl, "start offset", start_s, &start)) >= 0)
        goto out;
    if (max_s && (status = cmd_parse_size_arg(&cl, "max length", max_s, &max_len)) >= 0)
        goto out;
    status = EXIT_ERROR;
    if (blk_open(cl.args[0], format, force_share ? BLK_OPEN_FORCE_SHARE : 0, cmd_open_opts(), &bs, &e) < 0)
        goto fail;
    uint64_t end = start < bs->size ? start + min_u64(max_len, bs->size - start) : start;
    if (mode == OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    struct map_entry cur = { 0 };
    bool have = false, first = true;
    for (uint64_t off = start; off < end;) {
        struct blk_extent ext;
        if (blk_block_status_host(bs, off, end - off, &ext, &e) < 0)
            goto fail;
        struct map_entry m = {
            .start = off, .length = ext.length, .depth = ext.depth,
            .present = ext.flags & BLK_STATUS_ALLOCATED,
            .zero = ext.flags & BLK_STATUS_ZERO, .data = ext.flags & BLK_STATUS_DATA,
            .has_offset = ext.flags & BLK_STATUS_OFFSET, .offset = ext.host_offset,
            .layer = ext.layer,
        };
        if (have && can_merge(&cur, &m)) {
            cur.length += m.length;
        } else {
            if (have) {
                if (print_entry(&cur, mode, first) < 0)
                    goto out_error;
                first = false;
            }
            cur = m;
            have = true;
        }
        off += ext.length;
    }
    if (have && print_entry(&cur, mode, first) < 0)
        goto out_error;
    if (mode == OUTPUT_JSON)
        printf(have ? "]\n" : "[]\n");
    status = EXIT_OK;
    goto out;
out_error:
    status = EXIT_ERROR;
    goto out;
fail:
    fflush(stdout);
    cmd_print_err(&e);
out:
    blk_close(bs);
    cmd_done(&cl);
    return status;
}
