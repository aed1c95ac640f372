// The emulator's self-test kernel: one warp computes C = A B (A 16x16, B 16x16, fp16 or bf16
// holding small integers, so every result is exact) through csrc/common/mma.cuh's mma.sync,
// with the operands taken four ways:
//   mode 0: fragments assembled from global memory by the PTX ISA's m16n8k16 layout (no ldmatrix)
//   mode 1: A and B^T (n x k) in shared memory, fragments by ldmatrix.x4
//   mode 2: A by ldmatrix.x4, B (k x n) in shared memory by ldmatrix.x4.trans
//   mode 3: as mode 1, A loaded by cp.async with rows 12-15 zero-filled (src-size 0)
// The same source builds with nvcc for a real GPU (benchmarks/gpu_check.sh compares the two), so
// a misreading of the PTX layouts shared by the emulator and the kernels cannot hide.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "common/dtype.cuh"
#include "common/mma.cuh"
#include "emu/selftest.h"

namespace fastgpt {
namespace {

template <typename T>
__device__ uint32_t pack_elems(T lo, T hi) {
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | static_cast<uint32_t>(h) << 16;
}

template <typename T>
__global__ void mma_selftest_kernel(const T* A, const T* B, float* C, int mode) {
  __shared__ uint4 smem[2 * 16 * 16 * sizeof(T) / sizeof(uint4)];  // 16-byte aligned rows for ldmatrix
  T* sA = reinterpret_cast<T*>(smem);  // row-major 16 x 16
  T* sB = sA + 16 * 16;                 // B (k x n) for mode 2, B^T (n x k) otherwise
  const int lane = threadIdx.x;
  const int g = lane / 4, t = lane % 4;
  if (mode == 3) {
    // 32 chunks of 8 elements: lane l copies row l / 2, half l % 2; rows >= 12 zero-filled
    const int row = lane / 2, half = lane % 2;
    cp_async_16(sA + row * 16 + half * 8, A + row * 16 + half * 8, row < 12);
    cp_async_commit();
  } else {
    for (int i = lane; i < 256; i += 32) sA[i] = A[i];
  }
  for (int i = lane; i < 256; i += 32) {
    const int k = i / 16, n = i % 16;
    if (mode == 2) {
      sB[k * 16 + n] = B[k * 16 + n];
    } else {
      sB[n * 16 + k] = B[k * 16 + n];
    }
  }
  if (mode == 3) cp_async_wait<0>();
  __syncthreads();

  uint32_t a[4];
  uint32_t b[2][2];  // [n-tile][register]
  if (mode == 0) {
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i & 1) * 8, col = 2 * t + (i >> 1) * 8;
      a[i] = pack_elems(A[row * 16 + col], A[row * 16 + col + 1]);
    }
    for (int j = 0; j < 2; ++j) {
      for (int r = 0; r < 2; ++r) {
        const int k = 2 * t + 8 * r, n = 8 * j + g;
        b[j][r] = pack_elems(B[k * 16 + n], B[(k + 1) * 16 + n]);
      }
    }
  } else {
    // A: matrix m = lane / 8 covers rows (m % 2) * 8.., columns (m / 2) * 8..
    ldmatrix_x4(a, sA + ((lane % 8) + ((lane / 8) % 2) * 8) * 16 + (lane / 16) * 8);
    uint32_t r[4];
    if (mode == 2) {
      // B (k x n): matrix m covers k rows ((m % 2) * 8..), n columns ((m / 2) * 8..), transposed
      ldmatrix_x4_trans(r, sB + ((lane % 8) + ((lane / 8) % 2) * 8) * 16 + (lane / 16) * 8);
    } else {
      // B^T (n x k): matrix m covers n rows ((m / 2) * 8..), k columns ((m % 2) * 8..)
      ldmatrix_x4(r, sB + ((lane % 8) + (lane / 16) * 8) * 16 + ((lane / 8) % 2) * 8);
    }
    b[0][0] = r[0];
    b[0][1] = r[1];
    b[1][0] = r[2];
    b[1][1] = r[3];
  }
  for (int j = 0; j < 2; ++j) {
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    mma_16816<T>(c, a, b[j][0], b[j][1]);
    for (int i = 0; i < 4; ++i) C[(g + (i >> 1) * 8) * 16 + 8 * j + 2 * t + (i & 1)] = c[i];
  }
}

}  // namespace

void mma_selftest_launch(bool bf16, const void* A, const void* B, float* C, int mode, cudaStream_t stream) {
  if (bf16) {
    mma_selftest_kernel<__nv_bfloat16><<<1, 32, 0, stream>>>(static_cast<const __nv_bfloat16*>(A),
                                                              static_cast<const __nv_bfloat16*>(B), C, mode);
  } else {
    mma_selftest_kernel<__half><<<1, 32, 0, stream>>>(static_cast<const __half*>(A), static_cast<const __half*>(B), C,
                                                       mode);
  }
}

}  // namespace fastgpt
