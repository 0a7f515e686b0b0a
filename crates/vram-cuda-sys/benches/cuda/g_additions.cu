// g_additions.cu: the BLAKE3 chunk-group kernel timed alone over 4 GiB for each way of writing
// G's additions (V=0: plain `+`, as before 20c7b35; V=3: the committed form; others: variants),
// printing a checksum of every block's node so that variants can be compared. `docs/perf.md`
// records the table. On a GPU machine, from the repository root:
//
//   for v in 0 1 2 3 4 5; do
//     nvcc -O3 -arch=sm_90 -std=c++17 -Icrates/vram-cuda-sys/kernels -DV=$v \
//       -o /tmp/g_$v crates/vram-cuda-sys/benches/cuda/g_additions.cu && /tmp/g_$v
//   done
//
// V=0 redefines B3_ADD3 as the plain sum, so it measures the kernel as it was; V=5 moves only
// the two-input additions.

#include <cstdio>
#include <cstdint>
#include <cstdlib>
// Macros expand where G uses them, after blake3_tree.cu has declared B3_ONE.
#if V == 0
#define B3_ADD3(x, y, z) ((x) + (y) + (z))
#elif V == 1
#define B3_ADD3(x, y, z) ((z) * B3_ONE + ((y) * B3_ONE + (x)))
#elif V == 2
#define B3_ADD3(x, y, z) ((z) * B3_ONE + ((y) * B3_ONE + (x)))
#define B3_ADD(x, y) ((y) * B3_ONE + (x))
#elif V == 3
#define B3_ADD3(x, y, z) (((y) * B3_ONE + (x)) + (z))
#elif V == 4
#define B3_ADD3(x, y, z) (((y) * B3_ONE + (x)) + (z))
#define B3_ADD(x, y) ((y) * B3_ONE + (x))
#elif V == 5
#define B3_ADD3(x, y, z) ((x) + (y) + (z))
#define B3_ADD(x, y) ((y) * B3_ONE + (x))
#endif
#include "blake3_tree.cu"

__global__ void fill(uint8_t* p, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    p[i] = (uint8_t)(i * 131 + 7 + (i >> 20));
}

int main() {
  uint64_t n = 4ull << 30, chunks = n / 1024, groups = chunks / 128;
  uint8_t* d; uint32_t* nodes;
  cudaMalloc(&d, n); cudaMalloc(&nodes, groups * 32);
  fill<<<4096, 256>>>(d, n);
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  float best = 1e9;
  for (int i = 0; i < 12; i++) {
    cudaEventRecord(a);
    blake3_chunk_groups<<<(unsigned)groups, 128>>>(d, n, chunks, nodes);
    cudaEventRecord(b); cudaEventSynchronize(b);
    float ms; cudaEventElapsedTime(&ms, a, b);
    if (i >= 2 && ms < best) best = ms;
  }
  uint32_t* h = (uint32_t*)malloc(groups * 32);
  cudaMemcpy(h, nodes, groups * 32, cudaMemcpyDeviceToHost);
  uint64_t sum = 0;
  for (uint64_t i = 0; i < groups * 8; i++) sum = sum * 1000003 + h[i];
  printf("V%d 4 GiB in %.3f ms = %.0f GB/s  checksum %016llx  %s\n", V, best, n / (best * 1e6),
         (unsigned long long)sum, cudaGetErrorString(cudaGetLastError()));
  return 0;
}
