/* "-o key=value,key2=value2" option lists, as qemu-img parses them (a
 * comma inside a value is written ",,").  Drivers look up the keys they
 * know; kvopts_check_unused() then reports any key nobody used. */
#ifndef IMGTOOL_OPTIONS_H
#define IMGTOOL_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct kvopt {
    char *key;
    char *value;
    bool used;
};

struct kvopts {
    struct kvopt *items;
    size_t count;
};

/* One option a driver accepts in -o, described for `-o help` as QEMU's
 * QemuOptDesc (type: "str", "size", "num", "bool (on/off)").  A create
 * table is in QEMU's order (the format's options, then its file
 * protocol's): create prints its "Formatting ..." line in that order,
 * with each option given or having a default; -o help sorts by name. */
struct blk_option_desc {
    const char *name;
    const char *type;
    const char *help;
    const char *default_value;  /* printed by create when not given, or NULL */
    /* An option of the host file below the format (QEMU's protocol
     * layer): qemu-img's -o help lists it only when given a file name. */
    bool protocol;
};
/* Mark every key of `desc` (NULL-terminated by name) that `o` holds as
 * used, then fail naming the first key of `o` not in `desc`: "Invalid
 * parameter 'KEY'" as QEMU says it. */
int kvopts_check_known(struct kvopts *o, const struct blk_option_desc *desc, struct err *e);

/* Append the options in `text` (may be called several times, for several
 * -o arguments; later values win). */
int kvopts_parse(struct kvopts *o, const char *text, struct err *e);
void kvopts_free(struct kvopts *o);
/* Set or replace a key (used for -b/-F style shortcuts). */
int kvopts_set(struct kvopts *o, const char *key, const char *value, struct err *e);
/* The value of `key` (marking it used), or NULL. */
const char *kvopts_get(struct kvopts *o, const char *key);
int kvopts_get_bool(struct kvopts *o, const char *key, bool def, bool *out, struct err *e);
int kvopts_get_size(struct kvopts *o, const char *key, uint64_t def, uint64_t *out,
                    struct err *e);
/* -EINVAL naming the first key that no driver used. */
int kvopts_check_unused(const struct kvopts *o, const char *format, struct err *e);

#endif
