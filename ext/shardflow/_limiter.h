/* sf_limiter: a counting semaphore; sf_rate: a token bucket. Both lock-free when uncontended.
 *
 * Limiter. `count` is the number of permits in use. Acquire is one CAS (count < limit ->
 * count + 1); release is one CAS (count > 0 -> count - 1, so an over-release is detected
 * rather than corrupting the count). Both are seq_cst RMWs: they are the publication side
 * of the parking protocols below.
 *
 * Unfair mode parks on an sf_event (see _park.h): a waiter announces itself, re-checks
 * with a try-acquire, then sleeps; release notifies with sf_event_notify_after_rmw, whose
 * Dekker pair is (count, event waiters). Woken waiters race for the permit (barging).
 *
 * Fair mode (FIFO): blocked threads queue under `qmu` in arrival order. A release with a
 * non-empty queue hands permits to the queue head directly (count stays up, the head's
 * `granted` flag is set with release order, the event is notified), so a newcomer cannot
 * take a permit a queued thread was owed; the fast path also refuses while anyone is
 * queued (qlen != 0). Dekker pair between an enqueuing waiter and a releaser:
 *
 *   waiter (holding qmu)                       releaser
 *   Q1 qlen += 1                 (seq_cst)     R1 count -= 1             (seq_cst CAS)
 *   Q2 if head is me: try count += 1 (seq_cst) R2 if qlen != 0: grant    (seq_cst load)
 *
 * Either Q2 sees R1's decrement and takes the permit itself, or R2 sees the waiter and
 * grants under qmu (after the waiter released qmu, so the waiter is in the queue). A
 * waiter that gives up (timeout, signal) unlinks itself under qmu, or, if it was granted
 * in between, keeps the permit (a timeout then reports success) or releases it.
 *
 * Rate limiter: the token bucket is kept as a "theoretical arrival time" (GCRA) in one
 * atomic: tokens available at `now` = (now + burst*cost - max(tat, now)) / cost, where
 * cost is the ns one token takes to refill. Taking k tokens advances tat by k*cost with a
 * CAS, refill being computed lazily from the clock; a blocking acquire may reserve tokens
 * in the future (advance tat past now + burst*cost) and sleep until they are due, which
 * serves blocked callers in reservation order.
 */
#ifndef SF_LIMITER_H
#define SF_LIMITER_H

#include <stdint.h>
#include "shardflow/_atomic.h"
#include "shardflow/_park.h"

typedef struct sf_lim_waiter {
    struct sf_lim_waiter *next;
    sf_atomic_int granted;
} sf_lim_waiter;

typedef struct sf_limiter {
    SF_PAD(_pad0);
    sf_atomic_u64 count;
    SF_PAD(_pad1);
    sf_atomic_u64 qlen;     /* fair mode: threads queued */
    sf_atomic_u64 waiting;  /* threads (and async tasks) waiting, for metrics */
    sf_atomic_u64 timeouts; /* acquires that gave up (timeout or non-blocking refusal) */
    sf_atomic_u64 acquired; /* acquires that waited (slow path) and succeeded */
    sf_atomic_u64 probe_inside; /* test-only (_hammer): threads inside the bound now */
    sf_atomic_u64 probe_max;    /* test-only (_hammer): most ever seen inside */
    uint64_t limit;
    int fair;
    sf_mutex qmu;
    sf_lim_waiter *head, *tail; /* guarded by qmu */
    sf_event ev;
    SF_PAD(_pad2);
} sf_limiter;

static inline int sf_limiter_init(sf_limiter *l, uint64_t limit, int fair) {
    atomic_init(&l->count, 0);
    atomic_init(&l->qlen, 0);
    atomic_init(&l->waiting, 0);
    atomic_init(&l->timeouts, 0);
    atomic_init(&l->acquired, 0);
    atomic_init(&l->probe_inside, 0);
    atomic_init(&l->probe_max, 0);
    l->limit = limit;
    l->fair = fair;
    l->head = l->tail = NULL;
    if (sf_mutex_init(&l->qmu)) return -1;
    if (sf_event_init(&l->ev)) {
        sf_mutex_destroy(&l->qmu);
        return -1;
    }
    return 0;
}

static inline void sf_limiter_destroy(sf_limiter *l) {
    sf_event_destroy(&l->ev);
    sf_mutex_destroy(&l->qmu);
}

/* count < limit -> count + 1. */
static inline int sf_limiter_take(sf_limiter *l) {
    uint64_t c = sf_load_relaxed_u64(&l->count);
    while (c < l->limit) {
        if (sf_cas_strong_seqcst_u64(&l->count, &c, c + 1)) return 1;
    }
    return 0;
}

/* The fast path: one load + one CAS. Fair mode refuses while threads are queued. */
static inline int sf_limiter_try_acquire(sf_limiter *l) {
    if (l->fair && sf_load_seqcst_u64(&l->qlen) != 0) return 0;
    return sf_limiter_take(l);
}

/* Fair mode: hand permits to queued threads, oldest first, while permits are free. */
static inline void sf_limiter_grant(sf_limiter *l) {
    int any = 0;
    sf_mutex_lock(&l->qmu);
    while (l->head != NULL && sf_limiter_take(l)) {
        sf_lim_waiter *w = l->head;
        l->head = w->next;
        if (l->head == NULL) l->tail = NULL;
        sf_fetch_sub_relaxed_u64(&l->qlen, 1);
        sf_store_release_int(&w->granted, 1);
        any = 1;
    }
    sf_mutex_unlock(&l->qmu);
    if (any) sf_event_notify(&l->ev);
}

/* Returns 0, or -1 when nothing is held (over-release; the count is left unchanged). */
static inline int sf_limiter_release(sf_limiter *l) {
    uint64_t c = sf_load_relaxed_u64(&l->count);
    for (;;) {
        if (c == 0) return -1;
        if (sf_cas_strong_seqcst_u64(&l->count, &c, c - 1)) break;
    }
    if (l->fair) {
        if (sf_load_seqcst_u64(&l->qlen) != 0) sf_limiter_grant(l);
    } else {
        sf_event_notify_after_rmw(&l->ev);
    }
    return 0;
}

/* Unfair: one park slice. Returns 1 with a permit, 0 when the deadline passed or the slice
 * ended (the caller re-checks signals and its own deadline and calls again). */
static inline int sf_limiter_wait_unfair(sf_limiter *l, int64_t deadline_ns) {
    uint32_t key = sf_event_prepare(&l->ev);
    if (sf_limiter_take(l)) {
        sf_event_cancel(&l->ev, key);
        return 1;
    }
    sf_event_wait(&l->ev, key, deadline_ns);
    return sf_limiter_take(l);
}

/* Fair: join the queue. Returns 1 if a permit was taken at once (not queued). */
static inline int sf_limiter_enqueue(sf_limiter *l, sf_lim_waiter *w) {
    w->next = NULL;
    atomic_init(&w->granted, 0);
    sf_mutex_lock(&l->qmu);
    if (l->tail) l->tail->next = w; else l->head = w;
    l->tail = w;
    sf_fetch_add_seqcst_u64(&l->qlen, 1);
    if (l->head == w && sf_limiter_take(l)) {
        l->head = NULL;
        l->tail = NULL;
        sf_fetch_sub_relaxed_u64(&l->qlen, 1);
        sf_mutex_unlock(&l->qmu);
        return 1;
    }
    sf_mutex_unlock(&l->qmu);
    return 0;
}

/* Fair: one park slice. Returns 1 once granted. */
static inline int sf_limiter_wait_fair(sf_limiter *l, sf_lim_waiter *w, int64_t deadline_ns) {
    uint32_t key = sf_event_prepare(&l->ev);
    if (sf_load_acquire_int(&w->granted)) {
        sf_event_cancel(&l->ev, key);
        return 1;
    }
    sf_event_wait(&l->ev, key, deadline_ns);
    return sf_load_acquire_int(&w->granted);
}

/* Fair: stop waiting. Returns 1 if the permit was granted meanwhile (the caller owns it). */
static inline int sf_limiter_abandon(sf_limiter *l, sf_lim_waiter *w) {
    sf_lim_waiter *p, *prev = NULL;
    int granted;
    sf_mutex_lock(&l->qmu);
    granted = sf_load_acquire_int(&w->granted);
    if (!granted) {
        for (p = l->head; p != NULL; prev = p, p = p->next) {
            if (p == w) {
                if (prev) prev->next = w->next; else l->head = w->next;
                if (l->tail == w) l->tail = prev;
                sf_fetch_sub_relaxed_u64(&l->qlen, 1);
                break;
            }
        }
    }
    sf_mutex_unlock(&l->qmu);
    /* If we were the head, the next one may be owed a permit that is free now. */
    if (!granted && sf_load_seqcst_u64(&l->qlen) != 0) sf_limiter_grant(l);
    return granted;
}

/* ---------------- token bucket (GCRA) ---------------- */

typedef struct sf_rate {
    SF_PAD(_pad0);
    sf_atomic_u64 tat; /* int64 theoretical arrival time (ns), stored as uint64 */
    SF_PAD(_pad1);
    sf_atomic_u64 acquired; /* tokens handed out */
    sf_atomic_u64 rejected; /* acquires refused (non-blocking or timed out) */
    int64_t cost_ns;        /* ns per token */
    int64_t burst_ns;       /* burst * cost_ns */
    SF_PAD(_pad2);
} sf_rate;

static inline void sf_rate_init(sf_rate *r, int64_t cost_ns, int64_t burst) {
    /* Far in the past: the bucket starts full whatever the clock's origin. */
    atomic_init(&r->tat, (uint64_t)(INT64_MIN / 4));
    atomic_init(&r->acquired, 0);
    atomic_init(&r->rejected, 0);
    r->cost_ns = cost_ns;
    r->burst_ns = burst * cost_ns;
}

/* Take k tokens at `now` if they are available within max_wait_ns (0: only if available
 * now). Returns the ns to wait before using them (0: now) and sets *ok = 1; or sets
 * *ok = 0 and returns how long until k tokens would be available. */
static inline int64_t sf_rate_take(sf_rate *r, int64_t k, int64_t now, int64_t max_wait_ns,
                                   int *ok) {
    uint64_t t = sf_load_relaxed_u64(&r->tat);
    for (;;) {
        int64_t tat = (int64_t)t;
        int64_t base = tat > now ? tat : now;
        int64_t new_tat = base + k * r->cost_ns;
        int64_t wait = new_tat - r->burst_ns - now;
        if (wait > max_wait_ns) {
            *ok = 0;
            return wait;
        }
        if (sf_cas_acqrel_u64(&r->tat, &t, (uint64_t)new_tat)) {
            sf_fetch_add_relaxed_u64(&r->acquired, (uint64_t)k);
            *ok = 1;
            return wait > 0 ? wait : 0;
        }
    }
}

/* Tokens available at `now` (negative when tokens are reserved ahead)
 */
static inline double sf_rate_available(sf_rate *r, int64_t now) {
    int64_t tat = (int64_t)sf_load_relaxed_u64(&r->tat);
    int64_t base = tat > now ? tat : now;
    return (double)(now + r->burst_ns - base) / (double)r->cost_ns;
}

#endif /* SF_LIMITER_H */
