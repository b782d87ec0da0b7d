/* sf_ring: a bounded multi-producer, multi-consumer ring of pointers.
 *
 * Why this algorithm. Producers are arbitrary user threads (on free-threaded CPython they
 * really run in parallel), so the ring must be multi-producer; the consumer is one worker,
 * plus, rarely, a thief or the shutdown path, so the consumer side must tolerate a second
 * consumer but should cost the owner almost nothing. Per-producer SPSC rings would need
 * thread registration and a scan over producers on every drain; Vyukov's per-slot
 * sequence numbers cost a store per item to publish. Instead:
 *
 *   producers  claim a range [t, t+k) with one CAS on `tail`, fill the slots, then publish
 *              the range with ONE release store to `commit`, in claim order (a producer
 *              waits for earlier claimers to publish first; the window between claim and
 *              publish is a copy of k pointers, never a lock, a syscall or the GIL).
 *   consumers  copy up to `max` published slots, then take them with one CAS on `head`
 *              (copy-then-commit, as Go's runqsteal does). A consumer that loses the CAS
 *              discards its copy, which costs nothing because the copy holds raw pointers
 *              whose references the ring still owns.
 *
 * Indices are free-running 64-bit counters (no ABA, no wrap in practice); bit 63 of
 * `tail` is the "closed" flag, so closing and claiming are ordered by the same CAS.
 *
 * Invariants: head <= commit <= tail_index(tail); tail_index - head <= capacity.
 *
 * Caches. Producers read `head` only when their cached copy (`head_cache`, shared by all
 * producers) says the ring is full. Consumers drain in batches, so reading `commit` once
 * per drain is the cache: a drain of k items costs one acquire load and one CAS.
 *
 * Park protocol (see _park.h): both CASes are seq_cst, so a producer's claim is the store
 * half of the Dekker pair against a sleeping consumer (which re-checks `tail`), and a
 * consumer's take is the store half against a sleeping producer (which re-checks `head`).
 *
 * Memory orders:
 *   - slot writes are ordered before the release store of `commit`; consumers load
 *     `commit` with acquire before reading slots;
 *   - slot reads are ordered before the (acq_rel) CAS of `head`; producers load `head`
 *     (or `head_cache`, which is stored with release after an acquire of `head`) with
 *     acquire before overwriting a slot;
 *   - a producer waiting for its turn loads `commit` with acquire so that its own release
 *     store also carries the earlier producers' slot writes to the consumer.
 *
 * Queue-wait stamps (sampled; no timestamp per item). Every S-th index (S = min(64,
 * capacity), a power of two) carries a submit time in `stamps[(m / S) & (capacity/S - 1)]`:
 *
 *   producer  whose claimed range [t, t+k) contains indices m with m % S == 0 reads the
 *             clock once and stores it (relaxed) into each such m's stamp, after the claim
 *             CAS and BEFORE its release store of `commit` (so a consumer that acquired a
 *             commit > m sees it; chained producers carry it on, as for slots). Cost on the
 *             submit path: one compare per claim and one clock read per S items.
 *   consumer  (sf_ring_take) that takes a range [h, h+n) reads the stamps of the m in it
 *             BEFORE its take CAS. The stamp slot of m is next written by the producer of
 *             m + capacity, which cannot claim before head passes m, i.e. before somebody's
 *             take of m succeeded. So if OUR CAS succeeds, nobody took m before us and the
 *             stamps we read are m's; if it fails, the copy is discarded with the slots.
 *             Once the CAS succeeded it reads the clock once and reports now - stamp for
 *             each m (at most SF_RING_MAX_STAMPS per take: in a huge drain the newest
 *             samples are skipped, a bias towards older items that the docs state).
 * Stamps are relaxed atomics: a losing consumer may read one while the next producer
 * rewrites it, a benign race by the standard, as for slots.
 */
#ifndef SF_RING_H
#define SF_RING_H

#include <stdint.h>
#include <stdlib.h>
#include "shardflow/_atomic.h"
#include "shardflow/_park.h"

#define SF_RING_CLOSED ((uint64_t)1 << 63)
#define SF_RING_MAX_CAPACITY ((uint64_t)1 << 30)
#define SF_RING_STAMP_EVERY ((uint64_t)64) /* S, for rings of at least 64 slots */
#define SF_RING_MAX_STAMPS 64               /* stamps reported per take, at most */

typedef struct sf_ring {
    SF_PAD(_pad0);
    sf_atomic_u64 tail;       /* next index to claim | SF_RING_CLOSED */
    sf_atomic_u64 head_cache; /* a recent value of head, refreshed by producers when full */
    SF_PAD(_pad1);
    sf_atomic_u64 commit;     /* every index below this is published */
    SF_PAD(_pad2);
    sf_atomic_u64 head;       /* next index to consume */
    SF_PAD(_pad3);
    uint64_t capacity;        /* a power of two */
    uint64_t mask;
    sf_atomic_ptr *slots;
    sf_atomic_u64 *stamps;    /* capacity / S submit times (ns), see "Queue-wait stamps" */
    uint64_t stamp_every;     /* S */
    uint64_t stamp_mask;      /* capacity / S - 1 */
    uint64_t stamp_high;      /* ~(S - 1) */
    SF_PAD(_pad4);
} sf_ring;

/* Round up to a power of two; 0 if out of range. */
static inline uint64_t sf_ring_round_capacity(uint64_t want) {
    uint64_t c = 1;
    if (want == 0 || want > SF_RING_MAX_CAPACITY) return 0;
    while (c < want) c <<= 1;
    return c;
}

/* capacity must be a power of two in [1, SF_RING_MAX_CAPACITY]. Returns 0 or -1 (ENOMEM). */
static inline int sf_ring_init(sf_ring *r, uint64_t capacity) {
    atomic_init(&r->tail, 0);
    atomic_init(&r->head_cache, 0);
    atomic_init(&r->commit, 0);
    atomic_init(&r->head, 0);
    r->capacity = capacity;
    r->mask = capacity - 1;
    /* calloc, and no atomic_init per slot: on every platform we build for, a lock-free
     * atomic pointer holding NULL is all-zero bits, so the zeroed pages are valid slots; and
     * untouched pages stay unallocated until the ring first fills that far (a huge capacity
     * costs address space, not memory, until used). */
    r->slots = (sf_atomic_ptr *)calloc((size_t)capacity, sizeof(sf_atomic_ptr));
    if (!r->slots) return -1;
    r->stamp_every = capacity < SF_RING_STAMP_EVERY ? capacity : SF_RING_STAMP_EVERY;
    r->stamp_mask = capacity / r->stamp_every - 1;
    r->stamp_high = ~(r->stamp_every - 1);
    r->stamps = (sf_atomic_u64 *)calloc((size_t)(capacity / r->stamp_every), sizeof(sf_atomic_u64));
    if (!r->stamps) {
        free(r->slots);
        r->slots = NULL;
        return -1;
    }
    return 0;
}

/* The caller has already taken every item out (the ring does not know what they are). */
static inline void sf_ring_destroy(sf_ring *r) {
    free(r->slots);
    r->slots = NULL;
    free(r->stamps);
    r->stamps = NULL;
}

static inline uint64_t sf_ring_tail_index(sf_ring *r) {
    return sf_load_acquire_u64(&r->tail) & ~SF_RING_CLOSED;
}

static inline int sf_ring_is_closed(sf_ring *r) {
    return (sf_load_acquire_u64(&r->tail) & SF_RING_CLOSED) != 0;
}

/* Items claimed and not yet consumed (includes ranges still being published). */
static inline uint64_t sf_ring_depth(sf_ring *r) {
    uint64_t h = sf_load_acquire_u64(&r->head);
    uint64_t t = sf_ring_tail_index(r);
    return t > h ? t - h : 0;
}

/* Published items are waiting. */
static inline int sf_ring_has_items(sf_ring *r) {
    return sf_load_acquire_u64(&r->commit) != sf_load_acquire_u64(&r->head);
}

/* Items are claimed and not consumed, published or not. This, not has_items, is what a
 * consumer re-checks before it sleeps: the claim CAS is the producer's side of the park
 * protocol (a claimed range is published within a bounded copy, so the consumer spins for
 * it instead of sleeping). */
static inline int sf_ring_has_claims(sf_ring *r) {
    return sf_ring_tail_index(r) != sf_load_acquire_u64(&r->head);
}

/* The same check as a seq_cst load pair, for a re-check that is one side of a Dekker pair
 * whose other side is not a fence (the owner's wake-a-thief check in _sched.h). */
static inline int sf_ring_has_claims_seqcst(sf_ring *r) {
    return (sf_load_seqcst_u64(&r->tail) & ~SF_RING_CLOSED) != sf_load_seqcst_u64(&r->head);
}

/* A producer could claim at least one slot (or the ring is closed, which also ends a
 * producer's wait). */
static inline int sf_ring_has_space_or_closed(sf_ring *r) {
    uint64_t t = sf_load_acquire_u64(&r->tail);
    if (t & SF_RING_CLOSED) return 1;
    return t - sf_load_acquire_u64(&r->head) < r->capacity;
}

/* Closed, and every claimed item has been consumed: nothing will ever arrive again. */
static inline int sf_ring_finished(sf_ring *r) {
    uint64_t t = sf_load_acquire_u64(&r->tail);
    return (t & SF_RING_CLOSED) && (t & ~SF_RING_CLOSED) == sf_load_acquire_u64(&r->head);
}

/* Refuse all further claims. Ranges already claimed are still published and consumed.
 * Returns 1 if this call closed it, 0 if it was closed already. */
static inline int sf_ring_close(sf_ring *r) {
    return (sf_fetch_or_seqcst_u64(&r->tail, SF_RING_CLOSED) & SF_RING_CLOSED) == 0;
}

/* Wait until every claimed range is published (after close: until producers that won a
 * claim before the close have finished copying). */
static inline void sf_ring_wait_published(sf_ring *r) {
    unsigned spins = 0;
    while (sf_load_acquire_u64(&r->commit) != sf_ring_tail_index(r)) {
        if (++spins < 64) sf_cpu_relax();
        else sf_thread_yield();
    }
}

/* Copy k items into / out of the slots of indices [i, i+k), k <= capacity. The range wraps
 * the array at most once, so it is two contiguous runs, copied four slots per step: the
 * masked loop this replaces cost ~8 instructions per item on each side (~10% of a no-op
 * item's whole path through submit_many), and compilers neither vectorize nor unroll loops
 * of atomic accesses. The slots stay relaxed atomics (a losing consumer may read one while
 * the next producer rewrites it, see above), so no memcpy. */
static inline void sf_ring_store_run(sf_atomic_ptr *dst, void *const *src, uint64_t k) {
    uint64_t j = 0;
    for (; j + 4 <= k; j += 4) {
        sf_store_relaxed_ptr(&dst[j], src[j]);
        sf_store_relaxed_ptr(&dst[j + 1], src[j + 1]);
        sf_store_relaxed_ptr(&dst[j + 2], src[j + 2]);
        sf_store_relaxed_ptr(&dst[j + 3], src[j + 3]);
    }
    for (; j < k; j++) sf_store_relaxed_ptr(&dst[j], src[j]);
}

static inline void sf_ring_load_run(void **dst, sf_atomic_ptr *src, uint64_t k) {
    uint64_t j = 0;
    for (; j + 4 <= k; j += 4) {
        dst[j] = sf_load_relaxed_ptr(&src[j]);
        dst[j + 1] = sf_load_relaxed_ptr(&src[j + 1]);
        dst[j + 2] = sf_load_relaxed_ptr(&src[j + 2]);
        dst[j + 3] = sf_load_relaxed_ptr(&src[j + 3]);
    }
    for (; j < k; j++) dst[j] = sf_load_relaxed_ptr(&src[j]);
}

static inline void sf_ring_store_slots(sf_ring *r, uint64_t i, void *const *items, uint64_t k) {
    uint64_t at = i & r->mask;
    uint64_t first = r->capacity - at < k ? r->capacity - at : k;
    sf_ring_store_run(r->slots + at, items, first);
    sf_ring_store_run(r->slots, items + first, k - first);
}

static inline void sf_ring_load_slots(sf_ring *r, uint64_t i, void **out, uint64_t k) {
    uint64_t at = i & r->mask;
    uint64_t first = r->capacity - at < k ? r->capacity - at : k;
    sf_ring_load_run(out, r->slots + at, first);
    sf_ring_load_run(out + first, r->slots, k - first);
}

/* Push up to n items. Returns how many were pushed (0 when full), or -1 when closed.
 * Never blocks, except for the short wait for earlier claimers to publish. */
static inline int64_t sf_ring_push(sf_ring *r, void *const *items, uint64_t n) {
    uint64_t t = sf_load_relaxed_u64(&r->tail);
    uint64_t k;
    for (;;) {
        uint64_t h, used, room;
        if (t & SF_RING_CLOSED) return -1;
        h = sf_load_acquire_u64(&r->head_cache);
        used = t - h;
        room = used >= r->capacity ? 0 : r->capacity - used;
        if (room < n) {
            h = sf_load_acquire_u64(&r->head);
            sf_store_release_u64(&r->head_cache, h);
            used = t - h;
            room = used >= r->capacity ? 0 : r->capacity - used;
            if (room == 0) {
                /* Full as seen from `t`; but `t` may be stale (other producers claimed
                 * and the consumer took since we read it, so head may even be past it).
                 * Report full only if tail has not moved; otherwise retry with the new
                 * value (this also reports "closed" rather than "full" once closed). */
                uint64_t t2 = sf_load_relaxed_u64(&r->tail);
                if (t2 == t) return 0;
                t = t2;
                continue;
            }
        }
        k = n < room ? n : room;
        if (sf_cas_weak_seqcst_u64(&r->tail, &t, t + k)) break;
    }
    /* Stamp every m % S == 0 in [t, t+k): [t, t+k) holds one iff t-1 and t+k-1 differ
     * above the low log2(S) bits (t = 0 included: t-1 wraps to all ones). One xor, one
     * and, one branch per claim; the loop and the clock read run once per S items. */
    if (((t - 1) ^ (t + k - 1)) & r->stamp_high) {
        uint64_t now = (uint64_t)sf_now_ns();
        uint64_t m = (t + r->stamp_every - 1) & r->stamp_high;
        for (; m < t + k; m += r->stamp_every)
            sf_store_relaxed_u64(&r->stamps[(m / r->stamp_every) & r->stamp_mask], now);
    }
    sf_ring_store_slots(r, t, items, k);
    {
        unsigned spins = 0;
        while (sf_load_acquire_u64(&r->commit) != t) {
            if (++spins < 64) sf_cpu_relax();
            else sf_thread_yield();
        }
    }
    sf_store_release_u64(&r->commit, t + k);
    return (int64_t)k;
}

/* Take up to `max` items, oldest first. With `divisor` > 1 take at most ceil(avail/divisor)
 * (a thief takes half). Returns how many were taken. Safe against concurrent consumers.
 * With `stamps` non-NULL, also returns in it the submit times of the sampled indices taken
 * (at most SF_RING_MAX_STAMPS) and their number in *nstamps; see "Queue-wait stamps". */
/* sf_ring_push for one item: the per-item submit path. The same claim, stamp and publish
 * steps with n = 1 written out, so that the compiler inlines it into submit (the general
 * push is a call with a prologue, a loop over the batch and a division for the stamps). */
SF_ALWAYS_INLINE int64_t sf_ring_push1(sf_ring *r, void *item) {
    uint64_t t = sf_load_relaxed_u64(&r->tail);
    for (;;) {
        if (t & SF_RING_CLOSED) return -1;
        if (t - sf_load_acquire_u64(&r->head_cache) >= r->capacity) {
            uint64_t h = sf_load_acquire_u64(&r->head);
            sf_store_release_u64(&r->head_cache, h);
            if (t - h >= r->capacity) {
                /* Full as seen from `t`, which may be stale: as in sf_ring_push. */
                uint64_t t2 = sf_load_relaxed_u64(&r->tail);
                if (t2 == t) return 0;
                t = t2;
                continue;
            }
        }
        if (sf_cas_weak_seqcst_u64(&r->tail, &t, t + 1)) break;
    }
    /* [t, t+1) holds a stamped index iff t itself is one (t % S == 0). */
    if ((t & ~r->stamp_high) == 0)
        sf_store_relaxed_u64(&r->stamps[(t / r->stamp_every) & r->stamp_mask],
                             (uint64_t)sf_now_ns());
    sf_store_relaxed_ptr(&r->slots[t & r->mask], item);
    {
        unsigned spins = 0;
        while (sf_load_acquire_u64(&r->commit) != t) {
            if (++spins < 64) sf_cpu_relax();
            else sf_thread_yield();
        }
    }
    sf_store_release_u64(&r->commit, t + 1);
    return 1;
}

static inline uint64_t sf_ring_take(sf_ring *r, void **out, uint64_t max, uint64_t divisor,
                                    uint64_t *stamps, unsigned *nstamps) {
    uint64_t h = sf_load_acquire_u64(&r->head);
    for (;;) {
        uint64_t c = sf_load_acquire_u64(&r->commit);
        uint64_t n = c - h;
        if (c <= h) return 0;
        if (divisor > 1) n = (n + divisor - 1) / divisor;
        if (n > max) n = max;
        sf_ring_load_slots(r, h, out, n);
        if (stamps) {
            /* Before the CAS: afterwards the producer of m + capacity may overwrite them. */
            unsigned ns = 0;
            uint64_t m = (h + r->stamp_every - 1) & r->stamp_high;
            for (; m < h + n && ns < SF_RING_MAX_STAMPS; m += r->stamp_every)
                stamps[ns++] = sf_load_relaxed_u64(&r->stamps[(m / r->stamp_every) & r->stamp_mask]);
            *nstamps = ns;
        }
        if (sf_cas_strong_seqcst_u64(&r->head, &h, h + n)) return n;
        /* Another consumer won: h now holds the current head; the copy is discarded. */
    }
}

static inline uint64_t sf_ring_pop_part(sf_ring *r, void **out, uint64_t max, uint64_t divisor) {
    return sf_ring_take(r, out, max, divisor, NULL, NULL);
}

static inline uint64_t sf_ring_pop(sf_ring *r, void **out, uint64_t max) {
    return sf_ring_pop_part(r, out, max, 1);
}

#endif /* SF_RING_H */
