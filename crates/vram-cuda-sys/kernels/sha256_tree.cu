// sha256_tree.cu: the leaf and fold kernels of the `sha256-tree-L` digest (.specs/digest.md),
// run over bytes already resident in VRAM. Compiled to PTX by `cargo xtask ptx` (needs nvcc);
// the PTX is committed next to this file and loaded by the driver at run time.
//
// Digests and chaining states are kept as 8 native 32-bit words per leaf (SHA-256's state
// words); the host turns the root's words into big-endian bytes.

#include <stdint.h>

#include "range_table.cuh"

__constant__ uint32_t K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

#define IV0 0x6a09e667u
#define IV1 0xbb67ae85u
#define IV2 0x3c6ef372u
#define IV3 0xa54ff53au
#define IV4 0x510e527fu
#define IV5 0x9b05688cu
#define IV6 0x1f83d9abu
#define IV7 0x5be0cd19u

__device__ __forceinline__ uint32_t rotr(uint32_t x, uint32_t n) { return __funnelshift_r(x, x, n); }
__device__ __forceinline__ uint32_t be32(uint32_t x) { return __byte_perm(x, 0, 0x0123); }

// One SHA-256 compression of the 16 big-endian message words `w` into `s`.
__device__ __forceinline__ void compress(uint32_t s[8], uint32_t w[16]) {
    uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
#pragma unroll
    for (int i = 0; i < 64; i++) {
        uint32_t wi;
        if (i < 16) {
            wi = w[i];
        } else {
            uint32_t w15 = w[(i - 15) & 15], w2 = w[(i - 2) & 15];
            uint32_t s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
            uint32_t s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
            wi = w[i & 15] = w[i & 15] + s0 + w[(i - 7) & 15] + s1;
        }
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + wi;
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
}

__device__ __forceinline__ void load_block(const uint8_t* p, uint4 v[4]) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    v[0] = __ldg(q); v[1] = __ldg(q + 1); v[2] = __ldg(q + 2); v[3] = __ldg(q + 3);
}

__device__ __forceinline__ void words_of(const uint4 v[4], uint32_t w[16]) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        w[4 * k] = be32(v[k].x); w[4 * k + 1] = be32(v[k].y);
        w[4 * k + 2] = be32(v[k].z); w[4 * k + 3] = be32(v[k].w);
    }
}

// Hashes bytes [slice_begin, slice_begin + slice_len) of leaf `leaf` of the `total_len` bytes at
// `data` into `out` (8 words): the chaining state between slices, the leaf digest once the leaf
// ends. A slice that starts at 0 starts from the IV; a leaf that ends inside the slice is padded
// and finished. `slice_begin` and `slice_len` are multiples of 64; `leaf_size` is a power of two
// >= 4096, so every leaf but the last is whole.
__device__ __forceinline__ void hash_leaf(const uint8_t* __restrict__ data, uint64_t total_len,
                                          uint64_t leaf_size, uint64_t leaf, uint64_t slice_begin,
                                          uint64_t slice_len, uint32_t* __restrict__ out) {
    uint64_t start = leaf * leaf_size;
    uint64_t leaf_len = total_len > start ? min(leaf_size, total_len - start) : 0;
    if (slice_begin > 0 && slice_begin >= leaf_len) return;  // finished by an earlier slice
    uint64_t end = min(slice_begin + slice_len, leaf_len);
    bool finishes = end == leaf_len;
    uint64_t full_end = finishes ? (leaf_len & ~(uint64_t)63) : end;

    uint32_t s[8];
    if (slice_begin == 0) {
        s[0] = IV0; s[1] = IV1; s[2] = IV2; s[3] = IV3; s[4] = IV4; s[5] = IV5; s[6] = IV6; s[7] = IV7;
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) s[k] = out[k];
    }

    const uint8_t* p = data + start;
    uint64_t off = slice_begin;
    if (off < full_end) {
        // Software pipeline: the next block's loads are in flight while this one compresses.
        uint4 cur[4], next[4];
        load_block(p + off, cur);
        for (; off < full_end; off += 64) {
            if (off + 64 < full_end) load_block(p + off + 64, next);
            uint32_t w[16];
            words_of(cur, w);
            compress(s, w);
#pragma unroll
            for (int k = 0; k < 4; k++) cur[k] = next[k];
        }
    }
    if (finishes) {
        uint32_t tail = (uint32_t)(leaf_len - full_end);  // 0..63 bytes left
        uint32_t w[16];
#pragma unroll
        for (int k = 0; k < 16; k++) w[k] = 0;
        for (uint32_t k = 0; k < tail; k++) w[k >> 2] |= (uint32_t)p[full_end + k] << (24 - 8 * (k & 3));
        w[tail >> 2] |= 0x80u << (24 - 8 * (tail & 3));
        uint64_t bits = leaf_len * 8;
        if (tail >= 56) {
            compress(s, w);
#pragma unroll
            for (int k = 0; k < 16; k++) w[k] = 0;
        }
        w[14] = (uint32_t)(bits >> 32);
        w[15] = (uint32_t)bits;
        compress(s, w);
    }
#pragma unroll
    for (int k = 0; k < 8; k++) out[k] = s[k];
}

// Bytes [slice_begin, slice_begin + slice_len) of each leaf in [first_leaf, first_leaf +
// leaf_count) of one range, one thread per leaf. `state` holds 8 words per leaf (absolute leaf
// index). Full-leaf mode is slice_begin 0, slice_len leaf_size: no state is read, only the digest
// written.
extern "C" __global__ void __launch_bounds__(128) sha256_leaves(
    const uint8_t* __restrict__ data, uint64_t total_len, uint64_t leaf_size, uint64_t first_leaf,
    uint64_t leaf_count, uint64_t slice_begin, uint64_t slice_len, uint32_t* __restrict__ state) {
    uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= leaf_count) return;
    uint64_t leaf = first_leaf + t;
    hash_leaf(data, total_len, leaf_size, leaf, slice_begin, slice_len, state + leaf * 8);
}

// The leaves of many ranges (a model's tensors) in one launch: range r is lens[r] bytes at
// ptrs[r], and its leaves are the global leaves [offs[r], offs[r + 1]). Global leaves
// [first_leaf, first_leaf + leaf_count), one thread each; slices as in `sha256_leaves`.
extern "C" __global__ void __launch_bounds__(128) sha256_range_leaves(
    const uint64_t* __restrict__ ptrs, const uint64_t* __restrict__ lens,
    const uint64_t* __restrict__ offs, uint64_t ranges, uint64_t leaf_size, uint64_t first_leaf,
    uint64_t leaf_count, uint64_t slice_begin, uint64_t slice_len, uint32_t* __restrict__ state) {
    uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= leaf_count) return;
    uint64_t g = first_leaf + t;
    uint64_t r = range_of(offs, ranges, g);
    hash_leaf(reinterpret_cast<const uint8_t*>(ptrs[r]), lens[r], leaf_size, g - offs[r],
              slice_begin, slice_len, state + g * 8);
}

// Node i of the next level over the `n_in` nodes at `level`: SHA-256(0x01 || level[2i] ||
// level[2i+1]); an odd last node moves up unchanged. Nodes are 8 state words each.
__device__ __forceinline__ void fold_node(const uint32_t* __restrict__ level, uint64_t n_in,
                                          uint64_t i, uint32_t* __restrict__ o) {
    const uint32_t* l = level + 16 * i;
    if (2 * i + 1 == n_in) {
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = l[k];
        return;
    }
    const uint32_t* r = l + 8;
    uint32_t L[8], R[8];
#pragma unroll
    for (int k = 0; k < 8; k++) { L[k] = l[k]; R[k] = r[k]; }
    // The 65-byte message 0x01 || L || R is the 1-byte prefix followed by the digests' bytes,
    // so each message word straddles two digest words.
    uint32_t w[16];
    w[0] = 0x01000000u | (L[0] >> 8);
#pragma unroll
    for (int k = 1; k < 8; k++) w[k] = (L[k - 1] << 24) | (L[k] >> 8);
    w[8] = (L[7] << 24) | (R[0] >> 8);
#pragma unroll
    for (int k = 9; k < 16; k++) w[k] = (R[k - 9] << 24) | (R[k - 8] >> 8);
    uint32_t s[8] = {IV0, IV1, IV2, IV3, IV4, IV5, IV6, IV7};
    compress(s, w);
    // Second block: the last byte of R, the 0x80 pad, zeros, and the length (65 bytes = 520 bits).
    w[0] = (R[7] << 24) | 0x00800000u;
#pragma unroll
    for (int k = 1; k < 15; k++) w[k] = 0;
    w[15] = 520;
    compress(s, w);
#pragma unroll
    for (int k = 0; k < 8; k++) o[k] = s[k];
}

// One level of one tree: out[i] = node i of the level above `in`'s n_in nodes.
extern "C" __global__ void __launch_bounds__(128) sha256_fold_level(
    const uint32_t* __restrict__ in, uint32_t* __restrict__ out, uint64_t n_in) {
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (n_in + 1) / 2) return;
    fold_node(in, n_in, i, out + 8 * i);
}

// One level of many trees at once: range r's nodes are in[in_offs[r] .. in_offs[r + 1]) and its
// next level goes to out[out_offs[r] .. out_offs[r + 1]) (half as many, rounded up; a range
// already at its root moves it up unchanged). One thread per output node, `n_out` in all.
extern "C" __global__ void __launch_bounds__(128) sha256_range_fold_level(
    const uint32_t* __restrict__ in, uint32_t* __restrict__ out,
    const uint64_t* __restrict__ in_offs, const uint64_t* __restrict__ out_offs, uint64_t ranges,
    uint64_t n_out) {
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_out) return;
    uint64_t r = range_of(out_offs, ranges, i);
    fold_node(in + 8 * in_offs[r], in_offs[r + 1] - in_offs[r], i - out_offs[r], out + 8 * i);
}
