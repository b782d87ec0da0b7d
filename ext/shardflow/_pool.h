/* sf_pool: the state a pool shares across its shards: the round-robin cursor, the stop and
 * fork flags, and the count of live workers that join() waits on. */
#ifndef SF_POOL_H
#define SF_POOL_H

#include "shardflow/_atomic.h"
#include "shardflow/_park.h"

#define SF_STOP_NONE 0
#define SF_STOP_FINISH_TAKEN 1 /* shutdown(cancel=True, wait=False): run what was taken */
#define SF_STOP_HAND_BACK 2    /* shutdown(cancel=True, wait=True): hand back what was not started */

typedef struct sf_pool {
    SF_PAD(_pad0);
    /* Written by every producer with a relaxed load + store, not an RMW: a lost update
     * under a race only skews the rotation, and every stored value is a valid shard. */
    sf_atomic_u64 rr;
    SF_PAD(_pad1);
    sf_atomic_int stop;
    sf_atomic_int forked;
    sf_atomic_u32 live; /* running workers */
    int steal;          /* set once before the workers start */
    SF_PAD(_pad3);
    /* Bit i: worker i (i < 64) is idle and may be woken to steal. Written by workers when
     * they park and wake; read by producers after each push in stealing pools. */
    sf_atomic_u64 idle_mask;
    SF_PAD(_pad4);
    /* Incremented by flush(); a worker that sees it change hands over its partial batch
     * and stores the value in its counters' `flushed`. */
    sf_atomic_u64 flush_seq;
    sf_atomic_u64 flush_active; /* flush() calls in progress */
    sf_atomic_u64 flush_holds;  /* steals in progress (see _sched.h, "Flush and stealing") */
    sf_event done_ev;   /* notified each time a worker exits */
    SF_PAD(_pad2);
} sf_pool;

static inline int sf_pool_init(sf_pool *p) {
    atomic_init(&p->rr, 0);
    atomic_init(&p->stop, SF_STOP_NONE);
    atomic_init(&p->forked, 0);
    atomic_init(&p->live, 0);
    atomic_init(&p->idle_mask, 0);
    atomic_init(&p->flush_seq, 0);
    atomic_init(&p->flush_active, 0);
    atomic_init(&p->flush_holds, 0);
    p->steal = 0;
    return sf_event_init(&p->done_ev);
}

static inline void sf_pool_destroy(sf_pool *p) { sf_event_destroy(&p->done_ev); }

static inline uint64_t sf_pool_next_shard(sf_pool *p, uint64_t nshards) {
    uint64_t i = sf_load_relaxed_u64(&p->rr);
    uint64_t next = i + 1;
    if (i >= nshards) i = 0; /* only after a racing store; keep the result in range */
    if (next >= nshards) next = 0;
    sf_store_relaxed_u64(&p->rr, next);
    return i;
}

static inline void sf_pool_worker_started(sf_pool *p) { sf_fetch_add_seqcst_u32(&p->live, 1); }

/* Release: everything the worker did (counters, hand-backs) is visible to the joiner that
 * acquires live == 0. */
static inline void sf_pool_worker_exited(sf_pool *p) {
    sf_fetch_sub_release_u32(&p->live, 1);
    sf_event_notify(&p->done_ev);
}

/* Wait until no worker runs or the deadline passes. Returns 1 when none runs. */
static inline int sf_pool_wait_idle(sf_pool *p, int64_t deadline_ns) {
    for (;;) {
        uint32_t key;
        if (sf_load_acquire_u32(&p->live) == 0) return 1;
        if (deadline_ns >= 0 && sf_now_ns() >= deadline_ns) return 0;
        key = sf_event_prepare(&p->done_ev);
        if (sf_load_acquire_u32(&p->live) == 0) {
            sf_event_cancel(&p->done_ev, key);
            return 1;
        }
        sf_event_wait(&p->done_ev, key, deadline_ns);
    }
}

#endif /* SF_POOL_H */
