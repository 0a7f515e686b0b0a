// cuda_on_cpu.h: just enough of CUDA C++ to run this directory's kernels on the CPU, so that a
// machine without a GPU (CI) checks the kernels' source bit for bit against reference
// implementations (`tests/kernel_source.rs`). A launch runs its blocks one after another, each
// block's threads as real threads meeting at a real barrier for __syncthreads(), so the shared-
// memory folds run as they do on a GPU. Not a model of timing or of memory ordering beyond that.
#pragma once
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 { unsigned x = 0, y = 1, z = 1; };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
std::barrier<>* block_barrier;

#define __syncthreads() block_barrier->arrive_and_wait()
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
#define __restrict__
// One block at a time: a function-local static is the block's shared memory.
#define __shared__ static
#define __constant__

struct uint4 { uint32_t x, y, z, w; };
inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t n) {
    n &= 31;
    return n ? (lo >> n) | (hi << (32 - n)) : lo;
}
inline uint4 __ldg(const uint4* p) { return *p; }
template <class A, class B> auto min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return std::min<C>(a, b);
}

// kernel<<<grid, block>>>(args...) as launch(grid, block, [&] { kernel(args...); }).
template <class F> void launch(unsigned grid, unsigned block, F kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; b++) {
        std::barrier<> barrier(block);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; t++)
            threads.emplace_back([=] { threadIdx.x = t; blockIdx.x = b; kernel(); });
        for (auto& t : threads) t.join();
    }
}
