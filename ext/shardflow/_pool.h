/* sf_pool: the state a pool shares across its shards: the round-robin cursor, the stop and
 * fork flags, the count of live workers that join() waits on, and the count of workers
 * waiting for the GIL that submit_many hands it to.
 *
 * GIL hand-off (why submit_many pauses before a ring is full). Under the GIL a producer
 * inside submit_many runs compiled code that never offers the GIL to anybody, so the workers
 * it woke wait for the GIL until a ring is FULL: with the default capacity that is 65,536
 * items per shard in flight, megabytes of freshly allocated objects that the allocator
 * returns to the OS once the workers freed them and faults in again on the next round
 * (measured with no-op items: ~4,000 page faults per million items, about half the run
 * time, and run times that vary 2x with the allocator's state). So a worker that took items
 * says so while it waits for the GIL, and a producer that finds such a worker with `high`
 * or more items queued on the shard it pushed to gives the GIL away until the workers hold
 * it:
 *
 *   worker (took items, GIL released)            producer (holds the GIL)
 *   ------                                       --------
 *   G1 gil_waiting += 1        (relaxed RMW)     P1 push; depth(shard) >= high and
 *   G2 take the GIL (blocks while others hold)      gil_waiting > 0?
 *   G3 gil_waiting -= 1        (seq_cst RMW)     P2 release the GIL
 *   G4 if it became 0: notify_after_rmw(gil_ev) P3 key = prepare(gil_ev)   (RMW + fence)
 *                                                P4 if gil_waiting == 0: cancel; done
 *                                                P5 sleep until notified or the deadline;
 *                                                   back to P4
 *                                                P6 take the GIL back (a worker keeps it
 *                                                   while its ring has items, so this comes
 *                                                   after the workers emptied their rings)
 *
 * G3-G4 against P3-P4 is the eventcount's Dekker pair with the cheaper notifier (_park.h):
 * the decrement is a seq_cst RMW of the counter P4 re-checks. The pause is a hint with a
 * deadline (the interpreter's switch interval, 5 ms): it never makes a submit fail or drop,
 * and a worker inside a handler does not count, so a slow handler never pauses anybody. It
 * bounds what is in flight to about `high` items per shard, and costs a worker two RMWs
 * and a load per wake-up (not per item). */
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
    sf_atomic_u32 gil_waiting; /* workers holding taken items while they wait for the GIL */
    sf_event gil_ev;           /* a producer handing the GIL over waits here */
    SF_PAD(_pad5);
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
    atomic_init(&p->gil_waiting, 0);
    p->steal = 0;
    if (sf_event_init(&p->done_ev)) return -1;
    if (sf_event_init(&p->gil_ev)) {
        sf_event_destroy(&p->done_ev);
        return -1;
    }
    return 0;
}

static inline void sf_pool_destroy(sf_pool *p) {
    sf_event_destroy(&p->gil_ev);
    sf_event_destroy(&p->done_ev);
}

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

/* G1: a worker took items and is about to wait for the GIL. */
static inline void sf_pool_want_gil(sf_pool *p) {
    sf_fetch_add_relaxed_u32(&p->gil_waiting, 1);
}

/* G3-G4: that worker holds the GIL; wake a producer waiting for the last such worker. */
static inline void sf_pool_got_gil(sf_pool *p) {
    if (sf_fetch_sub_seqcst_u32(&p->gil_waiting, 1) == 1)
        sf_event_notify_after_rmw(&p->gil_ev);
}

/* P1's test for a producer that pushed to a ring now holding `depth` items. */
static inline int sf_pool_should_hand_gil(sf_pool *p, uint64_t depth, uint64_t high) {
    return depth >= high && sf_load_relaxed_u32(&p->gil_waiting) != 0;
}

/* P3-P5: wait until no worker waits for the GIL, or the deadline (monotonic ns; < 0: none).
 * Returns 1 when none waits, 0 on timeout. Call without the GIL. */
static inline int sf_pool_wait_gil_taken(sf_pool *p, int64_t deadline_ns) {
    for (;;) {
        uint32_t key;
        if (sf_load_acquire_u32(&p->gil_waiting) == 0) return 1;
        if (deadline_ns >= 0 && sf_now_ns() >= deadline_ns) return 0;
        key = sf_event_prepare(&p->gil_ev);
        if (sf_load_acquire_u32(&p->gil_waiting) == 0) {
            sf_event_cancel(&p->gil_ev, key);
            return 1;
        }
        sf_event_wait(&p->gil_ev, key, deadline_ns);
    }
}

#endif /* SF_POOL_H */
