/* Compressed qcow2 clusters, in the two encodings QEMU writes
 * (docs/interop/qcow2.txt, "Compressed Clusters Descriptor" and the
 * compression_type header field):
 *
 *   zlib: a raw deflate stream (no zlib header or checksum) with a 4 KiB
 *         window, compressed at zlib's default level and memLevel 9.
 *   zstd: one or more zstd frames, written as a single frame by streaming
 *         compression at zstd's default level.
 *
 * A compressed cluster's stored size is rounded up to whole sectors, so the
 * data handed to the decompressor may carry trailing bytes after the end of
 * the stream; they are ignored.  A cluster decompresses to exactly one
 * cluster: less output is corruption.
 *
 * Every call (or qcow2_compressor, for a series of clusters) has its own
 * (de)compression context, so any number of threads may compress at once
 * without sharing state. */
#include "formats/qcow2/compress.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

/* Parameters of QEMU's qcow2 zlib stream: negative window bits select raw
 * deflate; 12 bits is the 4 KiB window QEMU uses. */
enum {
    ZLIB_WINDOW_BITS = -12,
    ZLIB_MEM_LEVEL = 9,
};

/* A zstd frame may ask for a window this large at most.  QEMU's frames
 * cover one cluster (2 MiB at most); the cap keeps a damaged frame header
 * from making the decoder allocate a huge window. */
enum { ZSTD_WINDOW_LOG_MAX = 23 };

static int corrupt(struct err *e)
{
    return err_set(e, EIO, "corrupt compressed cluster");
}

struct qcow2_compressor {
    enum qcow2_compression_type type;
    bool zlib_ready;            /* strm is set up (deflateInit2 succeeded) */
    z_stream strm;
    ZSTD_CCtx *cctx;            /* zstd: created on first use */
};

/* A fresh deflate stream the first time, a reset one after: deflateReset
 * keeps the allocations and the parameters, and the stream then produces
 * the same bytes as a new one. */
static int zlib_begin(struct qcow2_compressor *c, struct err *e)
{
    if (c->zlib_ready)
        return deflateReset(&c->strm) == Z_OK ? 0
               : err_set(e, EIO, "cannot reset zlib compression");
    memset(&c->strm, 0, sizeof(c->strm));
    int zret = deflateInit2(&c->strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, ZLIB_WINDOW_BITS,
                            ZLIB_MEM_LEVEL, Z_DEFAULT_STRATEGY);
    if (zret != Z_OK)
        return err_set(e, zret == Z_MEM_ERROR ? ENOMEM : EIO,
                       "cannot set up zlib compression (zlib error %d)", zret);
    c->zlib_ready = true;
    return 0;
}

static ssize_t zlib_compress(struct qcow2_compressor *c, const void *src, size_t len,
                             void *dst, size_t dst_cap, struct err *e)
{
    int ret = zlib_begin(c, e);
    if (ret < 0)
        return ret;
    z_stream *strm = &c->strm;
    strm->next_in = (Bytef *)src;
    strm->avail_in = (uInt)len;
    strm->next_out = dst;
    strm->avail_out = (uInt)min_u64(dst_cap, UINT_MAX);
    int zret = deflate(strm, Z_FINISH);
    /* Output that fills dst exactly comes back as Z_OK, not Z_STREAM_END:
     * like QEMU, take that as not fitting. */
    if (zret == Z_STREAM_END)
        return (ssize_t)strm->total_out;
    if (zret == Z_OK || zret == Z_BUF_ERROR)
        return -ENOSPC;     /* ran out of room: the data does not compress */
    return err_set(e, EIO, "zlib compression failed (zlib error %d)", zret);
}

static int zlib_decompress(const void *src, size_t src_len, void *dst, size_t dst_len,
                           struct err *e)
{
    z_stream strm;
    memset(&strm, 0, sizeof(strm));
    strm.next_in = (Bytef *)src;
    strm.avail_in = (uInt)min_u64(src_len, UINT_MAX);
    strm.next_out = dst;
    strm.avail_out = (uInt)dst_len;
    int zret = inflateInit2(&strm, ZLIB_WINDOW_BITS);
    if (zret != Z_OK)
        return err_set(e, zret == Z_MEM_ERROR ? ENOMEM : EIO,
                       "cannot set up zlib decompression (zlib error %d)", zret);
    zret = inflate(&strm, Z_FINISH);
    /* Z_BUF_ERROR with a full output buffer means the cluster is complete
     * but the stream's end marker was not reached within src_len; QEMU
     * accepts that, so images it reads are readable here too. */
    bool complete = strm.avail_out == 0 && (zret == Z_STREAM_END || zret == Z_BUF_ERROR);
    inflateEnd(&strm);
    return complete ? 0 : corrupt(e);
}

/* A new context the first time, a reset one after (same parameters: the
 * defaults, so the same frames as a new context writes). */
static int zstd_begin(struct qcow2_compressor *c, struct err *e)
{
    if (c->cctx) {
        size_t r = ZSTD_CCtx_reset(c->cctx, ZSTD_reset_session_only);
        return ZSTD_isError(r) ? err_set(e, EIO, "cannot reset zstd compression: %s",
                                         ZSTD_getErrorName(r)) : 0;
    }
    c->cctx = ZSTD_createCCtx();
    return c->cctx ? 0 : err_set(e, ENOMEM, "out of memory for zstd compression");
}

static ssize_t zstd_compress(struct qcow2_compressor *c, const void *src, size_t len,
                             void *dst, size_t dst_cap, struct err *e)
{
    int ret = zstd_begin(c, e);
    if (ret < 0)
        return ret;
    ZSTD_inBuffer in = { .src = src, .size = len, .pos = 0 };
    ZSTD_outBuffer out = { .dst = dst, .size = dst_cap, .pos = 0 };
    /* One frame: ZSTD_e_end with all the input at once also records the
     * content size in the frame header.  The call returns how many bytes it
     * still has to flush; more than the room left means it cannot fit. */
    for (;;) {
        size_t left = ZSTD_compressStream2(c->cctx, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(left)) {
            if (ZSTD_getErrorCode(left) == ZSTD_error_dstSize_tooSmall)
                return -ENOSPC;
            return err_set(e, EIO, "zstd compression failed: %s", ZSTD_getErrorName(left));
        }
        if (left == 0 && in.pos == in.size)
            return (ssize_t)out.pos;
        if (left > out.size - out.pos || out.pos == out.size)
            return -ENOSPC;
    }
}

static int zstd_decompress(const void *src, size_t src_len, void *dst, size_t dst_len,
                           struct err *e)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx)
        return err_set(e, ENOMEM, "out of memory for zstd decompression");
    ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, ZSTD_WINDOW_LOG_MAX);
    ZSTD_inBuffer in = { .src = src, .size = src_len, .pos = 0 };
    ZSTD_outBuffer out = { .dst = dst, .size = dst_len, .pos = 0 };
    /* Decode frame after frame until the cluster is full and the frame that
     * filled it has ended (the decoder returns 0 exactly then); what follows
     * is sector padding.  Every call must make progress, else the input ran
     * out (truncated) or the frame holds more than a cluster. */
    size_t hint = 1;
    int ret = 0;
    while (out.pos < out.size || hint != 0) {
        size_t in_before = in.pos, out_before = out.pos;
        hint = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(hint) || (in.pos == in_before && out.pos == out_before)) {
            ret = corrupt(e);
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

int qcow2_compressor_open(enum qcow2_compression_type type, struct qcow2_compressor **out,
                          struct err *e)
{
    if (type != QCOW2_COMPRESSION_ZLIB && type != QCOW2_COMPRESSION_ZSTD)
        return err_set(e, ENOTSUP, "unknown compression type %d", (int)type);
    struct qcow2_compressor *c = calloc(1, sizeof(*c));
    if (!c)
        return err_set(e, ENOMEM, "out of memory for compression");
    c->type = type;
    *out = c;
    return 0;
}

ssize_t qcow2_compressor_run(struct qcow2_compressor *c, const void *src, size_t len,
                             void *dst, size_t dst_cap, struct err *e)
{
    if (len > UINT_MAX)
        return err_set(e, EINVAL, "cannot compress %zu bytes at once", len);
    if (dst_cap == 0)
        return -ENOSPC;
    if (c->type == QCOW2_COMPRESSION_ZLIB)
        return zlib_compress(c, src, len, dst, dst_cap, e);
    return zstd_compress(c, src, len, dst, dst_cap, e);
}

void qcow2_compressor_close(struct qcow2_compressor *c)
{
    if (!c)
        return;
    if (c->zlib_ready)
        deflateEnd(&c->strm);
    ZSTD_freeCCtx(c->cctx);
    free(c);
}

ssize_t qcow2_compress(enum qcow2_compression_type type, const void *src, size_t len,
                       void *dst, size_t dst_cap, struct err *e)
{
    struct qcow2_compressor *c;
    int ret = qcow2_compressor_open(type, &c, e);
    if (ret < 0)
        return ret;
    ssize_t n = qcow2_compressor_run(c, src, len, dst, dst_cap, e);
    qcow2_compressor_close(c);
    return n;
}

int qcow2_decompress(enum qcow2_compression_type type, const void *src, size_t src_len,
                     void *dst, size_t dst_len, struct err *e)
{
    if (dst_len > UINT_MAX)
        return err_set(e, EINVAL, "cannot decompress %zu bytes at once", dst_len);
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return zlib_decompress(src, src_len, dst, dst_len, e);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_decompress(src, src_len, dst, dst_len, e);
    }
    return err_set(e, ENOTSUP, "unknown compression type %d", (int)type);
}
