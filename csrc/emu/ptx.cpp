// The PTX instructions of csrc/common/mma.cuh, emulated from the PTX ISA's definitions (see
// ptx.h). Fragment layouts, with g = lane / 4 and t = lane % 4:
//   ldmatrix m8n8: lane 8j + r addresses row r of matrix j (lanes 0-7, 0-15 or 0-31 for x1, x2,
//     x4); register j of lane l holds row g, elements 2t and 2t+1 of matrix j (lower element in
//     the low half); .trans holds elements (2t, g) and (2t+1, g) instead.
//   mma m16n8k16 .row.col: A 16x16, registers a0..a3 hold (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..),
//     (g+8, 2t+8..); B 16x8 (k x n), b0 holds k = 2t, 2t+1 of column g, b1 k = 2t+8, 2t+9;
//     C/D 16x8 fp32, d0, d1 = (g, 2t), (g, 2t+1), d2, d3 = (g+8, 2t), (g+8, 2t+1).
// Products of fp16/bf16 values are exact in double; each D element is C plus the 16 products
// summed in double, rounded once to fp32.
#include "emu/ptx.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "emu/runtime.h"

namespace fastgpt_emu {
namespace {

struct LdmatrixOp {
  int num;  // matrices: 1, 2 or 4
  bool trans;
};

bool parse_ldmatrix(const char* s, LdmatrixOp& op) {
  static const char* const kForms[] = {
      "ldmatrix.sync.aligned.m8n8.x1.shared.b16",       "ldmatrix.sync.aligned.m8n8.x2.shared.b16",
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16",       "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16",
      "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"};
  static const int kNum[] = {1, 2, 4, 1, 2, 4};
  for (int i = 0; i < 6; ++i) {
    if (std::strcmp(s, kForms[i]) == 0) {
      op = {kNum[i], i >= 3};
      return true;
    }
  }
  return false;
}

void ldmatrix_fn(const char* what, LaneSlot* slots, uint32_t mask) {
  LdmatrixOp op{};
  parse_ldmatrix(what, op);
  if (mask != 0xffffffffu) fail((std::string(what) + " needs all 32 lanes (.sync.aligned)").c_str());
  uint16_t m[4][8][8];  // matrix, row, element
  for (int j = 0; j < op.num; ++j) {
    for (int r = 0; r < 8; ++r) {
      const int lane = 8 * j + r;
      const void* a = slots[lane].addr;
      if (reinterpret_cast<uintptr_t>(a) % 16 != 0 || !in_shared(a, 16)) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s: lane %d's row address %p is not a 16-byte aligned row in shared memory",
                      what, lane, a);
        fail(buf, lane);
      }
      std::memcpy(m[j][r], a, 16);
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int j = 0; j < op.num; ++j) {
      const uint16_t lo = op.trans ? m[j][2 * t][g] : m[j][g][2 * t];
      const uint16_t hi = op.trans ? m[j][2 * t + 1][g] : m[j][g][2 * t + 1];
      slots[l].out[j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
  }
}

double from_b16(uint16_t bits, bool bf16) {
  return bf16 ? static_cast<double>(__bfloat162float(__nv_bfloat16{bits})) : static_cast<double>(__half2float(__half{bits}));
}

void mma_fn(const char* what, LaneSlot* slots, uint32_t mask) {
  const bool bf16 = std::strcmp(what, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == 0;
  if (mask != 0xffffffffu) fail((std::string(what) + " needs all 32 lanes (.sync.aligned)").c_str());
  double A[16][16], B[16][8];
  float C[16][8];
  auto lo = [](uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); };
  auto hi = [](uint32_t r) { return static_cast<uint16_t>(r >> 16); };
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const uint32_t* in = slots[l].in;
    for (int i = 0; i < 4; ++i) {  // a_i: rows g (i even) / g + 8 (i odd), columns 2t (+8 for i >= 2)
      const int row = g + (i & 1) * 8, col = 2 * t + (i >> 1) * 8;
      A[row][col] = from_b16(lo(in[i]), bf16);
      A[row][col + 1] = from_b16(hi(in[i]), bf16);
    }
    for (int i = 0; i < 2; ++i) {  // b_i: k = 2t, 2t+1 (+8 for b1), column g
      B[2 * t + 8 * i][g] = from_b16(lo(in[4 + i]), bf16);
      B[2 * t + 8 * i + 1][g] = from_b16(hi(in[4 + i]), bf16);
    }
    for (int i = 0; i < 4; ++i) std::memcpy(&C[g + (i >> 1) * 8][2 * t + (i & 1)], &in[6 + i], 4);
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
      double acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      const float d = static_cast<float>(acc);
      std::memcpy(&slots[l].out[i], &d, 4);
    }
  }
}

}  // namespace

void ldmatrix(const char* instruction, uint32_t* regs, int nregs, const void* smem_row) {
  LdmatrixOp op{};
  if (!parse_ldmatrix(instruction, op)) fail_not_emulated(instruction);
  if (op.num != nregs) fail((std::string(instruction) + " with " + std::to_string(nregs) + " destination registers").c_str());
  LaneSlot& s = lane_slot();
  s.addr = smem_row;
  warp_collective(instruction, 0xffffffffu, ldmatrix_fn);
  for (int j = 0; j < nregs; ++j) regs[j] = s.out[j];
}

void mma(const char* instruction, float* d, const uint32_t* a, const uint32_t* b) {
  if (std::strcmp(instruction, "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") != 0 &&
      std::strcmp(instruction, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") != 0) {
    fail_not_emulated(instruction);
  }
  LaneSlot& s = lane_slot();
  std::memcpy(s.in, a, 16);
  std::memcpy(s.in + 4, b, 8);
  std::memcpy(s.in + 6, d, 16);
  warp_collective(instruction, 0xffffffffu, mma_fn);
  std::memcpy(d, s.out, 16);
}

void cp_async(const char* instruction, void* smem_dst, const void* gmem_src, int cp_size, int src_size) {
  const bool cg = std::strcmp(instruction, "cp.async.cg.shared.global") == 0;
  const bool ca = std::strcmp(instruction, "cp.async.ca.shared.global") == 0;
  if (!(ca || cg)) fail_not_emulated(instruction);
  if (!(cp_size == 16 || (ca && (cp_size == 4 || cp_size == 8)))) {
    fail((std::string(instruction) + " with cp-size " + std::to_string(cp_size) + " (allowed: " +
          (cg ? "16" : "4, 8, 16") + ")").c_str());
  }
  if (src_size < 0 || src_size > cp_size) {
    fail((std::string(instruction) + ": src-size " + std::to_string(src_size) + " exceeds cp-size " +
          std::to_string(cp_size)).c_str());
  }
  char buf[200];
  if (reinterpret_cast<uintptr_t>(smem_dst) % cp_size != 0 || !in_shared(smem_dst, cp_size)) {
    std::snprintf(buf, sizeof buf, "%s: destination %p is not %d bytes of shared memory aligned to %d", instruction,
                  smem_dst, cp_size, cp_size);
    fail(buf);
  }
  if (src_size > 0 && reinterpret_cast<uintptr_t>(gmem_src) % cp_size != 0) {
    std::snprintf(buf, sizeof buf, "%s: source %p is not aligned to %d bytes", instruction, gmem_src, cp_size);
    fail(buf);
  }
  async_issue({smem_dst, gmem_src, cp_size, src_size});
}

void cp_async_commit(const char* instruction) {
  if (std::strcmp(instruction, "cp.async.commit_group") != 0) fail_not_emulated(instruction);
  async_commit();
}

void cp_async_wait(const char* instruction, int n) {
  if (std::strcmp(instruction, "cp.async.wait_group") != 0) fail_not_emulated(instruction);
  if (n < 0) fail("cp.async.wait_group with a negative count");
  async_wait(n);
}

}  // namespace fastgpt_emu
