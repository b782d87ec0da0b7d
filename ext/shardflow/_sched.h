/* sf_sched: how a worker finds work (its own shard first, then half of a loaded shard's
 * backlog) and how a producer wakes somebody to do it.
 *
 * Work stealing (steal-half, as in Go's and tokio's schedulers). A worker whose own ring
 * is empty makes one pass over the other shards, starting after its own, and takes
 * ceil(published / 2) items (at most `max`) from the first one with published items, with
 * the ring's multi-consumer take (copy, then one CAS on the victim's head): an item is
 * taken by exactly one consumer, whoever wins the CAS. It then notifies the victim's
 * blocked producers, since the theft freed space. A worker that found nothing parks.
 *
 * Who may steal is policy, decided by the Python layer (stealing reorders items, so a pool
 * with per-key order never sets `steal`).
 *
 * Waking a thief. An idle worker only sleeps on its own shard's event, so a producer that
 * pushes into the ring of a BUSY owner must wake an idle worker itself, or the backlog
 * waits for the owner while another core idles. Protocol (all four accesses seq_cst):
 *
 *   idle worker i                               producer pushing to shard s
 *   -------------                               ---------------------------
 *   T1 idle_mask |= 1 << i                      P1 claim CAS on ring s's tail (in push)
 *   T2 prepare(own data_ev)  (RMW + fence)      P2 if owner of s sleeps: wake it; done
 *   T3 if any shard has claims: cancel, steal   P3 m = idle_mask without bit s
 *   T4 sleep on own data_ev                     P4 if m and ring s held only our items
 *   T5 idle_mask &= ~(1 << i)                      (head >= our claim): wake lowest bit
 *
 * That covers a ring that goes from empty to non-empty while its owner is busy. A backlog
 * can also build up behind an owner that WAS asleep: the first push wakes the owner only
 * (P2), and later pushes find older items queued (P4 says no). So the owner, too, wakes a
 * thief: after each drain of its own ring that leaves items behind, it runs
 *
 *   O1 take CAS on head (in the drain)  O2 if items remain: m = idle_mask without own bit
 *   O3 if m: wake the lowest bit
 *
 * If O2 misses T1, then T3 comes after O1 and, the items being still there at O2 and only
 * leaving through a take, sees claims unless they were all taken meanwhile (then there is
 * nothing to steal). If O2 sees T1, O3 wakes a thief.
 *
 * If P3 misses T1, then T1 < P3 in the seq_cst order, so P1 < T3 and T3 sees the claim:
 * the worker steals instead of sleeping. If P3 sees T1 but P4 decides not to wake because
 * older items were still queued, those items were either there at T3 (it saw them), or
 * pushed after it: the first of them found the ring empty and ran P2 (the owner wakes, and
 * its drain runs O1-O3) or P4 (a thief wakes). Extra wake-ups are harmless (a woken worker
 * re-checks). Only the first 64 workers take part in thief wake-ups; the others still
 * steal whenever they run dry.
 *
 * Gated thieves. A runner that ships batches elsewhere (the process backend) returns from
 * the handler as soon as a batch is in its window, so its loop finds its own ring empty
 * and would steal while its worker still has batches queued: the stolen items then wait
 * there, out of reach of any other thief, while the victim's worker runs dry (measured:
 * 4,000 CPU-bound items submitted 2,048/1,952 were handled 1,696/2,304 with 8 batches in
 * flight). So such a runner closes its shard's gate while its window is busy
 * (sf_sched_gate): a gated worker neither steals nor sets its idle bit (producers do not
 * wake it for nothing). Opening the gate is a seq_cst store, then a notify of the
 * worker's data_ev (fence, load); the worker loads the gate after its prepare (RMW,
 * fence): either it sees the gate open and runs its wait again as a thief, or the notify
 * sees it waiting and wakes it. A gate closed while the worker sleeps with its idle bit
 * set costs at most one extra wake-up (it re-checks, and sleeps without the bit).
 *
 * Flush and stealing. flush() promises that every item queued before it was handed to the
 * handler when it returns. Each worker acknowledges a request after handing over what it
 * holds; the owner of a ring only after draining it. The gap: a worker that already
 * acknowledged may steal, from a ring whose owner has not, items queued before the flush,
 * and keep them in a partial batch. So every steal takes a hold first:
 *
 *   S1 holds += 1                (seq_cst, before the take CAS)
 *   S2 take CAS on the victim    (the owner's later drain, then its acknowledgement, come
 *                                 after this CAS)
 *   S3 if a flush is active and this worker acknowledged the latest request: hand the
 *      stolen items over now, then holds -= 1 (release) and notify; else holds -= 1 at
 *      once (an unacknowledged worker hands them over before it acknowledges anyway)
 *
 * and flush() returns only when every worker acknowledged AND holds == 0. A steal whose
 * items were queued before the flush happened before the victim's acknowledgement, and so
 * (S1 before S2) its hold is visible to the flusher that saw that acknowledgement.
 */
#ifndef SF_SCHED_H
#define SF_SCHED_H

#include "shardflow/_pool.h"
#include "shardflow/_shard.h"

/* A theft takes at most this many items, so that the thief starts handling them soon. */
#define SF_STEAL_MAX 1024

/* Wake the lowest idle worker in m (if it sleeps: notify costs a fence and a load). */
static inline void sf_sched_wake_thief(sf_shard *shards, uint64_t m) {
    unsigned j = 0;
    while (!((m >> j) & 1)) j++;
    sf_event_notify(&shards[j].data_ev);
}

/* O2-O3: the owner of shard `self` drained some items; if a backlog remains and somebody
 * idles, wake it to steal. */
static inline void sf_sched_after_own_drain(sf_pool *p, sf_shard *shards, uint64_t self) {
    uint64_t m;
    /* Claims, not published items: a producer's commit store may still sit in its store
     * buffer while its claim (a seq_cst CAS) is already visible; checking `commit` here
     * lets that item wait behind a busy owner (found by tools/model/steal.pml). */
    if (!p->steal || !sf_ring_has_claims_seqcst(&shards[self].ring)) return;
    m = sf_load_seqcst_u64(&p->idle_mask);
    if (self < 64) m &= ~((uint64_t)1 << self);
    if (m) sf_sched_wake_thief(shards, m);
}

/* The owner's drain: take up to max items from its own shard, then O2-O3. */
static inline uint64_t sf_sched_pop_own(sf_pool *p, sf_shard *shards, uint64_t self,
                                        void **out, uint64_t max) {
    uint64_t n = sf_shard_pop(&shards[self], out, max);
    if (n) sf_sched_after_own_drain(p, shards, self);
    return n;
}

SF_ALWAYS_INLINE int64_t sf_sched_after_push(sf_pool *p, sf_shard *shards, uint64_t s,
                                            uint64_t t, int64_t k);

/* Producer side: push to shard s, then wake its owner, or a thief (see above). */
static inline int64_t sf_sched_push(sf_pool *p, sf_shard *shards, uint64_t s,
                                    void *const *items, uint64_t n) {
    sf_shard *sh = &shards[s];
    uint64_t t = p->steal ? sf_ring_tail_index(&sh->ring) : 0;
    return sf_sched_after_push(p, shards, s, t, sf_ring_push(&sh->ring, items, n));
}

/* sf_sched_push of one item (per-item submit; inlines into the caller). */
SF_ALWAYS_INLINE int64_t sf_sched_push1(sf_pool *p, sf_shard *shards, uint64_t s, void *item) {
    sf_shard *sh = &shards[s];
    uint64_t t = p->steal ? sf_ring_tail_index(&sh->ring) : 0;
    return sf_sched_after_push(p, shards, s, t, sf_ring_push1(&sh->ring, item));
}

/* P2-P4 after a push that returned k; t: the tail index read before the claim. */
SF_ALWAYS_INLINE int64_t sf_sched_after_push(sf_pool *p, sf_shard *shards, uint64_t s,
                                            uint64_t t, int64_t k) {
    sf_shard *sh = &shards[s];
    if (k <= 0) return k;
    if (SF_EV_WAITERS(sf_load_seqcst_u64(&sh->data_ev.word)) != 0) {
        sf_event_notify_slow(&sh->data_ev);
        return k;
    }
    if (p->steal) {
        uint64_t m = sf_load_seqcst_u64(&p->idle_mask);
        if (s < 64) m &= ~((uint64_t)1 << s);
        /* `t` was read before our claim, so head >= t means nothing older than our items
         * was left in the ring: it went from empty to non-empty while its owner was busy. */
        if (m && sf_load_seqcst_u64(&sh->ring.head) >= t) sf_sched_wake_thief(shards, m);
    }
    return k;
}

static inline void sf_sched_release_hold(sf_pool *p);

/* Close (1) or open (0) shard s's steal gate (see "Gated thieves"); any thread. */
static inline void sf_sched_gate(sf_shard *s, int closed) {
    sf_store_seqcst_int(&s->steal_gated, closed);
    if (!closed) sf_event_notify(&s->data_ev);
}

/* Take half of the first other shard's published items. Returns how many (0: none). */
static inline uint64_t sf_sched_steal(sf_shard *shards, uint64_t nshards, uint64_t self,
                                      void **out, uint64_t max) {
    if (max > SF_STEAL_MAX) max = SF_STEAL_MAX;
    for (uint64_t d = 1; d < nshards; d++) {
        sf_shard *v = &shards[(self + d) % nshards];
        uint64_t n;
        if (!sf_ring_has_items(&v->ring)) continue;
        n = sf_shard_steal(&shards[self], v, out, max); /* records queue waits */
        if (n) {
            sf_fetch_add_relaxed_u64(&v->ctr.stolen_out, n);
            sf_counter_add(&shards[self].ctr.stolen_in, n);
            sf_event_notify_after_rmw(&v->space_ev); /* pairs with the take CAS on head */
            return n;
        }
    }
    return 0;
}

static inline int sf_sched_any_claims(sf_shard *shards, uint64_t nshards) {
    for (uint64_t i = 0; i < nshards; i++)
        if (sf_ring_has_claims(&shards[i].ring)) return 1;
    return 0;
}

/* The worker's wait: own ring first; if empty, spin briefly, then (stealing pools) steal;
 * then sleep until items arrive, a producer wakes it to steal, its ring finishes, *stop is
 * set, a flush is requested (flush_seq != flush_seen), or the deadline (monotonic ns, < 0:
 * none) passes. Returns the number of items put in `out` (> 0), SF_WAIT_TIMEOUT,
 * SF_WAIT_FLUSH or SF_WAIT_FINISHED. With *hold set on return, the items were stolen
 * during a flush this worker already acknowledged: hand them over at once, then call
 * sf_sched_release_hold. Call without the GIL. */
static inline int64_t sf_sched_wait(sf_pool *p, sf_shard *shards, uint64_t nshards,
                                    uint64_t self, void **out, uint64_t max,
                                    int64_t deadline_ns, uint64_t flush_seen, int *hold) {
    sf_shard *s = &shards[self];
    const uint64_t bit = self < 64 ? (uint64_t)1 << self : 0;
    for (;;) {
        uint64_t n;
        uint32_t key;
        int spins;
        /* This pass's role: a thief only in a stealing pool with the gate open. */
        const int thief = p->steal && !sf_load_acquire_int(&s->steal_gated);
        if (sf_load_acquire_int(&p->stop)) return SF_WAIT_TIMEOUT;
        /* A flush request is answered before taking more: what this worker takes from
         * here on was queued after the request it acknowledges. */
        if (sf_load_acquire_u64(&p->flush_seq) != flush_seen) return SF_WAIT_FLUSH;
        n = sf_sched_pop_own(p, shards, self, out, max);
        if (n) return (int64_t)n;
        if (thief) {
            sf_fetch_add_seqcst_u64(&p->flush_holds, 1); /* S1 */
            n = sf_sched_steal(shards, nshards, self, out, max);
            if (n && sf_load_acquire_u64(&p->flush_seq) == flush_seen &&
                sf_load_seqcst_u64(&p->flush_active) != 0) {
                *hold = 1; /* S3: the caller hands them over, then sf_sched_release_hold */
                return (int64_t)n;
            }
            sf_sched_release_hold(p);
            if (n) return (int64_t)n;
        }
        if (sf_ring_finished(&s->ring)) return SF_WAIT_FINISHED;
        if (deadline_ns >= 0 && sf_now_ns() >= deadline_ns) return SF_WAIT_TIMEOUT;
        for (spins = 0; spins < SF_IDLE_SPINS && !sf_ring_has_items(&s->ring); spins++)
            sf_cpu_relax();
        if (spins < SF_IDLE_SPINS) continue;
        if (sf_ring_has_claims(&s->ring)) {
            /* Claimed but not yet published: the producer is mid-copy (or preempted
             * there). Give it the CPU rather than spin; never sleep on it (see below). */
            sf_thread_yield();
            continue;
        }
        if (thief && bit) sf_fetch_or_seqcst_u64(&p->idle_mask, bit);
        key = sf_event_prepare(&s->data_ev);
        /* Claims, not published items: see sf_ring_has_claims. */
        if (sf_ring_has_claims(&s->ring) || sf_ring_finished(&s->ring) ||
            sf_load_acquire_int(&p->stop) || sf_load_acquire_u64(&p->flush_seq) != flush_seen) {
            sf_event_cancel(&s->data_ev, key);
        } else if (p->steal && !thief && !sf_load_acquire_int(&s->steal_gated)) {
            /* The gate opened since this pass began: run it again as a thief. */
            sf_event_cancel(&s->data_ev, key);
        } else if (thief && sf_sched_any_claims(shards, nshards)) {
            /* Work elsewhere, perhaps not yet published: retry the steal, but give the
             * CPU away first (with more threads than cores the publisher may be waiting
             * for exactly this core). */
            sf_event_cancel(&s->data_ev, key);
            sf_thread_yield();
        } else {
            sf_event_wait(&s->data_ev, key, deadline_ns);
        }
        if (thief && bit) sf_fetch_and_seqcst_u64(&p->idle_mask, ~bit);
    }
}

/* S3's release: the stolen items were handed over (or need not be). */
static inline void sf_sched_release_hold(sf_pool *p) {
    atomic_fetch_sub_explicit(&p->flush_holds, 1, memory_order_seq_cst);
    sf_event_notify(&p->done_ev);
}

/* flush(): ask every worker to hand over its partial batch. Returns the request number to
 * wait for; the caller ends with sf_sched_flush_done. Workers are woken through their own
 * events (a fence-paired notify: the request is a seq_cst RMW, but on flush_seq, not on
 * what the workers re-check first). */
static inline uint64_t sf_sched_request_flush(sf_pool *p, sf_shard *shards, uint64_t nshards) {
    uint64_t seq;
    sf_fetch_add_seqcst_u64(&p->flush_active, 1);
    seq = sf_fetch_add_seqcst_u64(&p->flush_seq, 1) + 1;
    for (uint64_t i = 0; i < nshards; i++) sf_event_notify(&shards[i].data_ev);
    return seq;
}

static inline void sf_sched_flush_done(sf_pool *p) {
    atomic_fetch_sub_explicit(&p->flush_active, 1, memory_order_seq_cst);
}

/* A worker completed flush request `seq` (UINT64_MAX when it exits: it holds nothing). */
static inline void sf_sched_flushed(sf_pool *p, sf_shard *s, uint64_t seq) {
    sf_store_release_u64(&s->ctr.flushed, seq);
    sf_event_notify(&p->done_ev);
}

static inline int sf_sched_all_flushed(sf_pool *p, sf_shard *shards, uint64_t nshards,
                                       uint64_t seq) {
    if (sf_load_acquire_u32(&p->live) == 0) return 1; /* nobody left holding a batch */
    for (uint64_t i = 0; i < nshards; i++)
        if (sf_load_acquire_u64(&shards[i].ctr.flushed) < seq) return 0;
    return sf_load_seqcst_u64(&p->flush_holds) == 0;
}

/* Wait until every worker completed flush request `seq` (or exited), or the deadline.
 * Returns 1 when done. */
static inline int sf_sched_wait_flushed(sf_pool *p, sf_shard *shards, uint64_t nshards,
                                        uint64_t seq, int64_t deadline_ns) {
    for (;;) {
        uint32_t key;
        if (sf_sched_all_flushed(p, shards, nshards, seq)) return 1;
        if (deadline_ns >= 0 && sf_now_ns() >= deadline_ns) return 0;
        key = sf_event_prepare(&p->done_ev);
        if (sf_sched_all_flushed(p, shards, nshards, seq)) {
            sf_event_cancel(&p->done_ev, key);
            return 1;
        }
        sf_event_wait(&p->done_ev, key, deadline_ns);
    }
}

#endif /* SF_SCHED_H */
