/* Compression of qcow2 clusters: zlib (raw deflate, no zlib header, as
 * QEMU writes it) and zstd (compression_type=zstd).  Pure functions, safe
 * to call from several threads at once. */
#ifndef IMGTOOL_QCOW2_COMPRESS_H
#define IMGTOOL_QCOW2_COMPRESS_H

#include <stddef.h>
#include <sys/types.h>

#include "formats/util.h"

/* Values of the qcow2 header's compression_type field (qcow2.txt). */
enum qcow2_compression_type {
    QCOW2_COMPRESSION_ZLIB = 0,
    QCOW2_COMPRESSION_ZSTD = 1,
};

/* Compress `len` bytes into dst (capacity dst_cap).  Returns the
 * compressed size, or -ENOSPC when it does not fit in dst_cap (the caller
 * then writes the cluster uncompressed), or another negative errno with a
 * message.  As with QEMU's compressors, which get the same buffer: zlib
 * output fits only with a byte to spare (deflate reports the end of the
 * stream only while room is left), zstd output may fill dst_cap. */
ssize_t qcow2_compress(enum qcow2_compression_type type, const void *src, size_t len,
                       void *dst, size_t dst_cap, struct err *e);

/* The same for a series of clusters compressed one after another by one
 * thread: the context's allocations (zlib's window and hash tables, a zstd
 * context: hundreds of KiB) are set up once and reset between clusters,
 * instead of being allocated and freed per cluster, which costs page
 * faults and, with several threads, contention on the process's memory
 * map.  The output is the same as qcow2_compress's.  A context belongs to
 * one thread at a time. */
struct qcow2_compressor;
int qcow2_compressor_open(enum qcow2_compression_type type, struct qcow2_compressor **out,
                          struct err *e);
ssize_t qcow2_compressor_run(struct qcow2_compressor *c, const void *src, size_t len,
                             void *dst, size_t dst_cap, struct err *e);
void qcow2_compressor_close(struct qcow2_compressor *c);

/* Decompress src (src_len bytes, which may include trailing bytes past the
 * end of the compressed stream, as qcow2's sector-rounded compressed sizes
 * do) into exactly dst_len bytes.  -EIO with a message on corrupt data. */
int qcow2_decompress(enum qcow2_compression_type type, const void *src, size_t src_len,
                     void *dst, size_t dst_len, struct err *e);

#endif
