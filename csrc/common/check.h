// Host-side input validation shared by the ops: every message starts with "fastgpt <op>:" and
// says what was given and what is allowed.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace fastgpt {

inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    default:
      return c10::toString(t);
  }
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
#ifdef FASTGPT_CUDA_EMULATE  // the emulated build (csrc/emu/) runs the kernels on CPU tensors
  TORCH_CHECK(t.is_cpu(), "fastgpt ", op, ": ", name, " must be a CPU tensor in the emulated CUDA build (got ",
              t.device(), ")");
#else
  TORCH_CHECK(t.is_cuda(), "fastgpt ", op, ": ", name, " must be a CUDA tensor (got ", t.device(), ")");
#endif
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "fastgpt ", op, ": ", name, " is on ", t.device(), " but the other inputs are on ",
              ref.device());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, "fastgpt ", op, ": ", name, " must be ", dtype_name(expected), " (got ",
              dtype_name(t.scalar_type()), ")");
}

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), "fastgpt ", op, ": ", name, " must be contiguous (got strides ", t.strides(), ")");
}

}  // namespace fastgpt
