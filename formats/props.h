/* A small tree of named values (objects, arrays, strings, numbers,
 * booleans) that libraries fill for `info`, `map` and `check`, and that
 * cmd/ renders as human text or JSON.  Keeps printing out of the libraries. */
#ifndef IMGTOOL_PROPS_H
#define IMGTOOL_PROPS_H

#include <stdbool.h>
#include <stdint.h>

enum prop_type {
    PROP_OBJECT, PROP_ARRAY, PROP_STRING, PROP_INT, PROP_UINT, PROP_BOOL,
    PROP_NULL, PROP_DOUBLE,     /* only from parsed JSON (json.h) */
};

struct prop {
    enum prop_type type;
    char *key;                  /* NULL for array elements and the root */
    union {
        char *s;
        int64_t i;
        uint64_t u;
        bool b;
        double d;
    } v;
    struct prop *first, *last;  /* children of objects and arrays */
    struct prop *next;
    bool oom;                   /* an allocation below this node failed */
};

struct prop *prop_new_object(void);
struct prop *prop_new_array(void);
/* Add a child to an object (key given) or an array (key NULL).  On
 * allocation failure they return NULL and mark the parent (prop_failed). */
struct prop *prop_add_object(struct prop *parent, const char *key);
struct prop *prop_add_array(struct prop *parent, const char *key);
struct prop *prop_add_string(struct prop *parent, const char *key, const char *value);
struct prop *prop_add_int(struct prop *parent, const char *key, int64_t value);
struct prop *prop_add_uint(struct prop *parent, const char *key, uint64_t value);
struct prop *prop_add_bool(struct prop *parent, const char *key, bool value);
struct prop *prop_add_null(struct prop *parent, const char *key);
struct prop *prop_add_double(struct prop *parent, const char *key, double value);
/* A deep copy of `src` (its key replaced by `key`) as a new child. */
struct prop *prop_add_copy(struct prop *parent, const char *key, const struct prop *src);
struct prop *prop_get(const struct prop *obj, const char *key);
/* Reorder an object's children: the keys of `order` (NULL-terminated)
 * first, in that order, then the others as they were. */
void prop_reorder(struct prop *obj, const char *const *order);
/* True if any allocation in the tree failed. */
bool prop_failed(const struct prop *p);
void prop_free(struct prop *p);

#endif
