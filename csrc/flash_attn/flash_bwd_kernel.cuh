// Flash-attention backward, deterministic (no atomics): three kernels per call.
//
// With P = softmax(scale * Q K^T + mask) recomputed from the saved lse (P = 2^(S*scale*log2e -
// lse*log2e)) and dO the output gradient:
//   delta = rowsum(dO * O)                       flash_attn_bwd_preprocess_kernel
//   dV = P^T dO,  dS = P * (dO V^T - delta),  dK = scale * dS^T Q
//                                                flash_attn_bwd_dkdv_kernel, one CTA per key tile
//   dQ = scale * dS K                            flash_attn_bwd_dq_kernel, one CTA per query tile
// The dK/dV kernel walks every query tile of every query head of its GQA group in a fixed order
// and accumulates in registers, so grouped heads are summed deterministically without copying
// K/V; the dQ kernel recomputes S and dP instead of sharing them through atomics (FlashAttention-2
// style, trading ~30% more FLOPs for reproducible gradients).
//
// Reference: the autograd of fastgpt.ops.reference.flash_attention. P and dS are rounded to the
// input dtype as mma operands; all accumulation is fp32. Limits as in the forward.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <cmath>

#include "common/reduce.cuh"
#include "flash_attn/params.h"
#include "flash_attn/tile.cuh"

namespace fastgpt {

constexpr float kLog2e = 1.4426950408889634f;

// delta[b, h, t] = sum_d dO[b, h, t, d] * O[b, h, t, d] in fp32; one warp per row.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(256) flash_attn_bwd_preprocess_kernel(const FlashParams p) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * 8 + warp;
  const int hq = blockIdx.y;
  const int b = blockIdx.z;
  if (row >= p.seqlen) return;
  const T* O = static_cast<const T*>(p.out) + b * p.out_stride.b + hq * p.out_stride.h + row * p.out_stride.t;
  const T* dO = static_cast<const T*>(p.dout) + b * p.dout_stride.b + hq * p.dout_stride.h + row * p.dout_stride.t;
  float acc = 0.f;
#pragma unroll
  for (int d = lane; d < HEAD_DIM; d += 32) acc += to_float(O[d]) * to_float(dO[d]);
  acc = warp_sum(acc);
  if (lane == 0) p.delta[(static_cast<int64_t>(b) * p.heads_q + hq) * p.seqlen + row] = acc;
}

template <int HEAD_DIM>
struct FlashBwdConfig {
  static constexpr int WARPS = 4;
  static constexpr int THREADS = WARPS * 32;
  // dK/dV kernel: 64 keys per CTA (16 per warp), query tiles of KV_BLOCK_M rows; at D = 128 the
  // dK and dV accumulators take 128 registers per thread, so the query tile is halved to keep
  // S^T and dP^T small.
  static constexpr int KV_BLOCK_N = 64;
  static constexpr int KV_BLOCK_M = HEAD_DIM == 128 ? 32 : 64;
  // K, V tiles + two stages of (Q tile, dO tile), then two stages of (lse, delta) as floats
  static constexpr int kv_smem_elems = (2 * KV_BLOCK_N + 4 * KV_BLOCK_M) * HEAD_DIM;
  static constexpr int kv_smem_floats = 4 * KV_BLOCK_M;
  // dQ kernel: 64 query rows per CTA (16 per warp); key tiles of 64, or 32 at D = 128 where the
  // dQ accumulator takes 64 registers and a 64-key S and dP would spill
  static constexpr int Q_BLOCK_M = 64;
  static constexpr int Q_BLOCK_N = HEAD_DIM == 128 ? 32 : 64;
  // Q, dO tiles + two stages of (K tile, V tile)
  static constexpr int q_smem_elems = (2 * Q_BLOCK_M + 4 * Q_BLOCK_N) * HEAD_DIM;
};

template <typename T, int HEAD_DIM, bool CAUSAL>
__global__ void __launch_bounds__(FlashBwdConfig<HEAD_DIM>::THREADS)
    flash_attn_bwd_dkdv_kernel(const FlashParams p) {
  using Cfg = FlashBwdConfig<HEAD_DIM>;
  constexpr int D = HEAD_DIM;
  constexpr int BN = Cfg::KV_BLOCK_N;
  constexpr int BM = Cfg::KV_BLOCK_M;
  constexpr int THREADS = Cfg::THREADS;

  extern __shared__ uint4 smem_u4[];
  T* sK = reinterpret_cast<T*>(smem_u4);  // [BN][D]
  T* sV = sK + BN * D;                     // [BN][D]
  T* sQ = sV + BN * D;                     // [2][BM][D]
  T* sdO = sQ + 2 * BM * D;                // [2][BM][D]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BM * D);  // [2][BM], log2 domain
  float* sDelta = sLse + 2 * BM;                              // [2][BM]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t4 = lane & 3;

  const int seqlen = p.seqlen;
  const int n_block = blockIdx.x;
  const int hk = blockIdx.y;
  const int b = blockIdx.z;
  const int n0 = n_block * BN;

  const T* K = static_cast<const T*>(p.k) + b * p.k_stride.b + hk * p.k_stride.h + n0 * p.k_stride.t;
  const T* V = static_cast<const T*>(p.v) + b * p.v_stride.b + hk * p.v_stride.h + n0 * p.v_stride.t;

  // causal: query tiles that end before this key tile starts see none of its keys
  const int mb_first = CAUSAL ? n0 / BM : 0;
  const int num_m = ceil_div(seqlen, BM) - mb_first;
  const int steps = p.group * num_m;  // (query head of the group, query tile) pairs, in order

  // issue the loads of step `it` (query head hq, query tile m0) into `stage`
  auto load_step = [&](int it, int stage) {
    const int hq = hk * p.group + it / num_m;
    const int m0 = (mb_first + it % num_m) * BM;
    const T* Q = static_cast<const T*>(p.q) + b * p.q_stride.b + hq * p.q_stride.h + m0 * p.q_stride.t;
    const T* dO = static_cast<const T*>(p.dout) + b * p.dout_stride.b + hq * p.dout_stride.h + m0 * p.dout_stride.t;
    load_tile_async<T, BM, D, THREADS>(sQ + stage * BM * D, Q, p.q_stride.t, seqlen - m0, tid);
    load_tile_async<T, BM, D, THREADS>(sdO + stage * BM * D, dO, p.dout_stride.t, seqlen - m0, tid);
    const int64_t row_base = (static_cast<int64_t>(b) * p.heads_q + hq) * seqlen;
    for (int i = tid; i < BM; i += THREADS) {
      const int row = m0 + i;
      // rows past the end: lse = +inf makes their P exactly 0
      sLse[stage * BM + i] = row < seqlen ? p.lse[row_base + row] * kLog2e : INFINITY;
      sDelta[stage * BM + i] = row < seqlen ? p.delta[row_base + row] : 0.f;
    }
  };

  load_tile_async<T, BN, D, THREADS>(sK, K, p.k_stride.t, seqlen - n0, tid);
  load_tile_async<T, BN, D, THREADS>(sV, V, p.v_stride.t, seqlen - n0, tid);
  load_step(0, 0);
  cp_async_commit();

  float dk_acc[D / 8][4];
  float dv_acc[D / 8][4];
  zero_acc(dk_acc);
  zero_acc(dv_acc);
  const int key0 = n0 + warp * 16 + g;  // absolute keys key0 and key0 + 8 (accumulator rows)

  for (int it = 0; it < steps; ++it) {
    const int stage = it & 1;
    if (it + 1 < steps) load_step(it + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int m0 = (mb_first + it % num_m) * BM;
    const T* sQs = sQ + stage * BM * D;
    const T* sdOs = sdO + stage * BM * D;
    const float* sLses = sLse + stage * BM;
    const float* sDeltas = sDelta + stage * BM;

    // S^T = K Q^T: the warp's 16 keys x BM queries
    float st[BM / 8][4];
    zero_acc(st);
    // k loop unrolled by 2 only: full unrolling hoists every fragment load and spills at D = 128
    warp_mma_abt<T, D, BM, 2>(st, sK, warp * 16, sQs, lane);

    // P^T = 2^(S^T * scale * log2e - lse * log2e), zero where masked
    // (key row r sees queries in [q_begin[r], q_end), relative to this tile's columns 2*t4)
    const bool need_mask = m0 + BM > seqlen || (CAUSAL && m0 < n0 + BN - 1);
    const int q_end = seqlen - m0 - 2 * t4;
    const int q_begin[2] = {CAUSAL ? key0 - m0 - 2 * t4 : -BM, CAUSAL ? key0 + 8 - m0 - 2 * t4 : -BM};
#pragma unroll
    for (int nt = 0; nt < BM / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float pv = exp2f(st[nt][i] * p.scale_log2 - sLses[nt * 8 + 2 * t4 + (i & 1)]);
        const int q = nt * 8 + (i & 1);
        if (need_mask && (q >= q_end || q < q_begin[i >> 1])) pv = 0.f;
        st[nt][i] = pv;
      }
    }

    // dV += P^T dO
    warp_mma_acc_b<T, D, BM>(dv_acc, st, sdOs, lane);

    // dP^T = V dO^T
    float dpt[BM / 8][4];
    zero_acc(dpt);
    warp_mma_abt<T, D, BM, 2>(dpt, sV, warp * 16, sdOs, lane);

    // dS^T = P^T * (dP^T - delta)
#pragma unroll
    for (int nt = 0; nt < BM / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dpt[nt][i] = st[nt][i] * (dpt[nt][i] - sDeltas[nt * 8 + 2 * t4 + (i & 1)]);
    }

    // dK += dS^T Q (times scale at the end)
    warp_mma_acc_b<T, D, BM>(dk_acc, dpt, sQs, lane);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();
  __syncthreads();

  // every tile is free now: stage dK through rows [16w, 16w+16) and dV through [64+16w, ...)
  T* stage_base = reinterpret_cast<T*>(smem_u4);
  const int valid = seqlen - n0 - warp * 16;
  const float dk_mul[2] = {p.scale, p.scale};
  const float dv_mul[2] = {1.f, 1.f};
  T* dK = static_cast<T*>(p.dk) + b * p.dk_stride.b + hk * p.dk_stride.h + (n0 + warp * 16) * p.dk_stride.t;
  T* dV = static_cast<T*>(p.dv) + b * p.dv_stride.b + hk * p.dv_stride.h + (n0 + warp * 16) * p.dv_stride.t;
  store_acc_tile<T, D>(dk_acc, dk_mul, stage_base + warp * 16 * D, dK, p.dk_stride.t, valid, lane);
  store_acc_tile<T, D>(dv_acc, dv_mul, stage_base + (Cfg::WARPS + warp) * 16 * D, dV, p.dv_stride.t, valid, lane);
}

template <typename T, int HEAD_DIM, bool CAUSAL>
__global__ void __launch_bounds__(FlashBwdConfig<HEAD_DIM>::THREADS)
    flash_attn_bwd_dq_kernel(const FlashParams p) {
  using Cfg = FlashBwdConfig<HEAD_DIM>;
  constexpr int D = HEAD_DIM;
  constexpr int BM = Cfg::Q_BLOCK_M;
  constexpr int BN = Cfg::Q_BLOCK_N;
  constexpr int THREADS = Cfg::THREADS;

  extern __shared__ uint4 smem_u4[];
  T* sQ = reinterpret_cast<T*>(smem_u4);  // [BM][D]
  T* sdO = sQ + BM * D;                    // [BM][D]
  T* sK = sdO + BM * D;                    // [2][BN][D]
  T* sV = sK + 2 * BN * D;                 // [2][BN][D]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t4 = lane & 3;

  const int seqlen = p.seqlen;
  const int m_block = gridDim.x - 1 - blockIdx.x;  // causal: the longest rows start first
  const int hq = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = hq / p.group;
  const int m0 = m_block * BM;

  const T* Q = static_cast<const T*>(p.q) + b * p.q_stride.b + hq * p.q_stride.h + m0 * p.q_stride.t;
  const T* dO = static_cast<const T*>(p.dout) + b * p.dout_stride.b + hq * p.dout_stride.h + m0 * p.dout_stride.t;
  const T* K = static_cast<const T*>(p.k) + b * p.k_stride.b + hk * p.k_stride.h;
  const T* V = static_cast<const T*>(p.v) + b * p.v_stride.b + hk * p.v_stride.h;

  const int n_end = CAUSAL ? min(seqlen, m0 + BM) : seqlen;
  const int n_blocks = ceil_div(n_end, BN);

  load_tile_async<T, BM, D, THREADS>(sQ, Q, p.q_stride.t, seqlen - m0, tid);
  load_tile_async<T, BM, D, THREADS>(sdO, dO, p.dout_stride.t, seqlen - m0, tid);
  load_tile_async<T, BN, D, THREADS>(sK, K, p.k_stride.t, seqlen, tid);
  load_tile_async<T, BN, D, THREADS>(sV, V, p.v_stride.t, seqlen, tid);
  cp_async_commit();

  // per-row lse (log2 domain) and delta for the accumulator rows row0 and row0 + 8
  const int row0 = m0 + warp * 16 + g;
  const int64_t row_base = (static_cast<int64_t>(b) * p.heads_q + hq) * seqlen;
  float lse2[2];
  float delta[2];
  int key_limit[2];  // row r sees keys < key_limit[r]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + r * 8;
    key_limit[r] = CAUSAL ? min(seqlen, row + 1) : seqlen;
    lse2[r] = row < seqlen ? p.lse[row_base + row] * kLog2e : INFINITY;
    delta[r] = row < seqlen ? p.delta[row_base + row] : 0.f;
  }

  float dq_acc[D / 8][4];
  zero_acc(dq_acc);

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb & 1;
    const int n0 = nb * BN;
    if (nb + 1 < n_blocks) {
      load_tile_async<T, BN, D, THREADS>(sK + (stage ^ 1) * BN * D, K + (n0 + BN) * p.k_stride.t, p.k_stride.t,
                                         seqlen - n0 - BN, tid);
      load_tile_async<T, BN, D, THREADS>(sV + (stage ^ 1) * BN * D, V + (n0 + BN) * p.v_stride.t, p.v_stride.t,
                                         seqlen - n0 - BN, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* sKs = sK + stage * BN * D;
    const T* sVs = sV + stage * BN * D;

    // S = Q K^T
    float s[BN / 8][4];
    zero_acc(s);
    warp_mma_abt<T, D, BN, D / 16>(s, sQ, warp * 16, sKs, lane);

    // P, zero where masked (keys at or past key_end[r], relative to this tile)
    const bool need_mask = n0 + BN > seqlen || (CAUSAL && n0 + BN - 1 > m0);
    const int key_end[2] = {key_limit[0] - n0 - 2 * t4, key_limit[1] - n0 - 2 * t4};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float pv = exp2f(s[nt][i] * p.scale_log2 - lse2[i >> 1]);
        if (need_mask && nt * 8 + (i & 1) >= key_end[i >> 1]) pv = 0.f;
        s[nt][i] = pv;
      }
    }

    // dP = dO V^T
    float dp[BN / 8][4];
    zero_acc(dp);
    warp_mma_abt<T, D, BN, D / 16>(dp, sdO, warp * 16, sVs, lane);

    // dS = P * (dP - delta)
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dp[nt][i] = s[nt][i] * (dp[nt][i] - delta[i >> 1]);
    }

    // dQ += dS K (times scale at the end)
    warp_mma_acc_b<T, D, BN>(dq_acc, dp, sKs, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  const float mul[2] = {p.scale, p.scale};
  T* dQ = static_cast<T*>(p.dq) + b * p.dq_stride.b + hq * p.dq_stride.h + (m0 + warp * 16) * p.dq_stride.t;
  store_acc_tile<T, D>(dq_acc, mul, sQ + warp * 16 * D, dQ, p.dq_stride.t, seqlen - m0 - warp * 16, lane);
}

template <typename Kernel>
void set_max_dynamic_smem(Kernel kernel, int smem_bytes) {
  if (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  }
}

template <typename T, int HEAD_DIM, bool CAUSAL>
void launch_flash_attn_bwd(const FlashParams& p, cudaStream_t stream) {
  using Cfg = FlashBwdConfig<HEAD_DIM>;

  const dim3 pre_grid(ceil_div(p.seqlen, 8), p.heads_q, p.batch);
  flash_attn_bwd_preprocess_kernel<T, HEAD_DIM><<<pre_grid, 256, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto dkdv_kernel = flash_attn_bwd_dkdv_kernel<T, HEAD_DIM, CAUSAL>;
  constexpr int dkdv_smem =
      Cfg::kv_smem_elems * static_cast<int>(sizeof(T)) + Cfg::kv_smem_floats * static_cast<int>(sizeof(float));
  set_max_dynamic_smem(dkdv_kernel, dkdv_smem);
  const dim3 dkdv_grid(ceil_div(p.seqlen, Cfg::KV_BLOCK_N), p.heads_kv, p.batch);
  dkdv_kernel<<<dkdv_grid, Cfg::THREADS, dkdv_smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto dq_kernel = flash_attn_bwd_dq_kernel<T, HEAD_DIM, CAUSAL>;
  constexpr int dq_smem = Cfg::q_smem_elems * static_cast<int>(sizeof(T));
  set_max_dynamic_smem(dq_kernel, dq_smem);
  const dim3 dq_grid(ceil_div(p.seqlen, Cfg::Q_BLOCK_M), p.heads_q, p.batch);
  dq_kernel<<<dq_grid, Cfg::THREADS, dq_smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastgpt
