// RMSNorm forward and backward kernels, optionally fused with the residual add.
//
// Forward, per row of n elements (statistics in fp32):
//   h = x + residual (rounded to x's dtype, as the reference adds in that dtype), or h = x
//   rstd = 1 / sqrt(mean(h^2) + eps),  out = (h * rstd) * weight
// Backward with g = dout * weight and xhat = h * rstd (rstd saved by the forward):
//   dh = rstd * (g - xhat * mean(g * xhat)) + dh_in   (dh_in: gradient of the h output)
//   dweight = sum over rows of dout * xhat            (two stages, no atomics)
// Reference: fastgpt.ops.reference.rms_norm and its autograd.
//
// Layout: a row is handled by blockDim.x threads (a multiple of 32, up to 512) and a block holds
// blockDim.y rows. Each thread keeps its first kCacheVecs vectors of the row in registers
// between the two passes and re-reads the rest (L1/L2 hits), so any n up to 65536 works.
// Accesses are 16 bytes wide when the host says `vectorized` (n a multiple of the vector width
// and every pointer 16-byte aligned), one element wide otherwise.
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "common/dtype.cuh"
#include "common/reduce.cuh"
#include "rms_norm/launch.h"

namespace fastgpt {
namespace {

constexpr int kCacheVecs = 4;        // row vectors per thread kept in registers between passes
constexpr int kMaxRowThreads = 512;  // threads per block at most (the bwd kernels need ~100 registers)

// Sum of v over the blockDim.x threads of this thread's row. Called by every thread of the block.
__device__ __forceinline__ float row_sum(float v, float* red) {
  v = warp_sum(v);
  if (blockDim.x == 32) return v;  // uniform over the block
  const int warps = blockDim.x / 32;
  float* mine = red + threadIdx.y * warps;
  if ((threadIdx.x & 31) == 0) mine[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += mine[w];  // fixed order: deterministic
  __syncthreads();                                   // red is reused by the next row
  return total;
}

template <int VEC>
__device__ __forceinline__ void load_weight(float (&w)[VEC], const float* weight, int col) {
  if (weight == nullptr) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) w[e] = 1.f;
  } else if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      const float4 f = reinterpret_cast<const float4*>(weight + col)[q];
      w[4 * q] = f.x;
      w[4 * q + 1] = f.y;
      w[4 * q + 2] = f.z;
      w[4 * q + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) w[e] = weight[col + e];
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_fwd_kernel(const RmsNormFwdArgs a) {
  using Vec = AlignedVec<T, VEC>;
  __shared__ float red[32];
  const T* X = static_cast<const T*>(a.x);
  const T* Residual = static_cast<const T*>(a.residual);
  T* Out = static_cast<T*>(a.out);
  T* H = static_cast<T*>(a.h);
  const int nvec = a.n / VEC;
  const int tx = threadIdx.x;
  const int tpr = blockDim.x;

  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y; first < a.rows;
       first += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t row = first + threadIdx.y;
    const bool valid = row < a.rows;  // every thread stays for the block-wide reduction
    const int64_t off = valid ? row * a.n : 0;
    const Vec* x_row = reinterpret_cast<const Vec*>(X + off);  // row vectors: i < nvec
    const Vec* r_row = reinterpret_cast<const Vec*>(Residual != nullptr ? Residual + off : nullptr);
    Vec* h_row = reinterpret_cast<Vec*>(H != nullptr ? H + off : nullptr);
    Vec* out_row = reinterpret_cast<Vec*>(Out + off);

    // h for vector i of the row; with a residual, also store it (the op's second output)
    auto load_h = [&](int i) {
      Vec hv = x_row[i];
      if (r_row != nullptr) {
        const Vec rv = r_row[i];
#pragma unroll
        for (int e = 0; e < VEC; ++e) hv.val[e] = from_float<T>(to_float(hv.val[e]) + to_float(rv.val[e]));
        h_row[i] = hv;
      }
      return hv;
    };
    auto sum_squares = [](const Vec& hv) {
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += to_float(hv.val[e]) * to_float(hv.val[e]);
      return s;
    };
    auto store_out = [&](int i, const Vec& hv, float rstd) {
      float w[VEC];
      load_weight<VEC>(w, a.weight, i * VEC);
      Vec ov;
#pragma unroll
      for (int e = 0; e < VEC; ++e) ov.val[e] = from_float<T>(to_float(hv.val[e]) * rstd * w[e]);
      out_row[i] = ov;
    };

    Vec cache[kCacheVecs];
    float ss = 0.f;
    if (valid) {
#pragma unroll
      for (int c = 0; c < kCacheVecs; ++c) {
        const int i = tx + c * tpr;
        if (i < nvec) {
          cache[c] = load_h(i);
          ss += sum_squares(cache[c]);
        }
      }
      for (int i = tx + kCacheVecs * tpr; i < nvec; i += tpr) ss += sum_squares(load_h(i));
    }
    const float rstd = rsqrtf(row_sum(ss, red) / static_cast<float>(a.n) + a.eps);
    if (valid) {
      if (tx == 0) a.rstd[row] = rstd;
#pragma unroll
      for (int c = 0; c < kCacheVecs; ++c) {
        const int i = tx + c * tpr;
        if (i < nvec) store_out(i, cache[c], rstd);
      }
      // beyond the cache: re-read h (this thread wrote it above when there is a residual)
      const Vec* hin_row = r_row != nullptr ? h_row : x_row;
      for (int i = tx + kCacheVecs * tpr; i < nvec; i += tpr) store_out(i, hin_row[i], rstd);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_bwd_kernel(const RmsNormBwdArgs a) {
  using Vec = AlignedVec<T, VEC>;
  __shared__ float red[32];
  const T* dY = static_cast<const T*>(a.dout);
  const T* dHin = static_cast<const T*>(a.dh);
  const T* H = static_cast<const T*>(a.h);
  T* dX = static_cast<T*>(a.dx);
  const int nvec = a.n / VEC;
  const int tx = threadIdx.x;
  const int tpr = blockDim.x;

  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.y; first < a.rows;
       first += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t row = first + threadIdx.y;
    const bool valid = row < a.rows;
    const int64_t off = valid ? row * a.n : 0;
    const Vec* dy_row = reinterpret_cast<const Vec*>(dY + off);  // row vectors: i < nvec
    const Vec* h_row = reinterpret_cast<const Vec*>(H + off);
    const Vec* dh_row = reinterpret_cast<const Vec*>(dHin != nullptr ? dHin + off : nullptr);
    Vec* dx_row = reinterpret_cast<Vec*>(dX + off);
    const float rstd = valid ? a.rstd[row] : 0.f;

    // sum over the vector of g * xhat
    auto dot = [&](const Vec& dyv, const Vec& hv, int i) {
      float w[VEC];
      load_weight<VEC>(w, a.weight, i * VEC);
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += to_float(dyv.val[e]) * w[e] * (to_float(hv.val[e]) * rstd);
      return s;
    };
    auto store_dx = [&](const Vec& dyv, const Vec& hv, int i, float mean_gx) {
      float w[VEC];
      load_weight<VEC>(w, a.weight, i * VEC);
      Vec dhv;
      if (dh_row != nullptr) dhv = dh_row[i];
      Vec dxv;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float g = to_float(dyv.val[e]) * w[e];
        const float xhat = to_float(hv.val[e]) * rstd;
        float d = rstd * (g - xhat * mean_gx);
        if (dh_row != nullptr) d += to_float(dhv.val[e]);
        dxv.val[e] = from_float<T>(d);
      }
      dx_row[i] = dxv;
    };

    Vec dy_cache[kCacheVecs];
    Vec h_cache[kCacheVecs];
    float acc = 0.f;
    if (valid) {
#pragma unroll
      for (int c = 0; c < kCacheVecs; ++c) {
        const int i = tx + c * tpr;
        if (i < nvec) {
          dy_cache[c] = dy_row[i];
          h_cache[c] = h_row[i];
          acc += dot(dy_cache[c], h_cache[c], i);
        }
      }
      for (int i = tx + kCacheVecs * tpr; i < nvec; i += tpr) {
        acc += dot(dy_row[i], h_row[i], i);
      }
    }
    const float mean_gx = row_sum(acc, red) / static_cast<float>(a.n);
    if (valid) {
#pragma unroll
      for (int c = 0; c < kCacheVecs; ++c) {
        const int i = tx + c * tpr;
        if (i < nvec) store_dx(dy_cache[c], h_cache[c], i, mean_gx);
      }
      for (int i = tx + kCacheVecs * tpr; i < nvec; i += tpr) {
        store_dx(dy_row[i], h_row[i], i, mean_gx);
      }
    }
  }
}

// Stage 1 of dweight: Partial[chunk, col] = sum over the chunk's rows of dout * h * rstd.
// Block (32, kDwRows): x over 32 column vectors, y over rows; reduced over y in a fixed order.
constexpr int kDwRows = 8;

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kDwRows) rms_norm_bwd_dweight_kernel(const RmsNormBwdArgs a) {
  using Vec = AlignedVec<T, VEC>;
  __shared__ float red[kDwRows][32 * VEC];
  const T* dY = static_cast<const T*>(a.dout);
  const T* H = static_cast<const T*>(a.h);
  const int nvec = a.n / VEC;
  const int cv = blockIdx.x * 32 + threadIdx.x;  // column vector of this thread
  const int64_t r_begin = static_cast<int64_t>(blockIdx.y) * a.dweight_rows_per_chunk;
  const int64_t r_end = min(a.rows, r_begin + a.dweight_rows_per_chunk);

  float acc[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
  if (cv < nvec) {
    for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kDwRows) {
      const float rstd = a.rstd[r];
      const Vec dyv = *reinterpret_cast<const Vec*>(dY + r * a.n + static_cast<int64_t>(cv) * VEC);
      const Vec hv = *reinterpret_cast<const Vec*>(H + r * a.n + static_cast<int64_t>(cv) * VEC);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] += to_float(dyv.val[e]) * (to_float(hv.val[e]) * rstd);
    }
  }
#pragma unroll
  for (int e = 0; e < VEC; ++e) red[threadIdx.y][threadIdx.x * VEC + e] = acc[e];
  __syncthreads();
  // each of the 256 threads finishes columns of the block's 32 * VEC, summing rows 0..7 in order
  const int tid = threadIdx.y * 32 + threadIdx.x;
  for (int c = tid; c < 32 * VEC; c += 32 * kDwRows) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 * VEC + c;
    if (col < a.n) {
      float s = 0.f;
#pragma unroll
      for (int y = 0; y < kDwRows; ++y) s += red[y][c];
      a.partial[static_cast<int64_t>(blockIdx.y) * a.n + col] = s;
    }
  }
}

// Stage 2: dweight[col] = sum over chunks (in order) of Partial[chunk, col].
__global__ void rms_norm_bwd_dweight_reduce_kernel(const RmsNormBwdArgs a) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= a.n) return;
  float s = 0.f;
  for (int c = 0; c < a.dweight_chunks; ++c) s += a.partial[static_cast<int64_t>(c) * a.n + col];
  a.dweight[col] = s;
}

// Threads per row: enough for kCacheVecs vectors each, a multiple of 32, at most
// kMaxRowThreads; small rows share a block so that blocks have at least 256 threads.
dim3 row_block(int n, int vec) {
  const int nvec = n / vec;
  const int per_row = std::clamp((ceil_div(nvec, kCacheVecs) + 31) / 32 * 32, 32, kMaxRowThreads);
  return dim3(per_row, std::max(1, 256 / per_row));
}

unsigned row_grid(int64_t rows, const dim3& block) {
  return static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(rows, block.y), 1 << 30));
}

template <typename T, int VEC>
void launch_fwd(const RmsNormFwdArgs& a, cudaStream_t stream) {
  const dim3 block = row_block(a.n, VEC);
  rms_norm_fwd_kernel<T, VEC><<<row_grid(a.rows, block), block, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int VEC>
void launch_bwd(const RmsNormBwdArgs& a, cudaStream_t stream) {
  const dim3 block = row_block(a.n, VEC);
  rms_norm_bwd_kernel<T, VEC><<<row_grid(a.rows, block), block, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (a.dweight == nullptr) return;
  const dim3 dw_grid(ceil_div(a.n / VEC, 32), a.dweight_chunks);
  rms_norm_bwd_dweight_kernel<T, VEC><<<dw_grid, dim3(32, kDwRows), 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  rms_norm_bwd_dweight_reduce_kernel<<<ceil_div(a.n, 256), 256, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

}  // namespace

RmsNormDweightPlan rms_norm_dweight_plan(int64_t rows, int n, bool vectorized, ScalarKind kind, int num_sms) {
  const int vec = !vectorized ? 1 : kind == ScalarKind::kFloat32 ? 4 : 8;
  const int64_t col_blocks = ceil_div(n / vec, 32);
  // about 4 blocks per SM in all, at least 32 rows per chunk, at most 1024 chunks
  const int64_t want = std::max<int64_t>(1, 4 * static_cast<int64_t>(num_sms) / col_blocks);
  const int64_t chunks = std::clamp<int64_t>(std::min(want, ceil_div<int64_t>(rows, 32)), 1, 1024);
  const int64_t rows_per_chunk = ceil_div<int64_t>(std::max<int64_t>(rows, 1), chunks);
  return {rows_per_chunk, static_cast<int>(ceil_div<int64_t>(std::max<int64_t>(rows, 1), rows_per_chunk))};
}

void rms_norm_fwd_launch(ScalarKind kind, const RmsNormFwdArgs& a, cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat32:
      return a.vectorized ? launch_fwd<float, vec_width<float>()>(a, stream) : launch_fwd<float, 1>(a, stream);
    case ScalarKind::kFloat16:
      return a.vectorized ? launch_fwd<__half, vec_width<__half>()>(a, stream) : launch_fwd<__half, 1>(a, stream);
    case ScalarKind::kBFloat16:
      return a.vectorized ? launch_fwd<__nv_bfloat16, vec_width<__nv_bfloat16>()>(a, stream)
                          : launch_fwd<__nv_bfloat16, 1>(a, stream);
  }
}

void rms_norm_bwd_launch(ScalarKind kind, const RmsNormBwdArgs& a, cudaStream_t stream) {
  switch (kind) {
    case ScalarKind::kFloat32:
      return a.vectorized ? launch_bwd<float, vec_width<float>()>(a, stream) : launch_bwd<float, 1>(a, stream);
    case ScalarKind::kFloat16:
      return a.vectorized ? launch_bwd<__half, vec_width<__half>()>(a, stream) : launch_bwd<__half, 1>(a, stream);
    case ScalarKind::kBFloat16:
      return a.vectorized ? launch_bwd<__nv_bfloat16, vec_width<__nv_bfloat16>()>(a, stream)
                          : launch_bwd<__nv_bfloat16, 1>(a, stream);
  }
}

}  // namespace fastgpt
