/* TEMPORARY zlib-only stand-in for the qcow2 codec (owned by another
 * engineer; replaced when their formats/qcow2/compress.c lands). */
#include <errno.h>
#include <zlib.h>

#include "formats/qcow2/compress.h"

ssize_t qcow2_compress(enum qcow2_compression_type type, const void *src, size_t len,
                       void *dst, size_t dst_cap, struct err *e)
{
    if (type != QCOW2_COMPRESSION_ZLIB)
        return err_set(e, ENOTSUP, "zstd compression is not available yet");
    z_stream z = { 0 };
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return err_set(e, ENOMEM, "cannot initialise zlib");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_cap;
    int ret = deflate(&z, Z_FINISH);
    ssize_t out = (ssize_t)(dst_cap - z.avail_out);
    deflateEnd(&z);
    return ret == Z_STREAM_END ? out : -ENOSPC;
}

int qcow2_decompress(enum qcow2_compression_type type, const void *src, size_t src_len,
                     void *dst, size_t dst_len, struct err *e)
{
    if (type != QCOW2_COMPRESSION_ZLIB)
        return err_set(e, ENOTSUP, "zstd decompression is not available yet");
    z_stream z = { 0 };
    if (inflateInit2(&z, -12) != Z_OK)
        return err_set(e, ENOMEM, "cannot initialise zlib");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int ret = inflate(&z, Z_FINISH);
    bool full = z.avail_out == 0;
    inflateEnd(&z);
    if ((ret != Z_STREAM_END && ret != Z_BUF_ERROR) || !full)
        return err_set(e, EIO, "corrupt zlib data");
    return 0;
}
