// Fused AdamW: one launch updates every tensor of a dtype (multi-tensor apply).
//
// Per element, in fp32, exactly torch.optim.AdamW's order of operations (decoupled decay):
//   p *= 1 - lr * wd
//   m = lerp(m, g, 1 - beta1)                 (g negated when maximizing)
//   v = v * beta2 + (1 - beta2) * g * g
//   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// Per-CTA scalars (bias corrections, step size) are computed in double from the device step and
// learning rate (no host synchronization), then rounded to fp32 like PyTorch's scalar arguments.
// Reference: fastgpt.ops.reference.fused_adamw_ / torch.optim.AdamW.
//
// Each CTA owns one chunk of kAdamWChunk elements of one tensor; element offsets are 64-bit, so
// tensors over 2^31 elements work. Accesses are 4 elements wide (float4 for the fp32 states) when
// every pointer of the tensor is aligned, with a scalar tail; otherwise 4 independent scalar
// elements per thread per iteration keep enough loads in flight.
#include <c10/cuda/CUDAException.h>

#include <cmath>

#include "adamw/launch.h"
#include "common/dtype.cuh"

namespace fastgpt {
namespace {

constexpr int kAdamWThreads = 512;
constexpr int kIlp = 4;

struct AdamWScalars {
  float decay;       // 1 - lr * wd
  float lerp_w;      // 1 - beta1
  float beta2;
  float one_minus_beta2;
  float step_size;   // lr / (1 - beta1^step)
  float bc2_sqrt;    // sqrt(1 - beta2^step)
  float eps;
  bool maximize;
};

__device__ __forceinline__ void adamw_update(float& p, float g, float& m, float& v, const AdamWScalars& s) {
  if (s.maximize) g = -g;
  p *= s.decay;
  // torch.lerp: the formula depends on the weight's size for accuracy
  m = s.lerp_w < 0.5f ? m + s.lerp_w * (g - m) : g - (g - m) * (1.f - s.lerp_w);
  v = v * s.beta2;
  v = v + s.one_minus_beta2 * g * g;
  const float denom = sqrtf(v) / s.bc2_sqrt + s.eps;
  p = p + -s.step_size * (m / denom);
}

}  // namespace

template <typename T>
__global__ void __launch_bounds__(kAdamWThreads) fused_adamw_kernel(const AdamWTable tab, const AdamWHyper hp) {
  const int t = tab.block_tensor[blockIdx.x];
  const int64_t start = static_cast<int64_t>(tab.block_chunk[blockIdx.x]) * kAdamWChunk;
  const int64_t n = min(kAdamWChunk, tab.numel[t] - start);
  T* P = static_cast<T*>(tab.param[t]) + start;
  const T* G = static_cast<const T*>(tab.grad[t]) + start;
  float* M = tab.exp_avg[t] + start;
  float* V = tab.exp_avg_sq[t] + start;

  const double lr = hp.lr_ptr != nullptr ? static_cast<double>(*hp.lr_ptr) : hp.lr;
  const double step = static_cast<double>(*tab.step[t]);
  AdamWScalars s;
  s.decay = static_cast<float>(1.0 - lr * hp.weight_decay);
  s.lerp_w = static_cast<float>(1.0 - hp.beta1);
  s.beta2 = static_cast<float>(hp.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - hp.beta2);
  s.step_size = static_cast<float>(lr / (1.0 - pow(hp.beta1, step)));
  s.bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(hp.beta2, step)));
  s.eps = static_cast<float>(hp.eps);
  s.maximize = hp.maximize;

  const bool vectorized = is_aligned(P, kIlp * sizeof(T)) && is_aligned(G, kIlp * sizeof(T)) &&
                          is_aligned(M, kIlp * sizeof(float)) && is_aligned(V, kIlp * sizeof(float));
  if (vectorized) {
    using VecT = AlignedVec<T, kIlp>;
    using VecF = AlignedVec<float, kIlp>;
    const int64_t nvec = n / kIlp;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      VecT pv = reinterpret_cast<VecT*>(P)[i];
      const VecT gv = reinterpret_cast<const VecT*>(G)[i];
      VecF mv = reinterpret_cast<VecF*>(M)[i];
      VecF vv = reinterpret_cast<VecF*>(V)[i];
#pragma unroll
      for (int e = 0; e < kIlp; ++e) {
        float pf = to_float(pv.val[e]);
        adamw_update(pf, to_float(gv.val[e]), mv.val[e], vv.val[e], s);
        pv.val[e] = from_float<T>(pf);
      }
      reinterpret_cast<VecT*>(P)[i] = pv;
      reinterpret_cast<VecF*>(M)[i] = mv;
      reinterpret_cast<VecF*>(V)[i] = vv;
    }
    for (int64_t i = nvec * kIlp + threadIdx.x; i < n; i += blockDim.x) {
      float pf = to_float(P[i]);
      adamw_update(pf, to_float(G[i]), M[i], V[i], s);
      P[i] = from_float<T>(pf);
    }
    return;
  }
  for (int64_t base = 0; base < n; base += static_cast<int64_t>(blockDim.x) * kIlp) {
    float pr[kIlp], gr[kIlp], mr[kIlp], vr[kIlp];
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {  // all loads first: kIlp independent requests in flight
      const int64_t i = base + threadIdx.x + static_cast<int64_t>(e) * blockDim.x;
      if (i < n) {
        pr[e] = to_float(P[i]);
        gr[e] = to_float(G[i]);
        mr[e] = M[i];
        vr[e] = V[i];
      }
    }
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int64_t i = base + threadIdx.x + static_cast<int64_t>(e) * blockDim.x;
      if (i < n) {
        adamw_update(pr[e], gr[e], mr[e], vr[e], s);
        P[i] = from_float<T>(pr[e]);
        M[i] = mr[e];
        V[i] = vr[e];
      }
    }
  }
}

void fused_adamw_launch(ScalarKind kind, const AdamWTable& table, int num_blocks, const AdamWHyper& hyper,
                        cudaStream_t stream) {
  if (num_blocks == 0) return;
  switch (kind) {
    case ScalarKind::kFloat32:
      fused_adamw_kernel<float><<<num_blocks, kAdamWThreads, 0, stream>>>(table, hyper);
      break;
    case ScalarKind::kFloat16:
      fused_adamw_kernel<__half><<<num_blocks, kAdamWThreads, 0, stream>>>(table, hyper);
      break;
    case ScalarKind::kBFloat16:
      fused_adamw_kernel<__nv_bfloat16><<<num_blocks, kAdamWThreads, 0, stream>>>(table, hyper);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastgpt
