/* sf_counters: per-shard metrics with one writer per field.
 *
 * The shard's worker is the only writer of everything on the first line, so it bumps them
 * with a relaxed load + store (no lock prefix, ~0.2 ns) instead of a shared fetch_add
 * (~14 ns when contended). Readers sum relaxed loads: a snapshot is not a consistent cut,
 * but each field is exact and monotonic. The fields written by other threads (producers
 * dropping, the shutdown path returning items) are rare events and use fetch_add on a line
 * of their own, so they never disturb the worker's line.
 *
 * `submitted` is not a counter: it is the ring's tail index plus drops (plus `direct`, the
 * rare items a backend took straight from the submitting thread), so the submit fast path
 * pays for no counter at all.
 */
#ifndef SF_COUNTERS_H
#define SF_COUNTERS_H

#include "shardflow/_atomic.h"

typedef struct sf_counters {
    SF_PAD(_pad0);
    /* written by the owning worker only */
    sf_atomic_u64 processed;  /* items whose handler call returned */
    sf_atomic_u64 failed;     /* items whose handler call raised (and were not dead-lettered) */
    sf_atomic_u64 dead_lettered; /* failed items handed to the dead letter */
    sf_atomic_u64 batches;    /* handler calls */
    sf_atomic_u64 high_water; /* deepest queue the worker saw when it drained */
    sf_atomic_u64 stolen_in;  /* items this worker took from other shards */
    sf_atomic_u64 flushed;    /* the last flush request this worker completed */
    SF_PAD(_pad1);
    /* written by any thread, on rare paths */
    sf_atomic_u64 dropped;    /* refused by on_full="drop" */
    sf_atomic_u64 returned;   /* handed back by shutdown(cancel=True) */
    sf_atomic_u64 stolen_out; /* items thieves took from this shard (once per theft) */
    sf_atomic_u64 direct;     /* items a backend shipped from the submitting thread (never in
                               * the ring: counted in `submitted` and in `batches` here) */
    SF_PAD(_pad2);
} sf_counters;

static inline void sf_counters_init(sf_counters *c) {
    atomic_init(&c->processed, 0);
    atomic_init(&c->failed, 0);
    atomic_init(&c->dead_lettered, 0);
    atomic_init(&c->batches, 0);
    atomic_init(&c->high_water, 0);
    atomic_init(&c->stolen_in, 0);
    atomic_init(&c->stolen_out, 0);
    atomic_init(&c->flushed, 0);
    atomic_init(&c->dropped, 0);
    atomic_init(&c->returned, 0);
    atomic_init(&c->direct, 0);
}

#endif /* SF_COUNTERS_H */
