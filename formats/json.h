/* A small, strict JSON reader and a one-line writer over the property tree
 * (props.h), for the control socket (mirror/control.c, QMP's wire format)
 * and its client (cmd/job.c).  cmd/common.c keeps the pretty printer that
 * --output=json uses.
 *
 * The reader takes RFC 8259 JSON and nothing else: one value, no comments,
 * no trailing commas, no leading zeros, strings in valid UTF-8 with valid
 * escapes (surrogate pairs joined, lone surrogates and \u0000 refused, as
 * property strings are C strings), no duplicate keys in an object.  What a
 * hostile peer can make it do is bounded: at most JSON_MAX_DEPTH nested
 * containers and JSON_MAX_NODES values per document, and the caller bounds
 * the text.  Integers become PROP_INT (negative) or PROP_UINT; numbers
 * with a fraction or an exponent, or out of 64-bit range, PROP_DOUBLE. */
#ifndef IMGTOOL_JSON_H
#define IMGTOOL_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "props.h"
#include "util.h"

enum {
    JSON_MAX_DEPTH = 32,
    JSON_MAX_NODES = 4096,
};

/* Parse text[0..len) (need not be NUL-terminated) into a new tree; `what`
 * names the peer or file in messages ("PATH: invalid JSON at byte 12:
 * expected ':' after an object key").  Returns 0, -EINVAL for bad JSON,
 * -E2BIG past the limits, -ENOMEM. */
int json_parse(const char *text, size_t len, struct prop **out, const char *what,
               struct err *e);

/* Where one JSON value ends in a byte stream (QMP's framing: a client may
 * send objects with or without newlines between them).  Feed the stream
 * in order; json_frame_scan returns the number of bytes of buf[0..len)
 * that complete the current value (a container closed at the top level,
 * or a top-level scalar or stray byte ended by a newline), or 0 if it is
 * not complete yet.  Leading whitespace belongs to the value.  Reset the
 * scanner (zero it) after each value. */
struct json_frame {
    size_t depth;
    bool started, in_string, escape, scalar;
};
size_t json_frame_scan(struct json_frame *f, const char *buf, size_t len);

/* The writer: compact, one line, QMP's spacing ({"return": {}, "id": 7}). */
struct json_buf {
    char *data;         /* NUL-terminated once anything was written */
    size_t len, cap;
    bool failed;        /* an allocation failed: the text is incomplete */
};
void json_write(struct json_buf *b, const struct prop *p);
void json_write_string(struct json_buf *b, const char *s);
void json_buf_append(struct json_buf *b, const char *s, size_t n);
void json_buf_free(struct json_buf *b);

#endif
