// Host entry points of the RMSNorm ops (schemas in csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fastgpt {

// x (..., n) fp32/fp16/bf16 with n <= 65536; weight (n,) or None; residual like x or None.
// Returns (out, h, rstd): out like x (contiguous), h = x + residual (an empty tensor without a
// residual, since returning x itself would alias an input), rstd (...) fp32.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x,
                                                                 const std::optional<at::Tensor>& weight,
                                                                 const std::optional<at::Tensor>& residual,
                                                                 double eps);

// dout like h; dh (the gradient of the h output) or None; h the normalized input; rstd from the
// forward. Returns (dx, dweight): dx like h, dweight like weight (an empty tensor without one).
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dout, const std::optional<at::Tensor>& dh,
                                                     const at::Tensor& h, const std::optional<at::Tensor>& weight,
                                                     const at::Tensor& rstd);

}  // namespace fastgpt
