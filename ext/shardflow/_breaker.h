/* sf_breaker: a circuit breaker's state machine in atomics.
 *
 * State word. `state` packs a generation and a state: (gen << 3) | st. Every transition is
 * one CAS from the word the caller observed to (gen + 1, new state), so under any
 * concurrency each transition happens exactly once and its winner alone reports it (the
 * Python layer then calls the listeners once). A caller's "token" is the state word it was
 * admitted under; outcomes recorded with a token of an older generation never move the
 * state machine (their CAS fails, their half-open bookkeeping has the wrong generation).
 *
 *   closed ──trip policy──► open ──reset timeout──► half_open ──success_threshold──► closed
 *                            ▲                          │
 *                            └────────one failure───────┘
 *   forced_open, disabled: set by hand (sf_breaker_force); closed by hand again resets.
 *
 * Closed state, common case (no lock, no clock): the admission check is one acquire load of
 * `state`; a success records with one relaxed fetch_add of `calls`, a relaxed load of
 * `consecutive` and, with a sliding window, a fetch_add + exchange on the window. The trip
 * policy is only evaluated on a failure or a slow call.
 *
 * Half-open permits. `ho` packs (low 32 bits of gen) << 32 | successes << 16 | in-flight
 * trials. Admission is a CAS that increments in-flight only while it is below
 * half_open_max_calls and the generation matches. In-flight trials are counted across
 * generations: every trial gives its permit back when it ends, even after the state moved
 * on (a trial still running from an earlier half-open period keeps its slot), so no more
 * than half_open_max_calls trials ever run at once, full stop. The opener starts the new
 * generation in `ho` (successes 0) before its state CAS (release), with a CAS that only
 * moves `ho` forward, so a slow contender cannot clobber a newer generation. The success
 * that brings this generation's successes to exactly success_threshold clears the
 * closed-state statistics and then closes (CAS); one failure reopens (CAS).
 *
 * Open time. The opener publishes opened_ns then opened_gen (release). A reader in OPEN of
 * generation g that does not yet see opened_gen == g treats the breaker as just opened.
 *
 * Windows (statistics only, approximate under races by design: a record racing a clear or
 * a bucket rotation may be counted in the neighbouring period; single-threaded they are
 * exact, which is what the model test checks):
 *   count: a ring of N outcome slots; a record takes a slot by fetch_add on `seq`,
 *          exchanges its outcome in, and adjusts aggregate counters by the difference.
 *   time:  nb buckets of width T/nb keyed by epoch = now / width. The first recorder of a
 *          new epoch claims the bucket by CAS (epoch | ROTATING), zeroes it, publishes the
 *          epoch (release); others spin the few instructions that takes. Totals sum the
 *          buckets whose epoch lies in the last nb widths.
 */
#ifndef SF_BREAKER_H
#define SF_BREAKER_H

#include <stdint.h>
#include <stdlib.h>
#include "shardflow/_atomic.h"

enum {
    SF_BR_CLOSED = 0,
    SF_BR_OPEN = 1,
    SF_BR_HALF_OPEN = 2,
    SF_BR_FORCED_OPEN = 3,
    SF_BR_DISABLED = 4
};
#define SF_BR_STATE(w) ((int)((w) & 7u))
#define SF_BR_GEN(w) ((w) >> 3)
#define SF_BR_WORD(gen, st) ((((uint64_t)(gen)) << 3) | (uint64_t)(st))
#define SF_BR_TRANS(old, new_) (((old) << 4) | (new_))

/* Outcome flags for sf_breaker_record. */
enum { SF_BR_OK = 0, SF_BR_FAIL = 1, SF_BR_SLOW = 2, SF_BR_IGNORE = 4 };
/* Results of sf_breaker_acquire. */
enum { SF_BR_REJECT = 0, SF_BR_ALLOW = 1, SF_BR_TRIAL = 2 };
/* Window kinds. */
enum { SF_WIN_NONE = 0, SF_WIN_COUNT = 1, SF_WIN_TIME = 2 };

#define SF_HO_WORD(gen32, succ, inflight) \
    ((((uint64_t)(uint32_t)(gen32)) << 32) | (((uint64_t)(succ)) << 16) | (uint64_t)(inflight))
#define SF_HO_GEN(p) ((uint32_t)((p) >> 32))
#define SF_HO_SUCC(p) ((uint32_t)(((p) >> 16) & 0xffffu))
#define SF_HO_INFLIGHT(p) ((uint32_t)((p) & 0xffffu))

#define SF_SLOT_VALID 1u
#define SF_BUCKET_ROTATING (1ull << 63)

typedef struct sf_bucket {
    sf_atomic_u64 epoch; /* epoch + 1; 0 = never used; | ROTATING while being zeroed */
    sf_atomic_u64 calls;
    sf_atomic_u64 fails;
    sf_atomic_u64 slow;
} sf_bucket;

typedef struct sf_breaker {
    /* read by every call: alone on its lines */
    SF_PAD(_pad0);
    sf_atomic_u64 state;
    SF_PAD(_pad1);
    /* written by every call */
    sf_atomic_u64 calls;
    sf_atomic_u64 consecutive;
    sf_atomic_u64 failures;
    sf_atomic_u64 slow_calls;
    sf_atomic_u64 rejections;
    SF_PAD(_pad2);
    sf_atomic_u64 ho;
    sf_atomic_u64 opened_gen;
    sf_atomic_u64 opened_ns;
    /* sliding window */
    sf_atomic_u64 seq;
    sf_atomic_u64 agg_calls;
    sf_atomic_u64 agg_fails;
    sf_atomic_u64 agg_slow;
    sf_atomic_u32 *slots;
    sf_bucket *buckets;
    /* configuration: written once before the breaker is shared */
    int win_kind;
    uint64_t win_size;   /* count window: N slots; time window: number of buckets */
    int64_t width_ns;    /* time window: bucket width */
    uint64_t max_failures;  /* 0: no consecutive-failure policy */
    double failure_rate;    /* <= 0: off */
    double slow_rate;       /* <= 0: off */
    uint64_t minimum_calls;
    int64_t reset_ns;
    uint32_t ho_max;
    uint32_t success_threshold;
    SF_PAD(_pad3);
} sf_breaker;

/* Zero everything; configuration is then set by the caller. */
static inline void sf_breaker_zero(sf_breaker *b) {
    atomic_init(&b->state, SF_BR_WORD(0, SF_BR_CLOSED));
    atomic_init(&b->calls, 0);
    atomic_init(&b->consecutive, 0);
    atomic_init(&b->failures, 0);
    atomic_init(&b->slow_calls, 0);
    atomic_init(&b->rejections, 0);
    atomic_init(&b->ho, 0);
    atomic_init(&b->opened_gen, 0);
    atomic_init(&b->opened_ns, 0);
    atomic_init(&b->seq, 0);
    atomic_init(&b->agg_calls, 0);
    atomic_init(&b->agg_fails, 0);
    atomic_init(&b->agg_slow, 0);
    b->slots = NULL;
    b->buckets = NULL;
    b->win_kind = SF_WIN_NONE;
    b->win_size = 0;
    b->width_ns = 1;
    b->max_failures = 0;
    b->failure_rate = 0.0;
    b->slow_rate = 0.0;
    b->minimum_calls = 1;
    b->reset_ns = 0;
    b->ho_max = 1;
    b->success_threshold = 1;
}

/* Allocate the window (kind, size as above). Returns -1 when out of memory. */
static inline int sf_breaker_alloc_window(sf_breaker *b, int kind, uint64_t size, int64_t width_ns) {
    uint64_t i;
    b->win_kind = kind;
    b->win_size = size;
    b->width_ns = width_ns > 0 ? width_ns : 1;
    if (kind == SF_WIN_COUNT) {
        b->slots = (sf_atomic_u32 *)malloc(size * sizeof(sf_atomic_u32));
        if (b->slots == NULL) return -1;
        for (i = 0; i < size; i++) atomic_init(&b->slots[i], 0);
    } else if (kind == SF_WIN_TIME) {
        b->buckets = (sf_bucket *)malloc(size * sizeof(sf_bucket));
        if (b->buckets == NULL) return -1;
        for (i = 0; i < size; i++) {
            atomic_init(&b->buckets[i].epoch, 0);
            atomic_init(&b->buckets[i].calls, 0);
            atomic_init(&b->buckets[i].fails, 0);
            atomic_init(&b->buckets[i].slow, 0);
        }
    }
    return 0;
}

static inline void sf_breaker_free(sf_breaker *b) {
    free(b->slots);
    free(b->buckets);
    b->slots = NULL;
    b->buckets = NULL;
}

/* ---------------- sliding window ---------------- */

static inline uint64_t sf_br_epoch(const sf_breaker *b, int64_t now) {
    return now <= 0 ? 0 : (uint64_t)(now / b->width_ns);
}

static inline void sf_br_window_add(sf_breaker *b, int flags, int64_t now) {
    uint64_t fail = (flags & SF_BR_FAIL) ? 1 : 0, slow = (flags & SF_BR_SLOW) ? 1 : 0;
    if (b->win_kind == SF_WIN_COUNT) {
        uint64_t i = sf_fetch_add_relaxed_u64(&b->seq, 1) % b->win_size;
        uint32_t v = SF_SLOT_VALID | (uint32_t)(fail << 1) | (uint32_t)(slow << 2);
        uint32_t old = sf_exchange_acqrel_u32(&b->slots[i], v);
        uint64_t ofail = (old >> 1) & 1u, oslow = (old >> 2) & 1u;
        if (!(old & SF_SLOT_VALID)) sf_fetch_add_relaxed_u64(&b->agg_calls, 1);
        if (fail != ofail) sf_fetch_add_relaxed_u64(&b->agg_fails, fail ? 1 : (uint64_t)-1);
        if (slow != oslow) sf_fetch_add_relaxed_u64(&b->agg_slow, slow ? 1 : (uint64_t)-1);
    } else if (b->win_kind == SF_WIN_TIME) {
        uint64_t e = sf_br_epoch(b, now);
        sf_bucket *bk = &b->buckets[e % b->win_size];
        for (;;) {
            uint64_t ep = sf_load_acquire_u64(&bk->epoch);
            if (ep & SF_BUCKET_ROTATING) {
                sf_cpu_relax();
                continue;
            }
            if (ep >= e + 1) break; /* ours, or a newer one (this thread's clock lags): use it */
            if (sf_cas_acqrel_u64(&bk->epoch, &ep, (e + 1) | SF_BUCKET_ROTATING)) {
                sf_store_relaxed_u64(&bk->calls, 0);
                sf_store_relaxed_u64(&bk->fails, 0);
                sf_store_relaxed_u64(&bk->slow, 0);
                sf_store_release_u64(&bk->epoch, e + 1);
                break;
            }
        }
        sf_fetch_add_relaxed_u64(&bk->calls, 1);
        if (fail) sf_fetch_add_relaxed_u64(&bk->fails, 1);
        if (slow) sf_fetch_add_relaxed_u64(&bk->slow, 1);
    }
}

static inline int64_t sf_br_clamp(uint64_t v) { return (int64_t)v < 0 ? 0 : (int64_t)v; }

/* Calls, failures and slow calls in the window now. */
static inline void sf_br_window_totals(sf_breaker *b, int64_t now, int64_t *calls,
                                       int64_t *fails, int64_t *slow) {
    *calls = *fails = *slow = 0;
    if (b->win_kind == SF_WIN_COUNT) {
        *calls = sf_br_clamp(sf_load_relaxed_u64(&b->agg_calls));
        *fails = sf_br_clamp(sf_load_relaxed_u64(&b->agg_fails));
        *slow = sf_br_clamp(sf_load_relaxed_u64(&b->agg_slow));
    } else if (b->win_kind == SF_WIN_TIME) {
        uint64_t e = sf_br_epoch(b, now) + 1, i;
        for (i = 0; i < b->win_size; i++) {
            sf_bucket *bk = &b->buckets[i];
            uint64_t ep = sf_load_acquire_u64(&bk->epoch) & ~SF_BUCKET_ROTATING;
            if (ep == 0 || ep + b->win_size <= e) continue; /* unused or too old */
            *calls += (int64_t)sf_load_relaxed_u64(&bk->calls);
            *fails += (int64_t)sf_load_relaxed_u64(&bk->fails);
            *slow += (int64_t)sf_load_relaxed_u64(&bk->slow);
        }
    }
}

static inline void sf_br_clear_stats(sf_breaker *b) {
    uint64_t i;
    sf_store_relaxed_u64(&b->consecutive, 0);
    if (b->win_kind == SF_WIN_COUNT) {
        for (i = 0; i < b->win_size; i++) sf_exchange_acqrel_u32(&b->slots[i], 0);
        sf_store_relaxed_u64(&b->seq, 0);
        sf_store_relaxed_u64(&b->agg_calls, 0);
        sf_store_relaxed_u64(&b->agg_fails, 0);
        sf_store_relaxed_u64(&b->agg_slow, 0);
    } else if (b->win_kind == SF_WIN_TIME) {
        /* Epoch 0 means "never used", so cleared buckets are simply skipped. A recorder
         * racing this may have its outcome dropped: documented as approximate. */
        for (i = 0; i < b->win_size; i++) {
            uint64_t ep = sf_load_acquire_u64(&b->buckets[i].epoch);
            if (!(ep & SF_BUCKET_ROTATING) && ep != 0)
                sf_cas_acqrel_u64(&b->buckets[i].epoch, &ep, 0);
        }
    }
}

/* ---------------- transitions ---------------- */

/* CAS `from` -> (gen + 1, OPEN). Returns the transition code, or -1 if someone else moved
 * the state first. */
static inline int sf_br_open_from(sf_breaker *b, uint64_t from, int64_t now) {
    uint64_t ng = SF_BR_GEN(from) + 1;
    uint64_t w = from;
    if (!sf_cas_acqrel_u64(&b->state, &w, SF_BR_WORD(ng, SF_BR_OPEN))) return -1;
    sf_store_relaxed_u64(&b->opened_ns, (uint64_t)now);
    sf_store_release_u64(&b->opened_gen, ng);
    return SF_BR_TRANS(SF_BR_STATE(from), SF_BR_OPEN);
}

/* Start the half-open word's generation ng (successes 0), never moving it backwards.
 * In-flight trials are kept: they are counted across generations. */
static inline void sf_br_ho_init(sf_breaker *b, uint64_t ng) {
    uint32_t g = (uint32_t)ng;
    uint64_t p = sf_load_acquire_u64(&b->ho);
    while ((int32_t)(SF_HO_GEN(p) - g) < 0) {
        if (sf_cas_acqrel_u64(&b->ho, &p, SF_HO_WORD(g, 0, SF_HO_INFLIGHT(p)))) break;
    }
}

static inline int sf_br_should_trip(sf_breaker *b, uint64_t consecutive, int64_t now) {
    int64_t calls, fails, slow;
    if (b->max_failures && consecutive >= b->max_failures) return 1;
    if (b->win_kind == SF_WIN_NONE) return 0;
    sf_br_window_totals(b, now, &calls, &fails, &slow);
    if (calls <= 0 || (uint64_t)calls < b->minimum_calls) return 0;
    if (b->failure_rate > 0 && (double)fails >= b->failure_rate * (double)calls) return 1;
    if (b->slow_rate > 0 && (double)slow >= b->slow_rate * (double)calls) return 1;
    return 0;
}

/* Admission when the state is not closed/disabled (the caller checked that fast case with
 * one load). Returns SF_BR_ALLOW (closed/disabled: record with *token), SF_BR_TRIAL
 * (half-open permit: record or release with *token), or SF_BR_REJECT with *remaining_ns
 * until the next trial (-1: forced open, 0: half-open and all permits taken, or
 * reopened under this call after it made the open -> half_open move). *trans is the
 * open -> half_open transition this call made, or -1. */
static inline int sf_breaker_acquire(sf_breaker *b, int64_t now, uint64_t *token,
                                     int64_t *remaining_ns, int *trans) {
    *trans = -1;
    for (;;) {
        uint64_t w = sf_load_acquire_u64(&b->state);
        uint64_t gen = SF_BR_GEN(w);
        switch (SF_BR_STATE(w)) {
        case SF_BR_CLOSED:
        case SF_BR_DISABLED:
            *token = w;
            return SF_BR_ALLOW;
        case SF_BR_FORCED_OPEN:
            sf_fetch_add_relaxed_u64(&b->rejections, 1);
            *remaining_ns = -1;
            return SF_BR_REJECT;
        case SF_BR_OPEN: {
            int64_t opened = now, left;
            if (sf_load_acquire_u64(&b->opened_gen) == gen)
                opened = (int64_t)sf_load_relaxed_u64(&b->opened_ns);
            left = opened + b->reset_ns - now;
            if (left > 0) {
                sf_fetch_add_relaxed_u64(&b->rejections, 1);
                *remaining_ns = left;
                return SF_BR_REJECT;
            }
            if (*trans >= 0) {
                /* This call already moved open -> half_open and a failed trial reopened
                 * the breaker before it got a permit. Moving it again would be a second
                 * transition that *trans cannot report (listeners would miss one): refuse,
                 * the caller may try again at once. */
                sf_fetch_add_relaxed_u64(&b->rejections, 1);
                *remaining_ns = 0;
                return SF_BR_REJECT;
            }
            sf_br_ho_init(b, gen + 1);
            if (sf_cas_acqrel_u64(&b->state, &w, SF_BR_WORD(gen + 1, SF_BR_HALF_OPEN)))
                *trans = SF_BR_TRANS(SF_BR_OPEN, SF_BR_HALF_OPEN);
            continue;
        }
        case SF_BR_HALF_OPEN: {
            uint64_t p = sf_load_acquire_u64(&b->ho);
            for (;;) {
                if (SF_HO_GEN(p) != (uint32_t)gen) break; /* the state moved on: reload */
                if (SF_HO_INFLIGHT(p) >= b->ho_max) {
                    sf_fetch_add_relaxed_u64(&b->rejections, 1);
                    *remaining_ns = 0;
                    return SF_BR_REJECT;
                }
                if (sf_cas_acqrel_u64(&b->ho, &p, p + 1)) {
                    *token = w;
                    return SF_BR_TRIAL;
                }
            }
            continue;
        }
        default:
            return SF_BR_REJECT;
        }
    }
}

/* Record the outcome of a call admitted with `token`. `now` is only read when the window
 * is time-based or when the breaker opens. Returns the transition made, or -1. */
static inline int sf_breaker_record(sf_breaker *b, uint64_t token, int flags, int64_t now) {
    int st = SF_BR_STATE(token);
    if (!(flags & SF_BR_IGNORE)) {
        sf_fetch_add_relaxed_u64(&b->calls, 1);
        if (flags & SF_BR_FAIL) sf_fetch_add_relaxed_u64(&b->failures, 1);
        if (flags & SF_BR_SLOW) sf_fetch_add_relaxed_u64(&b->slow_calls, 1);
    }
    if (st == SF_BR_CLOSED) {
        uint64_t c = 0;
        if (flags & SF_BR_IGNORE) return -1;
        if (flags & SF_BR_FAIL)
            c = sf_fetch_add_relaxed_u64(&b->consecutive, 1) + 1;
        else if (sf_load_relaxed_u64(&b->consecutive) != 0)
            sf_store_relaxed_u64(&b->consecutive, 0);
        if (b->win_kind != SF_WIN_NONE) sf_br_window_add(b, flags, now);
        if (!(flags & (SF_BR_FAIL | SF_BR_SLOW))) return -1;
        if (!sf_br_should_trip(b, c, now)) return -1;
        return sf_br_open_from(b, token, now);
    }
    if (st == SF_BR_HALF_OPEN) {
        uint32_t g = (uint32_t)SF_BR_GEN(token);
        int failed = !(flags & SF_BR_IGNORE) &&
                     ((flags & SF_BR_FAIL) || ((flags & SF_BR_SLOW) && b->slow_rate > 0));
        int counts = !(flags & SF_BR_IGNORE) && !failed;
        uint64_t p = sf_load_acquire_u64(&b->ho);
        uint32_t succ;
        /* Give the permit back (whatever generation is current: in-flight trials are
         * counted across generations) and count a success of this generation. */
        for (;;) {
            uint32_t inflight = SF_HO_INFLIGHT(p);
            succ = SF_HO_SUCC(p);
            if (counts && SF_HO_GEN(p) == g && succ < 0xffffu) succ += 1;
            if (sf_cas_acqrel_u64(&b->ho, &p,
                                  SF_HO_WORD(SF_HO_GEN(p), succ, inflight ? inflight - 1 : 0)))
                break;
        }
        if (failed) return sf_br_open_from(b, token, now);
        if (counts && SF_HO_GEN(p) == g && succ == b->success_threshold) {
            uint64_t w = token;
            sf_br_clear_stats(b);
            if (sf_cas_acqrel_u64(&b->state, &w, SF_BR_WORD(SF_BR_GEN(token) + 1, SF_BR_CLOSED)))
                return SF_BR_TRANS(SF_BR_HALF_OPEN, SF_BR_CLOSED);
        }
        return -1;
    }
    return -1; /* disabled, or a token of a state that admits nobody */
}

/* Move to `target` by hand (CLOSED resets the statistics; OPEN starts a reset timeout).
 * Returns the transition, or -1 when already there (closing by hand still resets). */
static inline int sf_breaker_force(sf_breaker *b, int target, int64_t now) {
    for (;;) {
        uint64_t w = sf_load_acquire_u64(&b->state);
        uint64_t ng = SF_BR_GEN(w) + 1;
        int st = SF_BR_STATE(w);
        if (target == SF_BR_CLOSED) sf_br_clear_stats(b);
        if (st == target && target != SF_BR_OPEN) return -1;
        if (target == SF_BR_OPEN) {
            int t = sf_br_open_from(b, w, now);
            if (t >= 0) return t;
            continue;
        }
        if (sf_cas_acqrel_u64(&b->state, &w, SF_BR_WORD(ng, target)))
            return SF_BR_TRANS(st, target);
    }
}

#endif /* SF_BREAKER_H */
