/* fuzz_common.h - small helpers shared by the lazylayer fuzz targets.
 *
 * Only the public API (lazylayer.h) is used, so the targets keep testing the
 * contract rather than the implementation of the day. */
#ifndef LL_FUZZ_COMMON_H
#define LL_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lazylayer.h"

/* A broken invariant: print why and abort, so libFuzzer records a crash. */
#define CHECK(cond, ...)                                                               \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "\nFUZZ CHECK FAILED %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                              \
            fprintf(stderr, "\n");                                                     \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* Every status a function may return is one of the documented ones. */
static inline int ll_fuzz_known_status(int64_t rc) {
    return rc <= 0 && rc >= LL_ERR_CACHE;
}

/* splitmix64: deterministic per input, so every crash reproduces. */
static inline uint64_t ll_fuzz_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t ll_fuzz_hash(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static inline uint64_t ll_fuzz_below(uint64_t *s, uint64_t n) { /* [0, n) ; 0 if n == 0 */
    return n ? ll_fuzz_next(s) % n : 0;
}

static inline uint16_t ll_fuzz_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ll_fuzz_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif
