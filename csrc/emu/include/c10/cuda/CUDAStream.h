// Emulated build only (csrc/emu/): the current stream is the null stream; launches run at once.
#pragma once

#include <cuda_runtime_api.h>

namespace c10::cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream() { return {}; }

}  // namespace c10::cuda
