/* interleave: deterministic interleavings of the ring, replayed in one thread.
 *
 * The stress harness finds races by chance; some need a thread to be descheduled at one
 * exact instruction. Here we force that: <stdatomic.h>'s atomic_load_explicit is
 * interposed (before the core headers are included, so they are unchanged) with a hook
 * that, right after a chosen load, runs other "threads"' operations to completion on the
 * same ring, then lets the interrupted call go on with the value it already read. That is
 * exactly what a preemption after that load looks like.
 *
 * A hook may also fire *before* a chosen load (the thread was preempted just before it, so
 * it reads what the others left), and on the n-th load of a variable rather than the next.
 *
 *   interleave            run every case; exit 0 when all pass, 1 otherwise.
 *
 * Case stale_tail_full: a producer reads `tail`, is preempted while other producers fill
 * and a consumer drains the ring (and one of them refreshes `head_cache`), then resumes.
 * The ring is empty, so its push must succeed (or at worst retry); it must never report
 * "full" (0), which ShardedPool turns into a drop (on_full="drop") or Full (on_full="raise").
 *
 * Case breaker_one_transition_per_acquire: caller A finds the breaker open with its reset
 * timeout passed, moves it to half_open, and is preempted before it reloads the state to
 * take a permit. Meanwhile B takes the trial and fails it: open again. A must not move it
 * open -> half_open a second time, because one acquire reports one transition (`*trans`)
 * and the listeners would miss one: every generation step must be reported exactly once.
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

static _Atomic(uint64_t) *hook_target; /* fire at a load of this variable */
static void (*hook_fn)(void);
static int hook_before; /* fire before the load (default: right after it) */
static int hook_skip;   /* loads of hook_target to let pass first */

static inline uint64_t hooked_load_u64(_Atomic(uint64_t) *p, memory_order o) {
    void (*fn)(void) = NULL;
    uint64_t v;
    if (hook_target && p == hook_target) {
        if (hook_skip > 0) {
            hook_skip--;
        } else {
            fn = hook_fn;
            hook_target = NULL; /* once; and the injected operations run unhooked */
        }
    }
    if (fn && hook_before) fn();
    v = orig_load_u64(p, o);
    if (fn && !hook_before) fn();
    return v;
}

#undef atomic_load_explicit
#define atomic_load_explicit(p, o)                  \
    _Generic((p), _Atomic(uint64_t) *: hooked_load_u64, \
             _Atomic(uint32_t) *: orig_load_u32,     \
             _Atomic(int) *: orig_load_int,          \
             _Atomic(void *) *: orig_load_ptr)((p), (o))

#include "shardflow/_ring.h"
#include "shardflow/_breaker.h"

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

static sf_breaker br;

/* B: takes the half-open trial and fails it (half_open -> open). */
static int b_transitions;
static void b_trial_fails(void) {
    uint64_t token = 0;
    int64_t remaining = 0;
    int t = -1;
    int r = sf_breaker_acquire(&br, 0, &token, &remaining, &t);
    if (t >= 0) b_transitions++;
    if (r != SF_BR_TRIAL) {
        printf("  setup: B expected a trial permit, got %d\n", r);
        failures++;
        return;
    }
    if (sf_breaker_record(&br, token, SF_BR_FAIL, 0) >= 0) b_transitions++;
}

static void case_breaker_one_transition_per_acquire(void) {
    uint64_t token = 0, gen0, gen1;
    int64_t remaining = 0;
    int t = -1, r, a_transitions;
    sf_breaker_zero(&br);
    br.max_failures = 1;
    br.reset_ns = 0; /* open -> half_open as soon as anyone asks */
    br.ho_max = 1;
    br.success_threshold = 3;
    atomic_init(&br.state, SF_BR_WORD(5, SF_BR_OPEN));
    gen0 = SF_BR_GEN(orig_load_u64(&br.state, memory_order_acquire));
    hook_target = &br.state;
    hook_skip = 1; /* A's first load sees open; fire before its second (the reload) */
    hook_before = 1;
    hook_fn = b_trial_fails;
    b_transitions = 0;
    r = sf_breaker_acquire(&br, 0, &token, &remaining, &t);
    hook_before = 0;
    hook_skip = 0;
    a_transitions = t >= 0;
    gen1 = SF_BR_GEN(orig_load_u64(&br.state, memory_order_acquire));
    printf("breaker_one_transition_per_acquire: A got %s, transitions reported %d (A) + %d (B), "
           "generation %" PRIu64 " -> %" PRIu64 "\n",
           r == SF_BR_TRIAL ? "a trial" : r == SF_BR_REJECT ? "refused" : "allowed",
           a_transitions, b_transitions, gen0, gen1);
    if ((uint64_t)(a_transitions + b_transitions) != gen1 - gen0) {
        printf("  BUG: %" PRIu64 " transitions made, %d reported: sf_breaker_acquire moved the "
               "breaker open -> half_open twice in one call and reported it once\n",
               gen1 - gen0, a_transitions + b_transitions);
        failures++;
    }
}

int main(void) {
    case_stale_tail_full();
    case_breaker_one_transition_per_acquire();
    printf("interleave: %s\n", failures ? "FAILED" : "all cases passed");
    return failures ? 1 : 0;
}
