/* The -o options of qcow2 create and amend, described for `-o help` with
 * QEMU's names, types and help texts (qcow2_create_opts, qcow2_amend_opts),
 * limited to what this driver implements. */
#include "formats/qcow2/qcow2.h"

/* The defaults are what qemu-img create prints when an option is not
 * given (amend prints nothing). */
#define OPT_BACKING_FILE { "backing_file", "str", "File name of a base image", NULL, false }
#define OPT_BACKING_FMT { "backing_fmt", "str", "Image format of the base image", NULL, false }
#define OPT_COMPAT \
    { "compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL, false }
#define OPT_LAZY_REFCOUNTS \
    { "lazy_refcounts", "bool (on/off)", "Postpone refcount updates", "off", false }
#define OPT_REFCOUNT_BITS \
    { "refcount_bits", "num", "Width of a reference count entry in bits", "16", false }
#define OPT_SIZE { "size", "size", "Virtual disk size", NULL, false }

/* In the order of QEMU 7.2's list (qemu-img create's "Formatting" line). */
const struct blk_option_desc qcow2_create_options[] = {
    { "cluster_size", "size", "qcow2 cluster size", "65536", false },
    { "extended_l2", "bool (on/off)", "Extended L2 tables", "off", false },
    { "preallocation", "str", "Preallocation mode (allowed values: off, metadata, falloc, "
      "full)", NULL, false },
    { "compression_type", "str", "Compression method used for image cluster compression",
      "zlib", false },
    OPT_SIZE,
    OPT_COMPAT,
    OPT_BACKING_FILE,
    OPT_BACKING_FMT,
    OPT_LAZY_REFCOUNTS,
    OPT_REFCOUNT_BITS,
    { NULL, NULL, NULL, NULL, false },
};

const struct blk_option_desc qcow2_amend_options[] = {
    OPT_BACKING_FILE,
    OPT_BACKING_FMT,
    OPT_COMPAT,
    OPT_LAZY_REFCOUNTS,
    OPT_REFCOUNT_BITS,
    OPT_SIZE,
    { NULL, NULL, NULL, NULL, false },
};
