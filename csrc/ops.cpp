// Every fastgpt custom op: schemas (one TORCH_LIBRARY) and their CUDA implementations.
//
// Importing fastgpt._C runs these registrations; Python then reaches the kernels as
// torch.ops.fastgpt.<name>. fastgpt/ops/cuda/ registers the fake (meta) implementations and the
// autograd formulas. Mutated arguments are declared with (a!) and no output aliases an input, so
// the ops are safe under torch.compile.
#include <Python.h>
#include <torch/library.h>

#include "adamw/fused_adamw.h"
#include "flash_attn/flash_attn.h"
#include "rms_norm/rms_norm.h"

TORCH_LIBRARY(fastgpt, m) {
  // out = softmax(scale * q k^T (+ causal mask)) v; lse = logsumexp of each scaled score row
  m.def("flash_attn_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "flash_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal, float scale) "
      "-> (Tensor dq, Tensor dk, Tensor dv)");
  // h = x (+ residual); out = h / sqrt(mean(h^2) + eps) * weight; h is empty without a residual
  m.def(
      "rms_norm_fwd(Tensor x, Tensor? weight, Tensor? residual, float eps) -> (Tensor out, Tensor h, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor dout, Tensor? dh, Tensor h, Tensor? weight, Tensor rstd) -> (Tensor dx, Tensor dweight)");
  // one AdamW step in place over lists of tensors
  m.def(
      "fused_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor[] steps, Tensor? lr_tensor, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool maximize) -> ()");
}

#ifdef FASTGPT_CUDA_EMULATE  // the emulated build (csrc/emu/): the same kernels on CPU tensors
#define FASTGPT_DISPATCH_KEY CPU
#else
#define FASTGPT_DISPATCH_KEY CUDA
#endif

TORCH_LIBRARY_IMPL(fastgpt, FASTGPT_DISPATCH_KEY, m) {
  m.impl("flash_attn_fwd", &fastgpt::flash_attn_fwd_cuda);
  m.impl("flash_attn_bwd", &fastgpt::flash_attn_bwd_cuda);
  m.impl("rms_norm_fwd", &fastgpt::rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &fastgpt::rms_norm_bwd_cuda);
  m.impl("fused_adamw_", &fastgpt::fused_adamw_cuda);
}

// The extension is imported only for the registrations above: an empty Python module.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastgpt CUDA kernels (ops in torch.ops.fastgpt)", -1,
                               nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
