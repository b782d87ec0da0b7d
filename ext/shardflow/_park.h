/* sf_event: park/unpark without lost wake-ups and without a system call when nobody sleeps.
 *
 * It is an eventcount. A waiter announces itself, re-checks its condition, and only then
 * sleeps; a notifier publishes its data and looks for announced waiters:
 *
 *   waiter                                   notifier
 *   ------                                   --------
 *   W1 waiters += 1            (seq_cst)     N1 publish data          (release store)
 *   W2 fence                   (seq_cst)     N2 fence                 (seq_cst)
 *   W3 key = epoch             (acquire)     N3 if waiters == 0: return   (relaxed)
 *   W4 if condition(): waiters -= 1; return  N4 lock; epoch += 1; broadcast; unlock
 *   W5 lock; while epoch == key: cond_wait; unlock; waiters -= 1
 *
 * No lost wake-up: the two seq_cst fences order W1 against N3. Either N3 sees the waiter
 * (it then bumps epoch under the mutex: W5 either sees the new epoch before sleeping or is
 * already inside cond_wait and gets the broadcast), or W4 sees the data published by N1.
 * A notify between W1 and W3 is harmless: W3 then reads the bumped epoch with acquire,
 * which makes N1's data visible to W4.
 *
 * Cheaper notifier (sf_event_notify_after_rmw). When the publication itself is a seq_cst
 * read-modify-write of the very variable the waiter re-checks at W4 (the ring's claim CAS
 * on `tail`, the drain CAS on `head`), N1-N2 collapse into that RMW and N3 becomes a
 * seq_cst load: the Dekker pair is then (that variable, waiters), ordered by the total
 * order over seq_cst operations, and the fast path has no fence at all (on x86 a plain
 * load). The waiter side is unchanged: W2's fence precedes its load of the variable.
 *
 * Cost when nobody sleeps: one load per notify (plus a fence for the generic notify);
 * no syscall, no lock.
 * Spurious wake-ups are allowed (a broadcast wakes every waiter; each re-checks).
 * The protocol is model-checked in tools/model/park.pml.
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

typedef struct sf_event {
    sf_atomic_u32 waiters;
    sf_atomic_u32 epoch;
    sf_mutex mu;
    sf_cond cv;
} sf_event;

static inline int sf_event_init(sf_event *e) {
    atomic_init(&e->waiters, 0);
    atomic_init(&e->epoch, 0);
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

/* W1-W3: announce, then return the key to pass to sf_event_wait. The caller must re-check
 * its condition after this and call sf_event_cancel if it no longer needs to wait. */
static inline uint32_t sf_event_prepare(sf_event *e) {
    sf_fetch_add_seqcst_u32(&e->waiters, 1);
    sf_fence_seqcst();
    return sf_load_acquire_u32(&e->epoch);
}

static inline void sf_event_cancel(sf_event *e) { sf_fetch_sub_relaxed_u32(&e->waiters, 1); }

/* W5: sleep until a notify after `key`, or the deadline (ns, monotonic; < 0: none).
 * Returns 1 when woken by a notify, 0 on timeout. Always retires the announcement. */
static inline int sf_event_wait(sf_event *e, uint32_t key, int64_t deadline_ns) {
    int notified = 0;
    sf_mutex_lock(&e->mu);
    for (;;) {
        if (sf_load_relaxed_u32(&e->epoch) != key) {
            notified = 1;
            break;
        }
        if (deadline_ns >= 0 && sf_now_ns() >= deadline_ns) break;
        sf_cond_wait_until(&e->cv, &e->mu, deadline_ns);
    }
    sf_mutex_unlock(&e->mu);
    sf_fetch_sub_relaxed_u32(&e->waiters, 1);
    return notified;
}

static inline void sf_event_notify_slow(sf_event *e) {
    sf_mutex_lock(&e->mu);
    sf_store_release_u32(&e->epoch, sf_load_relaxed_u32(&e->epoch) + 1);
    sf_cond_broadcast(&e->cv);
    sf_mutex_unlock(&e->mu);
}

/* N2-N4: call after publishing. A fence and a load unless somebody sleeps. */
static inline void sf_event_notify(sf_event *e) {
    sf_fence_seqcst();
    if (sf_load_relaxed_u32(&e->waiters) != 0) sf_event_notify_slow(e);
}

/* N3-N4 for a publisher whose publication was a seq_cst RMW of the variable the waiter
 * re-checks (see above). Call after that RMW (and after any release store that makes the
 * data itself visible). */
static inline void sf_event_notify_after_rmw(sf_event *e) {
    if (sf_load_seqcst_u32(&e->waiters) != 0) sf_event_notify_slow(e);
}

#endif /* SF_PARK_H */
