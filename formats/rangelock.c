/* Byte-range locks (see rangelock.h): a list in arrival order under one
 * mutex, and one condition variable broadcast on every release.  The sets
 * are small (the requests in flight on one image), so a list walk is
 * cheaper than any tree. */
#include "rangelock.h"

#include <assert.h>

void range_lock_set_init(struct range_lock_set *set)
{
    pthread_mutex_init(&set->mutex, NULL);
    pthread_cond_init(&set->released, NULL);
    set->oldest = set->newest = NULL;
    set->waits = 0;
}

void range_lock_set_destroy(struct range_lock_set *set)
{
    assert(!set->oldest);
    pthread_cond_destroy(&set->released);
    pthread_mutex_destroy(&set->mutex);
}

static bool locks_conflict(const struct range_lock *a, const struct range_lock *b)
{
    return (a->exclusive || b->exclusive) && a->start < b->end && b->start < a->end;
}

/* A lock that arrived before `lock` and conflicts with it (mutex held). */
static bool has_earlier_conflict(const struct range_lock *lock)
{
    for (const struct range_lock *l = lock->prev; l; l = l->prev)
        if (locks_conflict(l, lock))
            return true;
    return false;
}

void range_lock_acquire(struct range_lock_set *set, struct range_lock *lock, uint64_t start,
                        uint64_t end, bool exclusive)
{
    assert(end > start);
    lock->start = start;
    lock->end = end;
    lock->exclusive = exclusive;
    lock->next = NULL;
    pthread_mutex_lock(&set->mutex);
    lock->prev = set->newest;
    if (set->newest)
        set->newest->next = lock;
    else
        set->oldest = lock;
    set->newest = lock;
    if (has_earlier_conflict(lock)) {
        set->waits++;
        do
            pthread_cond_wait(&set->released, &set->mutex);
        while (has_earlier_conflict(lock));
    }
    pthread_mutex_unlock(&set->mutex);
}

void range_lock_release(struct range_lock_set *set, struct range_lock *lock)
{
    pthread_mutex_lock(&set->mutex);
    if (lock->prev)
        lock->prev->next = lock->next;
    else
        set->oldest = lock->next;
    if (lock->next)
        lock->next->prev = lock->prev;
    else
        set->newest = lock->prev;
    pthread_cond_broadcast(&set->released);
    pthread_mutex_unlock(&set->mutex);
}

void range_lock_drain(struct range_lock_set *set)
{
    pthread_mutex_lock(&set->mutex);
    while (set->oldest)
        pthread_cond_wait(&set->released, &set->mutex);
    pthread_mutex_unlock(&set->mutex);
}

uint64_t range_lock_waits(struct range_lock_set *set)
{
    pthread_mutex_lock(&set->mutex);
    uint64_t n = set->waits;
    pthread_mutex_unlock(&set->mutex);
    return n;
}
