/* imgtool check: verify an image's metadata as qemu-img check does, and
 * repair it with -r leaks / -r all.  Exit 0 clean, 1 the check could not
 * be completed, 2 corruptions, 3 leaked clusters only, 63 the format has
 * no checks.  --backing-chain checks every image of the chain (a restore
 * checklist) and exits with the worst of their statuses. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cmd/commands.h"

enum {
    CHECK_CLEAN = 0,
    CHECK_FAILED = 1,
    CHECK_CORRUPT = 2,
    CHECK_LEAKS = 3,
    CHECK_UNSUPPORTED = 63,
};

static int check_status(const struct blk_check_result *r)
{
    if (r->check_errors)
        return CHECK_FAILED;
    if (r->corruptions)
        return CHECK_CORRUPT;
    if (r->leaks)
        return CHECK_LEAKS;
    return CHECK_CLEAN;
}

/* The problems found, one line each, on stderr as qemu-img prints them. */
static void print_messages(const struct blk_check_result *r)
{
    for (size_t i = 0; i < r->nmessages; i++)
        fprintf(stderr, "%s\n", r->messages[i]);
}

static void print_human(const char *filename, const struct blk_check_result *r, bool quiet)
{
    if (quiet)
        return;
    if (!r->corruptions && !r->leaks && !r->check_errors)
        printf("No errors were found on the image.\n");
    if (r->corruptions)
        printf("\n%" PRIu64 " errors were found on the image.\n"
               "Data may be corrupted, or further writes to the image may corrupt it.\n",
               r->corruptions);
    if (r->leaks)
        printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
               "This means waste of disk space, but no harm to data.\n", r->leaks);
    if (r->check_errors)
        printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
               r->check_errors);
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n", r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
    (void)filename;
}

/* qemu-img prints its result from a QDict, whose keys come out in the
 * order of their hash buckets (QEMU's tdb_hash modulo 512), not in the
 * schema's order; these keys fall in distinct buckets, so the order is
 * fixed: image-end-offset (bucket 30), compressed-clusters (67),
 * total-clusters (169), corruptions (181), corruptions-fixed (203),
 * check-errors (204), leaks (246), leaks-fixed (290), allocated-clusters
 * (304), filename (313), format (337), fragmented-clusters (484). */
static struct prop *json_result(const char *filename, const char *format,
                                const struct blk_check_result *r)
{
    struct prop *o = prop_new_object();
    if (!o)
        return NULL;
    if (r->image_end_offset)
        prop_add_uint(o, "image-end-offset", r->image_end_offset);
    if (r->compressed_clusters)
        prop_add_uint(o, "compressed-clusters", r->compressed_clusters);
    if (r->total_clusters)
        prop_add_uint(o, "total-clusters", r->total_clusters);
    if (r->corruptions)
        prop_add_uint(o, "corruptions", r->corruptions);
    if (r->corruptions_fixed)
        prop_add_uint(o, "corruptions-fixed", r->corruptions_fixed);
    prop_add_uint(o, "check-errors", r->check_errors);
    if (r->leaks)
        prop_add_uint(o, "leaks", r->leaks);
    if (r->leaks_fixed)
        prop_add_uint(o, "leaks-fixed", r->leaks_fixed);
    if (r->allocated_clusters)
        prop_add_uint(o, "allocated-clusters", r->allocated_clusters);
    prop_add_string(o, "filename", filename);
    prop_add_string(o, "format", format);
    if (r->fragmented_clusters)
        prop_add_uint(o, "fragmented-clusters", r->fragmented_clusters);
    return o;
}

/* For --backing-chain: the worse of two exit statuses (failed, corrupt,
 * leaks, no checks, clean, from worst to best). */
static int worse_status(int a, int b)
{
    static const int order[] = { CHECK_CLEAN, CHECK_UNSUPPORTED, CHECK_LEAKS, CHECK_CORRUPT,
                                 CHECK_FAILED };
    int ra = 0, rb = 0;
    for (int i = 0; i < 5; i++) {
        if (order[i] == a)
            ra = i;
        if (order[i] == b)
            rb = i;
    }
    return ra >= rb ? a : b;
}

struct check_opts {
    unsigned fix;
    enum output_mode mode;
    bool quiet;
    struct prop *json;      /* results are added here with --output=json */
};

/* Check (and with o->fix repair) one image, print the result (human) or
 * add it to o->json; returns the exit status for it. */
static int check_one(struct blockdev *bs, const struct check_opts *o)
{
    struct blk_check_result res = { 0 };
    struct err e = { 0 };
    int status = CHECK_FAILED;
    int ret = blk_check(bs, &res, o->fix, &e);
    print_messages(&res);
    if (ret == -ENOTSUP) {
        cmd_error("%s", e.msg);
        status = CHECK_UNSUPPORTED;
        goto out;
    }
    if (ret < 0)
        goto fail;
    if (o->fix && (res.leaks_fixed || res.corruptions_fixed)) {
        /* Report what was repaired, then check again so the result shown
         * (and the exit status) describes the image as it is now. */
        if (o->mode == OUTPUT_HUMAN && !o->quiet)
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   res.leaks_fixed, res.corruptions_fixed);
        uint64_t leaks_fixed = res.leaks_fixed, corruptions_fixed = res.corruptions_fixed;
        blk_check_result_free(&res);
        ret = blk_check(bs, &res, 0, &e);
        print_messages(&res);
        if (ret < 0)
            goto fail;
        res.leaks_fixed = leaks_fixed;
        res.corruptions_fixed = corruptions_fixed;
    }
    if (o->mode == OUTPUT_JSON) {
        struct prop *r = json_result(bs->filename, bs->drv->name, &res);
        if (r) {
            if (o->json->last)
                o->json->last->next = r;
            else
                o->json->first = r;
            o->json->last = r;
        }
    } else {
        print_human(bs->filename, &res, o->quiet);
    }
    status = check_status(&res);
    if (status == CHECK_FAILED)
        cmd_error("%s: Check failed", bs->filename);
    goto out;
fail:
    cmd_print_err(&e);
out:
    blk_check_result_free(&res);
    return status;
}

int cmd_check(const struct command *cmd, int argc, const char **argv)
{
    char *format = NULL, *output = NULL, *repair = NULL, *cache = NULL;
    int force_share = 0, quiet = 0, backing_chain = 0;
    struct poptOption options[] = {
        CMD_OPTION_FORMAT(format),
        CMD_OPTION_OUTPUT(output),
        { "backing-chain", '\0', POPT_ARG_NONE, &backing_chain, 0,
          "check every image of the backing chain; the exit status is the worst", NULL },
        { "repair", 'r', POPT_ARG_STRING, &repair, 0,
          "repair leaked clusters (leaks) or every inconsistency (all)", "leaks|all" },
        { "source-cache", 'T', POPT_ARG_STRING, &cache, 0, "cache mode (none = O_DIRECT)",
          "MODE" },
        { "force-share", 'U', POPT_ARG_NONE, &force_share, 0,
          "check even if another process is writing the image (results may be wrong)", NULL },
        { "quiet", 'q', POPT_ARG_NONE, &quiet, 0, "print only the problems", NULL },
        POPT_TABLEEND
    };
    struct cmdline cl = { 0 };
    struct check_opts o = { 0 };
    struct blockdev *bs = NULL;
    struct err e = { 0 };
    int status = cmd_parse(&cl, cmd, argc, argv, options, 1, 1, NULL, NULL);
    if (status >= 0 || (status = cmd_parse_output(&cl, output, &o.mode)) >= 0)
        goto out;
    o.quiet = quiet;
    if (repair) {
        if (!strcmp(repair, "leaks")) {
            o.fix = BLK_CHECK_FIX_LEAKS;
        } else if (!strcmp(repair, "all")) {
            o.fix = BLK_CHECK_FIX_LEAKS | BLK_CHECK_FIX_ERRORS;
        } else {
            status = cmd_usage_error(&cl, "-r must be 'leaks' or 'all', not '%s'", repair);
            goto out;
        }
        if (force_share) {
            status = cmd_usage_error(&cl, "-U cannot be used with -r: repairing an image "
                                     "another process writes would corrupt it");
            goto out;
        }
        if (backing_chain) {
            status = cmd_usage_error(&cl, "-r cannot be used with --backing-chain: repair "
                                     "the images one at a time");
            goto out;
        }
    }
    int ret;
    unsigned flags = (backing_chain ? 0 : BLK_OPEN_NO_BACKING) | BLK_OPEN_CHECK |
                     cmd_open_flags(o.fix, force_share, cache, &e, &ret);
    status = CHECK_FAILED;
    if (ret < 0 || blk_open(cl.args[0], format, flags, cmd_open_opts(), &bs, &e) < 0)
        goto fail;
    if (o.mode == OUTPUT_JSON && !(o.json = prop_new_array())) {
        err_set(&e, ENOMEM, "out of memory");
        goto fail;
    }
    status = CHECK_CLEAN;
    for (struct blockdev *layer = bs; layer; layer = backing_chain ? layer->backing : NULL) {
        if (backing_chain && o.mode == OUTPUT_HUMAN && !quiet)
            printf("%simage: %s\n", layer == bs ? "" : "\n", layer->filename);
        status = worse_status(status, check_one(layer, &o));
    }
    /* qemu-img check -q prints no JSON either. */
    if (o.json && !quiet && (backing_chain || o.json->first)) {
        json_print(stdout, backing_chain ? o.json : o.json->first, 0);
        printf("\n");
    }
    goto out;
fail:
    cmd_print_err(&e);
out:
    prop_free(o.json);
    blk_close(bs);
    cmd_done(&cl);
    return status;
}
