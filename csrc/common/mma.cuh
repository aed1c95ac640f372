// Inline-PTX wrappers for sm80+ tensor cores and asynchronous copies.
//
// mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate), per-thread fragment layout with
// g = lane / 4 (the "group") and t = lane % 4 (thread in group):
//   A (16x16, row-major) a[0]: (row g,   cols 2t, 2t+1)   a[1]: (row g+8, cols 2t, 2t+1)
//                        a[2]: (row g,   cols 2t+8, +9)   a[3]: (row g+8, cols 2t+8, +9)
//   B (16x8, k x n)      b[0]: (k 2t, 2t+1;   col g)      b[1]: (k 2t+8, 2t+9; col g)
//   C (16x8, fp32)       c[0], c[1]: (row g, cols 2t, 2t+1)   c[2], c[3]: (row g+8, same cols)
// ldmatrix.x4 loads four 8x8 b16 matrices; lane i supplies the address of row i % 8 of matrix
// i / 8, and register j of every lane receives matrix j in the A/B fragment layout above
// (.trans transposes each 8x8 matrix on the way).
//
// The emulated build (FASTGPT_CUDA_EMULATE, csrc/emu/) runs the same opcodes, named once below,
// through csrc/emu/ptx.h instead of the asm.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#ifdef FASTGPT_CUDA_EMULATE
#include "emu/ptx.h"
#endif

#define FASTGPT_PTX_LDMATRIX_X4 "ldmatrix.sync.aligned.m8n8.x4.shared.b16"
#define FASTGPT_PTX_LDMATRIX_X4_TRANS "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"
#define FASTGPT_PTX_MMA_F16 "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
#define FASTGPT_PTX_MMA_BF16 "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
#define FASTGPT_PTX_CP_ASYNC_CG "cp.async.cg.shared.global"
#define FASTGPT_PTX_CP_ASYNC_COMMIT "cp.async.commit_group"
#define FASTGPT_PTX_CP_ASYNC_WAIT "cp.async.wait_group"

namespace fastgpt {

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_ptr) {
#ifdef FASTGPT_CUDA_EMULATE
  fastgpt_emu::ldmatrix(FASTGPT_PTX_LDMATRIX_X4, r, 4, smem_ptr);
#else
  asm volatile(FASTGPT_PTX_LDMATRIX_X4 " {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_ptr)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_ptr) {
#ifdef FASTGPT_CUDA_EMULATE
  fastgpt_emu::ldmatrix(FASTGPT_PTX_LDMATRIX_X4_TRANS, r, 4, smem_ptr);
#else
  asm volatile(FASTGPT_PTX_LDMATRIX_X4_TRANS " {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_ptr)));
#endif
}

// c += a @ b for one 16x8x16 tile.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef FASTGPT_CUDA_EMULATE
  const uint32_t b[2] = {b0, b1};
  fastgpt_emu::mma(FASTGPT_PTX_MMA_F16, c, a, b);
#else
  asm(FASTGPT_PTX_MMA_F16 " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
#ifdef FASTGPT_CUDA_EMULATE
  const uint32_t b[2] = {b0, b1};
  fastgpt_emu::mma(FASTGPT_PTX_MMA_BF16, c, a, b);
#else
  asm(FASTGPT_PTX_MMA_BF16 " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats rounded to T and packed into one register (lo in the low 16 bits, as mma expects
// the lower column index there).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// 16-byte global -> shared copy that bypasses L1 (.cg); when !pred nothing is read and the 16
// destination bytes are zero-filled (src-size 0), which is how tile tails are padded.
__device__ __forceinline__ void cp_async_16(void* smem_ptr, const void* gmem_ptr, bool pred) {
  const int src_bytes = pred ? 16 : 0;
#ifdef FASTGPT_CUDA_EMULATE
  fastgpt_emu::cp_async(FASTGPT_PTX_CP_ASYNC_CG, smem_ptr, gmem_ptr, 16, src_bytes);
#else
  asm volatile(FASTGPT_PTX_CP_ASYNC_CG " [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_ptr)), "l"(gmem_ptr),
               "r"(src_bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef FASTGPT_CUDA_EMULATE
  fastgpt_emu::cp_async_commit(FASTGPT_PTX_CP_ASYNC_COMMIT);
#else
  asm volatile(FASTGPT_PTX_CP_ASYNC_COMMIT ";\n" ::: "memory");
#endif
}

// Wait until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef FASTGPT_CUDA_EMULATE
  fastgpt_emu::cp_async_wait(FASTGPT_PTX_CP_ASYNC_WAIT, N);
#else
  asm volatile(FASTGPT_PTX_CP_ASYNC_WAIT " %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace fastgpt
