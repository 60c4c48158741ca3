#include "options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Copy one ",,"-escaped token from *p up to an unescaped ',' or `stop`. */
static char *take_token(const char **p, char stop)
{
    const char *s = *p;
    size_t cap = strlen(s) + 1, n = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    while (*s) {
        if (*s == ',') {
            if (s[1] == ',') {
                out[n++] = ',';
                s += 2;
                continue;
            }
            break;
        }
        if (*s == stop)
            break;
        out[n++] = *s++;
    }
    out[n] = '\0';
    *p = s;
    return out;
}

int kvopts_set(struct kvopts *o, const char *key, const char *value, struct err *e)
{
    for (size_t i = 0; i < o->count; i++) {
        if (strcmp(o->items[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v)
                return err_set(e, ENOMEM, "out of memory");
            free(o->items[i].value);
            o->items[i].value = v;
            return 0;
        }
    }
    struct kvopt *items = realloc(o->items, (o->count + 1) * sizeof(*items));
    if (!items)
        return err_set(e, ENOMEM, "out of memory");
    o->items = items;
    struct kvopt *it = &items[o->count];
    it->key = strdup(key);
    it->value = strdup(value);
    it->used = false;
    if (!it->key || !it->value) {
        free(it->key);
        free(it->value);
        return err_set(e, ENOMEM, "out of memory");
    }
    o->count++;
    return 0;
}

int kvopts_parse(struct kvopts *o, const char *text, struct err *e)
{
    const char *p = text;
    while (*p) {
        char *key = take_token(&p, '=');
        if (!key)
            return err_set(e, ENOMEM, "out of memory");
        if (*p != '=' || !*key) {
            int ret = err_set(e, EINVAL, "invalid option '%s': expected key=value", key);
            free(key);
            return ret;
        }
        p++;
        char *value = take_token(&p, '\0');
        if (!value) {
            free(key);
            return err_set(e, ENOMEM, "out of memory");
        }
        int ret = kvopts_set(o, key, value, e);
        free(key);
        free(value);
        if (ret < 0)
            return ret;
        if (*p == ',')
            p++;
    }
    return 0;
}

void kvopts_free(struct kvopts *o)
{
    for (size_t i = 0; i < o->count; i++) {
        free(o->items[i].key);
        free(o->items[i].value);
    }
    free(o->items);
    o->items = NULL;
    o->count = 0;
}

const char *kvopts_get(struct kvopts *o, const char *key)
{
    if (!o)
        return NULL;
    for (size_t i = 0; i < o->count; i++) {
        if (strcmp(o->items[i].key, key) == 0) {
            o->items[i].used = true;
            return o->items[i].value;
        }
    }
    return NULL;
}

int kvopts_get_bool(struct kvopts *o, const char *key, bool def, bool *out, struct err *e)
{
    const char *v = kvopts_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
        *out = true;
        return 0;
    }
    if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
        *out = false;
        return 0;
    }
    return err_set(e, EINVAL, "option '%s': '%s' is not on or off", key, v);
}

int kvopts_get_size(struct kvopts *o, const char *key, uint64_t def, uint64_t *out,
                    struct err *e)
{
    const char *v = kvopts_get(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (parse_size(v, out) < 0)
        return err_set(e, EINVAL, "option '%s': '%s' is not a valid size", key, v);
    return 0;
}

int kvopts_check_unused(const struct kvopts *o, const char *format, struct err *e)
{
    for (size_t i = 0; o && i < o->count; i++)
        if (!o->items[i].used)
            return err_set(e, EINVAL, "format '%s' does not support option '%s'", format,
                           o->items[i].key);
    return 0;
}

int kvopts_check_known(struct kvopts *o, const struct blk_option_desc *desc, struct err *e)
{
    for (const struct blk_option_desc *d = desc; d && d->name; d++)
        kvopts_get(o, d->name);
    for (size_t i = 0; o && i < o->count; i++)
        if (!o->items[i].used)
            return err_set(e, EINVAL, "Invalid parameter '%s'", o->items[i].key);
    return 0;
}
