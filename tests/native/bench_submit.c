/* bench_submit: the submit path's cost per item, single-threaded and without Python.
 *
 * sf_shard_push of one item at a time (what ShardedPool.submit does in C), drained
 * BATCH at a time with sf_shard_pop (the worker's drain, which records queue waits), on
 * a 65,536-slot ring. Prints ns per item. Build it against two header trees to compare
 * them (`make bench` builds this tree's), and count instructions with
 * `valgrind --tool=callgrind ./bench_submit 1000000` for a noise-free comparison.
 *
 *   bench_submit [ITEMS [BATCH]]
 */
#include <stdio.h>
#include <stdlib.h>
#include "shardflow/_shard.h"
int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], 0, 10) : 10000000;
    uint64_t batch = argc > 2 ? strtoull(argv[2], 0, 10) : 256;
    static sf_shard s __attribute__((aligned(128)));
    void *out[4096];
    void *p = &s;
    uint64_t got = 0;
    if (sf_shard_init(&s, 65536)) return 1;
    int64_t t0 = sf_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        sf_shard_push(&s, &p, 1);
        if ((i + 1) % batch == 0) got += sf_shard_pop(&s, out, batch);
    }
    int64_t t1 = sf_now_ns();
    printf("%.3f ns/item got=%llu\n", (double)(t1 - t0) / n, (unsigned long long)got);
    return got != n - n % batch;
}
