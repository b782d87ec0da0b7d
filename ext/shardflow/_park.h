/* sf_event: park/unpark without lost wake-ups and without a system call when nobody sleeps.
 *
 * It is an eventcount (the design of folly's EventCount): one 64-bit word holds the epoch
 * (high 32 bits) and the number of announced waiters (low 32 bits), so announcing and
 * reading the epoch is one atomic step, and a notify consumes every announcement at once:
 *
 *   waiter                                        notifier
 *   ------                                        --------
 *   W1 key = epoch(word += 1)        (seq_cst)    N1 publish data          (release store)
 *   W2 fence                         (seq_cst)    N2 fence                 (seq_cst)
 *   W3 if condition(): cancel(key); return        N3 if waiters(word) == 0: return
 *   W4 lock; while epoch(word) == key:            N4 CAS word -> (epoch+1, waiters 0)
 *          cond_wait; unlock                      N5 lock; broadcast; unlock
 *
 *   cancel(key) / timeout: CAS word -> waiters - 1, but only while epoch(word) == key; once
 *   the epoch moved, a notifier already consumed this waiter's announcement.
 *
 * No lost wake-up: the two seq_cst fences order W1 against N3. Either N3 sees the
 * announcement (N4 then moves the epoch; W4 either sees the new epoch before sleeping, or is
 * inside cond_wait when N5's broadcast comes, since N5 takes the mutex W4 holds while it
 * checks), or W3 sees the data published by N1. An announcement made after N4 carries the
 * new epoch as its key, so it is never consumed by a notify that came before it.
 *
 * Consuming announcements matters for throughput: after one notify the word shows no waiter,
 * so the pushes that follow stay on the fast path until the worker sleeps again (with a
 * plain waiter count, every push until the woken worker retired its count would take the
 * mutex and broadcast).
 *
 * Cheaper notifier (sf_event_notify_after_rmw). When the publication itself is a seq_cst
 * read-modify-write of the very variable the waiter re-checks at W3 (the ring's claim CAS
 * on `tail`, the drain CAS on `head`), N1-N2 collapse into that RMW and N3 becomes a
 * seq_cst load: the Dekker pair is then (that variable, word), ordered by the total order
 * over seq_cst operations, and the fast path has no fence at all (on x86 a plain load).
 * The waiter side is unchanged: W2's fence precedes its load of the variable.
 *
 * Cost when nobody sleeps: one load per notify (plus a fence for the generic notify); no
 * syscall, no lock. Spurious wake-ups are allowed (a broadcast wakes every waiter; each
 * re-checks its condition). The protocol is model-checked in tools/model/park.pml.
 *
 * The OS layer below (mutex, condition variable with a monotonic deadline, clock) is the
 * only platform-specific code in the core.
 */
#ifndef SF_PARK_H
#define SF_PARK_H

#include <stdint.h>
#include "shardflow/_atomic.h"

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
typedef SRWLOCK sf_mutex;
typedef CONDITION_VARIABLE sf_cond;
#else
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
typedef pthread_mutex_t sf_mutex;
typedef pthread_cond_t sf_cond;
#endif

/* ---------------- monotonic clock ---------------- */

static inline int64_t sf_now_ns(void) {
#if defined(_WIN32)
    static LARGE_INTEGER freq; /* benign: every thread computes the same value */
    LARGE_INTEGER now;
    if (freq.QuadPart == 0) QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (int64_t)((double)now.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

static inline void sf_thread_yield(void) {
#if defined(_WIN32)
    SwitchToThread();
#else
    sched_yield();
#endif
}

/* ---------------- mutex + condition variable ---------------- */

static inline int sf_mutex_init(sf_mutex *m) {
#if defined(_WIN32)
    InitializeSRWLock(m);
    return 0;
#else
    return pthread_mutex_init(m, NULL);
#endif
}
static inline void sf_mutex_destroy(sf_mutex *m) {
#if !defined(_WIN32)
    pthread_mutex_destroy(m);
#else
    (void)m;
#endif
}
static inline void sf_mutex_lock(sf_mutex *m) {
#if defined(_WIN32)
    AcquireSRWLockExclusive(m);
#else
    pthread_mutex_lock(m);
#endif
}
static inline void sf_mutex_unlock(sf_mutex *m) {
#if defined(_WIN32)
    ReleaseSRWLockExclusive(m);
#else
    pthread_mutex_unlock(m);
#endif
}

static inline int sf_cond_init(sf_cond *c) {
#if defined(_WIN32)
    InitializeConditionVariable(c);
    return 0;
#elif defined(__APPLE__)
    return pthread_cond_init(c, NULL);
#else
    /* Deadlines are on CLOCK_MONOTONIC so that a wall-clock jump cannot stretch a wait. */
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc) return rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (!rc) rc = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
#endif
}
static inline void sf_cond_destroy(sf_cond *c) {
#if !defined(_WIN32)
    pthread_cond_destroy(c);
#else
    (void)c;
#endif
}
static inline void sf_cond_broadcast(sf_cond *c) {
#if defined(_WIN32)
    WakeAllConditionVariable(c);
#else
    pthread_cond_broadcast(c);
#endif
}
/* Wait until signalled or until the monotonic deadline (ns; < 0 = no deadline).
 * The mutex is held on entry and on return. Spurious returns are allowed. */
static inline void sf_cond_wait_until(sf_cond *c, sf_mutex *m, int64_t deadline_ns) {
#if defined(_WIN32)
    DWORD ms = INFINITE;
    if (deadline_ns >= 0) {
        int64_t left = deadline_ns - sf_now_ns();
        ms = left <= 0 ? 0 : (DWORD)((left + 999999) / 1000000);
    }
    SleepConditionVariableSRW(c, m, ms, 0);
#elif defined(__APPLE__)
    if (deadline_ns < 0) {
        pthread_cond_wait(c, m);
    } else {
        int64_t left = deadline_ns - sf_now_ns();
        if (left <= 0) return;
        struct timespec rel = {(time_t)(left / 1000000000LL), (long)(left % 1000000000LL)};
        pthread_cond_timedwait_relative_np(c, m, &rel);
    }
#else
    if (deadline_ns < 0) {
        pthread_cond_wait(c, m);
    } else {
        struct timespec abs = {(time_t)(deadline_ns / 1000000000LL),
                               (long)(deadline_ns % 1000000000LL)};
        pthread_cond_timedwait(c, m, &abs);
    }
#endif
}

/* ---------------- the eventcount ---------------- */

#define SF_EV_WAITER ((uint64_t)1)
#define SF_EV_EPOCH ((uint64_t)1 << 32)
#define SF_EV_WAITERS(w) ((uint32_t)((w) & 0xffffffffu))
#define SF_EV_EPOCH_OF(w) ((uint32_t)((w) >> 32))

typedef struct sf_event {
    sf_atomic_u64 word; /* epoch << 32 | announced waiters */
    sf_mutex mu;
    sf_cond cv;
} sf_event;

static inline int sf_event_init(sf_event *e) {
    atomic_init(&e->word, 0);
    if (sf_mutex_init(&e->mu)) return -1;
    if (sf_cond_init(&e->cv)) {
        sf_mutex_destroy(&e->mu);
        return -1;
    }
    return 0;
}

static inline void sf_event_destroy(sf_event *e) {
    sf_cond_destroy(&e->cv);
    sf_mutex_destroy(&e->mu);
}

/* W1-W2: announce, then return the key to pass to sf_event_wait. The caller must re-check
 * its condition after this and call sf_event_cancel(e, key) if it no longer needs to wait. */
static inline uint32_t sf_event_prepare(sf_event *e) {
    uint64_t w = sf_fetch_add_seqcst_u64(&e->word, SF_EV_WAITER);
    sf_fence_seqcst();
    return SF_EV_EPOCH_OF(w);
}

/* Retire an announcement unless a notify already consumed it. */
static inline void sf_event_cancel(sf_event *e, uint32_t key) {
    uint64_t w = sf_load_relaxed_u64(&e->word);
    while (SF_EV_EPOCH_OF(w) == key && SF_EV_WAITERS(w) != 0) {
        if (sf_cas_weak_seqcst_u64(&e->word, &w, w - SF_EV_WAITER)) return;
    }
}

/* W4: sleep until a notify after `key`, or the deadline (ns, monotonic; < 0: none).
 * Returns 1 when notified, 0 on timeout (the announcement is then retired). */
static inline int sf_event_wait(sf_event *e, uint32_t key, int64_t deadline_ns) {
    int notified = 0;
    sf_mutex_lock(&e->mu);
    for (;;) {
        if (SF_EV_EPOCH_OF(sf_load_acquire_u64(&e->word)) != key) {
            notified = 1;
            break;
        }
        if (deadline_ns >= 0 && sf_now_ns() >= deadline_ns) break;
        sf_cond_wait_until(&e->cv, &e->mu, deadline_ns);
    }
    sf_mutex_unlock(&e->mu);
    if (!notified) sf_event_cancel(e, key);
    return notified;
}

/* N4-N5: consume every announcement and move the epoch; wake the sleepers. */
static inline void sf_event_notify_slow(sf_event *e) {
    uint64_t w = sf_load_relaxed_u64(&e->word);
    for (;;) {
        if (SF_EV_WAITERS(w) == 0) return; /* another notifier consumed them */
        if (sf_cas_weak_seqcst_u64(&e->word, &w, (w & ~(uint64_t)0xffffffffu) + SF_EV_EPOCH))
            break;
    }
    sf_mutex_lock(&e->mu);
    sf_cond_broadcast(&e->cv);
    sf_mutex_unlock(&e->mu);
}

/* N2-N5: call after publishing. A fence and a load unless somebody sleeps. */
static inline void sf_event_notify(sf_event *e) {
    sf_fence_seqcst();
    if (SF_EV_WAITERS(sf_load_relaxed_u64(&e->word)) != 0) sf_event_notify_slow(e);
}

/* N3-N5 for a publisher whose publication was a seq_cst RMW of the variable the waiter
 * re-checks (see above). Call after that RMW (and after any release store that makes the
 * data itself visible). */
static inline void sf_event_notify_after_rmw(sf_event *e) {
    if (SF_EV_WAITERS(sf_load_seqcst_u64(&e->word)) != 0) sf_event_notify_slow(e);
}

#endif /* SF_PARK_H */
