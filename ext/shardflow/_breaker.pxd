# Declarations of shardflow/_breaker.h (circuit breaker state machine in atomics).
from libc.stdint cimport int64_t, uint32_t, uint64_t

from shardflow._atomic cimport sf_atomic_u64


cdef extern from "shardflow/_breaker.h" nogil:
    enum:
        SF_BR_CLOSED
        SF_BR_OPEN
        SF_BR_HALF_OPEN
        SF_BR_FORCED_OPEN
        SF_BR_DISABLED
        SF_BR_OK
        SF_BR_FAIL
        SF_BR_SLOW
        SF_BR_IGNORE
        SF_BR_REJECT
        SF_BR_ALLOW
        SF_BR_TRIAL
        SF_WIN_NONE
        SF_WIN_COUNT
        SF_WIN_TIME

    ctypedef struct sf_breaker:
        sf_atomic_u64 state
        sf_atomic_u64 calls
        sf_atomic_u64 failures
        sf_atomic_u64 slow_calls
        sf_atomic_u64 rejections
        sf_atomic_u64 consecutive
        int win_kind
        uint64_t max_failures
        double failure_rate
        double slow_rate
        uint64_t minimum_calls
        int64_t reset_ns
        uint32_t ho_max
        uint32_t success_threshold

    void sf_breaker_zero(sf_breaker *b)
    int sf_breaker_alloc_window(sf_breaker *b, int kind, uint64_t size, int64_t width_ns)
    void sf_breaker_free(sf_breaker *b)
    int sf_breaker_acquire(sf_breaker *b, int64_t now, uint64_t *token, int64_t *remaining_ns,
                           int *trans)
    int sf_breaker_record(sf_breaker *b, uint64_t token, int flags, int64_t now)
    int sf_breaker_force(sf_breaker *b, int target, int64_t now)
    void sf_br_window_totals(sf_breaker *b, int64_t now, int64_t *calls, int64_t *fails,
                             int64_t *slow)
