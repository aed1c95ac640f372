// Emulated build only (csrc/emu/): the part of the CUDA runtime API that csrc/ uses, on the host.
// No CUDA runtime is linked: streams are a null handle, the device attributes are an H100's, and
// cudaFuncSetAttribute records the dynamic shared memory a kernel may use (checked at launch).
#pragma once

#include <cstddef>
#include <cstdint>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

struct alignas(16) float4 {
  float x, y, z, w;
};

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct alignas(8) float2 {
  float x, y;
};

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid value"; }

namespace fastgpt_emu {
constexpr int kMultiProcessors = 132;  // an H100 SXM
void set_max_dynamic_smem(const void* kernel, int bytes);
}  // namespace fastgpt_emu

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = fastgpt_emu::kMultiProcessors;
  return cudaSuccess;
}

template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  fastgpt_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}
