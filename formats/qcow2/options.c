/* The -o options of qcow2 create and amend, described for `-o help` with
 * QEMU's names, types and help texts (qcow2_create_opts, qcow2_amend_opts),
 * limited to what this driver implements. */
#include "formats/qcow2/qcow2.h"

#define OPT_BACKING_FILE { "backing_file", "str", "File name of a base image" }
#define OPT_BACKING_FMT { "backing_fmt", "str", "Image format of the base image" }
#define OPT_COMPAT { "compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])" }
#define OPT_LAZY_REFCOUNTS { "lazy_refcounts", "bool (on/off)", "Postpone refcount updates" }
#define OPT_REFCOUNT_BITS { "refcount_bits", "num", "Width of a reference count entry in bits" }
#define OPT_SIZE { "size", "size", "Virtual disk size" }

const struct blk_option_desc qcow2_create_options[] = {
    OPT_BACKING_FILE,
    OPT_BACKING_FMT,
    { "cluster_size", "size", "qcow2 cluster size" },
    OPT_COMPAT,
    { "compression_type", "str", "Compression method used for image cluster compression" },
    { "extended_l2", "bool (on/off)", "Extended L2 tables" },
    OPT_LAZY_REFCOUNTS,
    { "preallocation", "str", "Preallocation mode (allowed values: off, metadata, falloc, "
      "full)" },
    OPT_REFCOUNT_BITS,
    OPT_SIZE,
    { NULL, NULL, NULL },
};

const struct blk_option_desc qcow2_amend_options[] = {
    OPT_BACKING_FILE,
    OPT_BACKING_FMT,
    OPT_COMPAT,
    OPT_LAZY_REFCOUNTS,
    OPT_REFCOUNT_BITS,
    OPT_SIZE,
    { NULL, NULL, NULL },
};
