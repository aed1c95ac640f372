// Kernel-facing description of one attention call, and the per-head-dim launchers.
//
// Plain C++ (no ATen): the .cu files that include it compile fast. Tensors are (B, H, T, D) with
// a unit stride over D; the other strides are in elements and may be anything that keeps every
// row 16-byte aligned (the host checks). lse and delta are contiguous (B, Hq, T) fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastgpt {

struct FlashStrides {
  int64_t b;  // batch stride (elements)
  int64_t h;  // head stride
  int64_t t;  // sequence (row) stride
};

struct FlashParams {
  const void* q;      // (B, Hq, T, D) queries
  const void* k;      // (B, Hkv, T, D) keys
  const void* v;      // (B, Hkv, T, D) values
  void* out;          // (B, Hq, T, D) forward output; a backward input
  float* lse;         // (B, Hq, T) natural-log log-sum-exp of each score row (written by the forward)
  const void* dout;   // (B, Hq, T, D) gradient of out (backward only)
  void* dq;           // (B, Hq, T, D) backward outputs
  void* dk;           // (B, Hkv, T, D)
  void* dv;           // (B, Hkv, T, D)
  float* delta;       // (B, Hq, T) scratch: rowsum(dout * out)
  FlashStrides q_stride, k_stride, v_stride, out_stride, dout_stride, dq_stride, dk_stride, dv_stride;
  int batch;          // B
  int heads_q;        // Hq
  int heads_kv;       // Hkv
  int group;          // Hq / Hkv query heads per key/value head
  int seqlen;         // T (queries and keys)
  float scale;        // softmax scale (1/sqrt(D) by default)
  float scale_log2;   // scale * log2(e): scores are exponentiated with exp2
};

// Each runs every kernel of one direction for one head dim, on `stream`; bf16 picks
// __nv_bfloat16 over __half. Defined in flash_{fwd,bwd}_hdim{64,128}.cu.
void flash_attn_fwd_hdim64(const FlashParams& params, bool bf16, bool causal, cudaStream_t stream);
void flash_attn_fwd_hdim128(const FlashParams& params, bool bf16, bool causal, cudaStream_t stream);
void flash_attn_bwd_hdim64(const FlashParams& params, bool bf16, bool causal, cudaStream_t stream);
void flash_attn_bwd_hdim128(const FlashParams& params, bool bf16, bool causal, cudaStream_t stream);

}  // namespace fastgpt
