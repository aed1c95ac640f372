// Host entry points of the flash-attention ops (schemas in csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastgpt {

// q (B, Hq, T, D), k/v (B, Hkv, T, D) fp16/bf16, D in {64, 128}, Hq % Hkv == 0.
// Returns out (B, Hq, T, D) with q's layout and lse (B, Hq, T) fp32.
std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       bool causal, double scale);

// Returns dq, dk, dv with the layouts of q, k, v.
std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attn_bwd_cuda(const at::Tensor& dout, const at::Tensor& q,
                                                                   const at::Tensor& k, const at::Tensor& v,
                                                                   const at::Tensor& out, const at::Tensor& lse,
                                                                   bool causal, double scale);

}  // namespace fastgpt
