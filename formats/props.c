#include "props.h"

#include <stdlib.h>
#include <string.h>

static struct prop *prop_alloc(enum prop_type type)
{
    struct prop *p = calloc(1, sizeof(*p));
    if (p)
        p->type = type;
    return p;
}

struct prop *prop_new_object(void) { return prop_alloc(PROP_OBJECT); }
struct prop *prop_new_array(void) { return prop_alloc(PROP_ARRAY); }

static struct prop *prop_add(struct prop *parent, const char *key, enum prop_type type)
{
    if (!parent)
        return NULL;
    struct prop *p = prop_alloc(type);
    if (p && key && !(p->key = strdup(key))) {
        free(p);
        p = NULL;
    }
    if (!p) {
        parent->oom = true;
        return NULL;
    }
    if (parent->last)
        parent->last->next = p;
    else
        parent->first = p;
    parent->last = p;
    return p;
}

struct prop *prop_add_object(struct prop *parent, const char *key)
{
    return prop_add(parent, key, PROP_OBJECT);
}

struct prop *prop_add_array(struct prop *parent, const char *key)
{
    return prop_add(parent, key, PROP_ARRAY);
}

struct prop *prop_add_string(struct prop *parent, const char *key, const char *value)
{
    struct prop *p = prop_add(parent, key, PROP_STRING);
    if (p && !(p->v.s = strdup(value ? value : "")))
        parent->oom = true;
    return p;
}

struct prop *prop_add_int(struct prop *parent, const char *key, int64_t value)
{
    struct prop *p = prop_add(parent, key, PROP_INT);
    if (p)
        p->v.i = value;
    return p;
}

struct prop *prop_add_uint(struct prop *parent, const char *key, uint64_t value)
{
    struct prop *p = prop_add(parent, key, PROP_UINT);
    if (p)
        p->v.u = value;
    return p;
}

struct prop *prop_add_bool(struct prop *parent, const char *key, bool value)
{
    struct prop *p = prop_add(parent, key, PROP_BOOL);
    if (p)
        p->v.b = value;
    return p;
}

struct prop *prop_add_null(struct prop *parent, const char *key)
{
    return prop_add(parent, key, PROP_NULL);
}

struct prop *prop_add_double(struct prop *parent, const char *key, double value)
{
    struct prop *p = prop_add(parent, key, PROP_DOUBLE);
    if (p)
        p->v.d = value;
    return p;
}

struct prop *prop_add_copy(struct prop *parent, const char *key, const struct prop *src)
{
    if (src->type == PROP_STRING)
        return prop_add_string(parent, key, src->v.s);
    struct prop *p = prop_add(parent, key, src->type);
    if (!p)
        return NULL;
    p->v = src->v;
    for (const struct prop *c = src->first; c; c = c->next)
        if (!prop_add_copy(p, c->key, c))
            break;
    return p;
}

struct prop *prop_get(const struct prop *obj, const char *key)
{
    for (struct prop *c = obj ? obj->first : NULL; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

void prop_reorder(struct prop *obj, const char *const *order)
{
    struct prop *sorted = NULL, *tail = NULL;
    for (const char *const *k = order; *k; k++) {
        /* Unlink the child named *k, if any, and append it to `sorted`. */
        for (struct prop **link = &obj->first; *link; link = &(*link)->next) {
            struct prop *c = *link;
            if (c->key && strcmp(c->key, *k) == 0) {
                *link = c->next;
                c->next = NULL;
                if (tail)
                    tail->next = c;
                else
                    sorted = c;
                tail = c;
                break;
            }
        }
    }
    if (!sorted)
        return;
    tail->next = obj->first;    /* the rest, in their old order */
    obj->first = sorted;
    struct prop *last = sorted;
    while (last->next)
        last = last->next;
    obj->last = last;
}

bool prop_failed(const struct prop *p)
{
    if (!p)
        return true;
    if (p->oom)
        return true;
    for (struct prop *c = p->first; c; c = c->next)
        if (prop_failed(c))
            return true;
    return false;
}

void prop_free(struct prop *p)
{
    while (p) {
        struct prop *next = p->next;
        prop_free(p->first);
        if (p->type == PROP_STRING)
            free(p->v.s);
        free(p->key);
        free(p);
        p = next;
    }
}
