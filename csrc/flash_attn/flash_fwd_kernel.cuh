// Flash-attention forward: O = softmax(scale * Q K^T + mask) V, one pass over K/V per query tile.
//
// Reference: fastgpt.ops.reference.flash_attention (its float64 result is what the tests compare
// against). Each CTA owns BLOCK_M = 64 query rows of one (batch, query head); each of its 4 warps
// owns 16 rows and keeps Q, the running row max/sum and the O accumulator in registers. K/V tiles
// of BLOCK_N = 64 keys stream through double-buffered shared memory with cp.async, so the next
// tile loads while this one is multiplied. Scores and probabilities stay in fp32; P is rounded to
// the input dtype only as the A operand of P V (as in FlashAttention-2).
//
// Online softmax in base 2: scores are multiplied by scale * log2(e) once (the 1/ln2 is folded
// into the scale), so every exponential is one exp2f. For each new tile:
//   m' = max(m, rowmax(S)), alpha = 2^(m - m'), l' = alpha l + rowsum(2^(S - m')),
//   O' = alpha O + 2^(S - m') V, and at the end O / l and lse = (m + log2 l) ln 2.
// Causal: tiles entirely above the diagonal are never loaded; only tiles crossing the diagonal or
// the end of the sequence are masked (to -inf, after scaling, so any finite scale works).
//
// Limits: fp16/bf16, HEAD_DIM 64 or 128, any T >= 1, GQA via the K/V head index hq / group.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <cmath>

#include "common/reduce.cuh"
#include "flash_attn/params.h"
#include "flash_attn/tile.cuh"

namespace fastgpt {

template <int HEAD_DIM>
struct FlashFwdConfig {
  static constexpr int BLOCK_M = 64;  // query rows per CTA (16 per warp)
  static constexpr int BLOCK_N = 64;  // keys per K/V tile
  static constexpr int WARPS = 4;
  static constexpr int THREADS = WARPS * 32;
  // Q tile + two stages of (K tile, V tile)
  static constexpr int smem_elems = (BLOCK_M + 4 * BLOCK_N) * HEAD_DIM;
};

template <typename T, int HEAD_DIM, bool CAUSAL>
__global__ void __launch_bounds__(FlashFwdConfig<HEAD_DIM>::THREADS)
    flash_attn_fwd_kernel(const FlashParams p) {
  using Cfg = FlashFwdConfig<HEAD_DIM>;
  constexpr int D = HEAD_DIM;
  constexpr int BM = Cfg::BLOCK_M;
  constexpr int BN = Cfg::BLOCK_N;
  constexpr int THREADS = Cfg::THREADS;
  constexpr float NEG_INF = -INFINITY;

  extern __shared__ uint4 smem_u4[];
  T* sQ = reinterpret_cast<T*>(smem_u4);  // [BM][D]
  T* sK = sQ + BM * D;                     // [2][BN][D]
  T* sV = sK + 2 * BN * D;                 // [2][BN][D]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;  // accumulator rows g and g + 8 of the warp's 16
  const int t4 = lane & 3;  // accumulator columns 2*t4, 2*t4 + 1 of each n8 tile

  const int seqlen = p.seqlen;
  const int m_block = gridDim.x - 1 - blockIdx.x;  // causal: the longest rows start first
  const int hq = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = hq / p.group;
  const int m0 = m_block * BM;

  const T* Q = static_cast<const T*>(p.q) + b * p.q_stride.b + hq * p.q_stride.h + m0 * p.q_stride.t;
  const T* K = static_cast<const T*>(p.k) + b * p.k_stride.b + hk * p.k_stride.h;
  const T* V = static_cast<const T*>(p.v) + b * p.v_stride.b + hk * p.v_stride.h;

  // causal: keys past the last query row of this tile are never needed
  const int n_end = CAUSAL ? min(seqlen, m0 + BM) : seqlen;
  const int n_blocks = ceil_div(n_end, BN);

  load_tile_async<T, BM, D, THREADS>(sQ, Q, p.q_stride.t, seqlen - m0, tid);
  load_tile_async<T, BN, D, THREADS>(sK, K, p.k_stride.t, seqlen, tid);
  load_tile_async<T, BN, D, THREADS>(sV, V, p.v_stride.t, seqlen, tid);
  cp_async_commit();

  uint32_t q_frag[D / 16][4];
  float o_acc[D / 8][4];
  zero_acc(o_acc);
  float row_max[2] = {NEG_INF, NEG_INF};  // running max of the scaled (log2-domain) scores
  float row_sum[2] = {0.f, 0.f};          // this thread's share of the running sum of 2^(s - m)
  const int row0 = m0 + warp * 16 + g;    // absolute query rows row0 and row0 + 8
  const int key_limit[2] = {CAUSAL ? min(seqlen, row0 + 1) : seqlen, CAUSAL ? min(seqlen, row0 + 9) : seqlen};

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int stage = nb & 1;
    const int n0 = nb * BN;
    if (nb + 1 < n_blocks) {  // prefetch the next K/V tile into the other stage
      load_tile_async<T, BN, D, THREADS>(sK + (stage ^ 1) * BN * D, K + (n0 + BN) * p.k_stride.t, p.k_stride.t,
                                         seqlen - n0 - BN, tid);
      load_tile_async<T, BN, D, THREADS>(sV + (stage ^ 1) * BN * D, V + (n0 + BN) * p.v_stride.t, p.v_stride.t,
                                         seqlen - n0 - BN, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();  // everything but the prefetch has landed
    __syncthreads();
    if (nb == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a_frag<D>(q_frag[kk], sQ, warp * 16, kk * 16, lane);
    }
    const T* sKs = sK + stage * BN * D;
    const T* sVs = sV + stage * BN * D;

    // S = Q K^T for the warp's 16 rows x BN keys
    float s[BN / 8][4];
    zero_acc(s);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t kb[4];
        load_b_frag_nk<D>(kb, sKs, np * 16, kk * 16, lane);
        mma_16816<T>(s[2 * np], q_frag[kk], kb[0], kb[1]);
        mma_16816<T>(s[2 * np + 1], q_frag[kk], kb[2], kb[3]);
      }
    }

    // scale into the log2 domain; mask keys past the end and (causal) keys after the query
    // (row r sees keys below key_limit[r]; key_end is that limit relative to columns 2*t4 here)
    const bool need_mask = n0 + BN > seqlen || (CAUSAL && n0 + BN - 1 > m0);
    const int key_end[2] = {key_limit[0] - n0 - 2 * t4, key_limit[1] - n0 - 2 * t4};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[nt][i] *= p.scale_log2;
        if (need_mask && nt * 8 + (i & 1) >= key_end[i >> 1]) s[nt][i] = NEG_INF;
      }
    }

    // online softmax update, one row pair (g, g + 8) at a time
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = quad_max(mx);
      // a row with no visible key yet keeps max -inf; subtract 0 so that 2^(-inf - m) stays 0
      const float m_sub = mx == NEG_INF ? 0.f : mx;
      const float alpha = exp2f(row_max[r] - m_sub);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        s[nt][2 * r] = exp2f(s[nt][2 * r] - m_sub);
        s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - m_sub);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o_acc[dt][2 * r] *= alpha;
        o_acc[dt][2 * r + 1] *= alpha;
      }
    }

    // O += P V (P rounded to T as the A operand)
    warp_mma_acc_b<T, D, BN>(o_acc, s, sVs, lane);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

  // normalize, save the log-sum-exp, write O through the warp's own (now unused) Q rows
  float inv_sum[2];
  float* lse = p.lse + (static_cast<int64_t>(b) * p.heads_q + hq) * seqlen;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(row_sum[r]);
    inv_sum[r] = sum > 0.f ? 1.f / sum : 0.f;
    const int row = row0 + r * 8;
    if (t4 == 0 && row < seqlen) {
      // a row that saw no key (impossible for T_q == T_k) gets +inf so the backward's P is 0
      lse[row] = sum > 0.f ? (row_max[r] + log2f(sum)) * static_cast<float>(M_LN2) : INFINITY;
    }
  }
  T* Out = static_cast<T*>(p.out) + b * p.out_stride.b + hq * p.out_stride.h + (m0 + warp * 16) * p.out_stride.t;
  store_acc_tile<T, D>(o_acc, inv_sum, sQ + warp * 16 * D, Out, p.out_stride.t, seqlen - m0 - warp * 16, lane);
}

template <typename T, int HEAD_DIM, bool CAUSAL>
void launch_flash_attn_fwd(const FlashParams& p, cudaStream_t stream) {
  using Cfg = FlashFwdConfig<HEAD_DIM>;
  auto kernel = flash_attn_fwd_kernel<T, HEAD_DIM, CAUSAL>;
  constexpr int smem_bytes = Cfg::smem_elems * static_cast<int>(sizeof(T));
  if (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  }
  const dim3 grid(ceil_div(p.seqlen, Cfg::BLOCK_M), p.heads_q, p.batch);
  kernel<<<grid, Cfg::THREADS, smem_bytes, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fastgpt
