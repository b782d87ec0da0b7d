/* stress: a pthreads stress harness for shardflow's C core, without Python.
 *
 * It includes the core headers as they ship (build with `-I ext`) and hammers them from
 * real threads, so that the same binary can be built plain, under ThreadSanitizer and
 * under AddressSanitizer + UndefinedBehaviorSanitizer (see Makefile).
 *
 *   stress SCENARIO [--ops N] [--capacity C] [--producers P] [--timeout S] [--seed X]
 *
 * Scenarios:
 *   ring      MPMC ring: P producers push distinct integers (single and batch pushes of
 *             varying sizes); one consumer drains with sf_ring_pop, a thief with
 *             sf_ring_pop_part(divisor=2). Exactly-once is checked with a per-value seen
 *             bitmap plus a sum and xor checksum; per-producer FIFO order is checked per
 *             consumer (each consumer takes contiguous ranges in claim order).
 *   shard     the park protocol: producers sf_shard_push and, when full, block in
 *             sf_shard_wait_space (with a deadline, or none); one worker sf_sched_wait
 *             with no deadline and parks when empty. Small capacities force many park /
 *             unpark cycles. Then the ring is closed + sf_shard_wake_all and the worker must
 *             leave with SF_WAIT_FINISHED having seen every item. A lost wake-up is a hang:
 *             the watchdog aborts with the ring and event state.
 *   counters  single-writer sf_counter_add / sf_counter_max by the owner while readers read
 *             (monotonic, never above the final value); rare-path fields bumped by several
 *             threads with fetch_add. Final values exact.
 *   pool      live/done protocol: sf_pool_worker_started before the thread starts,
 *             sf_pool_worker_exited at its end, sf_pool_wait_idle (timed and untimed) must
 *             return 1 only once every worker has exited, and everything the workers wrote
 *             must be visible to the joiner (TSan checks the happens-before edge).
 *   sched     the pool's scheduling with stealing on (_sched.h): 2-4 shards, a worker per
 *             shard in sf_sched_wait keeping partial batches (handed over when full, at a
 *             deadline, on a flush request after draining its own ring, at once when a
 *             steal returns with a flush hold, then sf_sched_release_hold), producers in
 *             sf_sched_push (half of them all to shard 0) blocking in sf_shard_wait_space
 *             when full, and a flusher (sf_sched_request_flush + wait_flushed +
 *             flush_done) checking that every value pushed before its request was handed
 *             over when the flush returns, and a gater closing and opening the workers'
 *             steal gates at random (sf_sched_gate, as a process runner does while its
 *             window is busy). Then exactly-once (bitmap, count, sum, xor),
 *             sum(stolen_in) == sum(stolen_out), no hold, idle bit or announcement left.
 *   hist      a latency histogram (_hist.h): one writer records known values (spread over
 *             the whole range and beyond it) while readers merge the buckets with relaxed
 *             loads (count and max never go backwards, a merge never exceeds the final
 *             count); then count, sum and max are exact, the buckets add up to the count,
 *             every value lies within its bucket's [lo, hi], buckets tile [0, 2^40) and a
 *             bucket is at most 1/128 of its lower bound wide.
 *   breaker   a circuit breaker (_breaker.h) hammered by 4 threads: admission (one load when
 *             closed, sf_breaker_acquire otherwise) and sf_breaker_record, every k-th call
 *             failing, with the reset timeout 0 so it cycles closed -> open -> half_open
 *             all the time; three set-ups (consecutive failures, a count window, a time
 *             window). Every transition is reported to exactly one caller (the sum of
 *             reported transitions equals the generations the state word moved), no more
 *             than half_open_max_calls trials ever run at once, none is left in flight,
 *             and the calls/failures totals are exact.
 *   handoff   the GIL hand-off of _pool.h: a pthread mutex stands for the GIL; a producer
 *             holding it makes work units; 3 workers each take a unit (as a drain takes
 *             items, without the GIL), then sf_pool_want_gil, lock it, sf_pool_got_gil, do
 *             the unit, unlock. The producer hands the GIL over whenever sf_pool_should_hand_gil says a worker waits
 *             (unlock, sf_pool_wait_gil_taken with no deadline in half the hand-offs, a
 *             short one in the others, relock). A lost wake-up is a hang (the watchdog);
 *             an untimed wait must return 1; no waiter count or announcement is left, and
 *             the work counted under the mutex is exact (TSan: the mutex is the only edge).
 *   (shard and sched also check the queue-wait stamps of _ring.h: every stamped index,
 *   one per min(64, capacity) items, is recorded exactly once into the histogram of the
 *   worker that took it, thefts included, while a reader merges those histograms.)
 *   all       every scenario above, in turn (ring and shard at several capacities).
 *
 * Exit status: 0 when every check passes, 1 on a failed check, 2 on bad usage,
 * 3 when the watchdog fires. One summary line per scenario on stdout.
 */
#define _GNU_SOURCE 1
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "shardflow/_atomic.h"
#include "shardflow/_breaker.h"
#include "shardflow/_counters.h"
#include "shardflow/_hist.h"
#include "shardflow/_park.h"
#include "shardflow/_pool.h"
#include "shardflow/_ring.h"
#include "shardflow/_sched.h"
#include "shardflow/_shard.h"
#include "shardflow/_shmring.h"

/* ------------------------------------------------------------------ options, checks */

static struct {
    uint64_t ops;        /* items (or increments) per scenario */
    uint64_t capacity;   /* 0: the scenario's default set */
    int producers;
    int timeout_s;
    uint64_t seed;
} opt = {10000000, 0, 4, 120, 0x9e3779b97f4a7c15ULL};

static sf_atomic_int failures;

/* Print the first failures only: one broken invariant can repeat a million times. */
static void fail(const char *fmt, ...) {
    va_list ap;
    if (atomic_fetch_add(&failures, 1) >= 20) return;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

#define CHECK(cond, ...)                    \
    do {                                    \
        if (!(cond)) fail(__VA_ARGS__);     \
    } while (0)

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void start(pthread_t *t, void *(*fn)(void *), void *arg) {
    int rc = pthread_create(t, NULL, fn, arg);
    if (rc) {
        fprintf(stderr, "pthread_create: %s\n", strerror(rc));
        exit(2);
    }
}

static void join(pthread_t t) { pthread_join(t, NULL); }

/* xorshift64*: per-thread, deterministic from the seed. */
static inline uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ------------------------------------------------------------------ watchdog */

/* A hang (a lost wake-up, a livelock) must fail loudly, not time out the CI job. The
 * watchdog sleeps on its own condition variable and, if the scenario does not finish in
 * time, prints what the scenario registered and aborts. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int armed;
    uint64_t generation;
    const char *scenario;
    sf_shard *shard; /* state to dump, if any */
    sf_ring *ring;
    sf_atomic_u64 *progress; /* items consumed so far */
} wd = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL, NULL, NULL, NULL};

static void dump_ring(const char *what, sf_ring *r) {
    uint64_t t = atomic_load(&r->tail);
    fprintf(stderr, "  %s: tail=%" PRIu64 "%s commit=%" PRIu64 " head=%" PRIu64
                    " head_cache=%" PRIu64 " capacity=%" PRIu64 "\n",
            what, t & ~SF_RING_CLOSED, (t & SF_RING_CLOSED) ? " (closed)" : "",
            (uint64_t)atomic_load(&r->commit), (uint64_t)atomic_load(&r->head),
            (uint64_t)atomic_load(&r->head_cache), r->capacity);
}

static void *watchdog_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&wd.mu);
    for (;;) {
        while (!wd.armed) pthread_cond_wait(&wd.cv, &wd.mu);
        uint64_t gen = wd.generation;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += opt.timeout_s;
        int rc = 0;
        while (wd.armed && wd.generation == gen && rc == 0)
            rc = pthread_cond_timedwait(&wd.cv, &wd.mu, &dl);
        if (wd.armed && wd.generation == gen) {
            fprintf(stderr,
                    "WATCHDOG: scenario '%s' did not finish within %d s: a lost wake-up or a "
                    "livelock\n",
                    wd.scenario, opt.timeout_s);
            if (wd.progress)
                fprintf(stderr, "  consumed so far: %" PRIu64 "\n",
                        (uint64_t)atomic_load(wd.progress));
            if (wd.ring) dump_ring("ring", wd.ring);
            if (wd.shard) {
                dump_ring("ring", &wd.shard->ring);
                fprintf(stderr, "  data_ev: waiters=%u epoch=%u; space_ev: waiters=%u epoch=%u\n",
                        (unsigned)SF_EV_WAITERS(atomic_load(&wd.shard->data_ev.word)),
                        (unsigned)SF_EV_EPOCH_OF(atomic_load(&wd.shard->data_ev.word)),
                        (unsigned)SF_EV_WAITERS(atomic_load(&wd.shard->space_ev.word)),
                        (unsigned)SF_EV_EPOCH_OF(atomic_load(&wd.shard->space_ev.word)));
            }
            fflush(stderr);
            _exit(3);
        }
    }
    return NULL;
}

static void watchdog_arm(const char *scenario, sf_ring *r, sf_shard *s, sf_atomic_u64 *progress) {
    pthread_mutex_lock(&wd.mu);
    wd.scenario = scenario;
    wd.ring = r;
    wd.shard = s;
    wd.progress = progress;
    wd.armed = 1;
    wd.generation++;
    pthread_cond_broadcast(&wd.cv);
    pthread_mutex_unlock(&wd.mu);
}

static void watchdog_disarm(void) {
    pthread_mutex_lock(&wd.mu);
    wd.armed = 0;
    wd.ring = NULL;
    wd.shard = NULL;
    wd.progress = NULL;
    wd.generation++;
    pthread_cond_broadcast(&wd.cv);
    pthread_mutex_unlock(&wd.mu);
}

/* ------------------------------------------------------------------ exactly-once ledger */

/* Values are 1..n (never NULL), producer p owns the contiguous block [lo_p, hi_p).
 * `seen` is a bitmap set with fetch_or, so a duplicate is caught at the moment it happens,
 * whichever consumer takes it. */
typedef struct ledger {
    uint64_t n;
    int producers;
    sf_atomic_u64 *seen;
    sf_atomic_u64 consumed;
    sf_atomic_u64 sum;
    sf_atomic_u64 xor;
} ledger;

static void ledger_init(ledger *l, uint64_t n, int producers) {
    l->n = n;
    l->producers = producers;
    l->seen = xcalloc((size_t)(n / 64 + 2), sizeof(sf_atomic_u64));
    atomic_init(&l->consumed, 0);
    atomic_init(&l->sum, 0);
    atomic_init(&l->xor, 0);
}

static void ledger_free(ledger *l) { free(l->seen); }

static uint64_t block_lo(const ledger *l, int p) { return 1 + l->n * (uint64_t)p / (uint64_t)l->producers; }
static uint64_t block_hi(const ledger *l, int p) { return 1 + l->n * (uint64_t)(p + 1) / (uint64_t)l->producers; }

static int owner_of(const ledger *l, uint64_t v) {
    int p = (int)((v - 1) * (uint64_t)l->producers / l->n);
    while (p > 0 && v < block_lo(l, p)) p--;
    while (p + 1 < l->producers && v >= block_hi(l, p)) p++;
    return p;
}

/* A consumer's private view: checksums and the last value seen from each producer. */
typedef struct tally {
    uint64_t count, sum, xor;
    uint64_t *last; /* per producer */
    const char *who;
} tally;

static void tally_init(tally *t, const ledger *l, const char *who) {
    memset(t, 0, sizeof *t);
    t->last = xcalloc((size_t)l->producers, sizeof(uint64_t));
    t->who = who;
}

static void tally_take(tally *t, ledger *l, void *const *items, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = (uint64_t)(uintptr_t)items[i];
        if (v < 1 || v > l->n) {
            fail("%s: value %" PRIu64 " out of range [1, %" PRIu64 "]", t->who, v, l->n);
            continue;
        }
        uint64_t bit = (uint64_t)1 << (v & 63);
        if (atomic_fetch_or_explicit(&l->seen[v >> 6], bit, memory_order_relaxed) & bit)
            fail("%s: value %" PRIu64 " taken twice", t->who, v);
        int p = owner_of(l, v);
        if (v <= t->last[p])
            fail("%s: producer %d's value %" PRIu64 " after %" PRIu64 " (order broken)", t->who,
                 p, v, t->last[p]);
        t->last[p] = v;
        t->count++;
        t->sum += v;
        t->xor ^= v;
    }
    if (n) atomic_fetch_add_explicit(&l->consumed, n, memory_order_relaxed);
}

static void tally_merge(tally *t, ledger *l) {
    atomic_fetch_add(&l->sum, t->sum);
    atomic_fetch_xor(&l->xor, t->xor);
    free(t->last);
}

/* Everything 1..n seen exactly once: count, bitmap, sum and xor all agree. */
static void ledger_verify(ledger *l, const char *scenario) {
    uint64_t want_sum = l->n * (l->n + 1) / 2, want_xor = 0, missing = 0, first_missing = 0;
    for (uint64_t v = 1; v <= l->n; v++) {
        want_xor ^= v;
        if (!(atomic_load_explicit(&l->seen[v >> 6], memory_order_relaxed) & ((uint64_t)1 << (v & 63)))) {
            if (!missing) first_missing = v;
            missing++;
        }
    }
    CHECK(atomic_load(&l->consumed) == l->n, "%s: consumed %" PRIu64 " of %" PRIu64, scenario,
          (uint64_t)atomic_load(&l->consumed), l->n);
    CHECK(missing == 0, "%s: %" PRIu64 " values never seen (first: %" PRIu64 ")", scenario,
          missing, first_missing);
    CHECK(atomic_load(&l->sum) == want_sum, "%s: sum %" PRIu64 " != %" PRIu64, scenario,
          (uint64_t)atomic_load(&l->sum), want_sum);
    CHECK(atomic_load(&l->xor) == want_xor, "%s: xor %" PRIu64 " != %" PRIu64, scenario,
          (uint64_t)atomic_load(&l->xor), want_xor);
}

/* Batch size for the next push: mostly single pushes and small batches, sometimes large
 * ones (larger than small capacities, to exercise partial pushes). */
static uint64_t pick_batch(uint64_t *seed, uint64_t left) {
    uint64_t r = rnd(seed) % 16, k;
    if (r < 6) k = 1;
    else if (r < 12) k = 2 + rnd(seed) % 7;
    else if (r < 15) k = 9 + rnd(seed) % 56;
    else k = 65 + rnd(seed) % 192;
    return k < left ? k : left;
}

#define MAX_BATCH 256

/* ------------------------------------------------------------------ (a) ring */

typedef struct ring_ctx {
    sf_ring ring;
    ledger led;
    sf_atomic_u64 full_returns; /* push returned 0 */
    sf_atomic_u64 partial;      /* push took fewer than asked */
    sf_atomic_u64 stolen;
} ring_ctx;

typedef struct ring_arg {
    ring_ctx *c;
    int index;
} ring_arg;

static void *ring_producer(void *arg) {
    ring_arg *a = arg;
    ring_ctx *c = a->c;
    uint64_t seed = opt.seed ^ (0x1000193ULL * (uint64_t)(a->index + 1));
    uint64_t v = block_lo(&c->led, a->index), hi = block_hi(&c->led, a->index);
    void *batch[MAX_BATCH];
    uint64_t full = 0, partial = 0;
    while (v < hi) {
        uint64_t want = pick_batch(&seed, hi - v);
        for (uint64_t i = 0; i < want; i++) batch[i] = (void *)(uintptr_t)(v + i);
        /* One item: half the time through the per-item submit's sf_ring_push1. */
        int64_t k = want == 1 && (rnd(&seed) & 1) ? sf_ring_push1(&c->ring, batch[0])
                                                   : sf_ring_push(&c->ring, batch, want);
        if (k < 0) {
            fail("ring: producer %d: push reported closed on an open ring", a->index);
            return NULL;
        }
        if (k == 0) {
            full++;
            sf_thread_yield();
            continue;
        }
        if ((uint64_t)k > want) {
            fail("ring: push took %" PRId64 " of %" PRIu64, k, want);
            return NULL;
        }
        if ((uint64_t)k < want) partial++;
        v += (uint64_t)k;
    }
    atomic_fetch_add(&c->full_returns, full);
    atomic_fetch_add(&c->partial, partial);
    return NULL;
}

typedef struct consumer_arg {
    ring_ctx *c;
    int thief;
} consumer_arg;

static void *ring_consumer(void *arg) {
    consumer_arg *a = arg;
    ring_ctx *c = a->c;
    void *out[MAX_BATCH];
    tally t;
    unsigned idle = 0;
    uint64_t seed = opt.seed ^ (a->thief ? 0xabcdefULL : 0x123457ULL);
    tally_init(&t, &c->led, a->thief ? "ring thief" : "ring consumer");
    while (atomic_load_explicit(&c->led.consumed, memory_order_relaxed) < c->led.n) {
        uint64_t max = 1 + rnd(&seed) % (a->thief ? 32 : MAX_BATCH);
        uint64_t n = a->thief ? sf_ring_pop_part(&c->ring, out, max, 2)
                              : sf_ring_pop(&c->ring, out, max);
        if (n > max) {
            fail("%s: popped %" PRIu64 " > max %" PRIu64, t.who, n, max);
            break;
        }
        if (n == 0) {
            /* Back off like a real consumer: on 2 cores a consumer that never yields keeps
             * a preempted claimer (which every later producer waits for) off the CPU. */
            if (a->thief || ++idle % 64 == 0) sf_thread_yield();
            else sf_cpu_relax();
            continue;
        }
        idle = 0;
        tally_take(&t, &c->led, out, n);
        if (a->thief) atomic_fetch_add(&c->stolen, n);
    }
    tally_merge(&t, &c->led);
    return NULL;
}

static int scenario_ring(uint64_t capacity, int thief) {
    ring_ctx *c = xcalloc(1, sizeof *c); /* the ring's padding wants no stack */
    int P = opt.producers;
    pthread_t pt[64], ct[2];
    ring_arg pa[64];
    consumer_arg ca[2];
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    if (sf_ring_init(&c->ring, capacity)) {
        fprintf(stderr, "sf_ring_init failed\n");
        exit(2);
    }
    ledger_init(&c->led, opt.ops, P);
    watchdog_arm("ring", &c->ring, NULL, &c->led.consumed);
    for (int i = 0; i < 1 + thief; i++) {
        ca[i] = (consumer_arg){c, i};
        start(&ct[i], ring_consumer, &ca[i]);
    }
    for (int i = 0; i < P; i++) {
        pa[i] = (ring_arg){c, i};
        start(&pt[i], ring_producer, &pa[i]);
    }
    for (int i = 0; i < P; i++) join(pt[i]);
    for (int i = 0; i < 1 + thief; i++) join(ct[i]);
    watchdog_disarm();

    ledger_verify(&c->led, "ring");
    /* The indices end where the items say they should, and close refuses further claims. */
    uint64_t n = opt.ops;
    CHECK(sf_ring_tail_index(&c->ring) == n && atomic_load(&c->ring.commit) == n &&
              atomic_load(&c->ring.head) == n,
          "ring: final indices tail=%" PRIu64 " commit=%" PRIu64 " head=%" PRIu64 ", want %" PRIu64,
          sf_ring_tail_index(&c->ring), (uint64_t)atomic_load(&c->ring.commit),
          (uint64_t)atomic_load(&c->ring.head), n);
    CHECK(!sf_ring_has_items(&c->ring) && !sf_ring_has_claims(&c->ring), "ring: not empty at the end");
    CHECK(sf_ring_close(&c->ring) == 1, "ring: first close did not report closing");
    CHECK(sf_ring_close(&c->ring) == 0, "ring: second close reported closing");
    {
        void *one = (void *)(uintptr_t)1;
        CHECK(sf_ring_push(&c->ring, &one, 1) == -1, "ring: push after close did not return -1");
    }
    CHECK(sf_ring_finished(&c->ring), "ring: closed and empty but not finished");
    double secs = (double)(sf_now_ns() - t0) / 1e9;
    printf("ring      capacity=%-6" PRIu64 " producers=%d consumers=%d items=%" PRIu64
           " stolen=%" PRIu64 " full=%" PRIu64 " partial=%" PRIu64 " %.2fs %s\n",
           capacity, P, 1 + thief, n, (uint64_t)atomic_load(&c->stolen),
           (uint64_t)atomic_load(&c->full_returns), (uint64_t)atomic_load(&c->partial), secs,
           atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    ledger_free(&c->led);
    sf_ring_destroy(&c->ring);
    free(c);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ queue-wait stamps */

/* Reader of the workers' queue-wait histograms while they record (TSan checks the
 * relaxed single-writer protocol; the checks: counts and maxima never go backwards). */
typedef struct hist_reader_ctx {
    sf_shard *shards;
    uint64_t nshards;
    sf_atomic_int stop;
    uint64_t reads;
} hist_reader_ctx;

static void *hist_reader(void *arg) {
    hist_reader_ctx *c = arg;
    uint64_t last_count[64] = {0}, last_max[64] = {0}; /* nshards <= 64 */
    uint64_t *acc = xcalloc(SF_HIST_BUCKETS, sizeof(uint64_t));
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        for (uint64_t i = 0; i < c->nshards; i++) {
            sf_hist *h = &c->shards[i].qwait;
            uint64_t n = sf_load_relaxed_u64(&h->count), mx = sf_load_relaxed_u64(&h->max_ns);
            CHECK(n >= last_count[i], "stamps: shard %" PRIu64 " qwait count went back", i);
            CHECK(mx >= last_max[i], "stamps: shard %" PRIu64 " qwait max went back", i);
            last_count[i] = n;
            last_max[i] = mx;
            sf_hist_merge_into(h, acc);
        }
        c->reads++;
        sf_thread_yield();
    }
    free(acc);
    return NULL;
}

/* After the workers exited: each stamped index was recorded once, by whoever took it. */
static void check_stamps(const char *who, sf_shard *shards, uint64_t nshards) {
    uint64_t stamped = 0, recorded = 0;
    for (uint64_t i = 0; i < nshards; i++) {
        sf_ring *r = &shards[i].ring;
        sf_hist *h = &shards[i].qwait;
        uint64_t sum = 0;
        stamped += (sf_ring_tail_index(r) + r->stamp_every - 1) / r->stamp_every;
        recorded += sf_load_relaxed_u64(&h->count);
        for (uint64_t b = 0; b < SF_HIST_BUCKETS; b++) sum += sf_load_relaxed_u64(&h->buckets[b]);
        CHECK(sum == sf_load_relaxed_u64(&h->count),
              "%s: shard %" PRIu64 ": buckets add up to %" PRIu64 ", count %" PRIu64, who, i, sum,
              (uint64_t)sf_load_relaxed_u64(&h->count));
        /* A wait longer than the watchdog's limit would be a garbage stamp. */
        CHECK(sf_load_relaxed_u64(&h->max_ns) <= (uint64_t)opt.timeout_s * 1000000000u,
              "%s: shard %" PRIu64 ": queue wait max %" PRIu64 " ns", who, i,
              (uint64_t)sf_load_relaxed_u64(&h->max_ns));
    }
    CHECK(stamped == recorded, "%s: %" PRIu64 " stamped indices, %" PRIu64 " queue waits recorded",
          who, stamped, recorded);
}

/* ------------------------------------------------------------------ (b) shard */

typedef struct shard_ctx {
    sf_shard *shard;
    sf_pool pool; /* one shard, no stealing: the worker waits exactly as the pool's do */
    ledger led;
    sf_atomic_u64 waits;    /* producer waits for space */
    sf_atomic_u64 timeouts; /* ... that returned 0 (deadline, or room taken by another) */
    int64_t finished_rc;
    uint64_t drains;
} shard_ctx;

typedef struct shard_arg {
    shard_ctx *c;
    int index;
} shard_arg;

static void *shard_producer(void *arg) {
    shard_arg *a = arg;
    shard_ctx *c = a->c;
    uint64_t seed = opt.seed ^ (0x51ed27ULL * (uint64_t)(a->index + 1));
    uint64_t v = block_lo(&c->led, a->index), hi = block_hi(&c->led, a->index);
    void *batch[MAX_BATCH];
    uint64_t waits = 0, timeouts = 0;
    while (v < hi) {
        uint64_t want = pick_batch(&seed, hi - v);
        if (want > 16) want = 16;
        for (uint64_t i = 0; i < want; i++) batch[i] = (void *)(uintptr_t)(v + i);
        int64_t k = sf_shard_push(c->shard, batch, want);
        if (k < 0) {
            fail("shard: producer %d: push reported closed before close", a->index);
            return NULL;
        }
        if (k > 0) {
            v += (uint64_t)k;
            /* Now and then pause so that the worker runs dry and parks. */
            if (rnd(&seed) % 64 == 0) sf_thread_yield();
            continue;
        }
        /* Full: block. Half the waits have no deadline, so a lost wake-up on space_ev
         * hangs (and the watchdog reports it); the others have a short one. */
        int64_t deadline = (rnd(&seed) & 1) ? -1 : sf_now_ns() + 200000;
        waits++;
        /* 0 means "no room now": the deadline passed, or (even untimed) another producer
         * took the room this wake-up announced. Either way: push again. */
        if (!sf_shard_wait_space(c->shard, deadline)) timeouts++;
    }
    atomic_fetch_add(&c->waits, waits);
    atomic_fetch_add(&c->timeouts, timeouts);
    return NULL;
}

static void *shard_worker(void *arg) {
    shard_ctx *c = arg;
    void *out[MAX_BATCH];
    tally t;
    uint64_t seed = opt.seed ^ 0x77ULL;
    tally_init(&t, &c->led, "shard worker");
    for (;;) {
        uint64_t max = 1 + rnd(&seed) % 64;
        int hold = 0;
        int64_t r = sf_sched_wait(&c->pool, c->shard, 1, 0, out, max, -1, 0, &hold);
        if (r == SF_WAIT_FINISHED) break;
        if (r == SF_WAIT_TIMEOUT) {
            fail("shard: untimed wait_pop returned TIMEOUT with stop unset");
            break;
        }
        if (r < 0 || (uint64_t)r > max) {
            fail("shard: wait_pop returned %" PRId64 " (max %" PRIu64 ")", r, max);
            break;
        }
        tally_take(&t, &c->led, out, (uint64_t)r);
        c->drains++;
        /* A slow worker now and then, so that producers fill the ring and block. */
        if (rnd(&seed) % 32 == 0) sf_thread_yield();
    }
    tally_merge(&t, &c->led);
    return NULL;
}

static int scenario_shard(uint64_t capacity) {
    shard_ctx c;
    int P = opt.producers;
    pthread_t pt[64], wt;
    shard_arg pa[64];
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    memset(&c, 0, sizeof c);
    c.shard = sf_shards_alloc(1);
    if (!c.shard || sf_shard_init(c.shard, capacity)) {
        fprintf(stderr, "sf_shard_init failed\n");
        exit(2);
    }
    if (sf_pool_init(&c.pool)) {
        fprintf(stderr, "sf_pool_init failed\n");
        exit(2);
    }
    /* The shard protocol parks on every empty ring: far fewer items than the ring test. */
    ledger_init(&c.led, opt.ops / 4 ? opt.ops / 4 : 1, P);
    watchdog_arm("shard", NULL, c.shard, &c.led.consumed);
    start(&wt, shard_worker, &c);
    for (int i = 0; i < P; i++) {
        pa[i] = (shard_arg){&c, i};
        start(&pt[i], shard_producer, &pa[i]);
    }
    for (int i = 0; i < P; i++) join(pt[i]);
    /* Let the worker run dry and park before the close, sometimes: the close must wake it. */
    if (opt.seed & 1) usleep(2000);
    CHECK(sf_ring_close(&c.shard->ring) == 1, "shard: close did not report closing");
    sf_shard_wake_all(c.shard);
    join(wt);
    watchdog_disarm();

    ledger_verify(&c.led, "shard");
    check_stamps("shard", c.shard, 1);
    CHECK(sf_ring_finished(&c.shard->ring), "shard: worker finished but ring not finished");
    {
        void *one = (void *)(uintptr_t)1;
        CHECK(sf_shard_push(c.shard, &one, 1) == -1, "shard: push after close did not return -1");
        CHECK(sf_shard_wait_space(c.shard, -1) == 1, "shard: wait_space on a closed ring");
    }
    CHECK(SF_EV_WAITERS(atomic_load(&c.shard->data_ev.word)) == 0 && SF_EV_WAITERS(atomic_load(&c.shard->space_ev.word)) == 0,
          "shard: waiters left announced (data %u, space %u)",
          (unsigned)SF_EV_WAITERS(atomic_load(&c.shard->data_ev.word)),
          (unsigned)SF_EV_WAITERS(atomic_load(&c.shard->space_ev.word)));
    double secs = (double)(sf_now_ns() - t0) / 1e9;
    printf("shard     capacity=%-6" PRIu64 " producers=%d items=%" PRIu64 " drains=%" PRIu64
           " worker_wakeups=%u producer_waits=%" PRIu64 " (returned 0: %" PRIu64
           ") space_wakeups=%u %.2fs %s\n",
           capacity, P, c.led.n, c.drains, (unsigned)SF_EV_EPOCH_OF(atomic_load(&c.shard->data_ev.word)),
           (uint64_t)atomic_load(&c.waits), (uint64_t)atomic_load(&c.timeouts),
           (unsigned)SF_EV_EPOCH_OF(atomic_load(&c.shard->space_ev.word)), secs,
           atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    ledger_free(&c.led);
    sf_shard_destroy(c.shard);
    sf_shards_free(c.shard);
    sf_pool_destroy(&c.pool);
    return atomic_load(&failures) == before;
}


/* ------------------------------------------------------------------ histogram */

typedef struct hist_ctx {
    sf_hist h;
    uint64_t n;
    sf_atomic_int done;
} hist_ctx;

static uint64_t hist_value(uint64_t i) {
    /* Spread over every power of two up to 2^42 (beyond the last bucket), low bits mixed. */
    uint64_t x = i * 0x9E3779B97F4A7C15ULL;
    return (x >> 20) >> (x % 43);
}

static void *hist_writer(void *arg) {
    hist_ctx *c = arg;
    for (uint64_t i = 0; i < c->n; i++) sf_hist_record(&c->h, hist_value(i));
    atomic_store_explicit(&c->done, 1, memory_order_release);
    return NULL;
}

static void *hist_merger(void *arg) {
    hist_ctx *c = arg;
    uint64_t *acc = xcalloc(SF_HIST_BUCKETS, sizeof(uint64_t));
    uint64_t last = 0;
    for (;;) {
        int done = atomic_load_explicit(&c->done, memory_order_acquire);
        uint64_t n = sf_load_relaxed_u64(&c->h.count), total = 0;
        CHECK(n >= last && n <= c->n, "hist: count %" PRIu64 " after %" PRIu64, n, last);
        last = n;
        memset(acc, 0, SF_HIST_BUCKETS * sizeof(uint64_t));
        sf_hist_merge_into(&c->h, acc);
        for (uint64_t b = 0; b < SF_HIST_BUCKETS; b++) total += acc[b];
        CHECK(total <= c->n, "hist: merged %" PRIu64 " values of %" PRIu64, total, c->n);
        if (done) break;
        sf_thread_yield();
    }
    free(acc);
    return NULL;
}

static int scenario_hist(void) {
    hist_ctx c;
    pthread_t w, r[2];
    int before = atomic_load(&failures);
    int64_t t0 = sf_now_ns();
    uint64_t sum = 0, mx = 0, total = 0, prev_hi = 0;
    memset(&c, 0, sizeof c);
    if (sf_hist_init(&c.h)) {
        fprintf(stderr, "sf_hist_init failed\n");
        exit(2);
    }
    c.n = opt.ops;
    atomic_init(&c.done, 0);
    start(&r[0], hist_merger, &c);
    start(&r[1], hist_merger, &c);
    start(&w, hist_writer, &c);
    join(w);
    join(r[0]);
    join(r[1]);
    for (uint64_t i = 0; i < c.n; i++) {
        uint64_t v = hist_value(i), idx = sf_hist_index(v), cv = v > SF_HIST_MAX_NS ? SF_HIST_MAX_NS : v;
        sum += v;
        if (v > mx) mx = v;
        if (i < 100000)
            CHECK(sf_hist_lo(idx) <= cv && cv <= sf_hist_hi(idx),
                  "hist: %" PRIu64 " outside its bucket %" PRIu64 " [%" PRIu64 ", %" PRIu64 "]", v,
                  idx, sf_hist_lo(idx), sf_hist_hi(idx));
    }
    for (uint64_t b = 0; b < SF_HIST_BUCKETS; b++) {
        uint64_t lo = sf_hist_lo(b), hi = sf_hist_hi(b);
        total += atomic_load(&c.h.buckets[b]);
        CHECK(b == 0 ? lo == 0 : lo == prev_hi + 1, "hist: bucket %" PRIu64 " leaves a gap", b);
        CHECK(hi >= lo && (lo < 256 || (hi - lo + 1) * 128 <= lo),
              "hist: bucket %" PRIu64 " [%" PRIu64 ", %" PRIu64 "] too wide", b, lo, hi);
        prev_hi = hi;
    }
    CHECK(prev_hi == SF_HIST_MAX_NS, "hist: buckets end at %" PRIu64, prev_hi);
    CHECK(atomic_load(&c.h.count) == c.n && total == c.n,
          "hist: count %" PRIu64 ", buckets %" PRIu64 ", recorded %" PRIu64,
          (uint64_t)atomic_load(&c.h.count), total, c.n);
    CHECK(atomic_load(&c.h.sum_ns) == sum, "hist: sum differs");
    CHECK(atomic_load(&c.h.max_ns) == mx, "hist: max %" PRIu64 " != %" PRIu64,
          (uint64_t)atomic_load(&c.h.max_ns), mx);
    printf("hist      values=%" PRIu64 " buckets=%" PRIu64 " max=%" PRIu64 " %.2fs %s\n", c.n,
           (uint64_t)SF_HIST_BUCKETS, mx, (double)(sf_now_ns() - t0) / 1e9,
           atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    sf_hist_destroy(&c.h);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ breaker */

#define BREAKER_THREADS 4

typedef struct breaker_ctx {
    sf_breaker *b;
    uint64_t n;            /* calls per thread */
    unsigned fail_every;
    sf_atomic_u64 inside;  /* trials running now */
    sf_atomic_u64 most;    /* most trials ever running at once */
    sf_atomic_u64 reported;/* transitions reported to callers */
    sf_atomic_u64 records; /* outcomes recorded */
    sf_atomic_u64 fails;   /* of which failures */
} breaker_ctx;

static int is_move(int t) { return t >= 0 && (t >> 4) != (t & 15); }

static void *breaker_caller(void *arg) {
    breaker_ctx *c = arg;
    uint64_t reported = 0, fails = 0, records = 0;
    for (uint64_t i = 0; i < c->n; i++) {
        uint64_t w = sf_load_acquire_u64(&c->b->state), token = w, x, m;
        int64_t remaining = 0;
        int r = SF_BR_ALLOW, t = -1, flags;
        if (SF_BR_STATE(w) != SF_BR_CLOSED && SF_BR_STATE(w) != SF_BR_DISABLED)
            r = sf_breaker_acquire(c->b, sf_now_ns(), &token, &remaining, &t);
        reported += (uint64_t)is_move(t);
        if (r == SF_BR_REJECT) continue;
        if (r == SF_BR_TRIAL) {
            x = sf_fetch_add_acqrel_u64(&c->inside, 1) + 1;
            m = sf_load_relaxed_u64(&c->most);
            while (x > m && !sf_cas_acqrel_u64(&c->most, &m, x)) {}
            for (int k = 0; k < 16; k++) sf_cpu_relax();
            sf_fetch_sub_relaxed_u64(&c->inside, 1);
        }
        flags = (c->fail_every && (i + 1) % c->fail_every == 0) ? SF_BR_FAIL : SF_BR_OK;
        fails += flags == SF_BR_FAIL;
        records++;
        reported += (uint64_t)is_move(sf_breaker_record(c->b, token, flags, sf_now_ns()));
    }
    sf_fetch_add_relaxed_u64(&c->reported, reported);
    sf_fetch_add_relaxed_u64(&c->records, records);
    sf_fetch_add_relaxed_u64(&c->fails, fails);
    return NULL;
}

static int scenario_breaker(const char *name, int win_kind, unsigned fail_every) {
    breaker_ctx c;
    pthread_t t[BREAKER_THREADS];
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    uint64_t gen;
    memset(&c, 0, sizeof c);
    c.b = xcalloc(1, sizeof *c.b);
    sf_breaker_zero(c.b);
    c.b->reset_ns = 0;
    c.b->ho_max = 2;
    c.b->success_threshold = 3;
    if (win_kind == SF_WIN_NONE) {
        c.b->max_failures = 1;
    } else {
        c.b->failure_rate = 0.2;
        c.b->minimum_calls = 5;
        if (sf_breaker_alloc_window(c.b, win_kind, win_kind == SF_WIN_COUNT ? 16 : 8,
                                    win_kind == SF_WIN_COUNT ? 1 : 100000)) {
            fprintf(stderr, "sf_breaker_alloc_window failed\n");
            exit(2);
        }
    }
    c.n = opt.ops / BREAKER_THREADS ? opt.ops / BREAKER_THREADS : 1;
    c.fail_every = fail_every;
    watchdog_arm("breaker", NULL, NULL, NULL);
    for (int i = 0; i < BREAKER_THREADS; i++) start(&t[i], breaker_caller, &c);
    for (int i = 0; i < BREAKER_THREADS; i++) join(t[i]);
    watchdog_disarm();
    gen = SF_BR_GEN(atomic_load(&c.b->state));
    CHECK(atomic_load(&c.reported) == gen,
          "breaker %s: %" PRIu64 " transitions made, %" PRIu64 " reported", name, gen,
          (uint64_t)atomic_load(&c.reported));
    CHECK(gen > 0, "breaker %s: never moved", name);
    CHECK(atomic_load(&c.most) <= c.b->ho_max, "breaker %s: %" PRIu64 " trials at once > %u",
          name, (uint64_t)atomic_load(&c.most), c.b->ho_max);
    CHECK(SF_HO_INFLIGHT(atomic_load(&c.b->ho)) == 0, "breaker %s: trials left in flight",
          name);
    CHECK(atomic_load(&c.b->calls) == atomic_load(&c.records),
          "breaker %s: calls %" PRIu64 " != %" PRIu64 " recorded", name,
          (uint64_t)atomic_load(&c.b->calls), (uint64_t)atomic_load(&c.records));
    CHECK(atomic_load(&c.b->failures) == atomic_load(&c.fails), "breaker %s: failures wrong",
          name);
    printf("breaker   %-11s calls=%" PRIu64 " transitions=%" PRIu64 " most_trials=%" PRIu64
           " %.2fs %s\n",
           name, (uint64_t)atomic_load(&c.records), gen, (uint64_t)atomic_load(&c.most),
           (double)(sf_now_ns() - t0) / 1e9, atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    sf_breaker_free(c.b);
    free(c.b);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ (c) counters */

#define RARE_WRITERS 2

typedef struct counters_ctx {
    sf_counters *ctr;
    uint64_t n;
    sf_atomic_int done;
    sf_atomic_u64 reads;
} counters_ctx;

static void *counters_owner(void *arg) {
    counters_ctx *c = arg;
    for (uint64_t i = 1; i <= c->n; i++) {
        sf_counter_add(&c->ctr->processed, 1);
        if (i % 7 == 0) sf_counter_add(&c->ctr->failed, 1);
        if (i % 16 == 0) sf_counter_add(&c->ctr->batches, 1);
        sf_counter_max(&c->ctr->high_water, i % 1000 + i / 1000);
        sf_counter_add(&c->ctr->stolen_in, 3);
    }
    return NULL;
}

static void *counters_rare(void *arg) {
    counters_ctx *c = arg;
    for (uint64_t i = 0; i < c->n / 100; i++) {
        sf_fetch_add_relaxed_u64(&c->ctr->dropped, 1);
        sf_fetch_add_relaxed_u64(&c->ctr->returned, 2);
    }
    return NULL;
}

static void *counters_reader(void *arg) {
    counters_ctx *c = arg;
    sf_atomic_u64 *fields[] = {&c->ctr->processed, &c->ctr->failed,   &c->ctr->batches,
                               &c->ctr->high_water, &c->ctr->stolen_in, &c->ctr->dropped,
                               &c->ctr->returned};
    enum { NF = sizeof fields / sizeof fields[0] };
    uint64_t last[NF] = {0}, reads = 0;
    while (!atomic_load_explicit(&c->done, memory_order_acquire)) {
        for (int f = 0; f < NF; f++) {
            uint64_t v = sf_load_relaxed_u64(fields[f]);
            if (v < last[f]) {
                fail("counters: field %d went backwards %" PRIu64 " -> %" PRIu64, f, last[f], v);
                return NULL;
            }
            last[f] = v;
        }
        reads++;
    }
    atomic_fetch_add(&c->reads, reads);
    return NULL;
}

static int scenario_counters(void) {
    counters_ctx c;
    pthread_t owner, rare[RARE_WRITERS], readers[2];
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    memset(&c, 0, sizeof c);
    c.ctr = xcalloc(1, sizeof *c.ctr);
    sf_counters_init(c.ctr);
    c.n = opt.ops;
    atomic_init(&c.done, 0);
    atomic_init(&c.reads, 0);
    watchdog_arm("counters", NULL, NULL, NULL);
    for (int i = 0; i < 2; i++) start(&readers[i], counters_reader, &c);
    start(&owner, counters_owner, &c);
    for (int i = 0; i < RARE_WRITERS; i++) start(&rare[i], counters_rare, &c);
    join(owner);
    for (int i = 0; i < RARE_WRITERS; i++) join(rare[i]);
    atomic_store_explicit(&c.done, 1, memory_order_release);
    for (int i = 0; i < 2; i++) join(readers[i]);
    watchdog_disarm();

    uint64_t n = c.n, hw = 0;
    for (uint64_t i = 1; i <= n; i++)
        if (i % 1000 + i / 1000 > hw) hw = i % 1000 + i / 1000;
    CHECK(atomic_load(&c.ctr->processed) == n, "counters: processed %" PRIu64 " != %" PRIu64,
          (uint64_t)atomic_load(&c.ctr->processed), n);
    CHECK(atomic_load(&c.ctr->failed) == n / 7, "counters: failed wrong");
    CHECK(atomic_load(&c.ctr->batches) == n / 16, "counters: batches wrong");
    CHECK(atomic_load(&c.ctr->high_water) == hw, "counters: high_water %" PRIu64 " != %" PRIu64,
          (uint64_t)atomic_load(&c.ctr->high_water), hw);
    CHECK(atomic_load(&c.ctr->stolen_in) == 3 * n, "counters: stolen_in wrong");
    CHECK(atomic_load(&c.ctr->dropped) == RARE_WRITERS * (n / 100), "counters: dropped %" PRIu64
          " != %" PRIu64, (uint64_t)atomic_load(&c.ctr->dropped), RARE_WRITERS * (n / 100));
    CHECK(atomic_load(&c.ctr->returned) == 2 * RARE_WRITERS * (n / 100), "counters: returned wrong");
    printf("counters  increments=%" PRIu64 " reader_passes=%" PRIu64 " %.2fs %s\n", n,
           (uint64_t)atomic_load(&c.reads), (double)(sf_now_ns() - t0) / 1e9,
           atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    free(c.ctr);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ (d) pool live/done */

#define POOL_WORKERS 4

typedef struct pool_ctx {
    sf_pool *pool;
    uint64_t results[POOL_WORKERS]; /* plain memory: the joiner reads it after wait_idle */
    sf_atomic_int go;
    sf_atomic_int exited; /* test-side count, to check wait_idle never returns early */
    uint64_t round;
} pool_ctx;

typedef struct pool_arg {
    pool_ctx *c;
    int index;
} pool_arg;

static void *pool_worker(void *arg) {
    pool_arg *a = arg;
    pool_ctx *c = a->c;
    uint64_t seed = opt.seed ^ (c->round * 31 + (uint64_t)a->index);
    /* Some workers wait for a go signal so that the joiner really has to sleep. */
    while (!atomic_load_explicit(&c->go, memory_order_acquire)) sf_thread_yield();
    uint64_t x = 0, spins = rnd(&seed) % 2000;
    for (uint64_t i = 0; i < spins; i++) x += i ^ (uint64_t)a->index;
    if (rnd(&seed) % 4 == 0) usleep(50);
    c->results[a->index] = c->round * 1000 + (uint64_t)a->index + (x & 0);
    atomic_fetch_add(&c->exited, 1);
    sf_pool_worker_exited(c->pool);
    return NULL;
}

static int scenario_pool(void) {
    pool_ctx c;
    pthread_t t[POOL_WORKERS];
    pool_arg pa[POOL_WORKERS];
    uint64_t rounds = opt.ops / 5000, timed_out = 0;
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    if (rounds < 20) rounds = 20;
    if (rounds > 3000) rounds = 3000;
    memset(&c, 0, sizeof c);
    c.pool = xcalloc(1, sizeof *c.pool);
    if (sf_pool_init(c.pool)) {
        fprintf(stderr, "sf_pool_init failed\n");
        exit(2);
    }
    watchdog_arm("pool", NULL, NULL, NULL);
    CHECK(sf_pool_wait_idle(c.pool, -1) == 1, "pool: wait_idle with no worker");
    for (uint64_t r = 0; r < rounds; r++) {
        c.round = r;
        atomic_store(&c.go, 0);
        atomic_store(&c.exited, 0);
        for (int i = 0; i < POOL_WORKERS; i++) {
            /* Counted before the thread starts, as the pool does, so a join cannot miss it. */
            sf_pool_worker_started(c.pool);
            pa[i] = (pool_arg){&c, i};
            start(&t[i], pool_worker, &pa[i]);
        }
        /* A timed wait that must time out: nobody may exit before `go`. */
        if (r % 8 == 0) {
            CHECK(sf_pool_wait_idle(c.pool, sf_now_ns() + 100000) == 0,
                  "pool: wait_idle returned 1 while workers run");
        }
        atomic_store_explicit(&c.go, 1, memory_order_release);
        int idle;
        if (r % 2) {
            idle = sf_pool_wait_idle(c.pool, -1);
        } else {
            /* Short slices, like join(timeout) polling for signals. */
            while (!(idle = sf_pool_wait_idle(c.pool, sf_now_ns() + 20000))) timed_out++;
        }
        CHECK(idle == 1, "pool: untimed wait_idle returned %d", idle);
        CHECK(atomic_load(&c.exited) == POOL_WORKERS, "pool: wait_idle returned with %d of %d exited",
              atomic_load(&c.exited), POOL_WORKERS);
        /* Plain reads: TSan reports a race here unless exited->wait_idle is an edge. */
        for (int i = 0; i < POOL_WORKERS; i++)
            CHECK(c.results[i] == r * 1000 + (uint64_t)i, "pool: worker %d's result not visible", i);
        /* The pool must outlive its workers: sf_pool_worker_exited touches done_ev after
         * live reaches 0. Join before the next round (and before destroy). */
        for (int i = 0; i < POOL_WORKERS; i++) join(t[i]);
        CHECK(atomic_load(&c.pool->live) == 0, "pool: live != 0 after the round");
    }
    watchdog_disarm();
    CHECK(SF_EV_WAITERS(atomic_load(&c.pool->done_ev.word)) == 0, "pool: waiters left announced");
    printf("pool      workers=%d rounds=%" PRIu64 " wakeups=%u timed_slices=%" PRIu64 " %.2fs %s\n",
           POOL_WORKERS, rounds, (unsigned)SF_EV_EPOCH_OF(atomic_load(&c.pool->done_ev.word)), timed_out,
           (double)(sf_now_ns() - t0) / 1e9, atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    sf_pool_destroy(c.pool);
    free(c.pool);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ (e) sched */

/* The pool's real scheduling paths with stealing on: workers in sf_sched_wait (own ring,
 * steal-half, park, flush acknowledgement, flush holds), producers in sf_sched_push (thief
 * wake-ups) blocking in sf_shard_wait_space, and a flusher checking that flush is exact. */

/* Run time on 2 cores is bimodal with the 4-shard configuration: usually well under a
 * second per 10^5 items, sometimes 50-100x more. Sampled stacks of a slow run show every
 * producer in sf_ring_push's wait for an earlier claimer (sched_yield) and the idle
 * workers spinning in sf_sched_wait: when another ring has claims not yet published, T3
 * cancels and the loop goes round (steal finds nothing published, spin, T1-T3 again)
 * without ever yielding, so the spinners take the cores the claimer needs to publish.
 * A yield after that cancel (as the own-ring has_claims path does) removed the slow runs
 * in a quick experiment on a patched copy of _sched.h. The item counts here keep even a
 * slow run to a few seconds. */
#define SCHED_MAX_WORKERS 4
#define SCHED_FULL_BATCH 32     /* a worker hands over full batches of this many... */
#define SCHED_BUF 96       /* ...and drains at most this many into its partial batch */

typedef struct sched_ctx {
    sf_pool *pool;
    sf_shard *shards;
    uint64_t nshards;
    ledger led;                       /* led.seen doubles as the "handed over" flags */
    sf_atomic_u64 hw[64];             /* per producer: every value below was pushed */
    sf_atomic_int producers_done;
    sf_atomic_u64 flushes, flush_checked, holds, handovers, waits_space;
    sf_atomic_u64 wait_flush_returns;
    sf_atomic_u64 gate_flips;
} sched_ctx;

typedef struct sched_arg {
    sched_ctx *c;
    int index;
} sched_arg;

/* Hand items over to "the handler": mark each exactly once, add to the checksums. */
static void sched_hand_over(sched_ctx *c, void **buf, uint64_t n, uint64_t *sum, uint64_t *x) {
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = (uint64_t)(uintptr_t)buf[i];
        if (v < 1 || v > c->led.n) {
            fail("sched: value %" PRIu64 " out of range", v);
            continue;
        }
        uint64_t bit = (uint64_t)1 << (v & 63);
        if (atomic_fetch_or_explicit(&c->led.seen[v >> 6], bit, memory_order_relaxed) & bit)
            fail("sched: value %" PRIu64 " handed over twice", v);
        *sum += v;
        *x ^= v;
    }
    if (n) {
        atomic_fetch_add_explicit(&c->led.consumed, n, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->handovers, 1, memory_order_relaxed);
    }
}

static void *sched_worker(void *arg) {
    sched_arg *a = arg;
    sched_ctx *c = a->c;
    uint64_t self = (uint64_t)a->index;
    void *buf[SCHED_BUF];
    uint64_t n = 0, sum = 0, x = 0, flush_seen = 0, holds = 0;
    int64_t first_ns = -1;
    uint64_t seed = opt.seed ^ (0xc0ffeeULL * (self + 1));
    /* Worker 0 keeps partial batches until a flush or its deadline (long); the others
     * hand partial batches over after a short deadline, like timed BatchProcessors. */
    int64_t batch_timeout = self == 0 ? 20000000 : 200000;
    for (;;) {
        uint64_t room = SCHED_BUF - n, max = 1 + rnd(&seed) % 64;
        int hold = 0;
        if (max > room) max = room;
        int64_t deadline = n ? first_ns + batch_timeout : -1;
        int64_t r = sf_sched_wait(c->pool, c->shards, c->nshards, self, buf + n, max, deadline,
                                  flush_seen, &hold);
        if (r > 0) {
            if ((uint64_t)r > max) {
                fail("sched: worker %" PRIu64 ": took %" PRId64 " > max %" PRIu64, self, r, max);
                break;
            }
            if (!n) first_ns = sf_now_ns();
            n += (uint64_t)r;
            if (hold) {
                /* Stolen during a flush this worker already acknowledged: hand over now. */
                holds++;
                sched_hand_over(c, buf, n, &sum, &x);
                n = 0;
                sf_sched_release_hold(c->pool);
            } else if (n >= SCHED_FULL_BATCH || SCHED_BUF - n == 0) {
                sched_hand_over(c, buf, n, &sum, &x);
                n = 0;
            }
            /* A slow handler now and then: the backlog builds and others steal it. */
            if (rnd(&seed) % 64 == 0) sf_thread_yield();
            continue;
        }
        if (r == SF_WAIT_FLUSH) {
            uint64_t seq = sf_load_acquire_u64(&c->pool->flush_seq);
            /* Hand over the partial batch, then drain the own ring (as the pool's worker
             * does), then acknowledge. */
            sched_hand_over(c, buf, n, &sum, &x);
            n = 0;
            uint64_t k;
            while ((k = sf_sched_pop_own(c->pool, c->shards, self, buf, SCHED_BUF)) != 0)
                sched_hand_over(c, buf, k, &sum, &x);
            flush_seen = seq;
            sf_sched_flushed(c->pool, &c->shards[self], seq);
            continue;
        }
        if (r == SF_WAIT_FINISHED) {
            sched_hand_over(c, buf, n, &sum, &x);
            n = 0;
            break;
        }
        if (r == SF_WAIT_TIMEOUT) {
            if (!n || sf_now_ns() < deadline) {
                fail("sched: worker %" PRIu64 ": TIMEOUT with n=%" PRIu64 " before the deadline",
                     self, n);
                break;
            }
            sched_hand_over(c, buf, n, &sum, &x); /* the partial batch's deadline passed */
            n = 0;
            continue;
        }
        fail("sched: worker %" PRIu64 ": sf_sched_wait returned %" PRId64, self, r);
        break;
    }
    atomic_fetch_add(&c->led.sum, sum);
    atomic_fetch_xor(&c->led.xor, x);
    atomic_fetch_add(&c->holds, holds);
    sf_sched_flushed(c->pool, &c->shards[self], UINT64_MAX);
    sf_pool_worker_exited(c->pool);
    return NULL;
}

static void *sched_producer(void *arg) {
    sched_arg *a = arg;
    sched_ctx *c = a->c;
    uint64_t seed = opt.seed ^ (0x5c4edULL * (uint64_t)(a->index + 1));
    uint64_t v = block_lo(&c->led, a->index), hi = block_hi(&c->led, a->index);
    void *batch[MAX_BATCH];
    uint64_t waits = 0;
    /* Even producers are skewed (everything to shard 0, whose owner holds partial batches
     * long); odd ones rotate like the pool's submit. */
    int skewed = (a->index % 2) == 0;
    while (v < hi) {
        uint64_t want = pick_batch(&seed, hi - v);
        if (want > 16) want = 16;
        uint64_t s = skewed ? 0 : sf_pool_next_shard(c->pool, c->nshards);
        for (uint64_t i = 0; i < want; i++) batch[i] = (void *)(uintptr_t)(v + i);
        for (;;) {
            int64_t k = want == 1 && (v & 1) ? sf_sched_push1(c->pool, c->shards, s, batch[0])
                                              : sf_sched_push(c->pool, c->shards, s, batch, want);
            if (k < 0) {
                fail("sched: producer %d: push reported closed before close", a->index);
                return NULL;
            }
            if (k > 0) {
                v += (uint64_t)k;
                /* Values below v are pushed: what a flush requested from now on covers. */
                sf_store_release_u64(&c->hw[a->index], v);
                break;
            }
            waits++;
            sf_shard_wait_space(&c->shards[s], (rnd(&seed) & 1) ? -1 : sf_now_ns() + 200000);
        }
        if (rnd(&seed) % 128 == 0) usleep(20); /* let workers run dry and park */
    }
    atomic_fetch_add(&c->waits_space, waits);
    return NULL;
}

/* Close and open random workers' steal gates until the producers are done, then open
 * them all (a gated worker must still drain its own ring, and an opened one must steal
 * again: the final flush and the watchdog catch a worker that does neither). */
static void *sched_gater(void *arg) {
    sched_ctx *c = arg;
    uint64_t seed = opt.seed ^ 0x9a7e5ULL, flips = 0;
    while (!atomic_load_explicit(&c->producers_done, memory_order_acquire)) {
        sf_sched_gate(&c->shards[rnd(&seed) % c->nshards], (int)(rnd(&seed) & 1));
        flips++;
        if (rnd(&seed) % 4 == 0) usleep((useconds_t)(rnd(&seed) % 50));
    }
    for (uint64_t i = 0; i < c->nshards; i++) sf_sched_gate(&c->shards[i], 0);
    atomic_store_explicit(&c->gate_flips, flips, memory_order_relaxed);
    return NULL;
}

static void *sched_flusher(void *arg) {
    sched_ctx *c = arg;
    uint64_t seed = opt.seed ^ 0xf105e5ULL;
    int P = c->led.producers;
    uint64_t checked[64], snap[64];
    for (int p = 0; p < P; p++) checked[p] = block_lo(&c->led, p);
    while (!atomic_load_explicit(&c->producers_done, memory_order_acquire)) {
        usleep((useconds_t)(rnd(&seed) % 500));
        for (int p = 0; p < P; p++) snap[p] = sf_load_acquire_u64(&c->hw[p]);
        uint64_t seq = sf_sched_request_flush(c->pool, c->shards, c->nshards);
        int done;
        if (rnd(&seed) & 1) {
            done = sf_sched_wait_flushed(c->pool, c->shards, c->nshards, seq, -1);
        } else {
            /* Short slices, like flush(timeout) polling for signals. */
            while (!(done = sf_sched_wait_flushed(c->pool, c->shards, c->nshards, seq,
                                                  sf_now_ns() + 50000)))
                atomic_fetch_add_explicit(&c->wait_flush_returns, 1, memory_order_relaxed);
        }
        CHECK(done == 1, "sched: untimed wait_flushed returned %d", done);
        /* Everything pushed before the request was handed over. */
        for (int p = 0; p < P; p++) {
            for (uint64_t v = checked[p] > snap[p] ? snap[p] : checked[p]; v < snap[p]; v++) {
                if (!(sf_load_acquire_u64(&c->led.seen[v >> 6]) & ((uint64_t)1 << (v & 63)))) {
                    fail("sched: flush %" PRIu64 " returned but value %" PRIu64
                         " (producer %d, pushed before the request) was not handed over",
                         seq, v, p);
                    break;
                }
            }
            if (snap[p] > checked[p]) {
                atomic_fetch_add_explicit(&c->flush_checked, snap[p] - checked[p],
                                          memory_order_relaxed);
                checked[p] = snap[p];
            }
        }
        sf_sched_flush_done(c->pool);
        atomic_fetch_add_explicit(&c->flushes, 1, memory_order_relaxed);
    }
    return NULL;
}

static int scenario_sched(uint64_t capacity, uint64_t nshards) {
    sched_ctx *c = xcalloc(1, sizeof *c);
    int P = opt.producers;
    pthread_t pt[64], wt[SCHED_MAX_WORKERS], ft, gt;
    sched_arg pa[64], wa[SCHED_MAX_WORKERS];
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    c->nshards = nshards;
    c->pool = xcalloc(1, sizeof *c->pool);
    c->shards = sf_shards_alloc(nshards);
    if (!c->shards || sf_pool_init(c->pool)) {
        fprintf(stderr, "sched: allocation failed\n");
        exit(2);
    }
    c->pool->steal = 1;
    for (uint64_t i = 0; i < nshards; i++)
        if (sf_shard_init(&c->shards[i], capacity)) {
            fprintf(stderr, "sf_shard_init failed\n");
            exit(2);
        }
    /* Stealing, flushes and parking on every empty ring: fewer items than the ring test. */
    ledger_init(&c->led, opt.ops / 4 ? opt.ops / 4 : 1, P);
    for (int p = 0; p < P; p++) atomic_init(&c->hw[p], block_lo(&c->led, p));
    watchdog_arm("sched", NULL, &c->shards[0], &c->led.consumed);
    for (uint64_t i = 0; i < nshards; i++) {
        sf_pool_worker_started(c->pool); /* counted before the thread starts, as the pool does */
        wa[i] = (sched_arg){c, (int)i};
        start(&wt[i], sched_worker, &wa[i]);
    }
    start(&ft, sched_flusher, c);
    start(&gt, sched_gater, c);
    hist_reader_ctx hr = {.shards = c->shards, .nshards = nshards, .reads = 0};
    pthread_t hrt;
    atomic_init(&hr.stop, 0);
    start(&hrt, hist_reader, &hr);
    for (int i = 0; i < P; i++) {
        pa[i] = (sched_arg){c, i};
        start(&pt[i], sched_producer, &pa[i]);
    }
    for (int i = 0; i < P; i++) join(pt[i]);
    atomic_store_explicit(&c->producers_done, 1, memory_order_release);
    join(ft);
    join(gt);
    /* A last flush with every value pushed: it must hand over everything. */
    {
        uint64_t seq = sf_sched_request_flush(c->pool, c->shards, nshards);
        CHECK(sf_sched_wait_flushed(c->pool, c->shards, nshards, seq, -1) == 1,
              "sched: final flush did not complete");
        sf_sched_flush_done(c->pool);
        CHECK(atomic_load(&c->led.consumed) == c->led.n,
              "sched: final flush returned with %" PRIu64 " of %" PRIu64 " handed over",
              (uint64_t)atomic_load(&c->led.consumed), c->led.n);
    }
    if (opt.seed & 1) usleep(2000); /* workers park before the close, sometimes */
    for (uint64_t i = 0; i < nshards; i++) {
        CHECK(sf_ring_close(&c->shards[i].ring) == 1, "sched: close did not report closing");
        sf_shard_wake_all(&c->shards[i]);
    }
    for (uint64_t i = 0; i < nshards; i++) join(wt[i]);
    CHECK(sf_pool_wait_idle(c->pool, -1) == 1, "sched: wait_idle after the workers exited");
    watchdog_disarm();

    atomic_store_explicit(&hr.stop, 1, memory_order_release);
    join(hrt);
    ledger_verify(&c->led, "sched");
    check_stamps("sched", c->shards, nshards);
    uint64_t in = 0, out = 0;
    for (uint64_t i = 0; i < nshards; i++) {
        in += atomic_load(&c->shards[i].ctr.stolen_in);
        out += atomic_load(&c->shards[i].ctr.stolen_out);
        CHECK(sf_ring_finished(&c->shards[i].ring), "sched: ring %" PRIu64 " not finished", i);
        CHECK(SF_EV_WAITERS(atomic_load(&c->shards[i].data_ev.word)) == 0 &&
                  SF_EV_WAITERS(atomic_load(&c->shards[i].space_ev.word)) == 0,
              "sched: shard %" PRIu64 ": waiters left announced", i);
    }
    CHECK(in == out, "sched: stolen_in %" PRIu64 " != stolen_out %" PRIu64, in, out);
    CHECK(atomic_load(&c->pool->flush_holds) == 0, "sched: flush_holds %" PRIu64 " at the end",
          (uint64_t)atomic_load(&c->pool->flush_holds));
    CHECK(atomic_load(&c->pool->flush_active) == 0, "sched: flush_active at the end");
    CHECK(atomic_load(&c->pool->idle_mask) == 0, "sched: idle_mask %#" PRIx64 " at the end",
          (uint64_t)atomic_load(&c->pool->idle_mask));
    CHECK(atomic_load(&c->pool->live) == 0, "sched: live != 0 at the end");
    printf("sched     capacity=%-6" PRIu64 " shards=%" PRIu64 " producers=%d items=%" PRIu64
           " stolen=%" PRIu64 " flushes=%" PRIu64 " (items checked %" PRIu64
           ") held_steals=%" PRIu64 " handovers=%" PRIu64 " producer_waits=%" PRIu64
           " gate_flips=%" PRIu64 " %.2fs %s\n",
           capacity, nshards, P, c->led.n, in, (uint64_t)atomic_load(&c->flushes),
           (uint64_t)atomic_load(&c->flush_checked), (uint64_t)atomic_load(&c->holds),
           (uint64_t)atomic_load(&c->handovers), (uint64_t)atomic_load(&c->waits_space),
           (uint64_t)atomic_load(&c->gate_flips),
           (double)(sf_now_ns() - t0) / 1e9, atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    ledger_free(&c->led);
    for (uint64_t i = 0; i < nshards; i++) sf_shard_destroy(&c->shards[i]);
    sf_shards_free(c->shards);
    sf_pool_destroy(c->pool);
    free(c->pool);
    free(c);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ shmring */

/* The shared-memory byte ring (_shmring.h). Record i carries a length drawn from a stream
 * both sides can replay (seeded alike), bytes shm_byte(i, j) and tag i; the producer
 * sometimes reserves more than it commits. The consumer checks order (tag), length and
 * every byte, plus a checksum of (i, len) on both sides. Spin 0 on some runs forces the
 * futex path on every wait; deadlines are short (50 ms slices, as the Python layer uses
 * them) and a TIMEOUT just waits again: a lost wake-up costs a slice, a hang (no progress)
 * is the watchdog's. Two modes:
 *   threads  producer and consumer threads on two handles of ONE mapping (TSan sees the
 *            release/acquire pairs on head/tail and the byte accesses);
 *   process  fork(): the child maps both memfds afresh (other addresses) and echoes ring
 *            A into ring B; the parent produces on A from a thread and consumes B. */

#define SHM_SLICE_NS 50000000LL

#if defined(__SANITIZE_THREAD__)
#define SHM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SHM_TSAN 1
#endif
#endif

static inline uint8_t shm_byte(uint64_t i, uint64_t j) {
    return (uint8_t)(i * 131u + j * 7u + (i >> 8));
}

static uint64_t shm_len(uint64_t *s, uint64_t cap) {
    uint64_t r = rnd(s), max = cap - SF_SHM_HDR;
    switch (r & 31) {
    case 0: return max; /* only fits after the consumer took everything and the padding */
    case 1: case 2: case 3: return (r >> 8) % (max + 1);
    default: return (r >> 8) % (max < 64 ? max + 1 : 65);
    }
}

static inline uint64_t shm_mix(uint64_t i, uint64_t len) {
    return (i + 1) * 0x9e3779b97f4a7c15ULL ^ (len << 17);
}

typedef struct shm_side {
    sf_shmring r;
    uint64_t n, cap, seed;
    int64_t spin_ns;
    uint64_t sum;
    sf_atomic_u64 *progress;
} shm_side;

static void *shm_producer(void *arg) {
    shm_side *s = arg;
    uint64_t lens = s->seed, extra = s->seed ^ 0xabcdef;
    for (uint64_t i = 0; i < s->n; i++) {
        uint64_t len = shm_len(&lens, s->cap), want = len, max = s->cap - SF_SHM_HDR;
        uint64_t x = rnd(&extra);
        if ((x & 7) == 0 && len + (x >> 8) % 24 <= max) want = len + (x >> 8) % 24;
        unsigned char *p;
        int rc;
        do {
            rc = sf_shmring_reserve(&s->r, want, &p, s->spin_ns, sf_now_ns() + SHM_SLICE_NS);
        } while (rc == SF_SHM_TIMEOUT);
        if (rc != SF_SHM_OK) {
            fail("shmring producer: reserve(%" PRIu64 ") returned %d at record %" PRIu64, want,
                 rc, i);
            break;
        }
        for (uint64_t j = 0; j < len; j++) p[j] = shm_byte(i, j);
        s->sum += shm_mix(i, len);
        sf_shmring_commit(&s->r, len, (uint32_t)i);
    }
    sf_shmring_close(&s->r, SF_SHM_WRITER_CLOSED);
    return NULL;
}

static void *shm_consumer(void *arg) {
    shm_side *s = arg;
    uint64_t lens = s->seed, i = 0;
    for (;; i++) {
        unsigned char *p;
        uint64_t len;
        uint32_t tag;
        int rc;
        do {
            rc = sf_shmring_peek(&s->r, &p, &len, &tag, s->spin_ns, sf_now_ns() + SHM_SLICE_NS);
        } while (rc == SF_SHM_TIMEOUT);
        if (rc == SF_SHM_CLOSED) break;
        if (rc != SF_SHM_OK) {
            fail("shmring consumer: peek returned %d at record %" PRIu64, rc, i);
            break;
        }
        uint64_t want = shm_len(&lens, s->cap);
        CHECK(tag == (uint32_t)i, "shmring: record %" PRIu64 " has tag %u (out of order)", i, tag);
        CHECK(len == want, "shmring: record %" PRIu64 " has %" PRIu64 " bytes, expected %" PRIu64,
              i, len, want);
        uint64_t bad = 0;
        for (uint64_t j = 0; j < len && j < want; j++) bad += p[j] != shm_byte(i, j);
        CHECK(bad == 0, "shmring: record %" PRIu64 ": %" PRIu64 " corrupt bytes", i, bad);
        s->sum += shm_mix(i, len);
        sf_shmring_release(&s->r);
        if (s->progress) atomic_fetch_add(s->progress, 1);
    }
    CHECK(i == s->n, "shmring consumer: %" PRIu64 " records of %" PRIu64, i, s->n);
    return NULL;
}

/* Child of the process mode: echo A -> B until A is closed. Returns the failures. */
static int shm_echo(sf_shmring *a, sf_shmring *b, int64_t spin_ns) {
    for (;;) {
        unsigned char *p, *q;
        uint64_t len;
        uint32_t tag;
        int rc;
        do {
            rc = sf_shmring_peek(a, &p, &len, &tag, spin_ns, sf_now_ns() + SHM_SLICE_NS);
        } while (rc == SF_SHM_TIMEOUT);
        if (rc == SF_SHM_CLOSED) break;
        if (rc != SF_SHM_OK) return 1;
        do {
            rc = sf_shmring_reserve(b, len, &q, spin_ns, sf_now_ns() + SHM_SLICE_NS);
        } while (rc == SF_SHM_TIMEOUT);
        if (rc != SF_SHM_OK) return 1;
        memcpy(q, p, len);
        sf_shmring_commit(b, len, tag);
        sf_shmring_release(a);
    }
    sf_shmring_close(b, SF_SHM_WRITER_CLOSED);
    return 0;
}

static void *shm_new(uint64_t cap, int *fd) {
    uint64_t size = sf_shmring_map_size(cap);
    *fd = sf_shm_create(size);
    if (*fd < 0) {
        fprintf(stderr, "sf_shm_create: %s\n", strerror(errno));
        exit(2);
    }
    void *m = sf_shm_map(*fd, size);
    if (!m) {
        fprintf(stderr, "sf_shm_map: %s\n", strerror(errno));
        exit(2);
    }
    sf_shmring_format(m, cap);
    return m;
}

static int scenario_shmring(uint64_t cap, int process, int64_t spin_ns) {
    int before = atomic_load(&failures);
    int64_t t0 = sf_now_ns();
    uint64_t size = sf_shmring_map_size(cap);
    sf_atomic_u64 progress;
    atomic_init(&progress, 0);
    shm_side *prod = xcalloc(1, sizeof *prod), *cons = xcalloc(1, sizeof *cons);
    int fda, fdb = -1;
    void *ma = shm_new(cap, &fda), *mb = NULL;
    /* a handle refuses a mapping that is not a ring of this size */
    CHECK(sf_shmring_open(&prod->r, ma, size + 4096) == -1, "shmring: open accepted a bad size");
    prod->n = cons->n = opt.ops;
    prod->cap = cons->cap = cap;
    prod->seed = cons->seed = opt.seed ^ cap;
    prod->spin_ns = cons->spin_ns = spin_ns;
    cons->progress = &progress;
    CHECK(sf_shmring_open(&prod->r, ma, size) == 0, "shmring: open failed");
    watchdog_arm(process ? "shmring-process" : "shmring", NULL, NULL, &progress);
    pthread_t tp, tc;
    if (!process) {
        CHECK(sf_shmring_open(&cons->r, ma, size) == 0, "shmring: open failed");
        start(&tp, shm_producer, prod);
        start(&tc, shm_consumer, cons);
        join(tp);
        join(tc);
    } else {
        mb = shm_new(cap, &fdb);
        CHECK(sf_shmring_open(&cons->r, mb, size) == 0, "shmring: open failed");
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            exit(2);
        }
        if (pid == 0) {
#if defined(__linux__)
            prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
            /* Fresh mappings at other addresses, as a spawned worker would have. */
            void *ca = sf_shm_map(fda, size), *cb = sf_shm_map(fdb, size);
            sf_shmring a, b;
            if (!ca || !cb || sf_shmring_open(&a, ca, size) || sf_shmring_open(&b, cb, size))
                _exit(2);
            int bad = shm_echo(&a, &b, spin_ns);
            _exit(bad ? 1 : 0);
        }
        start(&tp, shm_producer, prod);
        shm_consumer(cons);
        join(tp);
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "shmring: the echo process ended with status %d", status);
    }
    watchdog_disarm();
    CHECK(prod->sum == cons->sum, "shmring: checksum %" PRIx64 " sent, %" PRIx64 " received",
          prod->sum, cons->sum);
    CHECK(sf_shmring_used(&prod->r) == 0, "shmring: %" PRIu64 " bytes left in the ring",
          sf_shmring_used(&prod->r));
    uint64_t parks = atomic_load(&prod->r.st.producer_parks) + atomic_load(&cons->r.st.consumer_parks);
    uint64_t pads = atomic_load(&prod->r.st.pads);
    printf("shmring   %-7s cap=%-6" PRIu64 " spin=%-5" PRId64 " records=%" PRIu64 " pads=%" PRIu64
           " parks=%" PRIu64 " %.2fs %s\n",
           process ? "process" : "threads", cap, spin_ns, opt.ops, pads, parks,
           (double)(sf_now_ns() - t0) / 1e9, atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    sf_shm_unmap(ma, size);
    close(fda);
    if (mb) {
        sf_shm_unmap(mb, size);
        close(fdb);
    }
    free(prod);
    free(cons);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ (h) handoff */

#define HANDOFF_WORKERS 3

static volatile uint64_t handoff_sink; /* keeps the producer's busy work from being elided */

typedef struct handoff_ctx {
    sf_pool *pool;
    pthread_mutex_t gil;  /* stands for the GIL */
    uint64_t work;        /* plain: written only with `gil` held */
    sf_atomic_u64 pending; /* units made by the producer and not yet taken */
    sf_atomic_int stop;
    sf_atomic_u64 progress;
} handoff_ctx;

static void *handoff_worker(void *arg) {
    handoff_ctx *c = arg;
    uint64_t seed = opt.seed ^ (uint64_t)(uintptr_t)arg;
    for (;;) {
        uint64_t p = atomic_load(&c->pending);
        if (p == 0) {
            if (atomic_load(&c->stop)) break;
            sf_thread_yield();
            continue;
        }
        if (!atomic_compare_exchange_weak(&c->pending, &p, p - 1)) continue;
        sf_pool_want_gil(c->pool);       /* G1: took items, about to wait for the GIL */
        pthread_mutex_lock(&c->gil);     /* G2 */
        sf_pool_got_gil(c->pool);        /* G3-G4 */
        c->work++;
        atomic_fetch_add(&c->progress, 1);
        pthread_mutex_unlock(&c->gil);
        if (rnd(&seed) % 8 == 0) sf_thread_yield(); /* "parked", not waiting for the GIL */
    }
    return NULL;
}

static int scenario_handoff(void) {
    handoff_ctx c;
    pthread_t t[HANDOFF_WORKERS];
    uint64_t rounds = opt.ops / 100, handoffs = 0, timed_out = 0, untimed = 0;
    uint64_t seed = opt.seed;
    int64_t t0 = sf_now_ns();
    int before = atomic_load(&failures);
    if (rounds < 1000) rounds = 1000;
    if (rounds > 200000) rounds = 200000;
    memset(&c, 0, sizeof c);
    c.pool = xcalloc(1, sizeof *c.pool);
    if (sf_pool_init(c.pool) || pthread_mutex_init(&c.gil, NULL)) {
        fprintf(stderr, "handoff: init failed\n");
        exit(2);
    }
    atomic_init(&c.stop, 0);
    atomic_init(&c.pending, 0);
    atomic_init(&c.progress, 0);
    watchdog_arm("handoff", NULL, NULL, &c.progress);
    pthread_mutex_lock(&c.gil); /* the producer starts with the GIL */
    for (int i = 0; i < HANDOFF_WORKERS; i++) start(&t[i], handoff_worker, &c);
    /* Whether a worker is waiting when the producer looks depends on the scheduler: on a
     * loaded machine (sanitizer builds, other jobs) the planned rounds may see none. Then
     * the run goes on, for up to 20 s more, until one hand-off happened: the check below
     * is about the protocol, not about how busy the machine was. */
    int64_t extra_until = 0;
    uint64_t r = 0;
    for (;; r++) {
        if (r >= rounds) {
            if (handoffs > 0) break;
            if (!extra_until) extra_until = sf_now_ns() + 20 * (int64_t)1000000000;
            if (sf_now_ns() >= extra_until) break;
        }
        uint64_t x = 0, spins = 200 + rnd(&seed) % 1000; /* the producer's own work */
        for (uint64_t i = 0; i < spins; i++) x += i ^ r;
        handoff_sink = x;
        c.work++; /* "push" with the GIL held */
        atomic_fetch_add(&c.pending, 1);
        /* P1: the backlog is the units not yet taken; the mark is 16 of them. On a busy
         * machine the workers may not have run yet: give them the CPU (GIL held, as a
         * thread preempted inside compiled code) so that hand-offs do happen. */
        if (atomic_load(&c.pending) >= 16 && atomic_load(&c.pool->gil_waiting) == 0)
            sf_thread_yield();
        if (!sf_pool_should_hand_gil(c.pool, atomic_load(&c.pending), 16)) continue;
        handoffs++;
        pthread_mutex_unlock(&c.gil); /* P2 */
        if (rnd(&seed) % 2) {
            untimed++;
            CHECK(sf_pool_wait_gil_taken(c.pool, -1) == 1, "handoff: untimed wait returned 0");
        } else if (!sf_pool_wait_gil_taken(c.pool, sf_now_ns() + 20000)) {
            timed_out++;
        }
        pthread_mutex_lock(&c.gil); /* P6 */
        atomic_fetch_add(&c.progress, 1);
    }
    uint64_t produced = r;
    pthread_mutex_unlock(&c.gil);
    atomic_store(&c.stop, 1);
    for (int i = 0; i < HANDOFF_WORKERS; i++) join(t[i]);
    watchdog_disarm();
    uint64_t worked = atomic_load(&c.progress) - handoffs;
    CHECK(worked == produced && atomic_load(&c.pending) == 0,
          "handoff: %" PRIu64 " units done of %" PRIu64, worked, produced);
    CHECK(c.work == 2 * produced, "handoff: work %" PRIu64 " != 2 x %" PRIu64, c.work, produced);
    CHECK(atomic_load(&c.pool->gil_waiting) == 0, "handoff: %u workers still counted as waiting",
          (unsigned)atomic_load(&c.pool->gil_waiting));
    CHECK(SF_EV_WAITERS(atomic_load(&c.pool->gil_ev.word)) == 0, "handoff: waiters left announced");
    CHECK(handoffs > 0, "handoff: the producer never saw a waiting worker");
    printf("handoff   workers=%d rounds=%" PRIu64 " handoffs=%" PRIu64 " untimed=%" PRIu64
           " timed_out=%" PRIu64 " %.2fs %s\n",
           HANDOFF_WORKERS, produced, handoffs, untimed, timed_out, (double)(sf_now_ns() - t0) / 1e9,
           atomic_load(&failures) == before ? "OK" : "FAILED");
    fflush(stdout);
    pthread_mutex_destroy(&c.gil);
    sf_pool_destroy(c.pool);
    free(c.pool);
    return atomic_load(&failures) == before;
}

/* ------------------------------------------------------------------ main */

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s ring|shard|counters|pool|sched|hist|breaker|shmring|handoff|all [--ops N] [--capacity C] [--producers P]\n"
            "          [--timeout SECONDS] [--seed X]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv) {
    const char *scenario;
    pthread_t watchdog;
    if (argc < 2) usage(argv[0]);
    scenario = argv[1];
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc) usage(argv[0]);
        const char *k = argv[i], *v = argv[++i];
        char *end;
        unsigned long long x = strtoull(v, &end, 0);
        if (*end || !*v) usage(argv[0]);
        if (!strcmp(k, "--ops")) opt.ops = x;
        else if (!strcmp(k, "--capacity")) opt.capacity = x;
        else if (!strcmp(k, "--producers")) opt.producers = (int)x;
        else if (!strcmp(k, "--timeout")) opt.timeout_s = (int)x;
        else if (!strcmp(k, "--seed")) opt.seed = x ? x : 1;
        else usage(argv[0]);
    }
    if (opt.ops < 1 || opt.producers < 1 || opt.producers > 64 || opt.timeout_s < 1) usage(argv[0]);
    if (opt.capacity && sf_ring_round_capacity(opt.capacity) != opt.capacity) {
        fprintf(stderr, "--capacity must be a power of two <= %" PRIu64 "\n",
                (uint64_t)SF_RING_MAX_CAPACITY);
        return 2;
    }
    atomic_init(&failures, 0);
    start(&watchdog, watchdog_main, NULL);
    pthread_detach(watchdog);

    int all = !strcmp(scenario, "all"), known = all;
    if (all || !strcmp(scenario, "ring")) {
        known = 1;
        if (opt.capacity) {
            scenario_ring(opt.capacity, 1);
        } else {
            uint64_t caps[] = {8, 64, 1024};
            uint64_t ops = opt.ops;
            /* Split the operation budget across capacities; the tiny ring without a thief,
             * the others with one. */
            opt.ops = ops / 3 ? ops / 3 : 1;
            for (int i = 0; i < 3; i++) scenario_ring(caps[i], i > 0);
            opt.ops = ops;
        }
    }
    if (all || !strcmp(scenario, "shard")) {
        known = 1;
        if (opt.capacity) {
            scenario_shard(opt.capacity);
        } else {
            scenario_shard(8);
            scenario_shard(64);
        }
    }
    if (all || !strcmp(scenario, "counters")) {
        known = 1;
        scenario_counters();
    }
    if (all || !strcmp(scenario, "pool")) {
        known = 1;
        scenario_pool();
    }
    if (all || !strcmp(scenario, "sched")) {
        known = 1;
        if (opt.capacity) {
            scenario_sched(opt.capacity, 3);
        } else {
            uint64_t ops = opt.ops;
            /* Split the budget: a tiny ring (producers block, thefts free space) with two
             * workers, a larger one with four. */
            opt.ops = ops / 2 ? ops / 2 : 1;
            scenario_sched(16, 2);
            scenario_sched(256, 4);
            opt.ops = ops;
        }
    }
    if (all || !strcmp(scenario, "hist")) {
        known = 1;
        scenario_hist();
    }
    if (all || !strcmp(scenario, "breaker")) {
        known = 1;
        scenario_breaker("consecutive", SF_WIN_NONE, 5);
        scenario_breaker("count", SF_WIN_COUNT, 3);
        scenario_breaker("time", SF_WIN_TIME, 3);
    }
    if (all || !strcmp(scenario, "shmring")) {
        known = 1;
        uint64_t ops = opt.ops;
        /* A share of the budget per run (4 runs; under "all" an eighth, to keep it short). */
        opt.ops = ops / (all ? 8 : 4) ? ops / (all ? 8 : 4) : 1;
        if (opt.capacity) {
            scenario_shmring(opt.capacity < 64 ? 64 : opt.capacity, 0, 2000);
            scenario_shmring(opt.capacity < 64 ? 64 : opt.capacity, 1, 0);
        } else {
            /* Threads (TSan's view), with and without a spin, a tiny ring (a padding record
             * every few records) and a larger one; then two processes (fork). TSan cannot
             * follow a forked child that shares memory with its parent, so the process runs
             * are for the plain and ASan builds. */
            scenario_shmring(64, 0, 0);
            scenario_shmring(4096, 0, 2000);
#if !defined(SHM_TSAN)
            scenario_shmring(256, 1, 0);
            scenario_shmring(4096, 1, 20000);
#endif
        }
        opt.ops = ops;
    }
    if (all || !strcmp(scenario, "handoff")) {
        known = 1;
        scenario_handoff();
    }
    if (!known) usage(argv[0]);
    int f = atomic_load(&failures);
    printf("stress    %s: %s (%d failed check%s)\n", scenario, f ? "FAILED" : "all checks passed",
           f, f == 1 ? "" : "s");
    return f ? 1 : 0;
}
