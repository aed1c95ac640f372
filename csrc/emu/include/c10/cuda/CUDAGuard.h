// Emulated build only (csrc/emu/): the device guard is a no-op (CPU tensors, one "device").
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

}  // namespace c10::cuda
