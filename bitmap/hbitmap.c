#include "bitmap/hbitmap.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* 64^11 > 2^64, so no bitmap of 64-bit granule indices needs more levels. */
#define HBITMAP_MAX_LEVELS 11
#define BITS_PER_WORD 64
#define NO_BIT UINT64_MAX

struct hbitmap {
    uint64_t size;              /* disk size in bytes */
    uint32_t granularity;
    unsigned granularity_bits;
    uint64_t granules;          /* bits of level 0: ceil(size / granularity) */
    uint64_t dirty_granules;    /* set bits of level 0, kept up to date */
    unsigned levels;            /* level 0 is the bottom; the top has one word */
    uint64_t bits[HBITMAP_MAX_LEVELS];
    uint64_t *words[HBITMAP_MAX_LEVELS];
};

/* Invariants: bits past bits[l] in the last word of a level are zero, and
 * bit i of level l + 1 is set iff word i of level l is non-zero. */

static uint64_t level_word_count(uint64_t bits)
{
    return bits ? div_round_up(bits, BITS_PER_WORD) : 1;
}

static unsigned popcount64(uint64_t w)
{
    return (unsigned)__builtin_popcountll(w);
}

static unsigned count_trailing_zeros64(uint64_t w)
{
    return (unsigned)__builtin_ctzll(w);
}

static bool level_bit(const struct hbitmap *hb, unsigned level, uint64_t bit)
{
    return hb->words[level][bit / BITS_PER_WORD] >> (bit % BITS_PER_WORD) & 1;
}

/* Mask of the bits first % 64 .. last % 64 of a word, for the word
 * holding them; first and last may lie in other words (then the mask runs
 * to that end of the word). */
static uint64_t word_mask(uint64_t word, uint64_t first, uint64_t last)
{
    uint64_t mask = UINT64_MAX;
    if (word == first / BITS_PER_WORD)
        mask &= UINT64_MAX << (first % BITS_PER_WORD);
    if (word == last / BITS_PER_WORD)
        mask &= UINT64_MAX >> (BITS_PER_WORD - 1 - last % BITS_PER_WORD);
    return mask;
}

static void free_levels(struct hbitmap *hb)
{
    for (unsigned l = 0; l < HBITMAP_MAX_LEVELS; l++) {
        free(hb->words[l]);
        hb->words[l] = NULL;
    }
}

/* Allocate zeroed levels for hb->granules bits.  On failure the caller frees
 * what was allocated with free_levels(). */
static int alloc_levels(struct hbitmap *hb)
{
    uint64_t bits = hb->granules;
    unsigned l = 0;
    for (;;) {
        uint64_t nwords = level_word_count(bits);
        if (l >= HBITMAP_MAX_LEVELS || nwords > SIZE_MAX / sizeof(uint64_t))
            return -ENOMEM;
        hb->words[l] = calloc((size_t)nwords, sizeof(uint64_t));
        if (!hb->words[l])
            return -ENOMEM;
        hb->bits[l] = bits;
        l++;
        if (nwords == 1)
            break;
        bits = nwords;
    }
    hb->levels = l;
    return 0;
}

/* Recompute the summary bits above the level-0 bits [first, last]. */
static void update_summary(struct hbitmap *hb, uint64_t first, uint64_t last)
{
    for (unsigned l = 0; l + 1 < hb->levels; l++) {
        uint64_t first_word = first / BITS_PER_WORD;
        uint64_t last_word = last / BITS_PER_WORD;
        uint64_t *upper = hb->words[l + 1];
        for (uint64_t i = first_word; i <= last_word; i++) {
            uint64_t bit = UINT64_C(1) << (i % BITS_PER_WORD);
            if (hb->words[l][i])
                upper[i / BITS_PER_WORD] |= bit;
            else
                upper[i / BITS_PER_WORD] &= ~bit;
        }
        first = first_word;
        last = last_word;
    }
}

static void rebuild_count_and_summary(struct hbitmap *hb)
{
    uint64_t nwords = level_word_count(hb->granules);
    hb->dirty_granules = 0;
    for (uint64_t i = 0; i < nwords; i++)
        hb->dirty_granules += popcount64(hb->words[0][i]);
    update_summary(hb, 0, nwords * BITS_PER_WORD - 1);
}

/* Set or clear the granules [first, last] (both < hb->granules). */
static void assign_granules(struct hbitmap *hb, uint64_t first, uint64_t last, bool dirty)
{
    uint64_t *w = hb->words[0];
    for (uint64_t i = first / BITS_PER_WORD; i <= last / BITS_PER_WORD; i++) {
        uint64_t mask = word_mask(i, first, last);
        uint64_t old = w[i];
        uint64_t new = dirty ? old | mask : old & ~mask;
        w[i] = new;
        hb->dirty_granules += popcount64(new);
        hb->dirty_granules -= popcount64(old);
    }
    update_summary(hb, first, last);
}

/* Granules touched by [off, off + len), clamped to the disk.  Returns false
 * if the clamped range is empty. */
static bool touched_granules(const struct hbitmap *hb, uint64_t off, uint64_t len,
                             uint64_t *first, uint64_t *last)
{
    if (len == 0 || off >= hb->size)
        return false;
    uint64_t end = off + min_u64(len, hb->size - off);
    *first = off >> hb->granularity_bits;
    *last = (end - 1) >> hb->granularity_bits;
    return true;
}

/* Index of the first set bit of level 0 at or after pos, or NO_BIT.
 * Climb while the rest of the current word is empty, then descend
 * following the first set bit of each summary word. */
static uint64_t find_next_set(const struct hbitmap *hb, uint64_t pos)
{
    unsigned l = 0;
    uint64_t word;
    for (;;) {
        if (pos >= hb->bits[l])
            return NO_BIT;
        word = hb->words[l][pos / BITS_PER_WORD] & (UINT64_MAX << (pos % BITS_PER_WORD));
        if (word)
            break;
        if (l + 1 == hb->levels)
            return NO_BIT;
        /* Continue with the next word of this level, i.e. the next bit of
         * the level above. */
        pos = pos / BITS_PER_WORD + 1;
        l++;
    }
    pos = pos / BITS_PER_WORD * BITS_PER_WORD + count_trailing_zeros64(word);
    while (l > 0) {
        l--;
        word = hb->words[l][pos];
        assert(word != 0);
        pos = pos * BITS_PER_WORD + count_trailing_zeros64(word);
    }
    return pos;
}

/* Index of the first clear bit of level 0 at or after pos, or NO_BIT.
 * Scans the bottom level: clean granules are the common case. */
static uint64_t find_next_clear(const struct hbitmap *hb, uint64_t pos)
{
    if (pos >= hb->granules)
        return NO_BIT;
    uint64_t nwords = level_word_count(hb->granules);
    uint64_t i = pos / BITS_PER_WORD;
    uint64_t word = ~hb->words[0][i] & (UINT64_MAX << (pos % BITS_PER_WORD));
    while (!word) {
        if (++i == nwords)
            return NO_BIT;
        word = ~hb->words[0][i];
    }
    pos = i * BITS_PER_WORD + count_trailing_zeros64(word);
    return pos < hb->granules ? pos : NO_BIT;
}

int hbitmap_new(uint64_t disk_size, uint32_t granularity, struct hbitmap **out,
                struct err *e)
{
    if (!is_power_of_2(granularity) || granularity < HBITMAP_MIN_GRANULARITY ||
        granularity > HBITMAP_MAX_GRANULARITY)
        return err_set(e, EINVAL,
                       "bitmap granularity %" PRIu32 " is not a power of two "
                       "between %" PRIu32 " and %" PRIu32,
                       granularity, HBITMAP_MIN_GRANULARITY, HBITMAP_MAX_GRANULARITY);
    if (disk_size > INT64_MAX)
        return err_set(e, EINVAL, "bitmap disk size %" PRIu64 " is too large", disk_size);
    struct hbitmap *hb = calloc(1, sizeof(*hb));
    if (!hb)
        return err_set(e, ENOMEM, "cannot allocate a bitmap");
    hb->size = disk_size;
    hb->granularity = granularity;
    hb->granularity_bits = count_trailing_zeros64(granularity);
    hb->granules = div_round_up(disk_size, granularity);
    if (alloc_levels(hb) < 0) {
        free_levels(hb);
        free(hb);
        return err_set(e, ENOMEM,
                       "cannot allocate a bitmap for %" PRIu64 " bytes at granularity %" PRIu32,
                       disk_size, granularity);
    }
    *out = hb;
    return 0;
}

void hbitmap_free(struct hbitmap *hb)
{
    if (!hb)
        return;
    free_levels(hb);
    free(hb);
}

int hbitmap_copy(const struct hbitmap *src, struct hbitmap **out, struct err *e)
{
    struct hbitmap *hb;
    int ret = hbitmap_new(src->size, src->granularity, &hb, e);
    if (ret < 0)
        return ret;
    for (unsigned l = 0; l < src->levels; l++)
        memcpy(hb->words[l], src->words[l],
               (size_t)level_word_count(src->bits[l]) * sizeof(uint64_t));
    hb->dirty_granules = src->dirty_granules;
    *out = hb;
    return 0;
}

uint64_t hbitmap_size(const struct hbitmap *hb)
{
    return hb->size;
}

uint32_t hbitmap_granularity(const struct hbitmap *hb)
{
    return hb->granularity;
}

uint64_t hbitmap_count(const struct hbitmap *hb)
{
    uint64_t count = hb->dirty_granules << hb->granularity_bits;
    uint64_t tail = hb->size & (hb->granularity - 1);
    if (tail && level_bit(hb, 0, hb->granules - 1))
        count -= hb->granularity - tail;
    return count;
}

void hbitmap_set(struct hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t first, last;
    if (touched_granules(hb, off, len, &first, &last))
        assign_granules(hb, first, last, true);
}

void hbitmap_set_all(struct hbitmap *hb)
{
    hbitmap_set(hb, 0, hb->size);
}

void hbitmap_reset(struct hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t first, last;
    if (touched_granules(hb, off, len, &first, &last))
        assign_granules(hb, first, last, false);
}

void hbitmap_reset_all(struct hbitmap *hb)
{
    for (unsigned l = 0; l < hb->levels; l++)
        memset(hb->words[l], 0, (size_t)level_word_count(hb->bits[l]) * sizeof(uint64_t));
    hb->dirty_granules = 0;
}

bool hbitmap_get(const struct hbitmap *hb, uint64_t off)
{
    return off < hb->size && level_bit(hb, 0, off >> hb->granularity_bits);
}

/* Shared tail of next_dirty / next_clean: turn the granule index found
 * into a byte offset inside [off, off + bytes), or -1. */
static int64_t granule_to_offset_in_range(const struct hbitmap *hb, uint64_t granule,
                                          uint64_t off, uint64_t bytes)
{
    if (granule == NO_BIT)
        return -1;
    uint64_t end = off + min_u64(bytes, hb->size - off);
    uint64_t pos = max_u64(granule << hb->granularity_bits, off);
    return pos < end ? (int64_t)pos : -1;
}

int64_t hbitmap_next_dirty(const struct hbitmap *hb, uint64_t off, uint64_t bytes)
{
    if (bytes == 0 || off >= hb->size)
        return -1;
    uint64_t granule = find_next_set(hb, off >> hb->granularity_bits);
    return granule_to_offset_in_range(hb, granule, off, bytes);
}

int64_t hbitmap_next_clean(const struct hbitmap *hb, uint64_t off, uint64_t bytes)
{
    if (bytes == 0 || off >= hb->size)
        return -1;
    uint64_t granule = find_next_clear(hb, off >> hb->granularity_bits);
    return granule_to_offset_in_range(hb, granule, off, bytes);
}

bool hbitmap_next_dirty_extent(const struct hbitmap *hb, uint64_t start, uint64_t end,
                               uint64_t *ext_off, uint64_t *ext_len)
{
    end = min_u64(end, hb->size);
    if (start >= end)
        return false;
    int64_t dirty = hbitmap_next_dirty(hb, start, end - start);
    if (dirty < 0)
        return false;
    int64_t clean = hbitmap_next_clean(hb, (uint64_t)dirty, end - (uint64_t)dirty);
    uint64_t extent_end = clean < 0 ? end : (uint64_t)clean;
    *ext_off = (uint64_t)dirty;
    *ext_len = extent_end - (uint64_t)dirty;
    return true;
}

int hbitmap_merge(struct hbitmap *dst, const struct hbitmap *src, struct err *e)
{
    if (dst->size != src->size)
        return err_set(e, EINVAL,
                       "cannot merge a bitmap of %" PRIu64 " bytes into one of %" PRIu64
                       " bytes", src->size, dst->size);
    if (dst == src)
        return 0;
    uint64_t off = 0, len;
    while (hbitmap_next_dirty_extent(src, off, src->size, &off, &len)) {
        hbitmap_set(dst, off, len);
        off += len;
    }
    return 0;
}

int hbitmap_truncate(struct hbitmap *hb, uint64_t new_size, struct err *e)
{
    if (new_size > INT64_MAX)
        return err_set(e, EINVAL, "bitmap disk size %" PRIu64 " is too large", new_size);
    struct hbitmap resized = {
        .size = new_size,
        .granularity = hb->granularity,
        .granularity_bits = hb->granularity_bits,
        .granules = div_round_up(new_size, hb->granularity),
    };
    if (alloc_levels(&resized) < 0) {
        free_levels(&resized);
        return err_set(e, ENOMEM, "cannot resize a bitmap to %" PRIu64 " bytes", new_size);
    }
    uint64_t kept = min_u64(hb->granules, resized.granules);
    uint64_t kept_words = div_round_up(kept, BITS_PER_WORD);
    memcpy(resized.words[0], hb->words[0], (size_t)kept_words * sizeof(uint64_t));
    /* Drop the bits of granules past the new end in the last word kept. */
    if (kept % BITS_PER_WORD)
        resized.words[0][kept_words - 1] &= UINT64_MAX >> (BITS_PER_WORD - kept % BITS_PER_WORD);
    rebuild_count_and_summary(&resized);
    free_levels(hb);
    *hb = resized;
    return 0;
}

uint64_t hbitmap_serialization_align(const struct hbitmap *hb)
{
    return (uint64_t)hb->granularity * 8;
}

/* Granules [*first, *first + *count) of a serialized part, checking the
 * alignment contract documented in hbitmap.h. */
static bool part_granules(const struct hbitmap *hb, uint64_t off, uint64_t len,
                          uint64_t *first, uint64_t *count)
{
    uint64_t align = hbitmap_serialization_align(hb);
    assert(off % align == 0);
    if (len == 0 || off >= hb->size)
        return false;
    uint64_t avail = hb->size - off;
    assert(len >= avail || len % align == 0);
    uint64_t end = off + min_u64(len, avail);
    *first = off >> hb->granularity_bits;
    *count = div_round_up(end, hb->granularity) - *first;
    return true;
}

uint64_t hbitmap_serialization_size(const struct hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t first, count;
    if (!part_granules(hb, off, len, &first, &count))
        return 0;
    return div_round_up(count, 8);
}

/* Serialized bytes hold 8 granules each; since parts start on a multiple of
 * 8 granules, byte i of a part is bits 8i..8i+7 of some level-0 word. */
void hbitmap_serialize_part(const struct hbitmap *hb, uint8_t *buf, uint64_t off,
                            uint64_t len)
{
    uint64_t first, count;
    if (!part_granules(hb, off, len, &first, &count))
        return;
    for (uint64_t i = 0; i < div_round_up(count, 8); i++) {
        uint64_t granule = first + i * 8;
        uint64_t word = hb->words[0][granule / BITS_PER_WORD];
        /* Bits past the last granule are zero by invariant, as the spec
         * requires for the unused tail of the data. */
        buf[i] = (uint8_t)(word >> (granule % BITS_PER_WORD));
    }
}

void hbitmap_deserialize_part(struct hbitmap *hb, const uint8_t *buf, uint64_t off,
                              uint64_t len)
{
    uint64_t first, count;
    if (!part_granules(hb, off, len, &first, &count))
        return;
    uint64_t nbytes = div_round_up(count, 8);
    for (uint64_t i = 0; i < nbytes; i++) {
        uint64_t granule = first + i * 8;
        uint64_t byte = buf[i];
        if (granule + 8 > hb->granules)
            byte &= (UINT64_C(1) << (hb->granules - granule)) - 1;
        uint64_t *word = &hb->words[0][granule / BITS_PER_WORD];
        unsigned shift = granule % BITS_PER_WORD;
        uint64_t old = *word;
        uint64_t new = (old & ~(UINT64_C(0xff) << shift)) | byte << shift;
        *word = new;
        hb->dirty_granules += popcount64(new);
        hb->dirty_granules -= popcount64(old);
    }
    update_summary(hb, first, first + count - 1);
}

void hbitmap_deserialize_ones(struct hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t first, count;
    if (part_granules(hb, off, len, &first, &count))
        assign_granules(hb, first, first + count - 1, true);
}

void hbitmap_deserialize_zeroes(struct hbitmap *hb, uint64_t off, uint64_t len)
{
    uint64_t first, count;
    if (part_granules(hb, off, len, &first, &count))
        assign_granules(hb, first, first + count - 1, false);
}
