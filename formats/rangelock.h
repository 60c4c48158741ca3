/* Byte-range locks: the in-flight request tracking of the block layer
 * (QEMU's tracked requests, block/io.c), also used by jobs that must not
 * race clients on a range (the active mirror).
 *
 * A set holds the locks currently held or waited for, in arrival order.
 * A lock is shared (reads) or exclusive (anything that changes what a
 * range reads or where it is stored); two locks conflict when their ranges
 * overlap and at least one is exclusive.  A new lock waits for every
 * conflicting lock that arrived before it, and only for those: a waiting
 * exclusive lock holds back later readers of its range (no starvation),
 * and since nobody waits for a later arrival there is no deadlock, as long
 * as a thread never asks for a second lock in the same set while it holds
 * one that conflicts with it.
 *
 * The caller owns the struct range_lock (usually on its stack) from
 * range_lock_acquire until range_lock_release returns.  Every function is
 * thread safe. */
#ifndef IMGTOOL_RANGELOCK_H
#define IMGTOOL_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct range_lock {
    uint64_t start, end;            /* [start, end), end > start */
    bool exclusive;
    struct range_lock *prev, *next; /* in the set, oldest first */
};

struct range_lock_set {
    pthread_mutex_t mutex;
    pthread_cond_t released;        /* broadcast whenever a lock goes */
    struct range_lock *oldest, *newest;
    uint64_t waits;                 /* acquisitions that had to wait (statistics, tests) */
};

void range_lock_set_init(struct range_lock_set *set);
/* The set must be empty. */
void range_lock_set_destroy(struct range_lock_set *set);
/* Take [start, end) (end > start), waiting for the conflicting locks
 * that arrived earlier to be released. */
void range_lock_acquire(struct range_lock_set *set, struct range_lock *lock, uint64_t start,
                        uint64_t end, bool exclusive);
void range_lock_release(struct range_lock_set *set, struct range_lock *lock);
/* Wait until no lock is held or waited for (the caller makes sure that no
 * new ones arrive meanwhile, or it may wait for ever). */
void range_lock_drain(struct range_lock_set *set);
/* Number of acquisitions that had to wait so far. */
uint64_t range_lock_waits(struct range_lock_set *set);

#endif
