// Host entry point of the fused AdamW op (schema in csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastgpt {

// One in-place AdamW step over equal-length lists: params/grads fp32, fp16 or bf16 (a grad has
// its param's dtype), exp_avgs/exp_avg_sqs fp32, steps fp32 one-element tensors already
// incremented, all contiguous on one CUDA device. lr_tensor (fp32, one element, on the device)
// overrides lr when given.
void fused_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList steps, const std::optional<at::Tensor>& lr_tensor,
                      double lr, double beta1, double beta2, double eps, double weight_decay, bool maximize);

}  // namespace fastgpt
