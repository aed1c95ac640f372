// Force-included (g++ -include) first into every CUDA translation unit of the emulated build
// (csrc/emu/, FASTGPT_CUDA_EMULATE=1): the CUDA language on the host. Qualifiers vanish, the
// builtin variables read the running fiber's ids, intrinsics and warp collectives call the
// emulator's runtime.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu/ptx.h"
#include "emu/runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

#define threadIdx (::fastgpt_emu::tls_ids->thread_idx)
#define blockIdx (::fastgpt_emu::tls_ids->block_idx)
#define blockDim (::fastgpt_emu::tls_ids->block_dim)
#define gridDim (::fastgpt_emu::tls_ids->grid_dim)

// CUDA's integer and float min/max overloads
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }

inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<uintptr_t>(p); }

inline void __syncthreads() { ::fastgpt_emu::block_barrier(); }

namespace fastgpt_emu {

inline void sync_warp_fn(const char*, LaneSlot*, uint32_t) {}

template <typename T>
inline void put(LaneSlot& s, const T& v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  std::memcpy(s.in, &v, sizeof(T));
}

template <typename T>
inline T get_out(const LaneSlot& s) {
  T v;
  std::memcpy(&v, s.out, sizeof(T));
  return v;
}

// kind: 0 idx, 1 up, 2 down, 3 xor; arg is the lane, delta or lane mask; width in the slot's in[2]
void shfl_fn(const char* what, LaneSlot* slots, uint32_t mask);
void ballot_fn(const char* what, LaneSlot* slots, uint32_t mask);

template <typename T>
inline T shfl(const char* what, unsigned mask, T v, int arg, int width) {
  LaneSlot& s = lane_slot();
  put(s, v);
  s.arg = arg;
  s.in[2] = static_cast<uint32_t>(width);
  warp_collective(what, mask, shfl_fn);
  return get_out<T>(s);
}

}  // namespace fastgpt_emu

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::fastgpt_emu::warp_collective("bar.warp.sync", mask, ::fastgpt_emu::sync_warp_fn);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::fastgpt_emu::shfl("shfl.sync.idx", mask, v, src, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::fastgpt_emu::shfl("shfl.sync.up", mask, v, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::fastgpt_emu::shfl("shfl.sync.down", mask, v, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::fastgpt_emu::shfl("shfl.sync.bfly", mask, v, lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  ::fastgpt_emu::LaneSlot& s = ::fastgpt_emu::lane_slot();
  s.in[0] = predicate != 0;
  ::fastgpt_emu::warp_collective("vote.sync.ballot.b32", mask, ::fastgpt_emu::ballot_fn);
  return s.out[0];
}
