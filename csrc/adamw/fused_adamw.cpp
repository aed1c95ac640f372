// Host side of the fused AdamW op: validate the lists, group tensors by dtype and pack them into
// as few launches as the kernel-argument table allows (kAdamWMaxTensors tensors and
// kAdamWMaxBlocks chunks per launch; a tensor may straddle launches). Kernel: fused_adamw_kernel.cu.
#include "adamw/fused_adamw.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cstdint>
#include <vector>

#include "adamw/launch.h"
#include "common/check.h"

namespace fastgpt {
namespace {

constexpr const char* kOp = "fused_adamw_";

int kind_index(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return 0;
    case at::kHalf:
      return 1;
    case at::kBFloat16:
      return 2;
    default:
      TORCH_CHECK(false, "fastgpt ", kOp, ": parameter dtype ", dtype_name(t),
                  " is not supported (float32, float16, bfloat16)");
  }
}

constexpr std::array<ScalarKind, 3> kKinds = {ScalarKind::kFloat32, ScalarKind::kFloat16, ScalarKind::kBFloat16};

void check_tensor(size_t i, const char* name, const at::Tensor& t, const at::Tensor& param, at::ScalarType dtype,
                  bool same_numel) {
  TORCH_CHECK(t.device() == param.device(), "fastgpt ", kOp, ": ", name, "[", i, "] is on ", t.device(),
              " but params[", i, "] is on ", param.device());
  TORCH_CHECK(t.scalar_type() == dtype, "fastgpt ", kOp, ": ", name, "[", i, "] must be ", dtype_name(dtype), " (got ",
              dtype_name(t.scalar_type()), ")");
  TORCH_CHECK(t.is_contiguous(), "fastgpt ", kOp, ": ", name, "[", i, "] must be contiguous");
  TORCH_CHECK(!same_numel || t.numel() == param.numel(), "fastgpt ", kOp, ": ", name, "[", i, "] has ", t.numel(),
              " elements but params[", i, "] has ", param.numel());
}

}  // namespace

void fused_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList steps, const std::optional<at::Tensor>& lr_tensor,
                      double lr, double beta1, double beta2, double eps, double weight_decay, bool maximize) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_sqs.size() == count &&
                  steps.size() == count,
              "fastgpt ", kOp, ": params, grads, exp_avgs, exp_avg_sqs and steps must have equal lengths (got ", count,
              ", ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size(), ", ", steps.size(), ")");
  if (count == 0) return;
  const at::Tensor& first = params[0];
  check_cuda(kOp, "params[0]", first);
  std::array<std::vector<size_t>, 3> groups;
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device() == first.device(), "fastgpt ", kOp, ": params[", i, "] is on ", p.device(),
                " but params[0] is on ", first.device());
    TORCH_CHECK(p.is_contiguous(), "fastgpt ", kOp, ": params[", i, "] must be contiguous");
    const int kind = kind_index(p.scalar_type());
    check_tensor(i, "grads", grads[i], p, p.scalar_type(), true);
    check_tensor(i, "exp_avgs", exp_avgs[i], p, at::kFloat, true);
    check_tensor(i, "exp_avg_sqs", exp_avg_sqs[i], p, at::kFloat, true);
    check_tensor(i, "steps", steps[i], p, at::kFloat, false);
    TORCH_CHECK(steps[i].numel() == 1, "fastgpt ", kOp, ": steps[", i, "] must have one element (got ", steps[i].numel(),
                ")");
    groups[kind].push_back(i);
  }
  AdamWHyper hyper{};
  hyper.lr = lr;
  hyper.beta1 = beta1;
  hyper.beta2 = beta2;
  hyper.eps = eps;
  hyper.weight_decay = weight_decay;
  hyper.maximize = maximize;
  if (lr_tensor.has_value()) {
    check_tensor(0, "lr", *lr_tensor, first, at::kFloat, false);
    TORCH_CHECK(lr_tensor->numel() == 1, "fastgpt ", kOp, ": lr must have one element (got ", lr_tensor->numel(), ")");
    hyper.lr_ptr = lr_tensor->data_ptr<float>();
  }

  c10::cuda::CUDAGuard device_guard(first.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int kind = 0; kind < 3; ++kind) {
    AdamWTable table{};
    int slots = 0;   // tensors in the table
    int blocks = 0;  // chunks in the table
    for (const size_t i : groups[kind]) {
      const int64_t numel = params[i].numel();
      if (numel == 0) continue;
      table.param[slots] = params[i].data_ptr();
      table.grad[slots] = grads[i].data_ptr();
      table.exp_avg[slots] = exp_avgs[i].data_ptr<float>();
      table.exp_avg_sq[slots] = exp_avg_sqs[i].data_ptr<float>();
      table.step[slots] = steps[i].data_ptr<float>();
      table.numel[slots] = numel;
      ++slots;
      const int64_t chunks = (numel + kAdamWChunk - 1) / kAdamWChunk;
      for (int64_t c = 0; c < chunks; ++c) {
        table.block_tensor[blocks] = static_cast<uint8_t>(slots - 1);
        table.block_chunk[blocks] = static_cast<int32_t>(c);
        ++blocks;
        const bool last_chunk = c == chunks - 1;
        if (blocks == kAdamWMaxBlocks || (slots == kAdamWMaxTensors && last_chunk)) {
          fused_adamw_launch(kKinds[kind], table, blocks, hyper, stream);
          blocks = 0;
          if (last_chunk) {
            slots = 0;
          } else {  // the tensor continues in the next launch, as its first slot
            table.param[0] = table.param[slots - 1];
            table.grad[0] = table.grad[slots - 1];
            table.exp_avg[0] = table.exp_avg[slots - 1];
            table.exp_avg_sq[0] = table.exp_avg_sq[slots - 1];
            table.step[0] = table.step[slots - 1];
            table.numel[0] = table.numel[slots - 1];
            slots = 1;
          }
        }
      }
    }
    fused_adamw_launch(kKinds[kind], table, blocks, hyper, stream);
  }
}

}  // namespace fastgpt
