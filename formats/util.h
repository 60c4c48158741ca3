/* Small helpers shared by every layer: error reporting, big-endian
 * conversion, overflow-checked arithmetic and size parsing. */
#ifndef IMGTOOL_UTIL_H
#define IMGTOOL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* A caller-provided error message.  Library functions that fail return a
 * negative errno and describe the problem here, naming the file and the
 * offending field; only cmd/ prints it. */
struct err {
    int code;           /* positive errno of the last failure, 0 if none */
    char msg[1024];
};

/* Record an error and return -errnum, so callers can write
 * "return err_set(e, EINVAL, "%s: bad header", name);". */
int err_set(struct err *e, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like err_set() but appends ": strerror(errnum)". */
int err_errno(struct err *e, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix an existing message with more context ("disk.qcow2: " ...). */
void err_prefix(struct err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void err_clear(struct err *e);
/* Replace every occurrence of `from` in the message with `to` (a file
 * built under a temporary name is reported by its final name). */
void err_replace(struct err *e, const char *from, const char *to);

static inline uint16_t be16_read(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)(b[0] << 8 | b[1]);
}
static inline uint32_t be32_read(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 |
           (uint32_t)b[2] << 8 | b[3];
}
static inline uint64_t be64_read(const void *p)
{
    return (uint64_t)be32_read(p) << 32 | be32_read((const uint8_t *)p + 4);
}
static inline void be16_write(void *p, uint16_t v)
{
    uint8_t *b = p;
    b[0] = v >> 8; b[1] = (uint8_t)v;
}
static inline void be32_write(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = v >> 24; b[1] = (uint8_t)(v >> 16); b[2] = (uint8_t)(v >> 8); b[3] = (uint8_t)v;
}
static inline void be64_write(void *p, uint64_t v)
{
    be32_write(p, (uint32_t)(v >> 32));
    be32_write((uint8_t *)p + 4, (uint32_t)v);
}

static inline bool is_power_of_2(uint64_t v) { return v && !(v & (v - 1)); }
static inline uint64_t align_down(uint64_t v, uint64_t a) { return v / a * a; }
/* Caller guarantees no overflow (v <= UINT64_MAX - a + 1). */
static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
static inline uint64_t div_round_up(uint64_t v, uint64_t d) { return v / d + (v % d != 0); }
static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Parse a size such as "10G", "64k", "512", "1.5G" (suffixes b k M G T P E,
 * binary multiples as qemu-img uses them; a fraction needs a suffix).  Returns 0 or -EINVAL / -ERANGE. */
int parse_size(const char *s, uint64_t *out);
/* Format bytes as qemu-img does for humans: "10 MiB", "1.5 GiB". */
void format_size_human(uint64_t bytes, char *buf, size_t len);
/* True if buf[0..len) is all zero bytes. */
bool buffer_is_zero(const void *buf, size_t len);

/* iovec helpers (for the block layer and the transports alike) */
size_t iov_size(const struct iovec *iov, int iovcnt);
void iov_memset(const struct iovec *iov, int iovcnt, size_t off, int c, size_t len);

#endif
