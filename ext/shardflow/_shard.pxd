# Declarations of shardflow/_counters.h, _shard.h and _pool.h: a worker's shard (ring, wait
# points, counters) and the pool-wide state.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from shardflow._atomic cimport sf_atomic_int, sf_atomic_u32, sf_atomic_u64
from shardflow._park cimport sf_event
from shardflow._ring cimport sf_ring


cdef extern from "shardflow/_counters.h" nogil:
    ctypedef struct sf_counters:
        sf_atomic_u64 processed
        sf_atomic_u64 failed
        sf_atomic_u64 dead_lettered
        sf_atomic_u64 batches
        sf_atomic_u64 high_water
        sf_atomic_u64 stolen_in
        sf_atomic_u64 stolen_out
        sf_atomic_u64 dropped
        sf_atomic_u64 returned
        sf_atomic_u64 flushed
        sf_atomic_u64 direct


cdef extern from "shardflow/_hist.h" nogil:
    ctypedef struct sf_hist:
        sf_atomic_u64 count
        sf_atomic_u64 sum_ns
        sf_atomic_u64 max_ns
        sf_atomic_u64 *buckets

    uint64_t SF_HIST_BUCKETS
    uint64_t SF_HIST_SUB_BITS
    uint64_t SF_HIST_MAX_NS
    int sf_hist_init(sf_hist *h)
    void sf_hist_destroy(sf_hist *h)
    uint64_t sf_hist_index(uint64_t v)
    uint64_t sf_hist_lo(uint64_t idx)
    uint64_t sf_hist_hi(uint64_t idx)
    void sf_hist_record(sf_hist *h, uint64_t v)
    void sf_hist_record_since(sf_hist *h, int64_t start_ns, int64_t now_ns)


cdef extern from "shardflow/_shard.h" nogil:
    uint64_t SF_SERVICE_SAMPLE_EVERY
    int64_t SF_WAIT_FINISHED
    int64_t SF_WAIT_TIMEOUT
    int64_t SF_WAIT_FLUSH

    ctypedef struct sf_shard:
        sf_ring ring
        sf_counters ctr
        sf_event data_ev
        sf_event space_ev
        sf_hist qwait
        sf_hist service
        uint64_t svc_tick
        sf_atomic_int steal_gated

    int sf_shard_init(sf_shard *s, uint64_t capacity)
    void sf_shard_destroy(sf_shard *s)
    int64_t sf_shard_push(sf_shard *s, void **items, uint64_t n)
    uint64_t sf_shard_pop(sf_shard *s, void **out, uint64_t max)
    int sf_shard_wait_space(sf_shard *s, int64_t deadline_ns)
    void sf_shard_wake_all(sf_shard *s)
    sf_shard *sf_shards_alloc(size_t n)
    void sf_shards_free(sf_shard *p)


cdef extern from "shardflow/_pool.h" nogil:
    int SF_STOP_NONE
    int SF_STOP_FINISH_TAKEN
    int SF_STOP_HAND_BACK

    ctypedef struct sf_pool:
        sf_atomic_int stop
        sf_atomic_int forked
        sf_atomic_u32 live
        int steal
        sf_atomic_u64 flush_seq

    int sf_pool_init(sf_pool *p)
    void sf_pool_destroy(sf_pool *p)
    uint64_t sf_pool_next_shard(sf_pool *p, uint64_t nshards)
    void sf_pool_worker_started(sf_pool *p)
    void sf_pool_worker_exited(sf_pool *p)
    int sf_pool_wait_idle(sf_pool *p, int64_t deadline_ns)
    void sf_pool_want_gil(sf_pool *p)
    void sf_pool_got_gil(sf_pool *p)
    int sf_pool_should_hand_gil(sf_pool *p, uint64_t depth, uint64_t high)
    int sf_pool_wait_gil_taken(sf_pool *p, int64_t deadline_ns)


cdef extern from "shardflow/_sched.h" nogil:
    uint64_t SF_STEAL_MAX
    int64_t sf_sched_push(sf_pool *p, sf_shard *shards, uint64_t s, void **items, uint64_t n)
    int64_t sf_sched_push1(sf_pool *p, sf_shard *shards, uint64_t s, void *item)
    int64_t sf_sched_wait(sf_pool *p, sf_shard *shards, uint64_t nshards, uint64_t self,
                          void **out, uint64_t max, int64_t deadline_ns, uint64_t flush_seen,
                          int *hold)
    void sf_sched_release_hold(sf_pool *p)
    void sf_sched_gate(sf_shard *s, int closed)
    void sf_sched_flush_done(sf_pool *p)
    uint64_t sf_sched_pop_own(sf_pool *p, sf_shard *shards, uint64_t self, void **out,
                              uint64_t max)
    uint64_t sf_sched_request_flush(sf_pool *p, sf_shard *shards, uint64_t nshards)
    void sf_sched_flushed(sf_pool *p, sf_shard *s, uint64_t seq)
    int sf_sched_wait_flushed(sf_pool *p, sf_shard *shards, uint64_t nshards, uint64_t seq,
                              int64_t deadline_ns)
