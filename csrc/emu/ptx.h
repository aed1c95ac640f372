// The PTX instructions csrc/ issues, emulated (csrc/common/mma.cuh calls these in the
// FASTGPT_CUDA_EMULATE build instead of its inline asm). Each takes the instruction's opcode
// string, exactly as the asm issues it, and follows the PTX ISA's definition of it (per-lane
// fragment layouts, zero fill, group accounting). Anything else is a "not emulated" error.
//
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16.f16,bf16.bf16}.f32
//   cp.async.{ca,cg}.shared.global (cp-size 4, 8 or 16; .cg only 16), src-size zero fill
//   cp.async.commit_group, cp.async.wait_group N
#pragma once

#include <cstdint>

namespace fastgpt_emu {

void ldmatrix(const char* instruction, uint32_t* regs, int nregs, const void* smem_row);
// d (4 fp32, in/out) = a (4 regs) x b (2 regs) + d
void mma(const char* instruction, float* d, const uint32_t* a, const uint32_t* b);
void cp_async(const char* instruction, void* smem_dst, const void* gmem_src, int cp_size, int src_size);
void cp_async_commit(const char* instruction);
void cp_async_wait(const char* instruction, int n);

}  // namespace fastgpt_emu
