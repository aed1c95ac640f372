// Host side of the flash-attention ops: validate, allocate, fill FlashParams, launch on the
// current stream. The kernels and their math are described in flash_fwd_kernel.cuh and
// flash_bwd_kernel.cuh.
#include "flash_attn/flash_attn.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

#include "common/check.h"
#include "flash_attn/params.h"

namespace fastgpt {
namespace {

constexpr int64_t kMaxGridYZ = 65535;

// The kernels copy 16-byte chunks of rows: the head dim must be unit-stride and every row start
// 16-byte aligned (strides of the other dims, where they matter, multiples of 8 elements).
void check_layout(const char* op, const char* name, const at::Tensor& t) {
  bool ok = t.stride(3) == 1 && reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) == 1 || t.stride(d) % 8 == 0);
  TORCH_CHECK(ok, "fastgpt ", op, ": ", name,
              " needs a unit stride over the head dim, other strides that are multiples of 8 elements and a "
              "16-byte aligned start (got strides ",
              t.strides(), ", storage offset ", t.storage_offset(), "); pass a .contiguous() tensor");
}

// Checks q, k, v and returns (B, Hq, Hkv, T, D).
std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t> check_qkv(const char* op, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v) {
  check_cuda(op, "q", q);
  check_same_device(op, "k", k, q);
  check_same_device(op, "v", v, q);
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, "fastgpt ", op, ": dtype ",
              dtype_name(q.scalar_type()), " is not supported (float16, bfloat16)");
  check_dtype(op, "k", k, q.scalar_type());
  check_dtype(op, "v", v, q.scalar_type());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "fastgpt ", op,
              ": q, k, v must be 4-D (B, H, T, D) (got q", q.sizes(), " k", k.sizes(), " v", v.sizes(), ")");
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1);
  TORCH_CHECK(D == 64 || D == 128, "fastgpt ", op, ": head dim ", D, " is not supported (64, 128)");
  TORCH_CHECK(k.sizes() == v.sizes(), "fastgpt ", op, ": k", k.sizes(), " and v", v.sizes(), " must have the same shape");
  TORCH_CHECK(k.size(0) == B && k.size(2) == T && k.size(3) == D, "fastgpt ", op, ": k", k.sizes(),
              " must be (B, Hkv, T, D) for q", q.sizes(), " (keys and queries of equal length; no KV cache)");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "fastgpt ", op, ": query heads (", Hq, ") must be a multiple of key/value heads (",
              Hkv, ")");
  TORCH_CHECK(B <= kMaxGridYZ && Hq <= kMaxGridYZ, "fastgpt ", op, ": batch ", B, " and heads ", Hq,
              " must each be at most ", kMaxGridYZ);
  TORCH_CHECK(T <= std::numeric_limits<int32_t>::max() - 256, "fastgpt ", op, ": sequence length ", T, " is too long");
  return {B, Hq, Hkv, T, D};
}

FlashStrides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

FlashParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  FlashParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_stride = strides_of(q);
  p.k_stride = strides_of(k);
  p.v_stride = strides_of(v);
  p.batch = static_cast<int>(q.size(0));
  p.heads_q = static_cast<int>(q.size(1));
  p.heads_kv = static_cast<int>(k.size(1));
  p.group = p.heads_q / p.heads_kv;
  p.seqlen = static_cast<int>(q.size(2));
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);  // log2(e): exp(x) = 2^(x log2 e)
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       bool causal, double scale) {
  constexpr const char* op = "flash_attn_fwd";
  const auto [B, Hq, Hkv, T, D] = check_qkv(op, q, k, v);
  c10::cuda::CUDAGuard device_guard(q.device());
  at::Tensor out = at::empty_like(q);  // same layout as q (a (B, T, H, D) view stays one)
  at::Tensor lse = at::empty({B, Hq, T}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  check_layout(op, "q", q);
  check_layout(op, "k", k);
  check_layout(op, "v", v);
  check_layout(op, "out", out);

  FlashParams p = make_params(q, k, v, scale);
  p.out = out.data_ptr();
  p.out_stride = strides_of(out);
  p.lse = lse.data_ptr<float>();
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (D == 64) {
    flash_attn_fwd_hdim64(p, bf16, causal, stream);
  } else {
    flash_attn_fwd_hdim128(p, bf16, causal, stream);
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flash_attn_bwd_cuda(const at::Tensor& dout, const at::Tensor& q,
                                                                   const at::Tensor& k, const at::Tensor& v,
                                                                   const at::Tensor& out, const at::Tensor& lse,
                                                                   bool causal, double scale) {
  constexpr const char* op = "flash_attn_bwd";
  const auto [B, Hq, Hkv, T, D] = check_qkv(op, q, k, v);
  check_same_device(op, "dout", dout, q);
  check_same_device(op, "out", out, q);
  check_same_device(op, "lse", lse, q);
  check_dtype(op, "dout", dout, q.scalar_type());
  check_dtype(op, "out", out, q.scalar_type());
  check_dtype(op, "lse", lse, at::kFloat);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(), "fastgpt ", op, ": dout", dout.sizes(), " and out",
              out.sizes(), " must have q's shape ", q.sizes());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == Hq && lse.size(2) == T, "fastgpt ", op, ": lse",
              lse.sizes(), " must be (B, Hq, T) = (", B, ", ", Hq, ", ", T, ")");
  check_contiguous(op, "lse", lse);
  c10::cuda::CUDAGuard device_guard(q.device());
  at::Tensor dq = at::empty_like(q);
  at::Tensor dk = at::empty_like(k);
  at::Tensor dv = at::empty_like(v);
  if (q.numel() == 0) return {dq, dk, dv};
  at::Tensor delta = at::empty({B, Hq, T}, q.options().dtype(at::kFloat));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"q", q}, {"k", k}, {"v", v}, {"out", out},
                                {"dout", dout}, {"dq", dq}, {"dk", dk}, {"dv", dv}}) {
    check_layout(op, name, t);
  }

  FlashParams p = make_params(q, k, v, scale);
  p.out = const_cast<void*>(out.data_ptr());
  p.out_stride = strides_of(out);
  p.lse = const_cast<float*>(lse.data_ptr<float>());
  p.dout = dout.data_ptr();
  p.dout_stride = strides_of(dout);
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dq_stride = strides_of(dq);
  p.dk_stride = strides_of(dk);
  p.dv_stride = strides_of(dv);
  p.delta = delta.data_ptr<float>();
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (D == 64) {
    flash_attn_bwd_hdim64(p, bf16, causal, stream);
  } else {
    flash_attn_bwd_hdim128(p, bf16, causal, stream);
  }
  return {dq, dk, dv};
}

}  // namespace fastgpt
