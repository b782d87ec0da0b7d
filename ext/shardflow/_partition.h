/* sf_partition: split the rows of a columnar batch by key hash into per-shard runs.
 *
 * What it does. Given a key column (n rows) and a shard count, every row gets a shard id
 * (a 64-bit mix of the key, reduced to [0, nshards)), and the rows of every column are
 * moved so that each shard's rows form one contiguous run, shards in order, rows of one
 * shard in their source order. The output of a column is ONE buffer the size of its
 * input; shard s owns rows [offsets[s], offsets[s+1]), so a shard's batch is a slice of it
 * (zero copy). Scratch: a 16-bit shard id per row and small per-shard tables.
 *
 * Why this algorithm: a counting sort (one radix digit of 16 bits at most), i.e. the
 * partition pass of a radix sort over contiguous memory:
 *
 *   1. hash pass     read the keys once; write a 16-bit shard id per row, then count rows
 *                    per shard (the histogram);
 *   2. prefix sums   offsets[s] = rows of shards < s (nshards + 1 entries);
 *   3. scatter pass  walk the rows in source order, row i goes to cursor[id[i]]++ in
 *                    every column's output (and i there in the row order, if asked).
 *
 * A comparison sort (np.argsort) costs O(n log n) compares and a gather afterwards; the
 * counting sort is O(n + nshards), touches every input byte once and writes every output
 * byte once, as nshards sequential write streams at a time (the cursors stay in L1). Walking rows in ascending order and bumping a per-shard cursor is what makes it
 * STABLE: rows of one shard (hence of one key) keep their source order.
 *
 * Hash. Integer keys are widened to 64 bits by value (int32 5 and int64 5 route alike;
 * an unsigned key routes as the signed key of the same bit pattern) and mixed with the
 * splitmix64 finalizer (Stafford's mix 13), which spreads sequential and strided keys
 * evenly; fixed-width bytes keys (numpy 'S') are hashed without their trailing NUL
 * padding, word by word through the same finalizer, so a key routes alike whatever the
 * column's width. The shard is the high 32 bits of the hash times nshards, shifted down
 * 32 (Lemire's multiply-shift: no division, and it uses the best-mixed bits).
 *
 * Threads. Pure functions of their arguments: no globals, no atomics, no allocation; the
 * caller (the Cython module) releases the GIL around every call and keeps the buffers
 * alive. Bounds: nshards <= SF_PART_MAX_SHARDS (ids are uint16); counts are uint64.
 */
#ifndef SF_PARTITION_H
#define SF_PARTITION_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SF_PART_MAX_SHARDS 65536u

/* splitmix64's finalizer: a bijection on 64 bits whose every output bit depends on every
 * input bit. */
static inline uint64_t sf_part_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* [0, nshards) from a mixed hash: the high 32 bits times nshards, shifted down 32. */
static inline uint32_t sf_part_reduce(uint64_t h, uint32_t nshards) {
    return (uint32_t)(((h >> 32) * (uint64_t)nshards) >> 32);
}

/* The hash of a byte string (trailing NULs excluded by the caller): 8-byte little-endian
 * words folded through the finalizer, the length mixed in first. */
static inline uint64_t sf_part_hash_bytes(const unsigned char *p, size_t len) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = 0;
        for (int b = 0; b < 8; b++) w |= (uint64_t)p[i + b] << (8 * b);
        h = sf_part_mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
    }
    if (i < len) {
        uint64_t w = 0;
        for (int b = 0; i + b < len; b++) w |= (uint64_t)p[i + b] << (8 * b);
        h = sf_part_mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
    }
    return h;
}

/* Key kinds the hash pass reads (values of sf_part_hash's `kind`). */
enum {
    SF_PART_I8 = 1, SF_PART_I16, SF_PART_I32, SF_PART_I64,
    SF_PART_U8, SF_PART_U16, SF_PART_U32, SF_PART_U64,
    SF_PART_BYTES
};

/* Loads of one key at any alignment (memcpy: no unaligned access, one move once inlined). */
#define SF_PART_DEFINE_LOAD(NAME, T) \
    static inline T NAME(const char *p) { T v; memcpy(&v, p, sizeof v); return v; }
SF_PART_DEFINE_LOAD(sf_part_ld_i8, int8_t)
SF_PART_DEFINE_LOAD(sf_part_ld_i16, int16_t)
SF_PART_DEFINE_LOAD(sf_part_ld_i32, int32_t)
SF_PART_DEFINE_LOAD(sf_part_ld_u8, uint8_t)
SF_PART_DEFINE_LOAD(sf_part_ld_u16, uint16_t)
SF_PART_DEFINE_LOAD(sf_part_ld_u32, uint32_t)
SF_PART_DEFINE_LOAD(sf_part_ld_u64, uint64_t)
#undef SF_PART_DEFINE_LOAD

/* The hash pass: ids[i] = shard of key i (for i < n). Keys start at `base`, `stride` bytes apart
 * (a strided column, e.g. a field of a structured array, needs no copy); `width` is the
 * item size for SF_PART_BYTES. Returns 0, or -1 for an unknown kind. */
static int sf_part_hash(const char *base, ptrdiff_t stride, size_t n, int kind, size_t width,
                        uint32_t nshards, uint16_t *ids) {
    size_t i;
#define SF_PART_LOOP(EXPR)                                                  \
    for (i = 0; i < n; i++) {                                               \
        const char *p_ = base + (ptrdiff_t)i * stride;                      \
        uint32_t s_ = sf_part_reduce(sf_part_mix64((uint64_t)(EXPR)), nshards); \
        ids[i] = (uint16_t)s_;                                              \
    }
    switch (kind) {
    case SF_PART_I64:
    case SF_PART_U64:
        if (stride == 8) {
            /* the hot path: contiguous 64-bit keys */
            for (i = 0; i < n; i++) {
                uint64_t k;
                memcpy(&k, base + 8 * i, 8);
                ids[i] = (uint16_t)sf_part_reduce(sf_part_mix64(k), nshards);
            }
        } else {
            SF_PART_LOOP(sf_part_ld_u64(p_))
        }
        break;
    case SF_PART_I32: SF_PART_LOOP((int64_t)sf_part_ld_i32(p_)) break;
    case SF_PART_I16: SF_PART_LOOP((int64_t)sf_part_ld_i16(p_)) break;
    case SF_PART_I8: SF_PART_LOOP((int64_t)sf_part_ld_i8(p_)) break;
    case SF_PART_U32: SF_PART_LOOP(sf_part_ld_u32(p_)) break;
    case SF_PART_U16: SF_PART_LOOP(sf_part_ld_u16(p_)) break;
    case SF_PART_U8: SF_PART_LOOP(sf_part_ld_u8(p_)) break;
    case SF_PART_BYTES:
        for (i = 0; i < n; i++) {
            const unsigned char *p = (const unsigned char *)(base + (ptrdiff_t)i * stride);
            size_t len = width;
            while (len > 0 && p[len - 1] == 0) len--;
            uint32_t s = sf_part_reduce(sf_part_mix64(sf_part_hash_bytes(p, len)), nshards);
            ids[i] = (uint16_t)s;
        }
        break;
    default:
        return -1;
    }
#undef SF_PART_LOOP
    return 0;
}

/* Segments. Bumping counts[id] / cursor[id] for consecutive rows of the same shard is a
 * chain of dependent load-add-stores through one memory word (store-to-load forwarding,
 * ~5 cycles a row): with 2 shards most rows wait on the previous one. So the count and
 * scatter passes split the rows into `nseg` equal segments (the last takes the remainder)
 * and walk them in lock-step, row i of every segment in one iteration, each segment with
 * its own counts and cursors: nseg independent chains. Segment j's cursor for shard s
 * starts after the rows of s in segments < j, so the output is still stable. */
#define SF_PART_SEGS 4

/* How many segments to use: 4 when the per-segment tables stay small and the rows are
 * many, else 1 (with many shards consecutive rows rarely share a shard anyway). */
static inline uint32_t sf_part_nseg(size_t n, uint32_t nshards) {
    return (n >= 1024 && nshards <= 4096) ? SF_PART_SEGS : 1;
}

/* Rows per shard and segment: counts[j * nshards + s] (nseg * nshards entries, zeroed by
 * the caller). */
static void sf_part_count(const uint16_t *ids, size_t n, uint32_t nshards, uint32_t nseg,
                          uint64_t *counts) {
    size_t len = n / nseg, i;
    if (nseg == SF_PART_SEGS) {
        uint64_t *c0 = counts, *c1 = counts + nshards, *c2 = counts + 2 * (size_t)nshards,
                 *c3 = counts + 3 * (size_t)nshards;
        const uint16_t *i0 = ids, *i1 = ids + len, *i2 = ids + 2 * len, *i3 = ids + 3 * len;
        for (i = 0; i < len; i++) {
            c0[i0[i]]++;
            c1[i1[i]]++;
            c2[i2[i]]++;
            c3[i3[i]]++;
        }
        for (i = 4 * len; i < n; i++) c3[ids[i]]++;
    } else {
        for (i = 0; i < n; i++) counts[ids[i]]++;
    }
}

/* The hot path of passes 1 and 2 fused: contiguous 64-bit keys hashed and counted in one
 * walk, the segments in lock-step (the count chains overlap with the hashing). Same
 * results as sf_part_hash then sf_part_count. */
static void sf_part_hash_count_u64(const char *base, size_t n, uint32_t nshards, uint32_t nseg,
                                   uint16_t *ids, uint64_t *counts) {
    size_t len = n / nseg, i;
#define SF_PART_HC(C, I)                                                   \
    do {                                                                   \
        uint64_t k_;                                                       \
        memcpy(&k_, base + 8 * (I), 8);                                    \
        uint32_t s_ = sf_part_reduce(sf_part_mix64(k_), nshards);          \
        ids[I] = (uint16_t)s_;                                             \
        (C)[s_]++;                                                         \
    } while (0)
    if (nseg == SF_PART_SEGS) {
        uint64_t *c0 = counts, *c1 = counts + nshards, *c2 = counts + 2 * (size_t)nshards,
                 *c3 = counts + 3 * (size_t)nshards;
        for (i = 0; i < len; i++) {
            SF_PART_HC(c0, i);
            SF_PART_HC(c1, i + len);
            SF_PART_HC(c2, i + 2 * len);
            SF_PART_HC(c3, i + 3 * len);
        }
        for (i = 4 * len; i < n; i++) SF_PART_HC(c3, i);
    } else {
        for (i = 0; i < n; i++) SF_PART_HC(counts, i);
    }
#undef SF_PART_HC
}

/* offsets[s] = rows of shards < s (nshards + 1 entries, offsets[nshards] = n); and
 * starts[j * nshards + s] = offsets[s] + rows of shard s in segments < j. */
static void sf_part_offsets(const uint64_t *counts, uint32_t nshards, uint32_t nseg,
                            uint64_t *offsets, uint64_t *starts) {
    uint64_t acc = 0;
    for (uint32_t s = 0; s < nshards; s++) {
        offsets[s] = acc;
        for (uint32_t j = 0; j < nseg; j++) {
            starts[(size_t)j * nshards + s] = acc;
            acc += counts[(size_t)j * nshards + s];
        }
    }
    offsets[nshards] = acc;
}

/* Rows per segment in one block of the scatter pass: its destinations (nseg * 8 bytes a
 * row, 256 KiB) stay in L2. 8192 measured fastest of 512, 2048 and 8192 (10M rows). */
#ifndef SF_PART_BLOCK
#define SF_PART_BLOCK 8192
#endif

/* Copy rows r0 .. r0 + m - 1 of a column of `width`-byte rows to their destinations. */
static inline void sf_part_move(const uint64_t *dest, size_t m, size_t r0, const char *src,
                                char *dst, size_t width) {
    size_t q;
    src += r0 * width;
#define SF_PART_MOVE(W) \
    for (q = 0; q < m; q++) memcpy(dst + dest[q] * (W), src + q * (W), (W));
    switch (width) {
    case 1: SF_PART_MOVE(1) break;
    case 2: SF_PART_MOVE(2) break;
    case 4: SF_PART_MOVE(4) break;
    case 8: SF_PART_MOVE(8) break;
    case 16: SF_PART_MOVE(16) break;
    default: SF_PART_MOVE(width) break;
    }
#undef SF_PART_MOVE
}

/* The scatter pass, blocked: for a block of rows of every segment (lock-step), first the
 * destination of every row, dest = cursor[ids[i]]++ (the only serial part, nseg chains),
 * into a small buffer; then every column's rows of the block are copied to their
 * destinations (no dependency between rows), and the row order written if asked.
 * Destinations are computed once for all columns, and each copy loop writes to nshards
 * sequential streams only.
 *
 * ncols columns: srcs[c] -> dsts[c], widths[c] bytes a row, src and dst not overlapping;
 * order (NULL or n entries): order[dest of row i] = i. cursor: nseg * nshards scratch;
 * dest: nseg * SF_PART_BLOCK scratch. */
static void sf_part_scatter(const uint16_t *ids, size_t n, uint32_t nshards, uint32_t nseg,
                            const uint64_t *starts, uint64_t *cursor, uint64_t *dest,
                            size_t ncols, const char *const *srcs, char *const *dsts,
                            const size_t *widths, int64_t *order) {
    size_t len = n / nseg, p0, m, q, c;
    uint32_t j;
    memcpy(cursor, starts, (size_t)nseg * nshards * sizeof *cursor);
    for (p0 = 0; p0 < len; p0 += m) {
        m = len - p0 < SF_PART_BLOCK ? len - p0 : SF_PART_BLOCK;
        if (nseg == SF_PART_SEGS) {
            uint64_t *c0 = cursor, *c1 = cursor + nshards, *c2 = cursor + 2 * (size_t)nshards,
                     *c3 = cursor + 3 * (size_t)nshards;
            const uint16_t *i0 = ids + p0, *i1 = i0 + len, *i2 = i1 + len, *i3 = i2 + len;
            uint64_t *d0 = dest, *d1 = dest + SF_PART_BLOCK, *d2 = d1 + SF_PART_BLOCK,
                     *d3 = d2 + SF_PART_BLOCK;
            for (q = 0; q < m; q++) {
                d0[q] = c0[i0[q]]++;
                d1[q] = c1[i1[q]]++;
                d2[q] = c2[i2[q]]++;
                d3[q] = c3[i3[q]]++;
            }
        } else {
            for (q = 0; q < m; q++) dest[q] = cursor[ids[p0 + q]]++;
        }
        for (j = 0; j < nseg; j++) {
            const uint64_t *dj = dest + (size_t)j * SF_PART_BLOCK;
            size_t r0 = (size_t)j * len + p0;
            for (c = 0; c < ncols; c++) sf_part_move(dj, m, r0, srcs[c], dsts[c], widths[c]);
            if (order)
                for (q = 0; q < m; q++) order[dj[q]] = (int64_t)(r0 + q);
        }
    }
    /* the remainder rows of the last segment (nseg > 1 only), in source order */
    if (nseg > 1) {
        uint64_t *cl = cursor + (size_t)(nseg - 1) * nshards;
        for (p0 = nseg * len; p0 < n; p0 += m) {
            m = n - p0 < SF_PART_BLOCK ? n - p0 : SF_PART_BLOCK;
            for (q = 0; q < m; q++) dest[q] = cl[ids[p0 + q]]++;
            for (c = 0; c < ncols; c++) sf_part_move(dest, m, p0, srcs[c], dsts[c], widths[c]);
            if (order)
                for (q = 0; q < m; q++) order[dest[q]] = (int64_t)(p0 + q);
        }
    }
}

#endif /* SF_PARTITION_H */
