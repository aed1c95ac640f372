// Kernels with deliberate bugs, for the tests of the emulator's error reports (emulated build
// only): each must stop its launch with an error naming the block and thread.
#include <cuda_runtime_api.h>

#include "emu/faults.h"

namespace fastgpt {
namespace {

// Each thread reads X[blockIdx.x * blockDim.x + threadIdx.x]: the last thread of the last block
// reads one element past a buffer of grid * block - 1 elements.
__global__ void oob_global_kernel(const float* X, float* Out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  Out[0] = X[i];
}

// Thread i writes s[i + 1] of a 64-element shared array: thread 63 writes past its end.
__global__ void oob_shared_kernel(float* Out) {
  __shared__ float s[64];
  s[threadIdx.x + 1] = 1.f;
  __syncthreads();
  Out[0] = s[1];
}

// Half of warp 0 waits at __syncthreads, the other half at __syncwarp for it: a deadlock.
__global__ void deadlock_kernel(float* Out) {
  if (threadIdx.x >= 16 && threadIdx.x < 32) __syncwarp();
  __syncthreads();
  Out[0] = 1.f;
}

// __syncthreads in a branch only the first 16 threads take.
__global__ void barrier_in_branch_kernel(float* Out) {
  if (threadIdx.x < 16) __syncthreads();
  Out[0] = 1.f;
}

// Lanes 0-15 shuffle by xor, lanes 16-31 shuffle down, all with a full mask.
__global__ void divergent_shuffle_kernel(float* Out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __shfl_down_sync(0xffffffffu, v, 1);
  }
  Out[0] = v;
}

// Lanes 16-31 return while lanes 0-15 shuffle with a full mask.
__global__ void exit_in_collective_kernel(float* Out) {
  if (threadIdx.x >= 16) return;
  Out[0] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

}  // namespace

void fault_launch(FaultKind kind, const float* X, float* Out) {
  switch (kind) {
    case FaultKind::kOobGlobal:
      oob_global_kernel<<<2, 64>>>(X, Out);
      break;
    case FaultKind::kOobShared:
      oob_shared_kernel<<<1, 64>>>(Out);
      break;
    case FaultKind::kDeadlock:
      deadlock_kernel<<<1, 64>>>(Out);
      break;
    case FaultKind::kBarrierInBranch:
      barrier_in_branch_kernel<<<1, 64>>>(Out);
      break;
    case FaultKind::kDivergentShuffle:
      divergent_shuffle_kernel<<<1, 32>>>(Out);
      break;
    case FaultKind::kExitInCollective:
      exit_in_collective_kernel<<<1, 32>>>(Out);
      break;
  }
}

}  // namespace fastgpt
