// Kernel-facing interface of the fused AdamW step (no ATen): a table of tensor pointers passed by
// value as the kernel argument, and a map from each CTA to one 64K-element chunk of one tensor.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/scalar_kind.h"

namespace fastgpt {

constexpr int kAdamWMaxTensors = 36;   // tensors per launch
constexpr int kAdamWMaxBlocks = 320;   // CTAs per launch
constexpr int64_t kAdamWChunk = 65536;  // elements per CTA

struct AdamWTable {
  void* param[kAdamWMaxTensors];            // T (fp32/fp16/bf16), updated in place
  const void* grad[kAdamWMaxTensors];       // T
  float* exp_avg[kAdamWMaxTensors];         // fp32 first moment, updated in place
  float* exp_avg_sq[kAdamWMaxTensors];      // fp32 second moment, updated in place
  const float* step[kAdamWMaxTensors];      // fp32 scalar step count (already incremented)
  int64_t numel[kAdamWMaxTensors];
  uint8_t block_tensor[kAdamWMaxBlocks];    // CTA -> tensor slot
  int32_t block_chunk[kAdamWMaxBlocks];     // CTA -> chunk of that tensor
};

struct AdamWHyper {
  const float* lr_ptr;  // device learning rate, or nullptr to use lr
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool maximize;
};

// Kernel arguments must fit the classic 4 KB parameter space.
static_assert(sizeof(AdamWTable) + sizeof(AdamWHyper) <= 4000, "AdamW kernel arguments exceed 4 KB");

// One launch updating the first `num_blocks` chunks described by `table`; params of `kind`.
void fused_adamw_launch(ScalarKind kind, const AdamWTable& table, int num_blocks, const AdamWHyper& hyper,
                        cudaStream_t stream);

}  // namespace fastgpt
