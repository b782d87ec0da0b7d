/* sf_shmring: a single-producer, single-consumer BYTE ring of variable-length records in a
 * mapping shared by two processes (the transport of the process backend: per shard, a task
 * ring parent -> worker and a result ring worker -> parent).
 *
 * Layout of the mapping (SF_SHM_DATA_OFFSET + capacity bytes):
 *
 *   line 0  magic, version, capacity, map size     (written once by the creator)
 *           closed flags                           (either side; rare)
 *   line 1  tail      producer position            (producer writes, release store)
 *   line 2  head      consumer position            (consumer writes, release store)
 *   line 3  data_word futex word: the consumer sleeps for data
 *   line 4  space_word futex word: the producer sleeps for space
 *   data    capacity bytes (a power of two), 8-byte aligned records
 *
 * Each written-often word has its own 128-byte line (SF_CACHELINE); the futex words are
 * written only when a side goes to sleep, so the other side's load of them after every
 * publication hits a line that stays shared in both caches.
 *
 * Positions. `tail` and `head` are free-running 64-bit byte counts (never wrap in
 * practice), offsets are `pos & (capacity - 1)`. Invariant: head <= tail <= head + capacity,
 * both multiples of 8. Each side keeps a cached copy of the other's index in its process-
 * local handle (`head_cache`, `tail_cache`) and reads the shared one only when the cache
 * says full (producer) or empty (consumer).
 *
 * Records. A record is an 8-byte header `u32 len | u32 tag` followed by `len` payload bytes,
 * padded to a multiple of 8: it occupies SF_SHM_RECORD_SIZE(len) = align8(8 + len) bytes.
 * A record never straddles the end of the data area: when the space left before the end is
 * too small, the producer first writes a PADDING record (tag SF_SHM_TAG_PAD, len = the rest
 * of the area minus its header) and the real record starts at offset 0 (Agrona's
 * claimCapacity). Since positions and the capacity are multiples of 8, there is always room
 * for a padding header. The payload is therefore one contiguous span: the consumer can
 * unpickle straight from the mapping. The largest record is the whole data area
 * (len <= capacity - 8); a bigger one is SF_SHM_TOO_BIG, which the caller handles (split
 * the batch, or take an overflow path): it is never a wait. A record that needs padding
 * first waits until the consumer has consumed the padding, even in an otherwise empty ring
 * (so a thread that is both producer and consumer cannot put a near-capacity record at an
 * offset other than 0 without a get in between).
 *
 * Producer (one thread of one process at a time):
 *   reserve(n)  needs R = SF_SHM_RECORD_SIZE(n) contiguous bytes; if the end is closer than
 *               R, writes and PUBLISHES a padding record first (release store of tail, then
 *               the wake-up check below: a consumer asleep on an empty ring must consume
 *               the padding or the producer could wait for space forever). Returns a
 *               pointer to n payload bytes; nothing is visible yet.
 *   commit(m)   m <= n: writes the header (len = m, tag), then ONE release store of
 *               tail += SF_SHM_RECORD_SIZE(m), then the wake-up check. A producer that dies
 *               between reserve and commit never moved `tail`: the half-written record is
 *               invisible (SPSC needs no Agrona unblock()).
 * Consumer:
 *   peek        acquire load of tail (when the cache says empty); skips padding records
 *               (advancing head as for a release); bounds-checks the header (a record that
 *               does not fit the area is SF_SHM_CORRUPT, never an out-of-bounds read) and
 *               returns (pointer, len, tag). The bytes stay valid until release.
 *   release     ONE release store of head += record size (after the caller is done with
 *               the bytes), then the wake-up check for the producer.
 *
 * Park protocol (cross-process; no mutex or condition variable in shared memory). One
 * sleeper per word at most (SPSC), so the word is a "sleeping" flag (0 awake, 1 asleep):
 *
 *   waiter (consumer waiting for data;              notifier (producer after publishing;
 *   producer waiting for space: same with            consumer after releasing: same with
 *   head/space_word)                                 head/space_word)
 *   ------                                           --------
 *   W0 spin: poll tail (acquire), bounded            N1 store tail              (release)
 *   W1 exchange(word, 1)                 (acq_rel)   N2 fence                   (seq_cst)
 *   W2 fence                             (seq_cst)   N3 if load(word) == 0: return
 *   W3 if tail moved or closed: word = 0; return     N4 if exchange(word, 0) == 1:
 *   W4 futex_wait(word, 1, deadline)                       futex_wake(word)
 *   W5 word = 0; go to W0 (re-check; return on the deadline)
 *
 * No lost wake-up: the fences order W1 before W3 and N1 before N3, so (store-buffering
 * litmus with fences) either N3 sees word == 1, or W3 sees the new tail. In the first case
 * N4 clears the word and wakes: FUTEX_WAIT compares the word with 1 inside the kernel,
 * atomically with going to sleep, so a waiter that has not slept yet returns at once
 * (EAGAIN) and one that sleeps is woken. A stale notifier (it saw the flag of an earlier
 * round) can only cause a spurious wake-up, which W5 absorbs by re-checking. Closing is a
 * seq_cst fetch_or of the closed flags followed by N3-N4 on both words, so a waiter's W3
 * (which re-checks the flags) pairs with it the same way. tools/model/shmpark.pml checks
 * this exhaustively (and finds the lost wake-up without the fences).
 *
 * Quiet commits (sf_shmring_commit_quiet, ShmRing.put(wake=False)) do N1 only: a consumer
 * asleep stays asleep. Liveness then rests on two things: (1) the caller's promise of a
 * later checking commit (the process backend's worker commits a DONE record quietly only
 * while at least QUIET_AHEAD batches are queued in its task ring, so the DONE before its
 * backlog runs low always checks), and (2) step S of the producer's wait for space: after
 * W1-W3 found no room and before W4, it runs N3-N4 on data_word (W2's fence orders its
 * earlier tail stores before that load). Without S, a ring filled by quiet records leaves
 * both sides asleep, each waiting for the other, until the consumer's deadline.
 * shmpark.pml -DQUIET checks both (and finds the stall with -DNO_SPACE_NOTIFY).
 *
 * W0 is a busy spin of at most spin_ns, adaptive (see sf_shm_adapt_spin below): it never
 * yields, and shrinks to nothing while spins keep missing.
 *
 * Cost when nobody sleeps: a fence and one load per publication; no syscall. Every wait has
 * a deadline (the caller slices long waits and uses each timeout as a liveness check of the
 * peer process); a wait is never unbounded.
 *
 * Futexes are shared: FUTEX_WAIT_BITSET / FUTEX_WAKE WITHOUT FUTEX_PRIVATE_FLAG, so the
 * kernel keys them by (inode/page, offset) and they work across processes mapping the same
 * memory at different addresses. FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC
 * deadline, the clock of sf_now_ns.
 *
 * Portability. Linux: futex + memfd_create. Elsewhere (macOS, BSD; or when
 * SF_SHM_PORTABLE is defined, which the native harness uses to exercise this branch on
 * Linux): the waiter polls the word with short sleeps (50 us doubling to 1 ms) until it is
 * cleared or the deadline passes, and the notifier just clears it (no syscall); the
 * backing memory is shm_open + shm_unlink at once (the fd keeps it alive; nothing is left
 * in /dev/shm). macOS 14.4+ could use os_sync_wait_on_address(SHARED) instead of polling.
 * Windows has no fd-based shared mapping here: sf_shm_create/sf_shm_map fail with ENOSYS.
 *
 * Atomics in shared memory must be lock-free (address-free), which the static asserts
 * below check: a lock-based fallback atomic would not work across processes.
 */
#ifndef SF_SHMRING_H
#define SF_SHMRING_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include "shardflow/_atomic.h"
#include "shardflow/_park.h"

#if !defined(_WIN32)
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#if defined(__linux__) && !defined(SF_SHM_PORTABLE)
#define SF_SHM_FUTEX 1
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "sf_shmring needs lock-free 64-bit atomics");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "sf_shmring needs lock-free 32-bit atomics");

#define SF_SHM_MAGIC 0x53465348u /* "SFSH" */
#define SF_SHM_VERSION 1u
#define SF_SHM_DATA_OFFSET ((uint64_t)4096) /* header page; the data area is page-aligned */
#define SF_SHM_MIN_CAPACITY ((uint64_t)64)
#define SF_SHM_MAX_CAPACITY ((uint64_t)1 << 31) /* len is a u32 */
#define SF_SHM_HDR ((uint64_t)8)
#define SF_SHM_ALIGN8(n) (((n) + 7) & ~(uint64_t)7)
#define SF_SHM_RECORD_SIZE(len) SF_SHM_ALIGN8(SF_SHM_HDR + (uint64_t)(len))
#define SF_SHM_TAG_PAD 0xffffffffu /* reserved: a padding record */

/* closed flags */
#define SF_SHM_WRITER_CLOSED 1u /* no more records: the consumer drains, then sees CLOSED */
#define SF_SHM_READER_CLOSED 2u /* nobody reads: the producer sees CLOSED at once */

/* status codes */
#define SF_SHM_OK 0
#define SF_SHM_EMPTY 1    /* consumer: nothing published (non-blocking call) */
#define SF_SHM_FULL 2     /* producer: not enough room yet (non-blocking call) */
#define SF_SHM_TIMEOUT 3  /* a wait reached its deadline */
#define SF_SHM_CLOSED 4   /* the other side closed (see the flags above) */
#define SF_SHM_TOO_BIG -1 /* the record can never fit this ring */
#define SF_SHM_CORRUPT -2 /* a record header that does not fit the area */

typedef struct sf_shmring_hdr {
    uint32_t magic;
    uint32_t version;
    uint64_t capacity;
    uint64_t map_size;
    sf_atomic_u32 closed; /* SF_SHM_WRITER_CLOSED | SF_SHM_READER_CLOSED */
    SF_PAD(_pad0);
    sf_atomic_u64 tail;
    SF_PAD(_pad1);
    sf_atomic_u64 head;
    SF_PAD(_pad2);
    sf_atomic_u32 data_word;  /* 1 while the consumer sleeps (or is about to) */
    SF_PAD(_pad3);
    sf_atomic_u32 space_word; /* 1 while the producer sleeps (or is about to) */
    SF_PAD(_pad4);
} sf_shmring_hdr;

_Static_assert(sizeof(sf_shmring_hdr) <= SF_SHM_DATA_OFFSET, "header must fit its page");

typedef struct sf_shm_adapt {
    uint32_t shift; /* spins are spin_ns >> shift (none from 6 on) */
    uint32_t waits;
} sf_shm_adapt;

/* Process-local counters: each is written by one side only (single-writer, relaxed). */
typedef struct sf_shmring_stats {
    sf_atomic_u64 records_put, bytes_put, pads, full_waits, producer_parks, wakes_sent_data;
    sf_atomic_u64 records_got, bytes_got, empty_waits, consumer_parks, wakes_sent_space;
} sf_shmring_stats;

/* The process-local handle: a view of the mapping plus each side's private state. */
typedef struct sf_shmring {
    sf_shmring_hdr *hdr;
    unsigned char *data;
    uint64_t capacity, mask;
    /* producer side */
    uint64_t head_cache;
    uint64_t res_pos;  /* position of the reserved record */
    uint64_t res_max;  /* payload bytes reserved (0: no reservation) */
    /* consumer side */
    uint64_t tail_cache;
    uint64_t peek_size; /* record size of the peeked record (0: none) */
    uint64_t peek_len;  /* its payload bytes */
    sf_shm_adapt prod_adapt, cons_adapt; /* each side's adaptive spin */
    sf_shmring_stats st;
} sf_shmring;

/* The one RMW this file needs that _atomic.h lacks (closing; rare). */
static inline uint32_t sf_shm_fetch_or_seqcst_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_fetch_or_explicit(p, v, memory_order_seq_cst);
}

/* ---------------- futex (or its portable stand-in) ---------------- */

/* Sleep while *w == expect, until woken or the monotonic deadline (ns). Spurious returns
 * are allowed; the caller re-checks. */
static inline void sf_shm_futex_wait(sf_atomic_u32 *w, uint32_t expect, int64_t deadline_ns) {
#if defined(SF_SHM_FUTEX)
    struct timespec abs = {(time_t)(deadline_ns / 1000000000LL), (long)(deadline_ns % 1000000000LL)};
    /* Not FUTEX_PRIVATE_FLAG: the word is shared with another process. */
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_BITSET, expect, &abs, NULL,
            FUTEX_BITSET_MATCH_ANY);
#elif !defined(_WIN32)
    /* Portable stand-in: poll the word with short sleeps (no wake-up syscall exists). */
    int64_t nap = 50000;
    while (sf_load_acquire_u32(w) == expect) {
        int64_t left = deadline_ns - sf_now_ns();
        if (left <= 0) return;
        if (nap > left) nap = left;
        struct timespec rel = {0, (long)nap};
        nanosleep(&rel, NULL);
        if (nap < 1000000) nap *= 2;
    }
#else
    (void)w; (void)expect; (void)deadline_ns;
#endif
}

static inline void sf_shm_futex_wake(sf_atomic_u32 *w) {
#if defined(SF_SHM_FUTEX)
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, 1, NULL, NULL, 0);
#else
    (void)w; /* the portable waiter polls */
#endif
}

/* N2-N4: call after a release store that the side sleeping on `w` waits for. Returns 1 if a
 * wake-up was sent. */
static inline int sf_shm_notify(sf_atomic_u32 *w) {
    sf_fence_seqcst();
    if (sf_load_relaxed_u32(w) == 0) return 0;
    if (sf_exchange_acqrel_u32(w, 0) == 0) return 0; /* the sleeper cleared it itself */
    sf_shm_futex_wake(w);
    return 1;
}

/* ---------------- the bounded spin (W0) ---------------- */

/* Busy-poll (cpu_relax) for up to spin_ns, checking the clock every 16 polls; then the
 * caller parks. No sched_yield phase: on a shared machine a yield hands the CPU to
 * unrelated processes for a whole time slice. Measured on the loaded 2-core VM (native
 * stress, scenario shmring, the forked echo with a 20 us spin and three busy threads):
 * yielding between polls after 2 us took 3-11 s per 100k records against 1.4-1.8 s for a
 * busy spin. The price of a busy spin is paid when the peer waits for this very CPU: then
 * it is delayed by the whole spin, which is why the spin must stay short (the caller picks
 * it; ShmRing's default comes from benchmarks/shmring_rtt.py). */

typedef struct sf_shm_spin {
    int64_t end;
    unsigned i;
} sf_shm_spin;

static inline void sf_shm_spin_start(sf_shm_spin *s, int64_t spin_ns) {
    s->end = spin_ns > 0 ? sf_now_ns() + spin_ns : 0;
    s->i = 0;
}

/* 1: poll again; 0: the spin is over (park). */
static inline int sf_shm_spin_more(sf_shm_spin *s) {
    if (s->end == 0) return 0;
    if ((++s->i & 15) == 0 && sf_now_ns() >= s->end) return 0;
    sf_cpu_relax();
    return 1;
}

/* Adaptive spin (as glibc's adaptive mutex does): a wait whose spin ended without the
 * condition halves the next spins (down to none after 6 misses); a spin that saw it
 * restores the full spin; every 32nd wait probes with the full spin, so spinning comes
 * back once the peer has a CPU of its own again. The reason: when the peer waits for this
 * very CPU, every spin delays it by the whole spin (benchmarks/shmring_rtt.py on the loaded
 * 2-core VM: a fixed 10-20 us spin gave round trips of ~2 us in some rounds and 30-50 us
 * in others, a futex-only wait ~8 us in all). */
static inline int64_t sf_shm_adapt_spin(sf_shm_adapt *a, int64_t spin_ns) {
    if (spin_ns <= 0) return 0;
    a->waits++;
    if (a->shift == 0 || (a->waits & 31) == 0) return spin_ns;
    return a->shift >= 6 ? 0 : spin_ns >> a->shift;
}

static inline void sf_shm_adapt_result(sf_shm_adapt *a, int64_t spun_ns, int hit) {
    if (spun_ns <= 0) return;
    if (hit) a->shift = 0;
    else if (a->shift < 6) a->shift++;
}

/* ---------------- set-up ---------------- */

static inline int sf_shmring_valid_capacity(uint64_t c) {
    return c >= SF_SHM_MIN_CAPACITY && c <= SF_SHM_MAX_CAPACITY && (c & (c - 1)) == 0;
}

static inline uint64_t sf_shmring_map_size(uint64_t capacity) {
    return SF_SHM_DATA_OFFSET + capacity;
}

/* Initialise a fresh, zero-filled mapping of sf_shmring_map_size(capacity) bytes (creator
 * only, before the fd is shared). */
static inline void sf_shmring_format(void *base, uint64_t capacity) {
    sf_shmring_hdr *h = (sf_shmring_hdr *)base;
    h->magic = SF_SHM_MAGIC;
    h->version = SF_SHM_VERSION;
    h->capacity = capacity;
    h->map_size = sf_shmring_map_size(capacity);
    atomic_init(&h->closed, 0);
    atomic_init(&h->tail, 0);
    atomic_init(&h->head, 0);
    atomic_init(&h->data_word, 0);
    atomic_init(&h->space_word, 0);
    sf_fence_seqcst();
}

/* Bind a local handle to a mapping of map_size bytes. 0, or -1 when the header is not a
 * shardflow ring of this version or does not match the mapping's size. */
static inline int sf_shmring_open(sf_shmring *r, void *base, uint64_t map_size) {
    sf_shmring_hdr *h = (sf_shmring_hdr *)base;
    memset(r, 0, sizeof(*r));
    if (map_size < SF_SHM_DATA_OFFSET) return -1;
    if (h->magic != SF_SHM_MAGIC || h->version != SF_SHM_VERSION) return -1;
    if (!sf_shmring_valid_capacity(h->capacity) || h->map_size != map_size ||
        sf_shmring_map_size(h->capacity) != map_size)
        return -1;
    r->hdr = h;
    r->data = (unsigned char *)base + SF_SHM_DATA_OFFSET;
    r->capacity = h->capacity;
    r->mask = h->capacity - 1;
    r->head_cache = sf_load_acquire_u64(&h->head);
    r->tail_cache = sf_load_acquire_u64(&h->tail);
    return 0;
}

/* ---------------- producer ---------------- */

/* Non-blocking reserve of n payload bytes: SF_SHM_OK (*out points at them), SF_SHM_FULL,
 * SF_SHM_CLOSED (reader closed) or SF_SHM_TOO_BIG. May publish a padding record. */
static inline int sf_shmring_try_reserve(sf_shmring *r, uint64_t n, unsigned char **out) {
    sf_shmring_hdr *h = r->hdr;
    uint64_t need = SF_SHM_RECORD_SIZE(n);
    if (n > r->capacity - SF_SHM_HDR) return SF_SHM_TOO_BIG;
    if (sf_load_relaxed_u32(&h->closed) & SF_SHM_READER_CLOSED) return SF_SHM_CLOSED;
    uint64_t t = sf_load_relaxed_u64(&h->tail); /* our own store */
    uint64_t off = t & r->mask;
    uint64_t to_end = r->capacity - off;
    if (to_end < need) {
        /* Pad to the end first (needs to_end bytes), then the record needs `need` at 0. */
        if (t + to_end - r->head_cache > r->capacity) {
            r->head_cache = sf_load_acquire_u64(&h->head);
            if (t + to_end - r->head_cache > r->capacity) return SF_SHM_FULL;
        }
        unsigned char *p = r->data + off;
        uint32_t hdr[2] = {(uint32_t)(to_end - SF_SHM_HDR), SF_SHM_TAG_PAD};
        memcpy(p, hdr, sizeof hdr);
        t += to_end;
        sf_store_release_u64(&h->tail, t); /* publish the padding */
        sf_counter_add(&r->st.pads, 1);
        if (sf_shm_notify(&h->data_word)) sf_counter_add(&r->st.wakes_sent_data, 1);
        off = 0;
    }
    if (t + need - r->head_cache > r->capacity) {
        r->head_cache = sf_load_acquire_u64(&h->head);
        if (t + need - r->head_cache > r->capacity) return SF_SHM_FULL;
    }
    r->res_pos = t;
    r->res_max = n ? n : 1; /* non-zero marks "reserved" */
    *out = r->data + off + SF_SHM_HDR;
    return SF_SHM_OK;
}

/* Publish the reserved record without the wake-up check (N1 only): a consumer asleep
 * stays asleep until a later commit that checks (or its deadline). For a producer that
 * knows the consumer does not need this record yet and will publish another one soon
 * (the process backend's worker: a DONE record while more batches are queued); liveness
 * then rests on that later commit, which must be a checking one, and on step S of
 * sf_shmring_reserve when the ring fills up first (see the protocol above). */
static inline void sf_shmring_commit_quiet(sf_shmring *r, uint64_t m, uint32_t tag) {
    sf_shmring_hdr *h = r->hdr;
    uint64_t off = r->res_pos & r->mask;
    uint32_t hdr[2] = {(uint32_t)m, tag};
    memcpy(r->data + off, hdr, sizeof hdr);
    r->res_max = 0;
    sf_store_release_u64(&h->tail, r->res_pos + SF_SHM_RECORD_SIZE(m)); /* N1 */
    sf_counter_add(&r->st.records_put, 1);
    sf_counter_add(&r->st.bytes_put, m);
}

/* Publish the reserved record with m <= reserved payload bytes and a tag (not
 * SF_SHM_TAG_PAD). Returns 1 if it woke the consumer. */
static inline int sf_shmring_commit(sf_shmring *r, uint64_t m, uint32_t tag) {
    sf_shmring_commit_quiet(r, m, tag);
    if (sf_shm_notify(&r->hdr->data_word)) { /* N2-N4 */
        sf_counter_add(&r->st.wakes_sent_data, 1);
        return 1;
    }
    return 0;
}

/* Drop a reservation (nothing was published; the bytes are simply reused). */
static inline void sf_shmring_abort(sf_shmring *r) { r->res_max = 0; }

/* Has the consumer made room for `need` bytes at position t (or closed)? */
static inline int sf_shmring_space_ready(sf_shmring *r, uint64_t t, uint64_t need) {
    if (sf_load_seqcst_u32(&r->hdr->closed) & SF_SHM_READER_CLOSED) return 1;
    return t + need - sf_load_acquire_u64(&r->hdr->head) <= r->capacity;
}

/* Blocking reserve: spin up to spin_ns (adaptive, see above), then park on space_word until deadline_ns
 * (monotonic ns; required). Same results as try_reserve, plus SF_SHM_TIMEOUT. */
static inline int sf_shmring_reserve(sf_shmring *r, uint64_t n, unsigned char **out,
                                     int64_t spin_ns, int64_t deadline_ns) {
    sf_shmring_hdr *h = r->hdr;
    int rc = sf_shmring_try_reserve(r, n, out);
    if (rc != SF_SHM_FULL) return rc;
    sf_counter_add(&r->st.full_waits, 1);
    int64_t spin = sf_shm_adapt_spin(&r->prod_adapt, spin_ns);
    int first = 1;
    for (;;) {
        /* What would make try_reserve succeed: room for the record after any padding. */
        uint64_t t = sf_load_relaxed_u64(&h->tail);
        uint64_t to_end = r->capacity - (t & r->mask);
        uint64_t need = SF_SHM_RECORD_SIZE(n);
        if (to_end < need) need += to_end;
        /* W0: bounded spin */
        sf_shm_spin s;
        int hit = 0;
        sf_shm_spin_start(&s, spin);
        do {
            if (sf_shmring_space_ready(r, t, need)) { hit = 1; break; }
        } while (sf_shm_spin_more(&s));
        if (first) sf_shm_adapt_result(&r->prod_adapt, spin, hit);
        first = 0;
        if (hit) goto retry;
        /* W1-W3 */
        (void)sf_exchange_acqrel_u32(&h->space_word, 1);
        sf_fence_seqcst();
        if (sf_shmring_space_ready(r, t, need)) {
            sf_store_release_u32(&h->space_word, 0);
            goto retry;
        }
        /* S: records committed quietly may have left the consumer asleep on data_word,
         * and it is the one who would make the room we are about to wait for. */
        if (sf_shm_notify(&h->data_word)) sf_counter_add(&r->st.wakes_sent_data, 1);
        if (sf_now_ns() >= deadline_ns) {
            sf_store_release_u32(&h->space_word, 0);
            return SF_SHM_TIMEOUT;
        }
        sf_counter_add(&r->st.producer_parks, 1);
        sf_shm_futex_wait(&h->space_word, 1, deadline_ns); /* W4 */
        sf_store_release_u32(&h->space_word, 0);            /* W5 */
    retry:
        rc = sf_shmring_try_reserve(r, n, out);
        if (rc != SF_SHM_FULL) return rc;
        if (sf_now_ns() >= deadline_ns) return SF_SHM_TIMEOUT;
    }
}

/* ---------------- consumer ---------------- */

/* Non-blocking peek: SF_SHM_OK with (*ptr, *len, *tag), SF_SHM_EMPTY, SF_SHM_CLOSED (writer
 * closed and everything consumed) or SF_SHM_CORRUPT. Padding records are consumed here.
 * Peeking again without a release returns the same record. */
static inline int sf_shmring_try_peek(sf_shmring *r, unsigned char **ptr, uint64_t *len,
                                      uint32_t *tag) {
    sf_shmring_hdr *h = r->hdr;
    uint64_t hd = sf_load_relaxed_u64(&h->head); /* our own store */
    for (;;) {
        if (hd == r->tail_cache) {
            r->tail_cache = sf_load_acquire_u64(&h->tail);
            if (hd == r->tail_cache) {
                /* The flag is read after the tail: a writer that closed after its last
                 * commit has that commit visible to us once we see the flag (acquire). */
                if (sf_load_acquire_u32(&h->closed) & SF_SHM_WRITER_CLOSED) {
                    r->tail_cache = sf_load_acquire_u64(&h->tail);
                    if (hd == r->tail_cache) return SF_SHM_CLOSED;
                    continue;
                }
                return SF_SHM_EMPTY;
            }
        }
        uint64_t off = hd & r->mask;
        uint32_t hdr[2];
        memcpy(hdr, r->data + off, sizeof hdr);
        uint64_t size = SF_SHM_RECORD_SIZE(hdr[0]);
        if (size > r->capacity - off || hd + size > r->tail_cache) return SF_SHM_CORRUPT;
        if (hdr[1] == SF_SHM_TAG_PAD) {
            hd += size;
            sf_store_release_u64(&h->head, hd);
            if (sf_shm_notify(&h->space_word)) sf_counter_add(&r->st.wakes_sent_space, 1);
            continue;
        }
        r->peek_size = size;
        r->peek_len = hdr[0];
        *ptr = r->data + off + SF_SHM_HDR;
        *len = hdr[0];
        *tag = hdr[1];
        return SF_SHM_OK;
    }
}

/* Consume the peeked record. Returns 1 if it woke the producer. */
static inline int sf_shmring_release(sf_shmring *r) {
    sf_shmring_hdr *h = r->hdr;
    uint64_t size = r->peek_size;
    r->peek_size = 0;
    sf_store_release_u64(&h->head, sf_load_relaxed_u64(&h->head) + size); /* N1 */
    sf_counter_add(&r->st.records_got, 1);
    sf_counter_add(&r->st.bytes_got, r->peek_len);
    if (sf_shm_notify(&h->space_word)) { /* N2-N4 */
        sf_counter_add(&r->st.wakes_sent_space, 1);
        return 1;
    }
    return 0;
}

static inline int sf_shmring_data_ready(sf_shmring *r, uint64_t hd) {
    if (sf_load_acquire_u64(&r->hdr->tail) != hd) return 1;
    return (sf_load_seqcst_u32(&r->hdr->closed) & SF_SHM_WRITER_CLOSED) != 0;
}

/* Blocking peek: spin up to spin_ns (adaptive, see above), then park on data_word until deadline_ns (monotonic
 * ns; required). Same results as try_peek, plus SF_SHM_TIMEOUT. */
static inline int sf_shmring_peek(sf_shmring *r, unsigned char **ptr, uint64_t *len,
                                  uint32_t *tag, int64_t spin_ns, int64_t deadline_ns) {
    sf_shmring_hdr *h = r->hdr;
    int rc = sf_shmring_try_peek(r, ptr, len, tag);
    if (rc != SF_SHM_EMPTY) return rc;
    sf_counter_add(&r->st.empty_waits, 1);
    int64_t spin = sf_shm_adapt_spin(&r->cons_adapt, spin_ns);
    int first = 1;
    for (;;) {
        uint64_t hd = sf_load_relaxed_u64(&h->head);
        sf_shm_spin s; /* W0 */
        int hit = 0;
        sf_shm_spin_start(&s, spin);
        do {
            if (sf_shmring_data_ready(r, hd)) { hit = 1; break; }
        } while (sf_shm_spin_more(&s));
        if (first) sf_shm_adapt_result(&r->cons_adapt, spin, hit);
        first = 0;
        if (hit) goto retry;
        (void)sf_exchange_acqrel_u32(&h->data_word, 1); /* W1 */
        sf_fence_seqcst();                                             /* W2 */
        if (sf_shmring_data_ready(r, hd)) {                            /* W3 */
            sf_store_release_u32(&h->data_word, 0);
            goto retry;
        }
        if (sf_now_ns() >= deadline_ns) {
            sf_store_release_u32(&h->data_word, 0);
            return SF_SHM_TIMEOUT;
        }
        sf_counter_add(&r->st.consumer_parks, 1);
        sf_shm_futex_wait(&h->data_word, 1, deadline_ns); /* W4 */
        sf_store_release_u32(&h->data_word, 0);           /* W5 */
    retry:
        rc = sf_shmring_try_peek(r, ptr, len, tag);
        if (rc != SF_SHM_EMPTY) return rc;
        if (sf_now_ns() >= deadline_ns) return SF_SHM_TIMEOUT;
    }
}

/* 1 while the consumer sleeps on data_word (or is about to: W1-W4), else 0. A snapshot,
 * for observing that an idle consumer has stopped spinning (tests, diagnostics). */
static inline int sf_shmring_reader_parked(sf_shmring *r) {
    return sf_load_acquire_u32(&r->hdr->data_word) != 0;
}

/* ---------------- closing ---------------- */

/* Set closed flags (SF_SHM_WRITER_CLOSED and/or SF_SHM_READER_CLOSED) and wake whoever
 * sleeps on either word, in this process or the other. Idempotent. */
static inline void sf_shmring_close(sf_shmring *r, uint32_t flags) {
    sf_shmring_hdr *h = r->hdr;
    sf_shm_fetch_or_seqcst_u32(&h->closed, flags);
    sf_shm_notify(&h->data_word);
    sf_shm_notify(&h->space_word);
}

static inline uint32_t sf_shmring_closed_flags(sf_shmring *r) {
    return sf_load_acquire_u32(&r->hdr->closed);
}

/* Bytes published and not yet released (padding included). */
static inline uint64_t sf_shmring_used(sf_shmring *r) {
    uint64_t hd = sf_load_acquire_u64(&r->hdr->head);
    return sf_load_acquire_u64(&r->hdr->tail) - hd;
}

/* ---------------- backing memory ---------------- */

/* Create an anonymous shared memory object of `size` bytes and return its fd (close-on-
 * exec), or -1 with errno set. Linux: memfd_create (no name in any file system: nothing can
 * leak when a process is SIGKILLed). Elsewhere: shm_open of a unique name, unlinked at once
 * (the fd keeps the object alive; a SIGKILL between the two calls is the only window). */
static inline int sf_shm_create(uint64_t size) {
#if defined(_WIN32)
    (void)size;
    errno = ENOSYS;
    return -1;
#else
    int fd = -1;
#if defined(__linux__) && defined(MFD_CLOEXEC) && !defined(SF_SHM_PORTABLE)
    fd = memfd_create("shardflow-ring", MFD_CLOEXEC);
    if (fd < 0 && errno != ENOSYS) return -1;
#endif
    if (fd < 0) {
        static sf_atomic_u32 counter;
        char name[64];
        for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
            snprintf(name, sizeof name, "/shardflow-%ld-%lld-%u", (long)getpid(),
                     (long long)sf_now_ns(), (unsigned)sf_fetch_add_seqcst_u32(&counter, 1));
            fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
            if (fd < 0 && errno != EEXIST) return -1;
        }
        if (fd < 0) return -1;
        shm_unlink(name);
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0) fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
#endif
}

/* Map `size` bytes of fd shared, read-write. NULL with errno set on failure. */
static inline void *sf_shm_map(int fd, uint64_t size) {
#if defined(_WIN32)
    (void)fd; (void)size;
    errno = ENOSYS;
    return NULL;
#else
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
#endif
}

static inline void sf_shm_unmap(void *p, uint64_t size) {
#if !defined(_WIN32)
    if (p) munmap(p, (size_t)size);
#else
    (void)p; (void)size;
#endif
}

/* Size of the object behind fd, or -1 with errno set. */
static inline int64_t sf_shm_size(int fd) {
#if defined(_WIN32)
    (void)fd;
    errno = ENOSYS;
    return -1;
#else
    struct stat s;
    if (fstat(fd, &s) != 0) return -1;
    return (int64_t)s.st_size;
#endif
}

/* Has the process behind a sentinel fd (pidfd, multiprocessing's Process.sentinel) ended?
 * 1 yes, 0 no (or no sentinel: fd < 0). Never blocks. */
static inline int sf_shm_sentinel_fired(int fd) {
#if defined(_WIN32)
    (void)fd;
    return 0;
#else
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) > 0;
#endif
}

#endif /* SF_SHMRING_H */
