// The emulator's self-test kernel (selftest.cu): C (16x16 fp32) = A (16x16) B (16x16), fp16 or
// bf16, row-major device pointers; mode 0-3 as described there.
#pragma once

#include <cuda_runtime_api.h>

namespace fastgpt {

constexpr int kSelftestModes = 4;

void mma_selftest_launch(bool bf16, const void* A, const void* B, float* C, int mode, cudaStream_t stream);

}  // namespace fastgpt
