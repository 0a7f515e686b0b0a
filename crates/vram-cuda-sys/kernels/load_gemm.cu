// load_gemm.cu: a plain tiled FP32 GEMM (C = A * B, n x n, n a multiple of 64), used only by the
// GPU-sharing benchmark as a stand-in for an inference engine's kernels: compute-bound, a full
// grid of short blocks. Not part of the library's digest path.

#include <stdint.h>

#define TILE 64
#define KT 16

// 256 threads per block; each computes a 4 x 4 patch of a 64 x 64 tile of C.
extern "C" __global__ void __launch_bounds__(256) sgemm_tiled(
    const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c, uint32_t n) {
    __shared__ float as[KT][TILE];
    __shared__ float bs[KT][TILE];
    uint32_t tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    uint32_t row0 = blockIdx.y * TILE, col0 = blockIdx.x * TILE;
    float acc[4][4] = {};
    for (uint32_t k0 = 0; k0 < n; k0 += KT) {
        // Each thread loads 4 elements of the A tile (64 x 16) and 4 of the B tile (16 x 64).
        for (uint32_t e = threadIdx.x; e < TILE * KT; e += 256) {
            uint32_t r = e / KT, k = e % KT;
            as[k][r] = a[(uint64_t)(row0 + r) * n + k0 + k];
            uint32_t kb = e / TILE, cb = e % TILE;
            bs[kb][cb] = b[(uint64_t)(k0 + kb) * n + col0 + cb];
        }
        __syncthreads();
#pragma unroll
        for (uint32_t k = 0; k < KT; k++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { av[i] = as[k][ty * 4 + i]; bv[i] = bs[k][tx * 4 + i]; }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) c[(uint64_t)(row0 + ty * 4 + i) * n + col0 + tx * 4 + j] = acc[i][j];
}
