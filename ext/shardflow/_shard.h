/* sf_shard: one worker's queue, its two wait points and its counters, and the waits the
 * worker and blocked producers perform on them.
 *
 *   data_ev   the worker sleeps here when its ring is empty; producers notify after each
 *             publish (a fence and a load unless the worker sleeps).
 *   space_ev  producers sleep here when the ring is full (on_full="block"); the worker
 *             notifies after each drain.
 *
 * Close and cancel notify both events, so every sleeper re-checks and sees them.
 *
 * Latency histograms (see _hist.h), written by this shard's worker only:
 *   qwait     submit -> taken by a worker, from the ring's sampled stamps (one sample per
 *             SF_RING_STAMP_EVERY items); a thief records what it steals into its OWN
 *             shard's qwait (sf_shard_steal), so every histogram keeps a single writer.
 *   service   handler call durations: every call in list mode, one call in
 *             SF_SERVICE_SAMPLE_EVERY in per-item mode (svc_tick counts them).
 */
#ifndef SF_SHARD_H
#define SF_SHARD_H

#include "shardflow/_atomic.h"
#include "shardflow/_counters.h"
#include "shardflow/_hist.h"
#include "shardflow/_park.h"
#include "shardflow/_ring.h"

/* How long an idle worker polls before it sleeps. Short: on 2 cores a spinning worker
 * takes the CPU its producer needs. */
#define SF_IDLE_SPINS 200

#define SF_WAIT_FINISHED (-1) /* ring closed and fully consumed */
#define SF_WAIT_TIMEOUT 0     /* deadline passed, or the stop flag is set */
#define SF_WAIT_FLUSH (-2)    /* a flush was requested */

/* Per-item mode times one handler call in this many (a power of two), so that the per-item
 * path does not pay two clock reads per item. */
#define SF_SERVICE_SAMPLE_EVERY 16

typedef struct sf_shard {
    sf_ring ring;
    sf_counters ctr;
    sf_event data_ev;
    SF_PAD(_pad0);
    sf_event space_ev;
    SF_PAD(_pad1);
    /* written by the owning worker only */
    sf_hist qwait;
    sf_hist service;
    uint64_t svc_tick; /* per-item handler calls seen, for sampling (worker-private) */
    /* 1: this shard's worker neither steals nor offers itself as a thief (sf_sched_gate).
     * Set by a runner that ships batches elsewhere while its own window is busy; written
     * rarely (on a change), read by the worker at each wait. */
    sf_atomic_int steal_gated;
    SF_PAD(_pad2);
} sf_shard;

static inline int sf_shard_init(sf_shard *s, uint64_t capacity) {
    sf_counters_init(&s->ctr);
    s->svc_tick = 0;
    atomic_init(&s->steal_gated, 0);
    if (sf_hist_init(&s->qwait)) goto fail_q;
    if (sf_hist_init(&s->service)) goto fail_s;
    if (sf_ring_init(&s->ring, capacity)) goto fail_r;
    if (sf_event_init(&s->data_ev)) goto fail_d;
    if (sf_event_init(&s->space_ev)) goto fail_e;
    return 0;
fail_e:
    sf_event_destroy(&s->data_ev);
fail_d:
    sf_ring_destroy(&s->ring);
fail_r:
    sf_hist_destroy(&s->service);
fail_s:
    sf_hist_destroy(&s->qwait);
fail_q:
    return -1;
}

static inline void sf_shard_destroy(sf_shard *s) {
    sf_hist_destroy(&s->service);
    sf_hist_destroy(&s->qwait);
    sf_event_destroy(&s->space_ev);
    sf_event_destroy(&s->data_ev);
    sf_ring_destroy(&s->ring);
}

/* Publish-side helper: push and wake the worker if it sleeps. The push's claim CAS is
 * the seq_cst RMW that sf_event_notify_after_rmw pairs with. */
static inline int64_t sf_shard_push(sf_shard *s, void *const *items, uint64_t n) {
    int64_t k = sf_ring_push(&s->ring, items, n);
    if (k > 0) sf_event_notify_after_rmw(&s->data_ev);
    return k;
}

/* Take from `from` (own ring or a victim's) and record the queue waits of the sampled
 * items taken into `self`'s qwait. Only self's worker calls this. */
static inline uint64_t sf_shard_take(sf_shard *self, sf_ring *from, void **out, uint64_t max,
                                     uint64_t divisor) {
    uint64_t stamps[SF_RING_MAX_STAMPS];
    unsigned ns = 0;
    uint64_t n = sf_ring_take(from, out, max, divisor, stamps, &ns);
    if (n && ns) {
        int64_t now = sf_now_ns();
        for (unsigned i = 0; i < ns; i++)
            if (stamps[i]) sf_hist_record_since(&self->qwait, (int64_t)stamps[i], now);
    }
    return n;
}

/* A thief's take: half of the victim's published items, recorded in the thief's shard. */
static inline uint64_t sf_shard_steal(sf_shard *self, sf_shard *victim, void **out,
                                      uint64_t max) {
    return sf_shard_take(self, &victim->ring, out, max, 2);
}

/* Consumer-side helper: drain, record the depth seen, and wake blocked producers. */
static inline uint64_t sf_shard_pop(sf_shard *s, void **out, uint64_t max) {
    uint64_t depth = sf_ring_depth(&s->ring);
    uint64_t n = sf_shard_take(s, &s->ring, out, max, 1);
    if (n) {
        sf_counter_max(&s->ctr.high_water, depth);
        sf_event_notify_after_rmw(&s->space_ev); /* pairs with the take CAS on head */
    }
    return n;
}

/* A blocked producer's wait: until the ring has room or is closed, or the deadline passes.
 * Returns 1 when it should retry the push; 0 when the deadline passed or another producer
 * took the room first (callers retry the push either way). Call without the GIL. (The
 * worker's wait is sf_sched_wait in _sched.h.) */
static inline int sf_shard_wait_space(sf_shard *s, int64_t deadline_ns) {
    uint32_t key;
    if (sf_ring_has_space_or_closed(&s->ring)) return 1;
    key = sf_event_prepare(&s->space_ev);
    if (sf_ring_has_space_or_closed(&s->ring)) {
        sf_event_cancel(&s->space_ev, key);
        return 1;
    }
    sf_event_wait(&s->space_ev, key, deadline_ns);
    return sf_ring_has_space_or_closed(&s->ring);
}

/* Wake everybody parked on this shard (close, cancel, fork). */
static inline void sf_shard_wake_all(sf_shard *s) {
    sf_event_notify(&s->data_ev);
    sf_event_notify(&s->space_ev);
}

/* Shards are an array of cache-line-padded structs; allocate them on a cache-line boundary
 * so the padding lines up with real lines. */
static inline sf_shard *sf_shards_alloc(size_t n) {
    void *p = NULL;
#if defined(_WIN32)
    p = _aligned_malloc(n * sizeof(sf_shard), SF_CACHELINE);
#else
    if (posix_memalign(&p, SF_CACHELINE, n * sizeof(sf_shard))) p = NULL;
#endif
    return (sf_shard *)p;
}

static inline void sf_shards_free(sf_shard *p) {
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

#endif /* SF_SHARD_H */
