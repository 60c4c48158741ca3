/* The record format shared by writelog.so (which writes the log) and
 * crashreplay (which reads it).  Test-only: never part of imgtool.
 *
 * A log is a sequence of records in the order the calls returned, each a
 * struct log_record followed by `name_len` bytes of file name (no NUL; for
 * LOG_RENAME "OLD\0NEW") and, for LOG_WRITE, `length` bytes of data.
 * Names are bare file names inside the watched directory.  Files are
 * identified by inode number (`ino`), which is what fsync acts on. */
#ifndef IMGTOOL_CRASH_LOG_H
#define IMGTOOL_CRASH_LOG_H

#include <stdint.h>

enum log_type {
    LOG_OPEN = 1,       /* name now refers to ino; flags: LOG_CREATED */
    LOG_WRITE,          /* data written at offset */
    LOG_TRUNCATE,       /* file size set to length */
    LOG_FALLOCATE,      /* fallocate(mode = flags, offset, length) */
    LOG_FSYNC,          /* fsync or fdatasync of ino: its data is durable */
    LOG_DIRSYNC,        /* fsync of the watched directory: names are durable */
    LOG_RENAME,         /* rename(OLD, NEW) inside the directory */
    LOG_UNLINK,         /* unlink(name) */
    LOG_SYNCALL,        /* sync() or syncfs(): everything is durable */
};

enum { LOG_CREATED = 1 };

#define LOG_MAGIC 0x4c57u   /* "WL" */

struct log_record {
    uint16_t magic;
    uint16_t type;
    uint32_t name_len;
    uint32_t flags;
    uint32_t reserved;
    uint64_t ino;
    uint64_t offset;
    uint64_t length;
};

#endif
