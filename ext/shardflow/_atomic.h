/* sf_atomic: the only door to <stdatomic.h> in shardflow.
 *
 * Every access to shared state goes through these wrappers so that each site names its
 * memory order; a bare `x = y` on shared data is a bug by construction. Cython ships no
 * declarations for C11 atomics, so _atomic.pxd declares these functions instead.
 */
#ifndef SF_ATOMIC_H
#define SF_ATOMIC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* 128, not 64: Intel's adjacent-line prefetcher pulls cache lines in pairs, so two hot
 * fields 64 bytes apart still false-share. Fields separated by SF_PAD bytes never do,
 * whatever the base alignment. */
#define SF_CACHELINE 128
#define SF_PAD(name) char name[SF_CACHELINE]
/* For the few per-item functions whose call (prologue, register saves) would cost as much
 * as their body: GCC and Clang do not always inline a `static inline` this size. */
#if defined(__GNUC__) || defined(__clang__)
#define SF_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define SF_ALWAYS_INLINE static inline
#endif

typedef _Atomic(uint64_t) sf_atomic_u64;
typedef _Atomic(uint32_t) sf_atomic_u32;
typedef _Atomic(int) sf_atomic_int;
typedef _Atomic(void *) sf_atomic_ptr;

/* ---- uint64 ---- */
static inline uint64_t sf_load_relaxed_u64(sf_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}
static inline uint64_t sf_load_acquire_u64(sf_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_acquire);
}
static inline void sf_store_relaxed_u64(sf_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}
static inline void sf_store_release_u64(sf_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}
static inline uint64_t sf_fetch_add_relaxed_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}
static inline uint64_t sf_load_seqcst_u64(sf_atomic_u64 *p) {
    return atomic_load_explicit(p, memory_order_seq_cst);
}
static inline uint64_t sf_fetch_add_seqcst_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_seq_cst);
}
static inline uint64_t sf_fetch_and_seqcst_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_and_explicit(p, v, memory_order_seq_cst);
}
static inline uint64_t sf_fetch_or_seqcst_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_or_explicit(p, v, memory_order_seq_cst);
}
/* Weak CAS: callers loop anyway. On failure *expected holds the current value.
 * seq_cst on success: the ring's claim and take CASes double as the store half of the
 * park protocol's Dekker pair (see _park.h), and on x86 a locked instruction costs the
 * same whatever the order. */
static inline int sf_cas_weak_seqcst_u64(sf_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_weak_explicit(p, expected, desired, memory_order_seq_cst,
                                                 memory_order_relaxed);
}
static inline int sf_cas_strong_seqcst_u64(sf_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_seq_cst,
                                                   memory_order_acquire);
}
/* Single-writer counter bump: the owner is the only writer, so load+store (no RMW, no
 * lock prefix) is exact; relaxed atomics keep concurrent readers race-free. */
static inline void sf_counter_add(sf_atomic_u64 *p, uint64_t v) {
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + v,
                          memory_order_relaxed);
}
/* Single-writer running maximum. */
static inline void sf_counter_max(sf_atomic_u64 *p, uint64_t v) {
    if (v > atomic_load_explicit(p, memory_order_relaxed))
        atomic_store_explicit(p, v, memory_order_relaxed);
}

/* ---- uint32 ---- */
static inline uint32_t sf_load_relaxed_u32(sf_atomic_u32 *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}
static inline uint32_t sf_load_acquire_u32(sf_atomic_u32 *p) {
    return atomic_load_explicit(p, memory_order_acquire);
}
static inline uint32_t sf_load_seqcst_u32(sf_atomic_u32 *p) {
    return atomic_load_explicit(p, memory_order_seq_cst);
}
static inline void sf_store_release_u32(sf_atomic_u32 *p, uint32_t v) {
    atomic_store_explicit(p, v, memory_order_release);
}
static inline uint32_t sf_fetch_add_seqcst_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_seq_cst);
}
static inline uint32_t sf_fetch_add_relaxed_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}
static inline uint32_t sf_fetch_sub_seqcst_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_fetch_sub_explicit(p, v, memory_order_seq_cst);
}
static inline uint32_t sf_fetch_sub_relaxed_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_fetch_sub_explicit(p, v, memory_order_relaxed);
}
static inline uint32_t sf_fetch_sub_release_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_fetch_sub_explicit(p, v, memory_order_release);
}

/* ---- int flags ---- */
static inline int sf_load_relaxed_int(sf_atomic_int *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}
static inline int sf_load_acquire_int(sf_atomic_int *p) {
    return atomic_load_explicit(p, memory_order_acquire);
}
static inline void sf_store_release_int(sf_atomic_int *p, int v) {
    atomic_store_explicit(p, v, memory_order_release);
}
static inline void sf_store_seqcst_int(sf_atomic_int *p, int v) {
    atomic_store_explicit(p, v, memory_order_seq_cst);
}

/* ---- pointers (ring slots) ----
 * Slots are relaxed atomics: ordering comes from the index that publishes them, but a
 * consumer that loses its claim race may read a slot a producer is rewriting; with
 * relaxed atomics that is a benign race by the standard, not undefined behaviour. */
static inline void *sf_load_relaxed_ptr(sf_atomic_ptr *p) {
    return atomic_load_explicit(p, memory_order_relaxed);
}
static inline void sf_store_relaxed_ptr(sf_atomic_ptr *p, void *v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static inline void sf_fence_seqcst(void) { atomic_thread_fence(memory_order_seq_cst); }

/* A polite busy-wait hint. */
#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
static inline void sf_cpu_relax(void) { _mm_pause(); }
#elif defined(_MSC_VER) && defined(_M_ARM64)
#include <intrin.h>
static inline void sf_cpu_relax(void) { __yield(); }
#elif defined(__x86_64__) || defined(__i386__)
static inline void sf_cpu_relax(void) { __builtin_ia32_pause(); }
#elif defined(__aarch64__)
static inline void sf_cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void sf_cpu_relax(void) {}
#endif

/* ---- additions for the breaker, limiter and rate limiter (_breaker.h, _limiter.h) ----
 * Shared read-modify-write on genuinely shared state. CAS wrappers are strong (callers
 * that loop could use weak, but a spurious failure in a state-machine CAS would be
 * misread as "someone else transitioned") and name their success order; failure order
 * is acquire so that the refreshed *expected can be acted upon. */
static inline uint64_t sf_fetch_add_acqrel_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_add_explicit(p, v, memory_order_acq_rel);
}
static inline uint64_t sf_fetch_sub_relaxed_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_fetch_sub_explicit(p, v, memory_order_relaxed);
}
static inline uint64_t sf_exchange_acqrel_u64(sf_atomic_u64 *p, uint64_t v) {
    return atomic_exchange_explicit(p, v, memory_order_acq_rel);
}
static inline int sf_cas_acqrel_u64(sf_atomic_u64 *p, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(p, expected, desired, memory_order_acq_rel,
                                                   memory_order_acquire);
}
static inline uint32_t sf_exchange_acqrel_u32(sf_atomic_u32 *p, uint32_t v) {
    return atomic_exchange_explicit(p, v, memory_order_acq_rel);
}
static inline void sf_store_relaxed_u32(sf_atomic_u32 *p, uint32_t v) {
    atomic_store_explicit(p, v, memory_order_relaxed);
}

#endif /* SF_ATOMIC_H */
