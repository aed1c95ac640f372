// Host side of the RMSNorm ops: validate, make inputs contiguous (a copy only when they are
// not), allocate, launch on the current stream. Kernels and math: rms_norm_kernel.cu.
#include "rms_norm/rms_norm.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

#include "common/check.h"
#include "rms_norm/launch.h"

namespace fastgpt {
namespace {

ScalarKind check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ScalarKind::kFloat32;
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      TORCH_CHECK(false, "fastgpt ", op, ": ", name, " dtype ", dtype_name(t.scalar_type()),
                  " is not supported (float32, float16, bfloat16)");
  }
}

// The row length n, after checking it is within the kernels' limit.
int check_rows(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "fastgpt ", op, ": the input must have at least one dimension");
  const int64_t n = x.size(-1);
  TORCH_CHECK(n >= 1 && n <= kRmsNormMaxCols, "fastgpt ", op, ": row length ", n, " is not supported (1 to ",
              kRmsNormMaxCols, ")");
  return static_cast<int>(n);
}

// The weight as a contiguous fp32 (n,) tensor (no copy when it already is one).
at::Tensor weight_fp32(const char* op, const std::optional<at::Tensor>& weight, const at::Tensor& x, int64_t n) {
  if (!weight.has_value()) return at::Tensor();
  check_same_device(op, "weight", *weight, x);
  check_float_dtype(op, "weight", *weight);
  TORCH_CHECK(weight->dim() == 1 && weight->size(0) == n, "fastgpt ", op, ": weight shape ", weight->sizes(),
              " must be (", n, ",)");
  return weight->to(at::kFloat).contiguous();
}

bool aligned16(const at::Tensor& t) {
  return !t.defined() || reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

int multiprocessor_count(const at::Tensor& t) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.get_device()));
  return sms;
}

std::vector<int64_t> stat_shape(const at::Tensor& x) {
  return std::vector<int64_t>(x.sizes().begin(), x.sizes().end() - 1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x,
                                                                 const std::optional<at::Tensor>& weight,
                                                                 const std::optional<at::Tensor>& residual,
                                                                 double eps) {
  constexpr const char* op = "rms_norm_fwd";
  check_cuda(op, "x", x);
  const ScalarKind kind = check_float_dtype(op, "x", x);
  const int n = check_rows(op, x);
  if (residual.has_value()) {
    check_same_device(op, "residual", *residual, x);
    check_dtype(op, "residual", *residual, x.scalar_type());
    TORCH_CHECK(residual->sizes() == x.sizes(), "fastgpt ", op, ": residual shape ", residual->sizes(),
                " differs from x ", x.sizes());
  }
  c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor w = weight_fp32(op, weight, x, n);
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.has_value() ? residual->contiguous() : at::Tensor();
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor h = at::empty(residual.has_value() ? x.sizes() : at::IntArrayRef{0}, x.options());
  at::Tensor rstd = at::empty(stat_shape(x), x.options().dtype(at::kFloat));
  const int64_t rows = x.numel() / n;
  if (rows == 0) return {out, h, rstd};

  RmsNormFwdArgs a{};
  a.x = xc.data_ptr();
  a.residual = rc.defined() ? rc.data_ptr() : nullptr;
  a.weight = w.defined() ? w.data_ptr<float>() : nullptr;
  a.out = out.data_ptr();
  a.h = rc.defined() ? h.data_ptr() : nullptr;
  a.rstd = rstd.data_ptr<float>();
  a.rows = rows;
  a.n = n;
  a.eps = static_cast<float>(eps);
  a.vectorized = n % (16 / static_cast<int>(x.element_size())) == 0 && aligned16(xc) && aligned16(rc) &&
                 aligned16(w) && aligned16(out) && (!rc.defined() || aligned16(h));
  rms_norm_fwd_launch(kind, a, c10::cuda::getCurrentCUDAStream());
  return {out, h, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dout, const std::optional<at::Tensor>& dh,
                                                     const at::Tensor& h, const std::optional<at::Tensor>& weight,
                                                     const at::Tensor& rstd) {
  constexpr const char* op = "rms_norm_bwd";
  check_cuda(op, "h", h);
  const ScalarKind kind = check_float_dtype(op, "h", h);
  const int n = check_rows(op, h);
  check_same_device(op, "dout", dout, h);
  check_dtype(op, "dout", dout, h.scalar_type());
  TORCH_CHECK(dout.sizes() == h.sizes(), "fastgpt ", op, ": dout shape ", dout.sizes(), " differs from h ", h.sizes());
  if (dh.has_value()) {
    check_same_device(op, "dh", *dh, h);
    check_dtype(op, "dh", *dh, h.scalar_type());
    TORCH_CHECK(dh->sizes() == h.sizes(), "fastgpt ", op, ": dh shape ", dh->sizes(), " differs from h ", h.sizes());
  }
  check_same_device(op, "rstd", rstd, h);
  check_dtype(op, "rstd", rstd, at::kFloat);
  const int64_t rows = h.numel() / n;
  TORCH_CHECK(rstd.numel() == rows, "fastgpt ", op, ": rstd has ", rstd.numel(), " elements, expected one per row (",
              rows, ")");
  c10::cuda::CUDAGuard device_guard(h.device());
  const at::Tensor w = weight_fp32(op, weight, h, n);
  const at::Tensor doutc = dout.contiguous();
  const at::Tensor dhc = dh.has_value() ? dh->contiguous() : at::Tensor();
  const at::Tensor hc = h.contiguous();
  const at::Tensor rstdc = rstd.contiguous();
  at::Tensor dx = at::empty(h.sizes(), h.options());
  at::Tensor dweight32 = w.defined() ? at::empty({n}, h.options().dtype(at::kFloat)) : at::Tensor();
  if (rows == 0) {
    if (!w.defined()) return {dx, at::empty({0}, h.options())};
    return {dx, dweight32.zero_().to(weight->scalar_type())};
  }

  RmsNormBwdArgs a{};
  a.dout = doutc.data_ptr();
  a.dh = dhc.defined() ? dhc.data_ptr() : nullptr;
  a.h = hc.data_ptr();
  a.weight = w.defined() ? w.data_ptr<float>() : nullptr;
  a.rstd = rstdc.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.rows = rows;
  a.n = n;
  a.vectorized = n % (16 / static_cast<int>(h.element_size())) == 0 && aligned16(doutc) && aligned16(dhc) &&
                 aligned16(hc) && aligned16(w) && aligned16(dx);
  at::Tensor partial;
  if (w.defined()) {
    const RmsNormDweightPlan plan = rms_norm_dweight_plan(rows, n, a.vectorized, kind, multiprocessor_count(h));
    partial = at::empty({plan.chunks, n}, h.options().dtype(at::kFloat));
    a.dweight = dweight32.data_ptr<float>();
    a.partial = partial.data_ptr<float>();
    a.dweight_rows_per_chunk = plan.rows_per_chunk;
    a.dweight_chunks = plan.chunks;
  }
  rms_norm_bwd_launch(kind, a, c10::cuda::getCurrentCUDAStream());
  if (!w.defined()) return {dx, at::empty({0}, h.options())};
  return {dx, dweight32.to(weight->scalar_type())};  // no copy for an fp32 weight
}

}  // namespace fastgpt
