// range_table.cuh: the range table both digest kernels share. A launch over many ranges (a
// model's tensors) numbers their units (SHA-256 leaves, BLAKE3 chunks, fold nodes) globally:
// range r's units are [offs[r], offs[r + 1]), and each thread finds its range by binary search.
// Included by sha256_tree.cu and blake3_tree.cu (and, through them, by the CPU emulation in
// cpu/); `cargo xtask ptx` stamps each PTX with the SHA-256 of its .cu and this header.
#pragma once

#include <stdint.h>

// The range holding entry `g` of a segmented list: the last r < ranges with offs[r] <= g
// (`offs` has ranges + 1 ascending entries, offs[0] = 0, g < offs[ranges]).
__device__ __forceinline__ uint64_t range_of(const uint64_t* __restrict__ offs, uint64_t ranges,
                                             uint64_t g) {
    uint64_t lo = 0, hi = ranges;  // offs[lo] <= g < offs[hi]
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (offs[mid] <= g) lo = mid; else hi = mid;
    }
    return lo;
}
