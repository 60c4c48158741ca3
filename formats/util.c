#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Record an error (errnum of either sign) and return -errnum. */
static int err_vset(struct err *e, int errnum, const char *fmt, va_list ap)
{
    if (errnum < 0)
        errnum = -errnum;
    if (e) {
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        e->code = errnum;
    }
    return -errnum;
}

int err_set(struct err *e, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = err_vset(e, errnum, fmt, ap);
    va_end(ap);
    return ret;
}

int err_errno(struct err *e, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int ret = err_vset(e, errnum, fmt, ap);
    va_end(ap);
    if (e) {
        size_t n = strlen(e->msg);
        snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", strerror(-ret));
    }
    return ret;
}

void err_prefix(struct err *e, const char *fmt, ...)
{
    if (!e)
        return;
    char old[sizeof(e->msg)];
    memcpy(old, e->msg, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(e->msg))
        memccpy(e->msg + n, old, '\0', sizeof(e->msg) - (size_t)n);
    e->msg[sizeof(e->msg) - 1] = '\0';
}

void err_clear(struct err *e)
{
    if (e) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}

void err_replace(struct err *e, const char *from, const char *to)
{
    size_t from_len = strlen(from), to_len = strlen(to), n = 0;
    if (!e || !from_len)
        return;
    char out[sizeof(e->msg)];
    for (const char *p = e->msg; *p && n < sizeof(out) - 1;) {
        if (strncmp(p, from, from_len) == 0) {
            size_t take = to_len < sizeof(out) - 1 - n ? to_len : sizeof(out) - 1 - n;
            memcpy(out + n, to, take);
            n += take;
            p += from_len;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = '\0';
    memcpy(e->msg, out, n + 1);
}

int parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || isspace((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    char *end;
    /* Decimal, or hexadecimal with 0x as in qemu-img: "010" is ten, not
     * octal eight. */
    int base = s[0] == '0' && (s[1] == 'x' || s[1] == 'X') ? 16 : 10;
    unsigned long long v = strtoull(s, &end, base);
    if (errno || end == s)
        return errno == ERANGE ? -ERANGE : -EINVAL;
    /* A decimal fraction ("1.5G"), as qemu-img's qemu_strtosz: digits
     * only (no exponent), and only with a unit. */
    double fraction = 0;
    if (*end == '.' && base == 10) {
        char *frac_end = end + 1;
        while (isdigit((unsigned char)*frac_end))
            frac_end++;
        char digits[32];
        size_t n = (size_t)(frac_end - end);
        if (n >= sizeof(digits))
            n = sizeof(digits) - 1;
        memcpy(digits, end, n);
        digits[n] = '\0';
        fraction = strtod(digits, NULL);
        end = frac_end;
    }
    unsigned shift = 0;
    if (*end) {
        switch (*end) {
        case 'b': case 'B': shift = 0; break;
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        case 't': case 'T': shift = 40; break;
        case 'p': case 'P': shift = 50; break;
        case 'e': case 'E': shift = 60; break;
        default: return -EINVAL;
        }
        end++;
        /* Accept "64KiB" / "64KB" spellings too. */
        if (shift && (*end == 'i' || *end == 'I'))
            end++;
        if (shift && (*end == 'b' || *end == 'B'))
            end++;
        if (*end)
            return -EINVAL;
    }
    if (fraction != 0 && !shift)
        return -EINVAL;
    uint64_t extra = (uint64_t)(fraction * (double)(1ull << shift));
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    if (((uint64_t)v << shift) > UINT64_MAX - extra)
        return -ERANGE;
    *out = ((uint64_t)v << shift) + extra;
    return 0;
}

void format_size_human(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    unsigned i = 0;
    double v = (double)bytes;
    while (v >= 1024 && i + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%" PRIu64 " B", bytes);
    else
        /* qemu-img prints three significant digits: "1.5 GiB", "10 MiB". */
        snprintf(buf, len, "%.3g %s", v, units[i]);
}

bool buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    /* Check the head byte-wise until aligned, then compare word-wise. */
    while (len && ((uintptr_t)p & 7)) {
        if (*p)
            return false;
        p++;
        len--;
    }
    const uint64_t *w = (const uint64_t *)(const void *)p;
    for (; len >= 32; len -= 32, w += 4)
        if (w[0] | w[1] | w[2] | w[3])
            return false;
    p = (const unsigned char *)w;
    while (len--)
        if (*p++)
            return false;
    return true;
}

size_t iov_size(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

void iov_memset(const struct iovec *iov, int iovcnt, size_t off, int c, size_t len)
{
    for (int i = 0; i < iovcnt && len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t n = min_u64(iov[i].iov_len - off, len);
        memset((char *)iov[i].iov_base + off, c, n);
        len -= n;
        off = 0;
    }
}
