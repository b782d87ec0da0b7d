# Declarations of shardflow/_atomic.h. The atomic types are opaque to Cython: Cython code
# only takes their address and passes it to these functions.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "shardflow/_atomic.h" nogil:
    ctypedef unsigned long long sf_atomic_u64
    ctypedef unsigned int sf_atomic_u32
    ctypedef int sf_atomic_int

    uint64_t sf_load_relaxed_u64(sf_atomic_u64 *p)
    uint64_t sf_load_acquire_u64(sf_atomic_u64 *p)
    void sf_store_relaxed_u64(sf_atomic_u64 *p, uint64_t v)
    uint64_t sf_fetch_add_relaxed_u64(sf_atomic_u64 *p, uint64_t v)
    void sf_counter_add(sf_atomic_u64 *p, uint64_t v)
    void sf_counter_max(sf_atomic_u64 *p, uint64_t v)
    uint32_t sf_load_acquire_u32(sf_atomic_u32 *p)
    int sf_load_relaxed_int(sf_atomic_int *p)
    int sf_load_acquire_int(sf_atomic_int *p)
    void sf_store_release_int(sf_atomic_int *p, int v)
    void sf_store_seqcst_int(sf_atomic_int *p, int v)
    void sf_cpu_relax()

    # Additions for the breaker, limiter and rate limiter.
    uint64_t sf_load_seqcst_u64(sf_atomic_u64 *p)
    void sf_store_release_u64(sf_atomic_u64 *p, uint64_t v)
    uint64_t sf_fetch_add_seqcst_u64(sf_atomic_u64 *p, uint64_t v)
    uint64_t sf_fetch_add_acqrel_u64(sf_atomic_u64 *p, uint64_t v)
    uint64_t sf_fetch_sub_relaxed_u64(sf_atomic_u64 *p, uint64_t v)
    uint64_t sf_exchange_acqrel_u64(sf_atomic_u64 *p, uint64_t v)
    int sf_cas_acqrel_u64(sf_atomic_u64 *p, uint64_t *expected, uint64_t desired)
    int sf_cas_strong_seqcst_u64(sf_atomic_u64 *p, uint64_t *expected, uint64_t desired)
