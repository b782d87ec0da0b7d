# Declarations of shardflow/_ring.h: the bounded MPMC ring of object pointers.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "shardflow/_ring.h" nogil:
    ctypedef struct sf_ring:
        pass

    uint64_t SF_RING_MAX_CAPACITY
    uint64_t sf_ring_round_capacity(uint64_t want)
    int sf_ring_init(sf_ring *r, uint64_t capacity)
    void sf_ring_destroy(sf_ring *r)
    uint64_t sf_ring_tail_index(sf_ring *r)
    int sf_ring_is_closed(sf_ring *r)
    uint64_t sf_ring_depth(sf_ring *r)
    int sf_ring_has_items(sf_ring *r)
    int sf_ring_finished(sf_ring *r)
    int sf_ring_close(sf_ring *r)
    void sf_ring_wait_published(sf_ring *r)
    int64_t sf_ring_push(sf_ring *r, void **items, uint64_t n)
    int64_t sf_ring_push1(sf_ring *r, void *item)
    uint64_t sf_ring_pop_part(sf_ring *r, void **out, uint64_t max, uint64_t divisor)
    uint64_t sf_ring_pop(sf_ring *r, void **out, uint64_t max)
