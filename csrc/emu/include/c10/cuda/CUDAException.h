// Emulated build only (csrc/emu/): C10_CUDA_CHECK on the shimmed runtime calls. A kernel that
// fails under the emulator throws from its launch, so the launch check has nothing left to do.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(EXPR)                                                             \
  do {                                                                                   \
    const cudaError_t fastgpt_emu_err = (EXPR);                                          \
    TORCH_CHECK(fastgpt_emu_err == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(fastgpt_emu_err)); \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
