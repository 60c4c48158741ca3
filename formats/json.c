/* The strict JSON reader and the one-line writer (json.h). */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- Reader: recursive descent, depth and node count bounded --- */

struct parser {
    const char *s;
    size_t len, pos;
    size_t depth, nodes;
    const char *what;
    struct err *e;
};

static int fail(struct parser *p, const char *why)
{
    return err_set(p->e, EINVAL, "%s: invalid JSON at byte %zu: %s", p->what, p->pos, why);
}

static void skip_space(struct parser *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int peek(const struct parser *p)
{
    return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1;
}

static int count_node(struct parser *p)
{
    if (++p->nodes > JSON_MAX_NODES)
        return err_set(p->e, E2BIG, "%s: JSON document has more than %d values", p->what,
                       JSON_MAX_NODES);
    return 0;
}

static int parse_value(struct parser *p, struct prop *parent, const char *key);

/* --- Strings --- */

struct strbuf {
    char *data;
    size_t len, cap;
};

static int strbuf_put(struct strbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 32;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static size_t utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The length of the valid UTF-8 sequence at s[0..n), or 0 (overlong
 * forms, surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_valid(const unsigned char *s, size_t n)
{
    size_t need;
    uint32_t cp, min;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) { need = 2; cp = s[0] & 0x1f; min = 0x80; }
    else if ((s[0] & 0xf0) == 0xe0) { need = 3; cp = s[0] & 0x0f; min = 0x800; }
    else if ((s[0] & 0xf8) == 0xf0) { need = 4; cp = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if (n < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return need;
}

static int parse_hex4(struct parser *p, uint32_t *out)
{
    if (p->len - p->pos < 4)
        return fail(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p->s[p->pos + (size_t)i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
                c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return fail(p, "bad \\u escape");
        v = v << 4 | (uint32_t)d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

/* \uXXXX, with a surrogate pair joined; the 'u' is consumed. */
static int parse_unicode_escape(struct parser *p, struct strbuf *b)
{
    uint32_t cp, lo;
    int ret = parse_hex4(p, &cp);
    if (ret < 0)
        return ret;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return fail(p, "lone low surrogate in \\u escape");
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return fail(p, "high surrogate without a low one");
        p->pos += 2;
        if ((ret = parse_hex4(p, &lo)) < 0)
            return ret;
        if (lo < 0xdc00 || lo > 0xdfff)
            return fail(p, "high surrogate without a low one");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (cp == 0)
        return fail(p, "\\u0000 is not supported");
    char u[4];
    return strbuf_put(b, u, utf8_encode(cp, u));
}

static int parse_escape(struct parser *p, struct strbuf *b)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (p->pos >= p->len)
        return fail(p, "unterminated string");
    char c = p->s[p->pos++];
    if (c == 'u')
        return parse_unicode_escape(p, b);
    const char *k = memchr(from, c, sizeof(from) - 1);
    if (!k) {
        p->pos--;
        return fail(p, "bad escape in string");
    }
    return strbuf_put(b, &to[k - from], 1);
}

/* A string starting at the opening quote; *out is malloc'ed. */
static int parse_string_raw(struct parser *p, char **out)
{
    struct strbuf b = { 0 };
    int ret = strbuf_put(&b, "", 0);
    p->pos++;
    while (ret == 0) {
        if (p->pos >= p->len) {
            ret = fail(p, "unterminated string");
            break;
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            *out = b.data;
            return 0;
        }
        if (c == '\\') {
            p->pos++;
            ret = parse_escape(p, &b);
            continue;
        }
        if (c < 0x20) {
            ret = fail(p, "control character in string");
            break;
        }
        size_t n = utf8_valid((const unsigned char *)p->s + p->pos, p->len - p->pos);
        if (!n) {
            ret = fail(p, "invalid UTF-8 in string");
            break;
        }
        ret = strbuf_put(&b, p->s + p->pos, n);
        p->pos += n;
    }
    if (ret == -ENOMEM)
        ret = err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
    free(b.data);
    return ret;
}

/* --- Numbers --- */

static size_t digits(const struct parser *p, size_t at)
{
    size_t n = 0;
    while (at + n < p->len && p->s[at + n] >= '0' && p->s[at + n] <= '9')
        n++;
    return n;
}

/* The extent of a number as RFC 8259's grammar has it; sets *integral. */
static int scan_number(struct parser *p, size_t *end, bool *integral)
{
    size_t i = p->pos;
    if (i < p->len && p->s[i] == '-')
        i++;
    size_t n = digits(p, i);
    if (n == 0)
        return fail(p, "invalid number");
    if (n > 1 && p->s[i] == '0')
        return fail(p, "leading zero in number");
    i += n;
    *integral = true;
    if (i < p->len && p->s[i] == '.') {
        if ((n = digits(p, i + 1)) == 0)
            return fail(p, "invalid number");
        i += 1 + n;
        *integral = false;
    }
    if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
        size_t j = i + 1;
        if (j < p->len && (p->s[j] == '+' || p->s[j] == '-'))
            j++;
        if ((n = digits(p, j)) == 0)
            return fail(p, "invalid number");
        i = j + n;
        *integral = false;
    }
    *end = i;
    return 0;
}

static int parse_number(struct parser *p, struct prop *parent, const char *key)
{
    size_t end = p->pos;
    bool integral = false;
    int ret = scan_number(p, &end, &integral);
    if (ret < 0)
        return ret;
    char text[64];
    if (end - p->pos >= sizeof(text))
        integral = false;       /* too long for 64 bits: a double, as QEMU's parser */
    size_t n = end - p->pos < sizeof(text) ? end - p->pos : sizeof(text) - 1;
    memcpy(text, p->s + p->pos, n);
    text[n] = '\0';
    struct prop *v = NULL;
    errno = 0;
    if (integral && text[0] == '-') {
        long long i = strtoll(text, NULL, 10);
        if (errno == 0)
            v = prop_add_int(parent, key, i);
    } else if (integral) {
        unsigned long long u = strtoull(text, NULL, 10);
        if (errno == 0)
            v = prop_add_uint(parent, key, u);
    }
    if (!v && (!integral || errno == ERANGE)) {
        /* strtod of the whole number text (it may be longer than `text`). */
        char *big = strndup(p->s + p->pos, end - p->pos);
        double d = big ? strtod(big, NULL) : 0;
        free(big);
        if (!big)
            return err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
        if (!isfinite(d))
            return fail(p, "number out of range");
        v = prop_add_double(parent, key, d);
    }
    p->pos = end;
    return v ? 0 : err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
}

/* --- Containers --- */

static int enter(struct parser *p)
{
    if (++p->depth > JSON_MAX_DEPTH)
        return err_set(p->e, E2BIG, "%s: JSON nested deeper than %d levels", p->what,
                       JSON_MAX_DEPTH);
    p->pos++;
    skip_space(p);
    return 0;
}

/* After an element: ',' (more follow) or the closing bracket. */
static int next_element(struct parser *p, char close, bool *more)
{
    skip_space(p);
    int c = peek(p);
    if (c == ',') {
        p->pos++;
        skip_space(p);
        *more = true;
        return 0;
    }
    if (c == close) {
        p->pos++;
        p->depth--;
        *more = false;
        return 0;
    }
    return fail(p, close == '}' ? "expected ',' or '}' in an object"
                                : "expected ',' or ']' in an array");
}

static int parse_array(struct parser *p, struct prop *parent, const char *key)
{
    struct prop *a = prop_add_array(parent, key);
    if (!a)
        return err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
    int ret = enter(p);
    if (ret < 0)
        return ret;
    if (peek(p) == ']') {
        p->pos++;
        p->depth--;
        return 0;
    }
    for (bool more = true; more;)
        if ((ret = parse_value(p, a, NULL)) < 0 || (ret = next_element(p, ']', &more)) < 0)
            return ret;
    return 0;
}

static int parse_member(struct parser *p, struct prop *obj)
{
    if (peek(p) != '"')
        return fail(p, "expected a string as object key");
    size_t at = p->pos;
    char *k = NULL;
    int ret = parse_string_raw(p, &k);
    if (ret < 0)
        return ret;
    if (prop_get(obj, k)) {
        p->pos = at;
        ret = fail(p, "duplicate key in an object");
    } else {
        skip_space(p);
        if (peek(p) != ':')
            ret = fail(p, "expected ':' after an object key");
        else {
            p->pos++;
            ret = parse_value(p, obj, k);
        }
    }
    free(k);
    return ret;
}

static int parse_object(struct parser *p, struct prop *parent, const char *key)
{
    struct prop *o = prop_add_object(parent, key);
    if (!o)
        return err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
    int ret = enter(p);
    if (ret < 0)
        return ret;
    if (peek(p) == '}') {
        p->pos++;
        p->depth--;
        return 0;
    }
    for (bool more = true; more;)
        if ((ret = parse_member(p, o)) < 0 || (ret = next_element(p, '}', &more)) < 0)
            return ret;
    return 0;
}

static int parse_keyword(struct parser *p, struct prop *parent, const char *key)
{
    static const char *const words[] = { "true", "false", "null" };
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if (p->len - p->pos >= n && memcmp(p->s + p->pos, words[i], n) == 0) {
            p->pos += n;
            struct prop *v = i < 2 ? prop_add_bool(parent, key, i == 0)
                                   : prop_add_null(parent, key);
            return v ? 0 : err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
        }
    }
    return fail(p, "unexpected character");
}

static int parse_value(struct parser *p, struct prop *parent, const char *key)
{
    int ret = count_node(p);
    if (ret < 0)
        return ret;
    skip_space(p);
    int c = peek(p);
    if (c == '{')
        return parse_object(p, parent, key);
    if (c == '[')
        return parse_array(p, parent, key);
    if (c == '"') {
        char *s = NULL;
        if ((ret = parse_string_raw(p, &s)) < 0)
            return ret;
        struct prop *v = prop_add_string(parent, key, s);
        free(s);
        return v ? 0 : err_set(p->e, ENOMEM, "%s: out of memory reading JSON", p->what);
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(p, parent, key);
    if (c < 0)
        return fail(p, "unexpected end of input");
    return parse_keyword(p, parent, key);
}

int json_parse(const char *text, size_t len, struct prop **out, const char *what,
               struct err *e)
{
    struct parser p = { .s = text, .len = len, .what = what, .e = e };
    struct prop *holder = prop_new_array();
    if (!holder)
        return err_set(e, ENOMEM, "%s: out of memory reading JSON", what);
    int ret = parse_value(&p, holder, NULL);
    skip_space(&p);
    if (ret == 0 && p.pos < p.len)
        ret = fail(&p, "unexpected data after the value");
    if (ret == 0 && prop_failed(holder))
        ret = err_set(e, ENOMEM, "%s: out of memory reading JSON", what);
    if (ret < 0) {
        prop_free(holder);
        return ret;
    }
    *out = holder->first;
    holder->first = holder->last = NULL;
    prop_free(holder);
    return 0;
}

/* --- Framing --- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* One byte inside a top-level container. */
static bool frame_container_byte(struct json_frame *f, char c)
{
    if (f->in_string) {
        if (f->escape)
            f->escape = false;
        else if (c == '\\')
            f->escape = true;
        else if (c == '"')
            f->in_string = false;
        return false;
    }
    if (c == '"')
        f->in_string = true;
    else if (c == '{' || c == '[')
        f->depth++;
    else if (c == '}' || c == ']')
        return --f->depth == 0;
    return false;
}

size_t json_frame_scan(struct json_frame *f, const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (!f->started) {
            if (is_space(c))
                continue;
            f->started = true;
            f->scalar = c != '{' && c != '[';
            if (!f->scalar) {
                f->depth = 1;
                continue;
            }
        }
        if (f->scalar ? c == '\n' : frame_container_byte(f, c))
            return i + 1;
    }
    return 0;
}

/* --- Writer --- */

void json_buf_append(struct json_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void put(struct json_buf *b, const char *s)
{
    json_buf_append(b, s, strlen(s));
}

void json_write_string(struct json_buf *b, const char *s)
{
    put(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        switch (*c) {
        case '"': put(b, "\\\""); break;
        case '\\': put(b, "\\\\"); break;
        case '\n': put(b, "\\n"); break;
        case '\t': put(b, "\\t"); break;
        case '\r': put(b, "\\r"); break;
        default:
            if (*c < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", *c);
                put(b, esc);
            } else {
                json_buf_append(b, (const char *)c, 1);
            }
        }
    }
    put(b, "\"");
}

void json_write(struct json_buf *b, const struct prop *p)
{
    char num[40];
    switch (p->type) {
    case PROP_STRING: json_write_string(b, p->v.s); return;
    case PROP_INT: snprintf(num, sizeof(num), "%" PRId64, p->v.i); put(b, num); return;
    case PROP_UINT: snprintf(num, sizeof(num), "%" PRIu64, p->v.u); put(b, num); return;
    case PROP_DOUBLE: snprintf(num, sizeof(num), "%.17g", p->v.d); put(b, num); return;
    case PROP_BOOL: put(b, p->v.b ? "true" : "false"); return;
    case PROP_NULL: put(b, "null"); return;
    case PROP_OBJECT:
    case PROP_ARRAY: break;
    }
    bool obj = p->type == PROP_OBJECT;
    put(b, obj ? "{" : "[");
    for (const struct prop *c = p->first; c; c = c->next) {
        if (obj) {
            json_write_string(b, c->key ? c->key : "");
            put(b, ": ");
        }
        json_write(b, c);
        if (c->next)
            put(b, ", ");
    }
    put(b, obj ? "}" : "]");
}

void json_buf_free(struct json_buf *b)
{
    free(b->data);
    *b = (struct json_buf){ 0 };
}
