# Declarations of shardflow/_limiter.h (semaphore and token bucket).
from libc.stdint cimport int64_t, uint64_t

from shardflow._atomic cimport sf_atomic_int, sf_atomic_u64


cdef extern from "shardflow/_limiter.h" nogil:
    ctypedef struct sf_lim_waiter:
        pass

    ctypedef struct sf_limiter:
        sf_atomic_u64 count
        sf_atomic_u64 qlen
        sf_atomic_u64 waiting
        sf_atomic_u64 timeouts
        sf_atomic_u64 acquired
        sf_atomic_u64 probe_inside
        sf_atomic_u64 probe_max
        uint64_t limit
        int fair

    int sf_limiter_init(sf_limiter *l, uint64_t limit, int fair)
    void sf_limiter_destroy(sf_limiter *l)
    int sf_limiter_try_acquire(sf_limiter *l)
    int sf_limiter_release(sf_limiter *l)
    int sf_limiter_wait_unfair(sf_limiter *l, int64_t deadline_ns)
    int sf_limiter_enqueue(sf_limiter *l, sf_lim_waiter *w)
    int sf_limiter_wait_fair(sf_limiter *l, sf_lim_waiter *w, int64_t deadline_ns)
    int sf_limiter_abandon(sf_limiter *l, sf_lim_waiter *w)

    ctypedef struct sf_rate:
        sf_atomic_u64 acquired
        sf_atomic_u64 rejected
        int64_t cost_ns
        int64_t burst_ns

    void sf_rate_init(sf_rate *r, int64_t cost_ns, int64_t burst)
    int64_t sf_rate_take(sf_rate *r, int64_t k, int64_t now, int64_t max_wait_ns, int *ok)
    double sf_rate_available(sf_rate *r, int64_t now)
