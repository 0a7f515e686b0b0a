// stall_probe.cpp: which of the background verifier's driver calls stall an engine that runs on
// PyTorch's default (legacy) stream. Loaded by `crates/vram-residency-py/benches/stall_probe.py`
// into the engine's process, it runs one pattern of the digest engine's calls in a loop on a
// native thread (no GIL), in the primary context PyTorch uses, while Python times the engine.
// Each bit of `pattern` adds one kind of call to every "digest" of 256 MiB:
//   1  bounded BLAKE3 launches (8 blocks of 128 threads, 8 chunks a thread, as the scrubber's
//      1/16 share on a 132-SM GPU) on a non-blocking lowest-priority stream, then a wait
//   2  the scratch from the default stream-ordered pool (cuMemAllocAsync / cuMemFreeAsync) and
//      the pool's release threshold set and trimmed after the wait, as the engine did
//   4  a synchronous device-to-host copy (cuMemcpyDtoH: legacy-stream semantics) of 8 KiB, as a
//      small SHA-256 tensor read back without an idle pinned slot
//   8  the 32-byte root copied to pageable host memory on the probe's stream
//   16 cuPointerGetAttributes on the range (the residency check)
//   32 the wait is a blocking-sync event (the thread sleeps) instead of cuStreamSynchronize
//   64 whole-GPU launches (a per-request verification) instead of bounded ones
//   128 the kernels wait for an event recorded on the legacy stream (the order of a scrubber
//      step queued after the engine's work) and the waiting is on that event, not the stream
//
//   nvcc -O2 -std=c++20 -shared -Xcompiler -fPIC -o libstall_probe.so stall_probe.cpp -lcuda
#include <cuda.h>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char* s; cuGetErrorName(r_, &s); fprintf(stderr, "%s:%d %s -> %s\n", __FILE__, __LINE__, #x, s); exit(1);} } while (0)

static CUdevice dev; static CUcontext ctx; static CUmodule mod; static CUfunction f_chunks;
static CUstream st; static CUdeviceptr data, fixed_scratch; static int sms;
static std::atomic<bool> stop_flag{false}; static std::atomic<unsigned long long> digests{0};
static std::thread worker;
static const unsigned long long TOTAL = 256ull << 20, CHUNKS = TOTAL / 1024;

static void launch(unsigned grid, unsigned block, CUdeviceptr state, unsigned long long first,
                   unsigned long long count, unsigned long long per_thread) {
  unsigned long long total = TOTAL;
  void* args[] = {&data, &total, &first, &count, &per_thread, &state};
  CK(cuLaunchKernel(f_chunks, grid, 1, 1, block, 1, 1, 0, st, args, nullptr));
}

static void one_digest(int pattern, CUevent blocking, CUevent engine_done) {
  CUdeviceptr scratch = fixed_scratch;
  if (pattern & 2) CK(cuMemAllocAsync(&scratch, CHUNKS * 32, st));
  if (pattern & 128) { CK(cuEventRecord(engine_done, 0)); CK(cuStreamWaitEvent(st, engine_done, 0)); }
  if (pattern & 16) {
    CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_IS_MANAGED,
                                   CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                   CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    unsigned mt = 0; int managed = 0, ord = 0; CUdeviceptr start = 0; size_t size = 0;
    void* out[] = {&mt, &managed, &ord, &start, &size};
    CK(cuPointerGetAttributes(5, attrs, out, data));
  }
  if (pattern & 64) {
    launch((unsigned)(CHUNKS / 128), 128, scratch, 0, CHUNKS, 1);
  } else if (pattern & 1) {
    unsigned long long per_launch = 8ull * 128 * 8;
    for (unsigned long long first = 0; first < CHUNKS && !stop_flag; first += per_launch)
      launch(8, 128, scratch, first, per_launch, 8);
  }
  static unsigned char host[8192];
  if (pattern & 8) CK(cuMemcpyDtoHAsync(host, scratch, 32, st));
  if (pattern & 32 || pattern & 128) { CK(cuEventRecord(blocking, st)); CK(cuEventSynchronize(blocking)); }
  else CK(cuStreamSynchronize(st));
  if (pattern & 4) CK(cuMemcpyDtoH(host, data, 8192));
  if (pattern & 2) {
    CK(cuMemFreeAsync(scratch, st));
    CUmemoryPool p; CK(cuDeviceGetDefaultMemPool(&p, dev));
    unsigned long long keep = 2 << 20;
    CK(cuMemPoolSetAttribute(p, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep));
    CK(cuMemPoolTrimTo(p, 2 << 20));
  }
}

extern "C" int probe_init(const char* ptx_path) {
  CK(cuInit(0)); CK(cuDeviceGet(&dev, 0)); CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
  CK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  FILE* fp = fopen(ptx_path, "rb"); if (!fp) return 1;
  std::string ptx; char buf[65536]; size_t k; while ((k = fread(buf, 1, sizeof buf, fp)) > 0) ptx.append(buf, k); fclose(fp);
  CK(cuModuleLoadData(&mod, ptx.c_str())); CK(cuModuleGetFunction(&f_chunks, mod, "blake3_chunks"));
  int lo, hi; CK(cuCtxGetStreamPriorityRange(&lo, &hi)); CK(cuStreamCreateWithPriority(&st, CU_STREAM_NON_BLOCKING, lo));
  CK(cuMemAlloc(&data, TOTAL)); CK(cuMemsetD8(data, 0x5a, TOTAL)); CK(cuMemAlloc(&fixed_scratch, CHUNKS * 32));
  CK(cuCtxSynchronize());
  return 0;
}

extern "C" void probe_start(int pattern) {
  stop_flag = false; digests = 0;
  worker = std::thread([pattern] {
    CK(cuCtxSetCurrent(ctx));
    CUevent blocking, engine_done;
    CK(cuEventCreate(&blocking, CU_EVENT_DISABLE_TIMING | ((pattern & (32 | 128)) ? CU_EVENT_BLOCKING_SYNC : 0)));
    CK(cuEventCreate(&engine_done, CU_EVENT_DISABLE_TIMING));
    while (!stop_flag) { one_digest(pattern, blocking, engine_done); digests++; }
    CK(cuEventDestroy(blocking)); CK(cuEventDestroy(engine_done));
  });
}

extern "C" unsigned long long probe_stop() {
  stop_flag = true; if (worker.joinable()) worker.join();
  return digests.load();
}
