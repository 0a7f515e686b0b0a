// blake3_tree.cu: the standard BLAKE3 hash (unkeyed, 32-byte output) of bytes already resident
// in VRAM. A chunk kernel compresses every 1 KiB chunk into its chaining value (one thread per
// chunk; on the whole GPU each block folds its 128 chunks to their parent at once), and a fold
// kernel reduces up to 256 nodes into their parent in shared memory per launch, so a 16 GiB
// shard takes one chunk launch and two fold launches. Compiled to PTX by
// `cargo xtask ptx`; the PTX is committed next to this file and loaded by the driver at run time.
//
// BLAKE3's tree is left-complete, which is the same tree as pairing adjacent nodes level by level
// with an odd last node moving up unchanged; folding an aligned group of 2^8 nodes locally gives
// exactly the nodes the global pairing gives eight levels up. Chaining values are 8 native
// (little-endian) 32-bit words, which are also the digest's bytes.

#include <stdint.h>

#include "range_table.cuh"

#define IV0 0x6a09e667u
#define IV1 0xbb67ae85u
#define IV2 0x3c6ef372u
#define IV3 0xa54ff53au
#define IV4 0x510e527fu
#define IV5 0x9b05688cu
#define IV6 0x1f83d9abu
#define IV7 0x5be0cd19u

#define CHUNK_START 1u
#define CHUNK_END 2u
#define PARENT 4u
#define ROOT 8u

#define CHUNK_BYTES 1024ull
// Nodes one fold launch reduces to one (2^FOLD_LEVELS), by FOLD_THREADS threads.
#define FOLD_LEVELS 8
#define FOLD_FAN_IN 256
#define FOLD_THREADS 128

__device__ __forceinline__ uint32_t rotr(uint32_t x, uint32_t n) { return __funnelshift_r(x, x, n); }

// The compression is bound by the integer ALU pipe (XOR, funnel shift, three-input add); the
// multiply-add pipe sits mostly idle. Adding `y * B3_ONE` puts G's message additions on the
// multiply-add pipe (IMAD): the compiler cannot fold a multiplier read from constant memory, as
// it would a literal 1. On an H100 the chunk kernel went from 1.56 to 1.93 TB/s (`docs/perf.md`).
// Macros, so that a profiling build can try other instructions for them.
__constant__ uint32_t B3_ONE = 1;
#ifndef B3_ADD
#define B3_ADD(x, y) ((x) + (y))
#endif
#ifndef B3_ADD3
#define B3_ADD3(x, y, z) (((y) * B3_ONE + (x)) + (z))
#endif

#define G(a, b, c, d, x, y)              \
    v[a] = B3_ADD3(v[a], v[b], (x));     \
    v[d] = rotr(v[d] ^ v[a], 16);        \
    v[c] = B3_ADD(v[c], v[d]);           \
    v[b] = rotr(v[b] ^ v[c], 12);        \
    v[a] = B3_ADD3(v[a], v[b], (y));     \
    v[d] = rotr(v[d] ^ v[a], 8);         \
    v[c] = B3_ADD(v[c], v[d]);           \
    v[b] = rotr(v[b] ^ v[c], 7);

// One BLAKE3 compression of the 16 little-endian message words `m` into the chaining value
// `cv` (the first 8 words of the output, which is all a chunk or parent needs). `m` is permuted
// in place; fully unrolled, the permutation is only register renaming.
__device__ __forceinline__ void compress(uint32_t cv[8], uint32_t m[16], uint64_t counter,
                                         uint32_t block_len, uint32_t flags) {
    uint32_t v[16] = {cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
                      IV0,   IV1,   IV2,   IV3,   (uint32_t)counter, (uint32_t)(counter >> 32),
                      block_len, flags};
#pragma unroll
    for (int r = 0; r < 7; r++) {
        G(0, 4, 8, 12, m[0], m[1]);
        G(1, 5, 9, 13, m[2], m[3]);
        G(2, 6, 10, 14, m[4], m[5]);
        G(3, 7, 11, 15, m[6], m[7]);
        G(0, 5, 10, 15, m[8], m[9]);
        G(1, 6, 11, 12, m[10], m[11]);
        G(2, 7, 8, 13, m[12], m[13]);
        G(3, 4, 9, 14, m[14], m[15]);
        if (r < 6) {
            const int P[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};
            uint32_t t[16];
#pragma unroll
            for (int i = 0; i < 16; i++) t[i] = m[P[i]];
#pragma unroll
            for (int i = 0; i < 16; i++) m[i] = t[i];
        }
    }
#pragma unroll
    for (int i = 0; i < 8; i++) cv[i] = v[i] ^ v[i + 8];
}

__device__ __forceinline__ void load_block(const uint8_t* p, uint4 q[4]) {
    const uint4* s = reinterpret_cast<const uint4*>(p);
    q[0] = __ldg(s); q[1] = __ldg(s + 1); q[2] = __ldg(s + 2); q[3] = __ldg(s + 3);
}

__device__ __forceinline__ void words_of(const uint4 q[4], uint32_t m[16]) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        m[4 * k] = q[k].x; m[4 * k + 1] = q[k].y; m[4 * k + 2] = q[k].z; m[4 * k + 3] = q[k].w;
    }
}

// The chaining value of chunk `chunk` of the `total_len` bytes at `data` into `out` (8 words).
// A range of one chunk (1024 bytes or fewer, none included) is its own root: its last block
// carries ROOT and `out` is the digest.
__device__ __forceinline__ void hash_chunk(const uint8_t* __restrict__ data, uint64_t total_len,
                                           uint64_t chunk, uint32_t* __restrict__ out) {
    uint64_t start = chunk * CHUNK_BYTES;
    uint64_t len = total_len > start ? min((uint64_t)CHUNK_BYTES, total_len - start) : 0;
    uint32_t root = total_len <= CHUNK_BYTES ? ROOT : 0u;
    // Whole 64-byte blocks before the last block (the last is hashed apart: it carries
    // CHUNK_END and may be short).
    uint32_t full = len == 0 ? 0u : (uint32_t)((len - 1) / 64);
    uint32_t tail = (uint32_t)(len - 64ull * full);  // 1..64 bytes in the last block, 0 if none
    bool last_whole = tail == 64;
    uint32_t cv[8] = {IV0, IV1, IV2, IV3, IV4, IV5, IV6, IV7};
    const uint8_t* p = data + start;
    // Software pipeline: the next block's loads are in flight while this one compresses. A
    // short last block is never loaded whole: its range may end at the end of an allocation.
    uint4 cur[4] = {};
    if (full > 0 || last_whole) load_block(p, cur);
    for (uint32_t b = 0; b < full; b++) {
        uint4 next[4] = {};
        if (b + 1 < full || last_whole) load_block(p + 64ull * (b + 1), next);
        uint32_t m[16];
        words_of(cur, m);
        compress(cv, m, chunk, 64, b == 0 ? CHUNK_START : 0u);
#pragma unroll
        for (int k = 0; k < 4; k++) cur[k] = next[k];
    }
    uint32_t m[16];
    if (last_whole) {
        words_of(cur, m);
    } else {
        // Byte by byte, unrolled so that `m` stays in registers.
        const uint8_t* t = p + 64ull * full;
#pragma unroll
        for (uint32_t w = 0; w < 16; w++) {
            uint32_t x = 0;
#pragma unroll
            for (uint32_t b = 0; b < 4; b++) {
                if (4 * w + b < tail) x |= (uint32_t)t[4 * w + b] << (8 * b);
            }
            m[w] = x;
        }
    }
    compress(cv, m, chunk, tail, (full == 0 ? CHUNK_START : 0u) | CHUNK_END | root);
#pragma unroll
    for (int k = 0; k < 8; k++) out[k] = cv[k];
}

// Chunks [first_chunk, first_chunk + chunk_count) of one range, each thread `per_thread` of them
// a grid apart. `cvs` holds 8 words per chunk (absolute chunk index).
extern "C" __global__ void __launch_bounds__(128) blake3_chunks(
    const uint8_t* __restrict__ data, uint64_t total_len, uint64_t first_chunk,
    uint64_t chunk_count, uint64_t per_thread, uint32_t* __restrict__ cvs) {
    uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t k = 0; k < per_thread; k++) {
        uint64_t i = t + k * stride;
        if (i >= chunk_count) return;
        uint64_t chunk = first_chunk + i;
        hash_chunk(data, total_len, chunk, cvs + chunk * 8);
    }
}

// The chunks of many ranges (a model's tensors) in one launch: range r is lens[r] bytes at
// ptrs[r], and its chunks are the global chunks [offs[r], offs[r + 1]). Global chunks
// [first_chunk, first_chunk + chunk_count), as in `blake3_chunks`.
extern "C" __global__ void __launch_bounds__(128) blake3_range_chunks(
    const uint64_t* __restrict__ ptrs, const uint64_t* __restrict__ lens,
    const uint64_t* __restrict__ offs, uint64_t ranges, uint64_t first_chunk,
    uint64_t chunk_count, uint64_t per_thread, uint32_t* __restrict__ cvs) {
    uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t k = 0; k < per_thread; k++) {
        uint64_t i = t + k * stride;
        if (i >= chunk_count) return;
        uint64_t g = first_chunk + i;
        uint64_t r = range_of(offs, ranges, g);
        hash_chunk(reinterpret_cast<const uint8_t*>(ptrs[r]), lens[r], g - offs[r], cvs + g * 8);
    }
}

// Folds the `m` nodes in shared memory `nodes` (8 words each; m <= 2 * blockDim.x) to one, at
// nodes[0..8]: pairwise, level by level, an odd last node moving up unchanged; `n` is the tree's
// node count at the first of these levels, so the compression that makes the tree's single root
// (the level of two nodes) carries ROOT. Called by every thread of the block.
__device__ __forceinline__ void reduce_shared(uint32_t* nodes, uint32_t m, uint64_t n) {
    while (m > 1) {
        // m <= 2 * blockDim.x nodes make at most blockDim.x pairs: one per thread, so every
        // barrier is reached by the whole block.
        uint32_t pairs = m / 2;
        bool mine = threadIdx.x < pairs;
        uint32_t cv[8] = {IV0, IV1, IV2, IV3, IV4, IV5, IV6, IV7};
        if (mine) {
            uint32_t w[16];
#pragma unroll
            for (int k = 0; k < 16; k++) w[k] = nodes[16 * threadIdx.x + k];
            compress(cv, w, 0, 64, PARENT | (n == 2 ? ROOT : 0u));
        }
        __syncthreads();  // every pair read before any parent is written over them
        if (mine) {
#pragma unroll
            for (int k = 0; k < 8; k++) nodes[8 * threadIdx.x + k] = cv[k];
        }
        // An odd last node moves up unchanged, to right after the parents (it lies past them).
        if (m & 1) {
            for (uint32_t k = threadIdx.x; k < 8; k += blockDim.x) nodes[8 * pairs + k] = nodes[8 * (m - 1) + k];
        }
        __syncthreads();
        m = (m + 1) / 2;
        n = (n + 1) / 2;
    }
}

// Node `group` of the level FOLD_LEVELS above the `n_in` nodes of one tree at `level`: the
// group's (up to) 256 nodes folded in shared memory (`reduce_shared`). Called by every thread
// of a FOLD_THREADS block.
__device__ __forceinline__ void fold_group(const uint32_t* __restrict__ level, uint64_t n_in,
                                           uint64_t group, uint32_t* __restrict__ out) {
    __shared__ uint32_t nodes[FOLD_FAN_IN * 8];
    uint64_t first = group * FOLD_FAN_IN;
    uint32_t m = (uint32_t)min((uint64_t)FOLD_FAN_IN, n_in - first);
    for (uint32_t i = threadIdx.x; i < m * 8; i += blockDim.x) nodes[i] = level[first * 8 + i];
    __syncthreads();
    reduce_shared(nodes, m, n_in);
    for (uint32_t k = threadIdx.x; k < 8; k += blockDim.x) out[k] = nodes[k];
}

// The whole-GPU form of `blake3_chunks`: one thread per chunk of one range, and each block (a
// power of two of threads) folds its chunks' chaining values to their parent in shared memory,
// so only one node per block (`nodes[blockIdx.x]`, the level log2(blockDim.x) up) is written and
// no per-chunk scratch exists. A range of at most blockDim.x chunks comes out as its root.
extern "C" __global__ void __launch_bounds__(128) blake3_chunk_groups(
    const uint8_t* __restrict__ data, uint64_t total_len, uint64_t chunk_count,
    uint32_t* __restrict__ nodes) {
    __shared__ uint32_t cvs[128 * 8];
    uint64_t first = (uint64_t)blockIdx.x * blockDim.x;
    uint32_t m = (uint32_t)min((uint64_t)blockDim.x, chunk_count - first);
    if (threadIdx.x < m) hash_chunk(data, total_len, first + threadIdx.x, cvs + 8 * threadIdx.x);
    __syncthreads();
    reduce_shared(cvs, m, chunk_count);
    for (uint32_t k = threadIdx.x; k < 8; k += blockDim.x) nodes[8 * (uint64_t)blockIdx.x + k] = cvs[k];
}

// The range-table form of `blake3_chunk_groups` (a model's tensors in one launch): block i
// hashes group i - goffs[r] of range r (lens[r] bytes at ptrs[r]; its groups of blockDim.x
// chunks are the global groups [goffs[r], goffs[r + 1])) and folds those chunks in shared
// memory to their parent, nodes[i]. A range of at most blockDim.x chunks comes out as its root.
// The per-chunk form (`blake3_range_chunks`) writes every chunk's chaining value to global
// memory and reads it back to fold; this writes one node per group.
extern "C" __global__ void __launch_bounds__(128) blake3_range_chunk_groups(
    const uint64_t* __restrict__ ptrs, const uint64_t* __restrict__ lens,
    const uint64_t* __restrict__ goffs, uint64_t ranges, uint64_t groups,
    uint32_t* __restrict__ nodes) {
    __shared__ uint32_t cvs[128 * 8];
    uint64_t i = blockIdx.x;
    if (i >= groups) return;  // the whole block, before any barrier
    uint64_t r = range_of(goffs, ranges, i);
    uint64_t len = lens[r];
    uint64_t chunks = len <= CHUNK_BYTES ? 1 : (len + CHUNK_BYTES - 1) / CHUNK_BYTES;
    uint64_t first = (i - goffs[r]) * blockDim.x;
    uint32_t m = (uint32_t)min((uint64_t)blockDim.x, chunks - first);
    if (threadIdx.x < m) {
        hash_chunk(reinterpret_cast<const uint8_t*>(ptrs[r]), len, first + threadIdx.x,
                   cvs + 8 * threadIdx.x);
    }
    __syncthreads();
    reduce_shared(cvs, m, chunks);
    for (uint32_t k = threadIdx.x; k < 8; k += blockDim.x) nodes[8 * i + k] = cvs[k];
}

// One fold launch of one tree: out[g] = node g of the level FOLD_LEVELS above `in`'s n_in
// nodes, one block of FOLD_THREADS threads per output node.
extern "C" __global__ void __launch_bounds__(FOLD_THREADS) blake3_fold(
    const uint32_t* __restrict__ in, uint32_t* __restrict__ out, uint64_t n_in) {
    uint64_t g = blockIdx.x;
    fold_group(in, n_in, g, out + 8 * g);
}

// One fold launch of many trees at once: range r's nodes are in[in_offs[r] .. in_offs[r + 1])
// and its next nodes go to out[out_offs[r] .. out_offs[r + 1]) (a 256th as many, rounded up; a
// range already at its root moves it up unchanged). One block per output node, `n_out` in all.
extern "C" __global__ void __launch_bounds__(FOLD_THREADS) blake3_range_fold(
    const uint32_t* __restrict__ in, uint32_t* __restrict__ out,
    const uint64_t* __restrict__ in_offs, const uint64_t* __restrict__ out_offs, uint64_t ranges,
    uint64_t n_out) {
    uint64_t i = blockIdx.x;
    if (i >= n_out) return;
    uint64_t r = range_of(out_offs, ranges, i);
    fold_group(in + 8 * in_offs[r], in_offs[r + 1] - in_offs[r], i - out_offs[r], out + 8 * i);
}
