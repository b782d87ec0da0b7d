# Declarations of shardflow/_park.h (eventcount and monotonic clock).
from libc.stdint cimport int64_t, uint32_t


cdef extern from "shardflow/_park.h" nogil:
    ctypedef struct sf_event:
        pass

    int64_t sf_now_ns()
    void sf_thread_yield()
    int sf_event_init(sf_event *e)
    void sf_event_destroy(sf_event *e)
    uint32_t sf_event_prepare(sf_event *e)
    void sf_event_cancel(sf_event *e, uint32_t key)
    int sf_event_wait(sf_event *e, uint32_t key, int64_t deadline_ns)
    void sf_event_notify(sf_event *e)
