/* sf_hist: a log-linear latency histogram with one writer, read while it is written.
 *
 * Buckets (HdrHistogram's layout with 2^SF_HIST_SUB_BITS sub-buckets per power of two).
 * A value v in ns (clamped to [0, SF_HIST_MAX_NS]) goes to
 *
 *     shift = max(0, floor(log2 v) - SF_HIST_SUB_BITS)     idx = shift * SUB + (v >> shift)
 *
 * with SUB = 128: values below 256 ns have a bucket each (exact); above, a bucket covers
 * [mant << shift, (mant + 1) << shift) with mant in [128, 256), so its width is at most
 * 1/128 of its lower bound. Readers represent every value by its bucket's upper bound
 * (capped at the exact max): never below the true value, at most 1/128 (0.8%) above it;
 * the stated bound is 1%. Values up to 2^40 ns
 * (~18 minutes) have their own buckets; larger ones land in the last bucket (`max` and
 * `sum_ns` stay exact). 4352 buckets of 8 bytes: 34 KiB per histogram, calloc'd, so a
 * histogram costs resident memory only for the pages its values actually touch (latencies
 * of one workload fall in a few neighbouring buckets: a page or two).
 *
 * Concurrency. Exactly one thread records into a histogram (a shard's worker records into
 * its own shard's histograms, also for items it stole), so a record is relaxed loads and
 * stores, no read-modify-write and no lock prefix. Readers sum relaxed loads of any number
 * of histograms (merge on read). A read while the writer runs is not a consistent cut
 * (count may be one record ahead of or behind the buckets), but every field is exact and
 * monotonic, and once the writer stopped (joined) a read is exact.
 */
#ifndef SF_HIST_H
#define SF_HIST_H

#include <stdint.h>
#include <stdlib.h>
#include "shardflow/_atomic.h"

#define SF_HIST_SUB_BITS 7
#define SF_HIST_SUB ((uint64_t)1 << SF_HIST_SUB_BITS)
#define SF_HIST_MAX_BITS 40
#define SF_HIST_MAX_NS (((uint64_t)1 << SF_HIST_MAX_BITS) - 1)
/* idx of SF_HIST_MAX_NS, plus one */
#define SF_HIST_BUCKETS \
    ((SF_HIST_MAX_BITS - 1 - SF_HIST_SUB_BITS) * SF_HIST_SUB + 2 * SF_HIST_SUB)

typedef struct sf_hist {
    sf_atomic_u64 count;
    sf_atomic_u64 sum_ns;
    sf_atomic_u64 max_ns;
    sf_atomic_u64 *buckets; /* SF_HIST_BUCKETS, calloc'd; NULL if allocation failed */
} sf_hist;

static inline int sf_hist_init(sf_hist *h) {
    atomic_init(&h->count, 0);
    atomic_init(&h->sum_ns, 0);
    atomic_init(&h->max_ns, 0);
    /* calloc and no atomic_init per bucket: as for ring slots (_ring.h), a zeroed lock-free
     * atomic is all-zero bits on every platform we build for; untouched pages stay free. */
    h->buckets = (sf_atomic_u64 *)calloc(SF_HIST_BUCKETS, sizeof(sf_atomic_u64));
    return h->buckets ? 0 : -1;
}

static inline void sf_hist_destroy(sf_hist *h) {
    free(h->buckets);
    h->buckets = NULL;
}

static inline unsigned sf_hist_log2(uint64_t v) { /* v > 0 */
#if defined(_MSC_VER)
    unsigned long r;
    _BitScanReverse64(&r, v);
    return (unsigned)r;
#else
    return 63u - (unsigned)__builtin_clzll(v);
#endif
}

static inline uint64_t sf_hist_index(uint64_t v) {
    unsigned shift;
    if (v > SF_HIST_MAX_NS) v = SF_HIST_MAX_NS;
    if (v < 2 * SF_HIST_SUB) return v;
    shift = sf_hist_log2(v) - SF_HIST_SUB_BITS;
    return (uint64_t)shift * SF_HIST_SUB + (v >> shift);
}

/* The values of bucket idx are [lo, hi] (inclusive). */
static inline uint64_t sf_hist_lo(uint64_t idx) {
    uint64_t shift, mant;
    if (idx < 2 * SF_HIST_SUB) return idx;
    shift = idx / SF_HIST_SUB - 1;
    mant = idx - shift * SF_HIST_SUB;
    return mant << shift;
}
static inline uint64_t sf_hist_hi(uint64_t idx) {
    uint64_t shift, mant;
    if (idx < 2 * SF_HIST_SUB) return idx;
    shift = idx / SF_HIST_SUB - 1;
    mant = idx - shift * SF_HIST_SUB;
    return ((mant + 1) << shift) - 1;
}

/* Record one value (ns). Only the owning thread calls this. */
static inline void sf_hist_record(sf_hist *h, uint64_t v) {
    if (!h->buckets) return;
    sf_counter_add(&h->buckets[sf_hist_index(v)], 1);
    sf_counter_add(&h->count, 1);
    sf_counter_add(&h->sum_ns, v);
    sf_counter_max(&h->max_ns, v);
}

/* Record a value measured from a start stamp; a stamp from the future (clocks read on other
 * cores are not perfectly ordered) counts as 0. */
static inline void sf_hist_record_since(sf_hist *h, int64_t start_ns, int64_t now_ns) {
    sf_hist_record(h, now_ns > start_ns ? (uint64_t)(now_ns - start_ns) : 0);
}

/* Reader: add h's buckets into acc[SF_HIST_BUCKETS] (plain memory owned by the reader). */
static inline void sf_hist_merge_into(sf_hist *h, uint64_t *acc) {
    if (!h->buckets) return;
    for (uint64_t i = 0; i < SF_HIST_BUCKETS; i++) acc[i] += sf_load_relaxed_u64(&h->buckets[i]);
}

#endif /* SF_HIST_H */
