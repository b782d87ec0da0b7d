/* interleave: deterministic interleavings of the ring, replayed in one thread.
 *
 * The stress harness finds races by chance; some need a thread to be descheduled at one
 * exact instruction. Here we force that: <stdatomic.h>'s atomic_load_explicit is
 * interposed (before the core headers are included, so they are unchanged) with a hook
 * that, right after a chosen load, runs other "threads"' operations to completion on the
 * same ring, then lets the interrupted call go on with the value it already read. That is
 * exactly what a preemption after that load looks like.
 *
 *   interleave            run every case; exit 0 when all pass, 1 otherwise.
 *
 * Case stale_tail_full: a producer reads `tail`, is preempted while other producers fill
 * and a consumer drains the ring (and one of them refreshes `head_cache`), then resumes.
 * The ring is empty, so its push must succeed (or at worst retry); it must never report
 * "full" (0), which ShardedPool turns into a drop (on_full="drop") or Full (on_full="raise").
 */
#define _GNU_SOURCE 1
#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Originals, captured before the interposition. */
static inline uint64_t orig_load_u64(_Atomic(uint64_t) *p, memory_order o) { return atomic_load_explicit(p, o); }
static inline uint32_t orig_load_u32(_Atomic(uint32_t) *p, memory_order o) { return atomic_load_explicit(p, o); }
static inline int orig_load_int(_Atomic(int) *p, memory_order o) { return atomic_load_explicit(p, o); }
static inline void *orig_load_ptr(_Atomic(void *) *p, memory_order o) { return atomic_load_explicit(p, o); }

static _Atomic(uint64_t) *hook_target; /* fire after the next load of this variable */
static void (*hook_fn)(void);

static inline uint64_t hooked_load_u64(_Atomic(uint64_t) *p, memory_order o) {
    uint64_t v = orig_load_u64(p, o);
    if (hook_target && p == hook_target) {
        void (*fn)(void) = hook_fn;
        hook_target = NULL; /* once; and the injected operations run unhooked */
        fn();
    }
    return v;
}

#undef atomic_load_explicit
#define atomic_load_explicit(p, o)                  \
    _Generic((p), _Atomic(uint64_t) *: hooked_load_u64, \
             _Atomic(uint32_t) *: orig_load_u32,     \
             _Atomic(int) *: orig_load_int,          \
             _Atomic(void *) *: orig_load_ptr)((p), (o))

#include "shardflow/_ring.h"

static int failures;
static sf_ring ring;

static void *item(uint64_t v) { return (void *)(uintptr_t)v; }

static void push_all(uint64_t n, uint64_t first) {
    for (uint64_t i = 0; i < n; i++) {
        void *p = item(first + i);
        if (sf_ring_push(&ring, &p, 1) != 1) {
            fprintf(stderr, "setup: push %" PRIu64 " failed\n", i);
            exit(2);
        }
    }
}

static void pop_all(void) {
    void *out[64];
    while (sf_ring_pop(&ring, out, 64)) {}
}

/* Other producers fill the ring, the consumer drains it, a producer pushes one more (and
 * refreshes head_cache to the drained head), the consumer takes it. */
static void others_run(void) {
    push_all(ring.capacity, 100);
    pop_all();
    push_all(1, 200);
    pop_all();
}

static void case_stale_tail_full(void) {
    void *mine = item(1);
    int64_t r;
    if (sf_ring_init(&ring, 4)) exit(2);
    hook_target = &ring.tail; /* the producer's first load in sf_ring_push */
    hook_fn = others_run;
    r = sf_ring_push(&ring, &mine, 1);
    uint64_t t = sf_ring_tail_index(&ring), h = orig_load_u64(&ring.head, memory_order_acquire);
    printf("stale_tail_full: push returned %" PRId64 " with tail=%" PRIu64 " head=%" PRIu64
           " head_cache=%" PRIu64 " capacity=%" PRIu64 " (ring %s)\n",
           r, t, h, orig_load_u64(&ring.head_cache, memory_order_relaxed), ring.capacity,
           t == h ? "empty" : "not empty");
    if (r != 1) {
        printf("  BUG: sf_ring_push reported %s on a ring with room: its relaxed read of "
               "`tail` was older than `head_cache`, so `t - h` wrapped around\n",
               r == 0 ? "full" : "closed");
        failures++;
    }
    pop_all();
    sf_ring_destroy(&ring);
}

int main(void) {
    case_stale_tail_full();
    printf("interleave: %s\n", failures ? "FAILED" : "all cases passed");
    return failures ? 1 : 0;
}
