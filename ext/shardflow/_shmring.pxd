# Declarations of shardflow/_shmring.h: the SPSC byte ring of length-prefixed records in
# shared memory (the transport of the process backend), its park protocol and its backing
# memory. The ring handle is a plain struct: Cython code owns one per mapped ring.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from shardflow._atomic cimport sf_atomic_u32, sf_atomic_u64


cdef extern from "shardflow/_atomic.h" nogil:
    uint32_t sf_exchange_acqrel_u32(sf_atomic_u32 *p, uint32_t v)
    void sf_store_release_u32(sf_atomic_u32 *p, uint32_t v)


cdef extern from "shardflow/_shmring.h" nogil:
    ctypedef struct sf_shmring_stats:
        sf_atomic_u64 records_put, bytes_put, pads, full_waits, producer_parks
        sf_atomic_u64 wakes_sent_data
        sf_atomic_u64 records_got, bytes_got, empty_waits, consumer_parks, wakes_sent_space

    ctypedef struct sf_shmring:
        uint64_t capacity
        sf_shmring_stats st

    uint64_t SF_SHM_DATA_OFFSET
    uint64_t SF_SHM_MIN_CAPACITY
    uint64_t SF_SHM_MAX_CAPACITY
    uint64_t SF_SHM_HDR
    uint32_t SF_SHM_TAG_PAD
    uint32_t SF_SHM_WRITER_CLOSED
    uint32_t SF_SHM_READER_CLOSED
    int SF_SHM_OK
    int SF_SHM_EMPTY
    int SF_SHM_FULL
    int SF_SHM_TIMEOUT
    int SF_SHM_CLOSED
    int SF_SHM_TOO_BIG
    int SF_SHM_CORRUPT
    uint64_t SF_SHM_RECORD_SIZE(uint64_t n)

    int sf_shmring_valid_capacity(uint64_t c)
    uint64_t sf_shmring_map_size(uint64_t capacity)
    void sf_shmring_format(void *base, uint64_t capacity)
    int sf_shmring_open(sf_shmring *r, void *base, uint64_t map_size)
    int sf_shmring_try_reserve(sf_shmring *r, uint64_t n, unsigned char **out)
    int sf_shmring_reserve(sf_shmring *r, uint64_t n, unsigned char **out, int64_t spin_ns,
                           int64_t deadline_ns)
    int sf_shmring_commit(sf_shmring *r, uint64_t m, uint32_t tag)
    void sf_shmring_commit_quiet(sf_shmring *r, uint64_t m, uint32_t tag)
    void sf_shmring_abort(sf_shmring *r)
    int sf_shmring_try_peek(sf_shmring *r, unsigned char **ptr, uint64_t *len, uint32_t *tag)
    int sf_shmring_peek(sf_shmring *r, unsigned char **ptr, uint64_t *len, uint32_t *tag,
                        int64_t spin_ns, int64_t deadline_ns)
    int sf_shmring_release(sf_shmring *r)
    int sf_shmring_reader_parked(sf_shmring *r)
    void sf_shmring_close(sf_shmring *r, uint32_t flags)
    uint32_t sf_shmring_closed_flags(sf_shmring *r)
    uint64_t sf_shmring_used(sf_shmring *r)

    int sf_shm_create(uint64_t size)
    void *sf_shm_map(int fd, uint64_t size)
    void sf_shm_unmap(void *p, uint64_t size)
    int64_t sf_shm_size(int fd)
    int sf_shm_sentinel_fired(int fd)
