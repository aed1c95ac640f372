// The emulator's self-test kernel (selftest.cu) on a real GPU, for benchmarks/gpu_check.sh:
//   nvcc -arch=sm_90 -std=c++17 -I csrc csrc/emu/selftest.cu csrc/emu/selftest_main.cu -o selftest
// prints one line per dtype and mode: "<dtype> <mode> c00 c01 ... c15,15" (C row-major), with
// A[i][k] = (7i + 3k) % 11 - 5 and B[k][n] = (5k + 2n) % 9 - 4, as the emulator's test uses.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "emu/selftest.h"

namespace {

#define CHECK(x)                                                                   \
  do {                                                                             \
    const cudaError_t e = (x);                                                     \
    if (e != cudaSuccess) {                                                        \
      std::fprintf(stderr, "selftest: %s: %s\n", #x, cudaGetErrorString(e));     \
      return 1;                                                                    \
    }                                                                              \
  } while (0)

template <typename T, typename Convert>
int run(const char* name, bool bf16, Convert convert) {
  std::vector<T> a(256), b(256);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      a[i * 16 + j] = convert(static_cast<float>((7 * i + 3 * j) % 11 - 5));
      b[i * 16 + j] = convert(static_cast<float>((5 * i + 2 * j) % 9 - 4));
    }
  }
  void *da, *db;
  float* dc;
  CHECK(cudaMalloc(&da, 256 * sizeof(T)));
  CHECK(cudaMalloc(&db, 256 * sizeof(T)));
  CHECK(cudaMalloc(&dc, 256 * sizeof(float)));
  CHECK(cudaMemcpy(da, a.data(), 256 * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, b.data(), 256 * sizeof(T), cudaMemcpyHostToDevice));
  for (int mode = 0; mode < fastgpt::kSelftestModes; ++mode) {
    CHECK(cudaMemset(dc, 0xff, 256 * sizeof(float)));
    fastgpt::mma_selftest_launch(bf16, da, db, dc, mode, nullptr);
    CHECK(cudaGetLastError());
    std::vector<float> c(256);
    CHECK(cudaMemcpy(c.data(), dc, 256 * sizeof(float), cudaMemcpyDeviceToHost));
    std::printf("%s %d", name, mode);
    for (float v : c) std::printf(" %.9g", v);
    std::printf("\n");
  }
  CHECK(cudaFree(da));
  CHECK(cudaFree(db));
  CHECK(cudaFree(dc));
  return 0;
}

}  // namespace

int main() {
  if (run<__half>("float16", false, [](float x) { return __float2half_rn(x); }) != 0) return 1;
  return run<__nv_bfloat16>("bfloat16", true, [](float x) { return __float2bfloat16_rn(x); });
}
