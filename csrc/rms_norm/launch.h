// Kernel-facing interface of RMSNorm (no ATen): raw pointers to contiguous (rows, n) matrices.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/scalar_kind.h"

namespace fastgpt {

// Largest supported row length.
constexpr int kRmsNormMaxCols = 65536;

struct RmsNormFwdArgs {
  const void* x;         // (rows, n) input
  const void* residual;  // (rows, n) or nullptr: normalize h = x + residual instead of x
  const float* weight;   // (n,) fp32 or nullptr
  void* out;             // (rows, n) normalized output
  void* h;               // (rows, n) x + residual (written only with a residual)
  float* rstd;           // (rows,) 1 / sqrt(mean(h^2) + eps)
  int64_t rows;
  int n;
  float eps;
  bool vectorized;  // n % (16 / sizeof(T)) == 0 and every pointer 16-byte aligned: 16-byte accesses
};

struct RmsNormBwdArgs {
  const void* dout;     // (rows, n) gradient of out
  const void* dh;       // (rows, n) gradient of the h output (fused residual) or nullptr
  const void* h;        // (rows, n) the normalized input (x, or x + residual)
  const float* weight;  // (n,) fp32 or nullptr
  const float* rstd;    // (rows,) saved by the forward
  void* dx;             // (rows, n) gradient of h (= of x and of residual)
  float* dweight;       // (n,) fp32, or nullptr when there is no weight
  float* partial;       // (dweight_chunks, n) fp32 workspace for the first dweight stage
  int64_t rows;
  int n;
  bool vectorized;
  int64_t dweight_rows_per_chunk;  // from rms_norm_dweight_plan
  int dweight_chunks;
};

// How the rows are split for the two-stage dweight reduction: chunks of rows_per_chunk rows each
// write one fp32 partial row, which a second kernel sums in order (deterministic, no atomics).
struct RmsNormDweightPlan {
  int64_t rows_per_chunk;
  int chunks;
};
RmsNormDweightPlan rms_norm_dweight_plan(int64_t rows, int n, bool vectorized, ScalarKind kind, int num_sms);

void rms_norm_fwd_launch(ScalarKind kind, const RmsNormFwdArgs& args, cudaStream_t stream);
void rms_norm_bwd_launch(ScalarKind kind, const RmsNormBwdArgs& args, cudaStream_t stream);

}  // namespace fastgpt
