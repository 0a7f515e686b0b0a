// digest_latency.cpp: where the fixed cost of a small BLAKE3 digest in VRAM goes. It issues the
// digest engine's driver calls (scratch from the stream-ordered pool, the committed PTX's kernels,
// the 32-byte root copy, the wait, the release, the pool trim) in the engine's order, then with
// one step left out, moved or replaced, and times each variant on the host (mean of 2,000 after
// warm-up; kernels alone with CUDA events). `docs/perf.md` records what it found.
//
//   nvcc -O2 -std=c++20 -o digest_latency digest_latency.cpp -lcuda
//   ./digest_latency crates/vram-cuda-sys/kernels/blake3_tree.ptx
#include <cuda.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char* s; cuGetErrorName(r_, &s); fprintf(stderr, "%s:%d %s -> %s\n", __FILE__, __LINE__, #x, s); exit(1);} } while (0)
using clk = std::chrono::steady_clock;
static CUstream st; static CUmodule mod; static CUfunction f_chunks, f_fold, f_groups; static CUmemoryPool pool; static CUdevice dev;
static int sms;
static unsigned block_size(unsigned long long leaves) { unsigned long long sch = (unsigned long long)sms * 4; if (leaves >= sch * 32) return 128; unsigned long long b = (leaves + sch - 1) / sch; if (b < 1) b = 1; if (b > 32) b = 32; return (unsigned)b; }
static void launch(CUfunction f, unsigned grid, unsigned block, std::vector<void*> args) { CK(cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, st, args.data(), nullptr)); }
static void trim() { CUmemoryPool p; CK(cuDeviceGetDefaultMemPool(&p, dev)); unsigned long long keep = 2 << 20; CK(cuMemPoolSetAttribute(p, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep)); CK(cuMemPoolTrimTo(p, 2 << 20)); }
struct Opt { bool groups = true, alloc = true, trim = true, pinned = false, copy = true, kernels = true, free_first = false; };
static unsigned char* pinned_buf;
static CUdeviceptr prealloc;
static void digest(CUdeviceptr data, unsigned long long total, Opt o) {
  unsigned long long chunks = total == 0 ? 1 : (total + 1023) / 1024;
  unsigned long long n; CUdeviceptr a, b, scratch;
  unsigned long long bytes;
  unsigned long long blk = 1; if (o.groups) { while (blk < chunks && blk < 128) blk <<= 1; n = (chunks + blk - 1) / blk; } else n = chunks;
  bytes = (n + (n + 255) / 256) * 32;
  if (o.alloc) CK(cuMemAllocAsync(&scratch, bytes, st)); else scratch = prealloc;
  a = scratch; b = scratch + n * 32;
  if (o.kernels) {
    if (o.groups) { launch(f_groups, (unsigned)n, (unsigned)blk, {&data, &total, &chunks, &a}); }
    else { unsigned bs = block_size(chunks); unsigned long long first = 0, per = 1; launch(f_chunks, (unsigned)((chunks + bs - 1) / bs), bs, {&data, &total, &first, &chunks, &per, &a}); }
    while (n > 1) { unsigned long long out = (n + 255) / 256; launch(f_fold, (unsigned)out, 128, {&a, &b, &n}); std::swap(a, b); n = out; }
  }
  unsigned char host[32];
  if (o.copy) CK(cuMemcpyDtoHAsync(o.pinned ? pinned_buf : host, a, 32, st));
  if (o.alloc && o.free_first) CK(cuMemFreeAsync(scratch, st));
  CK(cuStreamSynchronize(st));
  if (o.alloc && !o.free_first) CK(cuMemFreeAsync(scratch, st));
  if (o.trim) trim();
}
static double time_us(int iters, auto f) { for (int i = 0; i < 50; i++) f(); auto s = clk::now(); for (int i = 0; i < iters; i++) f(); return std::chrono::duration<double, std::micro>(clk::now() - s).count() / iters; }
int main(int argc, char** argv) {
  CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CUcontext ctx; CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
  CK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  unsigned flags; int active; CK(cuDevicePrimaryCtxGetState(dev, &flags, &active)); printf("ctx flags %u, SMs %d\n", flags, sms);
  FILE* fp = fopen(argv[1], "rb"); std::string ptx; char buf[65536]; size_t k; while ((k = fread(buf, 1, sizeof buf, fp)) > 0) ptx.append(buf, k); fclose(fp);
  CK(cuModuleLoadData(&mod, ptx.c_str()));
  CK(cuModuleGetFunction(&f_chunks, mod, "blake3_chunks")); CK(cuModuleGetFunction(&f_fold, mod, "blake3_fold"));
  bool have_groups = cuModuleGetFunction(&f_groups, mod, "blake3_chunk_groups") == CUDA_SUCCESS;
  int lo, hi; CK(cuCtxGetStreamPriorityRange(&lo, &hi)); CK(cuStreamCreateWithPriority(&st, CU_STREAM_NON_BLOCKING, lo));
  CK(cuMemHostAlloc((void**)&pinned_buf, 4096, 0)); CK(cuMemAlloc(&prealloc, 1 << 20));
  int iters = 2000;
  for (unsigned long long size : {1ull, 1ull << 20, 16ull << 20, 256ull << 20}) {
    CUdeviceptr d; CK(cuMemAlloc(&d, size)); CK(cuMemsetD8(d, 0x5a, size)); CK(cuCtxSynchronize());
    int it = size >= (16ull << 20) ? 200 : iters;
    printf("== %llu bytes\n", size);
    Opt full_old; full_old.groups = false;
    printf("per-chunk kernel + folds, alloc, pageable copy, wait, free, trim: %.1f us\n", time_us(it, [&] { digest(d, size, full_old); }));
    if (have_groups) {
      Opt g; printf("chunk-group kernel + folds, the same steps: %.1f us\n", time_us(it, [&] { digest(d, size, g); }));
      Opt gf = g; gf.free_first = true; printf("  scratch freed before the wait (the engine before 2026-12-06): %.1f us\n", time_us(it, [&] { digest(d, size, gf); }));
      Opt g2 = g; g2.trim = false; printf("  without the pool trim:                                       %.1f us\n", time_us(it, [&] { digest(d, size, g2); }));
      Opt g3 = g2; g3.pinned = true; printf("  without trim, pinned copy:                                   %.1f us\n", time_us(it, [&] { digest(d, size, g3); }));
      if (size <= (16ull << 20)) { Opt g4 = g3; g4.alloc = false; printf("  without trim, pinned, no scratch allocation:                 %.1f us\n", time_us(it, [&] { digest(d, size, g4); })); }
      Opt g5 = g; g5.pinned = true; printf("  pinned copy (trim kept):                                     %.1f us\n", time_us(it, [&] { digest(d, size, g5); }));
      // GPU time of the kernels alone (events around them).
      CUevent e0, e1; CK(cuEventCreate(&e0, 0)); CK(cuEventCreate(&e1, 0)); float ms = 0, best = 1e9;
      Opt gk = g3; gk.alloc = size <= (16ull << 20) ? false : true; gk.copy = false;
      for (int i = 0; i < 50; i++) { CK(cuEventRecord(e0, st)); digest(d, size, gk); CK(cuEventRecord(e1, st)); CK(cuEventSynchronize(e1)); CK(cuEventElapsedTime(&ms, e0, e1)); if (ms < best) best = ms; }
      printf("  kernels' GPU time (events, best of 50, groups):              %.1f us\n", best * 1000);
      Opt ok = full_old; ok.trim = false; ok.pinned = true; ok.copy = false; best = 1e9;
      for (int i = 0; i < 50; i++) { CK(cuEventRecord(e0, st)); digest(d, size, ok); CK(cuEventRecord(e1, st)); CK(cuEventSynchronize(e1)); CK(cuEventElapsedTime(&ms, e0, e1)); if (ms < best) best = ms; }
      printf("  kernels' GPU time (events, best of 50, chunks+fold):         %.1f us\n", best * 1000);
    }
    CK(cuMemFree(d));
  }
  Opt none; none.kernels = false; none.alloc = false; none.trim = false; none.copy = false;
  printf("cuStreamSynchronize of an idle stream: %.2f us\n", time_us(iters, [&] { digest(0, 1, none); }));
  Opt cp = none; cp.copy = true; printf("32-byte pageable copy + sync: %.2f us\n", time_us(iters, [&] { unsigned long long z = 0; (void)z; digest(prealloc, 1, cp); }));
  cp.pinned = true; printf("32-byte pinned copy + sync: %.2f us\n", time_us(iters, [&] { digest(prealloc, 1, cp); }));
  printf("pool trim alone: %.2f us\n", time_us(iters, [&] { trim(); }));
  printf("cuMemAllocAsync+cuMemFreeAsync 64 B + sync: %.2f us\n", time_us(iters, [&] { CUdeviceptr p; CK(cuMemAllocAsync(&p, 64, st)); CK(cuMemFreeAsync(p, st)); CK(cuStreamSynchronize(st)); }));
  return 0;
}
